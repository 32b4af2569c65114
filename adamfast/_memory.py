"""Allocation of the flat buffers an Adam step streams through.

Why this exists: an Adam step streams four or five equally long buffers.
NumPy allocates each large array on its own (2 MiB transparent huge pages
where the kernel allows), so equal-sized buffers tend to start at the same
offset modulo the page size.  The streams then compete for the same cache
sets and memory banks, and on the machine adamfast is developed on
(2-core AMD EPYC, Zen 3) a 16M-parameter float32 step over such buffers took
1.5x longer on one thread and 1.25x on two than over the same data laid
out at staggered offsets; the roofline kernel slowed the same way, so this
is the memory system, not the arithmetic.  ``python -m adamfast bench
--layout separate`` measures it on any machine.

:func:`zeros_buffers` lays ``count`` buffers out in one allocation, each
starting at a different offset modulo 2 MiB (a multiple of the 64-byte cache
line), and is what :class:`adamfast.Adam` uses for its flat buffers.
"""

from __future__ import annotations

import numpy as np

_PAGE = 2 * 2**20  # huge page: offsets are staggered within it
_SKEW = 256 * 2**10 + 64  # between consecutive buffers: not a multiple of any page size
# Below this many bytes per buffer the streams fit in cache and the padding
# (up to 2 MiB per buffer) would cost more than it saves.
_MIN_BYTES = 1 << 20

__all__ = ["zeros_buffers"]


def zeros_buffers(n, dtype=np.float32, count=4):
    """Return ``count`` zero-filled 1-D arrays of ``n`` elements, laid out for streaming.

    Use it to allocate ``params``, ``grads``, ``exp_avg``, ``exp_avg_sq`` (and
    ``max_exp_avg_sq``) for :func:`adamfast.adam_step` on large buffers.  The
    arrays are ordinary, independent, C-contiguous, writable NumPy arrays
    that never overlap; they share one underlying allocation, so memory is
    released when the last of them is.  Small buffers (under 1 MiB) are
    allocated separately, as ``np.zeros`` would.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    n, count = int(n), int(count)
    nbytes = n * dtype.itemsize
    if nbytes < _MIN_BYTES:
        return tuple(np.zeros(n, dtype) for _ in range(count))
    # Each buffer gets a whole number of huge pages plus its own skew.
    stride = -(-nbytes // _PAGE) * _PAGE
    total = stride * count + _SKEW * count + _PAGE
    raw = np.zeros(total, np.uint8)
    start = -raw.ctypes.data % _PAGE  # first buffer on a huge-page boundary
    out = []
    for k in range(count):
        off = start + k * (stride + _SKEW)
        out.append(raw[off:off + nbytes].view(dtype))
    return tuple(out)
