# Pass 1 of a kind that reduces per tensor (adamfast/_reduce.py; Lamb): per
# chunk row (group, lo, hi), the kind's reduce element (_r_<kind> in
# algorithms/<module>.pxi) writes the state buffers and stores the quantities
# whose squares the spec sums; this driver sums them per chunk in float64 in
# the norm pass's order (_driver.pxi: element j of the chunk to lane
# j % _LANES, each lane in element order, lanes added left to right), into
# out[c, r].  Work goes in sub-blocks of _RBLOCK elements (a multiple of
# _LANES, so the lanes continue across them): first the element loop, which
# stores the quantities in a local buffer and vectorizes like any kind's,
# then the lanes' loop over that buffer (in C, `omp simd`, as _sumsq's).
# As in _span, the sub-blocks start at a cache line of params (_line_start):
# the elements before it are a head whose squares go to the first lanes, and
# the accumulators are kept rotated by the head's length, so that each
# sub-block's first element still meets its own lane.  Which thread runs a
# chunk, and where the buffers sit, never change a result.
#
# Nothing here names a kind: setup.py renders, from the registry's reducing
# kinds, the fused tag rkind_t, the element dispatch _relem, _reduce_nsum,
# _RMAX and the run of chunk rows _rrun into _kinds.pxi (_kinds.pxi.in).

cdef enum:
    _RBLOCK = 512  # elements per sub-block: the quantities stay in L1


cdef extern from *:
    """
    /* acc[j] += x[j]^2 in float64, j over AF_LANES lanes, row after row; n is a
       multiple of AF_LANES but at a chunk's end.  af_lanes.h: why vectors.
       Not inlined: inside _rspan, beside the element loop's constants, the
       AVX-512 build kept half the accumulators on the stack (a store and a
       reload per row; Lamb's pass 1 ran 40% slower on a hot buffer).  One
       call per sub-block costs nothing. */
    #include "af_lanes.h"
    #if AF_LANES < 16
    #  error "_rspan's head (up to a line of float32s, 15) must fit in the lanes"
    #endif
    #if AF_VECTOR_LANES
    #define AF_LANES_SQ(NAME, T)                                                \
    __attribute__((noinline))                                                   \
    static void NAME(const T *x, Py_ssize_t n, double *out) {                   \
        af_vd acc[AF_NV];                                                       \
        Py_ssize_t rows = n / AF_LANES, r, j;                                   \
        int q;                                                                  \
        for (q = 0; q < AF_NV; q++) acc[q] = af_vd_double(out + AF_VW * q);     \
        for (r = 0; r < rows; r++, x += AF_LANES)                               \
            for (q = 0; q < AF_NV; q++) {                                       \
                af_vd v = af_vd_##T(x + AF_VW * q);                             \
                acc[q] = acc[q] + v * v;                                        \
            }                                                                   \
        __builtin_memcpy(out, acc, sizeof acc);                                 \
        for (j = 0; j < n - rows * AF_LANES; j++) {                             \
            double v = (double)x[j];                                            \
            out[j] = out[j] + v * v;                                            \
        }                                                                       \
    }
    #else
    #define AF_LANES_SQ(NAME, T)                                                \
    static void NAME(const T *x, Py_ssize_t n, double *out) {                   \
        double acc[AF_LANES];                                                   \
        Py_ssize_t rows = n / AF_LANES, r, j;                                   \
        for (j = 0; j < AF_LANES; j++) acc[j] = out[j];                         \
        for (r = 0; r < rows; r++, x += AF_LANES) {                             \
            _Pragma("omp simd")                                                 \
            for (j = 0; j < AF_LANES; j++) {                                    \
                double v = (double)x[j];                                        \
                acc[j] = acc[j] + v * v;                                        \
            }                                                                   \
        }                                                                       \
        for (j = 0; j < n - rows * AF_LANES; j++) {                             \
            double v = (double)x[j];                                            \
            acc[j] = acc[j] + v * v;                                            \
        }                                                                       \
        for (j = 0; j < AF_LANES; j++) out[j] = acc[j];                         \
    }
    #endif
    AF_LANES_SQ(af_lanes_sq_f32, float)
    AF_LANES_SQ(af_lanes_sq_f64, double)
    """
    void af_lanes_sq_f32(const float* x, Py_ssize_t n, double* acc) nogil
    void af_lanes_sq_f64(const double* x, Py_ssize_t n, double* acc) nogil


cdef inline void _lanes_sq(const floating* x, Py_ssize_t n, double* acc) noexcept nogil:
    if floating is float:
        af_lanes_sq_f32(x, n, acc)
    else:
        af_lanes_sq_f64(x, n, acc)


cdef void _rspan(rkind_t* tag, floating* p, const floating* g, void** states,
                 const double* row, Py_ssize_t lo, Py_ssize_t hi, int nsum,
                 double* out) noexcept nogil:
    # Local copies of the row and the pointer tables, as _driver.pxi's _span
    # (gcc vectorizes the element loop only with them).
    cdef floating k[_NSLOT]
    cdef floating* s[_MAXSTATE]
    cdef floating buf[_RMAX * _RBLOCK]
    cdef floating* q[_RMAX]
    # acc[r * _LANES + t] is lane (t + head) % _LANES of quantity r.
    cdef double acc[_RMAX * _LANES]
    cdef double x
    cdef Py_ssize_t i, j, b, b0, b1, nblock, nstate = 0
    cdef Py_ssize_t mid = _line_start(p, sizeof(floating), lo, hi)
    # < _LANES: a line holds at most 16 float32s, and _LANES is 16.
    cdef Py_ssize_t head = mid - lo
    cdef int r
    for j in range(_NSLOT):
        k[j] = <floating>row[j]
    for j in range(_MAXSTATE):
        s[j] = <floating*>states[j]
        if s[j] != NULL:
            nstate = j + 1
    for r in range(_RMAX):
        q[r] = buf + r * _RBLOCK
    for j in range(_RMAX * _LANES):
        acc[j] = 0
    for i in range(lo, mid):
        _relem(tag, i, p, g, s, k, q, i - lo)
    for r in range(nsum):
        for j in range(head):
            x = <double>q[r][j]
            acc[r * _LANES + _LANES - head + j] = acc[r * _LANES + _LANES - head + j] + x * x
    b0 = mid
    while b0 < hi:
        b1 = min(b0 + <Py_ssize_t>_RBLOCK, hi)
        # Prefetched blocks, as _driver.pxi's _span (AF_AHEAD_BLOCK says why).
        nblock = (b1 - b0) // _BLOCK
        for b in range(nblock):
            AF_AHEAD_BLOCK(p, g, s, nstate, NULL, (b0 + b * _BLOCK) * sizeof(floating),
                           _BLOCK * sizeof(floating), True)
            for i in range(b0 + b * _BLOCK, b0 + (b + 1) * _BLOCK):
                _relem(tag, i, p, g, s, k, q, i - b0)
        for i in range(b0 + nblock * _BLOCK, b1):
            _relem(tag, i, p, g, s, k, q, i - b0)
        for r in range(nsum):
            _lanes_sq(q[r], b1 - b0, acc + r * _LANES)
        b0 = b1
    for r in range(nsum):
        out[r] = acc[r * _LANES + (_LANES - head) % _LANES]
        for j in range(1, _LANES):
            out[r] = out[r] + acc[r * _LANES + (j - head + _LANES) % _LANES]


cdef struct _Reduce:
    int kind, typenum, nsum
    void* p
    const void* g
    void** s
    const double* table
    const Py_ssize_t* chunks
    double* out


cdef void _reduce_block(void* ctx, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef _Reduce* r = <_Reduce*>ctx
    _rrun(r.kind, r.typenum, r.p, r.g, r.s, r.table, r.chunks, r.out, r.nsum, c0, c1)


def reduce_kernel(
    int kind,                          # index into KINDS: a kind that reduces per tensor
    cnp.ndarray params not None,       # IN      (pass 1 does not write params)
    cnp.ndarray grads not None,        # IN
    states,                            # IN/OUT  tuple: the kind's NSTATE[kind] state buffers
    cnp.ndarray scalars not None,      # IN      float64 (groups, NSLOT), C-contiguous
    cnp.ndarray chunks not None,       # IN      intp (nchunks, 3) rows of (group, lo, hi)
    cnp.ndarray out not None,          # OUT     float64 (nchunks, nsum), C-contiguous
    int num_threads,
):
    """Pass 1 of a kind that reduces per tensor (adamfast._reduce): write the state
    buffers and, per chunk row c, the float64 sums of squares of the kind's
    quantities into ``out[c]``, in the order defined in _reduce.pxi (the norm
    pass's lanes).  Buffers are checked as by ``family_kernel``; anything out of
    bounds raises before any buffer is written.  Results never depend on
    ``num_threads``.
    """
    cdef int nsum = _reduce_nsum(kind) if 0 <= kind < _NKINDS else 0
    if nsum == 0:
        raise ValueError("reduce_kernel: kind %d does not reduce per tensor" % kind)
    cdef int nstate = _NSTATE_C[kind]
    cdef void* sp[_MAXSTATE]
    cdef int j
    if not PyTuple_CheckExact(states):
        raise TypeError("reduce_kernel: states must be a tuple of the %d state buffer(s) of "
                        "kind %r, got %s" % (nstate, KINDS[kind], type(states).__name__))
    if PyTuple_GET_SIZE(states) != nstate:
        raise ValueError("reduce_kernel: kind %r has %d state buffer(s), got a tuple of %d"
                         % (KINDS[kind], nstate, PyTuple_GET_SIZE(states)))
    cdef int typenum = cnp.PyArray_TYPE(params)
    cdef Py_ssize_t n = 0
    if ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_NDIM(params) == 1):
        n = cnp.PyArray_DIM(params, 0)
    else:
        typenum = -1
    cdef bint ok = _buffer_ok(params, typenum, n, _IN_FLAGS) and \
        _buffer_ok(grads, typenum, n, _IN_FLAGS)
    for j in range(nstate):
        a = <object>PyTuple_GET_ITEM(states, j)
        ok = ok and cnp.PyArray_Check(a) and _buffer_ok(<cnp.ndarray>a, typenum, n, _OUT_FLAGS)
    if not ok:
        _bad_buffers("reduce_kernel", (params, grads) + states, 2 + nstate)
    for j in range(_MAXSTATE):
        sp[j] = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(states, j)) if j < nstate else NULL
    if not (cnp.PyArray_TYPE(scalars) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(scalars) == 2
            and cnp.PyArray_DIM(scalars, 1) == _NSLOT and cnp.PyArray_DIM(scalars, 0) >= 1
            and cnp.PyArray_ISCARRAY_RO(scalars)):
        raise ValueError("reduce_kernel: scalars must be a C-contiguous float64 array of shape "
                         "(groups >= 1, %d), got %r" % (_NSLOT, scalars))
    if not (cnp.PyArray_TYPE(chunks) == cnp.NPY_INTP and cnp.PyArray_NDIM(chunks) == 2
            and cnp.PyArray_DIM(chunks, 1) == 3 and cnp.PyArray_ISCARRAY_RO(chunks)):
        raise ValueError("reduce_kernel: chunks must be a C-contiguous intp array of shape "
                         "(nchunks, 3), got %r" % (chunks,))
    cdef Py_ssize_t ngroups = cnp.PyArray_DIM(scalars, 0)
    cdef Py_ssize_t nchunks = cnp.PyArray_DIM(chunks, 0)
    if not (cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(out) == 2
            and cnp.PyArray_DIM(out, 0) == nchunks and cnp.PyArray_DIM(out, 1) == nsum
            and cnp.PyArray_ISCARRAY(out)):
        raise ValueError("reduce_kernel: out must be a writable C-contiguous float64 array of "
                         "shape (%d, %d), got %r" % (nchunks, nsum, out))
    cdef const Py_ssize_t* ch = <const Py_ssize_t*>cnp.PyArray_DATA(chunks)
    cdef Py_ssize_t c
    for c in range(nchunks):
        if not (0 <= ch[3 * c] < ngroups and 0 <= ch[3 * c + 1] <= ch[3 * c + 2] <= n):
            raise ValueError("reduce_kernel: chunk %d (%d, %d, %d) is out of range for %d groups "
                             "and %d elements" % (c, ch[3 * c], ch[3 * c + 1], ch[3 * c + 2],
                                                 ngroups, n))
    if nchunks == 0:
        return
    cdef _Reduce r
    r.kind = kind
    r.typenum = typenum
    r.nsum = nsum
    r.p = cnp.PyArray_DATA(params)
    r.g = cnp.PyArray_DATA(grads)
    r.s = sp
    r.table = <const double*>cnp.PyArray_DATA(scalars)
    r.chunks = ch
    r.out = <double*>cnp.PyArray_DATA(out)
    with nogil:
        if n < _PARALLEL_MIN or num_threads <= 1:
            _reduce_block(&r, 0, nchunks)
        elif _OPENMP_TEAM:
            for c in prange(nchunks, schedule='static', num_threads=num_threads):
                _reduce_block(&r, c, c + 1)
        else:
            af_pool_run(_reduce_block, &r, nchunks, num_threads)
