# Bandwidth-only kinds for the benchmark's roofline: read params, grads and N
# state buffers, write params and the N state buffers, one add each.  They
# run through the same driver as the algorithms, so they pay the same
# chunking and threading costs; the gap between an algorithm and its
# roofline is the cost of its arithmetic.


cdef inline void _e_roofline0(Py_ssize_t i, floating* p, const floating* g, floating** s,
                              const floating* k) noexcept nogil:
    p[i] = p[i] + g[i]


cdef inline void _e_roofline1(Py_ssize_t i, floating* p, const floating* g, floating** s,
                              const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi


cdef inline void _e_roofline2(Py_ssize_t i, floating* p, const floating* g, floating** s,
                              const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi


cdef inline void _e_roofline3(Py_ssize_t i, floating* p, const floating* g, floating** s,
                              const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi
    s[2][i] = s[2][i] + gi


cdef inline void _e_roofline4(Py_ssize_t i, floating* p, const floating* g, floating** s,
                              const floating* k) noexcept nogil:
    cdef floating gi = g[i]
    p[i] = p[i] + gi
    s[0][i] = s[0][i] + gi
    s[1][i] = s[1][i] + gi
    s[2][i] = s[2][i] + gi
    s[3][i] = s[3][i] + gi
