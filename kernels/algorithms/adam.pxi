# Adam / AdamW element functions; reference twin: adamfast/algorithms/adam.py
# (slots: 0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 step_size, 8 a, 9 r,
#  10 b, 11 eps, 12 nesterov (unused here), 13 c1, 14 c2, 15 amsgrad).
# The numerator is always c1*m + c2*g (c1 = 1, c2 = 0 without Nesterov): a
# select there, on top of AMSGrad's, stopped gcc vectorizing the loop.

cdef inline void _e_adam(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                         floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating m = k[3] * s0[i] + k[4] * gi
    cdef floating v = k[5] * s1[i] + k[6] * (gi * gi)
    cdef floating num = k[13] * m + k[14] * gi
    s0[i] = m
    s1[i] = v
    p[i] = pi - k[7] * (num / (_sqrt(v * k[8] + k[9]) * k[10] + k[11]))


cdef inline void _e_adam_amsgrad(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                                 floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating m = k[3] * s0[i] + k[4] * gi
    cdef floating v = k[5] * s1[i] + k[6] * (gi * gi)
    cdef floating vm = _nanmax(s2[i], v)
    cdef floating vv = vm if k[15] != 0 else v
    cdef floating num = k[13] * m + k[14] * gi
    s0[i] = m
    s1[i] = v
    s2[i] = vm
    p[i] = pi - k[7] * (num / (_sqrt(vv * k[8] + k[9]) * k[10] + k[11]))
