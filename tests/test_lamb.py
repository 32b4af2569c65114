"""Lamb: the two-pass per-tensor step (adamfast._reduce) on every backend against the
NumPy reference (params and every state buffer, bit for bit), the reference against
a float64 transcription of timm's formulas, the guard with Lamb, and adamfast.torch.Lamb
against timm's own Lamb (loaded from its file by tests/_timm.py), state_dicts both ways.
"""

import io
import math

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, _engine, _reduce
from adamfast.algorithms import ALGORITHMS
from adamfast.algorithms import lamb as lamb_module

import _timm
from conftest import BACKENDS, COMPILED

LAMB = ALGORITHMS["Lamb"]
KIND = "lamb"
NAMES = ("exp_avg", "exp_avg_sq")
SIZES = (0, 1, 7, 17, 1023, 1025, 100003)
STEPS = 12
# Two groups that switch on everything between them: L2 with the ratio, and
# decoupled decay with trust clipping and no bias correction or averaging.
GROUPS = (dict(lr=1e-2, weight_decay=0.05),
          dict(lr=3e-3, weight_decay=0.2, decoupled_decay=True, trust_clip=True,
               bias_correction=False, grad_averaging=False))


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def _grads(n, dtype, t):
    rng = np.random.default_rng(700 + t)
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, size=n)
    g[rng.random(n) < 0.05] = 0.0
    return g.astype(dtype)


def _layout(sizes, ngroups):
    """(tensor boundaries, chunk table, group of each tensor) for tensors of ``sizes``,
    the groups taking consecutive runs of tensors."""
    bounds = np.array([0, *np.cumsum(sizes)], dtype=np.intp)
    per = -(-len(sizes) // ngroups)
    groups = [min(i // per, ngroups - 1) for i in range(len(sizes))]
    spans = [(int(bounds[[i for i, g in enumerate(groups) if g == gi][0]]),
              int(bounds[max(i for i, g in enumerate(groups) if g == gi) + 1]))
             for gi in range(ngroups)]
    return bounds, _engine.chunk_table(spans)


def _run(backend, sizes, dtype, ngroups=1, nthreads=None, steps=STEPS, mult=1.0):
    """``steps`` two-pass steps through run_kernel, as every front end makes them."""
    b = _dispatch.get_backend(backend)
    n = int(sum(sizes))
    rng = np.random.default_rng(n + len(sizes))
    p = rng.standard_normal(n).astype(dtype)
    p[: min(n, 3)] = 0.0  # a zero start: a zero-norm tensor (ratio 1) when it is tiny
    state = tuple(np.zeros(n, dtype) for _ in NAMES)
    bounds, chunks = _layout(sizes, ngroups)
    hps = [LAMB.validate(dict(LAMB.defaults, **GROUPS[gi % len(GROUPS)]))
           for gi in range(ngroups)]
    for t in range(1, steps + 1):
        rows = [(mult,) + tuple(LAMB.scalars(t, hp)[0][1:]) for hp in hps]
        _engine.run_kernel(b, b.kind_id(KIND), p, _grads(n, dtype, t), state, rows, chunks,
                           nthreads or _dispatch.get_num_threads(), tensors=bounds)
    return (p,) + state


def test_spec_slots_and_bytes():
    assert LAMB.state_names(KIND) == NAMES
    # 4 (the clip's norm pass) + 24 (pass 1: p, g, m, v read; m, v written) + 16 (pass 2:
    # p, m, v read; p written).
    assert LAMB.bytes_per_param(KIND, 4) == 44
    row, gstate = LAMB.scalars(1, LAMB.validate(LAMB.defaults))
    assert gstate is None and len(row) == len(LAMB.slots)
    for j, name in enumerate(LAMB.slots):
        assert getattr(lamb_module, name) == j
    assert set(_reduce.KIND_IDS) == {_dispatch.get_backend("numpy").kind_id(KIND)}


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_backends_match_reference_one_tensor(backend, dtype, n):
    got = _run(backend, [n], dtype)
    want = _run("numpy", [n], dtype)
    for name, a, w in zip(("params",) + NAMES, got, want):
        assert a.dtype == dtype
        assert bits(a) == bits(w), f"{backend} Lamb {name} differs from the reference"


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_match_reference_many_tensors(backend, dtype):
    # Every size in one optimizer, across two groups; chunk and tensor boundaries differ.
    sizes = [7, 100003, 0, 1, 1025, 17, 1023, 3 * 16384 + 5]
    got = _run(backend, sizes, dtype, ngroups=2)
    want = _run("numpy", sizes, dtype, ngroups=2)
    for name, a, w in zip(("params",) + NAMES, got, want):
        assert bits(a) == bits(w), f"{backend} Lamb {name} differs from the reference"


@pytest.mark.parametrize("backend", COMPILED)
def test_one_and_two_threads_bit_identical(backend):
    sizes = [(1 << 19) + 17, 16384 * 3 + 100, 5, 1 << 18]  # above both serial cut-offs
    one = _run(backend, sizes, np.float32, ngroups=2, nthreads=1, steps=3)
    two = _run(backend, sizes, np.float32, ngroups=2, nthreads=2, steps=3)
    for a, b in zip(one, two):
        assert bits(a) == bits(b)


def test_split_never_straddles_a_tensor():
    bounds, chunks = _layout([5, 40000, 0, 16384, 3], 2)
    pass1, pass2, rows, order, starts = _reduce.split(chunks, bounds, int(bounds[-1]))
    edges = set(bounds.tolist())
    covered = []
    for (r, lo, hi), (t, lo2, hi2) in zip(pass1.tolist(), pass2.tolist()):
        assert (lo, hi) == (lo2, hi2) and hi - lo <= _engine.CHUNK
        inside = [e for e in edges if lo < e < hi]
        assert not inside, (lo, hi, inside)
        covered += range(lo, hi)
    assert covered == list(range(int(bounds[-1])))
    # one row per touched tensor (4: the empty one is not), each its group's
    assert rows.tolist() == [0, 0, 1, 1]


# --- the maths: the reference against timm's formulas in float64 -------------------------

def _timm_formula(ps, grads_per_step, hp, max_grad_norm):
    """timm's Lamb step in float64 NumPy, written from its formulas."""
    beta1, beta2 = hp["betas"]
    beta3 = 1 - beta1 if hp["grad_averaging"] else 1.0
    P = [p.copy() for p in ps]
    M = [np.zeros_like(p) for p in ps]
    V = [np.zeros_like(p) for p in ps]
    wd, lr = hp["weight_decay"], hp["lr"]
    for t, gs in enumerate(grads_per_step, 1):
        clip = 1.0
        if max_grad_norm is not None:
            clip = max(math.sqrt(sum(float((g * g).sum()) for g in gs)) / max_grad_norm, 1.0)
        bc1, bc2 = (1 - beta1 ** t, 1 - beta2 ** t) if hp["bias_correction"] else (1.0, 1.0)
        for i, g in enumerate(gs):
            g = g / clip
            M[i] = beta1 * M[i] + beta3 * g
            V[i] = beta2 * V[i] + (1 - beta2) * g * g
            u = (M[i] / bc1) / (np.sqrt(V[i]) / math.sqrt(bc2) + hp["eps"])
            if wd != 0:
                if hp["decoupled_decay"]:
                    P[i] = P[i] * (1 - lr * wd)
                else:
                    u = u + wd * P[i]
            ratio = 1.0
            if wd != 0 or hp["always_adapt"]:
                w, un = np.linalg.norm(P[i]), np.linalg.norm(u)
                ratio = w / un if w > 0 and un > 0 else 1.0
                if hp["trust_clip"]:
                    ratio = min(ratio, 1.0)
            P[i] = P[i] - lr * ratio * u
    return P, M, V


OPTIONS = [dict(), dict(weight_decay=0.0), dict(weight_decay=0.0, always_adapt=True),
           dict(decoupled_decay=True, weight_decay=0.1), dict(trust_clip=True, weight_decay=0.3),
           dict(grad_averaging=False), dict(bias_correction=False), dict(max_grad_norm=None),
           dict(max_grad_norm=0.05)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in
                                                                   o.items()) or "defaults")
def test_reference_matches_timm_formula(options):
    rng = np.random.default_rng(4)
    ps = [rng.standard_normal(s) for s in (7, 1025, 40000)]
    grads = [[rng.standard_normal(p.size) for p in ps] for _ in range(6)]
    opt = adamfast.Lamb([p.copy() for p in ps], lr=1e-2, backend="numpy", **options)
    for gs in grads:
        opt.step(gs)
    hp = dict(LAMB.defaults, lr=1e-2, **options)
    P, M, V = _timm_formula(ps, grads, hp, hp["max_grad_norm"])
    # float64 both, the same operations up to the clip (a division there, a multiply
    # by its reciprocal here) and the ratio's summation order: a few ulps.
    for a, b in zip(opt.params, P):
        np.testing.assert_allclose(a, b, rtol=64 * np.finfo(float).eps, atol=1e-15)
    for a, b in zip(np.split(opt.state["exp_avg_sq"], [7, 1032]), V):
        np.testing.assert_allclose(a, b, rtol=64 * np.finfo(float).eps, atol=0)


def test_ratio_rules():
    row = [0.0] * len(LAMB.slots)
    ratio = lamb_module.trust_ratio
    assert ratio((4.0, 1.0), row) == 1.0  # not adapting
    row[lamb_module.ADAPT] = 1.0
    assert ratio((4.0, 1.0), row) == 2.0
    assert ratio((0.0, 1.0), row) == 1.0 and ratio((4.0, 0.0), row) == 1.0
    assert ratio((math.nan, 1.0), row) == 1.0  # timm's where(w > 0, ...) on a NaN norm
    row[lamb_module.TCLIP] = 1.0
    assert ratio((4.0, 1.0), row) == 1.0 and ratio((1.0, 4.0), row) == 0.5


# --- the front ends ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_class_and_functional_step_agree(backend):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1025).astype(np.float32)
    opt = adamfast.optim.Lamb([p0.copy()], lr=1e-2, weight_decay=0.1, max_grad_norm=0.5,
                              backend=backend)
    p = p0.copy()
    state = [np.zeros_like(p) for _ in NAMES]
    for t in range(1, 6):
        g = rng.standard_normal(p.size).astype(np.float32)
        r1 = opt.step([g])
        r2 = adamfast.functional.lamb_step(p, g, *state, step=t, lr=1e-2, weight_decay=0.1,
                                           max_grad_norm=0.5, backend=backend)
        assert r1.grad_norm == r2.grad_norm and r1.grad_norm is not None
    assert bits(opt.params[0]) == bits(p)
    for name, s in zip(NAMES, state):
        assert bits(opt.state[name]) == bits(s)


def test_signature_and_clip_default():
    import inspect

    names = list(inspect.signature(adamfast.Lamb).parameters)
    assert names[:11] == ["params", "lr", "bias_correction", "betas", "eps", "weight_decay",
                          "grad_averaging", "max_grad_norm", "trust_clip", "always_adapt",
                          "decoupled_decay"]
    assert adamfast.Lamb is adamfast.optim.Lamb
    p = [np.ones(3)]
    assert adamfast.Lamb(p).max_grad_norm == 1.0
    assert adamfast.Lamb(p, max_grad_norm=None).max_grad_norm is None
    assert adamfast.Lamb(p, 1e-3, True, (0.9, 0.999), 1e-6, 0.01, True, 2.5).max_grad_norm == 2.5
    assert adamfast.Lamb(p, max_grad_norm=2.0).param_groups[0]["max_grad_norm"] == 2.0
    assert "max_grad_norm" in inspect.signature(adamfast.functional.lamb_step).parameters


def test_timm_clip_formula():
    # grads / max(norm / max_grad_norm, 1): no 1e-6, and no change below the limit.
    g = np.array([3.0, 4.0])  # norm 5
    for mgn, coef in ((1.0, 1 / 5.0), (5.0, 1.0), (10.0, 1.0), (2.5, 1 / 2.0)):
        p, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
        r = adamfast.functional.lamb_step(p, g, m, v, step=1, max_grad_norm=mgn,
                                          weight_decay=0.0, backend="numpy")
        assert r.grad_norm == 5.0
        np.testing.assert_array_equal(m, (1 - 0.9) * (g * coef))  # beta3 = 1 - beta1
    p, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
    adamfast.functional.lamb_step(p, g, m, v, step=1, max_grad_norm=None, backend="numpy")
    np.testing.assert_array_equal(m, (1 - 0.9) * g)


def test_refusals_and_nothing_written():
    p = [np.ones(3)]
    with pytest.raises(ValueError, match="caution"):
        adamfast.Lamb(p, caution=True)
    with pytest.raises(ValueError, match="corrected_weight_decay"):
        adamfast.Lamb(p, corrected_weight_decay=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        adamfast.Lamb(p, max_grad_norm=-1.0)
    q, m, v = np.ones(4), np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="eps"):
        adamfast.functional.lamb_step(q, np.ones(4), m, v, step=1, eps=-1.0)
    assert (q == 1).all() and not m.any() and not v.any()


@pytest.mark.parametrize("backend", COMPILED)
def test_fast_paths_decline(backend):
    b = _dispatch.get_backend(backend)
    if b.step_fast is None:
        pytest.skip("no fast path")
    p, g = np.ones(8, np.float32), np.ones(8, np.float32)
    s = (np.zeros(8, np.float32), np.zeros(8, np.float32))
    row = tuple(map(float, LAMB.scalars(1, LAMB.validate(LAMB.defaults))[0]))
    assert b.step_fast(b.kind_id(KIND), p, g, s, row, 1) is False
    assert (p == 1).all() and not s[0].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_guard_with_lamb(backend):
    rng = np.random.default_rng(8)
    ps = [rng.standard_normal(s).astype(np.float32) for s in (33, 1025)]
    a = adamfast.Lamb([p.copy() for p in ps], backend=backend, ema_decay=0.9,
                      skip_nonfinite=True)
    b = adamfast.Lamb([p.copy() for p in ps], backend=backend)
    gs = [rng.standard_normal(p.size).astype(np.float32) for p in ps]
    # grad_scale: the same step as the unscaled gradients (a power of two: exact).
    ra = a.step([g * 1024 for g in gs], grad_scale=1024.0)
    b.step(gs)
    assert ra.grad_norm is not None and not ra.skipped
    for x, y in zip(a.params, b.params):
        assert bits(x) == bits(y)
    # The EMA after step 1: d*p0 + (1 - d)*p1 in the dtype.
    for e, p0, p1 in zip(a.ema_params, ps, a.params):
        want = np.float32(0.9) * p0 + np.float32(1 - 0.9) * p1
        assert bits(e) == bits(want)
    before = [x.copy() for x in a.params] + [a.state[k].copy() for k in NAMES]
    bad = [g.copy() for g in gs]
    bad[1][5] = np.inf
    r = a.step(bad)
    assert r.skipped and a.step_count == 1
    for x, y in zip(before, list(a.params) + [a.state[k] for k in NAMES]):
        assert bits(x) == bits(y)


def test_interrupt_after_pass_one_finishes_the_step(monkeypatch):
    rng = np.random.default_rng(9)
    ps = [rng.standard_normal(s) for s in (10, 20)]
    a = adamfast.Lamb([p.copy() for p in ps], backend="numpy")
    b = adamfast.Lamb([p.copy() for p in ps], backend="numpy")
    gs = [rng.standard_normal(p.size) for p in ps]
    b.step(gs)
    real = _reduce._second_table
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_reduce, "_second_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        a.step(gs)
    assert a.step_count == 1  # counted with its buffers: the step was finished
    for x, y in zip(a.params, b.params):
        assert bits(x) == bits(y)


# --- against timm ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_lamb():
    torch = pytest.importorskip("torch")
    return torch, _timm.load("lamb").Lamb


def _pair(torch, timm_cls, dtype, backend, **kw):
    import adamfast.torch as aft

    torch.manual_seed(0)
    shapes = [(301, 7), (1025,), (3,)]
    w0 = [torch.randn(s, dtype=dtype) for s in shapes]
    a = [torch.nn.Parameter(w.clone()) for w in w0]
    c = [torch.nn.Parameter(w.clone()) for w in w0]

    def grouped(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3}]
    return a, c, timm_cls(grouped(a), **kw), aft.Lamb(grouped(c), backend=backend, **kw)


def _steps(torch, a, c, timm_opt, ours, steps, dtype, scale=1.0):
    peak = timm_opt.__dict__.setdefault("_test_peak", {})
    for _ in range(steps):
        for x, y in zip(a, c):
            g = torch.randn(x.shape, dtype=dtype) * scale
            x.grad = g.clone()
            y.grad = g.clone()
        timm_opt.step()
        ours.step()
        for j, x in enumerate(a):
            now = timm_opt.state[x]["exp_avg"].abs()
            old = peak.get(j)
            peak[j] = now if old is None else torch.maximum(old, now)


def _assert_near_timm(torch, a, c, timm_opt, ours, dtype, steps):
    """Tolerances in ulps of the dtype (eps), from the operation-order differences.

    * exp_avg: torch's mul_ then add_(alpha) may fuse into an FMA, and timm divides the
      gradients by the clip where the kernel multiplies by its reciprocal (one more
      rounding of g): with P the running maximum of |exp_avg|, each step differs by at
      most 3*eps*P, damped by beta1 each step: 3*eps*P/(1 - beta1) in all, or
      3*eps*P*steps without gradient averaging (beta3 = 1: no damping of the new term);
    * exp_avg_sq: a sum of squares, no cancellation: g rounded once more (2 ulps in
      g*g), the product and the sum: 8 ulps per element;
    * params: each step's update u*r carries the relative errors above plus timm's
      norms taken in the dtype (torch's cascade sum: ~log2(n) ulps each, so up to ~40
      ulps in r for these sizes); each subtraction rounds once more relative to |p|.
      Per step at most 48*eps*|lr*r*u| + eps*|p|; with |lr*r*u| <= lr*|p|_max-scale
      updates that is bounded by 64*eps*steps*(|p| + lr) over the run.

    Measured (10 steps, every case of TIMM_CASES, float32 and float64): params 2.4 of
    the bound's eps*steps*(|p| + lr), exp_avg 3.3 ulps of P, exp_avg_sq 4.1 ulps.
    """
    eps = torch.finfo(dtype).eps
    g0 = timm_opt.param_groups[0]
    b1 = g0["betas"][0]
    damp = steps if not g0["grad_averaging"] else 1 / (1 - b1)
    for j, (x, y) in enumerate(zip(a, c)):
        d = (x.detach() - y.detach()).abs()
        bound = 64 * eps * steps * (x.detach().abs() + 1e-2)
        assert bool((d <= bound).all()), float((d / bound).max())
        st, ours_st = timm_opt.state[x], ours.state[y]
        diff = (st["exp_avg"] - ours_st["exp_avg"]).abs()
        peak = timm_opt._test_peak[j]
        assert bool((diff <= 3 * eps * peak * damp).all()), \
            float((diff / (eps * peak)).nan_to_num(0).max())
        sq = st["exp_avg_sq"]
        assert bool(((sq - ours_st["exp_avg_sq"]).abs() <= 8 * eps * sq).all())


TIMM_CASES = {
    "defaults": dict(),
    "wd0": dict(weight_decay=0.0),
    "wd0-always_adapt": dict(weight_decay=0.0, always_adapt=True),
    "decoupled": dict(decoupled_decay=True, weight_decay=0.1),
    "trust_clip": dict(trust_clip=True, weight_decay=0.05),
    "no_grad_averaging": dict(grad_averaging=False),
    "no_bias_correction": dict(bias_correction=False),
    "no_clip": dict(max_grad_norm=None),
    "small_clip": dict(max_grad_norm=0.01),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_timm(timm_lamb, case, dtype_name, backend):
    torch, timm_cls = timm_lamb
    dtype = getattr(torch, dtype_name)
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, backend, **TIMM_CASES[case])
    steps = 10
    _steps(torch, a, c, timm_opt, ours, steps, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype, steps)


def test_state_dict_round_trips_with_timm(timm_lamb):
    torch, timm_cls = timm_lamb
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, "auto")
    for _ in range(5):
        for x in a:
            x.grad = torch.randn(x.shape, dtype=dtype)
        timm_opt.step()
    with torch.no_grad():
        for x, y in zip(a, c):
            y.copy_(x)
    ours.load_state_dict(timm_opt.state_dict())
    assert [g.get("step") for g in ours.state_dict()["param_groups"]] == [5, 5]
    for x, y in zip(a, c):
        for key in NAMES:
            assert torch.equal(timm_opt.state[x][key], ours.state[y][key])
    _steps(torch, a, c, timm_opt, ours, 5, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype, 10)

    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert set(sd["state"][0]) == set(NAMES)
    fresh = [torch.nn.Parameter(y.detach().clone()) for y in c]
    timm2 = timm_cls([{"params": fresh[:2], "lr": 1e-2}, {"params": fresh[2:], "lr": 3e-3}])
    timm2.load_state_dict(sd)
    assert [float(g["step"]) for g in timm2.param_groups] == [10, 10]
    _steps(torch, fresh, c, timm2, ours, 5, dtype)
    _assert_near_timm(torch, fresh, c, timm2, ours, dtype, 15)


def test_torch_signature_and_refusals(timm_lamb):
    torch, timm_cls = timm_lamb
    import inspect

    import adamfast.torch as aft

    ours = list(inspect.signature(aft.Lamb).parameters)
    theirs = [n for n in inspect.signature(timm_cls).parameters]
    assert set(theirs) <= set(ours)
    assert ours[:8] == theirs[:8]  # through max_grad_norm, timm's order
    p = torch.nn.Parameter(torch.zeros(3))
    assert aft.Lamb([p], foreach=True).max_grad_norm == 1.0  # foreach: accepted, ignored
    with pytest.raises(ValueError, match="caution"):
        aft.Lamb([p], caution=True)
    with pytest.raises(ValueError, match="corrected_weight_decay"):
        aft.Lamb([p], corrected_weight_decay=True)


# Which params lack a gradient at which step (0-based), with the pair's groups
# [params 0, 1] and [param 2]: timm counts every step() call in every group's "step".
MISSING = {
    "one-param": {0: (1,), 3: (1,)},
    "whole-group": {0: (0, 1), 2: (2,)},
    "first-two-steps": {0: (2,), 1: (2,)},
}


def _steps_missing(torch, a, c, timm_opt, ours, missing, dtype, steps=6):
    peak = timm_opt.__dict__.setdefault("_test_peak", {})
    for t in range(steps):
        for j, (x, y) in enumerate(zip(a, c)):
            g = torch.randn(x.shape, dtype=dtype)
            none = j in missing.get(t, ())
            x.grad = None if none else g.clone()
            y.grad = None if none else g.clone()
        timm_opt.step()
        ours.step()
        for j, x in enumerate(a):
            if "exp_avg" in timm_opt.state.get(x, {}):
                now = timm_opt.state[x]["exp_avg"].abs()
                old = peak.get(j)
                peak[j] = now if old is None else torch.maximum(old, now)
        sd = ours.state_dict()
        assert [g.get("step") for g in sd["param_groups"]] == \
            [float(g["step"]) for g in timm_opt.param_groups], f"step {t}"
        # timm's group["step"] is live in param_groups too, not only in checkpoints.
        assert [g.get("step") for g in ours.param_groups] == \
            [g.get("step") for g in sd["param_groups"]], f"step {t}"
        assert set(sd["state"]) == set(timm_opt.state_dict()["state"]), f"step {t}"


@pytest.mark.parametrize("missing", list(MISSING))
@pytest.mark.parametrize("backend", BACKENDS)
def test_params_without_grads_count_as_timm(timm_lamb, missing, backend):
    torch, timm_cls = timm_lamb
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, backend)
    _steps_missing(torch, a, c, timm_opt, ours, MISSING[missing], dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype, 6)


def test_a_step_without_any_grad_counts_as_timm(timm_lamb):
    """timm's clip stacks the grads' norms and fails when there are none: without the
    clip, a step() with no gradient at all still advances every group's count."""
    torch, timm_cls = timm_lamb
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, "auto", max_grad_norm=None)
    _steps_missing(torch, a, c, timm_opt, ours, {0: (0, 1, 2), 3: (0, 1, 2)}, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype, 6)


def test_clip_is_read_from_defaults_at_each_step_as_timm(timm_lamb):
    torch, timm_cls = timm_lamb
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, "auto", max_grad_norm=0.5)
    _steps(torch, a, c, timm_opt, ours, 2, dtype, scale=3.0)
    for opt in (timm_opt, ours):
        opt.defaults["max_grad_norm"] = 0.01
    assert ours.max_grad_norm == 0.01
    _steps(torch, a, c, timm_opt, ours, 2, dtype, scale=3.0)
    for opt in (timm_opt, ours):
        opt.defaults["max_grad_norm"] = None
    assert ours.max_grad_norm is None
    _steps(torch, a, c, timm_opt, ours, 2, dtype, scale=3.0)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype, 6)
    # A value timm could not use is refused at the step, before anything is written.
    ours.defaults["max_grad_norm"] = -1.0
    for y in c:
        y.grad = torch.ones_like(y)
    before = [y.detach().clone() for y in c]
    with pytest.raises(ValueError, match=r"defaults\['max_grad_norm'\]"):
        ours.step()
    assert all(torch.equal(y.detach(), b) for y, b in zip(c, before))
    ours.defaults["max_grad_norm"] = 1.0
    ours.step()
