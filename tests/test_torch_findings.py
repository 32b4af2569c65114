"""adamfast.torch against issue 14's findings, each against torch.optim where torch has an answer.

In-place hyperparameter changes (Tensor lr under a scheduler, Tensor and list
betas), a step interrupted after the kernel wrote, concurrent and re-entrant
``step()``, sparse gradients, deepcopy and pickle, Adagrad's state at
construction, ``torch.compile`` around a training step, the size of a
submodule's checkpoint, a structural switch (AMSGrad, momentum, centered) turned
on mid-training or by a checkpoint, and the step counts a checkpoint may hold.
"""

import copy
import io
import pickle
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import adamfast  # noqa: E402
import adamfast.torch as aft  # noqa: E402
from adamfast.algorithms import ALGORITHMS  # noqa: E402
from conftest import TOL  # noqa: E402
from optim_cases import (CASES, GROUP_SCALAR_DTYPE, TORCH_CASES,  # noqa: E402
                         buffer_switch_params)

BACKENDS = adamfast.available_backends()
SHAPES = [(4, 3), (17,), (), (5,)]


def close(a, b, dtype, what):
    def arr(x):
        if isinstance(x, torch.Tensor):
            x = x.detach()
            return (x.to_dense() if x.layout != torch.strided else x).numpy()
        return x
    np.testing.assert_allclose(arr(a), arr(b), err_msg=what, **TOL[np.dtype(dtype)])


def make_params(seed=7, dtype=torch.float32, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def grads_at(t, params):
    g = torch.Generator().manual_seed(500 + t)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def give(params, grads, skip=()):
    for i, (p, g) in enumerate(zip(params, grads)):
        p.grad = None if i in skip else g.clone()


def assert_same(tparams, topt, aparams, aopt, what):
    for i, (tp, ap) in enumerate(zip(tparams, aparams)):
        dt = np.float64 if tp.dtype == torch.float64 else np.float32
        close(ap, tp, dt, f"{what}: params[{i}]")
        ts, as_ = topt.state.get(tp, {}), aopt.state.get(ap, {})
        assert set(ts) == set(as_), f"{what}: state keys of params[{i}]: {set(ts)} vs {set(as_)}"
        for k in ts:
            close(as_[k], ts[k], dt, f"{what}: {k}[{i}]")


def step_both(tp, topt, ap, aopt, steps, torch_step=None, what=None):
    """Steps ``steps`` of torch's and adamfast's optimizers on the same grads,
    compared after each when ``what`` names the check."""
    for t in steps:
        gs = grads_at(t, tp)
        give(tp, gs)
        give(ap, gs)
        (torch_step or (lambda o: o.step()))(topt)
        aopt.step()
        if what is not None:
            assert_same(tp, topt, ap, aopt, f"{what} step {t}")


def snapshot(params, opt):
    return ([p.detach().clone() for p in params],
            {id(p): {k: v.clone() for k, v in opt.state.get(p, {}).items()} for p in params})


def assert_unchanged(params, opt, snap, what):
    values, state = snap
    for i, (p, v) in enumerate(zip(params, values)):
        assert torch.equal(p.detach(), v), f"{what}: params[{i}] changed"
        now = opt.state.get(p, {})
        assert set(now) == set(state[id(p)]), f"{what}: state keys of params[{i}] changed"
        for k, v0 in state[id(p)].items():
            assert torch.equal(now[k], v0), f"{what}: {k}[{i}] changed"


TORCH_CLASSES = list(TORCH_CASES)


# --- 1: hyperparameters changed in place ----------------------------------------------

@pytest.mark.parametrize("name", TORCH_CLASSES)
def test_tensor_lr_under_step_lr_matches_torch(name):
    """StepLR updates a Tensor lr in place (fill_): every step must use its current value."""
    kw = CASES[name].rich_kw
    runs = []
    for cls in (getattr(torch.optim, CASES[name].torch_name), getattr(aft, name)):
        params = make_params()
        extra = {"foreach": False} if cls.__module__.startswith("torch") else {}
        opt = cls(params, lr=torch.tensor(CASES[name].parity_lr), **kw, **extra)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)
        for t in range(1, 8):
            give(params, grads_at(t, params))
            opt.step()
            sched.step()
        runs.append((params, opt))
    (tp, to), (ap, ao) = runs
    assert float(ao.param_groups[0]["lr"]) == float(to.param_groups[0]["lr"])
    assert_same(tp, to, ap, ao, f"{name} with StepLR on a Tensor lr")


@pytest.mark.parametrize("name", [n for n in TORCH_CLASSES if "betas" in ALGORITHMS[n].defaults])
@pytest.mark.parametrize("kind", ["tensor", "list"])
def test_betas_changed_in_place_match_torch(name, kind):
    runs = []
    for cls in (getattr(torch.optim, name), getattr(aft, name)):
        params = make_params()
        betas = [torch.tensor(0.9), torch.tensor(0.999)] if kind == "tensor" else [0.9, 0.999]
        betas = tuple(betas) if kind == "tensor" else betas
        extra = {"foreach": False} if cls.__module__.startswith("torch") else {}
        opt = cls(params, lr=0.01, betas=betas, **extra)
        for t in range(1, 9):
            if t in (3, 6):
                j, value = (0, 0.5) if t == 3 else (1, 0.9)
                group = opt.param_groups[0]
                if kind == "tensor":
                    group["betas"][j].fill_(value)
                elif isinstance(group["betas"], list):
                    group["betas"][j] = value
                else:  # torch's Adam and AdamW keep betas as a tuple: the same change
                    group["betas"] = tuple(value if k == j else b
                                           for k, b in enumerate(group["betas"]))
            give(params, grads_at(t, params))
            opt.step()
        runs.append((params, opt))
    (tp, to), (ap, ao) = runs
    if kind == "list":
        assert isinstance(ao.param_groups[0]["betas"], list)  # changed in place
    assert_same(tp, to, ap, ao, f"{name} with {kind} betas changed in place")


REPLACE = {
    # A float lr replaced by an equal-valued Tensor (a Tensor compares equal to the float
    # of its value), which a scheduler then fills in place.
    "float->tensor-lr": (lambda g: g.__setitem__("lr", torch.tensor(g["lr"])),
                         lambda g: g["lr"].fill_(0.003)),
    # A Tensor lr replaced by another one of the same value, which then changes.
    "tensor->tensor-lr": (lambda g: g.__setitem__("lr", g["lr"].clone()),
                          lambda g: g["lr"].fill_(0.003)),
    # Float betas replaced by equal-valued Tensor betas, then changed in place.
    "float->tensor-betas": (lambda g: g.__setitem__("betas", tuple(map(torch.tensor,
                                                                       g["betas"]))),
                            lambda g: g["betas"][0].fill_(0.5)),
    # A list replaced by an equal list, which is then mutated.
    "list->list-betas": (lambda g: g.__setitem__("betas", list(g["betas"])),
                         lambda g: g["betas"].__setitem__(0, 0.5)),
}


@pytest.mark.parametrize("case", list(REPLACE))
def test_replaced_by_an_equal_object_then_changed_in_place_matches_torch(case):
    """The cache follows the objects the group holds now, not the ones it validated."""
    replace, change = REPLACE[case]
    runs = []
    for cls in (torch.optim.Adamax, aft.Adamax):  # keeps betas as given, in both
        params = make_params()
        lr = torch.tensor(0.01) if case.startswith("tensor") else 0.01
        betas = [0.9, 0.999] if case.startswith("list") else (0.9, 0.999)
        extra = {"foreach": False} if cls.__module__.startswith("torch") else {}
        opt = cls(params, lr=lr, betas=betas, **extra)
        for t in range(1, 7):
            if t == 2:
                replace(opt.param_groups[0])
            if t == 4:
                change(opt.param_groups[0])
            give(params, grads_at(t, params))
            opt.step()
        runs.append((params, opt))
    (tp, to), (ap, ao) = runs
    assert_same(tp, to, ap, ao, case)


@pytest.mark.parametrize("change,match", [
    (lambda g: g["betas"].__setitem__(0, 1.5), r"betas\[0\]"),
    (lambda g: g["lr"].fill_(-1.0), "lr"),
    (lambda g: g["lr"].fill_(float("nan")), "lr"),
], ids=["list-betas-1.5", "tensor-lr-negative", "tensor-lr-nan"])
def test_hyperparameter_changed_in_place_is_validated(change, match):
    params = make_params()
    opt = aft.Adam(params, lr=torch.tensor(0.01), betas=[0.9, 0.999])
    give(params, grads_at(1, params))
    opt.step()
    change(opt.param_groups[0])
    give(params, grads_at(2, params))
    snap = snapshot(params, opt)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_unchanged(params, opt, snap, "a refused in-place change")


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("betas", [(0.9, torch.tensor(0.99)), (torch.tensor(0.9), 0.99)],
                         ids=["float-tensor", "tensor-float"])
def test_betas_mixing_float_and_tensor_refused_like_torch(name, betas):
    """torch's Adam refuses betas mixing a float and a Tensor; adamfast too, and also when
    a group's betas become such a pair (even of equal values, which ``==`` would call
    unchanged: a Tensor compares equal to the float of its value)."""
    with pytest.raises(ValueError, match="both floats or both Tensors"):
        getattr(torch.optim, name)(make_params(), betas=betas)
    params = make_params()
    ptrs = [p.data_ptr() for p in params]
    with pytest.raises(ValueError, match="both floats or both Tensors"):
        getattr(aft, name)(params, betas=betas)
    assert [p.data_ptr() for p in params] == ptrs  # refused before the layout
    opt = getattr(aft, name)(params, betas=(torch.tensor(0.9), torch.tensor(0.99)))
    give(params, grads_at(1, params))
    opt.step()
    opt.param_groups[0]["betas"] = (0.9, opt.param_groups[0]["betas"][1])
    snap = snapshot(params, opt)
    with pytest.raises(ValueError, match="both floats or both Tensors"):
        opt.step()
    assert_unchanged(params, opt, snap, "a group whose betas mix a float and a Tensor")


# --- 3: a step is atomic under KeyboardInterrupt -----------------------------------------

# Every kind of every torch peer (AMSGrad, momentum, centered: the counters that advance
# with the buffers), each in its case's hyperparameters.
ATOMIC = [pytest.param(n, kw, id=f"{n}-{kind}") for n in TORCH_CLASSES
          for kind, kw in CASES[n].kinds.items()]


def _interrupt_after_kernel(monkeypatch, opt, exc=KeyboardInterrupt, before=False):
    """Make every kernel call of ``opt``'s backend raise ``exc``: after the real kernel
    returned (a Ctrl-C pending during the C call), or instead of it (before=True)."""
    b = opt._backend
    real_kernel, real_fast = b.kernel, b.step_fast
    calls = []

    def kernel(*args):
        calls.append("kernel")
        if before:
            raise exc("injected")
        real_kernel(*args)
        raise exc("injected")

    def fast(*args):
        if before:
            calls.append("fast")
            raise exc("injected")
        done = real_fast(*args)
        if done:
            calls.append("fast")
            raise exc("injected")
        return done

    monkeypatch.setattr(b, "kernel", kernel)
    if real_fast is not None:
        monkeypatch.setattr(b, "step_fast", fast)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kw", ATOMIC)
@pytest.mark.parametrize("path", ["uniform", "classes"])
def test_keyboard_interrupt_after_the_kernel_keeps_counters_with_buffers(
        monkeypatch, request, backend, name, kw, path):
    """Ctrl-C pending when the kernel returns: the step's counters (step, mu_product,
    momentum started) advance with the buffers, every dtype's slab is stepped, and
    the next step is torch's next step."""
    if GROUP_SCALAR_DTYPE in CASES[name].deviations:
        # torch keeps mu_product in its default dtype, adamfast in float64 (documented):
        # with float64 params in the run, torch must keep it in float64 too.
        request.addfinalizer(lambda dt=torch.get_default_dtype(): torch.set_default_dtype(dt))
        torch.set_default_dtype(torch.float64)
    init = make_params() + make_params(seed=8, dtype=torch.float64, shapes=[(3, 2), (6,)])
    tparams = [torch.nn.Parameter(p.detach().clone()) for p in init]
    aparams = [torch.nn.Parameter(p.detach().clone()) for p in init]
    lr = CASES[name].parity_lr
    topt = getattr(torch.optim, CASES[name].torch_name)(tparams, lr=lr, foreach=False, **kw)
    aopt = getattr(aft, name)(aparams, lr=lr, backend=backend, **kw)
    skip = (1,) if path == "classes" else ()
    for t in range(1, 3):
        give(tparams, grads_at(t, tparams))
        give(aparams, grads_at(t, aparams))
        topt.step()
        aopt.step()
    give(tparams, grads_at(3, tparams), skip)
    give(aparams, grads_at(3, aparams), skip)
    topt.step()
    with monkeypatch.context() as m:
        calls = _interrupt_after_kernel(m, aopt)
        with pytest.raises(KeyboardInterrupt):
            aopt.step()
    assert_same(tparams, topt, aparams, aopt, f"{name} after an interrupted step")
    assert len(calls) == 2, f"both dtypes' kernels ran: {calls}"
    for t in range(4, 6):
        give(tparams, grads_at(t, tparams))
        give(aparams, grads_at(t, aparams))
        topt.step()
        aopt.step()
    assert_same(tparams, topt, aparams, aopt, f"{name} after the interrupted step")


@pytest.mark.parametrize("name,kw", ATOMIC)
def test_kernel_error_before_writing_advances_nothing(monkeypatch, name, kw):
    """An ordinary exception from the kernel (raised before it wrote) leaves every
    counter where it was: the step can be retried and is torch's."""
    tparams, aparams = make_params(), make_params()
    lr = CASES[name].parity_lr
    topt = getattr(torch.optim, CASES[name].torch_name)(tparams, lr=lr, foreach=False, **kw)
    aopt = getattr(aft, name)(aparams, lr=lr, **kw)
    give(tparams, grads_at(1, tparams))
    give(aparams, grads_at(1, aparams))
    topt.step()
    aopt.step()
    give(aparams, grads_at(2, aparams))
    snap = snapshot(aparams, aopt)
    with monkeypatch.context() as m:
        _interrupt_after_kernel(m, aopt, exc=RuntimeError, before=True)
        with pytest.raises(RuntimeError, match="injected"):
            aopt.step()
    assert_unchanged(aparams, aopt, snap, "a kernel that refused")
    give(tparams, grads_at(2, tparams))
    topt.step()
    aopt.step()
    assert_same(tparams, topt, aparams, aopt, f"{name} retried after a kernel error")


# --- 4: concurrent step() -----------------------------------------------------------------

def _slow_kernel(monkeypatch, opt):
    """A kernel that releases the GIL for a while (as a long compiled kernel does), so
    that threads interleave around it."""
    b = opt._backend
    real_kernel, real_fast = b.kernel, b.step_fast

    def kernel(*args):
        time.sleep(0.002)
        return real_kernel(*args)

    def fast(*args):
        time.sleep(0.002)
        return real_fast(*args)

    monkeypatch.setattr(b, "kernel", kernel)
    if real_fast is not None:
        monkeypatch.setattr(b, "step_fast", fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_concurrent_steps_on_one_optimizer_lose_nothing(monkeypatch, backend, name):
    def build():
        params = make_params()
        opt = getattr(aft, name)(params, lr=0.01, backend=backend)
        give(params, grads_at(1, params))
        return params, opt

    ref_params, ref = build()
    for _ in range(40):
        ref.step()
    params, opt = build()
    _slow_kernel(monkeypatch, opt)
    barrier = threading.Barrier(4)
    errors = []

    def work():
        try:
            barrier.wait()
            for _ in range(10):
                opt.step()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for p in params:
        assert opt.state[p]["step"].item() == 40
    assert_same(ref_params, ref, params, opt, "4 threads x 10 steps vs 40 sequential steps")


def test_step_from_its_own_closure_is_refused():
    params = make_params()
    opt = aft.Adam(params, lr=0.01)
    give(params, grads_at(1, params))
    opt.step()
    snap = snapshot(params, opt)

    def closure():
        opt.step()
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="closure"):
        opt.step(closure)
    assert_unchanged(params, opt, snap, "a re-entrant step")
    opt.step()  # the optimizer is usable afterwards
    assert opt.state[params[0]]["step"].item() == 2


def test_other_optimizers_step_while_one_is_busy():
    """One optimizer's step serializes its own callers only: another optimizer steps
    in another thread meanwhile."""
    pa, pb = make_params(), make_params(seed=9)
    oa, ob = aft.Adam(pa, lr=0.01), aft.Adam(pb, lr=0.01)
    give(pa, grads_at(1, pa))
    give(pb, grads_at(1, pb))
    inside, release = threading.Event(), threading.Event()

    def closure():
        inside.set()
        assert release.wait(10)
        return torch.tensor(0.0)

    holder = threading.Thread(target=lambda: oa.step(closure), daemon=True)
    holder.start()
    try:
        assert inside.wait(10)
        done = []
        other = threading.Thread(target=lambda: done.append(ob.step()), daemon=True)
        other.start()
        other.join(10)
        assert done, "another optimizer's step waited for a busy optimizer"
        waiter = threading.Thread(target=oa.step, daemon=True)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive(), "a second step of the busy optimizer did not wait"
    finally:
        release.set()
        holder.join(10)
    waiter.join(10)
    assert oa.state[pa[0]]["step"].item() == 2 and ob.state[pb[0]]["step"].item() == 1


def test_a_copy_taken_inside_the_closure_does_not_wait_for_the_step():
    params = make_params()
    opt = aft.Adam(params, lr=0.01)
    give(params, grads_at(1, params))
    copies = []

    def closure():
        copies.append(copy.deepcopy(opt))
        return torch.tensor(0.0)

    th = threading.Thread(target=lambda: opt.step(closure), daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "deepcopy inside the closure deadlocked on the step's lock"
    assert len(copies) == 1 and not copies[0].state.get(
        copies[0].param_groups[0]["params"][0])  # taken before the step wrote
    assert opt.state[params[0]]["step"].item() == 1


# --- 6: sparse gradients ------------------------------------------------------------------

def _embedding_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({"emb": torch.nn.Embedding(12, 4, sparse=True),
                                "lin": torch.nn.Linear(4, 2)}).to(dtype)


def _sparse_loop(cls, steps=6, dtype=torch.float32, **kw):
    m = _embedding_model(dtype=dtype)
    opt = cls(m.parameters(), **kw)
    g = torch.Generator().manual_seed(3)
    for t in range(steps):
        opt.zero_grad(set_to_none=t % 2 == 0)
        idx = torch.randint(0, 12, (9,), generator=g)
        idx[:3] = idx[0]  # duplicate indices: an uncoalesced gradient
        y = torch.randn(9, 2, generator=g, dtype=dtype)
        torch.nn.functional.mse_loss(m["lin"](m["emb"](idx)), y).backward()
        assert m["emb"].weight.grad.layout == torch.sparse_coo
        opt.step()
        assert m["emb"].weight.grad.layout == torch.sparse_coo  # never rebound
    return list(m.parameters()), opt


SPARSE_OK = [
    ("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "maximize": True}),
    ("SGD", {"lr": 0.1, "maximize": True}),
    ("Adagrad", {"lr": 0.1}), ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "maximize": True}),
    ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.2, "eps": 1e-6}),
]


@pytest.mark.parametrize("name,kw", SPARSE_OK, ids=[f"{n}-{kw}" for n, kw in SPARSE_OK])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_sparse_grads_match_torch(name, kw, dtype):
    tp, to = _sparse_loop(getattr(torch.optim, name), dtype=dtype, **kw)
    ap, ao = _sparse_loop(getattr(aft, name), dtype=dtype, **kw)
    assert_same(tp, to, ap, ao, f"{name} {kw} with a sparse embedding gradient")


def test_sparse_momentum_checkpoint_from_torch_loads_and_continues():
    """torch's sparse path keeps a sparse momentum_buffer: it loads, densified."""
    kw = {"lr": 0.1, "momentum": 0.9}
    tp, to = _sparse_loop(torch.optim.SGD, steps=3, **kw)
    assert to.state[tp[0]]["momentum_buffer"].layout == torch.sparse_coo
    m = _embedding_model()
    ap = list(m.parameters())
    ao = aft.SGD(ap, **kw)
    with torch.no_grad():
        for a, t in zip(ap, tp):
            a.copy_(t)
    ao.load_state_dict(to.state_dict())
    assert_same(tp, to, ap, ao, "SGD after loading torch's sparse momentum_buffer")
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        idx = torch.randint(0, 12, (5,), generator=g)
        for p, opt in ((tp, to), (ap, ao)):
            opt.zero_grad()
            emb_w, lin_w, lin_b = p
            out = torch.nn.functional.embedding(idx, emb_w, sparse=True) @ lin_w.t() + lin_b
            out.sum().backward()
            opt.step()
    assert_same(tp, to, ap, ao, "SGD continuing from torch's sparse checkpoint")


SPARSE_REFUSED = [
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}), ("SGD", {"lr": 0.1, "fused": True}),
    ("Adagrad", {"lr": 0.1, "weight_decay": 0.1}), ("Adagrad", {"lr": 0.1, "fused": True}),
]


@pytest.mark.parametrize("name,kw", SPARSE_REFUSED, ids=[f"{n}-{kw}" for n, kw in SPARSE_REFUSED])
def test_sparse_grads_refused_where_torch_refuses(name, kw):
    with pytest.raises(RuntimeError) as ref:
        _sparse_loop(getattr(torch.optim, name), steps=1, **kw)
    m = _embedding_model()
    params = list(m.parameters())
    opt = getattr(aft, name)(params, **kw)
    m["emb"](torch.tensor([1, 2, 1])).sum().backward()
    params[2].grad = torch.ones_like(params[2])
    snap = snapshot(params, opt)
    with pytest.raises(type(ref.value), match="sparse") as got:
        opt.step()
    assert ("weight_decay" in str(got.value)) == ("weight_decay" in kw)
    assert_unchanged(params, opt, snap, f"{name} {kw} refusing a sparse grad")


def test_sparse_tables_are_the_sparse_cases():
    sparse = {n for n, c in CASES.items() if c.sparse_grads}
    assert {n for n, _ in SPARSE_OK} == sparse == {n for n, _ in SPARSE_REFUSED}


@pytest.mark.parametrize("name", [n for n in aft.CLASSES if not CASES[n].sparse_grads])
def test_sparse_grads_refused_by_the_other_classes(name):
    m = _embedding_model()
    params = list(m.parameters())
    if CASES[name].torch_peer:
        with pytest.raises(RuntimeError, match="sparse"):
            _sparse_loop(getattr(torch.optim, CASES[name].torch_name), steps=1)
    opt = getattr(aft, name)(params)
    m["emb"](torch.tensor([1, 2, 1])).sum().backward()
    snap = snapshot(params, opt)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_unchanged(params, opt, snap, f"{name} refusing a sparse grad")


def test_adagrad_sparse_with_zero_eps_is_refused():
    """eps=0 with a zero accumulator: an entry the sparse grad does not touch would be
    0/0 in the dense kernel (torch leaves it untouched); refused, naming eps."""
    m = _embedding_model()
    params = list(m.parameters())
    opt = aft.Adagrad(params, lr=0.1, eps=0.0)
    m["emb"](torch.tensor([1, 2, 1])).sum().backward()
    snap = snapshot(params, opt)
    with pytest.raises(ValueError, match="eps"):
        opt.step()
    assert_unchanged(params, opt, snap, "Adagrad eps=0 refusing a sparse grad")


@pytest.mark.parametrize("prop,err,match", [
    ("dtype", ValueError, r"has dtype torch\.float64; expected torch\.float32"),
    ("shape", ValueError, r"has shape \(16,\); expected \(17,\)"),
    ("layout", RuntimeError, r"sparse"),  # Adam: torch's RuntimeError for a sparse grad
])
def test_a_wrong_grad_is_named_by_its_wrong_property(prop, err, match):
    params = make_params()
    opt = aft.Adam(params, lr=0.01)
    give(params, grads_at(1, params))
    p = params[1]  # shape (17,)
    if prop == "dtype":
        p.grad.data = torch.zeros(17, dtype=torch.float64)  # p.grad = ... would refuse it
    elif prop == "shape":
        p.grad.data = torch.zeros(16)
    else:
        p.grad = torch.zeros(17).to_sparse()
    snap = snapshot(params, opt)
    with pytest.raises(err, match=match) as got:
        opt.step()
    assert "param 1" in str(got.value)
    assert_unchanged(params, opt, snap, f"a grad with the wrong {prop}")


# --- 10: deepcopy and pickle ------------------------------------------------------------

def _train_steps(model, opt, t0, steps):
    g = torch.Generator().manual_seed(100 + t0)
    for _ in range(steps):
        x = torch.randn(8, 8, generator=g, dtype=torch.float64)
        y = torch.randn(8, 3, generator=g, dtype=torch.float64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).double()


def _pickle_copy(obj):
    return pickle.loads(pickle.dumps(obj))


COPIES = {"deepcopy": copy.deepcopy, "pickle": _pickle_copy}


def _clip_hook(c):
    """torch's pipeline for adamfast's max_grad_norm: clip_grad_norm_ before the step."""
    def hook(opt, args, kwargs):
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], c)
    return hook


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("name,kw", [("AdamW", {"amsgrad": True, "ema_decay": 0.9,
                                                "max_grad_norm": 1.0}),
                                     ("NAdam", {}), ("SGD", {"momentum": 0.9}),
                                     ("Adagrad", {"lr_decay": 0.01})])
def test_model_and_optimizer_copy_like_torch(request, how, name, kw):
    # float64 models: torch keeps step and mu_product in its default dtype.
    request.addfinalizer(lambda dt=torch.get_default_dtype(): torch.set_default_dtype(dt))
    torch.set_default_dtype(torch.float64)
    guard = {k: kw[k] for k in ("ema_decay", "max_grad_norm") if k in kw}
    tkw = {k: v for k, v in kw.items() if k not in guard}
    tm, am = _mlp(), _mlp()
    to = getattr(torch.optim, name)(tm.parameters(), lr=0.01, foreach=False, **tkw)
    ao = getattr(aft, name)(am.parameters(), lr=0.01, **kw)
    if guard:
        # torch's pipeline for max_grad_norm is clip_grad_norm_ before step
        to.register_step_pre_hook(_clip_hook(guard["max_grad_norm"]))
    _train_steps(tm, to, 0, 3)
    _train_steps(am, ao, 0, 3)
    tm2, to2 = COPIES[how]((tm, to))
    am2, ao2 = COPIES[how]((am, ao))
    assert type(ao2) is type(ao) and ao2.backend == ao.backend
    assert (ao2.max_grad_norm, ao2.skip_nonfinite, ao2.ema_decay) == \
        (ao.max_grad_norm, ao.skip_nonfinite, ao.ema_decay)
    copied = list(am2.parameters())
    own = [p for g in ao2.param_groups for p in g["params"]]
    assert len(own) == len(copied) and all(p is q for p, q in zip(own, copied))  # its model's
    assert not any(p is q for p, q in zip(am.parameters(), copied))
    before = [p.detach().clone() for p in am.parameters()]
    before_ema = [e.clone() for e in ao.ema_params] if ao.ema_params is not None else None
    if guard:
        to2.register_step_pre_hook(_clip_hook(guard["max_grad_norm"]))
    # The copy steps its own model and leaves the original alone.
    _train_steps(tm2, to2, 3, 3)
    _train_steps(am2, ao2, 3, 3)
    for p, b in zip(am.parameters(), before):
        assert torch.equal(p.detach(), b), "stepping the copy changed the original"
    if before_ema is not None:
        for e, b in zip(ao.ema_params, before_ema):
            assert torch.equal(e, b), "stepping the copy changed the original's EMA"
    assert_same(list(tm2.parameters()), to2, copied, ao2, f"{name} copy by {how}")
    # The original continues as torch's does.
    _train_steps(tm, to, 3, 3)
    _train_steps(am, ao, 3, 3)
    assert_same(list(tm.parameters()), to, list(am.parameters()), ao, f"{name} original")
    for a, b in zip(am.parameters(), copied):
        close(a, b, np.float64, "original and copy took the same steps")
    if ao.ema_params is not None:
        for a, b in zip(ao.ema_params, ao2.ema_params):
            close(a, b, np.float64, "original and copy EMA")


def test_optimizer_alone_copies_over_copied_params():
    m = _mlp()
    opt = aft.Adam(m.parameters(), lr=0.01)
    _train_steps(m, opt, 0, 2)
    for how in COPIES.values():
        c = how(opt)
        own = [p for g in c.param_groups for p in g["params"]]
        assert not any(p is q for p, q in zip(own, m.parameters()))
        for p, q in zip(own, m.parameters()):
            assert torch.equal(p.detach(), q.detach())
            assert torch.equal(c.state[p]["exp_avg"], opt.state[q]["exp_avg"])
            p.grad = torch.ones_like(p)
        before = [q.detach().clone() for q in m.parameters()]
        c.step()
        assert c.state[own[0]]["step"].item() == 3 and opt.state[
            next(m.parameters())]["step"].item() == 2
        for q, b in zip(m.parameters(), before):
            assert torch.equal(q.detach(), b)


def test_nadam_copy_carries_mu_product_in_float64():
    """state_dict() holds mu_product in torch's scalar dtype (float32 by default); a copy
    carries the float64 value, so original and copy step bit for bit alike."""
    params = make_params(dtype=torch.float64)
    opt = aft.NAdam(params, lr=0.01)
    for t in range(1, 4):
        give(params, grads_at(t, params))
        opt.step()
    copies = [how(opt) for how in COPIES.values()]
    for t in range(4, 7):
        grads = grads_at(t, params)
        for o in [opt] + copies:
            give([p for g in o.param_groups for p in g["params"]], grads)
            o.step()
    for c in copies:
        for a, b in zip([p for g in c.param_groups for p in g["params"]], params):
            assert torch.equal(a.detach(), b.detach())


# --- 11: Adagrad's state at construction ---------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"initial_accumulator_value": 0.3}])
def test_adagrad_state_exists_at_construction_like_torch(kw):
    tp, ap = make_params(), make_params()
    to = torch.optim.Adagrad(tp, lr=0.1, **kw)
    ao = aft.Adagrad(ap, lr=0.1, **kw)
    assert_same(tp, to, ap, ao, "Adagrad before the first step")
    ts, as_ = to.state_dict(), ao.state_dict()
    assert ts["state"].keys() == as_["state"].keys()
    for i in ts["state"]:
        assert ts["state"][i].keys() == as_["state"][i].keys()
        for k in ts["state"][i]:
            assert as_["state"][i][k].dtype == ts["state"][i][k].dtype
            close(as_["state"][i][k], ts["state"][i][k], np.float32, f"state[{i}][{k}]")
    # A group added later has no state until its first step, as in torch.
    extra_t, extra_a = make_params(seed=3, shapes=[(2,)]), make_params(seed=3, shapes=[(2,)])
    to.add_param_group({"params": extra_t})
    ao.add_param_group({"params": extra_a})
    assert not to.state.get(extra_t[0]) and not ao.state.get(extra_a[0])
    # A checkpoint without a param's state leaves it without, as torch's load does.
    sd = to.state_dict()
    del sd["state"][0]
    to.load_state_dict(sd)
    ao.load_state_dict(sd)
    assert not to.state.get(tp[0]) and not ao.state.get(ap[0])
    assert to.state.get(tp[1]) and ao.state.get(ap[1])
    for t in range(1, 4):
        give(tp + extra_t, grads_at(t, tp + extra_t))
        give(ap + extra_a, grads_at(t, ap + extra_a))
        to.step()
        ao.step()
    assert_same(tp + extra_t, to, ap + extra_a, ao, "Adagrad after add_param_group and load")


# --- 12: torch.compile around a training step ----------------------------------------------

def _compiled_training(make_opt, steps):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    m = _mlp().float()
    opt = make_opt(m.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9 ** e)
    counter = CompileCounter()

    @torch.compile(backend=counter)
    def train(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(1)
    frames = []
    for _ in range(steps):
        train(torch.randn(16, 8, generator=g), torch.randn(16, 3, generator=g))
        sched.step()
        frames.append(counter.frame_count)
    return m, frames


def test_compiled_training_step_does_not_recompile_per_step():
    try:
        tm, tframes = _compiled_training(lambda p: torch.optim.AdamW(p, lr=1e-2), 8)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"torch.compile does not work here: {exc}")
    am, aframes = _compiled_training(lambda p: aft.AdamW(p, lr=1e-2), 8)
    torch._dynamo.reset()
    assert aframes[-1] == aframes[0], f"recompiled as the steps went on: {aframes}"
    assert aframes[-1] <= tframes[-1], f"adamfast {aframes} vs torch.optim {tframes}"
    for a, b in zip(tm.parameters(), am.parameters()):
        close(b, a, np.float32, "compiled training step")


# --- 15: saving one submodule ------------------------------------------------------------

def test_compact_save_of_a_submodule():
    """Every param is a view of the flat buffer: torch.save of a submodule's state_dict
    writes the whole buffer; the clones of the module docstring's recipe are compact."""
    m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 10))
    aft.Adam(m.parameters())
    sd = m[1].state_dict()

    def size(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return len(buf.getvalue())

    whole = sum(p.numel() for p in m.parameters()) * 4
    assert size(sd) > whole  # the documented cost
    compact = {k: v.clone() for k, v in sd.items()}
    assert size(compact) < (256 * 10 + 10) * 4 + 4096
    m2 = torch.nn.Linear(256, 10)
    m2.load_state_dict(compact)
    assert torch.equal(m2.weight, m[1].weight.detach())


# --- 16: a structural switch turned on mid-training ---------------------------------------

def _torch_step_filling(opt):
    """torch's step, where a switch group 0 turned on after the state was created
    (AMSGrad, centered, RMSprop's momentum) makes torch raise KeyError for the buffer it
    did not create: that buffer starts at zero, as adamfast documents (torch's SGD
    starts its momentum buffer from the gradient by itself)."""
    for _ in range(8):
        try:
            return opt.step()
        except KeyError as exc:
            key = exc.args[0]
            for p in opt.param_groups[0]["params"]:
                st = opt.state.get(p)
                if st and key not in st:
                    st[key] = torch.zeros_like(p)
    raise AssertionError("torch's step kept raising KeyError")


def _groups_of(params, off):
    return [{"params": params[:2], **off}, {"params": params[2:], "lr": 0.02, **off}]


def _hp_of(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


@pytest.mark.parametrize("read", [False, True], ids=["state-unread", "state-read"])
@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_a_switch_turned_on_mid_training_matches_torch(name, on, off, read):
    """Group 0 turns its switch on after two steps (group 1 keeps it off), whether or not
    the state was looked at in between: torch's result, params and every buffer."""
    tp, ap = make_params(), make_params()
    topt = getattr(torch.optim, name)(_groups_of(tp, off), lr=0.01)
    aopt = getattr(aft, name)(_groups_of(ap, off), lr=0.01)
    for t in range(7):
        if t == 2:
            if read:
                aopt.state_dict()
            for o in (topt, aopt):
                o.param_groups[0].update(on)
        gs = grads_at(t, tp)
        give(tp, gs)
        give(ap, gs)
        _torch_step_filling(topt)
        aopt.step()
        if t >= 2:
            assert_same(tp, topt, ap, aopt, f"{name} step {t}")


@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_a_failed_step_after_a_switch_writes_nothing_and_the_retry_switches(name, on, off):
    tp, ap = make_params(), make_params()
    topt = getattr(torch.optim, name)(tp, lr=0.01, **off)
    aopt = getattr(aft, name)(ap, lr=0.01, **off)
    step_both(tp, topt, ap, aopt, range(2))
    for o in (topt, aopt):
        o.param_groups[0].update(on)
    groups = _hp_of(aopt)
    gs = grads_at(2, tp)
    give(ap, gs)
    view = ap[1].data
    ap[1].data = view.clone()  # rebound behind the optimizer's back: refused before writing
    with pytest.raises(RuntimeError, match="no longer shares memory"):
        aopt.step()
    ap[1].data = view
    assert _hp_of(aopt) == groups
    assert_same(tp, topt, ap, aopt, f"{name} after the failed step")  # torch: not stepped
    step_both(tp, topt, ap, aopt, range(2, 6), _torch_step_filling, f"{name} after the retry:")


def test_sgd_momentum_turned_on_later_starts_from_the_gradient_like_torch():
    """The trial's loop: dampening set, momentum 0 then 0.9, the state never read."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    aopt = aft.SGD([p], lr=0.1, dampening=0.5)
    topt = torch.optim.SGD([q], lr=0.1, dampening=0.5)
    for t in range(6):
        if t == 2:
            for o in (aopt, topt):
                o.param_groups[0]["momentum"] = 0.9
        for x in (p, q):
            x.grad = torch.full((3,), float(t + 1))
        topt.step()
        aopt.step()
    close(p, q, np.float32, "params")
    close(aopt.state[p]["momentum_buffer"], topt.state[q]["momentum_buffer"], np.float32,
          "momentum_buffer")


@pytest.mark.parametrize("read", [False, True], ids=["state-unread", "state-read"])
@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_loading_a_checkpoint_that_switches_on_matches_torch(name, on, off, read):
    """A torch checkpoint made with the switch on, loaded into an adamfast optimizer
    built without it that already stepped: it loads and continues as torch does."""
    tp, ap = make_params(), make_params()
    topt = getattr(torch.optim, name)(tp, lr=0.01, **on)
    for t in range(3):
        give(tp, grads_at(t, tp))
        topt.step()
    ck = copy.deepcopy(topt.state_dict())
    aopt = getattr(aft, name)(ap, lr=0.01, **off)
    for t in range(2):
        give(ap, grads_at(10 + t, ap))
        aopt.step()
    if read:
        aopt.state_dict()
    aopt.load_state_dict(ck)
    assert _hp_of(aopt) == _hp_of(topt)
    with torch.no_grad():
        for a, b in zip(ap, tp):
            a.copy_(b)
    assert_same(tp, topt, ap, aopt, f"{name} loaded")
    step_both(tp, topt, ap, aopt, range(3, 7), what=f"{name} after the load:")


@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_a_refused_checkpoint_that_switches_on_changes_nothing(name, on, off):
    """The same checkpoint with one bad entry: refused, and the optimizer goes on as if
    it had never been offered (its groups, state and counts untouched)."""
    tp, ap = make_params(), make_params()
    ref = getattr(aft, name)(tp, lr=0.01, **on)
    for t in range(3):
        give(tp, grads_at(t, tp))
        ref.step()
    bad = copy.deepcopy(ref.state_dict())
    bad["param_groups"][0]["lr"] = 0.5
    bad["state"][3] = dict(bad["state"][3])
    buffer = [k for k, v in bad["state"][3].items() if v.numel() > 1][-1]
    bad["state"][3][buffer] = torch.zeros(7)  # the wrong size
    topt = getattr(torch.optim, name)(tp, lr=0.01, **off)
    aopt = getattr(aft, name)(ap, lr=0.01, **off)
    with torch.no_grad():
        for a, b in zip(ap, tp):
            a.copy_(b)
    for t in range(2):
        gs = grads_at(10 + t, tp)
        give(tp, gs)
        give(ap, gs)
        topt.step()
        aopt.step()
    groups = _hp_of(aopt)
    with pytest.raises(ValueError, match="elements"):
        aopt.load_state_dict(bad)
    assert _hp_of(aopt) == groups
    for t in range(2, 6):
        gs = grads_at(10 + t, tp)
        give(tp, gs)
        give(ap, gs)
        topt.step()
        aopt.step()
        assert_same(tp, topt, ap, aopt, f"{name} step {t} after the refused load")


# --- 17: the step counts a checkpoint holds ------------------------------------------------

def _adam_checkpoint(step):
    p = torch.nn.Parameter(torch.ones(3))
    opt = aft.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = step
    sd["param_groups"][0]["lr"] = 0.5
    return sd


@pytest.mark.parametrize("step", [float("nan"), float("inf"), -float("inf"), -3.0, -1, 2.5,
                                  torch.tensor(float("nan")), torch.tensor(2.5),
                                  torch.tensor(-3.0), torch.tensor([1.0, 2.0]), "3",
                                  torch.tensor(True)],
                         ids=repr)
def test_a_checkpoint_step_that_is_no_count_is_refused_before_writing(step):
    p = torch.nn.Parameter(torch.linspace(-1, 1, 3))
    opt = aft.Adam([p], lr=0.1)
    for t in range(2):
        p.grad = torch.full((3,), 0.5 - t)
        opt.step()
    snap = snapshot([p], opt)
    with pytest.raises((ValueError, TypeError), match=r"\['state'\]\[0\]\['step'\]") as info:
        opt.load_state_dict(_adam_checkpoint(step))
    if not isinstance(step, str) and (not isinstance(step, torch.Tensor) or (
            step.numel() == 1 and step.dtype != torch.bool)):
        assert info.type is ValueError
        assert "whole number >= 0" in str(info.value)
        shown = step.item() if isinstance(step, torch.Tensor) else step
        assert repr(float(shown)) in str(info.value) or repr(shown) in str(info.value)
    assert opt.param_groups[0]["lr"] == 0.1
    assert_unchanged([p], opt, snap, "after the refused checkpoint")
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("step", [3, 3.0, 0, 0.0, 1e9, torch.tensor(3.0),
                                  torch.tensor(3.0, dtype=torch.float64), torch.tensor(3),
                                  np.float32(3.0), np.int64(3)], ids=repr)
def test_a_checkpoint_step_that_is_a_count_loads_like_torch(step):
    """A whole step count in any of the forms torch's own checkpoints hold (a float32
    tensor, an int, a float) loads, and the next step matches torch's."""
    sd = _adam_checkpoint(step)
    out = []
    for cls in (aft.Adam, torch.optim.Adam):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p], lr=0.1)
        opt.load_state_dict(copy.deepcopy(sd))
        p.grad = torch.ones(3)
        opt.step()
        out.append((p.detach().clone(), float(opt.state[p]["step"])))
    assert out[0][1] == out[1][1] == float(np.float32(float(step) + 1))
    close(out[0][0], out[1][0], np.float32, "after the loaded step")


@pytest.mark.parametrize("name", [n for n, s in ALGORITHMS.items() if s.torch_step_in_group])
def test_a_copy_of_a_group_counting_class_continues_as_the_original(name):
    """A class counting steps per group (timm's Adan and Lamb): a copy keeps the
    counts (a param without a gradient so far included) and steps exactly as the
    original."""
    params = make_params()
    opt = getattr(aft, name)(params, lr=0.01, weight_decay=0.02)
    for t in range(3):
        give(params, grads_at(t, params), skip=(1,) if t < 2 else ())
        opt.step()
    params2, opt2 = copy.deepcopy((params, opt))
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for t in range(3, 6):
        gs = grads_at(t, params)
        give(params, gs)
        give(params2, gs)
        opt.step()
        opt2.step()
    for p, q in zip(params, params2):
        assert torch.equal(p.detach(), q.detach())
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][k]), k


def test_a_switch_survives_a_step_refused_for_another_groups_setting():
    """AMSGrad turned on in group 0 while group 1 holds a refused lr: the step is
    refused; with group 1's lr put back (the very object it held), the next step
    turns AMSGrad on as torch (with its buffer started at zero) does."""
    tp, ap = make_params(), make_params()
    topt = torch.optim.Adam(_groups_of(tp, {}), lr=0.01)
    aopt = aft.Adam(_groups_of(ap, {}), lr=0.01)
    step_both(tp, topt, ap, aopt, range(2))
    for o in (topt, aopt):
        o.param_groups[0]["amsgrad"] = True
    lr = aopt.param_groups[1]["lr"]
    aopt.param_groups[1]["lr"] = -1.0
    give(ap, grads_at(2, ap))
    with pytest.raises(ValueError, match="lr"):
        aopt.step()
    aopt.param_groups[1]["lr"] = lr
    step_both(tp, topt, ap, aopt, range(2, 5), _torch_step_filling, "")


@pytest.mark.parametrize("step", [float("nan"), 2.5, -1, torch.tensor(float("inf"))], ids=repr)
@pytest.mark.parametrize("name", [n for n, s in ALGORITHMS.items() if s.torch_step_in_group])
def test_a_group_step_that_is_no_count_is_refused_before_writing(name, step):
    params = make_params()
    opt = getattr(aft, name)(params, lr=0.01)
    for t in range(2):
        give(params, grads_at(t, params))
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["step"] = step
    sd["param_groups"][0]["lr"] = 0.5
    snap = snapshot(params, opt)
    with pytest.raises(ValueError, match=r"\['param_groups'\]\[0\]\['step'\] must be a finite "
                                         r"whole number >= 0"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.01
    assert opt.state_dict()["param_groups"][0]["step"] == 2
    assert_unchanged(params, opt, snap, "after the refused checkpoint")


def test_adagrad_group_initial_accumulator_value_starts_that_groups_sum():
    """A documented difference: torch.optim.Adagrad starts every group's sum from the
    constructor's value; adamfast.torch honours the group's own."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = aft.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 0.5}],
                      initial_accumulator_value=0.25)
    sd = opt.state_dict()["state"]
    assert torch.equal(sd[0]["sum"], torch.full((3,), 0.25))
    assert torch.equal(sd[1]["sum"], torch.full((2,), 0.5))
    ta, tb = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    ref = torch.optim.Adagrad([{"params": [ta]},
                               {"params": [tb], "initial_accumulator_value": 0.5}],
                              initial_accumulator_value=0.25)
    assert torch.equal(ref.state[tb]["sum"], torch.full((2,), 0.25))  # torch ignores the group's
