# NAdam element function; reference: adamfast/algorithms/nadam.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 1/(1-b2^t), 8 eps,
#  9 coefficient of g, 10 coefficient of m).

cdef inline void _e_nadam(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating m = k[NADAM_B1] * s[0][i] + k[NADAM_OMB1] * gi
    cdef floating v = k[NADAM_B2] * s[1][i] + k[NADAM_OMB2] * (gi * gi)
    cdef floating denom = _sqrt(v * k[NADAM_IBC2]) + k[NADAM_EPS]
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - (k[NADAM_CG] * gi + k[NADAM_CM] * m) / denom
