"""The guarded step: unscaling, clipping, the non-finite skip and the parameter EMA."""

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch
from conftest import BACKENDS, assert_close
from optim_cases import CASES

CLASSES = adamfast.optim.CLASSES
SHAPES = [(4, 3), (17,), (2, 3, 2), (), (16385,)]  # the last one spans two chunks


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def _init(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]


def _grads(dtype, t, scale=1.0):
    rng = np.random.default_rng(700 + t)
    return [np.asarray(rng.standard_normal(s) * scale * 10.0 ** rng.uniform(-1, 1), dtype)
            for s in SHAPES]


# --- against torch's pipeline ---------------------------------------------------------

TORCH_CLASSES = [n for n in CLASSES if CASES[n].torch_peer]


@pytest.fixture
def torch_default_dtype(dtype):
    # torch keeps a group scalar (NAdam's mu_product) in its default dtype: the params'.
    torch = pytest.importorskip("torch")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("name", TORCH_CLASSES)
def test_scale_and_clip_match_torchs_pipeline(backend, dtype, name, torch_default_dtype):
    torch = pytest.importorskip("torch")
    S, c = 1024.0, 0.5
    init = _init(dtype)
    tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    kw = CASES[name].rich_kw
    topt = getattr(torch.optim, CASES[name].torch_name)(tparams, foreach=False, **kw)
    opt = CLASSES[name](init, backend=backend, max_grad_norm=c, **kw)
    for t in range(1, 11):
        grads = _grads(dtype, t)
        scaled = [np.asarray(g * dtype.type(S), dtype) for g in grads]
        for tp, g in zip(tparams, scaled):
            tp.grad = torch.from_numpy(g.copy())
            tp.grad.mul_(1.0 / S)  # unscale, as GradScaler does
        total = torch.nn.utils.clip_grad_norm_(tparams, c)
        topt.step()
        res = opt.step(scaled, grad_scale=S)
        assert not res.skipped
        assert abs(res.grad_norm - float(total)) <= 64 * np.finfo(dtype).eps * float(total)
    for i, (mine, tp) in enumerate(zip(opt.params, tparams)):
        assert_close(mine, tp.detach().numpy(), dtype, f"{name} params[{i}]")


def test_global_norm_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    grads = _grads(dtype, 1)
    want = torch.nn.utils.get_total_norm([torch.from_numpy(g) for g in grads]) \
        if hasattr(torch.nn.utils, "get_total_norm") else \
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(torch.from_numpy(g))
                                              for g in grads]))
    got = adamfast.global_norm(grads)
    assert abs(got - float(want)) <= 64 * np.finfo(dtype).eps * got


# --- the norm pass ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 16383, 16385, 600001])
def test_norm_pass_bit_identical_across_backends_and_threads(dtype, n, threads):
    rng = np.random.default_rng(n)
    g = np.asarray(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n), dtype)
    want = None
    for backend in BACKENDS:
        for nt in (1, 2):
            adamfast.set_num_threads(nt)
            got = adamfast.global_norm(g, backend=backend)
            if want is None:
                want = got
            assert got == want, (backend, nt)
    np.testing.assert_allclose(want, np.sqrt(np.sum(g.astype(np.float64) ** 2)), rtol=1e-12)


def test_norm_flags_nonfinite_even_where_squares_overflow():
    from adamfast._guard import sumsq

    b = _dispatch.get_backend("numpy")
    g = np.full(40, 1e200)
    total, finite = sumsq(b, g, 1)
    assert finite and total == np.inf  # overflow of x*x is not a non-finite gradient
    g[-1] = np.nan
    assert not sumsq(b, g, 1)[1]


# --- the non-finite skip ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "tail"])
@pytest.mark.parametrize("name", CLASSES)
def test_nonfinite_step_is_skipped_bit_for_bit(backend, name, bad, where):
    dtype = np.float32
    a = CLASSES[name](_init(dtype), backend=backend, skip_nonfinite=True, ema_decay=0.9,
                      max_grad_norm=1.0)
    b = CLASSES[name](_init(dtype), backend=backend, skip_nonfinite=True, ema_decay=0.9,
                      max_grad_norm=1.0)
    for t in range(1, 4):
        a.step(_grads(dtype, t))
        b.step(_grads(dtype, t))
    before = (bits(a.flat_params), {k: bits(v) for k, v in a.state.items()}, bits(a.flat_ema),
              a.step_count, a.state_dict()["group_state"])
    poisoned = _grads(dtype, 99)
    if where == "first":
        poisoned[0][0, 0] = bad
    else:
        poisoned[-1][-1] = bad  # one element in the last chunk's tail
    res = a.step(poisoned)
    assert res.skipped and not np.isfinite(res.grad_norm)
    after = (bits(a.flat_params), {k: bits(v) for k, v in a.state.items()}, bits(a.flat_ema),
             a.step_count, a.state_dict()["group_state"])
    assert after == before
    # The next finite step continues exactly as if the bad one never happened.
    for t in range(4, 7):
        ra, rb = a.step(_grads(dtype, t)), b.step(_grads(dtype, t))
        assert ra == rb and not ra.skipped
    assert bits(a.flat_params) == bits(b.flat_params) and bits(a.flat_ema) == bits(b.flat_ema)
    for k in a.state:
        assert bits(a.state[k]) == bits(b.state[k])


def test_without_skip_nonfinite_values_propagate(backend):
    opt = adamfast.Adam(_init(np.float32), backend=backend, max_grad_norm=1.0)
    g = _grads(np.float32, 1)
    g[1][3] = np.nan
    res = opt.step(g)
    assert not res.skipped and np.isnan(res.grad_norm)
    assert np.isnan(opt.flat_params).all()  # a NaN norm gives a NaN coefficient, as torch


# --- the EMA ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSES)
def test_ema_matches_a_numpy_transcription(backend, dtype, name):
    d = 0.9
    opt = CLASSES[name](_init(dtype), backend=backend, ema_decay=d)
    ema = [p.copy() for p in opt.params]
    assert all(bits(e) == bits(p) for e, p in zip(opt.ema_params, opt.params))
    for t in range(1, 8):
        opt.step(_grads(dtype, t))
        ema = [dtype.type(d) * e + dtype.type(1 - d) * p for e, p in zip(ema, opt.params)]
        for mine, want in zip(opt.ema_params, ema):
            assert bits(mine) == bits(np.asarray(want, dtype))
    sd = opt.state_dict()
    assert np.array_equal(sd["ema"], opt.flat_ema)


def test_guarded_step_is_thread_count_invariant(compiled_backend, threads):
    n = (1 << 19) + 12345
    out = []
    for nt in (1, 2):
        adamfast.set_num_threads(nt)
        rng = np.random.default_rng(0)
        opt = adamfast.AdamW([rng.standard_normal(n).astype(np.float32)], backend=compiled_backend,
                             max_grad_norm=10.0, skip_nonfinite=True, ema_decay=0.99)
        norms = [opt.step([rng.standard_normal(n).astype(np.float32)], grad_scale=8.0).grad_norm
                 for _ in range(3)]
        out.append((norms, bits(opt.flat_params), bits(opt.flat_ema)))
    assert out[0] == out[1]


def test_unguarded_step_reports_nothing(backend):
    opt = adamfast.Adam(_init(np.float32), backend=backend)
    res = opt.step(_grads(np.float32, 1))
    assert res.grad_norm is None and res.skipped is False


def test_grad_scale_alone_equals_unscaled_grads(backend):
    a = adamfast.Adam(_init(np.float64), backend=backend)
    b = adamfast.Adam(_init(np.float64), backend=backend)
    for t in range(1, 5):
        g = _grads(np.float64, t)
        a.step([x * 4.0 for x in g], grad_scale=4.0)  # a power of two: exact
        b.step(g)
    assert bits(a.flat_params) == bits(b.flat_params)


@pytest.mark.parametrize("bad,exc", [({"grad_scale": 0.0}, ValueError),
                                     ({"grad_scale": -1.0}, ValueError),
                                     ({"grad_scale": "x"}, TypeError)])
def test_bad_grad_scale_changes_nothing(bad, exc):
    opt = adamfast.Adam(_init(np.float32), backend="numpy")
    before = bits(opt.flat_params)
    with pytest.raises(exc, match="grad_scale"):
        opt.step(_grads(np.float32, 1), **bad)
    assert bits(opt.flat_params) == before and opt.step_count == 0


@pytest.mark.parametrize("kw,exc", [({"max_grad_norm": -1.0}, ValueError),
                                    ({"skip_nonfinite": "yes"}, TypeError),
                                    ({"ema_decay": 1.5}, ValueError)])
def test_bad_guard_options_are_refused(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        adamfast.Adam(_init(np.float32), **kw)


# --- the functional steps ---------------------------------------------------------------

def test_functional_guarded_step_equals_optimizer(backend):
    n = 1025
    opt = adamfast.Adam([np.linspace(-1, 1, n)], backend=backend, max_grad_norm=0.3,
                        skip_nonfinite=True, ema_decay=0.95)
    p = np.linspace(-1, 1, n)
    m, v, ema = np.zeros(n), np.zeros(n), p.copy()
    for t in range(1, 6):
        g = np.sin(np.arange(n) * t) * 8.0
        r1 = opt.step([g], grad_scale=2.0)
        r2 = adamfast.adam_step(p, g, m, v, step=t, grad_scale=2.0, max_grad_norm=0.3,
                                skip_nonfinite=True, ema=ema, ema_decay=0.95, backend=backend)
        assert r1 == r2
    assert bits(p) == bits(opt.params[0]) and bits(ema) == bits(opt.flat_ema)
    g[5] = np.inf
    before = bits(p)
    assert adamfast.adam_step(p, g, m, v, step=6, skip_nonfinite=True, backend=backend).skipped
    assert bits(p) == before
    r = adamfast.sgd_step(p, g, step=1, skip_nonfinite=True, backend=backend)
    assert r.skipped and bits(p) == before
