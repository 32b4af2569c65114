# SGD element functions; reference twin: adamfast/algorithms/sgd.py
# (slots: 0 gs, 1 ps, 2 l2, 3 lr, 4 momentum, 5 1-dampening, 6 nesterov?,
#  7 first momentum step?, 8 momentum != 0?).

cdef inline void _e_sgd(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                        floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    p[i] = pi - k[3] * gi


cdef inline void _e_sgd_momentum(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                                 floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating buf = gi if k[7] != 0 else k[4] * s0[i] + k[5] * gi
    cdef floating d = (gi + k[4] * buf) if k[6] != 0 else buf
    cdef bint use = k[8] != 0
    s0[i] = buf if use else s0[i]
    p[i] = pi - k[3] * (d if use else gi)
