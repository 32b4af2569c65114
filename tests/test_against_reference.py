"""Every backend x dtype x switch against the NumPy reference, element by element."""

import numpy as np
import pytest

import adamfast
from conftest import MODES, SIZES, assert_close, make_grads, make_state

STEPS = 20


def run(backend, n, dtype, wd, dec, ams, mx, steps=STEPS, lrs=None):
    params, m, v, vmax = make_state(n, dtype, amsgrad=ams)
    history = []
    for t, g in enumerate(make_grads(n, dtype, steps), start=1):
        g_before = g.copy()
        lr = 1e-3 if lrs is None else lrs[t - 1]
        adamfast.adam_step(params, g, m, v, step=t, lr=lr, weight_decay=wd, decoupled=dec,
                           amsgrad=ams, max_exp_avg_sq=vmax, maximize=mx, backend=backend)
        assert np.array_equal(g, g_before), "grads were modified"
        history.append(tuple(None if b is None else b.copy() for b in (params, m, v, vmax)))
    return history


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wd,dec,ams,mx", MODES)
def test_matches_reference(backend, dtype, n, wd, dec, ams, mx):
    got = run(backend, n, dtype, wd, dec, ams, mx)
    want = run("numpy", n, dtype, wd, dec, ams, mx) if backend != "numpy" else got
    names = ("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    for t, (g_step, w_step) in enumerate(zip(got, want), start=1):
        for name, a, b in zip(names, g_step, w_step):
            if b is not None:
                assert a.dtype == dtype
                assert_close(a, b, dtype, f"{backend} {name} after step {t}")
    if backend == "numpy" and n:
        # The reference must actually move things: catch a no-op.
        params0 = make_state(n, dtype)[0]
        assert not np.array_equal(got[-1][0], params0)


@pytest.mark.parametrize("n", [1025, 100003])
def test_learning_rate_schedule(backend, dtype, n):
    """The paper's decayed rate lr/sqrt(t), passed per step, against the reference."""
    lrs = [1e-2 / np.sqrt(t) for t in range(1, STEPS + 1)]
    got = run(backend, n, dtype, 0.0, False, False, False, lrs=lrs)
    want = run("numpy", n, dtype, 0.0, False, False, False, lrs=lrs)
    for a, b in zip(got[-1][:3], want[-1][:3]):
        assert_close(a, b, dtype, f"{backend} with lr schedule")


def test_many_steps(backend, dtype):
    """Hundreds of steps: the bias corrections go to 1 and errors must not grow."""
    got = run(backend, 1025, dtype, 0.1, True, True, False, steps=300)
    want = run("numpy", 1025, dtype, 0.1, True, True, False, steps=300)
    for a, b in zip(got[-1], want[-1]):
        assert_close(a, b, dtype, f"{backend} after 300 steps")


def test_nan_and_inf_propagate(backend, dtype):
    """Non-finite gradients are neither an error nor skipped: they flow like the reference."""
    n = 70000  # above the parallel threshold
    out = {}
    for name in {backend, "numpy"}:
        params, m, v, vmax = make_state(n, dtype, amsgrad=True)
        g = make_grads(n, dtype, 1)[0]
        g[[3, 70, 69999]] = [np.nan, np.inf, -np.inf]
        for t in (1, 2):
            adamfast.adam_step(params, g, m, v, step=t, amsgrad=True, max_exp_avg_sq=vmax,
                               backend=name)
        out[name] = (params, m, v, vmax)
    for a, b in zip(out[backend], out["numpy"]):
        np.testing.assert_array_equal(a, b)
    params = out[backend][0]
    assert np.isnan(params[[3, 70, 69999]]).all()
    assert np.isfinite(np.delete(params, [3, 70, 69999])).all()


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), ()])
def test_any_shape_in_place(backend, shape):
    rng = np.random.default_rng(3)
    params = rng.standard_normal(shape)
    grads = rng.standard_normal(shape)
    m, v, vmax = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    ids = [id(a) for a in (params, m, v, vmax)]
    flat = [a.reshape(-1).copy() for a in (params, grads, m, v, vmax)]
    adamfast.adam_step(params, grads, m, v, step=1, amsgrad=True, max_exp_avg_sq=vmax,
                       backend=backend)
    adamfast.adam_step(flat[0], flat[1], flat[2], flat[3], step=1, amsgrad=True,
                       max_exp_avg_sq=flat[4], backend="numpy")
    assert [id(a) for a in (params, m, v, vmax)] == ids
    assert params.shape == shape
    np.testing.assert_allclose(params.reshape(-1), flat[0], rtol=1e-15)
    np.testing.assert_allclose(m.reshape(-1), flat[2], rtol=1e-15)


def test_readonly_grads_accepted(backend):
    params, m, v, _ = make_state(100, np.float32)
    g = make_grads(100, np.float32, 1)[0]
    g.flags.writeable = False
    adamfast.adam_step(params, g, m, v, step=1, backend=backend)
    assert np.any(m != 0)


@pytest.mark.parametrize("wd,dec,ams,mx", MODES)
def test_parallel_path_matches_reference(compiled_backend, dtype, wd, dec, ams, mx):
    """Above every backend's parallel threshold (numba's is 2**19), with a chunk tail."""
    n = (1 << 19) + 16384 * 3 + 5
    got = run(compiled_backend, n, dtype, wd, dec, ams, mx, steps=4)
    want = run("numpy", n, dtype, wd, dec, ams, mx, steps=4)
    for a, b in zip(got[-1], want[-1]):
        if b is not None:
            assert_close(a, b, dtype, f"{compiled_backend} parallel path")


def test_adamfast_reference_is_the_numpy_backend_module():
    # Issue 2 named the module adamfast.reference; code written against that name
    # must keep working and see the same objects, not a copy.
    import adamfast._numpy_backend as backend
    import adamfast.reference as by_old_name
    assert by_old_name is backend
    assert by_old_name.family_kernel is backend.family_kernel
