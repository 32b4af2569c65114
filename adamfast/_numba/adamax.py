"""Adamax element function; reference: adamfast/algorithms/adamax.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 eps, 7 lr/(1-b1^t).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.adamax import B1, OMB1, B2, EPS, CLR
from ._common import grads_params, nanmax
from ._driver import blocks, chunk


@njit(inline="always")
def elem_adamax(i, p, g, s, k):
    # The numba version of update_adamax; torch's eps sits inside the max.
    gi, pi = grads_params(i, p, g, k)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    u = nanmax(k[B2] * s[1][i], np.abs(gi) + k[EPS])
    s[0][i] = m
    s[1][i] = u
    p[i] = pi - k[CLR] * (m / u)


@njit(cache=True, nogil=True, error_model="numpy")
def adamax_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adamax, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adamax_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adamax, p, g, s, ema, scalars, chunks, c)


def adamax_block(ctx, c0, c1):
    blocks(elem_adamax, ctx, c0, c1)


ENTRIES = {"adamax": (adamax_serial, adamax_parallel, adamax_block)}
