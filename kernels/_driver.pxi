# The one driver loop of the cython backend, fused over the kind tag and the
# dtype.  Work is split into chunks of _CHUNK elements that never straddle a
# parameter group; which thread runs a chunk never changes a result, because
# every update is element-wise and each chunk reads its group's scalar row.

cdef inline void _span(kind_t* tag, floating* p, const floating* g, floating* s0, floating* s1,
                       floating* s2, floating* ema, const double* row, Py_ssize_t lo,
                       Py_ssize_t hi) noexcept nogil:
    # Round the group's float64 row to the buffer dtype once, into a local
    # array: gcc vectorizes the loop only when the element function reads its
    # scalars from such a local copy.
    cdef floating k[_NSLOT]
    cdef Py_ssize_t i, j
    for j in range(_NSLOT):
        k[j] = <floating>row[j]
    if ema == NULL:
        for i in range(lo, hi):
            _elem(tag, i, p, g, s0, s1, s2, k)
    else:
        # The parameter EMA is one more stream of the same pass, for every
        # kind: ema = d*ema + (1 - d)*p_new (reference: adamfast.reference).
        for i in range(lo, hi):
            _elem(tag, i, p, g, s0, s1, s2, k)
            ema[i] = k[_EMA_D] * ema[i] + k[_EMA_OMD] * p[i]


cdef inline void _chunk(kind_t* tag, floating* p, const floating* g, floating* s0,
                        floating* s1, floating* s2, floating* ema, const double* table,
                        const Py_ssize_t* chunks, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t lo, hi
    if chunks == NULL:  # one group: fixed chunks of [0, n)
        lo = c * _CHUNK
        hi = min(lo + <Py_ssize_t>_CHUNK, n)
        _span(tag, p, g, s0, s1, s2, ema, table, lo, hi)
    else:  # rows of (group, lo, hi)
        _span(tag, p, g, s0, s1, s2, ema, table + chunks[3 * c] * _NSLOT, chunks[3 * c + 1],
              chunks[3 * c + 2])


cdef void _drive(kind_t* tag, floating* p, const floating* g, floating* s0, floating* s1,
                 floating* s2, floating* ema, const double* table, const Py_ssize_t* chunks,
                 Py_ssize_t nchunks, Py_ssize_t n, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if chunks == NULL:
        nchunks = (n + _CHUNK - 1) // _CHUNK
    if n < _PARALLEL_MIN or nthreads <= 1:
        # Below this, starting an OpenMP team costs more than the work.
        if chunks == NULL:
            _span(tag, p, g, s0, s1, s2, ema, table, 0, n)
        else:
            for c in range(nchunks):
                _chunk(tag, p, g, s0, s1, s2, ema, table, chunks, n, c)
        return
    for c in prange(nchunks, schedule='static', num_threads=nthreads):
        _chunk(tag, p, g, s0, s1, s2, ema, table, chunks, n, c)


# --- the norm pass of the guarded step ------------------------------------
# The sum of squares of a buffer, in an order defined once (and followed by
# adamfast.reference.sumsq_kernel): per chunk of _CHUNK elements from the
# buffer's start, element j of the chunk goes to lane j % _LANES, each lane
# accumulates in float64 in element order, and the lanes are added left to
# right.  Chunks are summed in chunk order by the Python layer.  The order
# never depends on the thread count, and the lanes give the vectorizer
# independent accumulators (no reassociation, so no fast-math needed).
# ``x - x`` is 0 for every finite x and NaN otherwise: its sum flags a
# non-finite element even where x*x would overflow.

cdef inline void _sumsq_span(const floating* g, Py_ssize_t lo, Py_ssize_t hi,
                             double* out) noexcept nogil:
    cdef double acc[_LANES]
    cdef double bad[_LANES]
    cdef double x
    cdef Py_ssize_t i, j, r, rows = (hi - lo) // _LANES
    for j in range(_LANES):
        acc[j] = 0.0
        bad[j] = 0.0
    for r in range(rows):
        for j in range(_LANES):
            x = <double>g[lo + r * _LANES + j]
            acc[j] = acc[j] + x * x
            bad[j] = bad[j] + (x - x)
    for j in range(hi - lo - rows * _LANES):
        x = <double>g[lo + rows * _LANES + j]
        acc[j] = acc[j] + x * x
        bad[j] = bad[j] + (x - x)
    out[0] = acc[0]
    out[1] = bad[0]
    for j in range(1, _LANES):
        out[0] = out[0] + acc[j]
        out[1] = out[1] + bad[j]


cdef void _sumsq(const floating* g, Py_ssize_t n, double* out, int nthreads) noexcept nogil:
    cdef Py_ssize_t c, nchunks = (n + _CHUNK - 1) // _CHUNK
    if n < _PARALLEL_MIN or nthreads <= 1:
        for c in range(nchunks):
            _sumsq_span(g, c * _CHUNK, min((c + 1) * <Py_ssize_t>_CHUNK, n), out + 2 * c)
        return
    for c in prange(nchunks, schedule='static', num_threads=nthreads):
        _sumsq_span(g, c * _CHUNK, min((c + 1) * <Py_ssize_t>_CHUNK, n), out + 2 * c)
