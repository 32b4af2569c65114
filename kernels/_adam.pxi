# The one source of adamfast's compiled Adam maths, textually included by
# _cython.pyx (portable baseline build) and _cython_avx2.pyx (the same code
# compiled with -mavx2).  Both builds use -ffp-contract=off and no
# -ffast-math, so they round identically and agree with each other and with
# adamfast.reference bit for bit; only the vector width differs.
#
# An including module must define, before the include:
#   VARIANT   a Python str, "baseline" or "avx2", reported by simd_info().
#
# The maths lives in ``adamfast.reference.adam_kernel``; this file is its
# compiled twin and must stay bit-identical to it.  That is why:
#
# * every scalar is cast to the array dtype once, before the loop, and all
#   arithmetic is done in that dtype (float32 arrays compute in float32, as
#   NumPy does);
# * the per-element operation order below is copied from the reference, and
#   setup.py builds with ``-ffp-contract=off`` so gcc never fuses ``a*b + c``
#   into an FMA that NumPy would not use;
# * work is split into fixed chunks of ``CHUNK`` elements, so which thread
#   does a chunk never changes any result.
#
# The Python layer has validated every argument already; nothing here checks.
# Compiler directives (boundscheck, wraparound, cdivision, ...) are set once,
# in setup.py, so that every kernel is built the same way.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf


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


# An enum, not a Python global, so gcc sees compile-time constants.
cdef enum:
    # Chunks are the unit of work handed to a thread.  16384 elements keeps a
    # chunk's 4-5 streams (256-320 KiB in float32) near L2 size, and the
    # split depends only on n, never on the thread count.
    _CHUNK = 16384
    # Below this, starting an OpenMP team costs more than the work itself.
    _PARALLEL_MIN = 65536

CHUNK = _CHUNK
PARALLEL_MIN = _PARALLEL_MIN


def openmp_enabled():
    """True if this extension was compiled with OpenMP (prange can use threads)."""
    return bool(ADAMFAST_OPENMP)


def simd_info():
    """One line describing how this extension was compiled."""
    return (
        "variant=%s isa=%s fma_isa=%s fp_contract=%s fast_math=%s native=%s openmp=%s"
        % (
            VARIANT,
            (<bytes>ADAMFAST_ISA).decode("ascii"),
            "yes" if ADAMFAST_FMA_ISA else "no",
            "off" if ADAMFAST_FP_CONTRACT_OFF else "compiler-default",
            "yes" if ADAMFAST_FAST_MATH else "no",
            "yes" if ADAMFAST_NATIVE else "no",
            "yes" if ADAMFAST_OPENMP else "no",
        )
    )


cdef inline floating _sqrt(floating x) noexcept nogil:
    # sqrt() on a float would round-trip through double; sqrtf keeps the
    # float32 path in float32 like NumPy, and vectorises as sqrtps.
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline void _adam_span(
    floating* p,           # IN/OUT  params
    const floating* g,     # IN      grads
    floating* m,           # IN/OUT  exp_avg
    floating* v,           # IN/OUT  exp_avg_sq
    floating* vmax,        # IN/OUT  max_exp_avg_sq (NULL unless amsgrad)
    Py_ssize_t n,
    floating beta1, floating one_minus_beta1,
    floating beta2, floating one_minus_beta2,
    floating eps, floating l2, bint use_l2,
    floating param_scale, floating grad_sign,
    floating step_size, floating inv_bc2_sqrt,
    bint amsgrad,
) noexcept nogil:
    # Raw pointers and plain counted loops give gcc the simple form its
    # vectoriser needs; it versions each loop on a runtime no-overlap check.
    cdef Py_ssize_t i
    cdef floating gi, pi, mi, vi, vm
    cdef bint keep

    # AMSGrad gets its own loop so the common path carries no extra
    # branch or load; use_l2 is loop-invariant, so gcc unswitches it.
    if amsgrad:
        for i in range(n):
            gi = g[i] * grad_sign
            pi = p[i] * param_scale
            if use_l2:
                gi = gi + l2 * pi
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            # np.maximum semantics: a NaN on either side wins.  "|" and not
            # "or": a short-circuit branch stops gcc vectorising the loop.
            vm = vmax[i]
            keep = (vm != vm) | (vm >= vi)
            vm = vm if keep else vi
            vmax[i] = vm
            p[i] = pi - step_size * (mi / (_sqrt(vm) * inv_bc2_sqrt + eps))
    else:
        for i in range(n):
            gi = g[i] * grad_sign
            pi = p[i] * param_scale
            if use_l2:
                gi = gi + l2 * pi
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = pi - step_size * (mi / (_sqrt(vi) * inv_bc2_sqrt + eps))


def adam_kernel(
    floating[::1] params,              # IN/OUT
    const floating[::1] grads,         # IN
    floating[::1] exp_avg,             # IN/OUT
    floating[::1] exp_avg_sq,          # IN/OUT
    floating[::1] max_exp_avg_sq,      # IN/OUT (length 0 unless amsgrad)
    double beta1, double one_minus_beta1,
    double beta2, double one_minus_beta2,
    double eps, double l2, double param_scale, double grad_sign,
    double step_size, double inv_bc2_sqrt,
    bint amsgrad, int num_threads,
):
    """One Adam step in place; the compiled twin of ``adamfast.reference.adam_kernel``.

    Per element, in the array dtype::

        g = grad * grad_sign ; p = param * param_scale
        if l2 != 0: g = g + l2 * p
        m = beta1*m + (1-beta1)*g ; v = beta2*v + (1-beta2)*(g*g)
        if amsgrad: vmax = max(vmax, v) (NaN-propagating); v = vmax
        param = p - step_size * (m / (sqrt(v) * inv_bc2_sqrt + eps))

    Chunks of ``CHUNK`` elements are spread over ``num_threads`` OpenMP
    threads when n >= ``PARALLEL_MIN``; results do not depend on the thread
    count.  Returns None.
    """
    cdef Py_ssize_t n = params.shape[0]
    if n == 0:
        return  # &params[0] would point past an empty buffer

    # Cast once: the reference does its arithmetic in the array dtype, and
    # casting per element would let the compiler promote to double.
    cdef floating b1 = <floating>beta1
    cdef floating omb1 = <floating>one_minus_beta1
    cdef floating b2 = <floating>beta2
    cdef floating omb2 = <floating>one_minus_beta2
    cdef floating eps_ = <floating>eps
    cdef floating l2_ = <floating>l2
    cdef floating ps = <floating>param_scale
    cdef floating gs = <floating>grad_sign
    cdef floating st = <floating>step_size
    cdef floating ibc = <floating>inv_bc2_sqrt
    # Decided on the rounded value, as the reference does: an l2 that
    # rounds to 0 in float32 must skip "g + l2*p" (0*inf would give NaN).
    cdef bint use_l2 = l2_ != 0

    cdef floating* p = &params[0]
    cdef const floating* g = &grads[0]
    cdef floating* m = &exp_avg[0]
    cdef floating* v = &exp_avg_sq[0]
    # The length-0 buffer of the non-AMSGrad call must never be touched.
    cdef floating* vmax = &max_exp_avg_sq[0] if amsgrad else NULL

    cdef Py_ssize_t nchunks, c, start, length
    cdef int nt

    if n < _PARALLEL_MIN:
        # Small calls skip OpenMP entirely: per-call overhead dominates here.
        with nogil:
            _adam_span(p, g, m, v, vmax, n, b1, omb1, b2, omb2, eps_, l2_,
                       use_l2, ps, gs, st, ibc, amsgrad)
        return

    nt = num_threads
    nchunks = (n + _CHUNK - 1) // _CHUNK
    with nogil:
        for c in prange(nchunks, schedule='static', num_threads=nt):
            start = c * _CHUNK
            length = min(<Py_ssize_t>_CHUNK, n - start)
            _adam_span(p + start, g + start, m + start, v + start,
                       (vmax + start) if amsgrad else NULL, length,
                       b1, omb1, b2, omb2, eps_, l2_, use_l2, ps, gs, st, ibc,
                       amsgrad)


cdef inline void _roofline_span(
    floating* p,           # IN/OUT
    const floating* g,     # IN
    floating* m,           # IN/OUT
    floating* v,           # IN/OUT
    Py_ssize_t n,
) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(n):
        gi = g[i]
        p[i] = p[i] + gi
        m[i] = m[i] + gi
        v[i] = v[i] + gi


def roofline_kernel(
    floating[::1] params,              # IN/OUT
    const floating[::1] grads,         # IN
    floating[::1] exp_avg,             # IN/OUT
    floating[::1] exp_avg_sq,          # IN/OUT
    int num_threads,
):
    """Memory-traffic twin of ``adam_kernel`` for the benchmark's roofline.

    Reads the same four arrays and writes the same three, with the same
    chunking and threading, but does one add per stream; the gap between
    this and ``adam_kernel`` is the cost of the Adam arithmetic itself.
    """
    cdef Py_ssize_t n = params.shape[0]
    if n == 0:
        return
    cdef floating* p = &params[0]
    cdef const floating* g = &grads[0]
    cdef floating* m = &exp_avg[0]
    cdef floating* v = &exp_avg_sq[0]
    cdef Py_ssize_t nchunks, c, start, length
    cdef int nt

    if n < _PARALLEL_MIN:
        with nogil:
            _roofline_span(p, g, m, v, n)
        return

    nt = num_threads
    nchunks = (n + _CHUNK - 1) // _CHUNK
    with nogil:
        for c in prange(nchunks, schedule='static', num_threads=nt):
            start = c * _CHUNK
            length = min(<Py_ssize_t>_CHUNK, n - start)
            _roofline_span(p + start, g + start, m + start, v + start, length)
