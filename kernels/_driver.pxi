# The one driver loop of the cython backend, fused over the kind tag and the
# dtype.  Work is split into chunks of _CHUNK elements that never straddle a
# parameter group; which thread runs a chunk never changes a result, because
# every update is element-wise and each chunk reads its group's scalar row.

cdef inline void _span(kind_t* tag, floating* p, const floating* g, floating* s0, floating* s1,
                       floating* s2, const double* row, Py_ssize_t lo,
                       Py_ssize_t hi) noexcept nogil:
    # Round the group's float64 row to the buffer dtype once, into a local
    # array: gcc vectorizes the loop only when the element function reads its
    # scalars from such a local copy.
    cdef floating k[_NSLOT]
    cdef Py_ssize_t i, j
    for j in range(_NSLOT):
        k[j] = <floating>row[j]
    for i in range(lo, hi):
        _elem(tag, i, p, g, s0, s1, s2, k)


cdef inline void _chunk(kind_t* tag, floating* p, const floating* g, floating* s0,
                        floating* s1, floating* s2, const double* table,
                        const Py_ssize_t* chunks, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t lo, hi
    if chunks == NULL:  # one group: fixed chunks of [0, n)
        lo = c * _CHUNK
        hi = min(lo + <Py_ssize_t>_CHUNK, n)
        _span(tag, p, g, s0, s1, s2, table, lo, hi)
    else:  # rows of (group, lo, hi)
        _span(tag, p, g, s0, s1, s2, table + chunks[3 * c] * _NSLOT, chunks[3 * c + 1],
              chunks[3 * c + 2])


cdef void _drive(kind_t* tag, floating* p, const floating* g, floating* s0, floating* s1,
                 floating* s2, const double* table, const Py_ssize_t* chunks,
                 Py_ssize_t nchunks, Py_ssize_t n, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if chunks == NULL:
        nchunks = (n + _CHUNK - 1) // _CHUNK
    if n < _PARALLEL_MIN or nthreads <= 1:
        # Below this, starting an OpenMP team costs more than the work.
        if chunks == NULL:
            _span(tag, p, g, s0, s1, s2, table, 0, n)
        else:
            for c in range(nchunks):
                _chunk(tag, p, g, s0, s1, s2, table, chunks, n, c)
        return
    for c in prange(nchunks, schedule='static', num_threads=nthreads):
        _chunk(tag, p, g, s0, s1, s2, table, chunks, n, c)
