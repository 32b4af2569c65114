# Lion element function; reference twin: adamfast/algorithms/lion.py
# (slots: 0 gs, 1 ps, 2 unused, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 lr, 8 weight_decay).

cdef inline void _e_lion(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                         floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    cdef floating c = k[3] * s0[i] + k[4] * gi
    cdef floating sg = _sign(c)
    s0[i] = k[5] * s0[i] + k[6] * gi
    p[i] = pi - k[7] * (sg + k[8] * pi)
