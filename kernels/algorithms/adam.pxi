# Adam / AdamW element functions; reference: adamfast/algorithms/adam.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 b1, 4 1-b1, 5 b2, 6 1-b2, 7 step_size, 8 a, 9 r,
#  10 b, 11 eps, 12 nesterov (unused here), 13 c1, 14 c2, 15 amsgrad).
# The numerator is always c1*m + c2*g (c1 = 1, c2 = 0 without Nesterov): a
# select there, on top of AMSGrad's, stopped gcc vectorizing the loop.

cdef inline void _e_adam(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating m = k[ADAM_B1] * s[0][i] + k[ADAM_OMB1] * gi
    cdef floating v = k[ADAM_B2] * s[1][i] + k[ADAM_OMB2] * (gi * gi)
    cdef floating num = k[ADAM_C1] * m + k[ADAM_C2] * gi
    s[0][i] = m
    s[1][i] = v
    p[i] = pi - k[ADAM_STEP] * (num / (_sqrt(v * k[ADAM_A] + k[ADAM_R]) * k[ADAM_B] + k[ADAM_EPS]))


cdef inline void _e_adam_amsgrad(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating m = k[ADAM_B1] * s[0][i] + k[ADAM_OMB1] * gi
    cdef floating v = k[ADAM_B2] * s[1][i] + k[ADAM_OMB2] * (gi * gi)
    cdef floating old = s[2][i]
    cdef floating vm = _nanmax(old, v)
    cdef bint use = k[ADAM_AMS] != 0
    cdef floating vv = vm if use else v
    cdef floating num = k[ADAM_C1] * m + k[ADAM_C2] * gi
    s[0][i] = m
    s[1][i] = v
    # A group with amsgrad off stores its running max back unchanged (torch.optim.Adam
    # leaves it alone), a blend that keeps the loop vectorized.
    s[2][i] = vm if use else old
    p[i] = pi - k[ADAM_STEP] * (num / (_sqrt(vv * k[ADAM_A] + k[ADAM_R]) * k[ADAM_B] + k[ADAM_EPS]))
