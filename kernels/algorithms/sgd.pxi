# SGD element functions; reference: adamfast/algorithms/sgd.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 lr, 4 momentum, 5 1-dampening, 6 nesterov?,
#  7 first momentum step?, 8 momentum != 0?).

cdef inline void _e_sgd(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    p[i] = pi - k[SGD_LR] * gi


cdef inline void _e_sgd_momentum(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating buf = gi if k[SGD_FIRST] != 0 else k[SGD_MOM] * s[0][i] + k[SGD_OMD] * gi
    cdef floating d = (gi + k[SGD_MOM] * buf) if k[SGD_NES] != 0 else buf
    cdef bint use = k[SGD_USEMOM] != 0
    s[0][i] = buf if use else s[0][i]
    p[i] = pi - k[SGD_LR] * (d if use else gi)
