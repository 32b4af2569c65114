# Bandwidth-only kinds for the benchmark's roofline: read params, grads and N
# state buffers, write params and the N state buffers, one add each.  They
# run through the same driver as the algorithms, so they pay the same
# chunking and threading costs; the gap between an algorithm and its
# roofline is the cost of its arithmetic.

cdef inline void _e_roofline0(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                              floating* s1, floating* s2, const floating* k) noexcept nogil:
    p[i] = p[i] + g[i]


cdef inline void _e_roofline1(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                              floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s0[i] = s0[i] + gi


cdef inline void _e_roofline2(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                              floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s0[i] = s0[i] + gi
    s1[i] = s1[i] + gi


cdef inline void _e_roofline3(Py_ssize_t i, floating* p, const floating* g, floating* s0,
                              floating* s1, floating* s2, const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s0[i] = s0[i] + gi
    s1[i] = s1[i] + gi
    s2[i] = s2[i] + gi
