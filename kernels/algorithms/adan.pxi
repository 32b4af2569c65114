# Adan element function; reference: adamfast/algorithms/adan.py
# (state: exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad; slots named by the
# reference module's SLOTS, here ADAN_<NAME>).  Both candidates for the
# previous gradient are loaded and one is picked, so the step-1 select stays
# branch-free and the loop vectorizes.

cdef inline void _e_adan(Py_ssize_t i, floating* p, const floating* g, floating** s,
                         const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating neg = 0 - gi
    cdef floating old = s[3][i]
    cdef floating u = gi + (neg if k[ADAN_FIRST] != 0 else old)
    cdef floating m = k[ADAN_B1] * s[0][i] + k[ADAN_OMB1] * gi
    cdef floating d = k[ADAN_B2] * s[2][i] + k[ADAN_OMB2] * u
    cdef floating w = k[ADAN_B2] * u + gi
    cdef floating n = k[ADAN_B3] * s[1][i] + k[ADAN_OMB3] * (w * w)
    cdef floating denom = _sqrt(n) / k[ADAN_BC3S] + k[ADAN_EPS]
    s[0][i] = m
    s[1][i] = n
    s[2][i] = d
    s[3][i] = neg
    p[i] = (pi - k[ADAN_STEP] * (m / denom) - k[ADAN_STEPD] * (d / denom)) / k[ADAN_DIV]
