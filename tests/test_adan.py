"""Adan: every backend against the NumPy reference (params and every state buffer, bit
for bit), and adamfast.torch.Adan against timm's own Adan, state_dicts both ways.

timm's package __init__ imports torchvision, so timm/optim/adan.py is loaded from
its file on its own (tests/_timm.py: an installed timm, or timm's wheel); the timm
tests skip when neither is found.
"""

import io

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, _engine
from adamfast.algorithms import ALGORITHMS
from adamfast.algorithms import adan as adan_module

import _timm
from conftest import BACKENDS, COMPILED

ADAN = ALGORITHMS["Adan"]
KIND = "adan"
NAMES = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
SIZES = (0, 1, 7, 17, 1023, 1025, 100003)
STEPS = 20
HP = dict(ADAN.defaults, lr=1e-2, weight_decay=0.05)


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def _grads(n, dtype, t):
    rng = np.random.default_rng(500 + t)
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, size=n)
    g[rng.random(n) < 0.05] = 0.0
    return g.astype(dtype)


def _run(backend, n, dtype, groups, nthreads=None, no_prox=False):
    """STEPS steps of the kernel over ``groups`` groups, each its own lr and decay."""
    b = _dispatch.get_backend(backend)
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(dtype)
    state = tuple(np.zeros(n, dtype) for _ in NAMES)
    bounds = [(i * n // groups, (i + 1) * n // groups) for i in range(groups)]
    chunks = _engine.chunk_table(bounds)
    hps = [ADAN.validate(dict(HP, lr=HP["lr"] * (1 + gi), weight_decay=0.05 * gi,
                              no_prox=no_prox)) for gi in range(groups)]
    for t in range(1, STEPS + 1):
        table = _engine.scalar_table([ADAN.scalars(t, hp)[0] for hp in hps])
        b.kernel(b.kind_id(KIND), p, _grads(n, dtype, t), state, table, chunks,
                 nthreads or _dispatch.get_num_threads())
    return (p,) + state


def test_spec_declares_four_buffers_and_its_slots():
    assert ADAN.state_names(KIND) == NAMES
    assert ADAN.bytes_per_param(KIND, 4) == 44
    row, gstate = ADAN.scalars(1, ADAN.validate(HP))
    assert gstate is None and len(row) == len(ADAN.slots)
    for j, name in enumerate(ADAN.slots):
        assert getattr(adan_module, name) == j


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("no_prox", [False, True])
def test_backends_match_reference_bit_for_bit(backend, dtype, n, no_prox):
    if backend not in adamfast.available_backends():
        pytest.skip(f"{backend} not available")
    groups = 3 if n >= 3 else 1
    got = _run(backend, n, dtype, groups, no_prox=no_prox)
    want = _run("numpy", n, dtype, groups, no_prox=no_prox)
    for name, a, w in zip(("params",) + NAMES, got, want):
        assert a.dtype == dtype
        assert bits(a) == bits(w), f"{backend} Adan {name} differs from the reference"


@pytest.mark.parametrize("backend", COMPILED)
def test_one_and_two_threads_bit_identical(backend):
    if backend not in adamfast.available_backends():
        pytest.skip(f"{backend} not available")
    n = (1 << 19) + 16384 * 3 + 17  # above both serial cut-offs, with a tail
    one = _run(backend, n, np.float32, 3, nthreads=1)
    two = _run(backend, n, np.float32, 3, nthreads=2)
    for a, b in zip(one, two):
        assert bits(a) == bits(b)


def test_first_step_has_no_difference():
    # Step 1: the previous gradient is the gradient itself, so exp_avg_diff stays 0
    # whatever neg_pre_grad held, and neg_pre_grad becomes -g (+0 for a zero g).
    g = np.array([0.5, -2.0, 0.0, 3.0])
    for backend in BACKENDS:
        p = np.ones(4)
        state = (np.zeros(4), np.zeros(4), np.zeros(4), np.full(4, 7.0))
        b = _dispatch.get_backend(backend)
        table = _engine.scalar_table([ADAN.scalars(1, ADAN.validate(HP))[0]])
        b.kernel(b.kind_id(KIND), p, g, state, table, _engine.single_chunks(4), 1)
        assert np.array_equal(state[2], np.zeros(4)), backend
        assert bits(state[3]) == bits(0.0 - g), backend


def test_kernels_check_the_state_tuple():
    p, g = np.zeros(8), np.zeros(8)
    table = _engine.scalar_table([ADAN.scalars(1, ADAN.validate(HP))[0]])
    chunks = _engine.single_chunks(8)
    for backend in BACKENDS:
        b = _dispatch.get_backend(backend)
        kid = b.kind_id(KIND)
        with pytest.raises(ValueError, match="4 state buffer"):
            b.kernel(kid, p, g, (np.zeros(8),) * 3, table, chunks, 1)
        with pytest.raises(TypeError, match="tuple"):
            b.kernel(kid, p, g, [np.zeros(8) for _ in range(4)], table, chunks, 1)
        if backend != "numpy":  # the reference trusts the Python layer's buffer checks
            with pytest.raises(ValueError):
                b.kernel(kid, p, g, tuple(np.zeros(8) for _ in range(3)) + (np.zeros(7),),
                         table, chunks, 1)
        assert not p.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_class_and_functional_step_agree(backend):
    if backend not in adamfast.available_backends():
        pytest.skip(f"{backend} not available")
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1025).astype(np.float32)
    opt = adamfast.optim.Adan([p0.copy()], lr=1e-2, weight_decay=0.1, backend=backend)
    p = p0.copy()
    state = [np.zeros_like(p) for _ in NAMES]
    for t in range(1, 6):
        g = rng.standard_normal(p.size).astype(np.float32)
        opt.step([g])
        adamfast.functional.adan_step(p, g, *state, step=t, lr=1e-2, weight_decay=0.1,
                                      backend=backend)
    assert bits(opt.params[0]) == bits(p)
    for name, s in zip(NAMES, state):
        assert bits(opt.state[name]) == bits(s)


def test_caution_is_refused_and_betas_checked():
    p = [np.zeros(3)]
    with pytest.raises(ValueError, match="caution"):
        adamfast.optim.Adan(p, caution=True)
    with pytest.raises(TypeError, match="betas"):
        adamfast.optim.Adan(p, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match=r"betas\[2\]"):
        adamfast.optim.Adan(p, betas=(0.9, 0.9, 1.0))


# --- against timm -------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_adan():
    torch = pytest.importorskip("torch")
    return torch, _timm.load("adan").Adan


def _pair(torch, timm_cls, dtype, no_prox, backend, groups=2):
    import adamfast.torch as aft

    torch.manual_seed(0)
    shapes = [(301, 7), (1025,), (3,)]
    w0 = [torch.randn(s, dtype=dtype) for s in shapes]
    a = [torch.nn.Parameter(w.clone()) for w in w0]
    c = [torch.nn.Parameter(w.clone()) for w in w0]

    def grouped(ps):
        return [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3,
                                                 "weight_decay": 0.2}][:groups]
    kw = dict(weight_decay=0.05, no_prox=no_prox)
    return a, c, timm_cls(grouped(a), **kw), aft.Adan(grouped(c), backend=backend, **kw)


def _peaks(torch, a, timm_opt):
    # Per timm param, the element-wise running maximum of |exp_avg| and
    # |exp_avg_diff| so far, the state before the first step included: the scale
    # of the terms each step rounds (see _assert_near_timm).
    peak = timm_opt.__dict__.setdefault("_test_peak", {})
    for j, x in enumerate(a):
        st = timm_opt.state.get(x, {})
        for key in ("exp_avg", "exp_avg_diff"):
            if key in st:
                old = peak.get((j, key))
                now = st[key].abs()
                peak[(j, key)] = now if old is None else torch.maximum(old, now)


def _steps(torch, a, c, timm_opt, ours, steps, dtype):
    _peaks(torch, a, timm_opt)
    for _ in range(steps):
        for x, y in zip(a, c):
            g = torch.randn(x.shape, dtype=dtype) * 10.0 ** torch.empty(x.shape, dtype=dtype
                                                                        ).uniform_(-3, 1)
            x.grad = g.clone()
            y.grad = g.clone()
        timm_opt.step()
        ours.step()
        _peaks(torch, a, timm_opt)


def _assert_near_timm(torch, a, c, timm_opt, ours, dtype, lr=1e-2):
    """Tolerances, in ulps of the dtype (eps), from the op-order differences.

    * neg_pre_grad: exact (0 - g, timm's 0 + (-1)*g);
    * exp_avg, exp_avg_diff: torch updates an average with mul_ then add_(alpha),
      which may fuse the add into an FMA (one rounding where we round the product and
      the sum).  With P the running maximum of |x| over the steps, element-wise:
      b*|x_old| <= P and (1-b)*|g| <= |x_new| + b*|x_old| <= 2P, so the two
      extra roundings differ by at most eps*P + eps*P = 2*eps*P per step, and the
      average damps an older error by b each step: in all, at most
      2*eps*P/(1 - b) (25 ulps of P for exp_avg_diff, b = 0.92; 100 for exp_avg,
      b = 0.98; up to 10 measured).  Not relative to the element's final value: an
      average of opposite-signed gradients cancels;
    * exp_avg_sq: a sum of squares, no cancellation: 4 ulps per element (2.6 measured);
    * params: each step's update carries a few ulps of relative error (the above,
      and torch dividing by a scalar may multiply by its reciprocal), and each
      subtraction rounds once more relative to |p|: 32 ulps of |p| + lr over 20 steps
      (9 measured).
    """
    eps = torch.finfo(dtype).eps
    for j, (x, y) in enumerate(zip(a, c)):
        d = (x.detach() - y.detach()).abs()
        assert bool((d <= 32 * eps * (x.detach().abs() + lr)).all()), float(d.max())
        st, ours_st = timm_opt.state[x], ours.state[y]
        assert torch.equal(st["neg_pre_grad"], ours_st["neg_pre_grad"])
        for key in ("exp_avg", "exp_avg_diff"):
            b = timm_opt.param_groups[0]["betas"][0 if key == "exp_avg" else 1]
            peak = timm_opt._test_peak[(j, key)]
            diff = (st[key] - ours_st[key]).abs()
            assert bool((diff <= 2 * eps * peak / (1 - b)).all()), \
                (key, float((diff / (eps * peak)).nan_to_num(0).max()))
        sq = st["exp_avg_sq"]
        assert bool(((sq - ours_st["exp_avg_sq"]).abs() <= 4 * eps * sq).all())


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("no_prox", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_timm(timm_adan, dtype_name, no_prox, backend):
    torch, timm_cls = timm_adan
    if backend not in adamfast.available_backends():
        pytest.skip(f"{backend} not available")
    dtype = getattr(torch, dtype_name)
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, no_prox, backend)
    _steps(torch, a, c, timm_opt, ours, STEPS, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)


def test_state_dict_round_trips_with_timm(timm_adan):
    torch, timm_cls = timm_adan
    dtype = torch.float32
    # timm -> adamfast: 5 timm steps, load into adamfast, then both go on.
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, False, "auto")
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
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)

    # adamfast -> timm: adamfast's state_dict carries timm's keys and group steps.  Through
    # torch.save, as a checkpoint goes: torch's load_state_dict keeps tensors of the right
    # dtype as they are, and adamfast's state_dict holds views of its own buffers.
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert set(sd["state"][0]) == set(NAMES)
    fresh = [torch.nn.Parameter(y.detach().clone()) for y in c]
    timm2 = timm_cls([{"params": fresh[:2], "lr": 1e-2},
                      {"params": fresh[2:], "lr": 3e-3, "weight_decay": 0.2}],
                     weight_decay=0.05)
    timm2.load_state_dict(sd)
    assert [g["step"] for g in timm2.param_groups] == [10, 10]
    _steps(torch, fresh, c, timm2, ours, 5, dtype)
    _assert_near_timm(torch, fresh, c, timm2, ours, dtype)


def test_torch_signature_and_refusals(timm_adan):
    torch, _ = timm_adan
    import inspect

    import adamfast.torch as aft

    names = list(inspect.signature(aft.Adan).parameters)
    assert names[:8] == ["params", "lr", "betas", "eps", "weight_decay", "no_prox", "caution",
                         "foreach"]
    p = torch.nn.Parameter(torch.zeros(3))
    aft.Adan([p], foreach=True)  # accepted and ignored
    with pytest.raises(ValueError, match="caution"):
        aft.Adan([p], caution=True)


# Which params lack a gradient at which step (0-based), with the pair's groups
# [params 0, 1] and [param 2]: timm counts every step() call in every group's "step",
# and a param's first gradient at a later count starts its difference from zero.
MISSING = {
    "one-param": {0: (1,), 3: (1,)},
    "whole-group": {0: (0, 1), 2: (2,)},
    "every-group": {1: (0, 1, 2)},
    "every-group-first": {0: (0, 1, 2)},
    "first-two-steps": {0: (2,), 1: (2,)},
}


@pytest.mark.parametrize("missing", list(MISSING))
@pytest.mark.parametrize("backend", BACKENDS)
def test_params_without_grads_count_as_timm(timm_adan, missing, backend):
    torch, timm_cls = timm_adan
    if backend not in adamfast.available_backends():
        pytest.skip(f"{backend} not available")
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, False, backend)
    _peaks(torch, a, timm_opt)
    for t in range(6):
        for j, (x, y) in enumerate(zip(a, c)):
            g = torch.randn(x.shape, dtype=dtype)
            none = j in MISSING[missing].get(t, ())
            x.grad = None if none else g.clone()
            y.grad = None if none else g.clone()
        timm_opt.step()
        ours.step()
        _peaks(torch, a, timm_opt)
        sd = ours.state_dict()
        assert [g.get("step") for g in sd["param_groups"]] == \
            [g.get("step") for g in timm_opt.param_groups], f"step {t}"
        # timm's group["step"] is live in param_groups too, not only in checkpoints.
        assert [g.get("step") for g in ours.param_groups] == \
            [g.get("step") for g in timm_opt.param_groups], f"live step {t}"
        assert set(sd["state"]) == set(timm_opt.state_dict()["state"]), f"step {t}"
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)


def test_group_step_survives_a_checkpoint_of_params_without_state(timm_adan):
    """A group whose param has no state yet: its count comes from the group (timm's),
    and the param's first gradient starts its difference from zero, both ways."""
    torch, timm_cls = timm_adan
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, False, "auto")
    for _ in range(3):
        for j, x in enumerate(a):
            x.grad = None if j == 2 else torch.randn(x.shape, dtype=dtype)
        timm_opt.step()
    with torch.no_grad():
        for x, y in zip(a, c):
            y.copy_(x)
    ours.load_state_dict(timm_opt.state_dict())
    assert [g.get("step") for g in ours.state_dict()["param_groups"]] == [3, 3]
    _steps(torch, a, c, timm_opt, ours, 3, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)
    assert [g.get("step") for g in ours.param_groups] == \
        [g.get("step") for g in timm_opt.param_groups]
    assert [g.get("step") for g in ours.state_dict()["param_groups"]] == \
        [g["step"] for g in timm_opt.param_groups] == [6, 6]


def test_a_group_step_the_user_writes_is_the_count_as_in_timm(timm_adan):
    """timm's count is group["step"]: a restart writes it (timm's restart_opt sets it to
    0 and zeroes the state), and the next step counts from there."""
    torch, timm_cls = timm_adan
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, False, "auto")
    _steps(torch, a, c, timm_opt, ours, 3, dtype)
    for opt, params in ((timm_opt, a), (ours, c)):
        for group in opt.param_groups:
            group["step"] = 0
        for x in params:
            for key in NAMES:
                opt.state[x][key] = torch.zeros_like(x)
    _steps(torch, a, c, timm_opt, ours, 3, dtype)
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)
    assert [g["step"] for g in ours.param_groups] == [3, 3]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['step'\] must be a finite whole "
                                         r"number >= 0"):
        ours.param_groups[0]["step"] = -1
        ours.step()


def test_a_deleted_group_step_restarts_the_count_as_in_timm(timm_adan):
    torch, timm_cls = timm_adan
    dtype = torch.float32
    a, c, timm_opt, ours = _pair(torch, timm_cls, dtype, False, "auto")
    _steps(torch, a, c, timm_opt, ours, 3, dtype)
    for opt in (timm_opt, ours):
        del opt.param_groups[0]["step"]
    _steps(torch, a, c, timm_opt, ours, 2, dtype)
    assert [g["step"] for g in ours.param_groups] == [g["step"] for g in timm_opt.param_groups]
    _assert_near_timm(torch, a, c, timm_opt, ours, dtype)
