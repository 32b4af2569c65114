"""The ``"numpy"`` backend: the reference maths run as written; the test oracle and the fallback.

It is written to be read.  Each algorithm states its maths once, in the
docstring of its module in :mod:`adamfast.algorithms` (Adam:
:mod:`adamfast.algorithms.adam`), next to its ``update_<kind>`` reference
functions; this module runs those functions through the kernel contract of
:mod:`adamfast._dispatch`, so that every backend receives the same buffers
and the same scalars.

Conventions, stated once for the whole package
==============================================
* Step ``t`` is 1-based and counted by the caller (the optimizer objects
  count for you); every per-step scalar -- bias corrections, rectification
  terms, schedules -- is computed once per step in float64 by the
  algorithm's ``scalars(t, hp, gstate)``.
* A float32 step computes in float32 with each scalar rounded to float32
  once, as NumPy does for a Python float meeting a float32 array.  Every
  compiled kernel performs the same operations in the same order, so it
  agrees with this reference to the last bit; the tests still compare with
  per-dtype tolerances.
* ``maximize`` negates the gradient; weight decay still pulls towards zero.
* L2 weight decay adds ``weight_decay * theta`` to the gradient before the
  state sees it (``torch.optim.Adam(weight_decay=...)``); decoupled decay
  multiplies ``theta`` by ``1 - lr * weight_decay`` first and leaves the
  state alone (``torch.optim.AdamW``, ``decoupled_weight_decay=True``).
* NaN or Inf in ``grads`` are not checked for: they propagate into the state
  and the parameters, as in PyTorch (not always as the same non-finite
  value: docs/guarded-step.md).  Maxima propagate NaN like
  ``np.maximum``.
* A learning-rate schedule (:mod:`adamfast.schedules`, e.g. the paper's
  ``lr/sqrt(t)``) is evaluated in Python at each step; kernels see only the
  resulting number.

Each update computes every new value into temporaries and writes the
buffers only at the end, and :func:`family_kernel` computes every group (and
the parameter EMA) before it writes any, so an exception in the middle of a
step (a MemoryError, say) leaves every buffer as it was.
"""

from __future__ import annotations

import operator
from itertools import repeat

import numpy as np

from . import _dispatch
from .algorithms import ALGORITHMS, KINDS as _ALGORITHM_KINDS, NSTATE as _NSTATE_OF, ROOFLINE_KINDS
from .algorithms._spec import CHUNK, EMA_D, EMA_OMD, LANES

__all__ = ["KINDS", "NSTATE", "family_kernel", "reduce_kernel", "sumsq_kernel"]


def _roofline(nstate):
    def update(p, g, s, k):
        for buf in (p,) + tuple(s):
            buf += g
    return update


_UPDATES = {}
for _spec in ALGORITHMS.values():
    _UPDATES.update(_spec.reference)
for _i, _kind in enumerate(ROOFLINE_KINDS):
    _UPDATES[_kind] = _roofline(_i)

KINDS = _ALGORITHM_KINDS + ROOFLINE_KINDS
_BY_ID = tuple(_UPDATES[kind] for kind in KINDS)
# Per kind id: how many state buffers the kind streams (the length of ``states``).
NSTATE = tuple(_NSTATE_OF[kind] for kind in KINDS)
# Per kind id: pass 1 of a kind that reduces per tensor (its Reduction), or None.
_REDUCTIONS = tuple(next((spec.reduce[kind] for spec in ALGORITHMS.values()
                          if kind in spec.reduce), None) for kind in KINDS)


# family_kernel marks an exception that stops it before its first write
# (adamfast.optim._kernel_wrote).
MARKS_UNWRITTEN = True


def family_kernel(kind_id, params, grads, states, scalars, chunks, num_threads, ema=None):
    """Run ``KINDS[kind_id]``'s reference update over the chunk table.

    ``states`` is the tuple of the kind's ``NSTATE[kind_id]`` state buffers,
    in spec order (its length is checked; the Python layer has validated the
    arrays).  Consecutive chunks of one group are merged into one slice (the update is
    element-wise, so slicing never changes a result).  ``num_threads`` is
    accepted for the common signature and ignored.  With ``ema``, each group
    then does ``ema = d*ema + (1 - d)*params`` (the new params) with the
    row's EMA slots: the compiled drivers do it in the same pass.
    """
    try:
        update = _BY_ID[kind_id]
        _dispatch.check_states("family_kernel", KINDS[kind_id], states, NSTATE[kind_id])
        dtype = params.dtype.type
        rows = [tuple(dtype(x) for x in row) for row in scalars.tolist()]
        runs = []
        for group, lo, hi in chunks.tolist():
            if runs and runs[-1][0] == group and runs[-1][2] == lo:
                runs[-1][2] = hi
            else:
                runs.append([group, lo, hi])
        runs = [r for r in runs if r[2] > r[1]]
        if not runs:
            return
        # Compute every run into copies first and write them all at the end, so
        # that a failure midway (a MemoryError in the third group, say) leaves
        # every buffer as it was.  Non-finite values propagate silently, as in
        # the compiled kernels and PyTorch.
        staged = []
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for group, lo, hi in runs:
                k = rows[group]
                new = [b[lo:hi].copy() for b in (params,) + states]
                update(new[0], grads[lo:hi], new[1:], k)
                new.append(ema if ema is None else k[EMA_D] * ema[lo:hi] + k[EMA_OMD] * new[0])
                staged.append(new)
        if len(runs) == 1:
            index = slice(runs[0][1], runs[0][2])
            new = staged[0]
        else:
            index = np.concatenate([np.arange(lo, hi) for _, lo, hi in runs])
            new = [None if parts[0] is None else np.concatenate(parts)
                   for parts in zip(*staged)]
        targets = (params,) + states + ((ema,) if ema is not None else ())
        # As the compiled kernels check it: one read-only target would otherwise
        # stop the writes below after some of them.
        for name, target in zip(("params", *(f"states[{j}]" for j in range(len(states))),
                                 "ema"), targets):
            if not target.flags.writeable:
                raise ValueError(f"family_kernel: {name} must be writable")
        writes = map(operator.setitem, targets, repeat(index),
                     new if ema is not None else new[:-1])
    except BaseException as exc:
        # Python so far, and nothing written: an interrupt here came before the
        # writes, which the optimizer must know (adamfast.optim._kernel_wrote).
        exc.adamfast_unwritten = True
        raise
    # The writes: one call, list() draining the map prepared above, which runs
    # every write (params, states, EMA) in C: no bytecode that runs a signal
    # handler comes between them, so an interrupt comes before all or after.
    list(writes)


def sumsq_kernel(grads, out, num_threads):
    """The norm pass of the guarded step, in its defined order.

    For chunk c (elements [c*CHUNK, (c+1)*CHUNK) of ``grads``): element j of
    the chunk goes to lane j % LANES; each lane sums x*x in float64 in
    element order; the lanes are then added left to right.  ``out[c, 0]``
    is that sum of squares and ``out[c, 1]`` the same sum of ``x - x``,
    which is 0 exactly when every element is finite (for float32 input,
    ``out[c, 0] - out[c, 0]``, the same flag at half the work).  The compiled kernels
    follow the same order, so the results agree bit for bit; the caller adds
    the chunks in chunk order.
    """
    n = grads.size
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(out.shape[0]):
            x = grads[c * CHUNK:(c + 1) * CHUNK].astype(np.float64)
            pad = -x.size % LANES
            x = np.concatenate([x, np.zeros(pad)]).reshape(-1, LANES)
            # A reduction over axis 0 of a C-ordered 2-D array adds row after
            # row into each lane: exactly the lanes' element order.
            columns = (x * x, x - x) if grads.dtype == np.float64 else (x * x,)
            for col, values in enumerate(columns):
                lanes = np.add.reduce(values, axis=0).tolist()
                total = lanes[0]
                for v in lanes[1:]:
                    total += v
                out[c, col] = total
            if grads.dtype != np.float64:
                # A float32 square is at most ~1.2e77: the float64 sum is finite
                # exactly when every element is, so it is its own flag.
                out[c, 1] = out[c, 0] - out[c, 0]
    return n


def _lane_total(x):
    """The sum of squares of ``x`` (any float dtype) in float64, in the norm pass's order:
    element j to lane j % LANES, each lane in element order, lanes left to right."""
    x = x.astype(np.float64)
    x = np.concatenate([x, np.zeros(-x.size % LANES)]).reshape(-1, LANES)
    # Over axis 0 of a C-ordered 2-D array numpy adds row after row into each lane.
    lanes = np.add.reduce(x * x, axis=0).tolist()
    total = lanes[0]
    for v in lanes[1:]:
        total += v
    return total


def reduce_kernel(kind_id, params, grads, states, scalars, chunks, out, num_threads):
    """Pass 1 of a kind that reduces per tensor (adamfast._reduce): per chunk row
    ``(group, lo, hi)``, the kind's ``Reduction.moments`` writes the state buffers
    (params are only read) and ``out[c, r]`` receives the float64 sum of squares
    of its r-th quantity over the chunk, in the norm pass's lane order (element j
    of the chunk to lane j % LANES).  Every chunk is computed before any state
    buffer is written; ``num_threads`` is ignored.
    """
    try:
        red = _REDUCTIONS[kind_id] if 0 <= kind_id < len(KINDS) else None
        if red is None:
            raise ValueError(f"reduce_kernel: kind {kind_id} does not reduce per tensor")
        _dispatch.check_states("reduce_kernel", KINDS[kind_id], states, NSTATE[kind_id])
        nsum = len(red.sums)
        if out.shape != (chunks.shape[0], nsum) or out.dtype != np.float64:
            raise ValueError(f"reduce_kernel: out must be float64 of shape "
                             f"({chunks.shape[0]}, {nsum}), got {out.shape} {out.dtype}")
        dtype = params.dtype.type
        rows = [tuple(dtype(x) for x in row) for row in scalars.tolist()]
        staged, sums = [], np.empty_like(out)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for c, (group, lo, hi) in enumerate(chunks.tolist()):
                new = tuple(b[lo:hi].copy() for b in states)
                quantities = red.moments(params[lo:hi], grads[lo:hi], new, rows[group])
                for r, q in enumerate(quantities):
                    sums[c, r] = _lane_total(q)
                if hi > lo:
                    staged.append((lo, hi, new))
        if staged:
            index = np.concatenate([np.arange(lo, hi) for lo, hi, _ in staged])
            new = [np.concatenate(parts) for parts in zip(*(n for _, _, n in staged))]
        else:
            index, new = np.arange(0), [b[:0] for b in states]
        writes = map(operator.setitem, states + (out,), [index] * len(states) + [Ellipsis],
                     new + [sums])
    except BaseException as exc:
        exc.adamfast_unwritten = True  # Python so far, nothing written
        raise
    list(writes)  # every write in C, as family_kernel's
