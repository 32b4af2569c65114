"""The Adam / AdamW optimizer objects over one flat buffer."""

import pickle

import numpy as np
import pytest

import adamfast

SHAPES = [(3, 4), (7,), (2, 1, 5), (), (0,), (1025,)]


def make(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads_for(step, dtype):
    return make(dtype, seed=1000 + step)


@pytest.mark.parametrize("cls,dec", [(adamfast.Adam, False), (adamfast.AdamW, True)])
@pytest.mark.parametrize("ams", [False, True])
def test_same_as_per_array_adam_step(backend, dtype, cls, dec, ams):
    init = make(dtype)
    opt = cls(init, lr=2e-3, weight_decay=0.03, amsgrad=ams, maximize=True, backend=backend)
    per_array = [[a.copy(), np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)] for a in init]
    for t in range(1, 21):
        grads = grads_for(t, dtype)
        for dst, g in zip(opt.grads, grads):
            dst[...] = g
        opt.step()
        for (p, m, v, x), g in zip(per_array, grads):
            adamfast.adam_step(p, g, m, v, step=t, lr=2e-3, weight_decay=0.03, decoupled=dec,
                               amsgrad=ams, max_exp_avg_sq=x, maximize=True, backend=backend)
    assert opt.step_count == 20
    for live, (p, m, v, x), s in zip(opt.params, per_array, opt._slices):
        np.testing.assert_array_equal(live, p)
        np.testing.assert_array_equal(opt.exp_avg[s], m.reshape(-1))
        np.testing.assert_array_equal(opt.exp_avg_sq[s], v.reshape(-1))
        if ams:
            np.testing.assert_array_equal(opt.max_exp_avg_sq[s], x.reshape(-1))


def test_params_are_live_views_and_inputs_untouched(backend):
    init = make(np.float32)
    copies = [a.copy() for a in init]
    opt = adamfast.Adam(init, backend=backend)
    assert [p.shape for p in opt.params] == [a.shape for a in init]
    assert all(np.shares_memory(p, opt.flat_params) for p in opt.params if p.size)
    assert all(np.shares_memory(g, opt.flat_grads) for g in opt.grads if g.size)
    before = opt.flat_params.copy()
    opt.step(grads_for(1, np.float32))
    assert not np.array_equal(opt.flat_params, before)
    # The views changed with the buffer; the caller's originals did not.
    np.testing.assert_array_equal(np.concatenate([p.reshape(-1) for p in opt.params]),
                                  opt.flat_params)
    for a, c in zip(init, copies):
        np.testing.assert_array_equal(a, c)
    with pytest.raises(TypeError):
        opt.params[0] = np.zeros(3)  # a tuple: the live arrays cannot be rebound by accident


def test_step_with_gradient_list_or_flat_array(backend):
    init = make(np.float64)
    a, b, c = (adamfast.Adam(init, backend=backend) for _ in range(3))
    grads = grads_for(1, np.float64)
    for dst, g in zip(a.grads, grads):
        dst[...] = g
    a.step()
    b.step(grads)
    c.step(np.concatenate([g.reshape(-1) for g in grads]))
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    np.testing.assert_array_equal(a.flat_params, c.flat_params)
    b.zero_grad()
    assert not b.flat_grads.any() and all(not g.any() for g in b.grads)


@pytest.mark.parametrize("bad,exc,msg", [
    ("short", ValueError, "grads must hold one array per parameter"),
    ("shape", ValueError, r"grads\[0\] must have shape \(3, 4\)"),
    ("dtype", TypeError, r"grads\[1\] must have dtype float32"),
    ("flat", ValueError, "grads given as one array must be float32"),
])
def test_bad_gradients_change_nothing(bad, exc, msg):
    opt = adamfast.Adam(make(np.float32))
    opt.step(grads_for(1, np.float32))
    snapshot = opt.state_dict(), opt.flat_params.copy(), opt.flat_grads.copy()
    grads = grads_for(2, np.float32)
    if bad == "short":
        grads = grads[:-1]
    elif bad == "shape":
        grads[0] = grads[0].reshape(-1)
    elif bad == "dtype":
        grads[1] = grads[1].astype(np.float64)
    else:
        grads = np.zeros(5, np.float32)
    with pytest.raises(exc, match=msg):
        opt.step(grads)
    assert opt.step_count == 1
    np.testing.assert_array_equal(opt.flat_params, snapshot[1])
    np.testing.assert_array_equal(opt.flat_grads, snapshot[2])
    np.testing.assert_array_equal(opt.exp_avg, snapshot[0]["exp_avg"])


def test_hyperparameters_change_between_steps(backend):
    init = make(np.float64)
    opt = adamfast.AdamW(init, backend=backend)
    ref = [[a.copy(), np.zeros_like(a), np.zeros_like(a)] for a in init]
    schedule = [(1e-2, (0.9, 0.999), 0.01), (5e-3, (0.8, 0.99), 0.0), (1e-3, (0.95, 0.9), 0.1)]
    for t, (lr, betas, wd) in enumerate(schedule, start=1):
        opt.lr, opt.betas, opt.weight_decay = lr, betas, wd
        grads = grads_for(t, np.float64)
        opt.step(grads)
        for (p, m, v), g in zip(ref, grads):
            adamfast.adam_step(p, g, m, v, step=t, lr=lr, beta1=betas[0], beta2=betas[1],
                               weight_decay=wd, decoupled=True, backend=backend)
    for live, (p, _, _) in zip(opt.params, ref):
        np.testing.assert_array_equal(live, p)


@pytest.mark.parametrize("attr,value,exc", [
    ("lr", -1.0, ValueError), ("betas", (0.9, 1.0), ValueError), ("betas", 0.9, TypeError),
    ("eps", float("nan"), ValueError), ("weight_decay", -1, ValueError),
    ("maximize", "no", TypeError), ("backend", "cuda", ValueError),
])
def test_bad_hyperparameter_assignment(attr, value, exc):
    opt = adamfast.Adam(make(np.float32), lr=0.1)
    before = getattr(opt, attr)
    with pytest.raises(exc, match=attr.rstrip("s") if attr != "betas" else "beta"):
        setattr(opt, attr, value)
    assert getattr(opt, attr) == before


@pytest.mark.parametrize("bad,exc,msg", [
    ([], ValueError, "at least one array"),
    ([np.zeros(3), np.zeros(2, np.float32)], TypeError, r"params\[1\] must have the dtype"),
    ([np.zeros(3, np.int64)], TypeError, r"params\[0\] must be a numpy.ndarray of float32"),
    ([[1.0, 2.0]], TypeError, r"params\[0\] must be a numpy.ndarray"),
])
def test_bad_construction(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        adamfast.Adam(bad)


def test_adamw_defaults():
    opt = adamfast.AdamW([np.zeros(3)])
    assert opt.weight_decay == 1e-2 and opt.decoupled
    opt = adamfast.Adam([np.zeros(3)])
    assert opt.weight_decay == 0.0 and not opt.decoupled
    assert (opt.lr, opt.betas, opt.eps) == (1e-3, (0.9, 0.999), 1e-8)
    assert opt.backend in adamfast.available_backends()
    assert repr(opt).startswith("Adam(1 arrays in 1 group(s), 3 float64 params") and "step_count=0" in repr(opt)


@pytest.mark.parametrize("ams", [False, True])
def test_state_dict_round_trip_continues_bit_identically(backend, dtype, ams):
    k = 7
    opt = adamfast.AdamW(make(dtype), lr=3e-3, amsgrad=ams, backend=backend)
    for t in range(1, k + 1):
        opt.step(grads_for(t, dtype))
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    saved_params = [p.copy() for p in opt.params]
    assert saved["step"] == k
    opt.lr = 0.5  # must be restored by load_state_dict
    clone = adamfast.AdamW(saved_params, backend=backend, amsgrad=ams)
    clone.load_state_dict(saved)
    opt.load_state_dict(saved)
    assert clone.lr == 3e-3 and clone.step_count == k
    for t in range(k + 1, k + 11):
        g = grads_for(t, dtype)
        opt.step(g)
        clone.step(g)
    np.testing.assert_array_equal(opt.flat_params, clone.flat_params)
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(getattr(opt, name), getattr(clone, name))
    # The saved state is a snapshot, not a view of the live buffers.
    assert not np.shares_memory(saved["exp_avg"], opt.exp_avg)


def _mutations():
    yield "dtype", lambda sd: sd.update(dtype="float64"), TypeError, "dtype"
    yield "shapes", lambda sd: sd.update(shapes=sd["shapes"][:-1]), ValueError, "shapes"
    yield "size", lambda sd: sd.update(exp_avg=sd["exp_avg"][:-1]), ValueError, "exp_avg"
    yield "array dtype", lambda sd: sd.update(exp_avg_sq=sd["exp_avg_sq"].astype(np.float64)), \
        ValueError, "exp_avg_sq"
    yield "step", lambda sd: sd.update(step=-1), ValueError, "step"
    yield "algorithm", lambda sd: sd.update(algorithm="SGD"), ValueError, "algorithm"
    yield "amsgrad", lambda sd: sd["param_groups"][0].update(amsgrad="yes"), TypeError, "amsgrad"
    yield "lr", lambda sd: sd["param_groups"][0].update(lr=-1), ValueError, "lr"
    yield "groups", lambda sd: sd["param_groups"].append({}), ValueError, "param_groups"
    yield "missing", lambda sd: sd.pop("exp_avg"), ValueError, "missing"
    yield "not a dict", None, TypeError, "mapping"


@pytest.mark.parametrize("name,mutate,exc,msg", list(_mutations()), ids=[m[0] for m in _mutations()])
def test_load_state_dict_that_does_not_fit_changes_nothing(name, mutate, exc, msg):
    opt = adamfast.Adam(make(np.float32), lr=0.01)
    opt.step(grads_for(1, np.float32))
    other = adamfast.Adam(make(np.float32), lr=0.02)
    for t in range(1, 4):
        other.step(grads_for(t, np.float32))
    sd = other.state_dict()
    if mutate is None:
        sd = [sd]
    else:
        mutate(sd)
    before = opt.state_dict()
    with pytest.raises(exc, match=msg):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 1
    assert after["param_groups"] == before["param_groups"]
    np.testing.assert_array_equal(after["exp_avg"], before["exp_avg"])
    np.testing.assert_array_equal(after["exp_avg_sq"], before["exp_avg_sq"])


@pytest.mark.parametrize("n", [0, 5, 300_000])
@pytest.mark.parametrize("count", [1, 4, 5])
def test_zeros_buffers(dtype, n, count):
    bufs = adamfast.zeros_buffers(n, dtype, count)
    assert len(bufs) == count
    for i, b in enumerate(bufs):
        assert b.shape == (n,) and b.dtype == dtype and not b.any()
        assert b.flags.c_contiguous and b.flags.writeable and b.flags.aligned
        assert b.ctypes.data % 64 == 0 or n * dtype.itemsize < (1 << 20)
        for other in bufs[i + 1:]:
            assert not np.shares_memory(b, other)
    if n:
        bufs[0][...] = 1  # independent buffers
        assert all(not b.any() for b in bufs[1:])


@pytest.mark.parametrize("bad,exc", [((-1, np.float32, 4), ValueError),
                                     ((10, np.int32, 4), TypeError),
                                     ((10, np.float32, 0), ValueError)])
def test_zeros_buffers_rejects(bad, exc):
    with pytest.raises(exc):
        adamfast.zeros_buffers(*bad)


def test_ema_is_a_stream_of_the_same_staggered_allocation():
    """The parameter EMA is one more stream of the step's pass: above 1 MiB it is laid
    out with params, grads and the state (adamfast._core_flat._allocate), not beside them."""
    init = [np.ones((300, 1000), np.float32), np.full(7, 2.0, np.float32)]
    opt = adamfast.Adam(init, ema_decay=0.9)
    base = opt.flat_params.base
    assert base is not None
    assert opt.flat_ema.base is base and opt.flat_grads.base is base
    assert all(buf.base is base for buf in (opt.exp_avg, opt.exp_avg_sq))
    starts = {b.ctypes.data % (2 << 20) for b in (opt.flat_params, opt.flat_grads,
                                                  opt.exp_avg, opt.exp_avg_sq, opt.flat_ema)}
    assert len(starts) == 5  # five streams, five offsets within a huge page
    np.testing.assert_array_equal(opt.flat_ema, opt.flat_params)  # starts as the params
    opt.add_param_group({"params": [np.full(5, 3.0, np.float32)]})
    assert opt.flat_ema.base is opt.flat_params.base
    np.testing.assert_array_equal(opt.ema_params[-1], np.full(5, 3.0, np.float32))


def test_large_optimizer_matches_adam_step(backend):
    """Above 1 MiB the optimizer's buffers share one staggered allocation."""
    dtype = np.float32
    init = [np.random.default_rng(1).standard_normal(s).astype(dtype) for s in [(300, 1000), (7,)]]
    opt = adamfast.Adam(init, amsgrad=True, backend=backend)
    assert opt.flat_params.base is not None  # the staggered arena was used
    per = [[a.copy(), np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)] for a in init]
    for t in range(1, 4):
        g = [np.random.default_rng(t).standard_normal(a.shape).astype(dtype) for a in init]
        opt.step(g)
        for (p, m, v, x), gi in zip(per, g):
            adamfast.adam_step(p, gi, m, v, step=t, amsgrad=True, max_exp_avg_sq=x,
                               backend=backend)
    for live, (p, _, _, _) in zip(opt.params, per):
        np.testing.assert_array_equal(live, p)
