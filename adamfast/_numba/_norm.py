"""The norm pass of the guarded step; the numba version of kernels/_driver.pxi's _sumsq.

Per chunk of CHUNK elements: element j goes to lane j % LANES, each lane
accumulates x*x (and x - x, which is 0 for finite x, NaN otherwise) in
float64 in element order, then the lanes are added left to right.  The
lanes are independent accumulators, so vectorizing them reassociates
nothing: the order is the reference's and the C kernel's.

Why the lanes are 16 spelled-out locals: numba's default pipeline runs
LLVM's loop vectorizer but not its SLP vectorizer (``NUMBA_SLP_VECTORIZE``
is 0), and a 16-long inner loop over an accumulator array is fully unrolled
before the loop vectorizer sees it, then left scalar (about 12 GB/s here, a
third of the C kernel).  Sixteen locals in registers are what the SLP
vectorizer packs into four ymm adds; :func:`adamfast._numba._import`
compiles this module with it switched on (and numba's setting restored).
The SLP vectorizer packs independent scalar operations that are already in
the code, so it changes no result.

Entries: ``sumsq_block`` (a C-callable cfunc) runs every call on adamfast's
pool when the cython extension is there; ``sumsq_serial`` and
``sumsq_parallel`` are the fallback, compiled on their first call.
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, njit, prange
from numba.extending import overload

from ..algorithms._spec import PREFETCH_AHEAD
from ._driver import BLOCK_SIGNATURE, CHUNK, LANES, _address, _generated, prefetch_l2

if LANES != 16:  # the helpers below spell out 16 lanes
    raise ImportError(f"adamfast._numba._norm expects LANES == 16, got {LANES}")


def _ahead(x, o):
    """Prefetch into L2 the lines of row ``x[o:o + LANES]`` moved PREFETCH_AHEAD bytes
    on (_spec says why)."""


@overload(_ahead, inline="always")
def _ahead_impl(x, o):
    size = x.dtype.bitwidth // 8
    lines = [f"prefetch_l2(x, o + {(PREFETCH_AHEAD + j) // size})"
             for j in range(0, LANES * size, 64)]
    return _generated("ahead_impl", "x, o", lines, {"prefetch_l2": prefetch_l2})


@njit(inline="always")
def _squares(x, rows, a, ahead):
    # Lane j += x[LANES*r + j]**2 for every row r < rows, in row order.  The
    # rows are offsets into a flat array: a reshape to (rows, LANES) is a
    # runtime call per use, which per reduce sub-block cost a tenth of
    # Lamb's pass 1 (adamfast/_numba/_reduce.py).  ``ahead`` (a constant):
    # prefetch (_ahead), for a row read from memory, not from a buffer in L1.
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 = a
    for r in range(rows):
        o = r * 16
        if ahead:
            _ahead(x, o)
        v = np.float64(x[o + 0]); a0 = a0 + v * v
        v = np.float64(x[o + 1]); a1 = a1 + v * v
        v = np.float64(x[o + 2]); a2 = a2 + v * v
        v = np.float64(x[o + 3]); a3 = a3 + v * v
        v = np.float64(x[o + 4]); a4 = a4 + v * v
        v = np.float64(x[o + 5]); a5 = a5 + v * v
        v = np.float64(x[o + 6]); a6 = a6 + v * v
        v = np.float64(x[o + 7]); a7 = a7 + v * v
        v = np.float64(x[o + 8]); a8 = a8 + v * v
        v = np.float64(x[o + 9]); a9 = a9 + v * v
        v = np.float64(x[o + 10]); a10 = a10 + v * v
        v = np.float64(x[o + 11]); a11 = a11 + v * v
        v = np.float64(x[o + 12]); a12 = a12 + v * v
        v = np.float64(x[o + 13]); a13 = a13 + v * v
        v = np.float64(x[o + 14]); a14 = a14 + v * v
        v = np.float64(x[o + 15]); a15 = a15 + v * v
    return (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15)


@njit(inline="always")
def _flags(x, rows, z):
    # Lane j += x[LANES*r + j] - x[LANES*r + j] (0, or NaN if not finite) for
    # every row r < rows.  A loop of its own, not a second stream of _squares's:
    # parfors' array analysis rejects the tuple of tuples that returning both
    # would take.
    z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15 = z
    for r in range(rows):
        o = r * 16
        v = np.float64(x[o + 0]); z0 = z0 + (v - v)
        v = np.float64(x[o + 1]); z1 = z1 + (v - v)
        v = np.float64(x[o + 2]); z2 = z2 + (v - v)
        v = np.float64(x[o + 3]); z3 = z3 + (v - v)
        v = np.float64(x[o + 4]); z4 = z4 + (v - v)
        v = np.float64(x[o + 5]); z5 = z5 + (v - v)
        v = np.float64(x[o + 6]); z6 = z6 + (v - v)
        v = np.float64(x[o + 7]); z7 = z7 + (v - v)
        v = np.float64(x[o + 8]); z8 = z8 + (v - v)
        v = np.float64(x[o + 9]); z9 = z9 + (v - v)
        v = np.float64(x[o + 10]); z10 = z10 + (v - v)
        v = np.float64(x[o + 11]); z11 = z11 + (v - v)
        v = np.float64(x[o + 12]); z12 = z12 + (v - v)
        v = np.float64(x[o + 13]); z13 = z13 + (v - v)
        v = np.float64(x[o + 14]); z14 = z14 + (v - v)
        v = np.float64(x[o + 15]); z15 = z15 + (v - v)
    return (z0, z1, z2, z3, z4, z5, z6, z7, z8, z9, z10, z11, z12, z13, z14, z15)


@njit(inline="always")
def _total(a):
    # The lanes left to right, as the reference adds them.
    s = a[0]
    for j in range(1, LANES):
        s = s + a[j]
    return s


@njit(inline="always")
def _chunk(g, out, c, check):
    lo = c * CHUNK
    hi = min(lo + CHUNK, g.size)
    rows = (hi - lo) // LANES
    # Rows of LANES elements: x[LANES*r + j] is lane j's r-th element.  A
    # partial last row is padded with zeros, as in the reference: adding +0.0
    # (or 0 - 0) leaves every lane's sum as it was, NaN and Inf included.
    x = g[lo:lo + rows * LANES]
    npad = 1 if lo + rows * LANES < hi else 0
    pad = np.zeros(LANES)
    pad[:hi - lo - rows * LANES] = g[lo + rows * LANES:hi]
    a = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # check: float64 input (float32 needs no second sum, see the reference).
    if check:
        out[c, 0] = _total(_squares(pad, npad, _squares(x, rows, a, True), False))
        out[c, 1] = _total(_flags(pad, npad, _flags(x, rows, a)))
    else:
        a = _squares(pad, npad, _squares(x, rows, a, True), False)
        s = _total(a)
        out[c, 0] = s
        out[c, 1] = s - s


@njit(cache=True, nogil=True, error_model="numpy")
def sumsq_serial(g, out, check):
    for c in range(out.shape[0]):
        _chunk(g, out, c, check)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def sumsq_parallel(g, out, check):
    for c in prange(out.shape[0]):
        _chunk(g, out, c, check)


@cfunc(BLOCK_SIGNATURE, cache=True, error_model="numpy")
def sumsq_block(ctx, c0, c1):
    # Chunks [c0, c1) on adamfast's pool (see _driver's block entries); ctx:
    # grads' address, out's address, grads' size, 1 for float64.
    h = carray(ctx, (4,), np.intp)
    n = h[2]
    out = carray(_address(h[1]), (-(-n // CHUNK), 2), np.float64)
    if h[3] == 0:
        g = carray(_address(h[0]), (n,), np.float32)
        for c in range(c0, c1):
            _chunk(g, out, c, False)
    else:
        g = carray(_address(h[0]), (n,), np.float64)
        for c in range(c0, c1):
            _chunk(g, out, c, True)
