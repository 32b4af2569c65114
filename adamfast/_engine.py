"""The generic middle of every step: chunk tables, scalar tables, one kernel call.

Chunks are the unit of work handed to a thread: ``CHUNK`` elements
(:mod:`adamfast.algorithms._spec`, the one source of the engine's constants).  Each
parameter group is split into its own chunks from its first element, so no
chunk straddles a group and one kernel call serves every group.  The split
depends only on the group boundaries, never on the thread count.
"""

from __future__ import annotations

import numpy as np

from .algorithms._spec import CHUNK, NSLOT

__all__ = ["CHUNK", "chunk_table", "single_chunks", "scalar_table", "run_kernel"]

_single = {}


def chunk_table(bounds, groups=None):
    """The ``(group, lo, hi)`` rows for ranges ``bounds`` = [(lo, hi), ...], each
    split by CHUNK from its own start; range ``i`` is group ``groups[i]`` (its row
    of the scalar table; several ranges may share one, as adamfast.torch's
    per-step classes do), or group ``i`` when ``groups`` is None."""
    if groups is None:
        groups = range(len(bounds))
    rows = []
    for group, (lo, hi) in zip(groups, bounds, strict=True):
        for start in range(lo, hi, CHUNK):
            rows.append((group, start, min(start + CHUNK, hi)))
    table = np.array(rows, dtype=np.intp).reshape(-1, 3)
    table.setflags(write=False)
    return table


def single_chunks(n):
    """The chunk table of one group of ``n`` elements (cached: it is per call)."""
    table = _single.get(n)
    if table is None:
        if len(_single) > 256:
            _single.clear()
        table = _single[n] = chunk_table([(0, n)])
    return table


def scalar_table(rows):
    """Stack per-group rows (tuples of <= NSLOT floats) into the float64 table."""
    table = np.zeros((len(rows), NSLOT))
    for g, row in enumerate(rows):
        table[g, :len(row)] = row
    return table


def run_kernel(b, kid, params, grads, states, rows, chunks, nthreads, ema=None,
               single=False, tensors=None):
    """The writes of one step, for every front end: backend ``b``'s fast path
    when ``single`` (one row, ``rows[0]``, covers every element of the
    buffers), else ``family_kernel`` over the scalar table of ``rows`` and the
    chunk table ``chunks``.

    ``tensors`` is the sorted intp array of tensor boundaries in the flat
    buffers (``0, end of tensor 0, ..., n``), for kinds that reduce per tensor;
    None means the buffers hold one tensor.  A kind whose spec reduces per tensor
    (Lamb) takes the two-pass step of :mod:`adamfast._reduce` instead, never a fast path.
    """
    if kid in _reduce.KIND_IDS:
        _reduce.run(b, kid, params, grads, states, rows, chunks, nthreads, ema, tensors)
        return
    if single and b.step_fast is not None and b.step_fast(kid, params, grads, states, rows[0],
                                                          nthreads, ema):
        return
    try:
        table = scalar_table(rows)
    except BaseException as exc:  # an interrupt before the kernel: nothing written
        exc.adamfast_unwritten = True
        raise
    b.kernel(kid, params, grads, states, table, chunks, nthreads, ema)


from . import _reduce  # noqa: E402  (it uses scalar_table, above)
