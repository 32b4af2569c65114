"""Backend registry, import probes, the ``"auto"`` order and the thread knob.

The kernel contract
===================
Every backend module (``adamfast._numpy_backend``, ``adamfast._numba``, the cython
extension) exports ``KINDS`` (the kind names in its id order) and one
callable with this signature::

    family_kernel(kind_id, params, grads, states, scalars, chunks, num_threads,
                  ema=None) -> None

* ``kind_id`` indexes the backend's ``KINDS``: a structural variant of an
  algorithm (``adamfast.algorithms.KINDS``: Adam with and without AMSGrad are
  two) or a roofline kind.  :func:`get_backend` maps names to ids once.
* Buffers are 1-D, C-contiguous, of one dtype (float32 or float64) and one
  length; ``grads`` is only read; ``states`` is a tuple of exactly
  ``NSTATE[kind_id]`` arrays (each backend exports ``NSTATE``), the kind's
  state buffers in the order its spec lists them (any number up to
  ``MAXSTATE``, :mod:`adamfast.algorithms._spec`); anything else is a
  TypeError (not a tuple) or ValueError (wrong length).  The buffers have
  been validated by :mod:`adamfast._validate`; the compiled kernels repeat
  the checks that keep a misuse from reading or writing out of bounds.
* ``scalars`` is a float64 ``(groups, NSLOT)`` table computed once per step
  in Python by each algorithm's ``scalars`` function (one row per parameter
  group, its slots named by the spec's ``slots``); each kernel rounds a row
  to the buffer dtype once per chunk.
* ``ema`` (or None) is the parameter EMA, one more buffer like params,
  updated in the same pass with the row's EMA_D and EMA_OMD slots.
* ``chunks`` is an intp ``(nchunks, 3)`` table of ``(group, lo, hi)`` rows
  (:func:`adamfast._engine.chunk_table`): fixed-size chunks that never
  straddle a group, so one kernel call serves every group.
* Kernels keep no state between calls.  The update is element-wise and the
  chunking fixed, so results are bit-identical for any ``num_threads``.
* A kernel writes all of a step or none of it, so the optimizers can keep
  their counters with the buffers when a KeyboardInterrupt arrives: compiled
  code is never interrupted midway, and a backend whose kernel runs Python
  code (numba's checks, the reference) sets ``MARKS_UNWRITTEN = True`` and
  tags whatever stops it before its first write with
  ``exc.adamfast_unwritten = True`` (read by ``adamfast._core._kernel_wrote``).

The cython module also provides the fast paths ``step_fast(kind, params,
grads, states, row, num_threads, ema=None)`` (any kind, one group, buffers
checked in C) and ``adam_step_fast`` (all of ``adam_step`` in
C, also as ``adam_step_call``: its arguments but the step and the thread
count given once, for adamfast.Adam's step); they perform a call only when it is trivially valid and otherwise
decline, so Python validation stays the one authority.  The numba backend
has a ``step_fast`` too, with the same contract: one cheap pass over the
buffers instead of family_kernel's detailed checks and tables, made in C by
the extension's ``_step_blocks`` when numba runs on adamfast's pool, and in
Python on numba's own pool.

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
    "numpy": "adamfast._numpy_backend",
    "numba": "adamfast._numba",  # a package: one module per algorithm
    "cython": "adamfast._cython",  # or an ISA build: see _cython_module_name
}

_HINTS = {
    "numpy": "numpy is a hard dependency of adamfast; reinstall it",
    "numba": "install it with `pip install numba` (numba>=0.59)",
    "cython": ("the compiled extension adamfast._cython is missing: reinstall adamfast from "
               "source with a C compiler present (`pip install .` builds it) or, in a source "
               "checkout, run `python setup.py build_ext --inplace`"),
}

def check_states(entry, kind, states, nstate):
    """Raise unless ``states`` is a tuple of exactly ``nstate`` items: the check every
    Python backend makes (the cython extension makes it in C); the arrays are
    checked with the other buffers."""
    if type(states) is not tuple:
        raise TypeError(f"{entry}: states must be a tuple of the {nstate} state buffer(s) of "
                        f"kind {kind!r}, got {type(states).__name__}")
    if len(states) != nstate:
        raise ValueError(f"{entry}: kind {kind!r} has {nstate} state buffer(s), got a tuple "
                         f"of {len(states)}")


_backends = {}
_available = None


# --- the cython backend's builds ------------------------------------------
# adamfast._cython is compiled for the baseline ISA and runs anywhere;
# adamfast._cython_avx2 and adamfast._cython_avx512 are the same source
# compiled with -mavx2 and -mavx512f (built only on x86-64).  All round
# identically, so the choice changes speed, never results.

CYTHON_ISA_ENV = "ADAMFAST_CYTHON_ISA"
_CYTHON_VARIANTS = {"baseline": "adamfast._cython", "avx2": "adamfast._cython_avx2",
                    "avx512": "adamfast._cython_avx512"}
# What each ISA build needs, as named in numpy's feature table, and the flag it
# is built with; in rising order of preference ("auto" takes the last one this
# CPU runs).
_VARIANT_NEEDS = {"avx2": ("AVX2", "-mavx2"), "avx512": ("AVX512F", "-mavx512f")}
_cython_name = None


def _cpu_features():
    """numpy's own runtime table of the CPU's (and OS's) usable features, or {}."""
    for path in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return importlib.import_module(path).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return {}  # no table: assume the baseline only


def _cpu_has_avx2():
    """AVX2 usable on this CPU and OS, per numpy's own runtime feature table."""
    return bool(_cpu_features().get("AVX2", False))


def _cpu_has_avx512():
    """AVX-512F usable on this CPU and OS (zmm state enabled), per numpy's table."""
    return bool(_cpu_features().get("AVX512F", False))


def _cpu_runs(variant):
    """Whether this CPU runs the build ``variant`` (a key of _CYTHON_VARIANTS)."""
    if variant == "avx512":
        return _cpu_has_avx512()
    if variant == "avx2":
        return _cpu_has_avx2()
    return True


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _cython_module_name():
    """The module the cython backend loads: the widest build that is built and
    that the CPU runs (AVX-512, then AVX2, then the baseline one);
    ``ADAMFAST_CYTHON_ISA`` forces one.  A build is never imported on a CPU
    without its ISA (it may SIGILL)."""
    global _cython_name
    if _cython_name is None:
        isa = os.environ.get(CYTHON_ISA_ENV, "").strip().lower()
        if isa in ("", "auto"):
            _cython_name = _CYTHON_VARIANTS["baseline"]
            for variant in reversed(tuple(_VARIANT_NEEDS)):
                if _cpu_runs(variant) and _importable(_CYTHON_VARIANTS[variant]):
                    _cython_name = _CYTHON_VARIANTS[variant]
                    break
        elif isa in _VARIANT_NEEDS:
            feature, flag = _VARIANT_NEEDS[isa]
            if not _cpu_runs(isa):
                raise ValueError(f"{CYTHON_ISA_ENV}={isa}, but this CPU does not support "
                                 f"{feature} (per numpy's __cpu_features__); unset it or use "
                                 f"'baseline'")
            if not _importable(_CYTHON_VARIANTS[isa]):
                raise ValueError(f"{CYTHON_ISA_ENV}={isa}, but {_CYTHON_VARIANTS[isa]} is not "
                                 f"built (it needs an x86-64 gcc/clang that accepts {flag}); "
                                 f"unset it or use 'baseline'")
            _cython_name = _CYTHON_VARIANTS[isa]
        elif isa == "baseline":
            _cython_name = _CYTHON_VARIANTS["baseline"]
        else:
            choices = ", ".join(repr(v) for v in ("auto",) + tuple(_CYTHON_VARIANTS))
            raise ValueError(f"{CYTHON_ISA_ENV} must be one of {choices} (or unset), got "
                             f"{os.environ[CYTHON_ISA_ENV]!r}")
    return _cython_name


def _module_name(name):
    return _cython_module_name() if name == "cython" else _MODULES[name]


# --- ADAMFAST_THREADING: the parallel path of both compiled backends --------

THREADING_ENV = "ADAMFAST_THREADING"
_THREADING_MODES = ("pool", "openmp")


def _check_threading_env():
    # The same reading as the extension's own at its import (kernels/_entries.pxi),
    # checked here first so that the message names the variable.
    raw = os.environ.get(THREADING_ENV, "")
    if (raw.strip().lower() or "pool") not in _THREADING_MODES:
        raise ValueError(f"{THREADING_ENV} must be 'pool' or 'openmp' (or unset), got {raw!r}")


# The cython extension as probed once: (module, None) or (None, why not).
_cython_probe = None
# A bad ADAMFAST_THREADING or ADAMFAST_CYTHON_ISA, as its message: it leaves
# both compiled backends and "auto" unresolvable (the numba backend runs on
# the extension's pool), so that a typo never moves "auto" to another backend.
_config_error = None


def _load_cython():
    global _cython_probe, _config_error
    if _cython_probe is None:
        try:
            _check_threading_env()
            module = importlib.import_module(_cython_module_name())
        except ImportError as exc:
            _cython_probe = (None, f"{_HINTS['cython']} ({exc})")
        except ValueError as exc:
            msg = str(exc)
            if THREADING_ENV not in msg and CYTHON_ISA_ENV not in msg:
                # The extension refused at import: ADAMFAST_THREADING=openmp on a
                # build without OpenMP.
                msg = f"{THREADING_ENV}={os.environ.get(THREADING_ENV)!r}: {msg}"
            _config_error = msg
            _cython_probe = (None, msg)
        else:
            _cython_probe = (module, None)
    return _cython_probe


def _pool_module():
    """The extension whose thread pool both compiled backends run on, or None:
    then the numba backend runs on numba's own pool (``prange``).  None when
    the extension is missing or unusable, or under ADAMFAST_THREADING=openmp."""
    module = _load_cython()[0]
    mode = getattr(module, "threading_mode", None)  # absent in a stale build
    return module if mode is not None and mode() == "pool" else None


def cython_module():
    """The extension module the cython backend uses (see ``_cython_module_name``).

    Its ``simd_info()`` says which build it is.  Raises ValueError if the
    cython backend is unavailable.
    """
    resolve("cython")
    return importlib.import_module(_cython_module_name())


# Why each backend is unavailable (None: it is available), from its probe.
_reasons = {}


def _probe(name):
    """Why this backend cannot load, or None.  Cheap: numba is not imported."""
    if name == "numpy":
        return None
    if name == "numba":
        if importlib.util.find_spec("numba") is None:
            return _HINTS["numba"]
        _load_cython()
        if _config_error is not None:
            return (f"{_config_error} (the numba backend runs its threads on the cython "
                    f"extension's pool, which this variable selects)")
        return None
    return _load_cython()[1]


def available_backends():
    """The backends that work on this machine, as a tuple, in ``"auto"`` order."""
    global _available
    if _available is None:
        for name in AUTO_ORDER:
            _reasons[name] = _probe(name)
        _available = tuple(name for name in AUTO_ORDER if _reasons[name] is None)
    return _available


def resolve(backend):
    """Map a backend argument to a concrete backend name, or raise."""
    _check_name(backend)
    if backend == "auto":
        available = available_backends()
        if _config_error is not None:
            raise ValueError(f"backend 'auto' cannot choose a backend: {_config_error}. Fix or "
                             f"unset it (backend='numpy' does not depend on it)")
        return available[0]
    if backend not in _MODULES:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        reason = _reasons.get(backend) or _HINTS[backend]
        raise ValueError(f"backend {backend!r} is not available on this machine: {reason}. "
                         f"Available: {available_backends()}")
    return backend


def backend_status():
    """Which backends work here and, for each that does not, why.

    Returns a dict (JSON-serializable):

    * ``"numpy"``, ``"numba"``, ``"cython"``: ``{"available": bool, "reason":
      str or None}``, the reason being the error that asking for it raises;
    * ``"auto"``: the backend ``backend="auto"`` picks, or None, and
      ``"auto_error"``: why it cannot pick (a bad ADAMFAST_THREADING or
      ADAMFAST_CYTHON_ISA), or None;
    * ``"cython_build"``: ``"baseline"``, ``"avx2"`` or ``"avx512"``, the build the cython
      backend loads (None if it is unavailable);
    * ``"threading"``: the parallel path, ``{"cython": "pool" or "openmp",
      "numba": "adamfast pool" or "numba prange"}`` (None for a backend that
      is unavailable).

    Probes like :func:`available_backends`: nothing is compiled and numba is
    not imported.
    """
    available = available_backends()
    status = {name: {"available": name in available,
                     "reason": None if name in available
                     else (_reasons.get(name) or _HINTS[name])}
              for name in BACKENDS}
    try:
        status["auto"], status["auto_error"] = resolve("auto"), None
    except ValueError as exc:
        status["auto"], status["auto_error"] = None, str(exc)
    module = _load_cython()[0] if "cython" in available else None
    status["cython_build"] = None if module is None else next(
        variant for variant, name in _CYTHON_VARIANTS.items() if name == module.__name__)
    status["threading"] = {
        "cython": None if module is None else module.threading_mode(),
        "numba": None if "numba" not in available
        else ("adamfast pool" if _pool_module() is not None else "numba prange"),
    }
    return status


class Backend:
    """A loaded backend: its name, kernel, kind ids and fast paths (None where the
    backend has none: ``step_fast`` on cython and numba, ``adam_fast`` and
    ``adam_call`` on cython)."""

    __slots__ = ("name", "kernel", "kind_ids", "step_fast", "adam_fast", "adam_call", "module")

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.kernel = module.family_kernel
        self.kind_ids = {kind: i for i, kind in enumerate(module.KINDS)}
        self.step_fast = getattr(module, "step_fast", None)
        self.adam_fast = getattr(module, "adam_step_fast", None)
        self.adam_call = getattr(module, "adam_step_call", None)

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
NUM_THREADS_ENV = "ADAMFAST_NUM_THREADS"


def _check_threads(name, value, shown=None):
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_THREADS}], got "
                         f"{value if shown is None else shown!r}")
    return value


def _env_threads():
    """ADAMFAST_NUM_THREADS as an int, or None when it is unset or empty."""
    raw = os.environ.get(NUM_THREADS_ENV, "")
    if not raw:
        return None
    # ASCII digits only: int() also takes "1_0", " 10", "+10" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer in ASCII digits, "
                         f"got {raw!r}")
    try:
        n = int(raw)
    except ValueError:  # beyond int()'s digit limit
        n = MAX_THREADS + 1
    return _check_threads(NUM_THREADS_ENV, n, raw)


def _default_threads():
    """ADAMFAST_NUM_THREADS, else every core this process may run on."""
    env = _env_threads()
    if env is not None:
        return env
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_num_threads = _default_threads()
# The knob's value as ADAMFAST_NUM_THREADS gave it, until set_num_threads: it is
# checked against numba's pool when numba's kernels load on it (_check_env_threads).
_env_default = os.environ.get(NUM_THREADS_ENV) or None
# After fork() the child runs every kernel on its calling thread: an OpenMP
# runtime that the parent used hangs (GNU libgomp) or aborts (numba's omp
# layer) on the child's first parallel region, so the child never starts one.
_forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _numba_thread_limit():
    """numba's pool size when adamfast's numba kernels run on numba's own pool
    (``prange``: no usable cython extension, or ADAMFAST_THREADING=openmp), else
    None: on adamfast's pool numba's thread count is never used.  numba sizes
    its pool at start-up (NUMBA_NUM_THREADS) and cannot grow it."""
    if "numba" not in available_backends() or _pool_module() is not None:
        return None
    from numba import config

    return config.NUMBA_NUM_THREADS


_LIMIT_WHY = ("adamfast's numba kernels run on numba's own thread pool here (no usable cython "
              "extension, or ADAMFAST_THREADING=openmp), which was sized at start-up "
              "(NUMBA_NUM_THREADS={limit}); set NUMBA_NUM_THREADS before starting Python to "
              "use more")


def _check_env_threads(limit):
    """Called once by adamfast._numba when its kernels load on numba's own pool:
    the ADAMFAST_NUM_THREADS default must fit it, as set_num_threads(n) must."""
    if _env_default is not None and _num_threads > limit:
        raise ValueError(f"{NUM_THREADS_ENV} must be <= {limit}: " + _LIMIT_WHY.format(limit=limit)
                         + f", got {_env_default!r}")


def set_num_threads(n):
    """Set the thread count of both compiled backends (default: all usable cores).

    The ``ADAMFAST_NUM_THREADS`` environment variable sets the default at
    import.  The numpy backend is single-threaded and ignores it.
    """
    global _num_threads, _env_default
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be a positive integer, got {n!r} ({type(n).__name__})")
    n = _check_threads("n", n.__index__())
    limit = _numba_thread_limit()
    if limit is not None and n > limit:
        raise ValueError(f"n must be <= {limit}: " + _LIMIT_WHY.format(limit=limit)
                         + f", got {n}")
    _num_threads = n
    _env_default = None


def get_num_threads():
    """The thread count the compiled kernels use (1 in a child made by fork())."""
    return 1 if _forked else _num_threads
