"""The two-pass step of a kind that reduces per tensor (Lamb's trust ratio).

A spec declares, per kind, an :class:`adamfast.algorithms._spec.Reduction`:
the quantities of its update whose squares it needs summed per tensor, a
per-tensor float64 scalar computed from those sums and the group's row, and
the slot that scalar goes into.  :func:`adamfast._engine.run_kernel`, through
which every front end makes its step's writes, sends such a kind here:

1. the chunk table is split at the tensor boundaries (cached), so that no
   chunk straddles a tensor;
2. pass 1, the backend's ``reduce_kernel``: the state buffers are written and
   each chunk's float64 sums of squares land in an ``(nchunks, R)`` array, in
   the norm pass's lane order (element j of a chunk to lane j % LANES), so
   they never depend on the thread count;
3. here, in Python and float64: the chunks of each tensor are added in
   chunk order and the spec's scalar is computed per tensor;
4. pass 2, an ordinary ``family_kernel`` call of the kind, with one scalar
   row per tensor (its group's row, the scalar in its slot) and chunk rows
   that point at their tensor's row; the parameter EMA rides on this pass.

All of a step or none of it: a refusal in pass 1 writes nothing; once pass 1
has written, an interrupt (KeyboardInterrupt) is held back until pass 2 is
done too, then raised, so an optimizer counts the step with its buffers.
"""

from __future__ import annotations

import bisect

import numpy as np

from ._engine import scalar_table
from .algorithms import ALGORITHMS, KINDS

__all__ = ["KIND_IDS", "run"]

# kind id (the registry's order, shared by every backend) -> (Reduction, its slot's index).
_BY_ID = {i: (spec.reduce[kind], spec.slots.index(spec.reduce[kind].slot))
          for i, kind in enumerate(KINDS) for spec in ALGORITHMS.values() if kind in spec.reduce}
KIND_IDS = frozenset(_BY_ID)

_splits = {}


def split(chunks, tensors, n):
    """The chunk table split at tensor boundaries, and how to reduce it (cached).

    Returns ``(pass1, pass2, rows, order, starts)``: ``pass1`` the split
    ``(row, lo, hi)`` table, ``pass2`` the same rows pointing at their
    tensor's index in ``rows`` (the scalar row of each touched tensor, in
    order of first appearance), and ``order``/``starts`` the stable sort of
    the split chunks by tensor and each tensor's first position in it (both None
    when each tensor is one chunk, in order).
    """
    bounds = (0, n) if tensors is None else tuple(np.asarray(tensors, np.intp).tolist())
    key = (chunks.tobytes(), bounds)
    hit = _splits.get(key)
    if hit is not None:
        return hit
    pieces, tensor_of = [], []
    for r, lo, hi in chunks.tolist():
        while lo < hi:
            t = bisect.bisect_right(bounds, lo) - 1
            end = min(hi, bounds[t + 1]) if t + 1 < len(bounds) else hi
            pieces.append((r, lo, end))
            tensor_of.append(t)
            lo = end
    index, rows = {}, []
    for (r, lo, hi), t in zip(pieces, tensor_of):
        j = index.get(t)
        if j is None:
            index[t] = len(rows)
            rows.append(r)
        elif rows[j] != r:
            raise ValueError(f"chunks: tensor {t} is covered by scalar rows {rows[j]} and {r}; "
                             f"a tensor takes one row")
    local = np.array([index[t] for t in tensor_of], dtype=np.intp)
    if len(rows) == len(pieces):
        order = starts = None  # one chunk per tensor, in order: the sums are the tensors'
    else:
        order = np.argsort(local, kind="stable")
        starts = np.searchsorted(local[order], np.arange(len(rows)))
        for a in (order, starts):
            a.setflags(write=False)
    pass1 = np.array(pieces, dtype=np.intp).reshape(-1, 3)
    pass2 = pass1.copy()
    pass2[:, 0] = local
    for a in (pass1, pass2):
        a.setflags(write=False)
    hit = (pass1, pass2, np.array(rows, dtype=np.intp), order, starts)
    if len(_splits) > 64:
        _splits.clear()
    _splits[key] = hit
    return hit


def _second_table(table, red_info, sums, rows, order, starts):
    """Pass 2's scalar table: per touched tensor, its group's row with the spec's scalar."""
    red, slot = red_info
    # Each tensor's chunks in chunk order (reduceat adds a segment's rows in order).
    per_tensor = sums if order is None else np.add.reduceat(sums[order], starts, axis=0)
    second = table[rows]
    for t, (values, row) in enumerate(zip(per_tensor.tolist(), second.tolist())):
        second[t, slot] = red.scalar(tuple(values), row)
    return second


def _wrote(exc):
    # A refusal (an Exception) or an exception a backend marked as raised before
    # its writes left the buffers as they were; anything else (an interrupt as a
    # compiled call returned) came after the writes.
    return not (isinstance(exc, Exception) or getattr(exc, "adamfast_unwritten", False))


def run(b, kid, params, grads, states, rows, chunks, nthreads, ema=None, tensors=None):
    """One step of reducing kind ``kid`` on backend ``b``: the two passes (module docstring)."""
    try:
        reduce_kernel = getattr(b.module, "reduce_kernel", None)
        if reduce_kernel is None:
            raise ValueError(f"backend {b.name!r} has no reduce_kernel for kind {KINDS[kid]!r} "
                             f"(a stale build? rebuild with `pip install -e .`)")
        pass1, pass2, trows, order, starts = split(chunks, tensors, params.size)
        table = scalar_table(rows)
        sums = np.empty((pass1.shape[0], len(_BY_ID[kid][0].sums)))
    except BaseException as exc:
        exc.adamfast_unwritten = True
        raise
    held = None
    try:
        reduce_kernel(kid, params, grads, states, table, pass1, sums, nthreads)
    except BaseException as exc:
        if not _wrote(exc):
            raise
        held = exc
    if not len(trows):  # no element to step (pass 1 only checked the buffers)
        if held is not None:
            raise held
        return
    # Pass 1 has written the state: finish the step whatever interrupts it.
    while True:
        try:
            second = _second_table(table, _BY_ID[kid], sums, trows, order, starts)
            break
        except KeyboardInterrupt as exc:
            held = exc
    while True:
        try:
            b.kernel(kid, params, grads, states, second, pass2, nthreads, ema)
            break
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise  # not reached: pass 1 accepted the same buffers
            held = exc
            if _wrote(exc):
                break
    if held is not None:
        # Raised from here, without the backend's frames and unmarked: the step was written.
        held.adamfast_unwritten = False
        raise held.with_traceback(None)
