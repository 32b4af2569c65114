# The cython backend: one source, textually included by _cython.pyx
# (portable baseline build), _cython_avx2.pyx (the same code compiled with
# -mavx2) and _cython_avx512.pyx (with -mavx512f).  Every build uses
# -ffp-contract=off and no -ffast-math, so they round identically and agree
# with each other and with adamfast's NumPy reference bit for bit; only the
# vector width differs.
#
# An including module must define, before the include:
#   VARIANT   a Python str, "baseline", "avx2" or "avx512", reported by simd_info().
#
# Layout: algorithms/*.pxi hold one element function per kind (the compiled
# version of the reference update in adamfast/algorithms/); _kinds.pxi, rendered
# by setup.py from the registry, includes them and builds the kind table;
# _driver.pxi is the one chunked, threaded driver loop; this file holds the
# entry points: family_kernel (the kernel contract of adamfast._dispatch),
# step_fast (the generic fast path) and adam_step_fast (adam_step's).
#
# Why it looks the way it does:
# * every scalar is rounded to the array dtype once per chunk and all
#   arithmetic is done in that dtype (float32 arrays compute in float32, as
#   NumPy does);
# * the per-element operation order is copied from the reference, and
#   setup.py builds with -ffp-contract=off so gcc never fuses a*b + c into
#   an FMA that NumPy would not use;
# * the entry points take plain ndarrays and raw data pointers instead of
#   typed memoryviews: acquiring five memoryviews plus a fused def dispatch
#   cost ~1-2 us per call, most of the small-buffer budget.  Each entry point
#   therefore repeats the checks that keep a misuse from reading or writing
#   out of bounds (dtype, ndim, length, contiguity, writability, the chunk
#   table's ranges).  adamfast's Python layer stays the real validator.
# Compiler directives (boundscheck, wraparound, cdivision, ...) are set once,
# in setup.py, so that every kernel is built the same way.

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf, fabs, fabsf, pow, INFINITY
from libc.float cimport DBL_MIN
from libc.stdint cimport uintptr_t
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongAndOverflow
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE, PyTuple_GET_ITEM

# The PyArray_* macros go through numpy's C-API table; fill it at import.
cnp.import_array()


cdef extern from *:
    """
    /* setup.py passes ADAMFAST_OPENMP after probing the compiler; a build
       that bypasses setup.py falls back on what the compiler itself says. */
    #ifndef ADAMFAST_OPENMP
    #  ifdef _OPENMP
    #    define ADAMFAST_OPENMP 1
    #  else
    #    define ADAMFAST_OPENMP 0
    #  endif
    #endif

    /* Report the instruction set the compiler was allowed to use, read from
       its own predefined macros rather than from what setup.py intended. */
    #if defined(__AVX512F__)
    #  define ADAMFAST_ISA "avx512f"
    #elif defined(__AVX2__)
    #  define ADAMFAST_ISA "avx2"
    #elif defined(__AVX__)
    #  define ADAMFAST_ISA "avx"
    #elif defined(__SSE2__) || defined(_M_X64)
    #  define ADAMFAST_ISA "sse2"
    #elif defined(__ARM_NEON) || defined(__aarch64__)
    #  define ADAMFAST_ISA "neon"
    #else
    #  define ADAMFAST_ISA "scalar"
    #endif
    #if defined(__FMA__)
    #  define ADAMFAST_FMA_ISA 1
    #else
    #  define ADAMFAST_FMA_ISA 0
    #endif
    #if defined(__FAST_MATH__)
    #  define ADAMFAST_FAST_MATH 1
    #else
    #  define ADAMFAST_FAST_MATH 0
    #endif
    /* Flags only setup.py knows about; 0 means "not requested by setup.py". */
    #ifndef ADAMFAST_NATIVE
    #  define ADAMFAST_NATIVE 0
    #endif
    #ifndef ADAMFAST_FP_CONTRACT_OFF
    #  define ADAMFAST_FP_CONTRACT_OFF 0
    #endif
    """
    int ADAMFAST_OPENMP
    const char *ADAMFAST_ISA
    int ADAMFAST_FMA_ISA
    int ADAMFAST_FAST_MATH
    int ADAMFAST_NATIVE
    int ADAMFAST_FP_CONTRACT_OFF


# An enum, not a Python global, so gcc sees compile-time constants.  The
# engine's constants (_CHUNK, _NSLOT, _MAXSTATE, _LANES) and the slot names
# are in _kinds.pxi, rendered from adamfast.algorithms._spec, their one source.
cdef enum:
    # Below this, waking another thread costs more than the work itself.
    # (The numba backend's is the same on this pool, higher on numba's own:
    # see adamfast/_numba/_driver.py.)
    _PARALLEL_MIN = 65536

PARALLEL_MIN = _PARALLEL_MIN


def openmp_enabled():
    """True if this extension was compiled with OpenMP (prange can use threads)."""
    return bool(ADAMFAST_OPENMP)


def simd_info():
    """One line describing how this extension was compiled."""
    return (
        "variant=%s isa=%s fma_isa=%s fp_contract=%s fast_math=%s native=%s openmp=%s "
        "line_loop=%s"
        % (
            VARIANT,
            (<bytes>ADAMFAST_ISA).decode("ascii"),
            "yes" if ADAMFAST_FMA_ISA else "no",
            "off" if ADAMFAST_FP_CONTRACT_OFF else "compiler-default",
            "yes" if ADAMFAST_FAST_MATH else "no",
            "yes" if ADAMFAST_NATIVE else "no",
            "yes" if ADAMFAST_OPENMP else "no",
            "yes" if AF_LINE_LOOP else "no",
        )
    )
include "algorithms/_common.pxi"
include "_kinds.pxi"
include "_entries.pxi"

CHUNK = _CHUNK
NSLOT = _NSLOT
MAXSTATE = _MAXSTATE
LANES = _LANES
