# adamfast's own thread pool: the parallel path of the cython backend.
#
# Why not OpenMP's: an OpenMP parallel region ends with a barrier that waits
# for every thread of the team to *arrive*.  With one of two cores busy with
# another process (data-loader workers do exactly this in CPU training) the
# OS deschedules a team thread for a whole time slice and the step waits for
# it: 2 threads were slower than 1 (median and tail).  This pool has the
# properties that avoid it:
#
# * the caller takes part in the work;
# * the chunks are cut into a fixed number of blocks, claimed dynamically from
#   one shared counter (a 64-bit word holding the job's generation and the
#   next block, advanced by compare-and-swap, so a late worker can never
#   claim a block of a newer job with an older job's arguments);
# * a step returns when every block is *done*, not when every thread has
#   arrived: a worker still asleep or descheduled when the blocks run out
#   costs nothing, the caller and the others have taken its share;
# * which thread runs a block never changes a result (blocks are whole
#   chunks, each updated by exactly one call), so results stay bit-identical
#   for any thread count;
# * workers spin briefly after a step (waking a sleeping thread costs tens of
#   microseconds on a VM), then sleep on a condition variable;
# * a second Python thread stepping at the same time runs its step serially
#   instead of waiting; after fork() the child forgets the parent's workers
#   (pthread_atfork) and starts new ones if it ever asks for threads;
# * large calls (AF_OMP_MIN_CHUNKS and up) may run on an OpenMP team instead,
#   with the same dynamic claiming of blocks, chosen by measurement (below).
#
# Why an OpenMP team at all: right after torch's work (a backward pass) its
# OpenMP workers keep spinning on the cores for a few ms, in the OpenMP
# runtime this extension shares with torch (one libgomp.so.1 per process).
# A pool worker then gets half a core; a team of that runtime reuses the
# spinning threads instead.  Measured on 2 cores (16M float32 Adam, torch op
# before each step): pool 9.4 ms, team 7.6 ms; at 1M, 536 vs 279 us.  But a
# team's region ends with a barrier that waits for every thread to arrive,
# and with a core busy that costs a time slice (the reason the pool exists).
# Neither is best everywhere and a process cannot see the runtime's spinners,
# so each size class (a power of two of chunks) keeps the recent time per
# chunk of both paths and runs the faster one, trying the other one call in
# AF_EXPLORE.  Which thread runs a block never changes a result, so the
# choice changes speed only.

cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    #include <time.h>
    #include <stdint.h>
    #if defined(__x86_64__) || defined(__i386__)
    #  include <immintrin.h>
    #  define AF_RELAX() _mm_pause()
    #else
    #  define AF_RELAX() ((void)0)
    #endif

    typedef void (*af_block_fn)(void *ctx, Py_ssize_t c0, Py_ssize_t c1);

    #define AF_MAX_WORKERS 1023
    #define AF_SPIN_NS 100000L     /* how long a worker spins after a step, in ns */
    #define AF_BLOCKS_PER_THREAD 16
    /* A call of fewer than AF_COLD_MIN_CHUNKS chunks that finds every
       worker asleep (a training loop's forward and backward passes ran since
       the last step) runs on the caller alone: a worker woken from sleep on
       a VM arrives tens of microseconds late and then holds the last block.
       With a 64 MiB cache flush before each step, 2 threads were slower than
       1 below 512K params (64K Adam: 110 vs 74 us; 256K: 188 vs 170 us),
       tied at 512K and won from there (1M: 518 vs 573 us).  A call within
       AF_TIGHT_NS of the previous one (a loop of steps, the busy-core test)
       wakes the workers and uses them as they arrive, and their spin after
       the step keeps them awake for the next. */
    #define AF_COLD_MIN_CHUNKS 32
    #define AF_TIGHT_NS 1000000L
    /* The OpenMP team is considered from this many chunks (512K elements) up;
       smaller calls cost too little for a sleeping team's wake-up. */
    #define AF_OMP_MIN_CHUNKS 32
    #define AF_OMP_BUCKETS 40
    #define AF_EXPLORE 16

    static struct {
        pthread_mutex_t run_mu;    /* one job at a time */
        pthread_mutex_t mu;        /* sleeping workers, and a caller waiting for blocks */
        pthread_cond_t cv;
        pthread_cond_t done_cv;
        int started;               /* workers created */
        uint32_t gen;              /* generation of the published job */
        int active;                /* workers 0..active-1 take part in this job */
        af_block_fn fn;
        void *ctx;
        Py_ssize_t nblocks, nchunks;
        uint64_t claim;            /* (generation << 32) | next block */
        Py_ssize_t done;           /* blocks finished in this generation */
        int sleeping;              /* workers blocked on cv (or about to be) */
        struct timespec last_end;  /* when the last call asking for threads returned */
    } af_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                 PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
                 0, 0, 0, NULL, NULL, 0, 0, 0, 0, 0, {0, 0}};
    static int af_atfork_done = 0;

    static void af_do_blocks(uint32_t g) {
        for (;;) {
            uint64_t cur = __atomic_load_n(&af_pool.claim, __ATOMIC_ACQUIRE);
            if ((uint32_t)(cur >> 32) != g) return;
            Py_ssize_t i = (Py_ssize_t)(uint32_t)cur;
            if (i >= af_pool.nblocks) return;
            if (!__atomic_compare_exchange_n(&af_pool.claim, &cur, cur + 1, 0,
                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                continue;
            /* The block is ours: the job's fields are those of generation g
               until every block of g is done, and this one is not yet. */
            Py_ssize_t nb = af_pool.nblocks, nc = af_pool.nchunks;
            af_pool.fn(af_pool.ctx, nc * i / nb, nc * (i + 1) / nb);
            if (__atomic_add_fetch(&af_pool.done, 1, __ATOMIC_ACQ_REL) == nb) {
                /* The last block: wake the caller if it went to sleep. */
                pthread_mutex_lock(&af_pool.mu);
                pthread_cond_broadcast(&af_pool.done_cv);
                pthread_mutex_unlock(&af_pool.mu);
            }
        }
    }

    static void *af_worker(void *arg) {
        int me = (int)(intptr_t)arg;
        uint32_t seen = __atomic_load_n(&af_pool.gen, __ATOMIC_ACQUIRE);
        for (;;) {
            uint32_t g;
            int spins = 0;
            struct timespec t0, t1;
            while ((g = __atomic_load_n(&af_pool.gen, __ATOMIC_ACQUIRE)) == seen) {
                /* Spin a little for the next step (a tight loop of steps),
                   yielding so a woken caller on this core runs first, for
                   at most AF_SPIN_NS: longer would steal a core from the
                   caller's own work between steps (torch's backward). */
                ++spins;
                if (spins < 256) { AF_RELAX(); continue; }
                if (spins == 256) clock_gettime(CLOCK_MONOTONIC, &t0);
                if ((spins & 15) != 0) { sched_yield(); continue; }
                clock_gettime(CLOCK_MONOTONIC, &t1);
                if ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec)
                        < AF_SPIN_NS) { sched_yield(); continue; }
                pthread_mutex_lock(&af_pool.mu);
                __atomic_add_fetch(&af_pool.sleeping, 1, __ATOMIC_ACQ_REL);
                while (__atomic_load_n(&af_pool.gen, __ATOMIC_ACQUIRE) == seen)
                    pthread_cond_wait(&af_pool.cv, &af_pool.mu);
                __atomic_sub_fetch(&af_pool.sleeping, 1, __ATOMIC_ACQ_REL);
                pthread_mutex_unlock(&af_pool.mu);
            }
            seen = g;
            if (me < __atomic_load_n(&af_pool.active, __ATOMIC_ACQUIRE))
                af_do_blocks(g);
        }
        return NULL;
    }

    static void af_after_fork_child(void) {
        /* The child has none of the parent's workers. */
        pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
        pthread_cond_t c = PTHREAD_COND_INITIALIZER;
        af_pool.run_mu = m;
        af_pool.mu = m;
        af_pool.cv = c;
        af_pool.done_cv = c;
        af_pool.started = 0;
        af_pool.active = 0;
        af_pool.sleeping = 0;
    }

    static void af_start_workers(int workers) {
        while (af_pool.started < workers) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            int rc = pthread_create(&t, &attr, af_worker, (void *)(intptr_t)af_pool.started);
            pthread_attr_destroy(&attr);
            if (rc != 0) break;    /* fewer workers: still correct */
            af_pool.started++;
        }
    }

    /* Is any worker awake (spinning after a step, or working)? */
    static int af_pool_awake(void) {
        return __atomic_load_n(&af_pool.sleeping, __ATOMIC_ACQUIRE) < af_pool.started;
    }

    /* Wake the workers ahead of a job (an empty generation): they spin for
       AF_SPIN_NS, so a job published meanwhile starts without a wake-up. */
    static void af_pool_wake(int nthreads) {
        int workers = nthreads - 1;
        if (workers > AF_MAX_WORKERS) workers = AF_MAX_WORKERS;
        if (workers < 1 || pthread_mutex_trylock(&af_pool.run_mu) != 0) return;
        if (!af_atfork_done) {
            pthread_atfork(NULL, NULL, af_after_fork_child);
            af_atfork_done = 1;
        }
        af_start_workers(workers);
        uint32_t g = af_pool.gen + 1;
        af_pool.nblocks = 0;
        __atomic_store_n(&af_pool.claim, (uint64_t)g << 32, __ATOMIC_RELEASE);
        pthread_mutex_lock(&af_pool.mu);
        __atomic_store_n(&af_pool.gen, g, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&af_pool.cv);
        pthread_mutex_unlock(&af_pool.mu);
        /* The calls that follow count as a loop of calls: they use the
           workers this just woke, whatever their size. */
        clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
        pthread_mutex_unlock(&af_pool.run_mu);
    }

    static double af_est[AF_OMP_BUCKETS][2];   /* ns per chunk: [pool, team]; 0 unknown */
    static unsigned af_calls[AF_OMP_BUCKETS];
    static int af_policy = 0;   /* 0 measured, 1 pool only, 2 team only */

    static long af_ns_since(const struct timespec *t0) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        return (t1.tv_sec - t0->tv_sec) * 1000000000L + (t1.tv_nsec - t0->tv_nsec);
    }

    #if ADAMFAST_OPENMP
    /* The pool's dynamic claiming of blocks, on an OpenMP team. */
    static void af_team_run(af_block_fn fn, void *ctx, Py_ssize_t nchunks, int nthreads) {
        Py_ssize_t nblocks = (Py_ssize_t)nthreads * AF_BLOCKS_PER_THREAD;
        Py_ssize_t next = 0;
        if (nblocks > nchunks) nblocks = nchunks;
        #pragma omp parallel num_threads(nthreads) shared(next)
        {
            for (;;) {
                Py_ssize_t i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
                if (i >= nblocks) break;
                fn(ctx, nchunks * i / nblocks, nchunks * (i + 1) / nblocks);
            }
        }
    }
    #endif

    static int af_bucket(Py_ssize_t nchunks) {
        int b = 0;
        while (nchunks > 1 && b < AF_OMP_BUCKETS - 1) { nchunks >>= 1; b++; }
        return b;
    }

    /* 1 to run this call on the team, 0 on the pool. */
    static int af_choose(int b) {
        if (af_policy) return af_policy == 2;
        double pool = af_est[b][0], team = af_est[b][1];
        if (pool == 0.0) return 0;
        if (team == 0.0) return 1;
        int best = team < pool;
        return (++af_calls[b] % AF_EXPLORE == 0) ? !best : best;
    }

    static void af_record(int b, int team, long ns, Py_ssize_t nchunks) {
        double x = (double)ns / (double)nchunks, *e = &af_est[b][team];
        *e = (*e == 0.0) ? x : *e + 0.25 * (x - *e);
    }

    /* Run fn over nchunks chunks on the caller and up to nthreads - 1
       workers.  Returns the number of threads that could take part (1 when
       it ran serially). */
    static int af_pool_run(af_block_fn fn, void *ctx, Py_ssize_t nchunks, int nthreads) {
        int workers = nthreads - 1;
        if (workers > AF_MAX_WORKERS) workers = AF_MAX_WORKERS;
        if (workers < 1 || nchunks < 2 || pthread_mutex_trylock(&af_pool.run_mu) != 0) {
            fn(ctx, 0, nchunks);
            return 1;
        }
        if (!af_atfork_done) {
            pthread_atfork(NULL, NULL, af_after_fork_child);
            af_atfork_done = 1;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long since = (now.tv_sec - af_pool.last_end.tv_sec) * 1000000000L
                     + (now.tv_nsec - af_pool.last_end.tv_nsec);
        int bucket = -1, team = 0;
    #if ADAMFAST_OPENMP
        if (nchunks >= AF_OMP_MIN_CHUNKS) {
            bucket = af_bucket(nchunks);
            team = af_choose(bucket);
        }
        if (team) {
            af_team_run(fn, ctx, nchunks, nthreads);
            af_record(bucket, 1, af_ns_since(&now), nchunks);
            clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
            pthread_mutex_unlock(&af_pool.run_mu);
            return nthreads;
        }
    #endif
        if (nchunks < AF_COLD_MIN_CHUNKS && since > AF_TIGHT_NS
                && __atomic_load_n(&af_pool.sleeping, __ATOMIC_ACQUIRE) >= af_pool.started) {
            /* A small call, every worker asleep, not in a loop of calls:
               the caller alone is faster (see AF_COLD_MIN_CHUNKS). */
            pthread_mutex_unlock(&af_pool.run_mu);
            fn(ctx, 0, nchunks);
            clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
            return 1;
        }
        af_start_workers(workers);
        if (workers > af_pool.started) workers = af_pool.started;
        Py_ssize_t nblocks = (Py_ssize_t)(workers + 1) * AF_BLOCKS_PER_THREAD;
        if (nblocks > nchunks) nblocks = nchunks;
        uint32_t g = af_pool.gen + 1;
        af_pool.fn = fn;
        af_pool.ctx = ctx;
        af_pool.nblocks = nblocks;
        af_pool.nchunks = nchunks;
        __atomic_store_n(&af_pool.done, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&af_pool.active, workers, __ATOMIC_RELAXED);
        __atomic_store_n(&af_pool.claim, (uint64_t)g << 32, __ATOMIC_RELEASE);
        pthread_mutex_lock(&af_pool.mu);
        __atomic_store_n(&af_pool.gen, g, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&af_pool.cv);
        pthread_mutex_unlock(&af_pool.mu);
        af_do_blocks(g);
        /* Wait for the blocks others claimed (never for threads that have
           not): spin briefly, then sleep, which frees this core for a
           descheduled thread that holds a block (on a busy machine the
           caller spinning here is what kept it off the CPU). */
        int spins = 0;
        while (__atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks && ++spins < 4000)
            AF_RELAX();
        /* Then yield for up to ~200 us: on a quiet machine the last block
           lands here and the caller never pays a wake-up; on a busy one the
           yield lets a preempted block holder onto this core. */
        if (__atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (spins = 0; __atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks; spins++) {
                sched_yield();
                if ((spins & 15) == 15) {
                    clock_gettime(CLOCK_MONOTONIC, &t1);
                    if ((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec)
                            > 200000L)
                        break;
                }
            }
        }
        if (__atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks) {
            pthread_mutex_lock(&af_pool.mu);
            while (__atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks)
                pthread_cond_wait(&af_pool.done_cv, &af_pool.mu);
            pthread_mutex_unlock(&af_pool.mu);
        }
        if (bucket >= 0) af_record(bucket, 0, af_ns_since(&now), nchunks);
        clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
        pthread_mutex_unlock(&af_pool.run_mu);
        return workers + 1;
    }
    """
    ctypedef void (*af_block_fn)(void* ctx, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    int af_pool_run(af_block_fn fn, void* ctx, Py_ssize_t nchunks, int nthreads) nogil
    void af_pool_wake(int nthreads) nogil
    const int AF_COLD_MIN_CHUNKS
    const int AF_OMP_MIN_CHUNKS
    int af_pool_awake() nogil
    int af_policy
    double af_est[40][2]


# A call of fewer elements that finds the workers asleep, away from a loop of
# calls, runs on the caller (see AF_COLD_MIN_CHUNKS).
POOL_COLD_MIN = AF_COLD_MIN_CHUNKS * _CHUNK


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


_POLICIES = {"measured": 0, "pool": 1, "team": 2}


def _set_pool_policy(str policy):
    """How large calls pick their threads: "measured" (the default: the faster of the
    pool and an OpenMP team, as recently timed), "pool" or "team" (forced; for the
    benchmark and tests).  Results are the same bits on every path."""
    global af_policy
    if policy not in _POLICIES:
        raise ValueError("policy must be one of %s, got %r" % (tuple(_POLICIES), policy))
    if policy == "team" and not ADAMFAST_OPENMP:
        raise ValueError("policy 'team': this build has no OpenMP")
    af_policy = _POLICIES[policy]


def _pool_policy():
    """The policy in use, and each size class's recent ns per chunk ((pool, team),
    0.0 where not yet measured), from AF_OMP_MIN_CHUNKS chunks up."""
    name = {v: k for k, v in _POLICIES.items()}[af_policy]
    est = {1 << b: (af_est[b][0], af_est[b][1]) for b in range(40)
           if af_est[b][0] != 0.0 or af_est[b][1] != 0.0}
    return name, est
