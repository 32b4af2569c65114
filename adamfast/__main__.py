"""``python -m adamfast``: the command line (``bench``), in :mod:`adamfast.bench`."""

import sys

from adamfast.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
