"""Pass 1 of a kind that reduces per tensor (adamfast/_reduce.py; Lamb); the numba version of
kernels/_reduce.pxi.

Per chunk row ``(group, lo, hi)``, the kind's reduce element
``red_<kind>(i, p, g, s, k, q, j)`` writes the state buffers and stores the
quantities whose squares the spec sums at ``q[r, j]``; :func:`reduce_chunk`
sums them in float64 in the norm pass's order (element j of the chunk to
lane j % LANES, each lane in element order, lanes added left to right) into
``out[c, r]``.  Work goes in sub-blocks of RBLOCK elements (a multiple of
LANES, so the lanes continue across them): the element loop, which stores
the quantities in a small buffer and vectorizes like any kind's, then the
lanes' loop over the buffer.  The sub-blocks start at a cache line of params
(_driver.line_start); the elements before it are a head whose squares go to
the first lanes, and the accumulators are kept rotated by the head's length
(kernels/_reduce.pxi says why).

:func:`reduce_kernel` is the numba backend's pass-1 entry (checked as
family_kernel), reached through ``adamfast._numba.reduce_kernel``, which imports
this module on first use with LLVM's SLP vectorizer on.

A kind's module defines its entries (module level, for numba's cache):
``<kind>_reduce_serial(p, g, s, scalars, chunks, out)``, ``<kind>_reduce_parallel``
(``prange``) and ``<kind>_reduce_block`` (adamfast's pool's entry, calling
:func:`reduce_blocks`, compiled into a cfunc on first use as a kind's block
entry is), in ``REDUCE_ENTRIES``.  ``ctx`` of a block entry: the
addresses of params, grads, scalars, chunks and out, then of the state
buffers, then n, groups, chunk rows, quantities and 1 for float64.
"""

from __future__ import annotations

import operator

import numba
import numpy as np
from numba import carray, njit
from numba.extending import overload

from .. import _dispatch
from .. import _numba as pkg
from ..algorithms import NSTATE
from ..algorithms._spec import PREFETCH_BLOCK
from ._driver import (LANES, LINE, NSLOT, _address, _generated, _typical, ahead, line_start,
                      prefer_wide_vectors, row, spans)
from ._norm import _squares

RBLOCK = 512  # elements per sub-block: the quantities stay in L1
if RBLOCK % LANES or RBLOCK % PREFETCH_BLOCK:
    raise ImportError("RBLOCK must be a multiple of LANES and of PREFETCH_BLOCK")
if LINE // 4 > LANES:
    raise ImportError("a head (up to a line of float32s) must fit in the lanes")
R_P, R_G, R_SCALARS, R_CHUNKS, R_OUT, R_STATES = range(6)
R_N, R_GROUPS, R_ROWS, R_NSUM, R_F64 = range(5)  # after the states


@njit(inline="always")
def add_squares(arow, x, rows):
    """arow[j] += x[LANES*r + j]**2 in float64 for every row r < rows, in row order.

    The lanes as spelled-out locals through _norm's _squares, which LLVM's SLP
    vectorizer packs (a reducing kind's module is imported with it on, as
    _norm: adamfast._numba._import); it reorders nothing."""
    a = _squares(x, rows, (arow[0], arow[1], arow[2], arow[3], arow[4], arow[5], arow[6],
                           arow[7], arow[8], arow[9], arow[10], arow[11], arow[12], arow[13],
                           arow[14], arow[15]), False)
    arow[0], arow[1], arow[2], arow[3] = a[0], a[1], a[2], a[3]
    arow[4], arow[5], arow[6], arow[7] = a[4], a[5], a[6], a[7]
    arow[8], arow[9], arow[10], arow[11] = a[8], a[9], a[10], a[11]
    arow[12], arow[13], arow[14], arow[15] = a[12], a[13], a[14], a[15]


@njit(inline="always")
def _rblocks(red, p, g, s, k, q, m):
    # Elements [0, m) of a sub-block, in prefetched blocks as _driver.walk's
    # (_driver.ahead); RBLOCK is a multiple of PREFETCH_BLOCK, so only a
    # chunk's last sub-block has a tail.
    full = m - m % PREFETCH_BLOCK
    for b in range(0, full, PREFETCH_BLOCK):
        ahead(red, p, g, s, b)
        for j in range(b, b + PREFETCH_BLOCK):
            red(j, p, g, s, k, q, j)
    for j in range(full, m):
        red(j, p, g, s, k, q, j)


@njit(inline="always")
def reduce_chunk(red, p, g, s, scalars, chunks, out, c):
    """Chunk row ``c``: the state written, ``out[c, r]`` the sums of squares."""
    prefer_wide_vectors()
    lo = chunks[c, 1]
    hi = chunks[c, 2]
    k = row(p, scalars[chunks[c, 0]])
    nsum = out.shape[1]
    q = np.empty((nsum, RBLOCK), p.dtype)
    acc = np.zeros((nsum, LANES))  # acc[r, t] is lane (t + head) % LANES
    pad = np.zeros(LANES, p.dtype)
    typical = _typical(red, k)
    mid = line_start(p, lo, hi)
    head = mid - lo
    p_ = p[lo:mid]
    g_ = g[lo:mid]
    s_ = spans(s, lo, mid)
    for j in range(head):
        red(j, p_, g_, s_, k, q, j)
    for r in range(nsum):
        for j in range(head):
            v = np.float64(q[r, j])
            acc[r, LANES - head + j] = acc[r, LANES - head + j] + v * v
    for b0 in range(mid, hi, RBLOCK):
        m = min(RBLOCK, hi - b0)
        # Slices walked from 0, as in _driver.chunk: an index b0 + j would make
        # numba emit wraparound handling, which stops LLVM vectorizing.
        p_ = p[b0:b0 + m]
        g_ = g[b0:b0 + m]
        s_ = spans(s, b0, b0 + m)
        # Two copies of the element loop, as _driver.walk's (see _driver._typical).
        if typical:
            _rblocks(red, p_, g_, s_, k, q, m)
        else:
            _rblocks(red, p_, g_, s_, k, q, m)
        full = m - m % LANES
        for r in range(nsum):
            add_squares(acc[r], q[r], full // LANES)
            if full < m:
                # A partial last row, padded with zeros as in the reference: adding
                # +0.0 leaves a lane's sum as it was, NaN and Inf included.
                pad[:m - full] = q[r, full:m]
                pad[m - full:] = 0
                add_squares(acc[r], pad, 1)
    for r in range(nsum):
        total = acc[r, (LANES - head) % LANES]
        for j in range(1, LANES):
            total = total + acc[r, (j - head + LANES) % LANES]
        out[c, r] = total


def _rviews(red, h, dt):
    """(params, grads, states, scalars, chunks, out) of the call in ``h``, as arrays."""


@overload(_rviews, inline="always")
def _rviews_impl(red, h, dt):
    nstate = NSTATE[red.dispatcher.py_func.__name__[len("red_"):]]
    sizes = R_STATES + nstate
    states = "".join(f"carray(_address(h[{R_STATES + j}]), (n,), dt), " for j in range(nstate))
    lines = [f"n = h[{sizes + R_N}]",
             f"p = carray(_address(h[{R_P}]), (n,), dt)",
             f"g = carray(_address(h[{R_G}]), (n,), dt)",
             f"scalars = carray(_address(h[{R_SCALARS}]), (h[{sizes + R_GROUPS}], {NSLOT}), "
             f"np.float64)",
             f"chunks = carray(_address(h[{R_CHUNKS}]), (h[{sizes + R_ROWS}], 3), np.intp)",
             f"out = carray(_address(h[{R_OUT}]), (h[{sizes + R_ROWS}], h[{sizes + R_NSUM}]), "
             f"np.float64)",
             f"return p, g, ({states}), scalars, chunks, out"]
    return _generated("rviews_impl", "red, h, dt", lines,
                      {"carray": carray, "_address": _address, "np": np})


def _r_is_f64(red, h):
    """Whether the call in ``h`` is on float64 buffers."""


@overload(_r_is_f64, inline="always")
def _r_is_f64_impl(red, h):
    word = R_STATES + NSTATE[red.dispatcher.py_func.__name__[len("red_"):]] + R_F64
    return _generated("r_is_f64_impl", "red, h", [f"return h[{word}] != 0"], {})


@njit(inline="always")
def _typed_rblocks(red, h, c0, c1, dt):
    p, g, s, scalars, chunks, out = _rviews(red, h, dt)
    for c in range(c0, c1):
        reduce_chunk(red, p, g, s, scalars, chunks, out, c)


@njit(inline="always")
def reduce_blocks(red, ctx, c0, c1):
    """The body of every reduce block entry: chunk rows [c0, c1) of the call in ``ctx``
    (reduce_kernel has checked the buffers and every chunk row)."""
    h = carray(ctx, (R_STATES + 8 + 5,), np.intp)
    if _r_is_f64(red, h):
        _typed_rblocks(red, h, c0, c1, np.float64)
    else:
        _typed_rblocks(red, h, c0, c1, np.float32)


# --- the entry (adamfast._numba.reduce_kernel imports this module on first use) ---

def reduce_kernel(kind_id, params, grads, states, scalars, chunks, out, num_threads):
    """Pass 1 of a reducing kind: the state written and, per chunk row c, the float64
    sums of squares of the kind's quantities in ``out[c]`` (order: _reduce.py, the
    the numba version of kernels/_reduce.pxi).  Checked as family_kernel; nothing is written
    before every check passed; results never depend on ``num_threads``."""
    try:
        try:
            kind_id = operator.index(kind_id)
            num_threads = operator.index(num_threads)
        except TypeError:
            raise TypeError(f"reduce_kernel: kind_id and num_threads must be integers, got "
                            f"{kind_id!r} and {num_threads!r}") from None
        nsum = pkg._NSUM.get(kind_id)
        if nsum is None:
            raise ValueError(f"reduce_kernel: kind {kind_id} does not reduce per tensor")
        nstate = pkg.NSTATE[kind_id]
        _dispatch.check_states("reduce_kernel", pkg.KINDS[kind_id], states, nstate)
        dtype, n = pkg._check_buffers((params, grads) + states,
                                      ("params", "grads") + pkg._STATE_NAMES[nstate])
        pkg._check_table("scalars", scalars, pkg._F64, NSLOT)
        ngroups = scalars.shape[0]
        if ngroups < 1:
            raise ValueError("reduce_kernel: scalars must have at least one row")
        pkg._check_table("chunks", chunks, pkg._INTP, 3)
        nchunks = chunks.shape[0]
        if not (isinstance(out, np.ndarray) and out.dtype == pkg._F64
                and out.shape == (nchunks, nsum) and out.flags.c_contiguous
                and out.flags.writeable):
            raise ValueError(f"reduce_kernel: out must be a writable C-contiguous float64 "
                             f"array of shape ({nchunks}, {nsum})")
        if nchunks == 0:
            return
        pkg._check_chunks(chunks, ngroups, n)
        module = pkg._import(f"{pkg.__name__}.{pkg._MODULES[kind_id]}", slp=True)
        serial, parallel, block = module.REDUCE_ENTRIES[pkg.KINDS[kind_id]]
        _POOL = pkg._POOL
        if _POOL is not None:
            block = pkg._cfunc(block, slp=True).address
    except BaseException as exc:
        exc.adamfast_unwritten = True
        raise
    if _POOL is not None:
        _POOL(block, (params, grads, scalars, chunks, out) + states,
              (n, ngroups, nchunks, nsum, dtype == pkg._F64), nchunks,
              num_threads if n >= pkg.PARALLEL_MIN else 1)
        return
    if n < pkg.PARALLEL_MIN or num_threads <= 1:
        serial(params, grads, states, scalars, chunks, out)
        return
    num_threads = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        parallel(params, grads, states, scalars, chunks, out)
    finally:
        numba.set_num_threads(previous)
