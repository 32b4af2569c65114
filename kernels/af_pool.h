/* adamfast's thread pool: the parallel path of both compiled backends.
 *
 * Plain C11 with POSIX threads and the GCC/Clang __atomic builtins; no
 * Python.  kernels/af_pool.c is compiled into each extension module
 * (adamfast._cython and adamfast._cython_avx2, see setup.py), so each module
 * has a pool of its own; kernels/_pool.pxi is the Cython binding.
 *
 * A job is one call of af_pool_run(fn, ctx, nchunks, nthreads): run
 * fn(ctx, c0, c1) over the chunk indices [0, nchunks), every index exactly
 * once.  The indices are cut into blocks, contiguous ranges of whole chunks
 * (AF_BLOCKS_PER_THREAD per thread taking part, never more than nchunks);
 * the caller and the workers claim blocks one at a time from a shared
 * counter until none is left.  fn must be safe to call from any thread
 * without the GIL and must not depend on which thread calls it: then the
 * result is the same bits for any thread count (adamfast's block functions
 * update each chunk from that chunk's own inputs only).
 *
 * Why not an OpenMP parallel region: its closing barrier waits for every
 * thread of the team to *arrive*.  With one of two cores busy (data-loader
 * workers in CPU training) the OS deschedules a team thread for a whole time
 * slice and the step waits for it: 2 threads were slower than 1, median and
 * tail.  Here a job returns when every block is *done*: a worker still
 * asleep, or descheduled before it claimed anything, costs nothing, because
 * the caller and the others take its share.
 *
 * The generation counter.  Each job (and each af_pool_wake) publishes a new
 * generation; the claim counter is one 64-bit word, (generation << 32) |
 * next block, advanced by compare-and-swap, so a worker that arrives late
 * can never claim a block of a newer job with an older job's arguments.
 *
 * Sleeping workers.  After a job the workers spin and yield for
 * AF_SPIN_NS (a loop of steps finds them awake), then sleep on a condition
 * variable.  A call of fewer than AF_COLD_MIN_CHUNKS chunks that finds them
 * all asleep, more than AF_TIGHT_NS after the previous call that asked for
 * threads, runs on the caller alone: on a VM a worker woken from sleep
 * arrives tens of microseconds late and then holds the last block.
 *
 * The OpenMP-team policy.  Right after torch's work (a backward pass) its
 * OpenMP workers keep spinning on the cores for a few ms, in the OpenMP
 * runtime the extension shares with torch (one libgomp.so.1 per process); a
 * pool worker then gets half a core, while a team of that runtime reuses the
 * spinning threads.  Neither is best everywhere and a process cannot see the
 * runtime's spinners.  So, under the measured policy, every call that may
 * use threads keeps, per size class (a power of two of chunks,
 * AF_OMP_BUCKETS of them), the recent time per chunk of each path it can
 * take: the pool, the caller alone and, from AF_OMP_MIN_CHUNKS chunks, an
 * OpenMP team; it runs the fastest and tries another one call in
 * AF_EXPLORE, in turn.  Where the caller alone is the fastest and its
 * call outlasts the workers' spin, a try of the pool that had to wake them
 * is timed again on the next call: a wake-up is not the pool's cost in a
 * loop of pool calls.  With a core busy the caller alone
 * can win: a worker that claims a block and is then descheduled makes the
 * caller wait out a time slice.  The team claims the same blocks
 * dynamically, so the choice changes speed only.  Without OpenMP
 * (ADAMFAST_OPENMP 0) there is no team.  af_pool_set_policy forces the pool
 * or the team (benchmarks, tests).
 *
 * Concurrency and fork.  One job runs at a time: a second thread calling
 * af_pool_run meanwhile runs its job serially on itself instead of waiting.
 * After fork() the child forgets the parent's workers (pthread_atfork) and
 * starts new ones if it ever asks for threads.
 *
 * The knobs are the AF_* macros below (af_pool.c holds the internal ones:
 * AF_TIGHT_NS, AF_BLOCKS_PER_THREAD, AF_MAX_WORKERS),
 * each with the measurement behind it where it is defined; docs/threads.md
 * describes the behaviour they give.
 */
#ifndef ADAMFAST_AF_POOL_H
#define ADAMFAST_AF_POOL_H

#include <stddef.h>

/* The API has hidden visibility: each extension module links its own copy
   of the pool, and a symbol exported from one must never bind the other's
   calls (a process that loads extensions with RTLD_GLOBAL). */
#if defined(__GNUC__) && !defined(_WIN32)
#  define AF_POOL_API __attribute__((visibility("hidden")))
#else
#  define AF_POOL_API
#endif

/* A block function: chunk indices [c0, c1) of the job described by ctx.
   ptrdiff_t is Py_ssize_t's and numba's intp's width on every platform
   adamfast builds for (the binding checks it at compile time). */
typedef void (*af_block_fn)(void *ctx, ptrdiff_t c0, ptrdiff_t c1);

/* Calls of fewer chunks that find every worker asleep, away from a loop of
   calls, run on the caller.  With a 64 MiB cache flush before each step, 2
   threads were slower than 1 below 512K params (32 chunks of 16384; 64K
   Adam: 110 vs 74 us; 256K: 188 vs 170 us), tied at 512K and won from there
   (1M: 518 vs 573 us). */
#define AF_COLD_MIN_CHUNKS 32
/* The OpenMP team is considered from this many chunks (512K elements) up:
   smaller calls cost too little to pay a sleeping team's wake-up. */
#define AF_OMP_MIN_CHUNKS 32
/* Size classes of the measured policy: class b holds calls of [2**b,
   2**(b+1)) chunks (the last one everything larger). */
#define AF_OMP_BUCKETS 40

/* The measured policy tries a path other than the fastest one call in
   AF_EXPLORE of its size class, so that a change of conditions (torch's
   spinners gone, a core busy) is seen.  A path whose try comes in more than
   AF_NEAR times the fastest's time is tried half as often as before, until
   its tries cost about AF_TRY_COST of the time between them, and at most one
   call in AF_EXPLORE_MAX: with a core busy an OpenMP team took 7x the
   caller's time at 1M params: tried one call in 32, a fifth more time on
   average.  A try near the fastest or better puts the path back to
   AF_EXPLORE. */
#define AF_EXPLORE 16
#define AF_EXPLORE_MAX 1024
#define AF_NEAR 1.25
#define AF_TRY_COST 0.02

/* How long a worker spins after a job, in ns: longer would steal a core from
   the caller's own work between steps (torch's backward). */
#define AF_SPIN_NS 100000L

/* af_pool_set_policy's argument. */
#define AF_POLICY_MEASURED 0   /* the faster of pool and team, as timed (default) */
#define AF_POLICY_POOL 1       /* the pool only */
#define AF_POLICY_TEAM 2       /* an OpenMP team for every call it is considered for */

/* Run fn over nchunks chunks on the caller and up to nthreads - 1 workers
   (started on first use).  Returns the number of threads that could take
   part: 1 when the caller ran the job alone. */
AF_POOL_API int af_pool_run(af_block_fn fn, void *ctx, ptrdiff_t nchunks, int nthreads);

/* Wake up to nthreads - 1 workers ahead of a job, with an empty generation:
   they spin for a moment, so a multi-pass step (the guarded step's norm
   pass, then the update) starts each pass without a wake-up.  The calls that
   follow count as a loop of calls (see AF_COLD_MIN_CHUNKS).  Does nothing
   while another thread runs a job. */
AF_POOL_API void af_pool_wake(int nthreads);

/* 1 if any worker is awake (spinning after a job, or working), else 0. */
AF_POOL_API int af_pool_awake(void);

/* The policy for calls of AF_OMP_MIN_CHUNKS chunks and up: one of the
   AF_POLICY_* values; the setter ignores any other value.  AF_POLICY_TEAM
   on a build without OpenMP runs every call on the pool. */
AF_POOL_API void af_pool_set_policy(int policy);
AF_POOL_API int af_pool_policy(void);

/* The recent time per chunk, in ns, of size class `bucket` on the pool
   (path 0), an OpenMP team (path 1) or the caller alone (path 2, small calls
   only); 0.0 where not measured yet or out of range. */
AF_POOL_API double af_pool_estimate(int bucket, int path);

/* For the tests: the path (0 pool, 1 team, 2 caller alone) the policy in use
   picks for a call of nchunks chunks, counted as a call of its size class,
   without running one; a time to record for it, as af_pool_run records a
   call's; and a size class's times and counts cleared. */
AF_POOL_API int af_pool_choose(ptrdiff_t nchunks);
AF_POOL_API void af_pool_record(ptrdiff_t nchunks, int path, long ns, int woke);
AF_POOL_API void af_pool_forget(ptrdiff_t nchunks);

#endif /* ADAMFAST_AF_POOL_H */
