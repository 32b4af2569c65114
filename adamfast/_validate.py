"""Argument and buffer checks shared by every entry point.

Everything here runs before any buffer is written, so a call that fails
leaves params and state exactly as they were.  Every error names the
argument, the value given and what was expected.

The checks sit on the per-call path of :func:`adamfast.adam_step`, whose
overhead budget is a few microseconds, so they use cheap attribute tests and
only fall back to :func:`numpy.may_share_memory` when two buffers could
overlap (they share an owner).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def real(name, value):
    """Return ``value`` as a Python float, or raise TypeError."""
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    return float(value)


def nonneg(name, value):
    """A finite real number >= 0 (lr, eps, weight_decay)."""
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    x = real(name, value)
    if not (0.0 <= x < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def beta(name, value):
    """A real number in [0, 1) (beta1, beta2)."""
    if type(value) is float and 0.0 <= value < 1.0:
        return value
    x = real(name, value)
    if not (0.0 <= x < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return x


def step(value, name="step"):
    """A positive integer: the 1-based number t of this update."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be a positive integer (the 1-based update count t), "
                            f"got {_describe(value)}")
        value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (the 1-based update count t), "
                         f"got {value}")
    return value


def flag(name, value):
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_describe(value)}")


def hyperparameters(lr, beta1, beta2, eps, weight_decay):
    return (nonneg("lr", lr), beta("beta1", beta1), beta("beta2", beta2), nonneg("eps", eps),
            nonneg("weight_decay", weight_decay))


def _array(name, arr, writable):
    if type(arr) is not np.ndarray:  # exact type first: the common case stays cheap
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got "
                            f"{_describe(arr)}")
        if isinstance(arr, np.ma.MaskedArray):
            raise TypeError(f"{name} must be a plain numpy.ndarray; a masked array's mask would "
                            f"be ignored, got {_describe(arr)}")
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (native byte order), "
                        f"got dtype {arr.dtype!r}")
    flags = arr.flags
    if not flags.c_contiguous:
        # Updating a contiguous copy would leave the caller's array untouched,
        # so refuse rather than copy.
        raise ValueError(f"{name} must be C-contiguous so it can be updated in place, got "
                         f"{_describe(arr)} with strides {arr.strides}; pass "
                         f"np.ascontiguousarray({name}) and keep using that array")
    if writable and not flags.writeable:
        raise ValueError(f"{name} must be writable, got a read-only {_describe(arr)}")
    if not flags.aligned:
        # Vectorized loops assume element alignment; np.frombuffer at an odd
        # offset can produce an array without it.
        raise ValueError(f"{name} must be aligned to its itemsize, got an unaligned "
                         f"{_describe(arr)}; pass a copy (np.array({name}))")
    return arr if arr.ndim == 1 else arr.reshape(-1)


def _owner(arr):
    base = arr.base
    return arr if base is None else base


def buffers(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, empty):
    """Check the buffers and return them as 1-D views, in kernel order.

    ``empty`` maps a dtype to the length-0 placeholder passed as
    ``max_exp_avg_sq`` when ``amsgrad`` is off.
    """
    p = _array("params", params, True)
    g = _array("grads", grads, False)
    m = _array("exp_avg", exp_avg, True)
    v = _array("exp_avg_sq", exp_avg_sq, True)
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True: pass an array like "
                             "exp_avg_sq, zero-initialised before the first step")
        vmax = _array("max_exp_avg_sq", max_exp_avg_sq, True)
    else:
        vmax = None
    dtype = p.dtype
    size = p.size
    if not (g.dtype == m.dtype == v.dtype == dtype and g.size == m.size == v.size == size
            and (vmax is None or (vmax.dtype == dtype and vmax.size == size))):
        _mismatch(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad)
    # No two buffers may overlap: the kernels read and write each element once
    # and would silently mix values.  Arrays with different owners (numpy points
    # a view's .base at the object owning the memory) cannot overlap, so the
    # exact test only runs when two buffers share an owner; four fresh arrays
    # (no .base, distinct objects) skip it outright.
    if (params.base is not None or grads.base is not None or exp_avg.base is not None
            or exp_avg_sq.base is not None or amsgrad or params is grads or params is exp_avg
            or params is exp_avg_sq or grads is exp_avg or grads is exp_avg_sq
            or exp_avg is exp_avg_sq):
        _overlap(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad)
    return p, g, m, v, (empty[dtype] if vmax is None else vmax)


_NAMES = ("params", "grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _mismatch(*arrays_and_amsgrad):
    arrays = arrays_and_amsgrad[:5] if arrays_and_amsgrad[5] else arrays_and_amsgrad[:4]
    params = arrays[0]
    for name, arr in zip(_NAMES[1:], arrays[1:]):
        if arr.dtype != params.dtype:
            raise TypeError(f"{name} must have the same dtype as params ({params.dtype}), got "
                            f"{arr.dtype}")
        if arr.size != params.size:
            raise ValueError(f"{name} must have the same size as params ({params.size} elements, "
                             f"shape {params.shape}), got {arr.size} elements (shape {arr.shape})")


def _overlap(*arrays_and_amsgrad):
    arrays = arrays_and_amsgrad[:5] if arrays_and_amsgrad[5] else arrays_and_amsgrad[:4]
    owners = {id(_owner(a)) for a in arrays}
    if len(owners) == len(arrays) or arrays[0].size == 0:
        return
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            if np.may_share_memory(arrays[i], arrays[j]):
                raise ValueError(f"{_NAMES[i]} and {_NAMES[j]} overlap in memory; every buffer "
                                 f"must be a separate array")
