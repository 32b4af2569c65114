# Adadelta element function; reference: adamfast/algorithms/adadelta.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 rho, 4 1-rho, 5 eps, 6 lr).

cdef inline void _e_adadelta(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating sq = k[ADADELTA_RHO] * s[0][i] + k[ADADELTA_OMR] * (gi * gi)
    cdef floating delta = _sqrt(s[1][i] + k[ADADELTA_EPS]) / _sqrt(sq + k[ADADELTA_EPS]) * gi
    cdef floating acc = k[ADADELTA_RHO] * s[1][i] + k[ADADELTA_OMR] * (delta * delta)
    s[0][i] = sq
    s[1][i] = acc
    p[i] = pi - k[ADADELTA_LR] * delta
