"""Lamb element functions; reference: adamfast/algorithms/lamb.py.

State, in spec order: exp_avg, exp_avg_sq.  Lamb's step is two passes
(adamfast/_reduce.py): ``red_lamb`` is pass 1 (moments_lamb: writes the
state, stores theta and u at q[0, j], q[1, j] for the reduce driver of
``_reduce.py``), ``elem_lamb`` pass 2 (update_lamb, the kind's family_kernel
element: recomputes u from the new state and writes theta, scaled by the
per-tensor trust ratio in slot TRUST).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..algorithms.lamb import B1, B2, B3, IBC1, IBC2S, EPS, GS, LR, OMB2, PS, TRUST, WD
from ._driver import blocks, chunk
from ._reduce import reduce_blocks, reduce_chunk


@njit(inline="always")
def lamb_u(th, m, v, k):
    u = (m * k[IBC1]) / (np.sqrt(v) * k[IBC2S] + k[EPS])
    # Both sides computed into locals, one picked: the select stays branch-free.
    l2 = u + k[WD] * th
    return l2 if k[WD] != 0 else u


@njit(inline="always")
def red_lamb(i, p, g, s, k, q, j):
    gi = g[i] * k[GS]
    m = k[B1] * s[0][i] + k[B3] * gi
    v = k[B2] * s[1][i] + k[OMB2] * (gi * gi)
    th = p[i] * k[PS]
    s[0][i] = m
    s[1][i] = v
    q[0, j] = th
    q[1, j] = lamb_u(th, m, v, k)


@njit(inline="always")
def elem_lamb(i, p, g, s, k):
    th = p[i] * k[PS]
    u = lamb_u(th, s[0][i], s[1][i], k)
    p[i] = th - k[LR] * (u * k[TRUST])


# The flags of most steps (_driver._typical): weight decay on (timm's default).
elem_lamb.py_func.typical = red_lamb.py_func.typical = ((WD, True),)


@njit(cache=True, nogil=True, error_model="numpy")
def lamb_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_lamb, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def lamb_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_lamb, p, g, s, ema, scalars, chunks, c)


def lamb_block(ctx, c0, c1):
    blocks(elem_lamb, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def lamb_reduce_serial(p, g, s, scalars, chunks, out):
    for c in range(chunks.shape[0]):
        reduce_chunk(red_lamb, p, g, s, scalars, chunks, out, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def lamb_reduce_parallel(p, g, s, scalars, chunks, out):
    for c in prange(chunks.shape[0]):
        reduce_chunk(red_lamb, p, g, s, scalars, chunks, out, c)


def lamb_reduce_block(ctx, c0, c1):
    reduce_blocks(red_lamb, ctx, c0, c1)


ENTRIES = {"lamb": (lamb_serial, lamb_parallel, lamb_block)}
REDUCE_ENTRIES = {"lamb": (lamb_reduce_serial, lamb_reduce_parallel, lamb_reduce_block)}
