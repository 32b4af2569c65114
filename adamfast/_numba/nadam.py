"""NAdam element function; reference: adamfast/algorithms/nadam.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 1/(1-b2^t), 8 eps,
9 coefficient of g, 10 coefficient of m (the momentum schedule is folded into
them in float64, per group).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.nadam import B1, OMB1, B2, OMB2, IBC2, EPS, CG, CM
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_nadam(i, p, g, s, k):
    # The numba version of update_nadam: one division where torch does two addcdivs.
    gi, pi = grads_params(i, p, g, k)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    v = k[B2] * s[1][i] + k[OMB2] * (gi * gi)
    denom = np.sqrt(v * k[IBC2]) + k[EPS]
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - (k[CG] * gi + k[CM] * m) / denom


@njit(cache=True, nogil=True, error_model="numpy")
def nadam_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_nadam, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def nadam_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_nadam, p, g, s, ema, scalars, chunks, c)


def nadam_block(ctx, c0, c1):
    blocks(elem_nadam, ctx, c0, c1)


ENTRIES = {"nadam": (nadam_serial, nadam_parallel, nadam_block)}
