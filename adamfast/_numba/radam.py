"""RAdam element function; reference: adamfast/algorithms/radam.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 eps, 8 rectified?,
9 rectified step size, 10 plain step size.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.radam import B1, OMB1, B2, OMB2, EPS, RECT, KA, KB
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_radam(i, p, g, s, k):
    # The numba version of update_radam.  The regime is a per-group flag: both updates are
    # computed and one selected, so the loop has no data-dependent branch.
    gi, pi = grads_params(i, p, g, k)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    v = k[B2] * s[1][i] + k[OMB2] * (gi * gi)
    rectified = k[KA] * (m / (np.sqrt(v) + k[EPS]))
    plain = k[KB] * m
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - (rectified if k[RECT] != 0 else plain)


# The flags of most steps (_driver._typical): past the first few, rectified.
elem_radam.py_func.typical = ((RECT, True),)


@njit(cache=True, nogil=True, error_model="numpy")
def radam_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_radam, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def radam_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_radam, p, g, s, ema, scalars, chunks, c)


def radam_block(ctx, c0, c1):
    blocks(elem_radam, ctx, c0, c1)


ENTRIES = {"radam": (radam_serial, radam_parallel, radam_block)}
