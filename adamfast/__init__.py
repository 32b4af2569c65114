"""adamfast: the Adam optimizer family, fast on CPUs.

Importing adamfast compiles nothing: numba's kernels compile (or load from
their on-disk cache) on the first call that uses them.
"""

from . import schedules
from .checkpoint import load_checkpoint, save_checkpoint
from ._dispatch import available_backends, backend_status, get_num_threads, set_num_threads
from ._guard import StepResult, global_norm
from ._memory import zeros_buffers
from .algorithms import ALGORITHMS
from . import functional as _functional, optim as _optim
from .functional import *  # noqa: F401,F403  adam_step and one step per algorithm
from .optim import *  # noqa: F401,F403  Optimizer and one class per algorithm

__version__ = "0.2.0"

__all__ = [*_optim.__all__, *_functional.__all__, "schedules", "ALGORITHMS", "StepResult", "global_norm", "save_checkpoint", "load_checkpoint", "available_backends", "backend_status", "set_num_threads", "get_num_threads",
           "zeros_buffers", "__version__"]
