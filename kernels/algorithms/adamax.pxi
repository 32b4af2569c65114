# Adamax element function; reference twin: adamfast/algorithms/adamax.py
# (slots: 0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 eps, 7 lr/(1-b1^t)).

cdef inline void _e_adamax(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                           floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating m = k[3] * s0[i] + k[4] * gi
    cdef floating u = _nanmax(k[5] * s1[i], _fabs(gi) + k[6])
    s0[i] = m
    s1[i] = u
    p[i] = pi - k[7] * (m / u)
