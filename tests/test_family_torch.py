"""Every family class against its torch.optim peer (for-loop implementation), and Lion
and Adam's nesterov/eps_root against NumPy transcriptions of optax's formulas."""

import numpy as np
import pytest

import adamfast
from conftest import assert_close
from optim_cases import CASES, TORCH_CASES, buffer_switch_params, peer_case_params

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (17,), (2, 3, 2), ()]


def _grads(dtype, t):
    rng = np.random.default_rng(500 + t)
    return [np.asarray(rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 1), dtype) for s in SHAPES]


@pytest.fixture
def torch_default_dtype(dtype):
    # torch keeps a group scalar (NAdam's mu_product) in its default dtype: the params'.
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("name,kw", peer_case_params())
def test_matches_torch_with_groups(backend, dtype, name, kw, torch_default_dtype):
    rng = np.random.default_rng(7)
    init = [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]
    tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    lr = CASES[name].parity_lr
    # Two groups; the second overrides lr (and a weight decay where the class has one).
    over = {"lr": lr / 2}
    tcls = getattr(torch.optim, CASES[name].torch_name)
    topt = tcls([{"params": tparams[:2]}, {"params": tparams[2:], **over}], lr=lr,
                foreach=False, **kw)
    opt = getattr(adamfast, name)([{"params": init[:2]}, {"params": init[2:], **over}], lr=lr,
                                  backend=backend, **kw)
    for t in range(1, 21):
        grads = _grads(dtype, t)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step(grads)
    for i, (mine, tp) in enumerate(zip(opt.params, tparams)):
        assert_close(mine, tp.detach().numpy(), dtype, f"{name} params[{i}]")
        state = topt.state[tp]
        for key, buf in opt.state.items():
            if key in state:
                assert_close(buf[opt._slices[i]].reshape(mine.shape), state[key].numpy(), dtype,
                             f"{name} {key}[{i}]")


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_torch_front_end_switch_off_leaves_the_buffer_as_torch(backend, dtype, name, on, off,
                                                               two_groups, torch_default_dtype):
    """adamfast.torch, group 0 switching a buffer's flag (AMSGrad, centered, momentum) off
    for some steps and on again: torch.optim leaves the buffer alone meanwhile.  The
    front end keeps a buffer it holds (its kind does not shrink), so even one group
    runs the switch inside the larger kind."""
    import adamfast.torch as aft

    rng = np.random.default_rng(11)
    init = [torch.from_numpy(np.asarray(rng.standard_normal(s), dtype)) for s in SHAPES]
    off_steps = range(4, 10)

    def grads(t):  # large while the switch is off: a buffer updated meanwhile stays apart
        r = np.random.default_rng(900 + t)
        scale = 10.0 if t in off_steps else 0.01
        return [torch.from_numpy(np.asarray(r.standard_normal(s) * scale + 0.1, dtype))
                for s in SHAPES]

    runs = []
    for cls in (getattr(torch.optim, CASES[name].torch_name), getattr(aft, name)):
        params = [torch.nn.Parameter(a.clone()) for a in init]
        groups = [{"params": params[:2], **on}]
        if two_groups:
            groups.append({"params": params[2:], **on})
        kw = {"foreach": False} if cls.__module__.startswith("torch.") else {"backend": backend}
        opt = cls(groups, lr=CASES[name].parity_lr, **kw)
        stepped = params if two_groups else params[:2]
        for t in range(1, 15):
            opt.param_groups[0].update(off if t in off_steps else on)
            for p, g in zip(stepped, grads(t)):
                p.grad = g
            opt.step()
        runs.append((stepped, opt))
    (tps, topt), (aps, aopt) = runs
    for i, (tp, ap) in enumerate(zip(tps, aps)):
        assert_close(ap.detach().numpy(), tp.detach().numpy(), dtype, f"{name} params[{i}]")
        for key, buf in topt.state[tp].items():
            if key != "step" and torch.is_tensor(buf):
                assert_close(aopt.state[ap][key].numpy(), buf.numpy(), dtype,
                             f"{name} {key}[{i}]")


def test_state_names_are_torchs(dtype):
    """Each state buffer we hold is the one torch names so (checked on a real step)."""
    for name, case in TORCH_CASES.items():
        kw = case.peer_cases[-1]
        tp = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        topt = getattr(torch.optim, case.torch_name)([tp], foreach=False, **kw)
        tp.grad = torch.ones(3, dtype=torch.float64)
        topt.step()
        opt = getattr(adamfast, name)([np.zeros(3)], backend="numpy", **kw)
        opt.step([np.ones(3)])
        assert set(opt.state) <= set(topt.state[tp]), (name, set(opt.state),
                                                         set(topt.state[tp]))


def _optax_lion(p, m, g, lr, b1, b2, wd, steps):
    """optax.lion, transcribed: scale_by_lion, add_decayed_weights, scale by -lr."""
    for gt in g[:steps]:
        update = np.sign((1 - b1) * gt + b1 * m)
        m = (1 - b2) * gt + b2 * m
        p = p + -lr * (update + wd * p)
    return p, m


def test_lion_matches_optax_formula(backend, dtype):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1025).astype(dtype)
    grads = [rng.standard_normal(1025).astype(dtype) for _ in range(20)]
    opt = adamfast.Lion([p0], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, backend=backend)
    for g in grads:
        opt.step([g])
    p, m = _optax_lion(p0.astype(np.float64), np.zeros(1025), [g.astype(np.float64) for g in grads],
                       1e-3, 0.9, 0.99, 0.1, 20)
    assert_close(opt.params[0], p, dtype, "Lion params vs optax")
    assert_close(opt.exp_avg, m, dtype, "Lion exp_avg vs optax")


def _optax_adam(p, g, lr, b1, b2, eps, eps_root, nesterov, steps):
    """optax.adam(..., eps_root, nesterov), transcribed (scale_by_adam then scale by -lr)."""
    mu = np.zeros_like(p)
    nu = np.zeros_like(p)
    for t, gt in enumerate(g[:steps], start=1):
        mu = (1 - b1) * gt + b1 * mu
        nu = (1 - b2) * gt * gt + b2 * nu
        if nesterov:
            mu_hat = b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * gt / (1 - b1 ** t)
        else:
            mu_hat = mu / (1 - b1 ** t)
        nu_hat = nu / (1 - b2 ** t)
        p = p - lr * mu_hat / (np.sqrt(nu_hat + eps_root) + eps)
    return p


@pytest.mark.parametrize("eps_root,nesterov", [(0.0, True), (1e-8, False), (1e-8, True)])
def test_adam_conventions_match_optax_formula(backend, dtype, eps_root, nesterov):
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(1025).astype(dtype)
    grads = [rng.standard_normal(1025).astype(dtype) for _ in range(20)]
    opt = adamfast.Adam([p0], lr=1e-2, eps_root=eps_root, nesterov=nesterov, backend=backend)
    for g in grads:
        opt.step([g])
    want = _optax_adam(p0.astype(np.float64), [g.astype(np.float64) for g in grads], 1e-2, 0.9,
                       0.999, 1e-8, eps_root, nesterov, 20)
    assert_close(opt.params[0], want, dtype, "Adam vs optax formula")


def test_bias_correction_off_is_deepspeeds(backend):
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(100)
    m = np.zeros(100)
    v = np.zeros(100)
    p = p0.copy()
    opt = adamfast.Adam([p0], lr=1e-2, bias_correction=False, backend=backend)
    for t in range(1, 6):
        g = rng.standard_normal(100)
        opt.step([g])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 1e-2 * m / (np.sqrt(v) + 1e-8)
    assert_close(opt.params[0], p, np.float64, "bias_correction=False")
