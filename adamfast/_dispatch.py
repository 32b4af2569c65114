"""Backend registry, import probes, the ``"auto"`` order and the thread knob.

The kernel contract
===================
Every backend module (``adamfast.reference``, ``adamfast._numba``, the cython
extension) exports ``KINDS`` (the kind names in its id order) and one
callable with this signature::

    family_kernel(kind_id, params, grads, s0, s1, s2, scalars, chunks, num_threads) -> None

* ``kind_id`` indexes the backend's ``KINDS``: a structural variant of an
  algorithm (``"adam"``, ``"adam_amsgrad"``, ``"rmsprop_centered"``, ...) or a
  roofline twin.  :func:`get_backend` maps names to ids once.
* Buffers are 1-D, C-contiguous, of one dtype (float32 or float64) and one
  length; ``grads`` is only read; ``s0, s1, s2`` are the kind's state
  buffers in the order its spec lists them, and unused slots (length 0) are
  never touched.  They have been validated by :mod:`adamfast._validate`; the
  compiled kernels repeat the checks that keep a misuse from reading or
  writing out of bounds.
* ``scalars`` is a float64 ``(groups, NSLOT)`` table computed once per step
  in Python by each algorithm's ``scalars`` function (one row per parameter
  group); each kernel rounds a row to the buffer dtype once per chunk.
* ``chunks`` is an intp ``(nchunks, 3)`` table of ``(group, lo, hi)`` rows
  (:func:`adamfast._engine.chunk_table`): fixed-size chunks that never
  straddle a group, so one kernel call serves every group.
* Kernels keep no state between calls.  The update is element-wise and the
  chunking fixed, so results are bit-identical for any ``num_threads``.

The cython module also provides the fast paths ``step_fast`` (any kind, one
group, buffers checked in C) and ``adam_step_fast`` (all of ``adam_step`` in
C); they perform a call only when it is trivially valid and otherwise
decline, so Python validation stays the one authority.

The dispatcher only picks a callable; it never converts or copies data.  A
backend that is asked for and not available is an error, never a silent
fallback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

# Fastest first: "auto" takes the first that is available.  Both compiled
# backends run at memory bandwidth on large buffers; Cython has the lower
# per-call overhead, so it leads.
AUTO_ORDER = ("cython", "numba", "numpy")
BACKENDS = ("numpy", "numba", "cython")

_MODULES = {
    "numpy": "adamfast.reference",
    "numba": "adamfast._numba",  # a package: one module per algorithm
    "cython": "adamfast._cython",  # or adamfast._cython_avx2: see _cython_module_name
}

_HINTS = {
    "numpy": "numpy is a hard dependency of adamfast; reinstall it",
    "numba": "install it with `pip install numba` (numba>=0.59)",
    "cython": ("the compiled extension adamfast._cython is missing: reinstall adamfast from "
               "source with a C compiler present (`pip install .` builds it) or, in a source "
               "checkout, run `python setup.py build_ext --inplace`"),
}

_backends = {}
_available = None


# --- the cython backend's two builds ---------------------------------------
# adamfast._cython is compiled for the baseline ISA and runs anywhere;
# adamfast._cython_avx2 is the same source compiled with -mavx2 (built only on
# x86-64).  Both round identically, so the choice changes speed, never results.

CYTHON_ISA_ENV = "ADAMFAST_CYTHON_ISA"
_CYTHON_VARIANTS = {"baseline": "adamfast._cython", "avx2": "adamfast._cython_avx2"}
_cython_name = None


def _cpu_has_avx2():
    """AVX2 usable on this CPU and OS, per numpy's own runtime feature table."""
    for path in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = importlib.import_module(path).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return bool(features.get("AVX2", False))
    return False  # no table: assume the baseline only


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _cython_module_name():
    """The module the cython backend loads: the AVX2 build when it is built and
    the CPU has AVX2, else the baseline one; ``ADAMFAST_CYTHON_ISA`` forces one.
    The AVX2 module is never imported on a CPU without AVX2 (it may SIGILL)."""
    global _cython_name
    if _cython_name is None:
        isa = os.environ.get(CYTHON_ISA_ENV, "").strip().lower()
        if isa in ("", "auto"):
            use_avx2 = _cpu_has_avx2() and _importable(_CYTHON_VARIANTS["avx2"])
            _cython_name = _CYTHON_VARIANTS["avx2" if use_avx2 else "baseline"]
        elif isa == "avx2":
            if not _cpu_has_avx2():
                raise ValueError(f"{CYTHON_ISA_ENV}=avx2, but this CPU does not support AVX2 "
                                 f"(per numpy's __cpu_features__); unset it or use 'baseline'")
            if not _importable(_CYTHON_VARIANTS["avx2"]):
                raise ValueError(f"{CYTHON_ISA_ENV}=avx2, but adamfast._cython_avx2 is not built "
                                 f"(it needs an x86-64 gcc/clang that accepts -mavx2); unset it "
                                 f"or use 'baseline'")
            _cython_name = _CYTHON_VARIANTS["avx2"]
        elif isa == "baseline":
            _cython_name = _CYTHON_VARIANTS["baseline"]
        else:
            raise ValueError(f"{CYTHON_ISA_ENV} must be one of 'auto', 'baseline', 'avx2' "
                             f"(or unset), got {os.environ[CYTHON_ISA_ENV]!r}")
    return _cython_name


def _module_name(name):
    return _cython_module_name() if name == "cython" else _MODULES[name]


def cython_module():
    """The extension module the cython backend uses (see ``_cython_module_name``).

    Its ``simd_info()`` says which build it is.  Raises ValueError if the
    cython backend is unavailable.
    """
    resolve("cython")
    return importlib.import_module(_cython_module_name())


def _probe(name):
    """Can this backend load?  Cheap: numba's kernels are not compiled here."""
    if name == "numpy":
        return True
    if name == "numba":
        return importlib.util.find_spec("numba") is not None
    try:
        importlib.import_module(_module_name(name))
    except ImportError:
        return False
    except ValueError as exc:
        # A bad ADAMFAST_CYTHON_ISA makes the cython backend unavailable (asking
        # for it says why), never every backend.
        _HINTS[name] = str(exc)
        return False
    return True


def available_backends():
    """The backends that work on this machine, as a tuple, in ``"auto"`` order."""
    global _available
    if _available is None:
        _available = tuple(name for name in AUTO_ORDER if _probe(name))
    return _available


def resolve(backend):
    """Map a backend argument to a concrete backend name, or raise."""
    _check_name(backend)
    if backend == "auto":
        return available_backends()[0]
    if backend not in _MODULES:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not available on this machine: {_HINTS[backend]}. "
                         f"Available: {available_backends()}")
    return backend


class Backend:
    """A loaded backend: its name, kernel, kind ids and fast paths (cython only)."""

    __slots__ = ("name", "kernel", "kind_ids", "step_fast", "adam_fast", "module")

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.kernel = module.family_kernel
        self.kind_ids = {kind: i for i, kind in enumerate(module.KINDS)}
        self.step_fast = getattr(module, "step_fast", None)
        self.adam_fast = getattr(module, "adam_step_fast", None)

    def sumsq(self, flat, out, num_threads):
        """The guarded step's norm pass (see :mod:`adamfast._guard`)."""
        self.module.sumsq_kernel(flat, out, num_threads)

    def kind_id(self, kind):
        try:
            return self.kind_ids[kind]
        except KeyError:
            raise ValueError(f"backend {self.name!r} has no kernel for kind {kind!r} (a stale "
                             f"build? rebuild with `pip install -e .`)") from None


def _check_name(backend):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {('auto',) + BACKENDS}, got "
                        f"{backend!r} ({type(backend).__name__})")


def get_backend(backend):
    """The :class:`Backend` for ``backend`` (which may be ``"auto"``)."""
    b = _backends.get(backend) if type(backend) is str else None
    if b is None:
        _check_name(backend)
        name = resolve(backend)
        try:
            module = importlib.import_module(_module_name(name))
        except ImportError as exc:  # probed fine, failed for real: say why
            raise ValueError(f"backend {name!r} failed to load ({exc}); {_HINTS[name]}") from exc
        b = _backends[backend] = Backend(name, module)
    return b


# --- threads ---------------------------------------------------------------

# A thread count above this is a typo, not a machine: refuse it before it
# reaches a kernel (an OpenMP team of 100000 threads crashes the process).
MAX_THREADS = 1024


def _check_threads(name, value):
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_THREADS}], got {value!r}")
    return n


def _default_threads():
    env = os.environ.get("ADAMFAST_NUM_THREADS")
    if env is not None and env.strip():
        return _check_threads("ADAMFAST_NUM_THREADS", env.strip())
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_num_threads = _default_threads()
# After fork() the child runs every kernel on its calling thread: an OpenMP
# runtime that the parent used hangs (GNU libgomp) or aborts (numba's omp
# layer) on the child's first parallel region, so the child never starts one.
_forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _numba_max_threads():
    """numba sizes its pool at start-up (NUMBA_NUM_THREADS) and cannot grow it."""
    if "numba" not in available_backends():
        return None
    from numba import config

    return config.NUMBA_NUM_THREADS


def set_num_threads(n):
    """Set the thread count of both compiled backends (default: all usable cores).

    The ``ADAMFAST_NUM_THREADS`` environment variable sets the default at
    import.  The numpy backend is single-threaded and ignores it.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be a positive integer, got {n!r} ({type(n).__name__})")
    n = _check_threads("n", n.__index__())
    limit = _numba_max_threads()
    if limit is not None and n > limit:
        raise ValueError(f"n must be <= {limit}: numba's thread pool was sized at start-up "
                         f"(NUMBA_NUM_THREADS={limit}); set NUMBA_NUM_THREADS before starting "
                         f"Python to use more, got {n}")
    _num_threads = n


def get_num_threads():
    """The thread count the compiled kernels use (1 in a child made by fork())."""
    return 1 if _forked else _num_threads
