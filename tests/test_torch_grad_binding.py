"""adamfast.torch binds ``p.grad`` to a view of its flat gradient buffer so that
backward accumulates in place; that binding must never change what a step reads
from what torch.optim reads.  A grad the user still holds keeps being the grad,
and a bound view whose storage was rebound (``p.grad.data = ...``) is read as
rebound."""

import collections
import collections.abc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import adamfast.torch as aft  # noqa: E402

CLASSES = ["SGD", "Adam"]


def pair(name, shapes=((4,), (3, 2))):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    return a, getattr(aft, name)(a, lr=0.1), b, getattr(torch.optim, name)(b, lr=0.1)


def same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", CLASSES)
def test_a_grad_buffer_the_user_holds_stays_the_grad(name):
    # A preallocated gradient buffer, assigned once and rewritten in place.
    pa, oa, pb, ob = pair(name)
    bufs_a = [torch.zeros_like(p) for p in pa]
    bufs_b = [torch.zeros_like(p) for p in pb]
    for p, buf in zip(pa + pb, bufs_a + bufs_b):
        p.grad = buf
    for t in range(4):
        for bufs in (bufs_a, bufs_b):
            for j, buf in enumerate(bufs):
                buf.copy_(torch.full_like(buf, (t + 1.0) * (-1) ** (t + j)))
        oa.step()
        ob.step()
        assert all(p.grad is buf for p, buf in zip(pa, bufs_a))
        same(pa, pb)


@pytest.mark.parametrize("name", CLASSES)
def test_grads_captured_after_backward_stay_live(name):
    torch.manual_seed(1)
    lin_a, lin_b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    lin_b.load_state_dict(lin_a.state_dict())
    oa = getattr(aft, name)(lin_a.parameters(), lr=0.1)
    ob = getattr(torch.optim, name)(lin_b.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    captured = {}
    for t in range(4):
        for lin, opt in ((lin_a, oa), (lin_b, ob)):
            opt.zero_grad(set_to_none=False)
            lin(x).pow(2).sum().backward()
            if t == 0:
                captured[id(lin)] = [p.grad for p in lin.parameters()]
            for g in captured[id(lin)]:  # masking through references taken once
                g.mul_(0.5 if t % 2 else 0.0)
            opt.step()
    same(lin_a.parameters(), lin_b.parameters())


def test_a_grad_nobody_else_holds_is_still_bound():
    # The zero-copy path: a fresh grad is copied in once and p.grad becomes the
    # flat buffer's view, which the next backward accumulates into.
    pa, oa, _, _ = pair("Adam")
    for p in pa:
        p.grad = torch.ones_like(p)
    oa.step()
    assert all(p.grad is v for p, v in zip(pa, oa._slabs[0].gviews))


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("keep", [False, True])
def test_a_bound_grad_whose_data_is_rebound_is_read_as_rebound(name, keep):
    # p.grad.data = ... keeps the tensor object (the bound view) but not its memory.
    pa, oa, pb, ob = pair(name)
    w = [torch.arange(1.0, p.numel() + 1).reshape(p.shape) for p in pa]
    kept = []
    for t in range(4):
        for params, opt in ((pa, oa), (pb, ob)):
            opt.zero_grad(set_to_none=False)
            sum((p * c).sum() for p, c in zip(params, w)).backward()
            if t == 1:
                for p in params:
                    new = p.grad.data / 4
                    p.grad.data = new
                    if keep and params is pa:
                        kept.append(new)
            opt.step()
        same(pa, pb)
    oa.zero_grad(set_to_none=False)
    assert all(not p.grad.any() for p in pa)


def many_stepped(seed, n=100):
    """n params and their Adam, one step taken."""
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(n)]
    opt = aft.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return params, opt


def test_a_rebound_param_is_refused_at_the_next_step_among_many():
    # Any param's .data rebound is found at the next step, however many params there
    # are, and the step writes nothing.
    params, opt = many_stepped(2)
    params[97].data = params[97].data.clone()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"param 97 .* no longer shares memory"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_a_rebound_param_whose_old_memory_is_kept_is_found_within_a_rotation():
    # old = p.data; p.data = new: the flat buffer keeps its count of users, so the
    # rotating pointer check is what finds it, within len(params) / _CHECK steps.
    from adamfast.torch._common import _CHECK

    params, opt = many_stepped(3)
    old = params[97].data
    params[97].data = old.clone()
    with pytest.raises(RuntimeError, match=r"param 97 .* no longer shares memory"):
        for _ in range(-(-len(params) // _CHECK)):
            opt.step()
    assert old.data_ptr() != params[97].data_ptr()


@pytest.mark.parametrize("name", CLASSES)
def test_a_grad_on_memory_numpy_owns_stays_the_grad(name):
    # torch counts no user of memory a NumPy array owns: such a grad is the user's.
    pa, oa, pb, ob = pair(name)
    bufs = [np.zeros(p.shape, np.float32) for p in pa]
    for p, buf in zip(pa, bufs):
        p.grad = torch.from_numpy(buf)
    for t in range(4):
        for buf in bufs:
            buf[...] = t + 1.0
        for p, buf in zip(pb, bufs):
            p.grad = torch.from_numpy(buf.copy())
        oa.step()
        ob.step()
        same(pa, pb)


@pytest.mark.parametrize("name", CLASSES)
def test_grad_data_rebound_while_the_old_memory_is_kept_is_read(name):
    # Manual averaging written with .data: the list of old grads is alive at the step,
    # so the flat buffer's count of users does not move.
    torch.manual_seed(4)
    ma = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    mb = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    mb.load_state_dict(ma.state_dict())
    for m, opt in ((ma, getattr(aft, name)(ma.parameters(), lr=0.1)),
                   (mb, getattr(torch.optim, name)(mb.parameters(), lr=0.1))):
        torch.manual_seed(5)
        for t in range(5):
            opt.zero_grad(set_to_none=False)
            x = torch.randn(4, 8)
            torch.nn.functional.mse_loss(m(x), torch.randn(4, 8)).backward()
            if t >= 2:
                grads = [p.grad.data for p in m.parameters()]
                flat = torch.cat([g.reshape(-1) for g in grads]) / 2
                off = 0
                for p in m.parameters():
                    p.grad.data = flat[off:off + p.numel()].view_as(p)
                    off += p.numel()
            opt.step()
    same(ma.parameters(), mb.parameters())


def test_a_param_in_shared_memory_is_refused():
    # Hogwild: each process's optimizer must update the shared tensor itself, which a
    # flat buffer of the optimizer's own cannot do.
    model = torch.nn.Linear(3, 2)
    model.share_memory()
    with pytest.raises(ValueError, match=r"is in shared memory"):
        aft.SGD(model.parameters(), lr=0.1)
    assert model.weight.is_shared()


RESETS = {
    "exp_avg replaced": lambda o, ps: [o.state[p].__setitem__("exp_avg", torch.zeros_like(p))
                                       for p in ps],
    "step replaced": lambda o, ps: [o.state[p].__setitem__("step", torch.tensor(0.0))
                                    for p in ps],
    "one param's state cleared": lambda o, ps: o.state[ps[0]].clear(),
    "one param's state deleted": lambda o, ps: o.state.__delitem__(ps[1]),
    "state.clear()": lambda o, ps: o.state.clear(),
    "opt.state replaced": lambda o, ps: setattr(o, "state", collections.defaultdict(dict)),
}


@pytest.mark.parametrize("reset", list(RESETS))
def test_state_edited_through_opt_state_is_what_the_next_step_uses(reset):
    # Resetting moments through opt.state, as continual-learning and RL code does with
    # torch.optim; the checkpoint afterwards holds what the step used.
    torch.manual_seed(0)
    pa = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    oa, ob = aft.Adam(pa, lr=1e-2), torch.optim.Adam(pb, lr=1e-2)
    for t in range(8):
        gs = [torch.randn(5) for _ in pa]
        for ps, o in ((pa, oa), (pb, ob)):
            if t == 4:
                RESETS[reset](o, ps)
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            o.step()
        same(pa, pb)
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sb:
        for key in sb[k]:
            np.testing.assert_allclose(sa[k][key].numpy(), sb[k][key].numpy(), rtol=1e-6,
                                       atol=1e-7, err_msg=f"{reset}: state {k} {key}")


def test_a_replaced_state_tensor_of_the_wrong_size_is_refused_before_writing():
    p = torch.nn.Parameter(torch.ones(4))
    opt = aft.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(3)
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"opt\.state\[param 0\]\['exp_avg'\] must have 4 "
                                         r"elements, got shape \(3,\)"):
        opt.step()
    assert torch.equal(p.detach(), before)


class _ListLike(collections.abc.MutableSequence):
    """A mutable sequence that is no list, as a config library's (OmegaConf's ListConfig)."""

    def __init__(self, items):
        self._items = list(items)

    def __getitem__(self, i):
        return self._items[i]

    def __setitem__(self, i, v):
        self._items[i] = v

    def __delitem__(self, i):
        del self._items[i]

    def __len__(self):
        return len(self._items)

    def insert(self, i, v):
        self._items.insert(i, v)


@pytest.mark.parametrize("make", [np.array, _ListLike], ids=["ndarray", "sequence"])
def test_betas_as_any_sequence_work_as_in_torch_and_are_read_each_step(make):
    pa, pb = [torch.nn.Parameter(torch.ones(3))], [torch.nn.Parameter(torch.ones(3))]
    oa = aft.Adam(pa, lr=0.1, betas=make([0.9, 0.99]))
    ob = torch.optim.Adam(pb, lr=0.1, betas=(0.9, 0.99))
    for t in range(4):
        if t == 2:  # a group override of the same kind, edited in place
            oa.param_groups[0]["betas"] = make([0.8, 0.99])
            ob.param_groups[0]["betas"] = (0.8, 0.99)
        if t == 3:
            oa.param_groups[0]["betas"][0] = 0.5
            ob.param_groups[0]["betas"] = (0.5, 0.99)
        for p in pa + pb:
            p.grad = torch.full((3,), t + 1.0)
        oa.step()
        ob.step()
        same(pa, pb)


@pytest.mark.parametrize("then", ["add_param_group", "deepcopy", "pickle"])
def test_a_state_reset_survives_what_relays_or_copies_the_optimizer(then):
    import copy
    import pickle

    def run(cls):
        torch.manual_seed(0)
        p, q = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
        opt = cls([p], lr=1e-2)
        for _ in range(3):
            p.grad = torch.full((4,), 0.5)
            opt.step()
        opt.state[p].clear()
        if then == "add_param_group":
            opt.add_param_group({"params": [q]})
        elif then == "deepcopy":
            p, opt = copy.deepcopy((p, opt))
        else:
            p, opt = pickle.loads(pickle.dumps((p, opt)))
        for _ in range(2):
            p.grad = torch.full((4,), 0.5)
            opt.step()
        return p, opt.state[p]

    (pa, sa), (pb, sb) = run(aft.Adam), run(torch.optim.Adam)
    same([pa], [pb])
    assert float(sa["step"]) == float(sb["step"]) == 2.0
