"""RAdam element function; reference twin: adamfast/algorithms/radam.py.

Slots: 0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 eps, 8 rectified?,
9 rectified step size, 10 plain step size.
"""

from __future__ import annotations

import numpy as np
from numba import cfunc, njit, prange

from ._common import grads_params
from ._driver import BLOCK_SIGNATURE, blocks, chunk


@njit(inline="always")
def elem_radam(i, p, g, s0, s1, s2, k):
    # Twin of update_radam.  The regime is a per-group flag: both updates are
    # computed and one selected, so the loop has no data-dependent branch.
    gi, pi = grads_params(i, p, g, k)
    m = k[3] * s0[i] + k[4] * gi
    v = k[5] * s1[i] + k[6] * (gi * gi)
    rectified = k[9] * (m / (np.sqrt(v) + k[7]))
    plain = k[10] * m
    s0[i] = m
    s1[i] = v
    p[i] = pi - (rectified if k[8] != 0 else plain)


@njit(cache=True, nogil=True, error_model="numpy")
def radam_serial(p, g, s0, s1, s2, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_radam, p, g, s0, s1, s2, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def radam_parallel(p, g, s0, s1, s2, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_radam, p, g, s0, s1, s2, ema, scalars, chunks, c)


@cfunc(BLOCK_SIGNATURE, cache=True, error_model="numpy")
def radam_block(ctx, c0, c1):
    blocks(elem_radam, ctx, c0, c1)


ENTRIES = {"radam": (radam_serial, radam_parallel, radam_block)}
