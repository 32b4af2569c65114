/* adamfast's thread pool; the API, what a job is and why the pool exists:
   af_pool.h.  Compiled into each extension module by setup.py with that
   module's flags (ADAMFAST_OPENMP says whether OpenMP is there). */

/* clock_gettime, sched_yield and pthread_atfork under a strict -std=c11. */
#if !defined(_POSIX_C_SOURCE) && !defined(__APPLE__)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "af_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#  include <immintrin.h>
#  define AF_RELAX() _mm_pause()
#else
#  define AF_RELAX() ((void)0)
#endif

/* setup.py passes ADAMFAST_OPENMP after probing the compiler; a build that
   bypasses setup.py falls back on what the compiler itself says (as
   kernels/_family.pxi does for the rest of the module). */
#ifndef ADAMFAST_OPENMP
#  ifdef _OPENMP
#    define ADAMFAST_OPENMP 1
#  else
#    define ADAMFAST_OPENMP 0
#  endif
#endif

#define AF_MAX_WORKERS 1023
/* Blocks per thread taking part: enough that a late or descheduled thread's
   share is taken by the others in small pieces. */
#define AF_BLOCKS_PER_THREAD 16
/* A call within this many ns of the previous one (a loop of steps, the
   busy-core benchmark) wakes the workers and uses them as they arrive, and
   their spin after the job keeps them awake for the next one. */
#define AF_TIGHT_NS 1000000L

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
    ptrdiff_t nblocks, nchunks;
    uint64_t claim;            /* (generation << 32) | next block */
    ptrdiff_t done;            /* blocks finished in this generation */
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
        ptrdiff_t i = (ptrdiff_t)(uint32_t)cur;
        if (i >= af_pool.nblocks) return;
        if (!__atomic_compare_exchange_n(&af_pool.claim, &cur, cur + 1, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        /* The block is ours: the job's fields are those of generation g
           until every block of g is done, and this one is not yet. */
        ptrdiff_t nb = af_pool.nblocks, nc = af_pool.nchunks;
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
               yielding so a woken caller on this core runs first, for at
               most AF_SPIN_NS. */
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

int af_pool_awake(void) {
    return __atomic_load_n(&af_pool.sleeping, __ATOMIC_ACQUIRE) < af_pool.started;
}

void af_pool_wake(int nthreads) {
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
    /* The calls that follow count as a loop of calls: they use the workers
       this just woke, whatever their size. */
    clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
    pthread_mutex_unlock(&af_pool.run_mu);
}

/* The paths a call can take; they index af_est. */
enum { AF_PATH_POOL = 0, AF_PATH_TEAM = 1, AF_PATH_CALLER = 2 };

static double af_est[AF_OMP_BUCKETS][3];   /* ns per chunk: [pool, team, caller]; 0 unknown */
static unsigned af_calls[AF_OMP_BUCKETS];   /* calls per class, for AF_EXPLORE */
static unsigned af_gap[AF_OMP_BUCKETS][3];  /* calls between tries of a path; 0: AF_EXPLORE */
static unsigned af_last[AF_OMP_BUCKETS][3]; /* af_calls of the class at the path's last run */
static unsigned char af_retry[AF_OMP_BUCKETS]; /* 1: the next call runs on the pool (af_record) */

static unsigned af_gap_of(int b, int path) {
    return af_gap[b][path] ? af_gap[b][path] : AF_EXPLORE;
}

static int af_bucket(ptrdiff_t nchunks) {
    int b = 0;
    while (nchunks > 1 && b < AF_OMP_BUCKETS - 1) { nchunks >>= 1; b++; }
    return b;
}
static int af_policy = AF_POLICY_MEASURED;

void af_pool_set_policy(int policy) {
    if (policy == AF_POLICY_MEASURED || policy == AF_POLICY_POOL || policy == AF_POLICY_TEAM)
        af_policy = policy;
}

int af_pool_policy(void) {
    return af_policy;
}

double af_pool_estimate(int bucket, int path) {
    if (bucket < 0 || bucket >= AF_OMP_BUCKETS || path < 0 || path > 2) return 0.0;
    return af_est[bucket][path];
}

static long af_ns_since(const struct timespec *t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000000000L + (t1.tv_nsec - t0->tv_nsec);
}

#if ADAMFAST_OPENMP
/* The pool's dynamic claiming of blocks, on an OpenMP team. */
static void af_team_run(af_block_fn fn, void *ctx, ptrdiff_t nchunks, int nthreads) {
    ptrdiff_t nblocks = (ptrdiff_t)nthreads * AF_BLOCKS_PER_THREAD;
    ptrdiff_t next = 0;
    if (nblocks > nchunks) nblocks = nchunks;
    #pragma omp parallel num_threads(nthreads) shared(next)
    {
        for (;;) {
            ptrdiff_t i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
            if (i >= nblocks) break;
            fn(ctx, nchunks * i / nblocks, nchunks * (i + 1) / nblocks);
        }
    }
}
#endif

/* woke: a pool call that had to wake its workers, though a pool call right
   before it would have left them spinning (see af_pool_run). */
static void af_record(int b, int path, long ns, ptrdiff_t nchunks, int woke) {
    double x = (double)ns / (double)nchunks, *e = &af_est[b][path], fastest = 0.0;
    for (int q = 0; q < 3; q++)
        if (q != path && af_est[b][q] > 0.0 && (fastest == 0.0 || af_est[b][q] < fastest))
            fastest = af_est[b][q];
    if (path == AF_PATH_POOL && af_policy == AF_POLICY_MEASURED) {
        /* The fastest path is the caller alone, whose call outlasts the
           workers' spin: every try of the pool finds them asleep, though in
           a loop of pool calls they would be awake, so it times a wake-up
           (at 256K params a class stayed on the caller at 1-thread speed,
           the pool 1.7x faster warm).  The class's next call runs on the
           pool and counts, whatever it finds, so a loop whose pool calls
           always wake their workers is still timed.  Shorter caller calls
           keep the old tries: at 64K, with a core busy, a second pool call
           per try cost 3% (python -m adamfast bench --busy-core). */
        double caller = af_est[b][AF_PATH_CALLER];
        if (woke && !af_retry[b] && caller > 0.0 && caller <= fastest
                && caller * (double)nchunks > (double)AF_SPIN_NS) {
            af_retry[b] = 1;
            return;
        }
        af_retry[b] = 0;
    }
    if (fastest > 0.0 && *e >= fastest) {
        /* A try of a path that was not the fastest (af_path): near the fastest or
           better, it stays tried often; far slower, half as often as before.  A
           try that beats the fastest replaces the path's estimate, which may be
           hundreds of calls old: conditions changed, and the path runs next. */
        unsigned gap = af_gap_of(b, path);
        /* The widest gap at which this try's extra time is AF_TRY_COST of the
           calls between tries: far slower paths wait longer. */
        double cap = (x / fastest - 1.0) / AF_TRY_COST;
        if (cap > AF_EXPLORE_MAX) cap = AF_EXPLORE_MAX;
        af_gap[b][path] = (x <= AF_NEAR * fastest || cap <= AF_EXPLORE) ? AF_EXPLORE
                          : (2.0 * gap < cap ? 2 * gap : (unsigned)cap);
        if (x < fastest) {
            *e = x;
            return;
        }
    }
    *e = (*e == 0.0) ? x : *e + 0.25 * (x - *e);
}

/* The path of a call of nchunks chunks in size class b.  Under the measured
   policy every path allowed is timed: an untried one runs first, then the
   fastest recent one, and one call in AF_EXPLORE one of the others whose
   turn has come (af_gap: AF_EXPLORE calls after its last run, more for a
   path whose tries kept losing by far; af_record), the longest waiting first.
   Which wins depends on what else runs: on an idle machine the pool; beside
   torch's spinning OpenMP workers an OpenMP team (see af_pool.h); with a core
   busy the caller alone, since a worker that claims a block and is then
   descheduled makes the caller wait out a time slice (2 threads were slower
   than 1 at 64K, 1M and 16M before the caller was a choice). */
static int af_path(int b, ptrdiff_t nchunks) {
    unsigned allowed = 1u << AF_PATH_POOL;
#if ADAMFAST_OPENMP
    if (nchunks >= AF_OMP_MIN_CHUNKS) allowed |= 1u << AF_PATH_TEAM;
#endif
    if (af_policy == AF_POLICY_POOL) return AF_PATH_POOL;
    if (af_policy == AF_POLICY_TEAM)
        return (allowed & (1u << AF_PATH_TEAM)) ? AF_PATH_TEAM : AF_PATH_POOL;
    allowed |= 1u << AF_PATH_CALLER;
    int best = -1;
    for (int path = 0; path < 3; path++) {
        if (!(allowed & (1u << path))) continue;
        if (af_est[b][path] == 0.0) return path;
        if (best < 0 || af_est[b][path] < af_est[b][best]) best = path;
    }
    unsigned calls = ++af_calls[b];
    int pick = best;
    if (af_retry[b]) {
        pick = AF_PATH_POOL;
    } else if (calls % AF_EXPLORE == 0) {
        double late = 0.0;
        for (int path = 0; path < 3; path++) {
            if (!(allowed & (1u << path)) || path == best) continue;
            unsigned gap = af_gap_of(b, path);
            unsigned waited = calls - af_last[b][path];
            if (waited >= gap && (double)waited / gap > late) {
                late = (double)waited / gap;
                pick = path;
            }
        }
    }
    af_last[b][pick] = calls;
    return pick;
}

int af_pool_run(af_block_fn fn, void *ctx, ptrdiff_t nchunks, int nthreads) {
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
    if (nchunks < AF_COLD_MIN_CHUNKS && since > AF_TIGHT_NS
            && __atomic_load_n(&af_pool.sleeping, __ATOMIC_ACQUIRE) >= af_pool.started) {
        /* A small call, every worker asleep, not in a loop of calls: the
           caller alone is faster (see AF_COLD_MIN_CHUNKS). */
        pthread_mutex_unlock(&af_pool.run_mu);
        fn(ctx, 0, nchunks);
        clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
        return 1;
    }
    int bucket = af_bucket(nchunks);
    int path = af_path(bucket, nchunks);
    if (path == AF_PATH_CALLER) {
        pthread_mutex_unlock(&af_pool.run_mu);
        fn(ctx, 0, nchunks);
        af_record(bucket, AF_PATH_CALLER, af_ns_since(&now), nchunks, 0);
        clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
        return 1;
    }
#if ADAMFAST_OPENMP
    if (path == AF_PATH_TEAM) {
        af_team_run(fn, ctx, nchunks, nthreads);
        af_record(bucket, AF_PATH_TEAM, af_ns_since(&now), nchunks, 0);
        clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
        pthread_mutex_unlock(&af_pool.run_mu);
        return nthreads;
    }
#endif
    /* Every worker asleep (or none started yet), within the spin of the
       previous call's end: a pool call there would have kept them awake. */
    int woke = since < AF_SPIN_NS
               && __atomic_load_n(&af_pool.sleeping, __ATOMIC_ACQUIRE) >= af_pool.started;
    af_start_workers(workers);
    if (workers > af_pool.started) workers = af_pool.started;
    ptrdiff_t nblocks = (ptrdiff_t)(workers + 1) * AF_BLOCKS_PER_THREAD;
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
    /* Wait for the blocks others claimed (never for threads that have not):
       spin briefly, then sleep, which frees this core for a descheduled
       thread that holds a block (on a busy machine the caller spinning here
       is what kept it off the CPU). */
    int spins = 0;
    while (__atomic_load_n(&af_pool.done, __ATOMIC_ACQUIRE) < nblocks && ++spins < 4000)
        AF_RELAX();
    /* Then yield for up to ~200 us: on a quiet machine the last block lands
       here and the caller never pays a wake-up; on a busy one the yield lets
       a preempted block holder onto this core. */
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
    af_record(bucket, AF_PATH_POOL, af_ns_since(&now), nchunks, woke);
    clock_gettime(CLOCK_MONOTONIC, &af_pool.last_end);
    pthread_mutex_unlock(&af_pool.run_mu);
    return workers + 1;
}

/* The measured policy without a job, for the tests: af_path and af_record as
   af_pool_run uses them, under the same lock. */
int af_pool_choose(ptrdiff_t nchunks) {
    pthread_mutex_lock(&af_pool.run_mu);
    int path = af_path(af_bucket(nchunks), nchunks);
    pthread_mutex_unlock(&af_pool.run_mu);
    return path;
}

void af_pool_record(ptrdiff_t nchunks, int path, long ns, int woke) {
    if (path < 0 || path > 2 || nchunks < 1) return;
    pthread_mutex_lock(&af_pool.run_mu);
    af_record(af_bucket(nchunks), path, ns, nchunks, woke);
    pthread_mutex_unlock(&af_pool.run_mu);
}

void af_pool_forget(ptrdiff_t nchunks) {
    int b = af_bucket(nchunks);
    pthread_mutex_lock(&af_pool.run_mu);
    for (int path = 0; path < 3; path++)
        af_est[b][path] = 0.0, af_gap[b][path] = 0, af_last[b][path] = 0;
    af_calls[b] = 0;
    af_retry[b] = 0;
    pthread_mutex_unlock(&af_pool.run_mu);
}
