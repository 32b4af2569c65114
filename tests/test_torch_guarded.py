"""adamfast.torch's guarded step: loss-scale unscaling, global-norm clipping, the
non-finite skip and the parameter EMA (issue 8 on the torch drop-in).

Against torch's own pipeline (``_amp_foreach_non_finite_check_and_unscale_``,
``clip_grad_norm_``, the torch optimizer's step) element by element for every
class torch has, float32 and float64; the skip bit for bit (Inf, -Inf, NaN in
any tensor, the last element of the last tensor included) and the steps after
it; GradScaler through the same path; the EMA against a NumPy transcription;
checkpoints with the EMA both ways; thread-count invariance.
"""

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import adamfast  # noqa: E402
import adamfast.torch as aft  # noqa: E402
from conftest import BACKENDS, TOL  # noqa: E402
from optim_cases import CASES  # noqa: E402

TORCH_NAMES = [n for n in aft.CLASSES if CASES[n].torch_peer]
ALL_NAMES = list(aft.CLASSES)
# The last tensor spans two chunks (CHUNK = 16384): its last element is in the last
# chunk's tail.
SHAPES = [(4, 3), (17,), (2, 3, 2), (), (16385,)]
TDT = {np.float32: torch.float32, np.float64: torch.float64}
S = 1024.0  # a loss scale (GradScaler's are powers of two)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    # torch keeps NAdam's mu_product and every step in its default dtype.
    before = torch.get_default_dtype()
    torch.set_default_dtype(TDT[request.param])
    yield request.param
    torch.set_default_dtype(before)


@pytest.fixture
def threads():
    before = adamfast.get_num_threads()
    yield
    adamfast.set_num_threads(before)


def make_params(dtype, seed=7, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=TDT[dtype]) for s in shapes]


def grads_at(t, dtype, shapes=SHAPES):
    """Global norms of about 0.13, 1.3 and 13: with max_grad_norm=1 some steps clip."""
    g = torch.Generator().manual_seed(500 + t)
    return [torch.randn(s, generator=g, dtype=TDT[dtype]) * 10.0 ** (t % 3 - 3) for s in shapes]


def build(name, init, cls=None, backend="auto", **kw):
    """Two param groups, from torch.optim (cls=None) or adamfast.torch."""
    params = [torch.nn.Parameter(a.clone()) for a in init]
    lr = CASES[name].parity_lr
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": lr / 2}]
    kw = dict(CASES[name].rich_kw, **kw)
    if cls is None:
        opt = getattr(torch.optim, CASES[name].torch_name)(groups, lr=lr, foreach=False, **kw)
    else:
        opt = cls(groups, lr=lr, backend=backend, **kw)
    return params, opt


def give(params, grads):
    """Assign the grads the first time (a foreign tensor, copied and bound), then copy
    into the bound grad in place (what backward does): both paths of the step."""
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def close(a, b, dtype, what):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(a, b, err_msg=what, **TOL[np.dtype(dtype)])


def bits(t):
    return t.detach().contiguous().numpy().tobytes()


def snapshot(params, opt):
    """Everything a skipped step must leave alone, as bytes."""
    state = [(i, k, bits(v) if isinstance(v, torch.Tensor) else v)
             for i, p in enumerate(params) for k, v in sorted(opt.state.get(p, {}).items())]
    ema = [bits(e) for e in opt.ema_params] if opt.ema_params is not None else None
    return [bits(p) for p in params], state, ema


def torch_pipeline(params, opt, scaled, c):
    """GradScaler's unscale (the op it calls), clip_grad_norm_, then the torch step."""
    grads = [p.grad for p in params if p.grad is not None]
    found = torch.zeros(1, dtype=torch.float32)  # GradScaler's dtypes, whatever the default
    inv = torch.full((1,), 1.0 / S, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    total = torch.nn.utils.clip_grad_norm_(params, c)
    opt.step()
    return float(total), bool(found.item())


# --- against torch's pipeline --------------------------------------------------------

@pytest.mark.parametrize("name", TORCH_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_clip_match_torchs_pipeline(name, dtype, backend):
    c = 1.0
    init = make_params(dtype)
    tp, topt = build(name, init)
    ap, aopt = build(name, init, aft.CLASSES[name], backend, max_grad_norm=c)
    clipped = 0
    for t in range(1, 10):
        scaled = [g * S for g in grads_at(t, dtype)]
        give(tp, scaled)
        give(ap, scaled)
        total, found = torch_pipeline(tp, topt, scaled, c)
        res = aopt.step(grad_scale=S)
        assert not found and not res.skipped and res is aopt.last_result
        assert abs(res.grad_norm - total) <= 64 * np.finfo(dtype).eps * total, t
        clipped += total > c
        for i, (a, b) in enumerate(zip(ap, tp)):
            close(a, b, dtype, f"{name} step {t} params[{i}]")
        for i, (a, b) in enumerate(zip(ap, tp)):
            for k, v in topt.state[b].items():
                close(aopt.state[a][k], v, dtype, f"{name} step {t} state[{i}][{k!r}]")
    assert 0 < clipped < 9  # both sides of the clamp were exercised


def test_mixed_dtypes_clip_over_all_params():
    """One norm over the float32 and the float64 buffers (two kernel calls, one guard)."""
    init = make_params(np.float32)[:3] + make_params(np.float64, seed=8)[3:]
    tp, topt = build("Adam", init)
    ap, aopt = build("Adam", init, aft.Adam, max_grad_norm=1.0)
    assert len(aopt._slabs) == 2
    for t in range(1, 7):
        grads = [g.to(p.dtype) * S for g, p in zip(grads_at(t, np.float64), init)]
        give(tp, grads)
        give(ap, grads)
        total, _ = torch_pipeline(tp, topt, grads, 1.0)
        res = aopt.step(grad_scale=S)
        assert abs(res.grad_norm - total) <= 1e-5 * total
    for i, (a, b) in enumerate(zip(ap, tp)):
        close(a, b, np.float32, f"params[{i}]")


def test_params_without_grad_are_left_out_of_the_norm_and_the_step():
    init = make_params(np.float32)
    tp, topt = build("AdamW", init)
    ap, aopt = build("AdamW", init, aft.AdamW, max_grad_norm=0.5, ema_decay=0.9)
    for t in range(1, 6):
        grads = [g * S for g in grads_at(t, np.float32)]
        give(tp, grads)
        give(ap, grads)
        if t >= 3:  # zero_grad(set_to_none=True) for one param: torch skips it
            tp[1].grad = ap[1].grad = None
        ema1 = bits(aopt.ema_params[1])
        total, _ = torch_pipeline(tp, topt, grads, 0.5)
        res = aopt.step(grad_scale=S)
        assert abs(res.grad_norm - total) <= 1e-5 * total
        if t >= 3:
            assert bits(aopt.ema_params[1]) == ema1  # skipped, its EMA included
    assert aopt.state[ap[1]]["step"].item() == 2 and aopt.state[ap[0]]["step"].item() == 5
    for i, (a, b) in enumerate(zip(ap, tp)):
        close(a, b, np.float32, f"params[{i}]")


def _scaler_loop(opt_of, clip, steps=10, ema=False):
    """A mixed-precision-style loop through torch.amp.GradScaler; step 4 overflows."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = opt_of(m)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    g = torch.Generator().manual_seed(3)
    results = []
    for t in range(steps):
        x, y = torch.randn(16, 8, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        scaler.scale(loss).backward()
        if t == 4:
            m[2].bias.grad[-1] = float("inf")  # the last element of the last tensor
        if isinstance(opt, torch.optim.Optimizer) and not isinstance(opt, aft.Optimizer):
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        before = snapshot(list(m.parameters()), opt) if ema else None
        scaler.step(opt)
        scaler.update()
        if isinstance(opt, aft.Optimizer):
            results.append(opt.last_result)
            if t == 4 and ema:
                assert snapshot(list(m.parameters()), opt) == before
    return m, opt, results


@pytest.mark.parametrize("kw", [{"max_grad_norm": 0.05},
                                {"max_grad_norm": 0.05, "skip_nonfinite": True,
                                 "ema_decay": 0.9}], ids=["clip", "clip-skip-ema"])
def test_grad_scaler_takes_the_guarded_path(kw):
    m1, o1, _ = _scaler_loop(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), 0.05)
    m2, o2, res = _scaler_loop(lambda m: aft.AdamW(m.parameters(), lr=1e-2, **kw), 0.05,
                               ema="ema_decay" in kw)
    assert [r.skipped for r in res] == [t == 4 for t in range(10)]
    assert all(r.grad_norm is not None for r in res)
    for a, b in zip(m1.parameters(), m2.parameters()):
        close(b, a, np.float32, "GradScaler + clip")
        assert o1.state[a]["step"].item() == o2.state[b]["step"].item() == 9


def test_grad_scale_twice_is_refused():
    p = torch.nn.Parameter(torch.randn(5))
    opt = aft.Adam([p])
    p.grad = torch.ones(5)
    opt.grad_scale = torch.tensor(4.0)  # what GradScaler sets
    before = bits(p)
    with pytest.raises(ValueError, match="unscaled twice"):
        opt.step(grad_scale=4.0)
    assert bits(p) == before and p not in opt.state


# --- the non-finite skip -----------------------------------------------------------

WHERE = {"first": (0, (0, 0)), "middle": (2, (1, 2, 0)), "scalar": (3, ()),
         "last": (4, (-1,)), "float64": (5, (2,))}


def _skip_pair(name, **kw):
    init = make_params(np.float32) + [torch.randn(3, dtype=torch.float64)]
    kw = dict(dict(skip_nonfinite=True, ema_decay=0.9, max_grad_norm=1.0), **kw)
    pa, a = build(name, init, aft.CLASSES[name], **kw)
    pb, b = build(name, init, aft.CLASSES[name], **kw)
    return pa, a, pb, b


def _grads_mixed(t):
    return grads_at(t, np.float32) + [torch.randn(3, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(t))]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")],
                         ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("name", ALL_NAMES)
def test_nonfinite_step_is_skipped_bit_for_bit(name, bad, where):
    pa, a, pb, b = _skip_pair(name)
    for t in range(1, 4):
        give(pa, _grads_mixed(t))
        give(pb, _grads_mixed(t))
        a.step()
        b.step()
    before = snapshot(pa, a)
    sd_before = copy.deepcopy(a.state_dict())
    poisoned = _grads_mixed(99)
    k, idx = WHERE[where]
    poisoned[k][idx] = bad
    give(pa, poisoned)
    res = a.step()
    assert res.skipped and not np.isfinite(res.grad_norm)
    assert snapshot(pa, a) == before
    sd = a.state_dict()
    for i, st in sd_before["state"].items():
        for key, v in st.items():
            assert bits(sd["state"][i][key]) == bits(v), (i, key)
    # The next finite steps continue exactly as if the bad one never happened.
    for t in range(4, 7):
        give(pa, _grads_mixed(t))
        give(pb, _grads_mixed(t))
        ra, rb = a.step(), b.step()
        assert ra == rb and not ra.skipped
    assert snapshot(pa, a) == snapshot(pb, b)


def test_skip_with_a_closure_returns_the_loss():
    pa, a, _, _ = _skip_pair("AdamW")
    give(pa, _grads_mixed(1))
    pa[0].grad[0, 0] = float("nan")
    before = snapshot(pa, a)
    assert a.step(lambda: 42.0) == 42.0
    assert a.last_result.skipped and snapshot(pa, a) == before
    assert all(p not in a.state for p in pa)  # never stepped: no state, as torch


def test_without_skip_nonfinite_values_propagate_as_in_torch():
    init = make_params(np.float32)
    tp, topt = build("Adam", init)
    ap, aopt = build("Adam", init, aft.Adam, max_grad_norm=1.0)
    grads = [g * S for g in grads_at(1, np.float32)]
    grads[1][3] = float("nan")
    give(tp, grads)
    give(ap, grads)
    torch_pipeline(tp, topt, grads, 1.0)
    res = aopt.step(grad_scale=S)
    assert not res.skipped and np.isnan(res.grad_norm)
    for a, b in zip(ap, tp):
        assert torch.isnan(a).all() and torch.isnan(b).all()


# --- the EMA --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_matches_a_numpy_transcription(name, dtype, backend):
    d = 0.9
    params, opt = build(name, make_params(dtype), aft.CLASSES[name], backend, ema_decay=d)
    views = opt.ema_params
    assert [e.shape for e in views] == [p.shape for p in params]
    assert all(e.dtype == p.dtype and e.data_ptr() != p.data_ptr()
               for e, p in zip(views, params))
    ema = [p.detach().numpy().copy() for p in params]
    assert [bits(e) for e in views] == [e.tobytes() for e in ema]
    dt = np.dtype(dtype).type
    for t in range(1, 8):
        give(params, grads_at(t, dtype))
        res = opt.step()
        # (Lamb clips by default: timm's global clip is its max_grad_norm)
        assert (res.grad_norm is None) == (opt.max_grad_norm is None) and not res.skipped
        ema = [dt(d) * e + dt(1 - d) * p.detach().numpy() for e, p in zip(ema, params)]
        # live views: the same tensors, updated in place
        for i, (mine, want) in enumerate(zip(views, ema)):
            assert bits(mine) == np.asarray(want, dtype).tobytes(), (t, i)


def test_ema_after_add_param_group():
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2, 2))]
    opt = aft.Adam([ps[0]], lr=0.1, ema_decay=0.5)
    ps[0].grad = torch.ones(5)
    opt.step()
    kept = bits(opt.ema_params[0])
    opt.add_param_group({"params": [ps[1]]})  # a new layout: the EMA is carried over
    assert bits(opt.ema_params[0]) == kept and bits(opt.ema_params[1]) == bits(ps[1])
    v0 = ps[1].detach().numpy().copy()
    ps[1].grad = torch.ones(2, 2)
    opt.step()  # ps[0] steps too: its grad is still bound
    half = np.float32(0.5)
    want = half * v0 + half * ps[1].detach().numpy()
    assert bits(opt.ema_params[1]) == want.tobytes()


def test_no_ema_without_ema_decay():
    p = torch.nn.Parameter(torch.randn(3))
    opt = aft.SGD([p], lr=0.1)
    assert opt.ema_params is None and opt.ema_decay is None
    assert "ema" not in opt.state_dict()


# --- checkpoints with the EMA ----------------------------------------------------------

def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_checkpoint_with_ema_continues_identically():
    init = make_params(np.float32)
    kw = dict(max_grad_norm=1.0, skip_nonfinite=True, ema_decay=0.99)
    pa, a = build("AdamW", init, aft.AdamW, **kw)
    for t in range(1, 4):
        give(pa, grads_at(t, np.float32))
        a.step(grad_scale=2.0)
    sd = a.state_dict()
    assert set(sd) == {"state", "param_groups", "ema"} and set(sd["ema"]) == set(range(5))
    assert sd["ema"][4].data_ptr() == a.ema_params[4].data_ptr()  # views, as the state is
    sd = _roundtrip(sd)
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    b = aft.AdamW([{"params": pb[:2]}, {"params": pb[2:], "lr": 1.5e-3}], lr=3e-3, **kw)
    b.load_state_dict(sd)
    for t in range(4, 7):
        give(pa, grads_at(t, np.float32))
        give(pb, grads_at(t, np.float32))
        assert a.step(grad_scale=2.0) == b.step(grad_scale=2.0)
    assert snapshot(pa, a) == snapshot(pb, b)


def test_ema_checkpoint_both_ways_with_torch_optim():
    init = make_params(np.float32)
    pa, a = build("AdamW", init, aft.AdamW, ema_decay=0.9)
    pt, t_opt = build("AdamW", init)
    for t in range(1, 4):
        give(pa, grads_at(t, np.float32))
        give(pt, grads_at(t, np.float32))
        a.step()
        t_opt.step()
    # adamfast -> torch.optim: the extra top-level key is ignored; the run continues.
    pt2 = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    t2 = torch.optim.AdamW([{"params": pt2[:2]}, {"params": pt2[2:], "lr": 1.5e-3}], lr=3e-3)
    t2.load_state_dict(_roundtrip(a.state_dict()))
    assert "ema" not in t2.state_dict()
    # torch.optim -> adamfast: no "ema" in the checkpoint, so the EMA restarts from the params.
    ema_before = bits(a.ema_params[0])
    a.load_state_dict(_roundtrip(t_opt.state_dict()))
    assert bits(a.ema_params[0]) != ema_before
    assert [bits(e) for e in a.ema_params] == [bits(p) for p in pa]
    for t in range(4, 6):
        give(pa, grads_at(t, np.float32))
        give(pt2, grads_at(t, np.float32))
        a.step()
        t2.step()
    for x, y in zip(pa, pt2):
        close(x, y, np.float32, "continued in torch.optim")


def test_bad_ema_in_a_checkpoint_changes_nothing():
    pa, a = build("Adam", make_params(np.float32), aft.Adam, ema_decay=0.9)
    give(pa, grads_at(1, np.float32))
    a.step()
    before = snapshot(pa, a)
    sd = copy.deepcopy(a.state_dict())
    sd["ema"][2] = torch.zeros(7)
    with pytest.raises(ValueError, match="ema"):
        a.load_state_dict(sd)
    del sd["ema"][2]
    with pytest.raises(ValueError, match="ema"):
        a.load_state_dict(sd)
    sd["ema"] = [1, 2]
    with pytest.raises(TypeError, match="ema"):
        a.load_state_dict(sd)
    assert snapshot(pa, a) == before


# --- the rest of the contract ------------------------------------------------------------

def test_thread_count_invariance(threads):
    compiled = [b for b in BACKENDS if b != "numpy"]
    if not compiled:
        pytest.skip("no compiled backend")
    n = (1 << 19) + 12345
    for backend in compiled:
        out = []
        for nt in (1, 2):
            adamfast.set_num_threads(nt)
            g = torch.Generator().manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(n, generator=g)),
                  torch.nn.Parameter(torch.randn(999, generator=g))]
            opt = aft.AdamW(ps, backend=backend, max_grad_norm=10.0, skip_nonfinite=True,
                            ema_decay=0.99)
            norms = []
            for _ in range(3):
                give(ps, [torch.randn(p.shape, generator=g) for p in ps])
                norms.append(opt.step(grad_scale=8.0).grad_norm)
            out.append((norms, snapshot(ps, opt)))
        assert out[0] == out[1], backend


def test_grad_scale_alone_equals_unscaled_grads():
    init = make_params(np.float64)
    pa, a = build("Adam", init, aft.Adam)
    pb, b = build("Adam", init, aft.Adam)
    for t in range(1, 5):
        give(pa, [g * 4.0 for g in grads_at(t, np.float64)])
        give(pb, grads_at(t, np.float64))
        assert a.step(grad_scale=4.0) == b.step() == adamfast.StepResult()
    assert snapshot(pa, a) == snapshot(pb, b)


@pytest.mark.parametrize("bad,exc", [(0.0, ValueError), (-2.0, ValueError),
                                     (float("inf"), ValueError), ("x", TypeError)])
def test_bad_grad_scale_changes_nothing(bad, exc):
    p = torch.nn.Parameter(torch.randn(4))
    opt = aft.AdamW([p], max_grad_norm=1.0)
    p.grad = torch.ones(4)
    before = bits(p)
    with pytest.raises(exc, match="grad_scale"):
        opt.step(grad_scale=bad)
    assert bits(p) == before and p not in opt.state


def test_tensor_grad_scale_is_accepted():
    pa, a = build("Adam", make_params(np.float32), aft.Adam, max_grad_norm=1.0)
    give(pa, grads_at(1, np.float32))
    assert not a.step(grad_scale=torch.tensor(2.0)).skipped


@pytest.mark.parametrize("kw,exc", [({"max_grad_norm": -1.0}, ValueError),
                                    ({"max_grad_norm": float("nan")}, ValueError),
                                    ({"skip_nonfinite": "yes"}, TypeError),
                                    ({"ema_decay": 1.5}, ValueError)])
def test_bad_guard_options_are_refused_with_nothing_changed(kw, exc):
    p = torch.nn.Parameter(torch.randn(3))
    ptr = p.data_ptr()
    with pytest.raises(exc, match=next(iter(kw))):
        aft.Adam([p], **kw)
    assert p.data_ptr() == ptr


def test_guarded_step_is_still_one_kernel_call_per_dtype():
    ps32 = [torch.nn.Parameter(torch.randn(7, 3)) for _ in range(40)]
    ps64 = [torch.nn.Parameter(torch.randn(11, dtype=torch.float64)) for _ in range(10)]
    opt = aft.Adam([{"params": ps32 + ps64[:5]}, {"params": ps64[5:], "lr": 1e-4}],
                   max_grad_norm=1.0, skip_nonfinite=True, ema_decay=0.9)
    b = opt._backend
    calls = []

    class Spy:
        def __getattr__(self, name):  # everything else (the norm pass...) is the backend's
            return getattr(b, name)

        def kernel(self, *a):
            calls.append(a[-1] is not None)  # the EMA rides along in the same call
            return b.kernel(*a)

        def step_fast(self, *a):
            return False  # decline: every update goes through kernel()

    opt._backend = Spy()
    for p in ps32 + ps64:
        p.grad = torch.ones_like(p)
    opt.step()
    assert calls == [True, True]
