# The entry points of the cython backend.

# --- argument checks -------------------------------------------------------
cdef enum:
    # 1-D C-contiguous: n elements from the data pointer are exactly the array.
    _IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS
    _OUT_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_WRITEABLE


cdef inline bint _buffer_ok(cnp.ndarray a, int typenum, Py_ssize_t n, int flags) noexcept:
    # ndim first: PyArray_DIM(a, 0) is only valid for ndim >= 1.  A byte-
    # swapped float32 array still has type NPY_FLOAT32, hence ISNOTSWAPPED.
    return (cnp.PyArray_TYPE(a) == typenum
            and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_DIM(a, 0) == n
            and (cnp.PyArray_FLAGS(a) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(a))


_NAMES = ("params", "grads") + tuple("states[%d]" % j for j in range(_MAXSTATE))


cdef int _bad_buffers(str entry, tuple arrays, int nused) except -1:
    # Cold path, after a check above failed: say which argument and why.
    first = arrays[0]
    dtype = first.dtype
    if not dtype.isnative or dtype.type not in (np.float32, np.float64):
        raise TypeError("%s: params must have dtype float32 or float64 (native byte order), "
                        "got %r" % (entry, dtype))
    for i in range(nused):
        a, name = arrays[i], _NAMES[i]
        if not isinstance(a, cnp.ndarray):
            raise TypeError("%s: %s must be a numpy array, got %s"
                            % (entry, name, type(a).__name__))
        if a.dtype != dtype:
            raise TypeError("%s: %s has dtype %r, expected %r like params"
                            % (entry, name, a.dtype, dtype))
        if a.ndim != 1:
            raise ValueError("%s: %s must be 1-D, got shape %r" % (entry, name, a.shape))
        if a.shape[0] != first.shape[0]:
            raise ValueError("%s: %s has length %d, expected %d like params"
                             % (entry, name, a.shape[0], first.shape[0]))
        if not a.flags.c_contiguous:
            raise ValueError("%s: %s must be C-contiguous, got strides %r"
                             % (entry, name, a.strides))
        if i != 1 and not a.flags.writeable:
            raise ValueError("%s: %s must be writable" % (entry, name))
    raise ValueError("%s: invalid buffers" % entry)  # not reached



# --- one step on the pool ---------------------------------------------------

cdef struct _Step:
    int kind, typenum
    void* p
    const void* g
    void** s
    void* ema
    const double* table
    const Py_ssize_t* chunks
    Py_ssize_t n


cdef void _step_block(void* ctx, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef _Step* s = <_Step*>ctx
    _run(s.kind, s.typenum, s.p, s.g, s.s, s.ema, s.table, s.chunks, c0, c1, s.n)


# ADAMFAST_THREADING=openmp (read at import) runs the parallel path as an
# OpenMP team instead of the pool, for comparison; the default is the pool.
cdef bint _OPENMP_TEAM = False


def _set_threading(str mode):
    """Select the parallel path: "pool" (default) or "openmp".  For benchmarks."""
    global _OPENMP_TEAM
    if mode not in ("pool", "openmp"):
        raise ValueError("threading mode must be 'pool' or 'openmp', got %r" % (mode,))
    if mode == "openmp" and not ADAMFAST_OPENMP:
        raise ValueError("threading mode 'openmp': this build has no OpenMP")
    _OPENMP_TEAM = mode == "openmp"


def threading_mode():
    """The parallel path in use: "pool" or "openmp"."""
    return "openmp" if _OPENMP_TEAM else "pool"


cdef void _step(int kind, int typenum, void* p, const void* g, void** states, void* ema,
                const double* table, const Py_ssize_t* chunks, Py_ssize_t nchunks,
                Py_ssize_t n, int nthreads) noexcept nogil:
    # Every entry point's way in: serially below _PARALLEL_MIN (waking
    # threads costs more than the work) or with one thread, else on the pool.
    # ``states``: _MAXSTATE pointers, the kind's state buffers then NULLs.
    cdef _Step s
    cdef Py_ssize_t c
    if chunks == NULL:
        nchunks = (n + _CHUNK - 1) // _CHUNK
    if n < _PARALLEL_MIN or nthreads <= 1:
        _run(kind, typenum, p, g, states, ema, table, chunks, 0, nchunks, n)
        return
    if _OPENMP_TEAM:
        for c in prange(nchunks, schedule='static', num_threads=nthreads):
            _run(kind, typenum, p, g, states, ema, table, chunks, c, c + 1, n)
        return
    s.kind = kind
    s.typenum = typenum
    s.p = p
    s.g = g
    s.s = states
    s.ema = ema
    s.table = table
    s.chunks = chunks
    s.n = n
    af_pool_run(_step_block, &s, nchunks, nthreads)


cdef struct _Norm:
    int typenum
    const void* g
    double* out
    Py_ssize_t n


cdef void _norm_block(void* ctx, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef _Norm* s = <_Norm*>ctx
    if s.typenum == cnp.NPY_FLOAT32:
        _sumsq(<const float*>s.g, s.n, s.out, c0, c1)
    else:
        _sumsq(<const double*>s.g, s.n, s.out, c0, c1)


def family_kernel(
    int kind,                          # index into KINDS
    cnp.ndarray params not None,       # IN/OUT
    cnp.ndarray grads not None,        # IN (may be read-only)
    states,                            # IN/OUT  tuple: the kind's NSTATE[kind] state buffers
    cnp.ndarray scalars not None,      # IN      float64 (groups, NSLOT), C-contiguous
    cnp.ndarray chunks not None,       # IN      intp (nchunks, 3) rows of (group, lo, hi)
    int num_threads,
    cnp.ndarray ema=None,              # IN/OUT  parameter EMA (or None): one more stream
):
    """One step of kind ``KINDS[kind]`` in place; the kernel contract of adamfast._dispatch.

    ``states`` is a tuple of exactly ``NSTATE[kind]`` arrays: the kind's
    state buffers, in spec order.

    Each chunk row ``(group, lo, hi)`` updates elements [lo, hi) with the
    scalar row ``scalars[group]``.  Chunks are spread over ``num_threads``
    threads of adamfast's pool (af_pool.c) when n >= ``PARALLEL_MIN``;
    results never depend on the thread count.  With ``ema``, every updated element also does
    ``ema = d*ema + (1 - d)*param`` with d and 1 - d from the row's EMA
    slots, in the same pass.  Anything out of bounds (an unknown kind,
    buffers of the wrong dtype/length/layout, a table or chunk row out of
    range) raises before any buffer is written.
    """
    if not 0 <= kind < _NKINDS:
        raise ValueError("family_kernel: kind must be in [0, %d), got %d" % (_NKINDS, kind))
    cdef int nstate = _NSTATE_C[kind]
    cdef void* sp[_MAXSTATE]
    cdef int j
    if not PyTuple_CheckExact(states):
        raise TypeError("family_kernel: states must be a tuple of the %d state buffer(s) of "
                        "kind %r, got %s" % (nstate, KINDS[kind], type(states).__name__))
    if PyTuple_GET_SIZE(states) != nstate:
        raise ValueError("family_kernel: kind %r has %d state buffer(s), got a tuple of %d"
                         % (KINDS[kind], nstate, PyTuple_GET_SIZE(states)))
    cdef int typenum = cnp.PyArray_TYPE(params)
    cdef Py_ssize_t n = 0
    if ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_NDIM(params) == 1):
        n = cnp.PyArray_DIM(params, 0)
    else:
        typenum = -1
    cdef bint ok = _buffer_ok(params, typenum, n, _OUT_FLAGS) and \
        _buffer_ok(grads, typenum, n, _IN_FLAGS)
    for j in range(nstate):
        a = <object>PyTuple_GET_ITEM(states, j)
        ok = ok and cnp.PyArray_Check(a) and _buffer_ok(<cnp.ndarray>a, typenum, n, _OUT_FLAGS)
    if not ok:
        _bad_buffers("family_kernel", (params, grads) + states, 2 + nstate)
    for j in range(_MAXSTATE):
        sp[j] = cnp.PyArray_DATA(<cnp.ndarray>PyTuple_GET_ITEM(states, j)) if j < nstate else NULL
    if ema is not None and not _buffer_ok(ema, typenum, n, _OUT_FLAGS):
        raise ValueError("family_kernel: ema must be a writable 1-D C-contiguous array like "
                         "params, got %r" % (ema,))
    if not (cnp.PyArray_TYPE(scalars) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(scalars) == 2
            and cnp.PyArray_DIM(scalars, 1) == _NSLOT and cnp.PyArray_DIM(scalars, 0) >= 1
            and cnp.PyArray_ISCARRAY_RO(scalars)):
        raise ValueError("family_kernel: scalars must be a C-contiguous float64 array of shape "
                         "(groups >= 1, %d), got %r" % (_NSLOT, scalars))
    if not (cnp.PyArray_TYPE(chunks) == cnp.NPY_INTP and cnp.PyArray_NDIM(chunks) == 2
            and cnp.PyArray_DIM(chunks, 1) == 3 and cnp.PyArray_ISCARRAY_RO(chunks)):
        raise ValueError("family_kernel: chunks must be a C-contiguous intp array of shape "
                         "(nchunks, 3), got %r" % (chunks,))
    cdef Py_ssize_t ngroups = cnp.PyArray_DIM(scalars, 0)
    cdef Py_ssize_t nchunks = cnp.PyArray_DIM(chunks, 0)
    cdef const Py_ssize_t* ch = <const Py_ssize_t*>cnp.PyArray_DATA(chunks)
    cdef Py_ssize_t c
    for c in range(nchunks):
        if not (0 <= ch[3 * c] < ngroups and 0 <= ch[3 * c + 1] <= ch[3 * c + 2] <= n):
            raise ValueError("family_kernel: chunk %d (%d, %d, %d) is out of range for %d groups "
                             "and %d elements" % (c, ch[3 * c], ch[3 * c + 1], ch[3 * c + 2],
                                                 ngroups, n))
    if n == 0 or nchunks == 0:
        return
    cdef void* ema_ptr = NULL if ema is None else cnp.PyArray_DATA(ema)
    # The GIL is released even for small n: it costs ~tens of ns, and lets
    # other Python threads run while a large buffer is being updated.
    with nogil:
        _step(kind, typenum, cnp.PyArray_DATA(params), cnp.PyArray_DATA(grads), sp,
              ema_ptr, <const double*>cnp.PyArray_DATA(scalars), ch, nchunks, n, num_threads)


include "_reduce.pxi"  # pass 1 of the kinds that reduce per tensor (Lamb)


# --- the fast paths ----------------------------------------------------------
# Why they exist: the Python layer validates buffers and arguments with ~25
# small Python calls: ~4 us with hot caches, but ~50-60 us right after a
# backward pass, when every object and bytecode it touches is a cache miss --
# as much as the kernel itself at 64K parameters.  The fast paths do the same
# for the common, trivially valid call in one C function.
#
# They are only an optimisation.  adamfast's Python validation stays the
# single authority on what is valid and on every error message: a fast path
# never raises for bad input, it *declines* (returns False, writes nothing)
# and the caller then runs the full Python path, which raises or performs the
# step.  So it may decline valid input, but must never perform a step the
# Python path would reject.  It therefore accepts only exact types and checks
# every rule the Python layer checks, each in its strictest form; overlap is
# judged by the buffers' exact memory extents (see _disjoint).

cdef enum:
    # What adamfast._validate requires of every buffer (grads need not be writable).
    _FAST_IN_FLAGS = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    _FAST_OUT_FLAGS = _FAST_IN_FLAGS | cnp.NPY_ARRAY_WRITEABLE


cdef inline char* _fast_array(object a, int typenum, Py_ssize_t size, int flags) noexcept:
    # The array's data pointer if it is a plain ndarray of exactly this dtype
    # (native byte order), total size and flags; NULL to decline.  Any shape:
    # a C-contiguous array is its elements in C order, as the Python layer's
    # reshape(-1) sees them.
    if not cnp.PyArray_CheckExact(a):
        return NULL
    cdef cnp.ndarray x = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(x) == typenum
            and cnp.PyArray_SIZE(x) == size
            and (cnp.PyArray_FLAGS(x) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(x)):
        # Never NULL for a valid array: numpy allocates >= 1 byte even for size 0.
        return <char*>cnp.PyArray_DATA(x)
    return NULL


cdef inline bint _disjoint(char* a, char* b, Py_ssize_t nbytes) noexcept:
    # [a, a+nbytes) and [b, b+nbytes) do not intersect.  For C-contiguous
    # arrays these are exactly their memory extents.
    return <uintptr_t>a + <uintptr_t>nbytes <= <uintptr_t>b or \
        <uintptr_t>b + <uintptr_t>nbytes <= <uintptr_t>a


cdef inline bint _fast_buffers(object params, object grads, object states, int nstate,
                               int* typenum, Py_ssize_t* n, char** ptrs,
                               object ema=None) noexcept:
    # The generic buffer check of every fast path, driven by the kind's
    # number of state buffers (and the EMA, if any): False to decline.
    # ``states`` must be a tuple of exactly nstate buffers.  ``ptrs`` has
    # 3 + _MAXSTATE slots: params, grads, the _MAXSTATE state pointers (the
    # kind's, then NULLs) and, last, the EMA's data or NULL.
    cdef int j, l, nbuf
    cdef char* ordered[3 + _MAXSTATE]
    if not PyTuple_CheckExact(states) or PyTuple_GET_SIZE(states) != nstate:
        return False
    if not cnp.PyArray_CheckExact(params):
        return False
    typenum[0] = cnp.PyArray_TYPE(<cnp.ndarray>params)
    if typenum[0] != cnp.NPY_FLOAT32 and typenum[0] != cnp.NPY_FLOAT64:
        return False
    n[0] = cnp.PyArray_SIZE(<cnp.ndarray>params)
    ptrs[0] = _fast_array(params, typenum[0], n[0], _FAST_OUT_FLAGS)
    ptrs[1] = _fast_array(grads, typenum[0], n[0], _FAST_IN_FLAGS)
    for j in range(_MAXSTATE):
        ptrs[2 + j] = NULL
    for j in range(nstate):
        ptrs[2 + j] = _fast_array(<object>PyTuple_GET_ITEM(states, j), typenum[0], n[0],
                                  _FAST_OUT_FLAGS)
    for j in range(2 + nstate):
        if ptrs[j] == NULL:
            return False
    ptrs[2 + _MAXSTATE] = NULL
    if ema is not None:
        ptrs[2 + _MAXSTATE] = _fast_array(ema, typenum[0], n[0], _FAST_OUT_FLAGS)
        if ptrs[2 + _MAXSTATE] == NULL:
            return False
    # No two buffers may overlap (size 0: nothing to overlap): the used ones,
    # the EMA included, side by side for the test.
    nbuf = 2 + nstate
    for j in range(nbuf):
        ordered[j] = ptrs[j]
    if ema is not None:
        ordered[nbuf] = ptrs[2 + _MAXSTATE]
        nbuf += 1
    cdef Py_ssize_t nbytes = n[0] * cnp.PyArray_ITEMSIZE(<cnp.ndarray>params)
    if n[0] > 0:
        for j in range(nbuf):
            for l in range(j + 1, nbuf):
                if not _disjoint(ordered[j], ordered[l], nbytes):
                    return False
    return True


cdef inline bint _row_table(object row, double* table) noexcept:
    # A scalar row, a tuple of at most _NSLOT exact Python floats, into the C
    # table of one group, zero-padded: False to decline.
    cdef Py_ssize_t j, size
    if not PyTuple_CheckExact(row):
        return False
    size = PyTuple_GET_SIZE(row)
    if size > _NSLOT:
        return False
    for j in range(size):
        item = <object>PyTuple_GET_ITEM(row, j)
        if not PyFloat_CheckExact(item):
            return False
        table[j] = PyFloat_AS_DOUBLE(item)
    for j in range(size, _NSLOT):
        table[j] = 0.0
    return True


def step_fast(int kind, params, grads, states, row, int num_threads, ema=None):
    """The generic fast path of every functional step: the step, or a refusal.

    ``states`` is the tuple of the kind's ``NSTATE[kind]`` state buffers.
    ``row`` is the group's scalar row as a tuple of at most NSLOT exact
    Python floats (from the spec's ``scalars``, already validated).  Returns
    True after performing the step exactly as ``family_kernel`` would over
    one group, or False without writing anything when the buffers are not
    exact ndarrays of one native float dtype, C-contiguous, aligned, writable
    but for ``grads``, of one total size and pairwise disjoint (``ema``
    included, when given; then the row's EMA slots apply), or ``states`` is
    not a tuple of NSTATE[kind] of them.  Never raises for bad input.
    """
    cdef int typenum
    cdef Py_ssize_t n
    cdef char* ptrs[3 + _MAXSTATE]
    cdef double table[_NSLOT]
    if not 0 <= kind < _NKINDS:
        return False
    if _reduce_nsum(kind):  # two passes (adamfast._reduce): never one call
        return False
    if not _row_table(row, table):
        return False
    if not _fast_buffers(params, grads, states, _NSTATE_C[kind], &typenum, &n, ptrs, ema):
        return False
    if n == 0:
        return True
    with nogil:
        _step(kind, typenum, ptrs[0], ptrs[1], <void**>(ptrs + 2), ptrs[2 + _MAXSTATE], table,
              NULL, 0, n, num_threads)
    return True


# The words of a numba block entry's ``ctx`` (adamfast._numba._driver's CTX_*):
# the addresses of params, grads, the EMA, the scalar table, the chunk table and
# the kind's state buffers, then the sizes n, the EMA's length, the number of
# groups, of chunk rows and whether the buffers are float64.  adamfast._numba
# refuses to import if _STEP_BLOCKS_CTX differs from its own order.
cdef enum:
    _CTX_P = 0
    _CTX_G = 1
    _CTX_EMA = 2
    _CTX_SCALARS = 3
    _CTX_CHUNKS = 4
    _CTX_STATES = 5
_STEP_BLOCKS_CTX = (_CTX_P, _CTX_G, _CTX_EMA, _CTX_SCALARS, _CTX_CHUNKS, _CTX_STATES)


def _step_blocks(size_t fn, int nstate, params, grads, states, row, chunks, int num_threads,
                 Py_ssize_t parallel_min, ema=None):
    """The numba backend's fast path on this pool: ``step_fast``'s refusals and
    checks of ``row`` and the buffers, in C, then the block entry at ``fn`` (a
    numba cfunc over a kind of ``nstate`` state buffers) over every chunk row of
    ``chunks`` (adamfast._engine.single_chunks of params' size: its dtype and
    size are checked here, its rows trusted), on ``num_threads`` threads from
    ``parallel_min`` elements, on the caller alone below.  Returns True after
    the step, or False having written nothing.  Private: ``fn`` must be the
    block entry of a kind with ``nstate`` buffers.  Never raises for bad input."""
    cdef int typenum
    cdef Py_ssize_t n, j, nchunks
    cdef char* ptrs[3 + _MAXSTATE]
    cdef double table[_NSLOT]
    cdef Py_ssize_t ctx[_CTX_STATES + _MAXSTATE + 5]
    cdef cnp.ndarray c
    cdef char* ema_data
    if fn == 0 or not 0 <= nstate <= _MAXSTATE or not _row_table(row, table):
        return False
    if not _fast_buffers(params, grads, states, nstate, &typenum, &n, ptrs, ema):
        return False
    if n == 0:
        return True
    nchunks = (n + _CHUNK - 1) // _CHUNK
    if not cnp.PyArray_CheckExact(chunks):
        return False
    c = <cnp.ndarray>chunks
    if not (cnp.PyArray_TYPE(c) == cnp.NPY_INTP and cnp.PyArray_SIZE(c) == 3 * nchunks
            and (cnp.PyArray_FLAGS(c) & _FAST_IN_FLAGS) == _FAST_IN_FLAGS
            and cnp.PyArray_ISNOTSWAPPED(c)):
        return False
    ema_data = ptrs[2 + _MAXSTATE]
    ctx[_CTX_P] = <Py_ssize_t>ptrs[0]
    ctx[_CTX_G] = <Py_ssize_t>ptrs[1]
    # No EMA: any valid address, with length 0.
    ctx[_CTX_EMA] = <Py_ssize_t>(ema_data if ema_data != NULL else ptrs[0])
    ctx[_CTX_SCALARS] = <Py_ssize_t>table
    ctx[_CTX_CHUNKS] = <Py_ssize_t>cnp.PyArray_DATA(c)
    for j in range(nstate):
        ctx[_CTX_STATES + j] = <Py_ssize_t>ptrs[2 + j]
    j = _CTX_STATES + nstate
    ctx[j] = n
    ctx[j + 1] = n if ema_data != NULL else 0
    ctx[j + 2] = 1  # one group
    ctx[j + 3] = nchunks
    ctx[j + 4] = typenum == cnp.NPY_FLOAT64
    with nogil:
        af_pool_run(<af_block_fn>fn, <void*>ctx, nchunks, num_threads if n >= parallel_min else 1)
    return True


include "_adam_fast.pxi"  # adam_step's fast path (adam_step_fast, adam_step_call)


def sumsq_kernel(cnp.ndarray grads not None,   # IN   any float32/float64 1-D C-contiguous
                 cnp.ndarray out not None,     # OUT  float64 (nchunks, 2), C-contiguous
                 int num_threads):
    """The norm pass: per chunk of CHUNK elements, (sum of squares, sum of x - x) in float64.

    The order inside a chunk is defined in _driver.pxi (LANES accumulators)
    and followed by adamfast._numpy_backend.sumsq_kernel; the second column is 0
    iff the chunk is finite.  Only reads ``grads``.
    """
    cdef int typenum = cnp.PyArray_TYPE(grads)
    if not ((typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            and cnp.PyArray_NDIM(grads) == 1 and cnp.PyArray_ISCARRAY_RO(grads)
            and cnp.PyArray_ISNOTSWAPPED(grads)):
        raise ValueError("sumsq_kernel: grads must be a 1-D C-contiguous float32 or float64 "
                         "array, got %r" % (grads,))
    cdef Py_ssize_t n = cnp.PyArray_DIM(grads, 0)
    cdef Py_ssize_t nchunks = (n + _CHUNK - 1) // _CHUNK
    if not (cnp.PyArray_TYPE(out) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(out) == 2
            and cnp.PyArray_DIM(out, 0) == nchunks and cnp.PyArray_DIM(out, 1) == 2
            and cnp.PyArray_ISCARRAY(out)):
        raise ValueError("sumsq_kernel: out must be a writable C-contiguous float64 array of "
                         "shape (%d, 2), got %r" % (nchunks, out))
    if n == 0:
        return
    cdef _Norm s
    s.typenum = typenum
    s.g = cnp.PyArray_DATA(grads)
    s.out = <double*>cnp.PyArray_DATA(out)
    s.n = n
    with nogil:
        if n < _PARALLEL_MIN or num_threads <= 1:
            _norm_block(&s, 0, nchunks)
        else:
            af_pool_run(_norm_block, &s, nchunks, num_threads)


import os as _os
_set_threading(_os.environ.get("ADAMFAST_THREADING", "pool").strip().lower() or "pool")
