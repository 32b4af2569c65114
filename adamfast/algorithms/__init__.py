"""The registry of algorithms: one line each.

Adding an algorithm: write ``algorithms/<name>.py`` (its Spec, scalars and
NumPy reference), ``adamfast/_numba/<name>.py`` and
``kernels/algorithms/<name>.pxi`` (its element functions), and add its line
below (a kind with more state buffers than any ``roofline<N>`` also needs
that roofline kind).  The optimizer class, the functional step, the
benchmark rows and the tests all come from the registry.  The checklist:
docs/adding-an-algorithm.md.
"""

from .adadelta import ADADELTA
from .adagrad import ADAGRAD
from .adam import ADAM, ADAMW
from .adamax import ADAMAX
from .adan import ADAN
from .lamb import LAMB
from .lion import LION
from .nadam import NADAM
from .radam import RADAM
from .rmsprop import RMSPROP
from .sgd import SGD

ALGORITHMS = {spec.name: spec for spec in (
    ADAM, ADAMW, ADAMAX, NADAM, RADAM, ADAGRAD, RMSPROP, SGD, ADADELTA, LION, ADAN, LAMB,
)}

# Every kind, in one fixed order (the compiled backends are checked against it).
KINDS = tuple(dict.fromkeys(k for spec in ALGORITHMS.values() for k in spec.kinds))
# Bandwidth-only kinds for the benchmark's roofline: same traffic as a kind
# with that many state buffers, trivial arithmetic (kernels/_roofline.pxi and
# adamfast/_numba/roofline.py write one out per count).
ROOFLINE_KINDS = ("roofline0", "roofline1", "roofline2", "roofline3", "roofline4")
# kind -> how many state buffers it streams (the length of the kernels' ``states``).
NSTATE = {kind: len(names) for spec in ALGORITHMS.values() for kind, names in spec.kinds.items()}
NSTATE.update((kind, i) for i, kind in enumerate(ROOFLINE_KINDS))
# Kinds whose family_kernel pass does not read the grads: a reducing kind's
# second pass recomputes its update from the state.  The drivers ask ahead
# only for the lines a pass reads (a prefetched stream costs its traffic).
NO_GRADS = frozenset(kind for spec in ALGORITHMS.values() for kind in spec.kinds
                     if "grads" not in spec.passes(kind)[-1].reads)
_MOST = max(len(names) for spec in ALGORITHMS.values() for names in spec.kinds.values())
if _MOST >= len(ROOFLINE_KINDS):
    raise ImportError(f"a kind has {_MOST} state buffers: add roofline{_MOST} to ROOFLINE_KINDS, "
                      f"kernels/_roofline.pxi and adamfast/_numba/roofline.py")
