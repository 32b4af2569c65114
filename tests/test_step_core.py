"""The one step core (adamfast._core.take_step) under every front end: one norm across
runs, the interrupt and refusal rules, and what the front ends leave to it."""

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, _engine, _guard
from adamfast._core import Run, take_step
from adamfast.algorithms import ALGORITHMS
from optim_cases import CASES

ADAM = ALGORITHMS["Adam"]
HP = ADAM.validate(dict(ADAM.defaults, lr=0.01))


def _run(dtype, n, seed, log):
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(n).astype(dtype)
    grads = rng.standard_normal(n).astype(dtype)
    states = (np.zeros(n, dtype), np.zeros(n, dtype))
    b = _dispatch.get_backend("numpy")
    run = Run(b.kind_id("adam"), params, grads, states, _engine.single_chunks(n), single=True)
    run.rows = [ADAM.scalars(1, HP, None)[0]]
    run.commit = lambda: log.append(dtype)
    return run


def _copy(run):
    return [a.copy() for a in (run.params, *run.states)]


def test_one_norm_across_runs_and_each_run_committed(backend):
    """Two runs (two dtypes, as adamfast.torch's slabs): the guard's norm covers both,
    the clip multiplier is the same in both, and each run's commit ran once."""
    b = _dispatch.get_backend(backend)
    log = []
    runs = [_run(np.float32, 40, 0, log), _run(np.float64, 30, 1, log)]
    mgn = 0.5
    norm = _guard.global_norm([r.grads for r in runs], backend)
    # Each run alone, with the multiplier of the joint norm given as its loss scale.
    coef = min(mgn / (norm + 1e-6), 1.0)
    expected_runs = [_run(np.float32, 40, 0, []), _run(np.float64, 30, 1, [])]
    for t in expected_runs:
        t.kid = b.kind_id("adam")
        take_step(b, [t], (coef, None, False, None), 1)
    for r in runs:
        r.kid = b.kind_id("adam")
    result = take_step(b, runs, (1.0, mgn, False, None), 1)
    assert result.grad_norm == pytest.approx(norm, rel=1e-12) and not result.skipped
    assert log == [np.float32, np.float64]
    for r, t in zip(runs, expected_runs):
        for a, e in zip(_copy(r), _copy(t)):
            np.testing.assert_array_equal(a, e)


def test_a_nonfinite_gradient_in_any_run_skips_every_run():
    log = []
    runs = [_run(np.float32, 8, 0, log), _run(np.float64, 8, 1, log)]
    runs[1].grads[3] = np.inf
    before = [_copy(r) for r in runs]
    result = take_step(_dispatch.get_backend("numpy"), runs, (1.0, None, True, None), 1)
    assert result.skipped and log == []
    for r, old in zip(runs, before):
        for a, e in zip(_copy(r), old):
            np.testing.assert_array_equal(a, e)


def test_an_interrupt_after_a_kernel_wrote_commits_every_run_then_propagates(monkeypatch):
    b = _dispatch.get_backend("numpy")
    real = b.kernel

    def kernel(*args):
        real(*args)
        raise KeyboardInterrupt  # as CPython raises a Ctrl-C pending when a call returns

    log = []
    runs = [_run(np.float32, 8, 0, log), _run(np.float64, 8, 1, log)]
    for r in runs:
        r.single = False  # through family_kernel
    monkeypatch.setattr(b, "kernel", kernel)
    with pytest.raises(KeyboardInterrupt):
        take_step(b, runs, (1.0, None, False, None), 1)
    assert log == [np.float32, np.float64]


def test_a_refusing_kernel_commits_nothing(monkeypatch):
    b = _dispatch.get_backend("numpy")

    def kernel(*args):
        raise ValueError("refused")

    log = []
    runs = [_run(np.float32, 8, 0, log)]
    runs[0].single = False
    monkeypatch.setattr(b, "kernel", kernel)
    with pytest.raises(ValueError, match="refused"):
        take_step(b, runs, (1.0, None, False, None), 1)
    assert log == []


def test_an_interrupt_as_a_commit_begins_still_makes_its_stores():
    """CPython runs a signal handler as a Python function is entered: an interrupt there
    stops the commit before its first store; the core makes them, then raises."""
    calls = []
    counters = {}
    run = _run(np.float64, 8, 0, [])

    def commit():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        counters["step"] = 1

    run.commit = commit
    with pytest.raises(KeyboardInterrupt):
        take_step(_dispatch.get_backend("numpy"), [run], (1.0, None, False, None), 1)
    assert counters == {"step": 1}


def test_a_grad_scale_that_overflows_changes_nothing_not_even_the_grads(backend):
    """Every argument is checked before anything is written: the loss scale's
    reciprocal is checked before the given gradients are copied into opt.grads."""
    opt = adamfast.Adam([np.ones(5, np.float32)], backend=backend)
    opt.step([np.full(5, 0.5, np.float32)])
    before = opt.grads[0].copy()
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step([np.full(5, 2.0, np.float32)], grad_scale=1e-300)
    np.testing.assert_array_equal(opt.grads[0], before)
    assert opt.step_count == 1


torch = pytest.importorskip("torch")


def test_torch_state_is_filled_on_access_with_the_settings_that_stepped():
    """step() leaves torch's per-param state dicts to the first look at opt.state; what
    that look shows is what the step did, even if a setting changed since."""
    import adamfast.torch as aft

    p = torch.nn.Parameter(torch.ones(4))
    opt = aft.Adam([p], lr=0.1)
    p.grad = torch.full((4,), 0.5)
    opt.step()
    opt.param_groups[0]["amsgrad"] = True  # not stepped yet: no max_exp_avg_sq
    st = opt.state[p]
    assert sorted(st) == ["exp_avg", "exp_avg_sq", "step"]
    assert float(st["step"]) == 1.0
    ref = torch.nn.Parameter(torch.ones(4))
    topt = torch.optim.Adam([ref], lr=0.1)
    ref.grad = torch.full((4,), 0.5)
    topt.step()
    torch.testing.assert_close(st["exp_avg"], topt.state[ref]["exp_avg"])
    opt.step()  # now with amsgrad: the state grows, as torch's
    assert "max_exp_avg_sq" in opt.state[p] and float(opt.state[p]["step"]) == 2.0


def test_torch_group_state_round_trips_for_every_algorithm_that_keeps_one():
    """Group state held generically from spec.gstate: a checkpoint taken mid-run and
    loaded into a fresh optimizer continues the run bit for bit."""
    import adamfast.torch as aft

    for name, spec in ALGORITHMS.items():
        if not spec.gstate or name not in aft.CLASSES:
            continue
        kw = {"momentum": 0.9} if "momentum" in spec.defaults else {}
        a = [torch.nn.Parameter(torch.linspace(-1, 1, 6))]
        b = [torch.nn.Parameter(torch.linspace(-1, 1, 6))]
        oa = aft.CLASSES[name](a, lr=0.01, **kw)
        for t in range(3):
            a[0].grad = torch.full((6,), 0.1 * (t + 1))
            oa.step()
        ob = aft.CLASSES[name](b, lr=0.01, **kw)
        with torch.no_grad():
            b[0].copy_(a[0])
        ob.load_state_dict(oa.state_dict())
        for t in range(3, 5):
            a[0].grad = torch.full((6,), 0.1 * (t + 1))
            b[0].grad = a[0].grad.clone()
            oa.step()
            ob.step()
        assert torch.equal(a[0], b[0]), name


def test_torch_one_group_takes_the_fast_path_for_every_class():
    """The rows the torch front end hands to the core are exact floats (the spec's checks
    make every hyperparameter one, an int lr included), so a one-group pool's step is
    the backend's fast path, never declined to the table kernel."""
    import adamfast.torch as aft

    for name, cls in aft.CLASSES.items():
        if cls.spec.reduce:  # Lamb: two passes (adamfast._reduce), never a fast path
            continue
        ps = [torch.nn.Parameter(torch.randn(5))]
        opt = cls(ps, **{**CASES[name].rich_kw, "lr": 1})
        b = opt._backend
        if b.step_fast is None:
            pytest.skip(f"backend {b.name} has no fast path")
        done = []

        class Spy:
            module, kernel, kind_id, name = b.module, b.kernel, b.kind_id, b.name

            @staticmethod
            def step_fast(*args):
                done.append(b.step_fast(*args))
                return done[-1]

        opt._backend = Spy()
        for _ in range(2):
            ps[0].grad = torch.randn(5)
            opt.step()
        assert done == [True, True], name


def test_a_dropped_optimizer_is_freed_at_once_not_by_the_cyclic_gc(backend):
    """The core's runs hold their commits only during a step: a front end that keeps a
    run (and whose commit refers back to it) forms no reference cycle, so a dropped
    optimizer is freed at once (a cycle left to the GC frees it later, at a random
    point of some other code, running weakref callbacks there)."""
    import gc
    import weakref

    import adamfast.torch as aft

    gc.disable()
    try:
        opt = adamfast.NAdam([{"params": [np.ones(3)]}, {"params": [np.ones(2)]}],
                             backend=backend, max_grad_norm=1.0)
        opt.step([np.ones(3), np.ones(2)])
        ref = weakref.ref(opt)
        del opt
        assert ref() is None
        p = torch.nn.Parameter(torch.ones(3))
        topt = aft.NAdam([p], backend=backend)
        p.grad = torch.ones(3)
        topt.step()
        ref = weakref.ref(topt)
        del topt
        assert ref() is None
    finally:
        gc.enable()
