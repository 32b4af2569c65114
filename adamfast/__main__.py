"""``python -m adamfast``: the command line.  ``bench`` is :mod:`adamfast.bench`;
``paper`` is :mod:`adamfast.paper` (the paper's experiments)."""

import sys

from adamfast.bench import main


def _main(argv):
    if argv[:1] == ["paper"]:
        from adamfast.paper import main as paper

        return paper(argv[1:])
    return main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
