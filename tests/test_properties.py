"""The paper's testable properties, hypothesis checks, and convergence for every backend."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamfast
from conftest import BACKENDS, TOL, assert_close, make_state


def test_first_step_is_sign_like(backend, dtype):
    """Step 1: m_hat = g, v_hat = g*g, so the update is lr * g / (|g| + eps) per element."""
    rng = np.random.default_rng(11)
    n = 1025
    params, m, v, _ = make_state(n, dtype)
    p0 = params.astype(np.float64)
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 3, n)).astype(dtype)
    lr, eps = 1e-2, 1e-8
    adamfast.adam_step(params, g, m, v, step=1, lr=lr, eps=eps, backend=backend)
    g64 = g.astype(np.float64)
    expected = p0 - lr * g64 / (np.abs(g64) + eps)
    assert_close(params, expected.astype(dtype), dtype, "first step")


def test_constant_gradient_every_step_is_the_same(backend):
    """With a constant gradient the bias-corrected moments are g and g*g at every t."""
    dtype = np.dtype(np.float64)
    rng = np.random.default_rng(12)
    n = 517
    params, m, v, _ = make_state(n, dtype)
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 3, n)
    lr, eps = 1e-3, 1e-8
    expected = params.copy()
    for t in range(1, 101):
        adamfast.adam_step(params, g, m, v, step=t, lr=lr, eps=eps, backend=backend)
        expected -= lr * g / (np.abs(g) + eps)
        # The error of the running sum grows by at most an ulp of |params| per step.
        np.testing.assert_allclose(params, expected, rtol=0, atol=(t + 64) * np.finfo(dtype).eps * 4,
                                   err_msg=f"step {t}")


@pytest.mark.parametrize("k", [-4, -1, 1, 3, 10])
def test_scale_invariance_bit_for_bit(backend, k):
    """Adam(c*g, eps) == Adam(g, eps/c) exactly for c a power of two (float64)."""
    c = 2.0 ** k
    rng = np.random.default_rng(13)
    n = 1023
    grads = [rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 2, n) for _ in range(20)]
    runs = []
    for scale, eps in ((c, 1e-8), (1.0, 1e-8 / c)):
        params, m, v, vmax = make_state(n, np.float64, amsgrad=True)
        for t, g in enumerate(grads, start=1):
            adamfast.adam_step(params, g * scale, m, v, step=t, eps=eps, amsgrad=True,
                               max_exp_avg_sq=vmax, backend=backend)
        runs.append((params, m, v, vmax))
    (p1, m1, v1, x1), (p2, m2, v2, x2) = runs
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(m1, c * m2)
    np.testing.assert_array_equal(v1, c * c * v2)
    np.testing.assert_array_equal(x1, c * c * x2)


@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
    lr=st.floats(0, 1), beta1=st.floats(0, 0.999), beta2=st.floats(0, 0.9999),
    eps=st.floats(1e-12, 1.0), wd=st.floats(0, 1), decoupled=st.booleans(),
    amsgrad=st.booleans(), maximize=st.booleans(), double=st.booleans(),
    step=st.integers(1, 10**6), seed=st.integers(0, 2**32 - 1),
)
def test_any_hyperparameters_match_reference(shape, lr, beta1, beta2, eps, wd, decoupled, amsgrad,
                                             maximize, double, step, seed):
    dtype = np.dtype(np.float64 if double else np.float32)
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype),
            rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype),
            rng.random(shape).astype(dtype)]
    results = {}
    for backend in BACKENDS:
        p, g, m, v, x = (a.copy() for a in init)
        for t in (step, step + 1):
            adamfast.adam_step(p, g, m, v, step=t, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=wd, decoupled=decoupled, amsgrad=amsgrad,
                               max_exp_avg_sq=x, maximize=maximize, backend=backend)
        results[backend] = (p, m, v, x)
    for backend, bufs in results.items():
        for a, b in zip(bufs, results["numpy"]):
            np.testing.assert_allclose(a, b, err_msg=backend, **TOL[dtype])


def _quadratic_grad(p, g, a, b):
    np.multiply(a, p - b, out=g)


@pytest.mark.parametrize("decoupled", [False, True])
def test_converges_on_quadratic(backend, dtype, decoupled):
    rng = np.random.default_rng(5)
    n = 300
    a = (10.0 ** rng.uniform(-2, 2, n)).astype(dtype)  # ill-conditioned: 1e4
    b = rng.standard_normal(n).astype(dtype)
    cls = adamfast.AdamW if decoupled else adamfast.Adam
    opt = cls(np.zeros(n, dtype), lr=0.05, weight_decay=0.0, backend=backend)
    (p,), (g,) = opt.params, opt.grads
    for t in range(3000):
        if t == 2000:
            opt.lr = 0.005
        _quadratic_grad(p, g, a, b)
        opt.step()
    assert np.abs(p - b).max() < 0.02


def test_converges_on_rosenbrock(backend, dtype):
    """Many independent Rosenbrock problems, f = (1-x)^2 + 100 (y-x^2)^2, from random starts."""
    k = 64
    rng = np.random.default_rng(6)
    start = np.concatenate([rng.uniform(-2, 2, k), rng.uniform(-1, 3, k)]).astype(dtype)
    opt = adamfast.Adam(start, lr=1e-2, backend=backend)
    (p,), (g,) = opt.params, opt.grads
    x, y, gx, gy = p[:k], p[k:], g[:k], g[k:]
    for t in range(14000):
        if t == 9000:
            opt.lr = 1e-3
        r = y - x * x
        gx[...] = -2 * (1 - x) - 400 * x * r
        gy[...] = 200 * r
        opt.step()
    assert np.abs(x - 1).max() < 1e-2 and np.abs(y - 1).max() < 2e-2
