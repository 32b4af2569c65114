"""Regression benchmarks for adamfast (pytest-benchmark; not part of CI).

Run:      pytest bench/ --benchmark-autosave
Compare:  pytest-benchmark compare --group-by=group       (see bench/README.md)
Smoke:    pytest bench/ --benchmark-disable -q            (tiny sizes, seconds)

Each benchmark times one optimizer step with a cold cache (the same flush as
``python -m adamfast bench``), after warm-up rounds that hold the Numba
JIT/cache load, so the numbers track steady-state kernel speed.
"""

import itertools

import numpy as np
import pytest

adamfast = pytest.importorskip("adamfast")
from adamfast.bench import split_sizes  # noqa: E402

BACKENDS = adamfast.available_backends()
SIZES = {"1M": 2**20, "16M": 16 * 2**20}
# Rounds per size: enough for a stable median, few enough that the whole
# suite stays within a few minutes on a 2-core machine.
ROUNDS = {"1M": 60, "16M": 15}
MANY_ARRAYS = 200
MANY_TOTAL = 4 * 2**20
SMOKE_SIZE = 4099  # used under --benchmark-disable; odd, so it hits tails


def _state(n, seed=0):
    # Staggered like Adam's own buffers (see adamfast._memory): separately
    # allocated large arrays collide in the memory system.
    rng = np.random.default_rng(seed)
    p, g, m, v = adamfast.zeros_buffers(n, np.float32, 4)
    p[...] = rng.standard_normal(n, dtype=np.float32)
    g[...] = rng.standard_normal(n, dtype=np.float32)
    v[...] = 1e-4
    return p, g, m, v


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_step(benchmark, bench_threads, flush, backend, size):
    n = SMOKE_SIZE if benchmark.disabled else SIZES[size]
    p, g, m, v = _state(n)
    steps = itertools.count(1)  # the kernel is stateless; the step number moves on

    def one_step():
        adamfast.adam_step(p, g, m, v, step=next(steps), backend=backend)

    benchmark.group = f"adam_step fp32 {size}"
    benchmark.extra_info.update(params=n, threads=bench_threads, bytes_per_param=28)
    benchmark.pedantic(one_step, setup=flush, rounds=ROUNDS[size], warmup_rounds=3)
    assert np.isfinite(p).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_optimizer_many_arrays(benchmark, bench_threads, flush, backend):
    total = MANY_ARRAYS * 16 if benchmark.disabled else MANY_TOTAL
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(k, dtype=np.float32) for k in split_sizes(total, MANY_ARRAYS, 0)]
    opt = adamfast.Adam(arrays, lr=1e-3, backend=backend)
    for grad in opt.grads:
        grad[...] = rng.standard_normal(grad.shape, dtype=np.float32)

    benchmark.group = f"Adam.step fp32 {MANY_ARRAYS} arrays, {total} params"
    benchmark.extra_info.update(params=total, arrays=MANY_ARRAYS, threads=bench_threads)
    benchmark.pedantic(opt.step, setup=flush, rounds=40, warmup_rounds=3)
    assert all(np.isfinite(p).all() for p in opt.params)
