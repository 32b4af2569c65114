# RAdam element function; reference: adamfast/algorithms/radam.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 eps, 8 rectified?,
#  9 rectified step size, 10 plain step size).

cdef inline void _e_radam(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating m = k[RADAM_B1] * s[0][i] + k[RADAM_OMB1] * gi
    cdef floating v = k[RADAM_B2] * s[1][i] + k[RADAM_OMB2] * (gi * gi)
    cdef floating rectified = k[RADAM_KA] * (m / (_sqrt(v) + k[RADAM_EPS]))
    cdef floating plain = k[RADAM_KB] * m
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - (rectified if k[RADAM_RECT] != 0 else plain)
