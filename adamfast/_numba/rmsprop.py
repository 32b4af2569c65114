"""RMSprop element functions; reference: adamfast/algorithms/rmsprop.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 alpha, 4 1-alpha, 5 eps, 6 lr, 7 momentum,
8 centered?, 9 momentum > 0?.  State: square_avg [, grad_avg] [, momentum_buffer].
A kind is the union of the groups' structure; centered and momentum are
per-group flags inside it, selected element-wise (a group with one off stores
that buffer back unchanged).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.rmsprop import ALPHA, OMA, EPS, LR, MOM, CEN, USEMOM
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_rmsprop(i, p, g, s, k):
    # The numba version of update_rmsprop.
    gi, pi = grads_params(i, p, g, k)
    sq = k[ALPHA] * s[0][i] + k[OMA] * (gi * gi)
    avg = np.sqrt(sq) + k[EPS]
    s[0][i] = sq
    p[i] = pi - k[LR] * (gi / avg)


@njit(inline="always")
def elem_rmsprop_centered(i, p, g, s, k):
    # The numba version of update_rmsprop_centered.  A group with centered off stores
    # grad_avg back unchanged, which equals the reference leaving it alone.
    gi, pi = grads_params(i, p, g, k)
    sq = k[ALPHA] * s[0][i] + k[OMA] * (gi * gi)
    old = s[1][i]
    ga = k[ALPHA] * old + k[OMA] * gi
    cen = k[CEN] != 0
    centered = np.sqrt(sq - ga * ga)
    plain = np.sqrt(sq)
    avg = (centered if cen else plain) + k[EPS]
    s[0][i] = sq
    s[1][i] = ga if cen else old
    p[i] = pi - k[LR] * (gi / avg)


# The flags of most steps (_driver._typical): centered.
elem_rmsprop_centered.py_func.typical = ((CEN, True),)


@njit(inline="always")
def elem_rmsprop_momentum(i, p, g, s, k):
    # The numba version of update_rmsprop_momentum.  A group without momentum stores its
    # buffer back unchanged, which equals the reference leaving it alone.
    gi, pi = grads_params(i, p, g, k)
    sq = k[ALPHA] * s[0][i] + k[OMA] * (gi * gi)
    q = gi / (np.sqrt(sq) + k[EPS])
    old = s[1][i]
    buf = k[MOM] * old + q
    use = k[USEMOM] != 0
    s[0][i] = sq
    s[1][i] = buf if use else old
    p[i] = pi - k[LR] * (buf if use else q)


# The flags of most steps (_driver._typical): momentum on.
elem_rmsprop_momentum.py_func.typical = ((USEMOM, True),)


@njit(inline="always")
def elem_rmsprop_centered_momentum(i, p, g, s, k):
    # The numba version of update_rmsprop_centered_momentum: both flags, as above.
    gi, pi = grads_params(i, p, g, k)
    sq = k[ALPHA] * s[0][i] + k[OMA] * (gi * gi)
    old_ga = s[1][i]
    ga = k[ALPHA] * old_ga + k[OMA] * gi
    cen = k[CEN] != 0
    centered = np.sqrt(sq - ga * ga)
    plain = np.sqrt(sq)
    avg = (centered if cen else plain) + k[EPS]
    q = gi / avg
    old = s[2][i]
    buf = k[MOM] * old + q
    use = k[USEMOM] != 0
    s[0][i] = sq
    s[1][i] = ga if cen else old_ga
    s[2][i] = buf if use else old
    p[i] = pi - k[LR] * (buf if use else q)


# The flags of most steps (_driver._typical): centered, momentum on.
elem_rmsprop_centered_momentum.py_func.typical = ((CEN, True), (USEMOM, True))


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_rmsprop, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def rmsprop_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_rmsprop, p, g, s, ema, scalars, chunks, c)


def rmsprop_block(ctx, c0, c1):
    blocks(elem_rmsprop, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_centered_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_rmsprop_centered, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def rmsprop_centered_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_rmsprop_centered, p, g, s, ema, scalars, chunks, c)


def rmsprop_centered_block(ctx, c0, c1):
    blocks(elem_rmsprop_centered, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_momentum_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_rmsprop_momentum, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def rmsprop_momentum_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_rmsprop_momentum, p, g, s, ema, scalars, chunks, c)


def rmsprop_momentum_block(ctx, c0, c1):
    blocks(elem_rmsprop_momentum, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def rmsprop_centered_momentum_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_rmsprop_centered_momentum, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def rmsprop_centered_momentum_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_rmsprop_centered_momentum, p, g, s, ema, scalars, chunks, c)


def rmsprop_centered_momentum_block(ctx, c0, c1):
    blocks(elem_rmsprop_centered_momentum, ctx, c0, c1)


ENTRIES = {
    "rmsprop": (rmsprop_serial, rmsprop_parallel, rmsprop_block),
    "rmsprop_centered": (rmsprop_centered_serial, rmsprop_centered_parallel,
                         rmsprop_centered_block),
    "rmsprop_momentum": (rmsprop_momentum_serial, rmsprop_momentum_parallel,
                         rmsprop_momentum_block),
    "rmsprop_centered_momentum": (rmsprop_centered_momentum_serial,
                                  rmsprop_centered_momentum_parallel,
                                  rmsprop_centered_momentum_block)}
