"""Adan element function; reference: adamfast/algorithms/adan.py.

State, in spec order: exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad (the
previous gradient, negated).  Slots: named by the reference module's SLOTS.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.adan import B1, B2, B3, BC3S, DIV, EPS, FIRST, OMB1, OMB2, OMB3, STEP, STEPD
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_adan(i, p, g, s, k):
    # The numba version of update_adan.  Both candidates for the previous gradient are
    # loaded and one is picked, so the step-1 select stays branch-free.
    gi, pi = grads_params(i, p, g, k)
    neg = p.dtype.type(0) - gi
    old = s[3][i]
    u = gi + (neg if k[FIRST] != 0 else old)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    d = k[B2] * s[2][i] + k[OMB2] * u
    w = k[B2] * u + gi
    n = k[B3] * s[1][i] + k[OMB3] * (w * w)
    denom = np.sqrt(n) / k[BC3S] + k[EPS]
    s[0][i] = m
    s[1][i] = n
    s[2][i] = d
    s[3][i] = neg
    p[i] = (pi - k[STEP] * (m / denom) - k[STEPD] * (d / denom)) / k[DIV]


# The flags of most steps (_driver._typical): past the first.
elem_adan.py_func.typical = ((FIRST, False),)


@njit(cache=True, nogil=True, error_model="numpy")
def adan_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adan, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adan_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adan, p, g, s, ema, scalars, chunks, c)


def adan_block(ctx, c0, c1):
    blocks(elem_adan, ctx, c0, c1)


ENTRIES = {"adan": (adan_serial, adan_parallel, adan_block)}
