"""The NumPy optimizers' findings of issue 14: an interrupted step keeps its counters with its
buffers (3), concurrent step() calls on one optimizer are serialized (4), the param-group
structure changes only through add_param_group (5), and NAdam's group state is validated (9a);
and a per-group switch gating a state buffer (AMSGrad, centered, momentum) switched off leaves
that group's buffer as torch does, whatever the other groups' settings."""

import copy
import math
import pickle
import sys
import threading
import time

import numpy as np
import pytest

import adamfast
from adamfast.algorithms import ALGORITHMS
from conftest import assert_close
from optim_cases import CASES, buffer_switch_params

SHAPES = [(3, 4), (17,), ()]


def arrays(seed=0, dtype=np.float64, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def snapshot(opt):
    """Everything a step may change, as bytes and plain values."""
    sd = opt.state_dict()
    out = {k: (bits(v) if isinstance(v, np.ndarray) else v) for k, v in sd.items()}
    out["params"] = bits(opt.flat_params)
    return out


# --- 3: a step is atomic as the user sees it ------------------------------------------------

def _interrupting(real):
    """Run the real entry point, then raise KeyboardInterrupt as CPython does when a
    signal arrived during the call: the work is done, the caller never sees the return."""
    def wrapper(*args):
        done = real(*args)
        if done is not False:  # False: a fast path declined and wrote nothing
            raise KeyboardInterrupt
        return done
    return wrapper


# (class, constructor keywords, two groups?, step keywords): the fast paths, the general
# path, the guarded path, the EMA and the algorithms with group state.
INTERRUPT_CASES = {
    "adam": ("Adam", {}, False, {}),
    "adam-amsgrad-2groups": ("Adam", {"amsgrad": True}, True, {}),
    "nadam": ("NAdam", {}, False, {}),
    "nadam-2groups": ("NAdam", {}, True, {}),
    "nadam-ema": ("NAdam", {"ema_decay": 0.9}, False, {}),
    "sgd-momentum-clip": ("SGD", {"momentum": 0.9, "max_grad_norm": 1.0}, True, {}),
    "adamw-scaled": ("AdamW", {}, False, {"grad_scale": 4.0}),
}


def _make(name, kw, two_groups, backend, seed=0):
    init = arrays(seed)
    params = [{"params": init[:2]}, {"params": init[2:], "lr": 0.05}] if two_groups else init
    return getattr(adamfast, name)(params, backend=backend, **kw)


@pytest.mark.parametrize("case", list(INTERRUPT_CASES))
def test_interrupt_right_after_the_kernel_keeps_counters_with_the_buffers(backend, case,
                                                                          monkeypatch):
    name, kw, two, step_kw = INTERRUPT_CASES[case]
    opt, expected_opt = _make(name, kw, two, backend), _make(name, kw, two, backend)
    for t in range(1, 3):
        g = arrays(10 + t)
        opt.step(g, **step_kw)
        expected_opt.step(g, **step_kw)
    b = opt._backend
    for attr in ("kernel", "step_fast", "adam_fast"):
        if getattr(b, attr) is not None:
            monkeypatch.setattr(b, attr, _interrupting(getattr(b, attr)))
    if b.adam_call is not None:  # it makes the C step's call: the call interrupts
        make = b.adam_call
        monkeypatch.setattr(b, "adam_call", lambda *args: _interrupting(make(*args)))
    g = arrays(13)
    for dst, src in zip(opt.grads, g):
        dst[...] = src
    with pytest.raises(KeyboardInterrupt):
        opt.step(**step_kw)
    monkeypatch.undo()
    expected_opt.step(g, **step_kw)
    # The kernel wrote step 3: the counters (step_count, NAdam's mu_product, SGD's
    # momentum flag) say so too.
    assert snapshot(opt) == snapshot(expected_opt)
    for t in range(4, 6):
        g = arrays(10 + t)
        opt.step(g, **step_kw)
        expected_opt.step(g, **step_kw)
    assert snapshot(opt) == snapshot(expected_opt)


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs setitimer")
@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_real_interrupts_at_random_times_never_split_a_step(name, backend):
    """A timer signal whose handler raises KeyboardInterrupt, as Ctrl-C does, at random
    times in a loop of steps: wherever it lands, the counters match the buffers.  (The
    cython kernels are C; numba's and the reference's Python parts mark an exit before
    their writes, see adamfast.optim._kernel_wrote.)"""
    import random
    import signal

    cls = getattr(adamfast, name)

    def fresh(n):
        o = cls([np.full(n, 0.5)], backend=backend)
        o.grads[0][...] = 0.25
        return o

    expected_opt = fresh(2)
    expected = [snapshot(expected_opt)]
    for _ in range(3000):
        expected_opt.step()
        expected.append(snapshot(expected_opt))

    def alarm(signum, frame):
        raise KeyboardInterrupt

    rng = random.Random(0)
    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        for _ in range(40):
            opt = fresh(2)
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-5, 2e-3))
                for _ in range(3000):
                    opt.step()
                # Bounded, not signal.pause(): CPython discards an exception raised
                # inside a weakref or GC callback, so the alarm's KeyboardInterrupt
                # can be lost, and pause() would then wait forever.
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    time.sleep(1e-3)
            except KeyboardInterrupt:
                pass
            assert snapshot(opt) == expected[opt.step_count]
            assert opt._lock.acquire(False)  # and the lock is free
            opt._lock.release()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", ["adam", "nadam-2groups", "nadam-ema"])
def test_a_kernel_that_refuses_before_writing_advances_nothing(backend, case, monkeypatch):
    name, kw, two, step_kw = INTERRUPT_CASES[case]
    opt, expected_opt = _make(name, kw, two, backend), _make(name, kw, two, backend)
    opt.step(arrays(11))
    expected_opt.step(arrays(11))
    before = snapshot(opt)

    def refusing(*args):
        raise ValueError("refused")

    b = opt._backend
    for attr in ("kernel", "step_fast", "adam_fast"):
        if getattr(b, attr) is not None:
            monkeypatch.setattr(b, attr, refusing)
    if b.adam_call is not None:  # it makes the C step's call: the call refuses
        monkeypatch.setattr(b, "adam_call", lambda *args: refusing)
    with pytest.raises(ValueError, match="refused"):
        opt.step(arrays(12))
    monkeypatch.undo()
    assert snapshot(opt) == before
    opt.step(arrays(12))
    expected_opt.step(arrays(12))
    assert snapshot(opt) == snapshot(expected_opt)


@pytest.mark.parametrize("two_groups", [False, True])
def test_an_interrupt_inside_the_numpy_backend_before_it_writes_advances_nothing(
        two_groups, monkeypatch):
    """The reference is Python: a KeyboardInterrupt can arrive while it computes, before
    any write.  Then neither the buffers nor the counters move."""
    import adamfast._numpy_backend as R

    opt, expected_opt = (_make("NAdam", {}, two_groups, "numpy") for _ in range(2))
    opt.step(arrays(11))
    expected_opt.step(arrays(11))
    before = snapshot(opt)
    kid = opt._plan[0]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "_BY_ID", R._BY_ID[:kid] + (interrupted,) + R._BY_ID[kid + 1:])
    with pytest.raises(KeyboardInterrupt):
        opt.step(arrays(12))
    monkeypatch.undo()
    assert snapshot(opt) == before
    opt.step(arrays(12))
    expected_opt.step(arrays(12))
    assert snapshot(opt) == snapshot(expected_opt)


def test_a_python_kernel_stopped_before_its_writes_says_so(backend, monkeypatch):
    """A kernel written in Python (numba's validation runs in Python) can be interrupted
    before it writes: it marks the exception ``adamfast_unwritten``, and nothing advances."""
    opt, expected_opt = (_make("NAdam", {}, True, backend) for _ in range(2))
    opt.step(arrays(11))
    expected_opt.step(arrays(11))
    before = snapshot(opt)

    def stopped(*args):
        exc = KeyboardInterrupt()
        exc.adamfast_unwritten = True
        raise exc

    monkeypatch.setattr(opt._backend, "kernel", stopped)
    with pytest.raises(KeyboardInterrupt):
        opt.step(arrays(12))
    monkeypatch.undo()
    assert snapshot(opt) == before
    opt.step(arrays(12))
    expected_opt.step(arrays(12))
    assert snapshot(opt) == snapshot(expected_opt)


# --- 4: concurrent step() on one optimizer ----------------------------------------------------

@pytest.fixture
def busy_switching():
    """Switch threads as often as the interpreter can, so that unsynchronised steps collide."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_concurrent_steps_on_one_optimizer_are_serialized(backend, name, busy_switching):
    init = [np.linspace(-1, 1, 20_000), np.linspace(0, 1, 7)]
    opt = getattr(adamfast, name)(init, backend=backend)
    seq = getattr(adamfast, name)(init, backend=backend)
    for o in (opt, seq):
        for dst, src in zip(o.grads, arrays(3, shapes=[(20_000,), (7,)])):
            dst[...] = src
    barrier = threading.Barrier(4)
    errors = []

    def worker():
        try:
            barrier.wait()
            for _ in range(10):
                opt.step()
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and not any(th.is_alive() for th in threads)
    for _ in range(40):
        seq.step()
    assert opt.step_count == 40
    assert snapshot(opt) == snapshot(seq)


def test_step_from_inside_its_own_step_is_refused_not_a_deadlock():
    box = {}

    def schedule(t):
        box["opt"].step()  # a schedule that steps its own optimizer
        return 0.1

    opt = box["opt"] = adamfast.Adam([np.ones(5)], lr=schedule)
    before = snapshot(opt)
    raised = []

    def run():
        try:
            opt.step()
        except RuntimeError as exc:
            raised.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(30)
    assert not th.is_alive(), "step() inside step() deadlocked"
    assert raised and "step()" in str(raised[0])
    assert snapshot(opt) == before


def test_different_optimizers_do_not_wait_for_each_other():
    a = adamfast.Adam([np.ones(5)])
    b = adamfast.Adam([np.ones(5)])
    done = threading.Event()
    with a._lock:  # a step of `a` in progress
        th = threading.Thread(target=lambda: (b.step(), done.set()), daemon=True)
        th.start()
        assert done.wait(30)
    assert b.step_count == 1 and a.step_count == 0


def test_copies_have_their_own_lock_and_keep_stepping():
    o = adamfast.NAdam([np.ones(4), np.ones(3)], ema_decay=0.9)
    o.step([np.ones(4), np.ones(3)])
    for clone in (lambda x: pickle.loads(pickle.dumps(x)), copy.deepcopy, copy.copy):
        c = clone(o)
        assert c._lock is not o._lock
        with o._lock:  # o busy: the copy steps anyway
            c.step([np.ones(4), np.ones(3)])
        o.step([np.ones(4), np.ones(3)])
        assert snapshot(c) == snapshot(o)


# --- 5: the structure of param_groups ---------------------------------------------------------

def _two_groups(backend, name="Adam", **kw):
    init = arrays(0)
    return getattr(adamfast, name)([{"params": init[:2]}, {"params": init[2:], "lr": 0.1}],
                                   backend=backend, **kw)


def _rebind_params(opt):
    opt.param_groups[1]["params"] = [np.ones(3)]


def _same_arrays_new_list(opt):
    opt.param_groups[1]["params"] = list(opt.param_groups[1]["params"])


def _replace_group(opt):
    opt.param_groups[1] = dict(opt.param_groups[1], params=[np.ones(3)])


def _append_dict(opt):
    opt.param_groups.append({"params": [np.ones(3)], "lr": 0.1})


def _rebind_list(opt):
    opt.param_groups = [opt.param_groups[1], opt.param_groups[0]]


STRUCTURE_CHANGES = {
    "del-group": lambda o: o.param_groups.__delitem__(1),
    "pop-first-group": lambda o: o.param_groups.pop(0),
    "reverse": lambda o: o.param_groups.reverse(),
    "append-dict": _append_dict,
    "rebind-param_groups": _rebind_list,
    "replace-group-dict": _replace_group,
    "rebind-params": _rebind_params,
    "same-arrays-new-list": _same_arrays_new_list,
    "del-params-key": lambda o: o.param_groups[0].pop("params"),
}


@pytest.mark.parametrize("change", list(STRUCTURE_CHANGES))
def test_changing_the_group_structure_is_refused_alike_before_anything_is_written(backend,
                                                                                  change):
    opt = _two_groups(backend)
    opt.step(arrays(1))
    before = snapshot(opt)
    STRUCTURE_CHANGES[change](opt)
    for call in (lambda: opt.step(arrays(2)), opt.step, opt.state_dict,
                 lambda: opt.add_param_group({"params": [np.ones(2)]})):
        with pytest.raises(ValueError, match=r"param_groups no longer matches .*add_param_group"):
            call()
    assert bits(opt.flat_params) == before["params"] and opt.step_count == 1
    for name, buf in opt.state.items():
        assert bits(buf) == before[name], name


@pytest.mark.parametrize("mutate", [lambda ps: ps.append(np.ones(2)), lambda ps: ps.pop(),
                                    lambda ps: ps.__setitem__(0, np.ones(2)),
                                    lambda ps: ps.__delitem__(0), lambda ps: ps.clear(),
                                    lambda ps: ps.extend([np.ones(2)]), lambda ps: ps.reverse(),
                                    lambda ps: ps.__iadd__([np.ones(2)])],
                         ids=["append", "pop", "setitem", "delitem", "clear", "extend",
                              "reverse", "iadd"])
def test_a_groups_params_list_cannot_be_changed_in_place(backend, mutate):
    opt = _two_groups(backend)
    params = opt.param_groups[0]["params"]
    views = list(params)
    with pytest.raises(TypeError, match=r"'params' .*add_param_group"):
        mutate(params)
    assert len(params) == len(views) and all(a is b for a, b in zip(params, views))
    opt.step(arrays(1))  # the optimizer is intact
    assert opt.step_count == 1


def _separate(name, kw, init, backend, steps, grads):
    """The same params stepped alone, from their own first step."""
    o = getattr(adamfast, name)(init, backend=backend, **kw)
    for g in grads[-steps:]:
        o.step(g)
    return o


ADD_CASES = {
    "adam": ("Adam", {}, {"lr": 0.01}),
    "adam-amsgrad-in-new-group": ("Adam", {}, {"amsgrad": True, "weight_decay": 0.1}),
    "nadam-ema": ("NAdam", {"ema_decay": 0.9}, {"lr": 0.01}),
    "sgd-momentum": ("SGD", {"lr": 0.1, "momentum": 0.9}, {"nesterov": True}),
    "adagrad": ("Adagrad", {"lr_decay": 0.01}, {"initial_accumulator_value": 0.5}),
    "radam": ("RAdam", {}, {}),
}


@pytest.mark.parametrize("case", list(ADD_CASES))
def test_add_param_group_continues_like_torch(backend, case):
    """Existing params keep their state; the new group starts from its own first step
    (torch keeps a step per param), with the defaults for what it does not override."""
    name, kw, overrides = ADD_CASES[case]
    old, new = arrays(0), arrays(1, shapes=[(5,), (2, 3)])
    opt = getattr(adamfast, name)(old, backend=backend, **kw)
    grads = [arrays(100 + t) + arrays(200 + t, shapes=[(5,), (2, 3)]) for t in range(1, 8)]
    for g in grads[:3]:
        opt.step(g[:3])
    opt.add_param_group({"params": new, **overrides})
    assert len(opt.param_groups) == 2 and len(opt.params) == 5
    group = opt.param_groups[1]
    assert set(group) == {"params", *opt.defaults}
    assert all(group[k] == overrides.get(k, v) for k, v in opt.defaults.items())
    for g in grads[3:]:
        opt.step(g)
    assert opt.step_count == 7
    first = _separate(name, kw, old, backend, 7, [g[:3] for g in grads])
    second = _separate(name, dict(kw, **overrides), new, backend, 4, [g[3:] for g in grads])
    for live, ref in zip(opt.params, first.params + second.params):
        assert bits(live) == bits(ref)
    n = first.flat_params.size
    for name_, buf in opt.state.items():
        for ref, part in ((first, buf[:n]), (second, buf[n:])):
            if name_ in ref.state:
                assert bits(part) == bits(ref.state[name_]), name_
    if opt.flat_ema is not None:
        assert bits(opt.flat_ema) == bits(np.concatenate([first.flat_ema, second.flat_ema]))
    # Every view follows the new buffers.
    for views, flat in ((opt.params, opt.flat_params), (opt.grads, opt.flat_grads)):
        assert all(np.shares_memory(v, flat) for v in views)
    assert all(a is b for a, b in zip(opt.param_groups[0]["params"] + group["params"],
                                      opt.params))
    sd = opt.state_dict()
    assert sd["param_groups"][1]["params"] == [3, 4]


def test_add_param_group_state_dict_pickle_and_checkpoint_round_trip(backend, tmp_path):
    opt = adamfast.NAdam(arrays(0), backend=backend, ema_decay=0.5)
    opt.step(arrays(1))
    opt.add_param_group({"params": [np.ones(4)], "lr": 0.1})
    opt.step(arrays(2) + [np.full(4, 0.5)])
    clone = adamfast.NAdam([{"params": arrays(5)}, {"params": [np.zeros(4)]}], backend=backend,
                           ema_decay=0.5)
    clone.load_state_dict(opt.state_dict())
    np.copyto(clone.flat_params, opt.flat_params)
    adamfast.save_checkpoint(tmp_path / "c.npz", opt)
    ckpt = adamfast.NAdam([{"params": arrays(5)}, {"params": [np.zeros(4)]}], backend=backend,
                          ema_decay=0.5)
    adamfast.load_checkpoint(tmp_path / "c.npz", ckpt)
    copies = [clone, ckpt, pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)]
    for t in range(3, 6):
        g = arrays(t) + [np.full(4, t / 10)]
        for o in [opt] + copies:
            o.step(g)
    for c in copies:
        assert snapshot(c) == snapshot(opt)


def _dtype_mismatch(opt):
    return {"params": [np.ones(3, np.float32)]}


BAD_GROUPS = {
    "not-a-mapping": (lambda o: [np.ones(3)], TypeError, "param_group must be a dict"),
    "no-params": (lambda o: {"lr": 0.1}, ValueError, "'params'"),
    "empty": (lambda o: {"params": []}, ValueError, "empty"),
    "a-set": (lambda o: {"params": {1, 2}}, TypeError, "ordered"),
    "not-an-array": (lambda o: {"params": [[1.0, 2.0]]}, TypeError, "numpy.ndarray"),
    "dtype": (_dtype_mismatch, TypeError, "dtype"),
    "masked": (lambda o: {"params": [np.ma.ones(3)]}, TypeError, "masked"),
    "own-param": (lambda o: {"params": [o.params[1]]}, ValueError, "already"),
    "twice": (lambda o: (lambda a: {"params": [a, a]})(np.ones(3)), ValueError, "twice"),
    "unknown-hp": (lambda o: {"params": [np.ones(3)], "lrr": 0.1}, TypeError, "lrr"),
    "bad-hp": (lambda o: {"params": [np.ones(3)], "lr": -1.0}, ValueError, "lr"),
    "bad-betas": (lambda o: {"params": [np.ones(3)], "betas": (0.9, 1.0)}, ValueError, "betas"),
}


@pytest.mark.parametrize("bad", list(BAD_GROUPS))
def test_add_param_group_validates_everything_before_changing_anything(backend, bad):
    opt = adamfast.Adam(arrays(0), backend=backend)
    opt.step(arrays(1))
    before = snapshot(opt)
    flat, views, groups = opt.flat_params, opt.params, list(opt.param_groups)
    make, exc, msg = BAD_GROUPS[bad]
    with pytest.raises(exc, match=msg):
        opt.add_param_group(make(opt))
    assert opt.flat_params is flat and opt.params is views and opt.param_groups == groups
    assert snapshot(opt) == before
    opt.step(arrays(2))


def test_add_param_group_fills_defaults_as_set_on_the_optimizer():
    opt = adamfast.AdamW([np.ones(3)], lr=0.01, weight_decay=0.5)
    opt.eps = 1e-6  # sets every group and the defaults
    opt.add_param_group({"params": np.ones(2)})
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["eps"] == 1e-6
    assert opt.param_groups[1]["weight_decay"] == 0.5


def test_step_count_cannot_go_back_before_a_group_joined():
    opt = adamfast.Adam([np.ones(3)])
    for _ in range(3):
        opt.step([np.ones(3)])
    opt.add_param_group({"params": [np.ones(2)]})
    opt.step_count = 3  # unchanged: fine
    with pytest.raises(ValueError, match="step_count"):
        opt.step_count = 2
    assert opt.step_count == 3


@pytest.mark.parametrize("bad", [[5], [3, 1], [-1, 1], [1.0, 1], "x"])
def test_load_state_dict_checks_group_step(bad):
    opt = adamfast.Adam([np.ones(3)])
    opt.step([np.ones(3)])
    opt.add_param_group({"params": [np.ones(2)]})
    opt.step([np.ones(3), np.ones(2)])
    sd = opt.state_dict()
    assert sd["step"] == 2 and sd["group_step"] == [2, 1]
    sd["group_step"] = bad
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"state_dict\['group_step'\] must be a list of 2 "):
        opt.load_state_dict(sd)
    assert snapshot(opt) == before


# --- 9a: NAdam's group state ----------------------------------------------------------------

@pytest.mark.parametrize("value,exc", [(float("nan"), ValueError), (-1.0, ValueError),
                                       (math.inf, ValueError), (1.5, ValueError),
                                       (None, TypeError), ("0.5", TypeError)])
def test_nadam_step_validates_mu_product(backend, value, exc):
    p, g, m, v = np.ones(8), np.full(8, 0.5), np.zeros(8), np.zeros(8)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(exc, match=r"mu_product must be a finite number in \[0, 1\].*got "
                                  + ("nan" if value != value else repr(value).replace(".", r"\."))):
        adamfast.nadam_step(p, g, m, v, step=2, mu_product=value, backend=backend)
    assert all(bits(a) == bits(b) for a, b in zip((p, m, v), before))


def test_mu_product_of_zero_is_a_real_state():
    """beta1 = 0 makes every mu_t 0, so mu_product is exactly 0 after step 1 (and a long
    run with mu_t < 1/2 underflows to 0): the functional step takes what it returned."""
    p, m, v = np.ones(8), np.zeros(8), np.zeros(8)
    opt = adamfast.NAdam([np.ones(8)], betas=(0.0, 0.999))
    mu = 1.0
    for t in range(1, 4):
        g = np.full(8, 0.1 * t)
        opt.step([g])
        mu = adamfast.nadam_step(p, g, m, v, step=t, mu_product=mu, betas=(0.0, 0.999)
                                 ).group_state["mu_product"]
    assert mu == 0.0 == opt.state_dict()["group_state"][0]["mu_product"]
    assert bits(p) == bits(opt.flat_params)


@pytest.mark.parametrize("value,exc", [(float("nan"), ValueError), (-0.5, ValueError),
                                       (2.0, ValueError), (None, TypeError)])
def test_nadam_load_state_dict_validates_mu_product(value, exc):
    opt = adamfast.NAdam([np.ones(4)])
    opt.step([np.ones(4)])
    sd = opt.state_dict()
    sd["group_state"][0]["mu_product"] = value
    opt.exp_avg[...] = 7.0  # must survive the refused load
    before = snapshot(opt)
    with pytest.raises(exc, match=r"state_dict\['group_state'\]\[0\]\['mu_product'\] must be "
                                  r"a finite number in \[0, 1\]"):
        opt.load_state_dict(sd)
    assert snapshot(opt) == before


def test_every_group_state_is_declared_with_a_check():
    for spec in ALGORITHMS.values():
        if spec.gstate is not None:
            assert spec.validate_gstate(dict(spec.gstate)) == spec.gstate


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adan"])
def test_betas_list_changed_in_place_is_seen_like_a_new_list(backend, name):
    # A user who edits a group's betas list in place (a schedule on beta1) must get
    # the step those betas give, as with torch.optim, not the cached old values.
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(100).astype(np.float32)
    grads = [rng.standard_normal(100).astype(np.float32) for _ in range(4)]
    first = list(ALGORITHMS[name].defaults["betas"])
    later = [0.5] + first[1:]
    runs = []
    for in_place in (True, False):
        opt = getattr(adamfast, name)([p0.copy()], betas=list(first), backend=backend)
        for k, g in enumerate(grads):
            if k == 2:
                if in_place:
                    opt.param_groups[0]["betas"][0] = later[0]
                else:
                    opt.param_groups[0]["betas"] = list(later)
            opt.step([g])
        runs.append((opt.params[0].copy(), {k: v.copy() for k, v in opt.state.items()}))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for key in runs[1][1]:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key], err_msg=key)


# --- a switch gating a state buffer acts per group ------------------------------------------

SWITCH_STEPS = 14
SWITCH_OFF = range(4, 10)  # the steps (1-based) where group 0 has the switch off


def _switch_grads(dtype, t):
    # Large while the switch is off, small before and after: a running maximum (AMSGrad)
    # or an average (grad_avg, momentum_buffer) updated in those steps stays far from
    # one left alone, in the steps after the switch is back on.
    rng = np.random.default_rng(900 + t)
    scale = 10.0 if t in SWITCH_OFF else 0.01
    return [np.asarray(rng.standard_normal(s) * scale + 0.1, dtype) for s in SHAPES]


def _run_switching(name, on, off, init, backend, two_groups, dtype):
    lr = CASES[name].parity_lr
    groups = [{"params": init[:2], **on}]
    if two_groups:
        groups.append({"params": init[2:], **on})
    opt = getattr(adamfast, name)(groups, lr=lr, backend=backend)
    n = len(init) if two_groups else 2
    for t in range(1, SWITCH_STEPS + 1):
        opt.param_groups[0].update(off if t in SWITCH_OFF else on)
        opt.step(_switch_grads(dtype, t)[:n])
    return opt


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name,on,off", buffer_switch_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_switch_off_in_one_group_leaves_its_buffer_as_torch(backend, name, on, off, two_groups,
                                                            dtype):
    """Group 0 switches a buffer's flag off for some steps and on again; group 1 (when
    there) keeps it on.  torch.optim leaves group 0's buffer alone while off: params
    and every state buffer of both groups match torch element by element."""
    torch = pytest.importorskip("torch")
    init = arrays(3, dtype)
    tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    n = len(init) if two_groups else 2
    tgroups = [{"params": tparams[:2], **on}]
    if two_groups:
        tgroups.append({"params": tparams[2:], **on})
    topt = getattr(torch.optim, CASES[name].torch_name)(tgroups, lr=CASES[name].parity_lr,
                                                        foreach=False)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    try:
        for t in range(1, SWITCH_STEPS + 1):
            topt.param_groups[0].update(off if t in SWITCH_OFF else on)
            for tp, g in zip(tparams[:n], _switch_grads(dtype, t)):
                tp.grad = torch.from_numpy(g.copy())
            topt.step()
    finally:
        torch.set_default_dtype(before)
    opt = _run_switching(name, on, off, init, backend, two_groups, dtype)
    for i, (mine, tp) in enumerate(zip(opt.params, tparams[:n])):
        assert_close(mine, tp.detach().numpy(), dtype, f"params[{i}]")
        state = topt.state[tp]
        buffers = {k for k, v in state.items() if k != "step" and torch.is_tensor(v)}
        assert buffers <= set(opt.state), (buffers, set(opt.state))
        for key in buffers:
            assert_close(opt.state[key][opt._slices[i]].reshape(mine.shape), state[key].numpy(),
                         dtype, f"{key}[{i}]")


@pytest.mark.parametrize("name,on,off", buffer_switch_params())
def test_a_groups_steps_do_not_depend_on_another_groups_switch(backend, name, on, off):
    """Group 0 toggling its switch steps exactly as it does alone, bit for bit, while
    group 1 keeps the switch on (a larger kind runs both); and every backend steps both
    groups as the reference does, bit for bit."""
    init = arrays(3)
    both = _run_switching(name, on, off, init, backend, True, np.float64)
    alone = _run_switching(name, on, off, init[:2], backend, False, np.float64)
    n = alone.flat_params.size
    assert bits(both.flat_params[:n]) == bits(alone.flat_params)
    for key, buf in alone.state.items():
        assert bits(both.state[key][:n]) == bits(buf), key
    ref = _run_switching(name, on, off, init, "numpy", True, np.float64)
    assert bits(both.flat_params) == bits(ref.flat_params)
    for key, buf in ref.state.items():
        assert bits(both.state[key]) == bits(buf), key
