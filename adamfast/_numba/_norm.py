"""The norm pass of the guarded step; twin of kernels/_driver.pxi's _sumsq.

Per chunk of CHUNK elements: element j goes to lane j % LANES, each lane
accumulates x*x (and x - x, which is 0 for finite x, NaN otherwise) in
float64 in element order, then the lanes are added left to right.  The fixed
lanes are independent accumulators LLVM can vectorize without reassociating
anything, so the order is the same as the reference's and the C kernel's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types

from ._driver import CHUNK, LANES


def _signatures():
    out = types.Array(types.float64, 2, "C")
    return [types.void(types.Array(ft, 1, "C", readonly=True), out, types.boolean)
            for ft in (types.float32, types.float64)]


@njit(inline="always")
def _chunk(g, out, c, check):
    lo = c * CHUNK
    hi = min(lo + CHUNK, g.size)
    acc = np.zeros(LANES)
    bad = np.zeros(LANES)
    g_ = g[lo:hi]
    rows = (hi - lo) // LANES
    # check: float64 input (float32 needs no second sum, see the reference).
    # Two loops, not a branch inside one: the branch kept LLVM from
    # vectorizing the lanes.
    if check:
        for r in range(rows):
            for j in range(LANES):
                x = np.float64(g_[r * LANES + j])
                acc[j] = acc[j] + x * x
                bad[j] = bad[j] + (x - x)
    else:
        for r in range(rows):
            for j in range(LANES):
                x = np.float64(g_[r * LANES + j])
                acc[j] = acc[j] + x * x
    for j in range(hi - lo - rows * LANES):
        x = np.float64(g_[rows * LANES + j])
        acc[j] = acc[j] + x * x
        if check:
            bad[j] = bad[j] + (x - x)
    s = acc[0]
    z = bad[0]
    for j in range(1, LANES):
        s = s + acc[j]
        z = z + bad[j]
    out[c, 0] = s
    out[c, 1] = z if check else s - s


@njit(_signatures(), cache=True, nogil=True, error_model="numpy")
def sumsq_serial(g, out, check):
    for c in range(out.shape[0]):
        _chunk(g, out, c, check)


@njit(_signatures(), cache=True, nogil=True, error_model="numpy", parallel=True)
def sumsq_parallel(g, out, check):
    for c in prange(out.shape[0]):
        _chunk(g, out, c, check)
