# The one driver loop of the cython backend, fused over the kind tag and the
# dtype.  Work is split into chunks of _CHUNK elements that never straddle a
# parameter group; which thread runs a chunk never changes a result, because
# every update is element-wise and each chunk reads its group's scalar row.

cdef enum:
    # The vector loop starts at a cache line of params: see _line_start.
    _LINE = 64


cdef extern from *:
    """
    /* The line loop (_span): the AVX2 build, when setup.py gave it the
       inlining limits that let gcc vectorize _elem_line (it then defines
       ADAMFAST_LINE_LOOP), walks a span's aligned part one cache line of
       every stream at a time.  A 256-bit vector is half a line, and gcc emits
       one element-iteration's accesses in order (g, p, the states, then the
       stores), so a plain loop visits each stream's line twice, the other
       streams in between; with one line's elements written out, gcc's SLP
       emits each stream's two vectors back to back.  On a NumPy user's four
       arrays (one page offset shared by all) one thread's step went from
       1.6x to 1.24x of its time on line-staggered buffers.  A 512-bit vector
       is a whole line already (the AVX-512 build); without the limits gcc
       leaves _elem_line scalar, so the other builds keep the plain loop. */
    #if defined(ADAMFAST_LINE_LOOP) && defined(__AVX2__) && !defined(__AVX512F__)
    #  define AF_LINE_LOOP 1
    #else
    #  define AF_LINE_LOOP 0
    #endif
    """
    const bint AF_LINE_LOOP

cdef extern from *:
    """
    /* Ask for the lines of every stream a block of a pass reads: NBYTES from
       byte OFF of params, of grads when READS_G, of the NSTATE state buffers
       and of EMA when not NULL, each AF_AHEAD bytes (_spec's PREFETCH_AHEAD)
       on.  With the square roots and divisions in flight, the out-of-order
       core alone keeps too few misses outstanding to saturate memory.  A read
       request serves the streams written too (their lines are read first;
       prefetchw measured the same).  A prefetch is a hint: past an array's
       end it does not fault, and no value changes.  A macro, not a function:
       gcc judges a function of prefetches alone free of side effects and
       deletes its calls. */
    #if defined(__GNUC__) || defined(__clang__)
    #define AF_PREFETCH_AT(X, OFF) __builtin_prefetch((const char *)(X) + (OFF) + AF_AHEAD)
    #else
    #define AF_PREFETCH_AT(X, OFF) ((void)0)
    #endif
    #define AF_AHEAD_BLOCK(P, G, S, NSTATE, EMA, OFF, NBYTES, READS_G)          \
        do {                                                                    \
            Py_ssize_t af_l_, af_j_;                                            \
            for (af_l_ = (OFF); af_l_ < (OFF) + (NBYTES); af_l_ += 64) {        \
                if (READS_G) AF_PREFETCH_AT(G, af_l_);                          \
                AF_PREFETCH_AT(P, af_l_);                                       \
                for (af_j_ = 0; af_j_ < (NSTATE); af_j_++)                      \
                    AF_PREFETCH_AT(((void **)(S))[af_j_], af_l_);               \
                if ((EMA) != NULL) AF_PREFETCH_AT(EMA, af_l_);                  \
            }                                                                   \
        } while (0)
    """
    void AF_AHEAD_BLOCK(const void* p, const void* g, void* s, Py_ssize_t nstate,
                        const void* ema, Py_ssize_t off, Py_ssize_t nbytes, bint reads_g) nogil


cdef inline Py_ssize_t _line_start(const void* p, Py_ssize_t itemsize, Py_ssize_t lo,
                                   Py_ssize_t hi) noexcept nogil:
    # The first index in [lo, hi] whose element of p starts a cache line.
    # Equal-sized arrays allocated one by one share their offset within a
    # page, so when params is off a line boundary every stream is, and each
    # vector load and store then splits across two lines: a NumPy user's
    # four arrays ran 1.5-1.9x slower than line-aligned ones.  Running the
    # elements before that index as a loop of their own puts every stream of
    # the main loop on line boundaries.  Every update is element-wise, so
    # where the loop splits never changes a result.
    cdef size_t off = (<size_t>p + <size_t>(lo * itemsize)) % _LINE
    cdef Py_ssize_t head = <Py_ssize_t>((_LINE - off) % _LINE) // itemsize
    return min(lo + head, hi)


cdef inline void _span(kind_t* tag, floating* p, const floating* g, void** states,
                       floating* ema, const double* row, Py_ssize_t lo,
                       Py_ssize_t hi) noexcept nogil:
    # Round the group's float64 row to the buffer dtype once, into a local
    # array, and copy the state pointers into a local table: gcc vectorizes
    # the loop only when the element function reads its scalars (and finds
    # its buffers) through such local copies, which no store can alias.
    # Each loop is written out in full, once per case: gcc left the loop
    # scalar when it was one more inline function deep.
    cdef floating k[_NSLOT]
    cdef floating* s[_MAXSTATE]
    cdef Py_ssize_t i, j, b, nstate = 0
    cdef Py_ssize_t mid = _line_start(p, sizeof(floating), lo, hi)
    cdef Py_ssize_t per_line = _LINE // sizeof(floating)
    cdef Py_ssize_t nblock = (hi - mid) // _BLOCK
    cdef Py_ssize_t tail = mid + nblock * _BLOCK
    for j in range(_NSLOT):
        k[j] = <floating>row[j]
    for j in range(_MAXSTATE):
        s[j] = <floating*>states[j]
        if s[j] != NULL:
            nstate = j + 1
    if ema == NULL:
        for i in range(lo, mid):
            _elem(tag, i, p, g, s, k)
        for b in range(nblock):
            AF_AHEAD_BLOCK(p, g, s, nstate, NULL, (mid + b * _BLOCK) * sizeof(floating),
                           _BLOCK * sizeof(floating), _reads_grads(tag))
            if AF_LINE_LOOP:
                for j in range(_BLOCK // per_line):
                    _elem_line(tag, mid + b * _BLOCK + j * per_line, p, g, s, k)
            else:
                for i in range(mid + b * _BLOCK, mid + (b + 1) * _BLOCK):
                    _elem(tag, i, p, g, s, k)
        for i in range(tail, hi):
            _elem(tag, i, p, g, s, k)
    else:
        # The parameter EMA is one more stream of the same pass, for every
        # kind: ema = d*ema + (1 - d)*p_new (reference: adamfast._numpy_backend).
        for i in range(lo, mid):
            _elem(tag, i, p, g, s, k)
            ema[i] = k[EMA_D] * ema[i] + k[EMA_OMD] * p[i]
        for b in range(nblock):
            AF_AHEAD_BLOCK(p, g, s, nstate, ema, (mid + b * _BLOCK) * sizeof(floating),
                           _BLOCK * sizeof(floating), _reads_grads(tag))
            for i in range(mid + b * _BLOCK, mid + (b + 1) * _BLOCK):
                _elem(tag, i, p, g, s, k)
                ema[i] = k[EMA_D] * ema[i] + k[EMA_OMD] * p[i]
        for i in range(tail, hi):
            _elem(tag, i, p, g, s, k)
            ema[i] = k[EMA_D] * ema[i] + k[EMA_OMD] * p[i]


cdef inline void _chunk(kind_t* tag, floating* p, const floating* g, void** states,
                        floating* ema, const double* table, const Py_ssize_t* chunks,
                        Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t lo, hi
    if chunks == NULL:  # one group: fixed chunks of [0, n)
        lo = c * _CHUNK
        hi = min(lo + <Py_ssize_t>_CHUNK, n)
        _span(tag, p, g, states, ema, table, lo, hi)
    else:  # rows of (group, lo, hi)
        _span(tag, p, g, states, ema, table + chunks[3 * c] * _NSLOT, chunks[3 * c + 1],
              chunks[3 * c + 2])


cdef void _drive(kind_t* tag, floating* p, const floating* g, void** states, floating* ema,
                 const double* table, const Py_ssize_t* chunks, Py_ssize_t c0, Py_ssize_t c1,
                 Py_ssize_t n) noexcept nogil:
    # Chunks [c0, c1) on the calling thread; the pool (af_pool.c) hands each
    # thread its blocks of chunks through here.  ``states`` holds _MAXSTATE
    # pointers: the kind's state buffers, then NULLs.
    cdef Py_ssize_t c
    if chunks == NULL and c0 == 0 and c1 * <Py_ssize_t>_CHUNK >= n:
        _span(tag, p, g, states, ema, table, 0, n)  # one group, all of it
        return
    for c in range(c0, c1):
        _chunk(tag, p, g, states, ema, table, chunks, n, c)


# --- the norm pass of the guarded step ------------------------------------
# The sum of squares of a buffer, in an order defined once (and followed by
# adamfast._numpy_backend.sumsq_kernel): per chunk of _CHUNK elements from the
# buffer's start, element j of the chunk goes to lane j % _LANES, each lane
# accumulates in float64 in element order, and the lanes are added left to
# right.  Chunks are summed in chunk order by the Python layer.  The order
# never depends on the thread count, and the lanes give the vectorizer
# independent accumulators (no reassociation, so no fast-math needed).
# ``x - x`` is 0 for every finite x and NaN otherwise: its sum flags a
# non-finite element even where x*x would overflow.

cdef extern from *:
    """
    /* The lanes' loop in C: GNU vectors kept in registers (af_lanes.h), else
       `omp simd` (with -fopenmp or -fopenmp-simd; ignored otherwise), which
       tells gcc the AF_LANES accumulators are independent: it left this loop
       scalar in Cython's form.  Neither reassociates: each lane still adds in
       element order.  AF_LANES is adamfast.algorithms._spec.LANES, which
       setup.py renders into _kinds.pxi. */
    #include "af_lanes.h"
    /* The tail of a chunk (fewer than AF_LANES elements) into the first lanes,
       then the lanes added left to right into out[0] (squares) and out[1]. */
    #define AF_SUMSQ_FINISH(CHECK)                                              \
        for (j = 0; j < hi - lo - rows * AF_LANES; j++) {                       \
            double v = (double)x[j];                                            \
            acc[j] = acc[j] + v * v;                                            \
            if (CHECK) bad[j] = bad[j] + (v - v);                               \
        }                                                                       \
        out[0] = acc[0];                                                        \
        out[1] = bad[0];                                                        \
        for (j = 1; j < AF_LANES; j++) {                                        \
            out[0] = out[0] + acc[j];                                           \
            out[1] = out[1] + bad[j];                                           \
        }                                                                       \
        /* float32: a square is at most ~1.2e77, so a chunk's float64 sum    \
           is finite exactly when every element is: no second sum needed. */ \
        if (!(CHECK)) out[1] = out[0] - out[0];
    /* Each cache line of a row, requested AF_AHEAD bytes (_spec's
       PREFETCH_AHEAD) ahead of its use: a pass that reads one stream, and
       nothing else, keeps too few misses in flight for the hardware
       prefetchers alone (16M float32, cold, on an Intel Xeon: 1.4x faster).
       Into L2 only (locality 1, prefetcht2): the L1's fill buffers would cap
       the lines in flight (8% more).  A prefetch past the array's end does
       not fault, and no value changes. */
    #if defined(__GNUC__) || defined(__clang__)
    #define AF_SUMSQ_PREFETCH(X)                                                \
        for (j = 0; j < (Py_ssize_t)(AF_LANES * sizeof *(X)); j += 64)         \
            __builtin_prefetch((const char *)(X) + AF_AHEAD + j, 0, 1);
    #else
    #define AF_SUMSQ_PREFETCH(X)
    #endif
    #if AF_VECTOR_LANES
    #define AF_SUMSQ_SPAN(NAME, T, CHECK)                                       \
    static void NAME(const T *g, Py_ssize_t lo, Py_ssize_t hi, double *out) {   \
        double acc[AF_LANES], bad[AF_LANES];                                    \
        af_vd va[AF_NV], vb[AF_NV], zero = {0};                                 \
        Py_ssize_t rows = (hi - lo) / AF_LANES, r, j;                           \
        const T *x = g + lo;                                                    \
        int q;                                                                  \
        for (q = 0; q < AF_NV; q++) va[q] = vb[q] = zero;                       \
        for (r = 0; r < rows; r++, x += AF_LANES) {                             \
            AF_SUMSQ_PREFETCH(x)                                                \
            for (q = 0; q < AF_NV; q++) {                                       \
                af_vd v = af_vd_##T(x + AF_VW * q);                             \
                va[q] = va[q] + v * v;                                          \
                if (CHECK) vb[q] = vb[q] + (v - v);                             \
            }                                                                   \
        }                                                                       \
        __builtin_memcpy(acc, va, sizeof acc);                                  \
        __builtin_memcpy(bad, vb, sizeof bad);                                  \
        AF_SUMSQ_FINISH(CHECK)                                                  \
    }
    #else
    #define AF_SUMSQ_SPAN(NAME, T, CHECK)                                       \
    static void NAME(const T *g, Py_ssize_t lo, Py_ssize_t hi, double *out) {   \
        double acc[AF_LANES] = {0}, bad[AF_LANES] = {0};                        \
        Py_ssize_t rows = (hi - lo) / AF_LANES, r, j;                           \
        const T *x = g + lo;                                                    \
        for (r = 0; r < rows; r++, x += AF_LANES) {                             \
            _Pragma("omp simd")                                                 \
            for (j = 0; j < AF_LANES; j++) {                                    \
                double v = (double)x[j];                                        \
                acc[j] = acc[j] + v * v;                                        \
                if (CHECK) bad[j] = bad[j] + (v - v);                           \
            }                                                                   \
        }                                                                       \
        AF_SUMSQ_FINISH(CHECK)                                                  \
    }
    #endif
    AF_SUMSQ_SPAN(af_sumsq_span_f32, float, 0)
    AF_SUMSQ_SPAN(af_sumsq_span_f64, double, 1)
    """
    void af_sumsq_span_f32(const float* g, Py_ssize_t lo, Py_ssize_t hi, double* out) nogil
    void af_sumsq_span_f64(const double* g, Py_ssize_t lo, Py_ssize_t hi, double* out) nogil


cdef inline void _sumsq_span(const floating* g, Py_ssize_t lo, Py_ssize_t hi,
                             double* out) noexcept nogil:
    if floating is float:
        af_sumsq_span_f32(g, lo, hi, out)
    else:
        af_sumsq_span_f64(g, lo, hi, out)


cdef void _sumsq(const floating* g, Py_ssize_t n, double* out, Py_ssize_t c0,
                 Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(c0, c1):
        _sumsq_span(g, c * _CHUNK, min((c + 1) * <Py_ssize_t>_CHUNK, n), out + 2 * c)
