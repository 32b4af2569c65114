# RAdam element function; reference twin: adamfast/algorithms/radam.py
# (slots: 0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 eps, 8 rectified?,
#  9 rectified step size, 10 plain step size).

cdef inline void _e_radam(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                          floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating m = k[3] * s0[i] + k[4] * gi
    cdef floating v = k[5] * s1[i] + k[6] * (gi * gi)
    cdef floating rectified = k[9] * (m / (_sqrt(v) + k[7]))
    cdef floating plain = k[10] * m
    s0[i] = m
    s1[i] = v
    p[i] = pi - (rectified if k[8] != 0 else plain)
