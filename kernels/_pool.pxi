# The Cython binding of adamfast's thread pool.  The pool is C, in
# kernels/af_pool.c (compiled into this module by setup.py); af_pool.h says
# what a job is, why the pool exists (an OpenMP region's closing barrier
# waits for a descheduled thread), its generation counter, the OpenMP-team
# policy for large calls, fork safety and the knobs.  Here: its Python face,
# for the numba backend (adamfast/_numba/_pool.py), adamfast._guard, the
# benchmark and the tests.  The cython backend's own entry points call
# af_pool_run directly (_entries.pxi).

cdef extern from *:
    """
    /* af_pool.h's block functions take ptrdiff_t chunk indices; this
       module's (_entries.pxi) and numba's (intp) take Py_ssize_t-wide ones. */
    _Static_assert(sizeof(Py_ssize_t) == sizeof(ptrdiff_t),
                   "adamfast's pool needs Py_ssize_t as wide as ptrdiff_t");
    """

cdef extern from "af_pool.h":
    ctypedef void (*af_block_fn)(void* ctx, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    int af_pool_run(af_block_fn fn, void* ctx, Py_ssize_t nchunks, int nthreads) nogil
    void af_pool_wake(int nthreads) nogil
    int af_pool_awake() nogil
    void af_pool_set_policy(int policy) nogil
    int af_pool_policy() nogil
    double af_pool_estimate(int bucket, int path) nogil
    int af_pool_choose(Py_ssize_t nchunks) nogil
    void af_pool_record(Py_ssize_t nchunks, int path, long ns, int woke) nogil
    void af_pool_forget(Py_ssize_t nchunks) nogil
    enum:
        AF_COLD_MIN_CHUNKS
        AF_OMP_MIN_CHUNKS
        AF_OMP_BUCKETS
        AF_EXPLORE
        AF_EXPLORE_MAX
        AF_POLICY_MEASURED
        AF_POLICY_POOL
        AF_POLICY_TEAM
    const double AF_TRY_COST
    const long AF_SPIN_NS


# A call of fewer elements that finds the workers asleep, away from a loop of
# calls, runs on the caller (see AF_COLD_MIN_CHUNKS).
POOL_COLD_MIN = AF_COLD_MIN_CHUNKS * _CHUNK
# The measured policy's tries of a slower path: one call in POOL_EXPLORE of a size
# class, down to one in POOL_EXPLORE_MAX for a path far slower, whose tries then
# cost about POOL_TRY_COST of the time (af_pool.h).
POOL_EXPLORE = AF_EXPLORE
POOL_EXPLORE_MAX = AF_EXPLORE_MAX
POOL_TRY_COST = AF_TRY_COST
# How long the workers spin after a job before they sleep (af_pool.h).
POOL_SPIN_NS = AF_SPIN_NS


def pool_awake():
    """Whether any of the pool's workers is awake (spinning after a step, or working)."""
    return bool(af_pool_awake())


def wake_pool(int num_threads):
    """Wake the pool's workers ahead of a multi-pass step (the guarded step's norm
    pass and update): they spin briefly, so the passes start without a wake-up."""
    with nogil:
        af_pool_wake(num_threads)


def _run_blocks(size_t fn, tuple arrays, tuple sizes, Py_ssize_t nchunks, int num_threads):
    """The numba backend's parallel path: run a C block function on this pool.

    ``fn`` is the address of ``void fn(void *ctx, Py_ssize_t c0, Py_ssize_t
    c1)`` (a numba ``cfunc``), called for chunk rows [c0, c1) of [0, nchunks)
    by the caller and up to ``num_threads - 1`` workers.  ``ctx`` points at
    Py_ssize_t words: the data address of each array of ``arrays``, then each
    integer of ``sizes``, in order (at most 32 words).  Private: the caller
    has checked that ``fn`` reads only within those arrays.  Returns the
    number of threads that could take part.
    """
    cdef Py_ssize_t ctx[32]
    cdef Py_ssize_t j, k = PyTuple_GET_SIZE(arrays)
    cdef int used
    if fn == 0 or nchunks < 0 or k + PyTuple_GET_SIZE(sizes) > 32:
        raise ValueError("_run_blocks: fn must be a function address, nchunks >= 0 and at "
                         "most 32 context words")
    for j in range(k):
        a = <object>PyTuple_GET_ITEM(arrays, j)
        if not cnp.PyArray_Check(a):
            raise TypeError("_run_blocks: arrays must hold numpy arrays, got %s"
                            % type(a).__name__)
        ctx[j] = <Py_ssize_t>cnp.PyArray_DATA(a)
    for j in range(PyTuple_GET_SIZE(sizes)):
        ctx[k + j] = <Py_ssize_t>(<object>PyTuple_GET_ITEM(sizes, j))
    with nogil:
        used = af_pool_run(<af_block_fn>fn, <void*>ctx, nchunks, num_threads)
    return used


_POLICIES = {"measured": AF_POLICY_MEASURED, "pool": AF_POLICY_POOL, "team": AF_POLICY_TEAM}


def _set_pool_policy(str policy):
    """How calls pick their threads: "measured" (the default: the fastest, as recently
    timed, of the pool, the caller alone and, from AF_OMP_MIN_CHUNKS chunks, an OpenMP
    team), "pool" or "team" (forced, for the benchmark and tests; "team" applies from
    AF_OMP_MIN_CHUNKS chunks).  Results are the same bits on every path."""
    if policy not in _POLICIES:
        raise ValueError("policy must be one of %s, got %r" % (tuple(_POLICIES), policy))
    if policy == "team" and not ADAMFAST_OPENMP:
        raise ValueError("policy 'team': this build has no OpenMP")
    af_pool_set_policy(_POLICIES[policy])


def _pool_policy():
    """The policy in use, and each size class's recent ns per chunk ((pool, team,
    caller alone), 0.0 where not yet measured or not a choice: the team only from
    AF_OMP_MIN_CHUNKS chunks), for every size class measured so far."""
    name = {v: k for k, v in _POLICIES.items()}[af_pool_policy()]
    est = {}
    for b in range(AF_OMP_BUCKETS):
        times = tuple(af_pool_estimate(b, path) for path in range(3))
        if any(times):
            est[1 << b] = times
    return name, est


def _pool_choose(Py_ssize_t nchunks):
    """For the tests: the path, 0 (pool), 1 (OpenMP team) or 2 (caller alone), that the
    policy in use picks for a call of ``nchunks`` chunks, counted as a call of its size
    class without running one; feed its time back with :func:`_pool_record`."""
    return af_pool_choose(nchunks)


def _pool_record(Py_ssize_t nchunks, int path, long ns, bint woke=False):
    """For the tests: record ``ns`` for a call of ``nchunks`` chunks on ``path``, as a
    call that ran records its time; ``woke``: a pool call that found every worker
    asleep within their spin of the previous call's end."""
    af_pool_record(nchunks, path, ns, woke)


def _pool_forget(Py_ssize_t nchunks):
    """For the tests: clear the recent times and counts of the size class of
    ``nchunks`` chunks."""
    af_pool_forget(nchunks)
