# Lamb element functions; reference: adamfast/algorithms/lamb.py (state:
# exp_avg, exp_avg_sq; slots LAMB_<NAME>).  Lamb's step is two passes
# (adamfast/_reduce.py): _r_lamb is pass 1 (moments_lamb: writes the state and
# stores theta and u at q[0][j], q[1][j] for the reduce driver of _reduce.pxi,
# which sums their squares per chunk), _e_lamb pass 2 (update_lamb, the kind's
# family_kernel element: recomputes u from the new state and writes theta,
# scaled by the per-tensor trust ratio in slot LAMB_TRUST).  Both compute u
# alike, so pass 2 uses the very values pass 1 summed.

cdef inline floating _lamb_u(floating th, floating m, floating v,
                             const floating* k) noexcept nogil:
    cdef floating u = (m * k[LAMB_IBC1]) / (_sqrt(v) * k[LAMB_IBC2S] + k[LAMB_EPS])
    # Both sides computed, one picked: the select stays branch-free.
    cdef floating l2 = u + k[LAMB_WD] * th
    return l2 if k[LAMB_WD] != 0 else u


cdef inline void _r_lamb(Py_ssize_t i, floating* p, const floating* g, floating** s,
                         const floating* k, floating** q, Py_ssize_t j) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating m = k[LAMB_B1] * s[0][i] + k[LAMB_B3] * gi
    cdef floating v = k[LAMB_B2] * s[1][i] + k[LAMB_OMB2] * (gi * gi)
    cdef floating th = p[i] * k[PS]
    s[0][i] = m
    s[1][i] = v
    q[0][j] = th
    q[1][j] = _lamb_u(th, m, v, k)


cdef inline void _e_lamb(Py_ssize_t i, floating* p, const floating* g, floating** s,
                         const floating* k) noexcept nogil:
    cdef floating th = p[i] * k[PS]
    cdef floating u = _lamb_u(th, s[0][i], s[1][i], k)
    p[i] = th - k[LAMB_LR] * (u * k[LAMB_TRUST])
