"""``python -m adamfast paper``: the experiments of Kingma & Ba (ICLR 2015),
section 6, scaled down to run in minutes on bundled data, with adamfast's
optimizer family.

* :mod:`.data`: scikit-learn's digits and a synthetic bag-of-words problem;
* :mod:`.models`: the four models in NumPy, gradients written by hand;
* :mod:`.textbook`: textbook NumPy optimizers, the speed baseline;
* :mod:`.experiments`: the experiments, the grid search, the timed reruns;
* :mod:`.report`, :mod:`.plots`, :mod:`.cli`: the output.

scikit-learn (the digits) and matplotlib (the figures) are the optional
``[paper]`` extra; importing this package needs neither.  The method and
every difference from the paper are in docs/paper.md.
"""


def main(argv=None):
    from .cli import main as _main

    return _main(argv)
