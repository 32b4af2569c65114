"""adamfast: the Adam optimizer family, fast on CPUs.

Importing adamfast compiles nothing: numba's kernels compile (or load from
their on-disk cache) on the first call that uses them.
"""

from ._dispatch import available_backends, get_num_threads, set_num_threads
from ._memory import zeros_buffers
from ._step import adam_step
from .optim import Adam, AdamW

__version__ = "0.1.0"

__all__ = ["adam_step", "Adam", "AdamW", "available_backends", "set_num_threads",
           "get_num_threads", "zeros_buffers", "__version__"]
