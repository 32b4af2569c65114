# Adamax element function; reference: adamfast/algorithms/adamax.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 eps, 7 lr/(1-b1^t)).

cdef inline void _e_adamax(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating m = k[ADAMAX_B1] * s[0][i] + k[ADAMAX_OMB1] * gi
    cdef floating u = _nanmax(k[ADAMAX_B2] * s[1][i], _fabs(gi) + k[ADAMAX_EPS])
    s[0][i] = m
    s[1][i] = u
    p[i] = pi - k[ADAMAX_CLR] * (m / u)
