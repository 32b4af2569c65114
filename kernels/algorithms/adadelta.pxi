# Adadelta element function; reference twin: adamfast/algorithms/adadelta.py
# (slots: 0 gs, 1 ps, 2 l2, 3 rho, 4 1-rho, 5 eps, 6 lr).

cdef inline void _e_adadelta(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                             floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating sq = k[3] * s0[i] + k[4] * (gi * gi)
    cdef floating delta = _sqrt(s1[i] + k[5]) / _sqrt(sq + k[5]) * gi
    cdef floating acc = k[3] * s1[i] + k[4] * (delta * delta)
    s0[i] = sq
    s1[i] = acc
    p[i] = pi - k[6] * delta
