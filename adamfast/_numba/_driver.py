"""The one chunked driver of the numba backend, shared by every kind.

Twin of ``kernels/_driver.pxi``.  Every kind module defines, per kind, an
element function ``elem_<kind>(i, p, g, s0, s1, s2, k)`` and the entry points
that pass it to :func:`chunk`::

    @cfunc(BLOCK_SIGNATURE, cache=True, error_model="numpy")
    def adam_block(ctx, c0, c1):
        blocks(elem_adam, ctx, c0, c1)

    (the entry adamfast's pool calls: see "the block entries" below; and the
    fallback pair: ``adam_serial``, a loop of ``chunk(elem_adam, ...)`` over
    the chunk rows, and ``adam_parallel``, the same with parallel=True and
    prange)

The element function reaches :func:`chunk` as a compile-time constant (a
dispatcher type), so each entry is specialised for its kind and the element
body is inlined into the chunk loop, where LLVM vectorizes it.

The entries are written out at module level rather than made by a factory:
numba's on-disk cache finds a function by its module and qualified name, and
a closure built at run time misses it in every new process.

Caching caveat: numba invalidates a cached entry only when the source file
that defines the entry changes.  After editing this file or ``_common.py``,
delete ``adamfast/_numba/__pycache__`` (or touch the kind modules), or the
entries keep running the old inlined code.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from ..algorithms._spec import NSLOT

# The unit of work handed to a thread.  The caller builds the chunk table;
# 16384 elements keeps a chunk's 4-5 streams (256-320 KiB in float32) near L2
# size, as in the cython backend.
CHUNK = 16384
# The serial cut-off on numba's own pool (the fallback parallel path).  Its
# launch costs more than adamfast's pool: with cold caches, one thread beat
# two below ~512K float32 params here (64K:
# 0.13 vs 0.18 ms; 256K: 0.28 vs 0.36 ms; 1M: 0.80 vs 0.72 ms).
PARALLEL_MIN = 1 << 19
# On adamfast's own pool (the block entries below), a parallel call costs what
# the cython backend's does: its cut-off, kernels/_family.pxi's _PARALLEL_MIN.
POOL_PARALLEL_MIN = 1 << 16

if NSLOT != 18:  # row() spells out the slots one by one
    raise ImportError(f"adamfast._numba expects NSLOT == 18, got {NSLOT}")
# Independent float64 accumulators of the norm pass: kernels/_driver.pxi's _LANES.
LANES = 16


def signatures():
    """The float32 and float64 signatures of the fallback's serial entries.

    Explicit signatures, so that they compile (or load from the cache) when
    the fallback loads a kind, never on a call, and precision changes are
    never silent: ``params, grads (read only), s0, s1, s2, ema, scalars
    (float64, read only), chunks (intp, read only)``; ``ema`` has length 0
    when there is no parameter EMA.  (The block entries have one C signature
    and branch on the dtype inside.)
    """
    sigs = []
    table = types.Array(types.float64, 2, "C", readonly=True)
    rows = types.Array(types.intp, 2, "C", readonly=True)
    for ft in (types.float32, types.float64):
        buf = types.Array(ft, 1, "C")
        ro = types.Array(ft, 1, "C", readonly=True)
        sigs.append(types.void(buf, ro, buf, buf, buf, buf, table, rows))
    return sigs


SIGNATURES = signatures()


@njit(inline="always")
def row(p, r):
    # Round the group's float64 row to the buffer dtype once per chunk, into a
    # tuple of scalars: the element functions index it with constants, so in
    # the loop every k[j] is a plain float32 (or float64) register value.
    f = p.dtype.type
    return (f(r[0]), f(r[1]), f(r[2]), f(r[3]), f(r[4]), f(r[5]), f(r[6]), f(r[7]),
            f(r[8]), f(r[9]), f(r[10]), f(r[11]), f(r[12]), f(r[13]), f(r[14]), f(r[15]),
            f(r[16]), f(r[17]))


@njit(inline="always")
def chunk(elem, p, g, s0, s1, s2, ema, scalars, chunks, c):
    """Chunk row ``c`` = (group, lo, hi): elements [lo, hi) with ``scalars[group]``.

    family_kernel has checked every row against the buffers and the table.
    """
    lo = chunks[c, 1]
    hi = chunks[c, 2]
    k = row(p, scalars[chunks[c, 0]])
    # Slices walked from 0: indexing the full arrays with a signed loop
    # counter makes numba emit wraparound handling that stops LLVM from
    # vectorizing.  An unused state slot has length 0; its slice is an empty
    # view the element function never indexes.
    p_ = p[lo:hi]
    g_ = g[lo:hi]
    s0_ = s0[lo:hi]
    s1_ = s1[lo:hi]
    s2_ = s2[lo:hi]
    if ema.size == 0:
        for i in range(hi - lo):
            elem(i, p_, g_, s0_, s1_, s2_, k)
    else:
        # The parameter EMA: one more stream of the same pass, for every kind
        # (twin of kernels/_driver.pxi's _span).
        e_ = ema[lo:hi]
        for i in range(hi - lo):
            elem(i, p_, g_, s0_, s1_, s2_, k)
            e_[i] = k[16] * e_[i] + k[17] * p_[i]


# --- the block entries: numba's update on adamfast's thread pool ------------------------
#
# The parallel path does not use numba's own pool (prange): its OpenMP or
# workqueue team ends each call with a barrier that waits for every thread
# to arrive, and on a busy machine that wait is a whole time slice.  Each
# kind also has a C-callable "block" entry, ``void(ctx, c0, c1)``, that
# updates chunk rows [c0, c1); the cython extension's pool
# (kernels/_pool.pxi) calls it from the caller's thread and its workers.
# ``ctx`` points at an intp array of the call's buffers (CTX_* below).
# Block entries are nopython code without Python objects or exceptions, so
# they run without the GIL on any thread.

BLOCK_SIGNATURE = types.void(types.voidptr, types.intp, types.intp)
(CTX_P, CTX_G, CTX_S0, CTX_S1, CTX_S2, CTX_EMA, CTX_SCALARS, CTX_CHUNKS,
 CTX_N, CTX_N0, CTX_N1, CTX_N2, CTX_NEMA, CTX_GROUPS, CTX_ROWS, CTX_F64) = range(16)
CTX_SIZE = 16


@intrinsic
def _address(typingctx, addr):
    # An integer address as a void pointer, for carray.
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(addr), codegen


@njit(inline="always")
def _typed_blocks(elem, h, c0, c1, dt):
    p = carray(_address(h[CTX_P]), (h[CTX_N],), dt)
    g = carray(_address(h[CTX_G]), (h[CTX_N],), dt)
    s0 = carray(_address(h[CTX_S0]), (h[CTX_N0],), dt)
    s1 = carray(_address(h[CTX_S1]), (h[CTX_N1],), dt)
    s2 = carray(_address(h[CTX_S2]), (h[CTX_N2],), dt)
    ema = carray(_address(h[CTX_EMA]), (h[CTX_NEMA],), dt)
    scalars = carray(_address(h[CTX_SCALARS]), (h[CTX_GROUPS], NSLOT), np.float64)
    chunks = carray(_address(h[CTX_CHUNKS]), (h[CTX_ROWS], 3), np.intp)
    for c in range(c0, c1):
        chunk(elem, p, g, s0, s1, s2, ema, scalars, chunks, c)


@njit(inline="always")
def blocks(elem, ctx, c0, c1):
    """The body of every block entry: chunk rows [c0, c1) of the call in ``ctx``.

    family_kernel has checked the buffers and every chunk row, as for the
    serial entry, before it builds ``ctx``.
    """
    h = carray(ctx, (CTX_SIZE,), np.intp)
    if h[CTX_F64] == 0:
        _typed_blocks(elem, h, c0, c1, np.float32)
    else:
        _typed_blocks(elem, h, c0, c1, np.float64)
