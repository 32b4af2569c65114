"""Adagrad element function; reference: adamfast/algorithms/adagrad.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 eps, 4 lr/(1+(t-1)*lr_decay).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.adagrad import EPS, CLR
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_adagrad(i, p, g, s, k):
    # The numba version of update_adagrad.
    gi, pi = grads_params(i, p, g, k)
    acc = s[0][i] + gi * gi
    s[0][i] = acc
    p[i] = pi - k[CLR] * (gi / (np.sqrt(acc) + k[EPS]))


@njit(cache=True, nogil=True, error_model="numpy")
def adagrad_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adagrad, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adagrad_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adagrad, p, g, s, ema, scalars, chunks, c)


def adagrad_block(ctx, c0, c1):
    blocks(elem_adagrad, ctx, c0, c1)


ENTRIES = {"adagrad": (adagrad_serial, adagrad_parallel, adagrad_block)}
