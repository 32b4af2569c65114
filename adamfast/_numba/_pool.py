"""Where the numba backend's parallel path runs: adamfast's own thread pool, or numba's.

The arrangement.  adamfast's thread pool is C (``kernels/af_pool.c``; its API
and the reasons for it are in ``kernels/af_pool.h``, its behaviour in
docs/threads.md) and is compiled into the cython extension, whose backend
runs on it.  The numba backend runs on the same pool:

* numba compiles, per kind, a C-callable block entry (a ``cfunc``,
  ``void(ctx, c0, c1)``: see ``_driver``'s block entries, and ``_norm``'s
  ``sumsq_block`` for the norm pass) that updates chunk rows [c0, c1);
* :data:`RUN_BLOCKS` (the extension's ``_run_blocks``, in
  ``kernels/_pool.pxi``) takes such an entry's address and the call's arrays
  and sizes, packs them into the ``ctx`` words the entry reads, and hands the
  job to the C pool, which calls the entry once per block of chunk rows, on
  the caller's thread and its workers, without the GIL;
* no numba dispatcher or numba thread pool takes part in running the
  blocks, so numba's thread count is never read or changed here; after
  ``fork()`` the C pool forgets its workers in the child (and adamfast runs
  a forked child's kernels on its calling thread: docs/threads.md).

The fallback.  Without a usable cython extension (not built, failing to
import, or a stale build without the pool's binding) or under
``ADAMFAST_THREADING=openmp`` (an OpenMP team for the cython backend and
numba's own pool for this one, for comparison), :data:`RUN_BLOCKS` is None
and the numba backend uses its fallback pair of entries: a serial njit loop and a ``prange`` over the chunk rows on
numba's own pool, with a larger serial cut-off (that pool launches more
slowly), and ``ADAMFAST_NUM_THREADS`` checked against the size numba's pool
was given at start-up.

Which extension: the one ``adamfast._dispatch`` loads for the cython backend
(``_dispatch._pool_module``), so that both backends share one pool and one
set of sleeping workers.  Everything here is decided once, at import.
"""

from __future__ import annotations

import numba

from .. import _dispatch
from ._driver import CTX_CHUNKS, CTX_EMA, CTX_G, CTX_P, CTX_SCALARS, CTX_STATES

__all__ = ["MODULE", "RUN_BLOCKS", "STEP_BLOCKS", "PARALLEL_MIN", "POOL_COLD_MIN",
           "threading_path", "pool_awake", "wake_pool"]

# The serial cut-off on numba's own pool (the fallback).  Its launch costs
# more than adamfast's pool: with cold caches, one thread beat two below
# ~512K float32 params here (64K: 0.13 vs 0.18 ms; 256K: 0.28 vs 0.36 ms;
# 1M: 0.80 vs 0.72 ms).
NUMBA_PARALLEL_MIN = 1 << 19
# On adamfast's pool a parallel call costs what the cython backend's does:
# its cut-off, kernels/_family.pxi's _PARALLEL_MIN.
POOL_PARALLEL_MIN = 1 << 16

# The cython extension whose pool the parallel path runs on, or None (the fallback).
MODULE = _dispatch._pool_module()
if MODULE is None:
    # numba's pool was sized at start-up: an ADAMFAST_NUM_THREADS above it is
    # refused here, as set_num_threads refuses it.
    _dispatch._check_env_threads(numba.config.NUMBA_NUM_THREADS)

# ``RUN_BLOCKS(address, arrays, sizes, nchunks, num_threads)``: run the block
# entry at ``address`` over chunk rows [0, nchunks) on up to num_threads
# threads; its ctx holds each array's data address, then each size, in order.
# None on the fallback.
RUN_BLOCKS = None if MODULE is None else MODULE._run_blocks
# The one-group fast path's checks and pool call, in one C function that
# packs the ctx words itself: it must pack them as _driver reads them.
STEP_BLOCKS = None if MODULE is None else MODULE._step_blocks
if MODULE is not None and MODULE._STEP_BLOCKS_CTX != (CTX_P, CTX_G, CTX_EMA, CTX_SCALARS,
                                                      CTX_CHUNKS, CTX_STATES):
    raise ImportError(f"{MODULE.__name__}._step_blocks packs a block entry's ctx words in "
                      f"another order than adamfast._numba._driver reads them: rebuild the "
                      f"extension (pip install -e .)")
# Below this many elements a call runs on the calling thread.
PARALLEL_MIN = NUMBA_PARALLEL_MIN if MODULE is None else POOL_PARALLEL_MIN
# From this many elements the guarded step wakes the workers before its norm
# pass (the pool's cold cut-off, AF_COLD_MIN_CHUNKS chunks; 0 on the fallback).
POOL_COLD_MIN = 0 if MODULE is None else MODULE.POOL_COLD_MIN


def threading_path():
    """Where the parallel path runs: "adamfast pool" or "numba prange"."""
    return "numba prange" if MODULE is None else "adamfast pool"


def pool_awake():
    """Whether any worker of adamfast's pool is awake (False on numba's own pool)."""
    return MODULE is not None and MODULE.pool_awake()


def wake_pool(num_threads):
    """Wake the pool's workers ahead of a multi-pass step (the guarded step's norm
    pass and update), as the cython backend does; nothing on numba's own pool."""
    if MODULE is not None:
        MODULE.wake_pool(num_threads)
