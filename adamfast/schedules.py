"""Learning-rate schedules: callables of the 1-based step ``t``, evaluated in Python.

Pass one as ``lr`` (of an optimizer or of one param group) and the optimizer
calls it with the step it is about to take; the kernels only ever see the
resulting number, so a schedule costs nothing in the kernels and never
changes their code.  The functional steps take plain numbers: call the
schedule yourself, ``lr=schedule(t)``.

Every schedule is a small picklable object (not a closure), so an optimizer
holding one can be copied and checkpointed.  ``t`` counts from 1 (the first
update), as ``step`` does everywhere in adamfast; where a framework counts
from 0 the conversion is stated.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .algorithms._spec import nonneg

__all__ = ["constant", "inverse_sqrt", "inverse_time", "step_decay", "exponential",
           "linear_warmup", "cosine"]


def _count(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or \
            value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _Schedule:
    __slots__ = ()

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self):
        return hash((type(self),) + tuple(getattr(self, k) for k in self.__slots__))

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)


class constant(_Schedule):
    """``lr`` at every step."""

    __slots__ = ("lr",)

    def __init__(self, lr):
        self.lr = nonneg("lr", lr)

    def __call__(self, t):
        return self.lr


class inverse_sqrt(_Schedule):
    """The paper's decayed rate (Kingma & Ba, section 4): ``lr / sqrt(t)``."""

    __slots__ = ("lr",)

    def __init__(self, lr):
        self.lr = nonneg("lr", lr)

    def __call__(self, t):
        return self.lr / math.sqrt(t)


class inverse_time(_Schedule):
    """Keras' legacy ``decay`` argument: ``lr / (1 + decay * iterations)``.

    Keras counts ``iterations`` from 0 for the first update, so at adamfast's
    step ``t`` this is ``lr / (1 + decay * (t - 1))``.
    """

    __slots__ = ("lr", "decay")

    def __init__(self, lr, decay):
        self.lr, self.decay = nonneg("lr", lr), nonneg("decay", decay)

    def __call__(self, t):
        return self.lr / (1.0 + self.decay * (t - 1))


class step_decay(_Schedule):
    """``lr * gamma ** ((t - 1) // step_size)``, as ``torch.optim.lr_scheduler.StepLR``
    stepped once per update (its counter is 0 at the first update)."""

    __slots__ = ("lr", "step_size", "gamma")

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = nonneg("lr", lr)
        self.step_size = _count("step_size", step_size)
        self.gamma = nonneg("gamma", gamma)

    def __call__(self, t):
        return self.lr * self.gamma ** ((t - 1) // self.step_size)


class exponential(_Schedule):
    """``lr * gamma ** (t - 1)``, as ``torch.optim.lr_scheduler.ExponentialLR``
    stepped once per update."""

    __slots__ = ("lr", "gamma")

    def __init__(self, lr, gamma):
        self.lr, self.gamma = nonneg("lr", lr), nonneg("gamma", gamma)

    def __call__(self, t):
        return self.lr * self.gamma ** (t - 1)


class linear_warmup(_Schedule):
    """``lr * t / warmup_steps`` for the first ``warmup_steps`` steps, then ``lr``
    (then ``after(t - warmup_steps)`` if a schedule ``after`` is given)."""

    __slots__ = ("lr", "warmup_steps", "after")

    def __init__(self, lr, warmup_steps, after=None):
        self.lr = nonneg("lr", lr)
        self.warmup_steps = _count("warmup_steps", warmup_steps, 0)
        if after is not None and not callable(after):
            raise TypeError(f"after must be a schedule (a callable of the step) or None, got "
                            f"{after!r}")
        self.after = after

    def __call__(self, t):
        if t <= self.warmup_steps:
            return self.lr * t / self.warmup_steps
        if self.after is not None:
            return self.after(t - self.warmup_steps)
        return self.lr


class cosine(_Schedule):
    """Cosine decay with linear warmup.

    Steps ``1..warmup_steps`` rise linearly to ``lr``; the next
    ``total_steps - warmup_steps`` follow ``min_lr + (lr - min_lr) * (1 +
    cos(pi * k / (total_steps - warmup_steps))) / 2`` with ``k`` from 0;
    afterwards ``min_lr``.  With ``warmup_steps=0`` and ``min_lr=0`` this is
    optax's ``cosine_decay_schedule`` (optax counts from 0: its count is
    ``t - 1``).
    """

    __slots__ = ("lr", "total_steps", "warmup_steps", "min_lr")

    def __init__(self, lr, total_steps, warmup_steps=0, min_lr=0.0):
        self.lr = nonneg("lr", lr)
        self.total_steps = _count("total_steps", total_steps)
        self.warmup_steps = _count("warmup_steps", warmup_steps, 0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps must be < total_steps ({total_steps}), got "
                             f"{warmup_steps}")
        self.min_lr = nonneg("min_lr", min_lr)

    def __call__(self, t):
        if t <= self.warmup_steps:
            return self.lr * t / self.warmup_steps
        k = t - 1 - self.warmup_steps
        span = self.total_steps - self.warmup_steps
        if k >= span:
            return self.min_lr
        return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * k / span)) / 2.0
