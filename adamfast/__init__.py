"""adamfast: the Adam optimizer family, fast on CPUs.

Importing adamfast compiles nothing: numba's kernels compile (or load from
their on-disk cache) on the first call that uses them.
"""

from . import schedules
from .checkpoint import load_checkpoint, save_checkpoint
from ._dispatch import available_backends, get_num_threads, set_num_threads
from ._guard import StepResult, global_norm
from ._memory import zeros_buffers
from .algorithms import ALGORITHMS
from .functional import (adadelta_step, adagrad_step, adam_step, adamax_step, lion_step,
                         nadam_step, radam_step, rmsprop_step, sgd_step)
from .optim import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, NAdam, Optimizer, RAdam, RMSprop

__version__ = "0.2.0"

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop", "SGD", "Adadelta",
           "Lion", "Optimizer", "adam_step", "adamax_step", "nadam_step", "radam_step",
           "adagrad_step", "rmsprop_step", "sgd_step", "adadelta_step", "lion_step",
           "schedules", "ALGORITHMS", "StepResult", "global_norm", "save_checkpoint", "load_checkpoint", "available_backends", "set_num_threads", "get_num_threads",
           "zeros_buffers", "__version__"]
