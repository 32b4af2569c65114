# RMSprop element functions; reference: adamfast/algorithms/rmsprop.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 alpha, 4 1-alpha, 5 eps, 6 lr, 7 momentum,
#  8 centered?, 9 momentum > 0?).  State: square_avg [, grad_avg] [, momentum_buffer].
# A group with centered or momentum off stores that buffer back unchanged
# (torch.optim.RMSprop leaves it alone), a blend that keeps the loop vectorized.

cdef inline floating _rms_grad(Py_ssize_t i, floating* p, const floating* g, const floating* k,
                               floating* pi) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    pi[0] = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi[0]
    return gi


cdef inline void _e_rmsprop(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[RMSPROP_ALPHA] * s[0][i] + k[RMSPROP_OMA] * (gi * gi)
    cdef floating avg = _sqrt(sq) + k[RMSPROP_EPS]
    s[0][i] = sq
    p[i] = pi - k[RMSPROP_LR] * (gi / avg)


cdef inline void _e_rmsprop_centered(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[RMSPROP_ALPHA] * s[0][i] + k[RMSPROP_OMA] * (gi * gi)
    cdef floating old = s[1][i]
    cdef floating ga = k[RMSPROP_ALPHA] * old + k[RMSPROP_OMA] * gi
    cdef bint cen = k[RMSPROP_CEN] != 0
    cdef floating avg = (_sqrt(sq - ga * ga) if cen else _sqrt(sq)) + k[RMSPROP_EPS]
    s[0][i] = sq
    s[1][i] = ga if cen else old
    p[i] = pi - k[RMSPROP_LR] * (gi / avg)


cdef inline void _e_rmsprop_momentum(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[RMSPROP_ALPHA] * s[0][i] + k[RMSPROP_OMA] * (gi * gi)
    cdef floating q = gi / (_sqrt(sq) + k[RMSPROP_EPS])
    cdef floating buf = k[RMSPROP_MOM] * s[1][i] + q
    cdef bint use = k[RMSPROP_USEMOM] != 0
    s[0][i] = sq
    s[1][i] = buf if use else s[1][i]
    p[i] = pi - k[RMSPROP_LR] * (buf if use else q)


cdef inline void _e_rmsprop_centered_momentum(Py_ssize_t i, floating* p, const floating* g,
                                              floating** s, const floating* k) noexcept nogil:
    cdef floating pi
    cdef floating gi = _rms_grad(i, p, g, k, &pi)
    cdef floating sq = k[RMSPROP_ALPHA] * s[0][i] + k[RMSPROP_OMA] * (gi * gi)
    cdef floating old_ga = s[1][i]
    cdef floating ga = k[RMSPROP_ALPHA] * old_ga + k[RMSPROP_OMA] * gi
    cdef bint cen = k[RMSPROP_CEN] != 0
    cdef floating avg = (_sqrt(sq - ga * ga) if cen else _sqrt(sq)) + k[RMSPROP_EPS]
    cdef floating q = gi / avg
    cdef floating buf = k[RMSPROP_MOM] * s[2][i] + q
    cdef bint use = k[RMSPROP_USEMOM] != 0
    s[0][i] = sq
    s[1][i] = ga if cen else old_ga
    s[2][i] = buf if use else s[2][i]
    p[i] = pi - k[RMSPROP_LR] * (buf if use else q)
