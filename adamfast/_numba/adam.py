"""Adam / AdamW element functions; reference: adamfast/algorithms/adam.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 step_size, 8 a, 9 r,
10 b, 11 eps, 12 nesterov (unused here), 13 c1, 14 c2, 15 amsgrad.  The
numerator is always c1*m + c2*g (c1 = 1, c2 = 0 without Nesterov), so
Nesterov adds no select on top of AMSGrad's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.adam import B1, OMB1, B2, OMB2, STEP, A, R, B, EPS, C1, C2, AMS
from ._common import grads_params, nanmax
from ._driver import blocks, chunk


@njit(inline="always")
def elem_adam(i, p, g, s, k):
    # The numba version of update_adam.
    gi, pi = grads_params(i, p, g, k)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    v = k[B2] * s[1][i] + k[OMB2] * (gi * gi)
    num = k[C1] * m + k[C2] * gi
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - k[STEP] * (num / (np.sqrt(v * k[A] + k[R]) * k[B] + k[EPS]))


@njit(inline="always")
def elem_adam_amsgrad(i, p, g, s, k):
    # The numba version of update_adam_amsgrad.  A group with amsgrad off (k[AMS] == 0)
    # stores its running max back unchanged, as the reference leaves it (torch.optim.Adam
    # freezes it): a select, not a branch, so the loop stays vectorized.
    gi, pi = grads_params(i, p, g, k)
    m = k[B1] * s[0][i] + k[OMB1] * gi
    v = k[B2] * s[1][i] + k[OMB2] * (gi * gi)
    old = s[2][i]
    vm = nanmax(old, v)
    use = k[AMS] != 0
    vv = vm if use else v
    num = k[C1] * m + k[C2] * gi
    s[0][i] = m
    s[1][i] = v
    s[2][i] = vm if use else old
    p[i] = pi - k[STEP] * (num / (np.sqrt(vv * k[A] + k[R]) * k[B] + k[EPS]))


# The flags of most steps (_driver._typical): AMSGrad on.
elem_adam_amsgrad.py_func.typical = ((AMS, True),)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adam, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adam_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adam, p, g, s, ema, scalars, chunks, c)


def adam_block(ctx, c0, c1):
    blocks(elem_adam, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_amsgrad_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_adam_amsgrad, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def adam_amsgrad_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_adam_amsgrad, p, g, s, ema, scalars, chunks, c)


def adam_amsgrad_block(ctx, c0, c1):
    blocks(elem_adam_amsgrad, ctx, c0, c1)


ENTRIES = {"adam": (adam_serial, adam_parallel, adam_block),
           "adam_amsgrad": (adam_amsgrad_serial, adam_amsgrad_parallel, adam_amsgrad_block)}
