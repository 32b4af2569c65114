"""Lion element function; reference: adamfast/algorithms/lion.py.

Slots, named by the reference module's SLOTS, by index:
0 gs, 1 ps, 2 unused (Lion has no L2 form), 3 b1, 4 1-b1, 5 b2,
6 1-b2, 7 lr, 8 weight_decay.
"""

from __future__ import annotations

from numba import njit, prange

from ..algorithms.lion import GS, PS, B1, OMB1, B2, OMB2, LR, WD
from ._common import sign
from ._driver import blocks, chunk


@njit(inline="always")
def elem_lion(i, p, g, s, k):
    # The numba version of update_lion: the sign uses the old m, then m moves with beta2.
    gi = g[i] * k[GS]
    pi = p[i] * k[PS]
    c = k[B1] * s[0][i] + k[OMB1] * gi
    sg = sign(c, p)
    s[0][i] = k[B2] * s[0][i] + k[OMB2] * gi
    p[i] = pi - k[LR] * (sg + k[WD] * pi)


@njit(cache=True, nogil=True, error_model="numpy")
def lion_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_lion, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def lion_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_lion, p, g, s, ema, scalars, chunks, c)


def lion_block(ctx, c0, c1):
    blocks(elem_lion, ctx, c0, c1)


ENTRIES = {"lion": (lion_serial, lion_parallel, lion_block)}
