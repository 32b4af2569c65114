"""Numba kernels: the ``"numba"`` backend of the family engine.

One chunked driver (:mod:`._driver`) and, per kind, one element function in
the kind's module here (``adam.py`` holds ``elem_adam`` and
``elem_adam_amsgrad``).  Each element function is the numba version of
``update_<kind>`` in ``adamfast/algorithms/<module>.py`` and of the Cython
one in ``kernels/algorithms/<module>.pxi``: the same operations in the same
order on the same dtype, so all three agree bit for bit.
:func:`family_kernel` is the kernel contract of :mod:`adamfast._dispatch`.

Nothing is compiled by importing this package (``import adamfast`` does not
import it at all).  The first use of a kind compiles that kind's entry, for
float32 and float64, or loads it from numba's on-disk cache
(``cache=True``); the other kinds of its module wait for their own first use.

Why the code looks the way it does:

* Plain loops with explicit float32/float64 signatures and no ``fastmath``:
  precision changes are never silent, numba never fuses a*b + c into an FMA,
  and without fastmath LLVM still vectorizes these loops because they have
  no reduction.
* ``error_model="numpy"``: numba's default Python error model checks every
  float division for a zero divisor to raise ZeroDivisionError, a branch per
  element that blocks vectorization.  IEEE semantics (inf/NaN) are what the
  reference and PyTorch give anyway.
* The float64 scalar row of a chunk's group is rounded to the buffer dtype
  once per chunk, so the loop is pure float32 (or float64) arithmetic.
* Entry points are module-level functions, not built by a factory: a
  closure made at run time misses numba's on-disk cache in every new
  process.  The element function is passed to the shared driver helper as
  a compile-time constant and inlined there.  Per kind there are three:
  ``<kind>_block``, compiled into a C-callable ``cfunc`` (:func:`_cfunc`)
  that updates a range of chunk rows, which every call hands to adamfast's
  own thread pool (C, in the cython extension, the one the cython backend
  runs on; see :mod:`._pool`: the caller takes part, chunk blocks are
  claimed from a counter, a step returns when the blocks are done, so a
  descheduled thread costs nothing on a busy machine and a fork()ed child is
  never stuck in it; below :data:`PARALLEL_MIN` elements or on one thread the
  caller runs them all);
  and the fallback pair, used when the cython extension is missing or
  unusable or under ADAMFAST_THREADING=openmp: ``<kind>_serial``, compiled
  for its explicit signatures on first load, and ``<kind>_parallel``, a
  ``prange`` over the chunk rows on numba's own pool, compiled on its first
  call.  Every update is element-wise and each chunk reads its own group's
  row, so results never depend on the path or the thread count.
* Threads (numba's thread count, the cut-offs, both pools): docs/threads.md.
* numba checks types, not bounds, so :func:`family_kernel` checks in Python
  what keeps a kernel from reading or writing out of bounds before anything
  is written.  adamfast's Python layer stays the real validator.
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import os
import sys

import numba
import numpy as np
from numba import cfunc

from .. import _dispatch
from ..algorithms import ALGORITHMS, ROOFLINE_KINDS
from ..algorithms import KINDS as _ALGORITHM_KINDS
from ..algorithms._spec import CHUNK, NSLOT
from . import _cache
from ._driver import NSTATE as _NSTATE_OF
from ._driver import BLOCK_SIGNATURE, signatures
from ._pool import PARALLEL_MIN, POOL_COLD_MIN, pool_awake, threading_path, wake_pool
from ._pool import RUN_BLOCKS as _POOL  # None on the fallback (numba's own pool)

# Before any kind module is imported: each entry takes its cache locator as it
# is decorated (_cache says why).
_cache.install()

__all__ = ["KINDS", "NSTATE", "CHUNK", "PARALLEL_MIN", "NSLOT", "family_kernel", "step_fast",
           "reduce_kernel"]

# kind_id = index into KINDS (the registry's order, then the rooflines).
KINDS = _ALGORITHM_KINDS + ROOFLINE_KINDS
_NKINDS = len(KINDS)


def _modules():
    """Per kind id: the module defining its entries."""
    module = {kind: "roofline" for kind in ROOFLINE_KINDS}
    for spec in ALGORITHMS.values():
        for kind in spec.kinds:
            module[kind] = spec.reference[kind].__module__.rsplit(".", 1)[1]
    return tuple(module[k] for k in KINDS)


_MODULES = _modules()
# Per kind id: how many state buffers the kind streams (the length of ``states``).
NSTATE = tuple(_NSTATE_OF[k] for k in KINDS)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_F64 = np.dtype(np.float64)
_ND = np.ndarray  # exact-type tests: `type(a) is _ND`
_INTP = np.dtype(np.intp)
# The EMA argument when there is none: length 0, so nothing can touch it.
_EMPTY = {dt: np.empty(0, dt) for dt in _FLOATS}

# kind id -> (serial entry, parallel entry, block entry's address), filled on first use.
_entries = {}
# A kind module's block entry (a plain function) -> its cfunc, compiled on first use.
_cfuncs = {}


@contextlib.contextmanager
def _slp(on):
    """Compile with LLVM's SLP vectorizer on (numba's default is off) when ``on``,
    for the spelled-out lanes of the sums of squares (see ``_norm``); numba's
    setting is restored afterwards.  It only packs independent operations
    already in the code, so no result changes."""
    previous = numba.config.SLP_VECTORIZE
    if on:
        numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = previous


def _import(name, slp=False):
    """Import a module of this package, whose ``cache=True`` entries find their
    cache location as they are decorated (and ``_norm``'s cfunc compiles, or
    loads from numba's on-disk cache, right away, with ``slp``: see _slp).  If
    no cache location is writable (a read-only install, and no writable user
    cache), numba refuses with "cannot cache function": then cache in a private
    temporary directory.  A module already imported is returned as is.
    """
    if name in sys.modules:
        return sys.modules[name]
    with _slp(slp):
        try:
            return importlib.import_module(name)
        except RuntimeError as exc:
            if "cannot cache" not in str(exc) or numba.config.CACHE_DIR:
                raise
            import tempfile

            numba.config.CACHE_DIR = os.path.join(tempfile.gettempdir(),
                                                  f"adamfast-numba-cache-{os.getuid()}")
            sys.modules.pop(name, None)
            return importlib.import_module(name)


def _load(kind_id):
    # A reducing kind's module imports _reduce and so _norm, whose cfunc compiles
    # as it is imported: with SLP, as _norm's own import.
    module = _import(f"{__name__}.{_MODULES[kind_id]}", slp=kind_id in _NSUM)
    serial, parallel, block = module.ENTRIES[KINDS[kind_id]]
    if _POOL is None:
        # The fallback path: compile the serial entry for its explicit
        # signatures now (the parallel one compiles on its first call).
        for sig in signatures(NSTATE[kind_id]):
            serial.compile(sig)
        address = 0
    else:
        # A reducing kind's block is compiled as its pass 1, with SLP (see _reduce).
        address = _cfunc(block, slp=kind_id in _NSUM).address
    entries = _entries[kind_id] = (serial, parallel, address)
    return entries


def _cfunc(fn, slp=False):
    """Block entry ``fn`` of a kind module as a C-callable cfunc, compiled (or loaded
    from numba's cache) on its first use: a kind's first call never waits for the
    other kinds of its module (Adam's first step, for AMSGrad's loops).  ``slp``:
    see _slp."""
    entry = _cfuncs.get(fn)
    if entry is None:
        with _slp(slp):
            entry = cfunc(BLOCK_SIGNATURE, cache=True, error_model="numpy")(fn)
        # Two threads may both have compiled it: every caller gets the first one
        # kept, so no address handed out belongs to a cfunc that is then dropped.
        entry = _cfuncs.setdefault(fn, entry)
    return entry


def _check_buffers(arrays, names):
    """Raise unless ``arrays`` (called ``names``, params first) are valid kernel buffers;
    return (dtype, n)."""
    params = arrays[0]
    if not isinstance(params, np.ndarray) or params.dtype not in _FLOATS:
        got = f"dtype {params.dtype}" if isinstance(params, np.ndarray) else type(params).__name__
        raise TypeError(f"family_kernel: params must be a float32 or float64 array (native "
                        f"byte order), got {got}")
    dtype = params.dtype
    if params.ndim != 1:
        raise ValueError(f"family_kernel: params must be 1-D, got shape {params.shape}")
    n = params.shape[0]
    for j, (a, name) in enumerate(zip(arrays, names)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"family_kernel: {name} must be a numpy array, got "
                            f"{type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"family_kernel: {name} has dtype {a.dtype}, expected {dtype} "
                            f"like params")
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"family_kernel: {name} has shape {a.shape}, expected ({n},) "
                             f"like params")
        flags = a.flags
        if not (flags.c_contiguous and flags.aligned):
            raise ValueError(f"family_kernel: {name} must be C-contiguous and aligned")
        if j != 1 and not flags.writeable:
            raise ValueError(f"family_kernel: {name} must be writable")
    return dtype, n


def _plain_buffers(arrays):
    """``(dtype, n)`` when ``arrays`` (params, grads, then writable ones) pass
    every check of :func:`_check_buffers`, tested in one cheap pass; else None."""
    params = arrays[0]
    if type(params) is not _ND or params.ndim != 1 or params.dtype not in _FLOATS:
        return None
    dtype, shape = params.dtype, params.shape
    grads = arrays[1]
    if type(grads) is not _ND or grads.shape != shape or grads.dtype != dtype or \
            not grads.flags.c_contiguous or not grads.flags.aligned:
        return None
    for j in range(len(arrays)):
        a = arrays[j]
        if j != 1 and (type(a) is not _ND or a.shape != shape or a.dtype != dtype or
                       not a.flags.carray):
            return None
    return dtype, shape[0]


def _check_table(name, a, dtype, width):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 2 or \
            a.shape[1] != width or not (a.flags.c_contiguous and a.flags.aligned):
        got = (f"shape {a.shape}, dtype {a.dtype}" if isinstance(a, np.ndarray)
               else type(a).__name__)
        raise ValueError(f"family_kernel: {name} must be a C-contiguous {dtype} array of "
                         f"shape (rows, {width}), got {got}")


def _check_chunks(chunks, ngroups, n):
    # The Python loop costs ~0.13 us a row (0.4 us for one), the vectorised
    # check ~5 us whatever the size: they break even near 32 rows.
    if chunks.shape[0] <= 32:
        for c, (group, lo, hi) in enumerate(chunks.tolist()):
            if not (0 <= group < ngroups and 0 <= lo <= hi <= n):
                break
        else:
            return
    else:
        group, lo, hi = chunks[:, 0], chunks[:, 1], chunks[:, 2]
        ok = (group >= 0) & (group < ngroups) & (lo >= 0) & (lo <= hi) & (hi <= n)
        if ok.all():
            return
        c = int(np.argmin(ok))
    raise ValueError(f"family_kernel: chunk {c} {tuple(chunks[c].tolist())} is out of range "
                     f"for {ngroups} groups and {n} elements")


# family_kernel marks an exception that stops it before its first write
# (adamfast.optim._kernel_wrote).
MARKS_UNWRITTEN = True


def _state_names(n):
    return tuple(f"states[{j}]" for j in range(n))


_STATE_NAMES = tuple(_state_names(n) for n in range(max(NSTATE) + 1))


def family_kernel(kind_id, params, grads, states, scalars, chunks, num_threads, ema=None):
    """One step of kind ``KINDS[kind_id]`` in place; the kernel contract of adamfast._dispatch.

    ``states`` is the tuple of the kind's ``NSTATE[kind_id]`` state buffers,
    in spec order.  ``scalars`` is a float64
    ``(groups, NSLOT)`` table, ``chunks`` an intp ``(nchunks, 3)`` table of
    rows ``(group, lo, hi)``: each row updates elements [lo, hi) with
    ``scalars[group]`` rounded to the buffer dtype.  Chunks are spread over
    ``num_threads`` threads of adamfast's pool (or numba's, see the module
    docstring) when n >= PARALLEL_MIN; results never depend on the thread
    count, and the caller's numba thread count is left as it was.  With
    ``ema`` (an array like params), every updated element also does
    ``ema = d*ema + (1 - d)*param`` with the row's EMA
    slots, in the same pass.  Anything out of bounds (an unknown kind, buffers of
    the wrong dtype/length/layout, a chunk row out of range) raises
    ValueError or TypeError before any buffer is written.
    """
    # Python up to here: an interrupt (KeyboardInterrupt) in it came before any
    # write, which the optimizer must know (adamfast.optim._kernel_wrote).
    try:
        try:
            kind_id = operator.index(kind_id)
            num_threads = operator.index(num_threads)
        except TypeError:
            raise TypeError(f"family_kernel: kind_id and num_threads must be integers, got "
                            f"{kind_id!r} and {num_threads!r}") from None
        if not 0 <= kind_id < len(KINDS):
            raise ValueError(f"family_kernel: kind_id must be in [0, {len(KINDS)}), got {kind_id}")
        nstate = NSTATE[kind_id]
        _dispatch.check_states("family_kernel", KINDS[kind_id], states, nstate)
        arrays = (params, grads) + states
        checked = _plain_buffers(arrays if ema is None else arrays + (ema,))
        if checked is None:  # something is off: the detailed checks say what
            checked = _check_buffers(arrays, ("params", "grads") + _STATE_NAMES[nstate])
            if ema is not None:
                _check_buffers((params, ema), ("params", "ema"))
                if not ema.flags.writeable:  # second, it was checked as grads are
                    raise ValueError("family_kernel: ema must be writable")
        dtype, n = checked
        if ema is None:
            ema = _EMPTY[dtype]

        _check_table("scalars", scalars, _F64, NSLOT)
        ngroups = scalars.shape[0]
        if ngroups < 1:
            raise ValueError("family_kernel: scalars must have at least one row")
        _check_table("chunks", chunks, _INTP, 3)
        if chunks.shape[0] == 0:
            return
        _check_chunks(chunks, ngroups, n)
        if n == 0:
            return

        serial, parallel, block = _entries.get(kind_id) or _load(kind_id)
    except BaseException as exc:
        exc.adamfast_unwritten = True
        raise
    if _POOL is not None:
        # The block entry, through adamfast's pool: chunk rows are claimed by
        # the caller and the workers, or all run on the caller below the
        # cut-off.  The context words follow _driver's CTX_* order.  Serial
        # calls come this way too: a cfunc call costs ~4 us less than
        # numba's dispatch of the njit entry's arrays.
        _POOL(block, (params, grads, ema, scalars, chunks) + states,
              (n, ema.size, ngroups, chunks.shape[0], dtype == _F64), chunks.shape[0],
              num_threads if n >= PARALLEL_MIN else 1)
        return
    _run_prange(serial, parallel, n, num_threads, params, grads, states, ema, scalars, chunks)


def _run_prange(serial, parallel, n, num_threads, params, grads, states, ema, scalars, chunks):
    """The fallback path's call (numba's own pool), the caller's thread count kept."""
    if n < PARALLEL_MIN or num_threads <= 1:
        serial(params, grads, states, ema, scalars, chunks)
        return
    num_threads = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    if previous == num_threads:
        parallel(params, grads, states, ema, scalars, chunks)
        return
    numba.set_num_threads(num_threads)
    try:
        parallel(params, grads, states, ema, scalars, chunks)
    finally:
        numba.set_num_threads(previous)


# --- pass 1 of the kinds that reduce per tensor (adamfast._reduce; Lamb) --------

# kind id -> how many quantities it reduces (the width of ``out``).
_NSUM = {i: len(spec.reduce[kind].sums) for i, kind in enumerate(KINDS)
         for spec in ALGORITHMS.values() if kind in spec.reduce}


def reduce_kernel(kind_id, params, grads, states, scalars, chunks, out, num_threads):
    """Pass 1 of a reducing kind (adamfast._reduce): see ``_reduce.reduce_kernel``."""
    # Imported on first use with LLVM's SLP vectorizer on, as _norm (the lanes).
    return _import(f"{__name__}._reduce", slp=True).reduce_kernel(
        kind_id, params, grads, states, scalars, chunks, out, num_threads)


def sumsq_kernel(grads, out, num_threads):
    """The norm pass: per chunk of CHUNK elements, (sum of squares, sum of x - x) in
    float64, in the order kernels/_driver.pxi defines (as its _sumsq)."""
    _norm = _import(f"{__name__}._norm", slp=True)

    if not (isinstance(grads, np.ndarray) and grads.ndim == 1 and grads.dtype in _FLOATS
            and grads.flags.c_contiguous):
        raise ValueError(f"sumsq_kernel: grads must be a 1-D C-contiguous float32 or float64 "
                         f"array, got {grads!r}")
    nchunks = -(-grads.size // CHUNK)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float64
            and out.shape == (nchunks, 2) and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"sumsq_kernel: out must be a writable C-contiguous float64 array of "
                         f"shape ({nchunks}, 2)")
    if grads.size == 0:
        return
    if _POOL is not None:
        _POOL(_norm.sumsq_block.address, (grads, out), (grads.size, grads.dtype == np.float64),
              nchunks, num_threads if grads.size >= PARALLEL_MIN else 1)
        return
    if grads.size < PARALLEL_MIN or num_threads <= 1:
        _norm.sumsq_serial(grads, out, grads.dtype == np.float64)
        return
    num_threads = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        _norm.sumsq_parallel(grads, out, grads.dtype == np.float64)
    finally:
        numba.set_num_threads(previous)


# The one-group fast path (adamfast._dispatch's step_fast contract), in its own
# module; last, since it reads this module's tables and entries.
from ._fast import step_fast  # noqa: E402
