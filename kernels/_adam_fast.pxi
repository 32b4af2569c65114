# adam_step's fast path, included by _entries.pxi after the generic fast path
# (step_fast), whose buffer checks it shares: the C version of
# adamfast.algorithms.adam.scalars and the entries adam_step_fast and
# adam_step_call.


cdef inline bint _fast_float(object x, double lo, double hi_excl, double* out) noexcept:
    # An exact Python float in [lo, hi_excl); NaN fails both comparisons.
    if not PyFloat_CheckExact(x):
        return False
    cdef double d = PyFloat_AS_DOUBLE(x)
    out[0] = d
    return lo <= d < hi_excl


cdef inline int _fast_flag(object x) noexcept:
    # 1 for the object True, 0 for False, -1 (decline) for anything else.
    if x is True:
        return 1
    if x is False:
        return 0
    return -1


cdef inline bint _adam_scalars(long step, double lr, double beta1, double beta2, double eps,
                               double weight_decay, bint decoupled, bint amsgrad, bint maximize,
                               bint eps_hat, double eps_root, bint bias_correction,
                               bint nesterov, double* out) noexcept nogil:
    # The same double operations, in the same order, as the Python scalars()
    # does on Python floats (the build has no FMA contraction or fast-math),
    # so the results are identical bit for bit.  ``beta ** step`` on a float
    # and an int is C pow() with the int rounded to double, as below.
    cdef double pow1 = 0.0, pow2 = 0.0, pow1n = 0.0
    cdef double bc1 = 1.0, bc2 = 1.0, bc1n = 1.0, base, a, b, c1 = 1.0, c2 = 0.0, st, nest = 0.0
    cdef int j
    if bias_correction:
        pow1 = pow(beta1, <double>step)
        pow2 = pow(beta2, <double>step)
        # Python raises OverflowError when pow() reports ERANGE for a nonzero
        # result; a libm may do that for a subnormal one.  Decline that sliver
        # rather than depend on the libm.
        if (pow1 != 0.0 and pow1 < DBL_MIN) or (pow2 != 0.0 and pow2 < DBL_MIN):
            return False
        bc1 = 1.0 - pow1
        bc2 = 1.0 - pow2
        # > 0 for beta in [0, 1); would be ZeroDivisionError in Python.
        if not (bc1 > 0.0 and bc2 > 0.0):
            return False
    if eps_hat:
        base = lr * sqrt(bc2)
        a = 1.0
        b = 1.0
    elif eps_root != 0.0:
        base = lr
        a = 1.0 / bc2
        b = 1.0
    else:
        base = lr
        a = 1.0
        b = 1.0 / sqrt(bc2)
    if nesterov:
        if bias_correction:
            # (step + 1 as unsigned: no overflow at LONG_MAX, and rounded to double
            # once, as Python converts the int t + 1.)
            pow1n = pow(beta1, <double>(<unsigned long>step + 1))
            if pow1n != 0.0 and pow1n < DBL_MIN:
                return False
            bc1n = 1.0 - pow1n
            if not bc1n > 0.0:
                return False
        nest = 1.0
        c1 = beta1 / bc1n
        c2 = (1.0 - beta1) / bc1
        st = base
    else:
        st = base / bc1
    for j in range(_NSLOT):
        out[j] = 0.0
    out[GS] = -1.0 if maximize else 1.0
    out[PS] = 1.0 - lr * weight_decay if decoupled else 1.0
    out[L2] = 0.0 if decoupled else weight_decay
    out[ADAM_B1] = beta1
    out[ADAM_OMB1] = 1.0 - beta1
    out[ADAM_B2] = beta2
    out[ADAM_OMB2] = 1.0 - beta2
    out[ADAM_STEP] = st
    out[ADAM_A] = a
    out[ADAM_R] = eps_root
    out[ADAM_B] = b
    out[ADAM_EPS] = eps
    out[ADAM_NEST] = nest
    out[ADAM_C1] = c1
    out[ADAM_C2] = c2
    out[ADAM_AMS] = 1.0 if amsgrad else 0.0
    return True


def _fast_scalars(long step, double lr, double beta1, double beta2, double eps,
                  double weight_decay, bint decoupled, bint maximize, bint amsgrad=False,
                  bint eps_hat=False, double eps_root=0.0, bint bias_correction=True,
                  bint nesterov=False):
    """The row adam_step_fast computes, as a tuple like
    ``adamfast.algorithms.adam.scalars`` returns (None if it would decline).
    For the tests only."""
    cdef double s[_NSLOT]
    if not _adam_scalars(step, lr, beta1, beta2, eps, weight_decay,
                                               decoupled, amsgrad, maximize, eps_hat, eps_root,
                                               bias_correction, nesterov, s):
        return None
    return tuple(s[j] for j in range(_NSLOT))


cdef int _ADAM = -1
cdef int _ADAM_AMSGRAD = -1
_ADAM = KINDS.index("adam")
_ADAM_AMSGRAD = KINDS.index("adam_amsgrad")


# adam_step_fast's arguments other than the buffers, step and num_threads, as C values.
cdef struct _AdamArgs:
    int ams, dec, mx, hat, bc, nes
    double lr, b1, b2, eps, wd, root


cdef bint _adam_args(_AdamArgs* h, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                     maximize, eps_hat, eps_root, bias_correction, nesterov) noexcept:
    # adam_step_fast's check of these arguments, filling h: False to decline.
    h.ams = _fast_flag(amsgrad)
    h.dec = _fast_flag(decoupled)
    h.mx = _fast_flag(maximize)
    h.hat = _fast_flag(eps_hat)
    h.bc = _fast_flag(bias_correction)
    h.nes = _fast_flag(nesterov)
    if h.ams < 0 or h.dec < 0 or h.mx < 0 or h.hat < 0 or h.bc < 0 or h.nes < 0:
        return False
    return (_fast_float(lr, 0.0, INFINITY, &h.lr)
            and _fast_float(beta1, 0.0, 1.0, &h.b1)
            and _fast_float(beta2, 0.0, 1.0, &h.b2)
            and _fast_float(eps, 0.0, INFINITY, &h.eps)
            and _fast_float(weight_decay, 0.0, INFINITY, &h.wd)
            and _fast_float(eps_root, 0.0, INFINITY, &h.root))


cdef object _adam_run(_AdamArgs* h, params, grads, states, step, int num_threads):
    # The rest of adam_step_fast once its other arguments passed _adam_args: the
    # step, the buffers, the scalars, then the kernel.  True after the step, False
    # (nothing written) to decline.
    cdef long t
    cdef int overflow = 0
    cdef int typenum
    cdef Py_ssize_t n
    cdef char* ptrs[3 + _MAXSTATE]
    cdef double row[_NSLOT]
    # step: an exact int (bool is a subclass, so it declines), 1 <= step < LONG_MAX.
    if not PyLong_CheckExact(step):
        return False
    t = PyLong_AsLongAndOverflow(step, &overflow)
    if overflow or t < 1:
        return False
    if not _fast_buffers(params, grads, states, 3 if h.ams else 2, &typenum, &n, ptrs):
        return False
    if not _adam_scalars(t, h.lr, h.b1, h.b2, h.eps, h.wd, h.dec, h.ams, h.mx, h.hat, h.root,
                         h.bc, h.nes, row):
        return False
    if n == 0:
        return True
    with nogil:
        _step(_ADAM_AMSGRAD if h.ams else _ADAM, typenum, ptrs[0], ptrs[1], <void**>(ptrs + 2),
              NULL, row, NULL, 0, n, num_threads)
    return True


def adam_step_fast(
    params,            # IN/OUT  theta
    grads,             # IN      g (may be read-only)
    exp_avg,           # IN/OUT  m
    exp_avg_sq,        # IN/OUT  v
    step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
    max_exp_avg_sq,    # IN/OUT  running max of v (only looked at if amsgrad is True)
    maximize,
    int num_threads,
    eps_hat=False, eps_root=0.0, bias_correction=True, nesterov=False,
):
    """``adamfast.adam_step``'s fast path: the same step, or a refusal.

    Takes adam_step's arguments as given.  Returns True after performing the
    step exactly as adam_step's full path would, or False without writing
    anything when the call is not in the simple class it handles: the
    buffers as for ``step_fast``; ``step`` an exact int >= 1 (fits a C long);
    ``lr``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``, ``eps_root``
    exact floats in their ranges; the flags exactly True or False;
    ``max_exp_avg_sq`` given iff ``amsgrad``.  It never raises for bad input.
    """
    cdef _AdamArgs h
    if not _adam_args(&h, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                      eps_hat, eps_root, bias_correction, nesterov):
        return False
    states = (exp_avg, exp_avg_sq, max_exp_avg_sq) if h.ams else (exp_avg, exp_avg_sq)
    return _adam_run(&h, params, grads, states, step, num_threads)


cdef class _AdamCall:
    # adam_step_call's product: the arguments checked once, the rest at each call.
    cdef _AdamArgs h
    cdef bint ok
    cdef object params, grads, states

    def run(self, step, int num_threads):
        """``adam_step_fast`` with this call's arguments, ``step`` and ``num_threads``."""
        if not self.ok:
            return False
        return _adam_run(&self.h, self.params, self.grads, self.states, step, num_threads)


def adam_step_call(params, grads, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
                   decoupled, amsgrad, max_exp_avg_sq, maximize, eps_hat=False, eps_root=0.0,
                   bias_correction=True, nesterov=False):
    """``adam_step_fast`` with every argument but ``step`` and ``num_threads`` given
    once: returns ``f(step, num_threads)``, which does and returns exactly what
    ``adam_step_fast`` does and returns with these arguments and those two.

    For a caller that steps the same buffers with the same hyperparameters many
    times (adamfast.Adam): the hyperparameters are checked here, once (a value
    that would make adam_step_fast decline makes every call decline); the step
    and the buffers at each call, as adam_step_fast checks them.  It keeps
    references to the buffers, and no state of the step.
    """
    cdef _AdamCall c = _AdamCall()
    c.ok = _adam_args(&c.h, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                      eps_hat, eps_root, bias_correction, nesterov)
    c.params, c.grads = params, grads
    c.states = (exp_avg, exp_avg_sq, max_exp_avg_sq) if c.ok and c.h.ams else (exp_avg,
                                                                               exp_avg_sq)
    return c.run
