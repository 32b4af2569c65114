"""Thread count: one knob for both compiled backends, and results that do not depend on it."""

import subprocess
import sys

import numpy as np
import pytest

import adamfast
from conftest import COMPILED, make_grads, make_state


@pytest.mark.parametrize("ams", [False, True])
def test_bit_identical_for_any_thread_count(compiled_backend, dtype, threads, ams):
    n = (1 << 19) + (1 << 14) + 3  # many chunks and a tail, above every parallel threshold
    results = []
    for nt in (1, 2):
        adamfast.set_num_threads(nt)
        params, m, v, vmax = make_state(n, dtype, amsgrad=ams)
        for t, g in enumerate(make_grads(n, dtype, 5), start=1):
            adamfast.adam_step(params, g, m, v, step=t, weight_decay=0.01, amsgrad=ams,
                               max_exp_avg_sq=vmax, backend=compiled_backend)
        results.append((params, m, v) + ((vmax,) if ams else ()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_set_get_num_threads(threads):
    adamfast.set_num_threads(1)
    assert adamfast.get_num_threads() == 1
    adamfast.set_num_threads(np.int64(2))
    assert adamfast.get_num_threads() == 2


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                     (True, TypeError), ("2", TypeError)])
def test_set_num_threads_rejects(bad, exc, threads):
    before = adamfast.get_num_threads()
    with pytest.raises(exc, match="n must be"):
        adamfast.set_num_threads(bad)
    assert adamfast.get_num_threads() == before


def test_numba_threads_follow_the_knob_and_restore_the_callers(threads):
    """adamfast's knob decides the kernel's threads; the caller's numba setting is
    restored afterwards (it belongs to the caller)."""
    if "numba" not in adamfast.available_backends():
        pytest.skip("numba not installed")
    import numba

    n = 1 << 20  # above numba's parallel threshold
    params, m, v, _ = make_state(n, np.float32)
    g = make_grads(n, np.float32, 1)[0]
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba's pool has one thread")
    ref = [a.copy() for a in (params, m, v)]
    numba.set_num_threads(1)
    adamfast.set_num_threads(2)
    adamfast.adam_step(params, g, m, v, step=1, backend="numba")
    assert numba.get_num_threads() == 1
    adamfast.set_num_threads(1)
    adamfast.adam_step(ref[0], g, ref[1], ref[2], step=1, backend="numba")
    assert numba.get_num_threads() == 1
    for a, b in zip((params, m, v), ref):
        assert np.array_equal(a, b)


def test_env_var_sets_default():
    code = "import adamfast; print(adamfast.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "ADAMFAST_NUM_THREADS": "1"})
    assert out.stdout.strip() == "1"


def test_import_compiles_nothing():
    code = ("import sys, adamfast; adamfast.available_backends(); "
            "print('numba' in sys.modules, 'adamfast._numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name", COMPILED)
def test_guarded_step_passes_wake_the_pool_only_when_it_pays(name):
    """_guard.pass_threads: a guarded step at or above the pool's cold cut-off wakes
    the workers for its two passes; a smaller one whose workers sleep runs both
    passes on the caller; the numpy backend keeps its count."""
    import time

    from adamfast import _dispatch, _guard

    b = _dispatch.get_backend(name)
    cold_min = b.module.POOL_COLD_MIN
    on_pool = (b.module.threading_path() == "adamfast pool" if name == "numba"
               else b.module.threading_mode() == "pool")
    if not on_pool:
        pytest.skip(f"{name} is not on adamfast's pool here (ADAMFAST_THREADING=openmp?)")
    assert _guard.pass_threads(b, cold_min, 2) == 2
    # The workers wake, spin ~100 us and sleep again: poll without sleeping.
    deadline = time.perf_counter() + 5
    while not b.module.pool_awake() and time.perf_counter() < deadline:
        pass
    assert b.module.pool_awake(), "wake_pool did not wake the workers"
    deadline = time.perf_counter() + 5
    while b.module.pool_awake() and time.perf_counter() < deadline:
        time.sleep(1e-3)                                  # they spin ~100 us, then sleep
    assert not b.module.pool_awake()
    assert _guard.pass_threads(b, cold_min - 1, 2) == 1   # asleep and small: the caller
    assert _guard.pass_threads(b, 1000, 1) == 1
    assert _guard.pass_threads(_dispatch.get_backend("numpy"), 1000, 2) == 2


# --- large calls: adamfast's pool or an OpenMP team, chosen by measurement ---------------

def _cython_module():
    from adamfast import _dispatch

    return _dispatch.cython_module()


@pytest.fixture
def pool_policy():
    if "cython" not in COMPILED:
        pytest.skip("the pool is the cython extension's")
    mod = _cython_module()
    before = mod._pool_policy()[0]
    yield mod
    mod._set_pool_policy(before)


@pytest.mark.parametrize("name", ["Adam", "NAdam", "RMSprop"])
def test_every_thread_policy_gives_the_same_bits(pool_policy, compiled_backend, name, threads):
    """Large calls run on the pool or on an OpenMP team (the guarded step's norm pass
    too, and numba's block entries): the same bits either way."""
    n = (1 << 20) + 5  # 65 chunks: above AF_OMP_MIN_CHUNKS
    results = []
    adamfast.set_num_threads(2)
    for policy in ("pool", "team", "measured"):
        if policy == "team" and not _has_openmp(pool_policy):
            continue
        pool_policy._set_pool_policy(policy)
        rng = np.random.default_rng(3)
        opt = getattr(adamfast, name)([rng.standard_normal(n).astype(np.float32)],
                                      backend=compiled_backend, max_grad_norm=1.0,
                                      skip_nonfinite=True)
        norms = []
        for _ in range(4):
            opt.grads[0][...] = rng.standard_normal(n).astype(np.float32)
            norms.append(opt.step().grad_norm)
        results.append((policy, opt.flat_params.copy(), opt.state, norms))
    first = results[0]
    for policy, params, state, norms in results[1:]:
        np.testing.assert_array_equal(params, first[1], err_msg=policy)
        for key, buf in state.items():
            np.testing.assert_array_equal(buf, first[2][key], err_msg=f"{policy} {key}")
        assert norms == first[3], policy


def _has_openmp(mod):
    try:
        mod._set_pool_policy("team")
    except ValueError:
        return False
    return True


def _pool_then_measured(mod, n):
    """(p, m, v) after 39 adam_steps of n params under the forced pool, then under the
    measured policy."""
    adamfast.set_num_threads(2)
    results = []
    for policy in ("pool", "measured"):
        mod._set_pool_policy(policy)
        p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
        g[::3] = -1.25
        for t in range(1, 40):
            adamfast.adam_step(p, g, m, v, step=t, backend="cython")
        results.append((p, m, v))
    return results


def test_measured_policy_times_large_calls_on_every_path(pool_policy, threads):
    """From AF_OMP_MIN_CHUNKS up the measured policy keeps the recent time per chunk of
    the pool, an OpenMP team (where the build has OpenMP) and the caller alone: with a
    core busy the caller alone wins, beside torch's spinners the team, on an idle
    machine the pool; every path is tried and gives the same bits as the forced pool."""
    forced, measured = _pool_then_measured(pool_policy, 1 << 21)  # 128 chunks
    name, est = pool_policy._pool_policy()
    assert name == "measured"
    pool_ns, team_ns, caller_ns = est[128]
    assert pool_ns > 0 and caller_ns > 0
    assert (team_ns > 0) == _has_openmp(pool_policy)
    for a, b in zip(forced, measured):
        np.testing.assert_array_equal(a, b)


def test_measured_policy_times_small_calls_on_the_pool_and_on_the_caller(pool_policy, threads):
    """Below AF_OMP_MIN_CHUNKS the measured policy chooses between the pool and the
    caller alone by their recent times (a busy core makes the pool the slower): both
    are tried, and either gives the same bits as the forced pool."""
    # 4 chunks: the smallest call that may use the pool
    forced, measured = _pool_then_measured(pool_policy, 1 << 16)
    pool_ns, _, caller_ns = pool_policy._pool_policy()[1][4]  # no team below 32 chunks
    assert pool_ns > 0 and caller_ns > 0
    for a, b in zip(forced, measured):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", ["fast", "", None])
def test_bad_pool_policy_is_refused(pool_policy, bad):
    with pytest.raises(ValueError, match="policy must be one of"):
        pool_policy._set_pool_policy(bad)
    assert pool_policy._pool_policy()[0] in ("measured", "pool", "team")


def _replay(mod, nchunks, ns_per_chunk, calls):
    """``calls`` decisions of the measured policy for a class of ``nchunks`` chunks, each
    path's time per chunk fed back from ``ns_per_chunk`` as if the call had run; the
    count of calls each path got."""
    got = [0, 0, 0]
    for _ in range(calls):
        path = mod._pool_choose(nchunks)
        got[path] += 1
        mod._pool_record(nchunks, path, ns_per_chunk[path] * nchunks)
    return got


def test_measured_policy_times_the_pool_warm_when_it_woke_its_workers(pool_policy):
    """Where the caller alone is the fastest path and its call outlasts the workers'
    spin (POOL_SPIN_NS), every try of the pool finds them asleep, though in a loop of
    pool calls they would be awake: the try times a wake-up (at 256K params a size
    class stayed on the caller at 1-thread speed, the pool 1.7x faster warm).  Such a
    try records nothing and the class's next call runs on the pool and counts,
    whatever it finds (no endless deferral).  Shorter caller calls, another fastest
    path, or a forced policy: recorded as it comes.  Driven through the policy's own
    hooks, in a size class no real call reaches; times in ns a call."""
    nchunks = 1 << 20
    POOL, TEAM, CALLER = 0, 1, 2
    spin = pool_policy.POOL_SPIN_NS

    def est(path):
        return pool_policy._pool_policy()[1][nchunks][path] * nchunks

    def start(caller, pool):
        pool_policy._pool_forget(nchunks)
        pool_policy._pool_record(nchunks, CALLER, caller)
        pool_policy._pool_record(nchunks, TEAM, 4 * caller)  # a choice with OpenMP
        pool_policy._pool_record(nchunks, POOL, pool)
        assert pool_policy._pool_choose(nchunks) == CALLER

    long_call = 10 * spin
    pool_policy._set_pool_policy("measured")
    try:
        start(long_call, 2 * long_call)
        pool_policy._pool_record(nchunks, POOL, 3 * long_call, woke=True)
        assert est(POOL) == pytest.approx(2 * long_call)  # not recorded
        assert pool_policy._pool_choose(nchunks) == POOL  # timed again, warm
        pool_policy._pool_record(nchunks, POOL, long_call // 2)
        assert est(POOL) == pytest.approx(long_call // 2)
        assert pool_policy._pool_choose(nchunks) == POOL
        # The retry counts even if it woke the workers again.
        start(long_call, 2 * long_call)
        pool_policy._pool_record(nchunks, POOL, 3 * long_call, woke=True)
        assert pool_policy._pool_choose(nchunks) == POOL
        pool_policy._pool_record(nchunks, POOL, 3 * long_call, woke=True)
        assert est(POOL) > 2 * long_call
        assert pool_policy._pool_choose(nchunks) == CALLER
        # A caller call within the spin: the try is recorded as it is.
        short_call = spin // 10
        start(short_call, 2 * short_call)
        pool_policy._pool_record(nchunks, POOL, 3 * short_call, woke=True)
        assert est(POOL) > 2 * short_call
        assert pool_policy._pool_choose(nchunks) == CALLER
        # A forced policy times every call as it comes.
        pool_policy._set_pool_policy("pool")
        pool_policy._pool_forget(nchunks)
        pool_policy._pool_record(nchunks, CALLER, long_call)
        pool_policy._pool_record(nchunks, POOL, 2 * long_call, woke=True)
        assert est(POOL) == pytest.approx(2 * long_call)
    finally:
        pool_policy._set_pool_policy("measured")
        pool_policy._pool_forget(nchunks)


def test_measured_policy_tries_a_far_slower_path_ever_less_often(pool_policy):
    """A path whose tries keep losing by far (the OpenMP team with a core busy took 7x
    the caller's time at 1M) is tried half as often after each, until its tries cost
    about POOL_TRY_COST of the time; once a try beats the fastest (the busy process
    gone), the policy takes it up at once.  Driven through the policy's own hooks,
    with made-up times, in a size class no real call reaches."""
    nchunks = 1 << 20  # 16G params
    times = (50_000, 60_000, 9_000)  # ns per chunk: pool, team, caller alone
    pool_policy._set_pool_policy("measured")
    pool_policy._pool_forget(nchunks)
    try:
        team = _has_openmp(pool_policy)
        pool_policy._set_pool_policy("measured")
        _replay(pool_policy, nchunks, times, 4096)  # the gaps widen
        got = _replay(pool_policy, nchunks, times, 4096)
        tries = got[0] + got[1]
        assert got[1] > 0 if team else got[1] == 0
        # Each slower path tried, but its extra time about POOL_TRY_COST of the
        # calls' (tried one call in POOL_EXPLORE each, it was 28% and 34% here).
        extra = sum(got[p] * (times[p] - times[2]) for p in (0, 1))
        assert 0 < extra <= (1 + team) * 1.25 * pool_policy.POOL_TRY_COST * 4096 * times[2]
        assert tries >= (1 + team) * 4096 // pool_policy.POOL_EXPLORE_MAX
        # Conditions change: the pool is now the fastest by far.  Its next try
        # moves the class to the pool.
        got = _replay(pool_policy, nchunks, (3_000, 60_000, 9_000),
                      2 * pool_policy.POOL_EXPLORE_MAX)
        assert got[0] > pool_policy.POOL_EXPLORE_MAX
        est = pool_policy._pool_policy()[1][nchunks]
        assert est[0] < est[2]
        # Paths within noise of each other stay tried one call in POOL_EXPLORE.
        pool_policy._pool_forget(nchunks)
        got = _replay(pool_policy, nchunks, (9_000, 9_000, 9_000), 1024)
        assert sum(got) - max(got) >= 1024 // pool_policy.POOL_EXPLORE - 2
    finally:
        pool_policy._pool_forget(nchunks)
