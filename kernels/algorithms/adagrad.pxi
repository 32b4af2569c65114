# Adagrad element function; reference twin: adamfast/algorithms/adagrad.py
# (slots: 0 gs, 1 ps, 2 l2, 3 eps, 4 lr/(1+(t-1)*lr_decay)).

cdef inline void _e_adagrad(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                            floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i] * k[0]
    cdef floating pi = p[i] * k[1]
    if k[2] != 0:
        gi = gi + k[2] * pi
    cdef floating acc = s0[i] + gi * gi
    s0[i] = acc
    p[i] = pi - k[4] * (gi / (_sqrt(acc) + k[3]))
