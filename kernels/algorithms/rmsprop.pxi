# RMSprop element functions; reference twin: adamfast/algorithms/rmsprop.py
# (slots: 0 gs, 1 ps, 2 l2, 3 alpha, 4 1-alpha, 5 eps, 6 lr, 7 momentum,
#  8 centered?, 9 momentum > 0?).  State: square_avg [, grad_avg] [, momentum_buffer].

cdef inline floating _rms_grad(Py_ssize_t i, floating* p, const floating* g, const floating* k,
                               floating* pi) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    pi[0] = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi[0]
    return gi


cdef inline void _e_rmsprop(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                            floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[3] * s0[i] + k[4] * (gi * gi)
    cdef floating avg = _sqrt(sq) + k[5]
    s0[i] = sq
    p[i] = pi - k[6] * (gi / avg)


cdef inline void _e_rmsprop_centered(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                                     floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[3] * s0[i] + k[4] * (gi * gi)
    cdef floating ga = k[3] * s1[i] + k[4] * gi
    cdef floating avg = (_sqrt(sq - ga * ga) if k[8] != 0 else _sqrt(sq)) + k[5]
    s0[i] = sq
    s1[i] = ga
    p[i] = pi - k[6] * (gi / avg)


cdef inline void _e_rmsprop_momentum(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                                     floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[3] * s0[i] + k[4] * (gi * gi)
    cdef floating q = gi / (_sqrt(sq) + k[5])
    cdef floating buf = k[7] * s1[i] + q
    cdef bint use = k[9] != 0
    s0[i] = sq
    s1[i] = buf if use else s1[i]
    p[i] = pi - k[6] * (buf if use else q)


cdef inline void _e_rmsprop_centered_momentum(Py_ssize_t i, floating* p, const floating* g,
                                              floating* s0, floating* s1, floating* s2,
                                              const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[3] * s0[i] + k[4] * (gi * gi)
    cdef floating ga = k[3] * s1[i] + k[4] * gi
    cdef floating avg = (_sqrt(sq - ga * ga) if k[8] != 0 else _sqrt(sq)) + k[5]
    cdef floating q = gi / avg
    cdef floating buf = k[7] * s2[i] + q
    cdef bint use = k[9] != 0
    s0[i] = sq
    s1[i] = ga
    s2[i] = buf if use else s2[i]
    p[i] = pi - k[6] * (buf if use else q)
