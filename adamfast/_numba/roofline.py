"""Bandwidth-only kinds for the benchmark's roofline (the numba version of kernels/_roofline.pxi).

rooflineN reads params, grads and N state buffers, writes params and the N
state buffers, one add each.  They run through the same driver as the
algorithms, so they pay the same chunking and threading costs; the gap
between an algorithm and its roofline is the cost of its arithmetic.
"""

from __future__ import annotations

from numba import njit, prange

from ._driver import blocks, chunk


@njit(inline="always")
def elem_roofline0(i, p, g, s, k):
    p[i] = p[i] + g[i]


@njit(inline="always")
def elem_roofline1(i, p, g, s, k):
    gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi


@njit(inline="always")
def elem_roofline2(i, p, g, s, k):
    gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi


@njit(inline="always")
def elem_roofline3(i, p, g, s, k):
    gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi
    s[2][i] = s[2][i] + gi


@njit(inline="always")
def elem_roofline4(i, p, g, s, k):
    gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi
    s[2][i] = s[2][i] + gi
    s[3][i] = s[3][i] + gi


@njit(cache=True, nogil=True, error_model="numpy")
def roofline0_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_roofline0, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def roofline0_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_roofline0, p, g, s, ema, scalars, chunks, c)


def roofline0_block(ctx, c0, c1):
    blocks(elem_roofline0, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def roofline1_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_roofline1, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def roofline1_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_roofline1, p, g, s, ema, scalars, chunks, c)


def roofline1_block(ctx, c0, c1):
    blocks(elem_roofline1, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def roofline2_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_roofline2, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def roofline2_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_roofline2, p, g, s, ema, scalars, chunks, c)


def roofline2_block(ctx, c0, c1):
    blocks(elem_roofline2, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def roofline3_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_roofline3, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def roofline3_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_roofline3, p, g, s, ema, scalars, chunks, c)


def roofline3_block(ctx, c0, c1):
    blocks(elem_roofline3, ctx, c0, c1)


@njit(cache=True, nogil=True, error_model="numpy")
def roofline4_serial(p, g, s, ema, scalars, chunks):
    for c in range(chunks.shape[0]):
        chunk(elem_roofline4, p, g, s, ema, scalars, chunks, c)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def roofline4_parallel(p, g, s, ema, scalars, chunks):
    for c in prange(chunks.shape[0]):
        chunk(elem_roofline4, p, g, s, ema, scalars, chunks, c)


def roofline4_block(ctx, c0, c1):
    blocks(elem_roofline4, ctx, c0, c1)


ENTRIES = {"roofline0": (roofline0_serial, roofline0_parallel, roofline0_block),
           "roofline1": (roofline1_serial, roofline1_parallel, roofline1_block),
           "roofline2": (roofline2_serial, roofline2_parallel, roofline2_block),
           "roofline3": (roofline3_serial, roofline3_parallel, roofline3_block),
           "roofline4": (roofline4_serial, roofline4_parallel, roofline4_block)}
