"""SGD element functions; reference: adamfast/algorithms/sgd.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 l2, 3 lr, 4 momentum, 5 1-dampening, 6 nesterov?,
7 first momentum step?, 8 momentum != 0?.
"""

from __future__ import annotations

from numba import njit, prange

from ..algorithms.sgd import LR, MOM, OMD, NES, FIRST, USEMOM
from ._common import grads_params
from ._driver import blocks, chunk


@njit(inline="always")
def elem_sgd(i, p, g, s, k):
    # The numba version of update_sgd.
    gi, pi = grads_params(i, p, g, k)
    p[i] = pi - k[LR] * gi


@njit(inline="always")
def elem_sgd_momentum(i, p, g, s, k):
    # The numba version of update_sgd_momentum.  A group without momentum (k[USEMOM] == 0) may
    # share the kind with one that has it: its buffer is stored back
    # unchanged, which equals the reference leaving it alone.
    gi, pi = grads_params(i, p, g, k)
    old = s[0][i]
    later = k[MOM] * old + k[OMD] * gi
    buf = gi if k[FIRST] != 0 else later  # torch copies g on the first momentum step
    nesterov = gi + k[MOM] * buf
    d = nesterov if k[NES] != 0 else buf
    use = k[USEMOM] != 0
    s[0][i] = buf if use else old
    p[i] = pi - k[LR] * (d if use else gi)


# The flags of most steps (_driver._typical): past the first momentum step, no
# Nesterov, momentum on.
elem_sgd_momentum.py_func.typical = ((FIRST, False), (NES, False), (USEMOM, True))


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_sgd, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def sgd_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_sgd, p, g, s, ema, scalars, chunks, c)


def sgd_block(ctx, c0, c1):
    blocks(elem_sgd, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_momentum_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_sgd_momentum, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def sgd_momentum_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_sgd_momentum, p, g, s, ema, scalars, chunks, c)


def sgd_momentum_block(ctx, c0, c1):
    blocks(elem_sgd_momentum, ctx, c0, c1)


ENTRIES = {"sgd": (sgd_serial, sgd_parallel, sgd_block),
           "sgd_momentum": (sgd_momentum_serial, sgd_momentum_parallel, sgd_momentum_block)}
