"""The numba backend's one-group fast path, ``step_fast``: the contract of the
cython backend's (see adamfast._dispatch).

family_kernel checks its arguments in detail and builds the scalar and chunk
tables, ~4 us a call in Python; a functional step or a one-group optimizer
has one row and buffers that are almost always plain, so this path tests
them in one cheap pass and otherwise declines, leaving the call to the full
path and its messages.  On adamfast's pool the pass is the cython
extension's ``_step_blocks`` (C: ~0.4 us with the pool call); on numba's own
pool (the fallback) it is Python (~1.5 us).  Part of the adamfast._numba
package: an exception it marks ``adamfast_unwritten`` came before any write
(adamfast._core._kernel_wrote).
"""

from __future__ import annotations

import struct

import numpy as np

from .. import _engine
from ..algorithms._spec import NSLOT
from . import (_EMPTY, _FLOATS, _ND, _NKINDS, _NSUM, NSTATE, PARALLEL_MIN, _entries, _load,
               _run_prange)
from ._pool import STEP_BLOCKS

__all__ = ["step_fast"]

# Zeros that pad a row to NSLOT, by the row's length; a padded row packed as C
# doubles into a spare table is the scalar table of one group (a third of the
# cost of np.array of the tuple).  Each call takes a table of its own from
# _SPARE and gives it back after the kernel: concurrent calls (threads, a
# signal handler's step) never share one.
_PADS = tuple((0.0,) * (NSLOT - k) for k in range(NSLOT + 1))
_ROW = struct.Struct(f"={NSLOT}d")
_SPARE = []


def _disjoint(arrays):
    """Whether no two of ``arrays`` (C-contiguous, so each is one byte range) share a byte."""
    extents = []
    for a in arrays:
        start = a.__array_interface__["data"][0]
        extents.append((start, start + a.nbytes))
    extents.sort()
    return all(extents[j][1] <= extents[j + 1][0] for j in range(len(extents) - 1))


def _distinct(arrays):
    """Whether no array appears twice in ``arrays``."""
    if len(arrays) == 4:  # Adam's: spelled out, a tenth of the set's cost
        a, b, c, d = arrays
        return a is not b and a is not c and a is not d and b is not c and b is not d and \
            c is not d
    return len(set(map(id, arrays))) == len(arrays)


def step_fast(kind_id, params, grads, states, row, num_threads, ema=None):
    """One step of one group, or a refusal: the numba version of the cython backend's
    ``step_fast`` (see adamfast._dispatch), for the calls that family_kernel
    would take without objection.

    ``row`` is the group's scalar row, a tuple of at most NSLOT numbers (the
    spec's ``scalars``).  Returns True after performing the step exactly as
    ``family_kernel`` does over one group and chunk table
    ``_engine.single_chunks(n)``, or False, having written nothing, unless
    every buffer (``ema`` too, when given) is an exact ndarray of params' native
    float dtype and size, C-contiguous, aligned and, but for ``grads``,
    writable, no two overlap, and ``states`` is a tuple of the kind's
    ``NSTATE[kind_id]`` buffers.  It never raises for bad input: the caller's
    full path then says what is wrong.  Why it exists: family_kernel's
    checks and tables cost ~4 us a call in Python.
    """
    if STEP_BLOCKS is not None:  # adamfast's pool: the buffer checks in C
        try:
            if type(kind_id) is not int or not 0 <= kind_id < _NKINDS or kind_id in _NSUM or \
                    type(params) is not _ND or type(num_threads) is not int:
                return False
            block = (_entries.get(kind_id) or _load(kind_id))[2]
            chunks = _engine.single_chunks(params.size)
        except BaseException as exc:  # an interrupt before any write: nothing written
            exc.adamfast_unwritten = True
            raise
        return STEP_BLOCKS(block, NSTATE[kind_id], params, grads, states, row, chunks,
                           num_threads, PARALLEL_MIN, ema)
    # numba's own pool: the same checks in Python.
    try:
        if type(params) is not _ND or type(grads) is not _ND or type(states) is not tuple or \
                type(row) is not tuple or type(kind_id) is not int or \
                type(num_threads) is not int or len(row) > NSLOT or \
                not 0 <= kind_id < _NKINDS or len(states) != NSTATE[kind_id] or \
                kind_id in _NSUM:  # _NSUM: two passes (adamfast._reduce)
            return False
        dtype = params.dtype
        n = params.size
        pflags, gflags = params.flags, grads.flags
        if dtype not in _FLOATS or not pflags.carray or not gflags.c_contiguous or \
                not gflags.aligned or grads.size != n or grads.dtype != dtype:
            return False
        owned = pflags.owndata and gflags.owndata
        buffers = (params, grads) + states if ema is None else (params, grads, ema) + states
        for a in buffers[2:]:
            if type(a) is not _ND:
                return False
            flags = a.flags
            if not flags.carray or a.size != n or a.dtype != dtype:
                return False
            owned = owned and flags.owndata
        if n == 0:
            return True
        # Two arrays that each own their memory are two allocations, so distinct
        # owners never overlap; views (and the same array twice) are compared.
        if not (owned and _distinct(buffers)) and not _disjoint(buffers):
            return False
        try:
            table = _SPARE.pop()
        except IndexError:
            table = np.empty(NSLOT)
        try:
            _ROW.pack_into(table, 0, *row, *_PADS[len(row)])
        except (struct.error, TypeError, ValueError, OverflowError):
            return False
        chunks = _engine.single_chunks(n)
        serial, parallel, _ = _entries.get(kind_id) or _load(kind_id)
        if ema is None:
            ema = _EMPTY[dtype]
    except BaseException as exc:  # an interrupt before any write: nothing written
        exc.adamfast_unwritten = True
        raise
    _run_prange(serial, parallel, n, num_threads, params, grads, states, ema,
                table.reshape(1, NSLOT), chunks)
    _SPARE.append(table)
    return True
