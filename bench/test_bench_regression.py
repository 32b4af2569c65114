"""Regression benchmarks for adamfast (pytest-benchmark; not part of CI).

Run:      pytest bench/ --benchmark-autosave
Compare:  pytest-benchmark compare --group-by=group       (see bench/README.md)
Smoke:    pytest bench/ --benchmark-disable -q            (tiny sizes, seconds)

Each benchmark times one optimizer step with a cold cache (the same flush as
``python -m adamfast bench``), after warm-up rounds that hold the Numba
JIT/cache load, so the numbers track steady-state kernel speed.  The
roofline benchmarks run the engine's bandwidth-only ``roofline{N}`` kinds
through the same ``family_kernel``, so a change of machine shows up there
and a kernel regression does not.
"""

import itertools

import numpy as np
import pytest

adamfast = pytest.importorskip("adamfast")
from adamfast import _dispatch, _engine  # noqa: E402
from adamfast.algorithms._spec import NSLOT  # noqa: E402
from adamfast.bench import make_setup, split_sizes  # noqa: E402

BACKENDS = adamfast.available_backends()
COMPILED = [b for b in BACKENDS if b != "numpy"]
SIZES = {"1M": 2**20, "16M": 16 * 2**20}
# Rounds per size: enough for a stable median, few enough that the whole
# suite stays within a few minutes on a 2-core machine.
ROUNDS = {"1M": 60, "16M": 15}
FAMILY_TOTAL = 4 * 2**20
MANY_ARRAYS = 200
MANY_TOTAL = 4 * 2**20
SMOKE_SIZE = 4099  # used under --benchmark-disable; odd, so it hits tails


def _backend(name):
    """The loaded backend, or a skip: numba may be missing or mid-rewrite."""
    try:
        return _dispatch.get_backend(name)
    except Exception as exc:
        pytest.skip(f"backend {name!r} does not load: {exc}")


def _state(n, count=4, seed=0):
    # Staggered like the optimizers' own buffers (see adamfast._memory):
    # separately allocated large arrays collide in the memory system.
    rng = np.random.default_rng(seed)
    bufs = adamfast.zeros_buffers(n, np.float32, count)
    bufs[0][...] = rng.standard_normal(n, dtype=np.float32)
    bufs[1][...] = rng.standard_normal(n, dtype=np.float32)
    for s in bufs[2:]:
        s[...] = 1e-4
    return bufs


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_step(benchmark, bench_threads, flush, backend, size):
    _backend(backend)
    n = SMOKE_SIZE if benchmark.disabled else SIZES[size]
    p, g, m, v = _state(n)
    steps = itertools.count(1)  # the kernel is stateless; the step number moves on

    def one_step():
        adamfast.adam_step(p, g, m, v, step=next(steps), backend=backend)

    benchmark.group = f"adam_step fp32 {size}"
    benchmark.extra_info.update(params=n, threads=bench_threads, bytes_per_param=28)
    benchmark.pedantic(one_step, setup=flush, rounds=ROUNDS[size], warmup_rounds=3)
    assert np.isfinite(p).all()


@pytest.mark.parametrize("nstate", [0, 1, 2, 3])
@pytest.mark.parametrize("backend", COMPILED)
def test_roofline(benchmark, bench_threads, flush, backend, nstate):
    b = _backend(backend)
    n = SMOKE_SIZE if benchmark.disabled else FAMILY_TOTAL
    bufs = _state(n, 2 + nstate)
    empty = np.zeros(0, np.float32)
    s = (tuple(bufs[2:]) + (empty,) * 3)[:3]
    kid = b.kind_id(f"roofline{nstate}")
    table, chunks = np.zeros((1, NSLOT)), _engine.single_chunks(n)

    def one_step():
        b.kernel(kid, bufs[0], bufs[1], *s, table, chunks, bench_threads)

    benchmark.group = f"roofline{nstate} fp32 {n} params"
    benchmark.extra_info.update(params=n, threads=bench_threads,
                                bytes_per_param=(3 + 2 * nstate) * 4)
    benchmark.pedantic(one_step, setup=flush, rounds=40, warmup_rounds=3)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("algorithm", list(adamfast.ALGORITHMS))
def test_optimizer_step(benchmark, bench_threads, flush, algorithm, backend):
    # The benchmark CLI's settings (SGD with momentum, so it has state).
    _backend(backend)
    setup = make_setup(algorithm)
    n = SMOKE_SIZE if benchmark.disabled else FAMILY_TOTAL
    rng = np.random.default_rng(0)
    opt = getattr(adamfast, algorithm)(rng.standard_normal(n, dtype=np.float32), backend=backend,
                                       **setup.hp)
    opt.flat_grads[...] = rng.standard_normal(n, dtype=np.float32)

    benchmark.group = f"{algorithm}.step fp32 {n} params"
    benchmark.extra_info.update(params=n, threads=bench_threads, kind=setup.kind,
                                bytes_per_param=setup.bytes_per_param(4))
    benchmark.pedantic(opt.step, setup=flush, rounds=40, warmup_rounds=3)
    assert np.isfinite(opt.flat_params).all()


@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_optimizer_many_arrays(benchmark, bench_threads, flush, backend, groups):
    _backend(backend)
    total = MANY_ARRAYS * 16 if benchmark.disabled else MANY_TOTAL
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(k, dtype=np.float32) for k in split_sizes(total, MANY_ARRAYS, 0)]
    if groups > 1:
        bounds = np.linspace(0, MANY_ARRAYS, groups + 1).round().astype(int)
        params = [{"params": arrays[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        params = arrays
    opt = adamfast.Adam(params, lr=1e-3, backend=backend)
    opt.flat_grads[...] = rng.standard_normal(total, dtype=np.float32)

    # One group per benchmark group, so `compare --group-by=group` shows the
    # target "8 groups within 1.10x of 1 group" side by side per backend.
    benchmark.group = f"Adam.step fp32 {MANY_ARRAYS} arrays, {total} params, {backend}"
    benchmark.extra_info.update(params=total, arrays=MANY_ARRAYS, groups=groups,
                                threads=bench_threads)
    benchmark.pedantic(opt.step, setup=flush, rounds=40, warmup_rounds=3)
    assert all(np.isfinite(p).all() for p in opt.params)
