"""Shared fixtures: the backend registry, dtypes, one tolerance table, data makers."""

import os

import numpy as np
import pytest
from hypothesis import settings

import adamfast
from adamfast import _dispatch

# Deterministic property tests in CI; a local run may ask for more examples.
settings.register_profile("ci", derandomize=True, max_examples=40, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = adamfast.available_backends()
COMPILED = tuple(b for b in BACKENDS if b != "numpy")
DTYPES = (np.float32, np.float64)


def cython_builds():
    """Every cython build that is built and that this CPU runs, baseline first, as
    modules.  A build is never imported on a CPU without its ISA (it may SIGILL)."""
    import importlib

    found = []
    for variant, name in _dispatch._CYTHON_VARIANTS.items():
        if _dispatch._cpu_runs(variant) and _dispatch._importable(name):
            found.append(importlib.import_module(name))
    return found


# Every ISA build's module name, whether or not it can run here.
CYTHON_BUILD_NAMES = tuple(_dispatch._CYTHON_VARIANTS.values())

# The sizes that hit SIMD tails (1, 7, 17), the serial/parallel switch and
# chunk tails (100003 = 6 chunks of 16384 + 1699, above PARALLEL_MIN).
SIZES = (0, 1, 7, 17, 1023, 1025, 100003)

# One tolerance table, sized from machine epsilon.  Each step rounds ~10
# times; the moments forget old errors geometrically, so errors stay at a few
# ulps of the operands over many steps.  64 ulps of O(1) values leaves room
# for a different but legitimate operation order (PyTorch's lerp for the first
# moment) and nothing more.  The compiled kernels in fact agree with the
# reference bit for bit; the tests do not rely on that.
TOL = {np.dtype(dt): dict(rtol=64 * np.finfo(dt).eps, atol=64 * np.finfo(dt).eps)
       for dt in DTYPES}

# Every switch: (weight_decay, decoupled, amsgrad, maximize).
MODES = [
    pytest.param(wd, dec, ams, mx, id=f"{name}{'-amsgrad' if ams else ''}{'-max' if mx else ''}")
    for wd, dec, name in ((0.0, False, "plain"), (0.1, False, "l2"), (0.1, True, "adamw"))
    for ams in (False, True)
    for mx in (False, True)
]


def pytest_sessionstart(session):
    # CI sets this so that a missing compiled backend fails loudly instead of
    # silently skipping its tests.
    required = os.environ.get("ADAMFAST_REQUIRE_BACKENDS")
    if required:
        missing = [b for b in required.split(",") if b not in BACKENDS]
        if missing:
            raise pytest.UsageError(f"required backends missing: {missing}; available: {BACKENDS}")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=COMPILED)
def compiled_backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = _dispatch.get_num_threads()
    yield
    adamfast.set_num_threads(before)


def make_state(n, dtype, seed=0, amsgrad=False):
    """params, exp_avg, exp_avg_sq, max_exp_avg_sq as a fresh optimizer has them, with
    non-trivial params."""
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(n).astype(dtype)
    zeros = [np.zeros(n, dtype) for _ in range(3)]
    return params, zeros[0], zeros[1], (zeros[2] if amsgrad else None)


def make_grads(n, dtype, steps, seed=1):
    """Gradients over many steps with a wide spread of magnitudes and exact zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        scale = 10.0 ** rng.uniform(-3, 2, size=n)
        g = rng.standard_normal(n) * scale
        g[rng.random(n) < 0.05] = 0.0
        out.append(g.astype(dtype))
    return out


def assert_close(actual, expected, dtype, what):
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[np.dtype(dtype)])


def adam_row(step, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, amsgrad=False,
             eps_hat=False, eps_root=0.0, bias_correction=True, nesterov=False):
    """adamfast.algorithms.adam.scalars for adam_step's arguments, padded to NSLOT."""
    from adamfast.algorithms import adam
    from adamfast.algorithms._spec import NSLOT

    hp = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay,
          "decoupled_weight_decay": decoupled, "maximize": maximize, "amsgrad": amsgrad,
          "eps_hat": eps_hat, "eps_root": eps_root, "bias_correction": bias_correction,
          "nesterov": nesterov}
    row = adam.scalars(step, hp)[0]
    return tuple(row) + (0.0,) * (NSLOT - len(row))


def full_path(module, params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1,
              beta2, eps, weight_decay, decoupled, amsgrad, maximize):
    """adam_step's full path spelled out on a backend module: validate, scalars, one
    family_kernel call."""
    from adamfast import _engine, _validate

    named = [("params", params, True), ("grads", grads, False), ("exp_avg", exp_avg, True),
             ("exp_avg_sq", exp_avg_sq, True)]
    if amsgrad:
        named.append(("max_exp_avg_sq", max_exp_avg_sq, True))
    views = _validate.buffers(named)
    row = adam_row(step, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, amsgrad)
    kind = module.KINDS.index("adam_amsgrad" if amsgrad else "adam")
    module.family_kernel(kind, views[0], views[1], tuple(views[2:]), np.array([row]),
                         _engine.single_chunks(views[0].size), _dispatch.get_num_threads())

