# Adagrad element function; reference: adamfast/algorithms/adagrad.py
# (slots, named by the reference module's SLOTS, by index:
#  0 gs, 1 ps, 2 l2, 3 eps, 4 lr/(1+(t-1)*lr_decay)).

cdef inline void _e_adagrad(Py_ssize_t i, floating* p, const floating* g, floating** s,
                 const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[GS]
    cdef floating pi = p[i] * k[PS]
    if k[L2] != 0:
        gi = gi + k[L2] * pi
    cdef floating acc = s[0][i] + gi * gi
    s[0][i] = acc
    p[i] = pi - k[ADAGRAD_CLR] * (gi / (_sqrt(acc) + k[ADAGRAD_EPS]))
