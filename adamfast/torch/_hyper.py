"""A param group's hyperparameters: read as plain numbers, validated, and
validated again at a step only when a value changed (schedulers, in place too).

Plain functions taking the optimizer; :class:`adamfast.torch.Optimizer` binds
them as its methods.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch

from ._common import _BETAS_ALIKE

def _plain(value):
    """torch accepts tensors as hyperparameters (lr, betas); the spec checks numbers."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a tensor hyperparameter must hold one value, got shape "
                             f"{tuple(value.shape)}")
        return value.item()
    if isinstance(value, tuple) or _other_sequence(value):
        # torch takes any sequence of betas (an array, a config library's list): a
        # tuple of its values for the spec, whose check takes tuples and lists only.
        return tuple(_plain(v) for v in value)
    return value


def _other_sequence(value):
    """A sequence other than a tuple, list or str: an array, a config's list."""
    return isinstance(value, (np.ndarray, Sequence)) and \
        not isinstance(value, (tuple, list, str, bytes))


_PLAIN_TYPES = (float, int, bool, str, type(None), np.float64, np.float32, np.bool_)


def _reader(value):
    """A zero-argument function returning the current value of a hyperparameter that
    can change in place without the group noticing (a Tensor, which schedulers
    ``fill_``; a list; a tuple holding either), or None for one that cannot."""
    if type(value) in _PLAIN_TYPES:  # isinstance(x, torch.Tensor) costs ~0.2 us
        return None
    if isinstance(value, torch.Tensor):
        return value.tolist
    if isinstance(value, (list, tuple)):
        parts = [_reader(v) for v in value]
        if all(r is None for r in parts):
            return value.copy if isinstance(value, list) else None
        return lambda: [v if r is None else r() for v, r in zip(value, parts)]
    if _other_sequence(value):  # may be edited in place, as a list
        return lambda: [_plain(v) for v in value]
    return None


def _readers(raw):
    """One function reading every in-place-changeable value of ``raw``, or None."""
    found = [r for r in map(_reader, raw) if r is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return lambda: [r() for r in found]


def check_flags(self, group, where):
    if group.get("capturable"):
        raise ValueError(f"{where}capturable=True is for CUDA graph capture; adamfast.torch "
                         f"steps CPU tensors and does not support it")
    if group.get("differentiable"):
        raise ValueError(f"{where}differentiable=True is not supported: adamfast's kernel "
                         f"updates the params in place outside autograd")

def hp(self, group):
    """The spec's hyperparameters of a group, as plain numbers (extras default)."""
    out = {}
    for name in self._hp_names:
        if name in group:
            out[name] = _plain(group[name])
        elif name in self._extras:
            out[name] = self.defaults.get(name, self._extras[name])
        else:
            raise ValueError(f"param group is missing {name!r}")
    return out

def validate(self, group, where):
    if self.spec.name in _BETAS_ALIKE:
        b = group.get("betas")
        if isinstance(b, (tuple, list)) and len(b) == 2 and \
                isinstance(b[0], torch.Tensor) != isinstance(b[1], torch.Tensor):
            raise ValueError(f"{where}betas must be either both floats or both Tensors, as "
                             f"in torch.optim.{self.spec.name}; got {b!r}")
    hp = self._hp(group)
    if callable(hp["lr"]):
        raise TypeError(f"{where}lr must be a number or a tensor; adamfast.torch takes "
                        f"schedules through torch.optim.lr_scheduler")
    return self.spec.validate(hp, where)

def group_hp(self, gi, group):
    """A group's validated hp, checked again only when a value changed (schedulers).

    The cache holds the objects the group held when it was validated.  The
    step's check is one of identity over the group's values (cheaper than
    reading the hyperparameters one by one), then, for the values that can
    change in place (a Tensor lr that a scheduler ``fill_``s, Tensor betas,
    list betas), of their current value: an in-place change takes effect and
    is checked.  Equality alone would not do: a Tensor compares equal to the
    float of its value (in the Tensor's precision), so replacing one by the
    other would go unseen.
    """
    cached = self._hp_cache.get(gi)
    if cached is not None and (
            (len(group) == len(cached[0]) and all(map(operator.is_, group.values(),
                                                      cached[0])))
            or self._same_hp(gi, group, cached)):
        read = cached[2]
        if read is None or read() == cached[3]:
            return cached[1]
    self._hp_changed = True
    where = f"param_groups[{gi}]: "
    self._check_flags(group, where)
    raw = tuple(map(group.get, self._hp_names))
    read = _readers(raw)
    seen = None if read is None else read()  # before validating: a change after it is seen
    hp = self._validate(group, where)
    if self._stale:
        # The state the last step made is owed to torch's dicts with the settings that
        # step used, which the cache still holds: fill them before it takes the new ones.
        self._sync_state()
    self._hp_cache[gi] = [tuple(group.values()), hp, read, seen, raw]
    return hp

def same_hp(self, gi, group, cached):
    """The group holds other objects than when validated: whether its
    hyperparameters are still the cached ones (the others may differ: a
    scheduler's ``initial_lr``, a user's key), each the same object or a plain
    number of the same type and value (a scheduler assigning an equal float).
    If so the cache takes the new objects, for the next identity check."""
    raw = tuple(map(group.get, self._hp_names))
    for a, b in zip(raw, cached[4]):
        if a is not b and (type(a) is not type(b) or type(a) not in _PLAIN_TYPES or a != b):
            return False
    self._check_flags(group, f"param_groups[{gi}]: ")
    cached[0] = tuple(group.values())
    cached[4] = raw
    return True
