"""Adadelta element function; reference: adamfast/algorithms/adadelta.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 rho, 4 1-rho, 5 eps, 6 lr.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.adadelta import RHO, OMR, EPS, LR
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_adadelta(i, p, g, s, k):
    # The numba version of update_adadelta.
    gi, pi = grads_params(i, p, g, k)
    sq = k[RHO] * s[0][i] + k[OMR] * (gi * gi)
    delta = np.sqrt(s[1][i] + k[EPS]) / np.sqrt(sq + k[EPS]) * gi
    acc = k[RHO] * s[1][i] + k[OMR] * (delta * delta)
    s[0][i] = sq
    s[1][i] = acc
    p[i] = pi - k[LR] * delta


@njit(cache=True, nogil=True, error_model="numpy")
def adadelta_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adadelta, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adadelta_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adadelta, p, g, s, ema, scalars, chunks, c)


def adadelta_block(ctx, c0, c1):
    blocks(elem_adadelta, ctx, c0, c1)


ENTRIES = {"adadelta": (adadelta_serial, adadelta_parallel, adadelta_block)}
