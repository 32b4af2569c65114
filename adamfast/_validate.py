"""Argument and buffer checks shared by every entry point.

Everything here runs before any buffer is written, so a call that fails
leaves params and state exactly as they were.  Every error names the
argument, the value given and what was expected.

Hyperparameter checks are declared per algorithm in its spec
(:mod:`adamfast.algorithms._spec`); this module checks buffers and counts.
"""

from __future__ import annotations

import numbers

import numpy as np

from .algorithms._spec import describe

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_describe = describe


# Steps from here on would overflow a double in beta ** t (or t + 1, for Nesterov).
MAX_STEP = 2**1023


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
    if value >= MAX_STEP:
        raise ValueError(f"{name} must be below 2**1023 (the maths takes it as a double), got "
                         f"an integer of {value.bit_length()} bits")
    return value


def _array(name, arr, writable):
    if type(arr) is not np.ndarray:  # exact type first: the common case stays cheap
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got "
                            f"{_describe(arr)}")
        if isinstance(arr, np.ma.MaskedArray):
            raise TypeError(f"{name} must be a plain numpy.ndarray; a masked array's mask would "
                            f"be ignored, got {_describe(arr)}")
        # Any other subclass (np.matrix, np.memmap) is updated through a plain
        # view of the same memory, so every backend sees the same thing and
        # matrix operators never enter the maths.
        arr = arr.view(np.ndarray)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (native byte order), "
                        f"got dtype {arr.dtype!r}")
    flags = arr.flags
    if not flags.c_contiguous:
        # Updating a contiguous copy would leave the caller's array untouched,
        # so refuse rather than copy; a read-only array is refused too, rather
        # than copied behind the caller's back at every step.
        why = "so it can be updated in place" if writable else \
            "(the kernels read it as one flat run)"
        raise ValueError(f"{name} must be C-contiguous {why}, got {_describe(arr)} with strides "
                         f"{arr.strides}; pass np.ascontiguousarray({name})"
                         + (" and keep using that array" if writable else ""))
    if writable and not flags.writeable:
        raise ValueError(f"{name} must be writable, got a read-only {_describe(arr)}")
    if not flags.aligned:
        # Vectorized loops assume element alignment; np.frombuffer at an odd
        # offset can produce an array without it.
        raise ValueError(f"{name} must be aligned to its itemsize, got an unaligned "
                         f"{_describe(arr)}; pass a copy (np.array({name}))")
    return arr if arr.ndim == 1 else arr.reshape(-1)


def _extent(arr):
    # A C-contiguous array is exactly the bytes [data, data + nbytes).
    start = arr.__array_interface__["data"][0]
    return start, start + arr.nbytes


def _plain(named):
    """The 1-D views of ``named`` when every check below passes, in one cheap pass
    (exact ndarrays of one float dtype and size, C-contiguous, aligned, writable
    where asked, no overlap); None when any fails: :func:`buffers` then finds
    which, and says so."""
    first = named[0][1]
    if type(first) is not np.ndarray:
        return None
    dtype, n = first.dtype, first.size
    if dtype not in _FLOAT_DTYPES:
        return None
    owned = True
    arrays = []
    for _, arr, writable in named:
        if type(arr) is not np.ndarray or arr.size != n or arr.dtype != dtype:
            return None
        flags = arr.flags
        if not (flags.carray if writable else flags.c_contiguous and flags.aligned):
            return None
        owned = owned and flags.owndata
        arrays.append(arr)
    # Arrays that each own their memory are separate allocations: distinct
    # owners never overlap.  Otherwise (views, one array twice) compare ranges.
    if n and not (owned and len(set(map(id, arrays))) == len(arrays)):
        extents = sorted(_extent(a) for a in arrays)
        if any(extents[j][1] > extents[j + 1][0] for j in range(len(extents) - 1)):
            return None
    return [a if a.ndim == 1 else a.reshape(-1) for a in arrays]


def buffers(named):
    """Check ``[(name, array, writable), ...]`` and return the 1-D views, in order.

    The first array fixes the dtype and size.  No two buffers may overlap:
    the kernels read and write each element once and would silently mix
    values.  Every buffer is C-contiguous here, so its memory is exactly one
    byte range, and comparing the ranges decides overlap exactly, whatever
    the arrays' bases (views, ``np.frombuffer``, memmaps).
    """
    views = _plain(named)
    if views is not None:
        return views
    views = [_array(name, arr, writable) for name, arr, writable in named]
    first_name, first = named[0][0], views[0]
    for (name, arr, _), view in zip(named[1:], views[1:]):
        if view.dtype != first.dtype:
            raise TypeError(f"{name} must have the same dtype as {first_name} ({first.dtype}), "
                            f"got {view.dtype}")
        if view.size != first.size:
            raise ValueError(f"{name} must have the same size as {first_name} ({first.size} "
                             f"elements, shape {named[0][1].shape}), got {view.size} elements "
                             f"(shape {arr.shape})")
    if first.size:
        extents = [_extent(v) for v in views]
        for i in range(len(views)):
            for j in range(i + 1, len(views)):
                (a0, a1), (b0, b1) = extents[i], extents[j]
                if a0 < b1 and b0 < a1:
                    raise ValueError(f"{named[i][0]} and {named[j][0]} overlap in memory; "
                                     f"every buffer must be a separate array")
    return views
