# NAdam element function; reference twin: adamfast/algorithms/nadam.py
# (slots: 0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 1/(1-b2^t), 8 eps,
#  9 coefficient of g, 10 coefficient of m).

cdef inline void _e_nadam(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                          floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating m = k[3] * s0[i] + k[4] * gi
    cdef floating v = k[5] * s1[i] + k[6] * (gi * gi)
    cdef floating denom = _sqrt(v * k[7]) + k[8]
    s0[i] = m
    s1[i] = v
    p[i] = pi - (k[9] * gi + k[10] * m) / denom
