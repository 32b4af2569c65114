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
# The Python layer (adamfast._validate) is the real validator and gives the
# good error messages.  The entry points below take plain ndarrays and raw
# data pointers instead of typed memoryviews, because acquiring five
# memoryviews plus the fused-type ``def`` dispatch cost ~1-2 us per call,
# which is most of the small-buffer budget.  Since that also drops Cython's
# buffer checks, each entry point repeats the few checks that keep a misuse
# from reading or writing out of bounds (dtype, ndim, length, contiguity,
# writability): a handful of loads and compares, nothing measurable.
# Compiler directives (boundscheck, wraparound, cdivision, ...) are set once,
# in setup.py, so that every kernel is built the same way.

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf, pow, INFINITY
from libc.float cimport DBL_MIN
from libc.stdint cimport uintptr_t
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongAndOverflow
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE

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



# --- argument checks -------------------------------------------------------
# Flags an array must have: C-contiguous (1-D: unit stride, so n elements
# from the data pointer are exactly the array), and writable for outputs.
cdef enum:
    _IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS
    _OUT_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_WRITEABLE


cdef inline bint _buffer_ok(cnp.ndarray a, int typenum, Py_ssize_t n, int flags,
                            bint check_len) noexcept:
    # ndim first: PyArray_DIM(a, 0) is only valid for ndim >= 1.  A byte-
    # swapped float32 array still has type NPY_FLOAT32, hence ISNOTSWAPPED.
    return (cnp.PyArray_TYPE(a) == typenum
            and cnp.PyArray_NDIM(a) == 1
            and (not check_len or cnp.PyArray_DIM(a, 0) == n)
            and (cnp.PyArray_FLAGS(a) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(a))


cdef int _bad_buffers(str kernel, tuple names, tuple arrays, tuple writable,
                      int n_checked) except -1:
    # Cold path: only runs once a check above has failed.  Says which
    # argument is wrong and why; TypeError for a dtype, ValueError otherwise.
    cdef cnp.ndarray first = arrays[0]
    dtype = first.dtype
    if not dtype.isnative or dtype.type not in (np.float32, np.float64):
        raise TypeError("%s: %s must have dtype float32 or float64 (native byte "
                        "order), got %r" % (kernel, names[0], dtype))
    for i in range(len(arrays)):
        a, name = arrays[i], names[i]
        if a.dtype != dtype:
            raise TypeError("%s: %s has dtype %r, expected %r like %s"
                            % (kernel, name, a.dtype, dtype, names[0]))
        if a.ndim != 1:
            raise ValueError("%s: %s must be 1-D, got shape %r" % (kernel, name, a.shape))
        if i < n_checked and a.shape[0] != first.shape[0]:
            raise ValueError("%s: %s has length %d, expected %d like %s"
                             % (kernel, name, a.shape[0], first.shape[0], names[0]))
        if not a.flags.c_contiguous:
            raise ValueError("%s: %s must be C-contiguous, got strides %r"
                             % (kernel, name, a.strides))
        if writable[i] and not a.flags.writeable:
            raise ValueError("%s: %s must be writable" % (kernel, name))
    raise ValueError("%s: invalid buffers" % kernel)  # not reached


_ADAM_NAMES = ("params", "grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_ADAM_WRITABLE = (True, False, True, True, True)


cdef inline void _adam_run(
    floating* p,           # IN/OUT  params
    const floating* g,     # IN      grads
    floating* m,           # IN/OUT  exp_avg
    floating* v,           # IN/OUT  exp_avg_sq
    floating* vmax,        # IN/OUT  max_exp_avg_sq (NULL unless amsgrad)
    Py_ssize_t n,
    double beta1, double one_minus_beta1,
    double beta2, double one_minus_beta2,
    double eps, double l2, double param_scale, double grad_sign,
    double step_size, double inv_bc2_sqrt,
    bint amsgrad, int num_threads,
) noexcept nogil:
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

    cdef Py_ssize_t nchunks, c, start, length

    if n < _PARALLEL_MIN:
        # Small calls skip OpenMP entirely: per-call overhead dominates here.
        _adam_span(p, g, m, v, vmax, n, b1, omb1, b2, omb2, eps_, l2_,
                   use_l2, ps, gs, st, ibc, amsgrad)
        return

    nchunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(nchunks, schedule='static', num_threads=num_threads):
        start = c * _CHUNK
        length = min(<Py_ssize_t>_CHUNK, n - start)
        _adam_span(p + start, g + start, m + start, v + start,
                   (vmax + start) if amsgrad else NULL, length,
                   b1, omb1, b2, omb2, eps_, l2_, use_l2, ps, gs, st, ibc,
                   amsgrad)


cdef inline void _adam_call(
    int typenum,           # NPY_FLOAT32 or NPY_FLOAT64 (checked by the caller)
    void* p,               # IN/OUT  params
    const void* g,         # IN      grads
    void* m,               # IN/OUT  exp_avg
    void* v,               # IN/OUT  exp_avg_sq
    void* vmax,            # IN/OUT  max_exp_avg_sq (NULL unless amsgrad)
    Py_ssize_t n,
    double beta1, double one_minus_beta1,
    double beta2, double one_minus_beta2,
    double eps, double l2, double param_scale, double grad_sign,
    double step_size, double inv_bc2_sqrt,
    bint amsgrad, int num_threads,
) noexcept nogil:
    # The one place both entry points (adam_kernel, adam_step_fast) reach the
    # maths: picks the dtype's instantiation of _adam_run.
    if typenum == cnp.NPY_FLOAT32:
        _adam_run[float](<float*>p, <const float*>g, <float*>m, <float*>v, <float*>vmax,
                         n, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2,
                         param_scale, grad_sign, step_size, inv_bc2_sqrt, amsgrad,
                         num_threads)
    else:
        _adam_run[double](<double*>p, <const double*>g, <double*>m, <double*>v,
                          <double*>vmax, n, beta1, one_minus_beta1, beta2,
                          one_minus_beta2, eps, l2, param_scale, grad_sign, step_size,
                          inv_bc2_sqrt, amsgrad, num_threads)


def adam_kernel(
    cnp.ndarray params not None,           # IN/OUT
    cnp.ndarray grads not None,            # IN (may be read-only)
    cnp.ndarray exp_avg not None,          # IN/OUT
    cnp.ndarray exp_avg_sq not None,       # IN/OUT
    cnp.ndarray max_exp_avg_sq not None,   # IN/OUT (length 0 unless amsgrad)
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

    The buffers must be 1-D, C-contiguous numpy arrays of one native dtype
    (float32 or float64) and one length (``max_exp_avg_sq``: any length,
    never touched, unless ``amsgrad``), all but ``grads`` writable; anything
    else raises TypeError (dtype) or ValueError before any buffer is written.
    """
    # Read the dtype and length once; the fused maths is then picked by a
    # compare instead of Cython's fused-def signature matching.
    cdef int typenum = cnp.PyArray_TYPE(params)
    cdef Py_ssize_t n = 0
    if ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_NDIM(params) == 1):
        n = cnp.PyArray_DIM(params, 0)
    else:
        typenum = -1  # fails the check below, which then explains why
    if not (_buffer_ok(params, typenum, n, _OUT_FLAGS, True)
            and _buffer_ok(grads, typenum, n, _IN_FLAGS, True)
            and _buffer_ok(exp_avg, typenum, n, _OUT_FLAGS, True)
            and _buffer_ok(exp_avg_sq, typenum, n, _OUT_FLAGS, True)
            # Unless amsgrad it is never touched, so its length is free.
            and _buffer_ok(max_exp_avg_sq, typenum, n, _OUT_FLAGS, amsgrad)):
        _bad_buffers("adam_kernel", _ADAM_NAMES,
                     (params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq),
                     _ADAM_WRITABLE, 5 if amsgrad else 4)
    if n == 0:
        return

    # The GIL is released even for small n: it costs ~tens of ns, and lets
    # other Python threads run while a large buffer is being updated.
    with nogil:
        _adam_call(typenum, cnp.PyArray_DATA(params), cnp.PyArray_DATA(grads),
                   cnp.PyArray_DATA(exp_avg), cnp.PyArray_DATA(exp_avg_sq),
                   # The length-0 buffer of the non-AMSGrad call must never be touched.
                   cnp.PyArray_DATA(max_exp_avg_sq) if amsgrad else NULL,
                   n, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2,
                   param_scale, grad_sign, step_size, inv_bc2_sqrt, amsgrad, num_threads)


# --- adam_step's fast path ---------------------------------------------------
# Why this exists: adamfast.adam_step validates in Python (adamfast._validate)
# and computes the step scalars in Python (adamfast.reference.step_scalars).
# That is ~25 small Python calls: ~4 us with hot caches, but ~50-60 us right
# after a backward pass, when every object and bytecode it touches is a cache
# miss -- as much as the kernel itself at 64K parameters.  adam_step_fast does
# the same for the common, trivially valid call in one C function.
#
# It is only an optimisation.  adamfast._validate stays the single authority
# on what is valid and on every error message: this function never raises for
# bad input, it *declines* (returns False, writes nothing) and adam_step then
# runs the full Python path, which raises or performs the step.  So it may
# decline valid input, but must never perform a step the Python path would
# reject.  It therefore accepts only exact types (an int subclass, a numpy
# scalar or an ndarray subclass declines) and checks every rule _validate
# checks, each in its strictest form; overlap is judged by the buffers' exact
# memory extents (see _disjoint).  tests/test_fast_path.py holds it to
# the Python path bit for bit, and checks that it declines each bad input.

cdef struct _Scalars:
    # adamfast.reference.step_scalars, in kernel-argument order.
    double beta1, one_minus_beta1, beta2, one_minus_beta2, eps
    double l2, param_scale, grad_sign, step_size, inv_bc2_sqrt


cdef inline bint _step_scalars(long step, double lr, double beta1, double beta2, double eps,
                               double weight_decay, bint decoupled, bint maximize,
                               _Scalars* out) noexcept nogil:
    # The same double operations, in the same order, as step_scalars does on
    # Python floats (the build has no FMA contraction or fast-math), so the
    # results are identical bit for bit.  ``beta ** step`` on a float and an
    # int is C pow() with the int rounded to double, as below.
    cdef double pow1 = pow(beta1, <double>step)
    cdef double pow2 = pow(beta2, <double>step)
    # Python raises OverflowError when pow() reports ERANGE for a nonzero
    # result; a libm may do that for a subnormal one.  Decline that sliver
    # (1 - subnormal is 1.0 anyway) rather than depend on the libm.
    if (pow1 != 0.0 and pow1 < DBL_MIN) or (pow2 != 0.0 and pow2 < DBL_MIN):
        return False
    cdef double bias_correction1 = 1.0 - pow1
    cdef double bias_correction2 = 1.0 - pow2
    # > 0 for beta in [0, 1); would be ZeroDivisionError/ValueError in Python.
    if not (bias_correction1 > 0.0 and bias_correction2 > 0.0):
        return False
    out.beta1 = beta1
    out.one_minus_beta1 = 1.0 - beta1
    out.beta2 = beta2
    out.one_minus_beta2 = 1.0 - beta2
    out.eps = eps
    out.l2 = 0.0 if decoupled else weight_decay
    out.param_scale = 1.0 - lr * weight_decay if decoupled else 1.0
    out.grad_sign = -1.0 if maximize else 1.0
    out.step_size = lr / bias_correction1
    out.inv_bc2_sqrt = 1.0 / sqrt(bias_correction2)
    return True


def _fast_scalars(long step, double lr, double beta1, double beta2, double eps,
                  double weight_decay, bint decoupled, bint maximize):
    """The scalars adam_step_fast computes, as a tuple like
    ``adamfast.reference.step_scalars`` returns (None if it would decline).
    For the tests only."""
    cdef _Scalars s
    if not _step_scalars(step, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, &s):
        return None
    return (s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.eps, s.l2,
            s.param_scale, s.grad_sign, s.step_size, s.inv_bc2_sqrt)


cdef enum:
    # What _validate._array requires of every buffer (grads need not be writable).
    _FAST_IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    _FAST_OUT_FLAGS = _FAST_IN_FLAGS | cnp.NPY_ARRAY_WRITEABLE


cdef inline char* _fast_array(object a, int typenum, Py_ssize_t size, int flags) noexcept:
    # The array's data pointer if it is a plain ndarray of exactly this dtype
    # (native byte order), total size and flags; NULL to decline.  Any shape:
    # a C-contiguous array is its elements in C order, as _validate's
    # reshape(-1) sees them.
    if not cnp.PyArray_CheckExact(a):
        return NULL
    cdef cnp.ndarray x = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(x) == typenum
            and cnp.PyArray_SIZE(x) == size
            and (cnp.PyArray_FLAGS(x) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(x)):
        # Never NULL for a valid array: numpy allocates >= 1 byte even for size 0.
        return <char*>cnp.PyArray_DATA(x)
    return NULL


cdef inline bint _disjoint(char* a, char* b, Py_ssize_t nbytes) noexcept:
    # [a, a+nbytes) and [b, b+nbytes) do not intersect.  For C-contiguous
    # arrays these are exactly their memory extents, which is what
    # np.may_share_memory compares; _validate rejects only buffers for which
    # it returns True, so disjoint extents never decline a valid call wrongly
    # nor accept an invalid one.
    return <uintptr_t>a + <uintptr_t>nbytes <= <uintptr_t>b or \
        <uintptr_t>b + <uintptr_t>nbytes <= <uintptr_t>a


cdef inline bint _fast_float(object x, double lo, double hi_excl, double* out) noexcept:
    # An exact Python float in [lo, hi_excl); NaN fails both comparisons.
    if not PyFloat_CheckExact(x):
        return False
    cdef double d = PyFloat_AS_DOUBLE(x)
    out[0] = d
    return lo <= d < hi_excl


def adam_step_fast(
    params,            # IN/OUT  theta
    grads,             # IN      g (may be read-only)
    exp_avg,           # IN/OUT  m
    exp_avg_sq,        # IN/OUT  v
    step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
    max_exp_avg_sq,    # IN/OUT  running max of v (only looked at if amsgrad is True)
    maximize,
    int num_threads,
):
    """``adamfast.adam_step``'s fast path: the same step, or a refusal.

    Takes adam_step's arguments as given.  Returns True after performing the
    step exactly as adam_step's full path would, or False without writing
    anything when the call is not in the simple class it handles: exact
    ndarrays of one native float dtype, C-contiguous, aligned, writable but
    for ``grads``, of one total size, pairwise non-overlapping; ``step`` an
    exact int >= 1 (fits a C long); ``lr``, ``beta1``, ``beta2``, ``eps``,
    ``weight_decay`` exact floats in their ranges; the flags exactly True or
    False; ``max_exp_avg_sq`` given iff ``amsgrad``.  It never raises for bad
    input: the caller runs the validating path on False.
    """
    cdef bint ams, dec, mx
    cdef long t
    cdef int overflow = 0
    cdef double lr_, b1, b2, eps_, wd
    cdef int typenum
    cdef Py_ssize_t n, nbytes
    cdef char* p
    cdef char* g
    cdef char* m
    cdef char* v
    cdef char* vmax = NULL
    cdef _Scalars s

    # Flags: the objects True/False only (numpy bools decline).
    if amsgrad is True:
        ams = True
    elif amsgrad is False:
        ams = False
    else:
        return False
    if decoupled is True:
        dec = True
    elif decoupled is False:
        dec = False
    else:
        return False
    if maximize is True:
        mx = True
    elif maximize is False:
        mx = False
    else:
        return False

    # step: an exact int (bool is a subclass, so it declines), 1 <= step <= LONG_MAX.
    if not PyLong_CheckExact(step):
        return False
    t = PyLong_AsLongAndOverflow(step, &overflow)
    if overflow or t < 1:
        return False

    # Hyperparameters: exact floats (an int or numpy scalar declines), ranges as _validate.
    if not (_fast_float(lr, 0.0, INFINITY, &lr_)
            and _fast_float(beta1, 0.0, 1.0, &b1)
            and _fast_float(beta2, 0.0, 1.0, &b2)
            and _fast_float(eps, 0.0, INFINITY, &eps_)
            and _fast_float(weight_decay, 0.0, INFINITY, &wd)):
        return False

    # Buffers: params fixes the dtype and the size.
    if not cnp.PyArray_CheckExact(params):
        return False
    typenum = cnp.PyArray_TYPE(<cnp.ndarray>params)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return False
    n = cnp.PyArray_SIZE(<cnp.ndarray>params)
    p = _fast_array(params, typenum, n, _FAST_OUT_FLAGS)
    g = _fast_array(grads, typenum, n, _FAST_IN_FLAGS)
    m = _fast_array(exp_avg, typenum, n, _FAST_OUT_FLAGS)
    v = _fast_array(exp_avg_sq, typenum, n, _FAST_OUT_FLAGS)
    if p == NULL or g == NULL or m == NULL or v == NULL:
        return False
    if ams:  # without amsgrad, max_exp_avg_sq is ignored whatever it is
        vmax = _fast_array(max_exp_avg_sq, typenum, n, _FAST_OUT_FLAGS)
        if vmax == NULL:
            return False

    # No two buffers may overlap (size 0: nothing to overlap).
    nbytes = n * cnp.PyArray_ITEMSIZE(<cnp.ndarray>params)
    if n > 0 and not (_disjoint(p, g, nbytes) and _disjoint(p, m, nbytes)
                      and _disjoint(p, v, nbytes) and _disjoint(g, m, nbytes)
                      and _disjoint(g, v, nbytes) and _disjoint(m, v, nbytes)):
        return False
    if ams and n > 0 and not (_disjoint(vmax, p, nbytes) and _disjoint(vmax, g, nbytes)
                              and _disjoint(vmax, m, nbytes) and _disjoint(vmax, v, nbytes)):
        return False

    if not _step_scalars(t, lr_, b1, b2, eps_, wd, dec, mx, &s):
        return False
    if n == 0:
        return True
    with nogil:
        _adam_call(typenum, p, g, m, v, vmax, n, s.beta1, s.one_minus_beta1, s.beta2,
                   s.one_minus_beta2, s.eps, s.l2, s.param_scale, s.grad_sign, s.step_size,
                   s.inv_bc2_sqrt, ams, num_threads)
    return True


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



cdef inline void _roofline_run(
    floating* p,           # IN/OUT
    const floating* g,     # IN
    floating* m,           # IN/OUT
    floating* v,           # IN/OUT
    Py_ssize_t n,
    int num_threads,
) noexcept nogil:
    cdef Py_ssize_t nchunks, c, start, length
    if n < _PARALLEL_MIN:
        _roofline_span(p, g, m, v, n)
        return
    nchunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(nchunks, schedule='static', num_threads=num_threads):
        start = c * _CHUNK
        length = min(<Py_ssize_t>_CHUNK, n - start)
        _roofline_span(p + start, g + start, m + start, v + start, length)


_ROOFLINE_NAMES = ("params", "grads", "exp_avg", "exp_avg_sq")
_ROOFLINE_WRITABLE = (True, False, True, True)


def roofline_kernel(
    cnp.ndarray params not None,           # IN/OUT
    cnp.ndarray grads not None,            # IN (may be read-only)
    cnp.ndarray exp_avg not None,          # IN/OUT
    cnp.ndarray exp_avg_sq not None,       # IN/OUT
    int num_threads,
):
    """Memory-traffic twin of ``adam_kernel`` for the benchmark's roofline.

    Reads the same four arrays and writes the same three, with the same
    chunking and threading, but does one add per stream; the gap between
    this and ``adam_kernel`` is the cost of the Adam arithmetic itself.
    Buffers are checked as in ``adam_kernel``.
    """
    cdef int typenum = cnp.PyArray_TYPE(params)
    cdef Py_ssize_t n = 0
    if ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_NDIM(params) == 1):
        n = cnp.PyArray_DIM(params, 0)
    else:
        typenum = -1
    if not (_buffer_ok(params, typenum, n, _OUT_FLAGS, True)
            and _buffer_ok(grads, typenum, n, _IN_FLAGS, True)
            and _buffer_ok(exp_avg, typenum, n, _OUT_FLAGS, True)
            and _buffer_ok(exp_avg_sq, typenum, n, _OUT_FLAGS, True)):
        _bad_buffers("roofline_kernel", _ROOFLINE_NAMES,
                     (params, grads, exp_avg, exp_avg_sq), _ROOFLINE_WRITABLE, 4)
    if n == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            _roofline_run[float](
                <float*>cnp.PyArray_DATA(params),
                <const float*>cnp.PyArray_DATA(grads),
                <float*>cnp.PyArray_DATA(exp_avg),
                <float*>cnp.PyArray_DATA(exp_avg_sq), n, num_threads)
    else:
        with nogil:
            _roofline_run[double](
                <double*>cnp.PyArray_DATA(params),
                <const double*>cnp.PyArray_DATA(grads),
                <double*>cnp.PyArray_DATA(exp_avg),
                <double*>cnp.PyArray_DATA(exp_avg_sq), n, num_threads)
