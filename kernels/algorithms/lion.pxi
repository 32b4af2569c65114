# Lion element function; reference: adamfast/algorithms/lion.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 unused, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 lr, 8 weight_decay).

cdef inline void _e_lion(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    cdef floating c = k[LION_B1] * s[0][i] + k[LION_OMB1] * gi
    cdef floating sg = _sign(c)
    s[0][i] = k[LION_B2] * s[0][i] + k[LION_OMB2] * gi
    p[i] = pi - k[LION_LR] * (sg + k[LION_WD] * pi)
