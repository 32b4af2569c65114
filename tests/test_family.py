"""The family engine: every kind x backend x dtype against the reference, and the
algorithms' properties.  Everything is parametrized over the registry and reads
what it needs from the algorithm's case (tests/optim_cases.py), so a new algorithm
is covered by its registry entry and its case."""

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, _engine, _reduce
from adamfast.algorithms import ALGORITHMS
from adamfast.algorithms._spec import NSLOT
from conftest import BACKENDS, SIZES, assert_close
from optim_cases import CASES, GUARD_KEYWORDS, kind_cases

KIND_CASES = kind_cases()
STEPS = 20


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def _start(kind, n, dtype, seed=0):
    spec, hp = KIND_CASES[kind]
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    # State as after some steps: second-moment-like buffers are >= 0.
    state = [(np.abs(rng.standard_normal(n)) * 1e-2).astype(dtype)
             for _ in spec.state_names(kind)]
    return p, state


def _grads(n, dtype, t):
    rng = np.random.default_rng(100 + t)
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, size=n)
    g[rng.random(n) < 0.05] = 0.0
    return g.astype(dtype)


def _run_kind(backend, kind, n, dtype, steps=STEPS, groups=1, nthreads=None):
    spec, hp = KIND_CASES[kind]
    b = _dispatch.get_backend(backend)
    p, state = _start(kind, n, dtype)
    bounds = [(i * n // groups, (i + 1) * n // groups) for i in range(groups)]
    chunks = _engine.chunk_table(bounds)
    gstates = [dict(spec.gstate) if spec.gstate else None for _ in range(groups)]
    for t in range(1, steps + 1):
        rows = []
        for gi in range(groups):
            # Groups differ: each its own learning rate.
            row, gstates[gi] = spec.scalars(t, dict(hp, lr=hp["lr"] * (1 + gi)), gstates[gi])
            rows.append(row)
        table = _engine.scalar_table(rows)
        b.kernel(b.kind_id(kind), p, _grads(n, dtype, t), tuple(state), table, chunks,
                 nthreads or _dispatch.get_num_threads())
    return [p] + state


@pytest.mark.parametrize("kind", KIND_CASES)
@pytest.mark.parametrize("n", SIZES)
def test_kind_matches_reference_bit_for_bit(compiled_backend, kind, dtype, n):
    backend = compiled_backend
    got = _run_kind(backend, kind, n, dtype, groups=2 if n > 1 else 1)
    want = _run_kind("numpy", kind, n, dtype, groups=2 if n > 1 else 1)
    names = ("params",) + KIND_CASES[kind][0].state_names(kind)
    for name, a, b in zip(names, got, want):
        assert a.dtype == dtype
        assert_close(a, b, dtype, f"{kind} {name}")
        assert bits(a) == bits(b), f"{backend} {kind} {name}: not bit-identical to the reference"


@pytest.mark.parametrize("kind", KIND_CASES)
def test_thread_count_invariance(compiled_backend, kind, threads):
    n = (1 << 19) + 16384 * 3 + 17  # above both backends' serial cut-off, with a tail
    one = _run_kind(compiled_backend, kind, n, np.float32, steps=3, groups=3, nthreads=1)
    two = _run_kind(compiled_backend, kind, n, np.float32, steps=3, groups=3, nthreads=2)
    for a, b in zip(one, two):
        assert bits(a) == bits(b)


def _at(a, offset):
    """A copy of ``a`` starting ``offset`` elements past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128 + offset * a.itemsize, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset * a.itemsize
    out = raw[start:start + a.nbytes].view(a.dtype)
    out[:] = a
    return out


def _start_at(kind, n, dtype, offsets):
    # _start's buffers placed at the given element offsets within a cache line
    # (params, grads, then the states, cycling through offsets).
    p, state = _start(kind, n, dtype)
    return _at(p, offsets[0]), [_at(s, offsets[(2 + j) % len(offsets)])
                                for j, s in enumerate(state)]


def _run_kind_at(backend, kind, n, dtype, offsets, steps=3):
    # _run_kind on buffers at the given offsets (_start_at).
    spec, hp = KIND_CASES[kind]
    b = _dispatch.get_backend(backend)
    p, state = _start_at(kind, n, dtype, offsets)
    chunks = _engine.chunk_table([(0, n // 3), (n // 3, n)])
    gstate = dict(spec.gstate) if spec.gstate else None
    for t in range(1, steps + 1):
        row, gstate = spec.scalars(t, hp, gstate)
        table = _engine.scalar_table([row, row])
        b.kernel(b.kind_id(kind), p, _at(_grads(n, dtype, t), offsets[1 % len(offsets)]),
                 tuple(state), table, chunks, 1)
    return [p] + state


# Element offsets of the buffers within a cache line: all on a line, all
# sharing one offset (the layout of arrays a NumPy user allocates one by
# one), and each its own offset.
@pytest.mark.parametrize("offsets", [(0,), (4,), (1,), (3, 0, 7, 1)])
@pytest.mark.parametrize("kind", KIND_CASES)
def test_kind_bit_for_bit_at_any_alignment(compiled_backend, kind, dtype, offsets):
    n = 2 * 16384 + 37  # chunks whose starts sit at the buffers' offset, and a tail
    got = _run_kind_at(compiled_backend, kind, n, dtype, offsets)
    want = _run_kind_at("numpy", kind, n, dtype, (0,))
    for a, b in zip(got, want):
        assert bits(a) == bits(b), f"{compiled_backend} {kind} at offsets {offsets}"


def _reduce_kind_at(backend, kind, n, dtype, offsets, steps=2):
    # Pass 1 of a reducing kind on buffers at the given offsets (_start_at): the
    # state it wrote, and each step's per-chunk sums.  The chunks include one
    # shorter than a line and ones that start mid-line.
    spec, hp = KIND_CASES[kind]
    b = _dispatch.get_backend(backend)
    p, state = _start_at(kind, n, dtype, offsets)
    chunks = _engine.chunk_table([(0, 5), (5, n // 3), (n // 3, n)])
    gstate = dict(spec.gstate) if spec.gstate else None
    sums = []
    for t in range(1, steps + 1):
        row, gstate = spec.scalars(t, hp, gstate)
        out = np.empty((chunks.shape[0], len(spec.reduce[kind].sums)))
        g = _at(_grads(n, dtype, t), offsets[1 % len(offsets)])
        b.module.reduce_kernel(b.kind_id(kind), p, g, tuple(state),
                               _engine.scalar_table([row] * 3), chunks, out, 1)
        sums.append(out)
    return state + sums


REDUCE_KINDS = [k for k in KIND_CASES
                if _dispatch.get_backend("numpy").kind_id(k) in _reduce.KIND_IDS]


# The reduce pass starts its vector loop at a line of params as the update
# does; the lanes its sums go to must not move with it.
@pytest.mark.parametrize("offsets", [(0,), (4,), (1,), (15,), (3, 0, 7, 1)])
@pytest.mark.parametrize("kind", REDUCE_KINDS)
def test_reduce_pass_bit_for_bit_at_any_alignment(compiled_backend, kind, dtype, offsets):
    n = 2 * 16384 + 37
    got = _reduce_kind_at(compiled_backend, kind, n, dtype, offsets)
    want = _reduce_kind_at("numpy", kind, n, dtype, (0,))
    for a, b in zip(got, want):
        assert bits(a) == bits(b), f"{compiled_backend} {kind} pass 1 at offsets {offsets}"


def test_kernels_refuse_out_of_range_tables(compiled_backend):
    b = _dispatch.get_backend(compiled_backend)
    p, g, m, v = (np.zeros(10, np.float32) for _ in range(4))
    kid = b.kind_id("adam")
    good = np.zeros((1, NSLOT))
    for chunks, msg in ((np.array([[0, 0, 11]], np.intp), "range"),
                        (np.array([[1, 0, 10]], np.intp), "range"),
                        (np.array([[0, 5, 4]], np.intp), "range")):
        with pytest.raises(ValueError, match=msg):
            b.kernel(kid, p, g, (m, v), good, chunks, 1)
    with pytest.raises(ValueError):
        b.kernel(kid, p, g, (m, np.zeros(9, np.float32)), good, _engine.single_chunks(10), 1)
    with pytest.raises(ValueError):
        b.kernel(10**6, p, g, (m, v), good, _engine.single_chunks(10), 1)
    with pytest.raises(ValueError):
        b.kernel(kid, p, g, (m, v), np.zeros((1, 3)), _engine.single_chunks(10), 1)
    assert not p.any() and not m.any() and not v.any()


# --- the optimizer objects ----------------------------------------------------------

CLASSES = adamfast.optim.CLASSES


def _shapes():
    return [(4, 3), (5,), (2, 3, 2), (), (1025,)]


def _init(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in _shapes()]


def _grad_list(dtype, t):
    rng = np.random.default_rng(1000 + t)
    return [rng.standard_normal(s).astype(dtype) for s in _shapes()]


@pytest.mark.parametrize("name", CLASSES)
def test_optimizer_one_kernel_call_per_step_for_any_number_of_groups(name, monkeypatch):
    calls = []
    b = _dispatch.get_backend("cython" if "cython" in BACKENDS else "numpy")
    real = b.kernel
    monkeypatch.setattr(b, "kernel", lambda *a: (calls.append(a[4].shape[0]), real(*a))[1])
    monkeypatch.setattr(b, "step_fast", None)
    init = _init(np.float32)
    groups = [{"params": init[:2]}, {"params": init[2:4], "weight_decay": 0.01},
              {"params": init[4:], "lr": 1e-4}]
    opt = CLASSES[name](groups, backend=b.name)
    for t in range(1, 4):
        opt.step(_grad_list(np.float32, t))
    if opt.spec.reduce:  # Lamb: pass 2's call has one row per tensor (adamfast._reduce)
        assert calls == [5, 5, 5]
    else:
        assert calls == [3, 3, 3]  # one call per step, three scalar rows


@pytest.mark.parametrize("name", CLASSES)
def test_groups_equal_separate_optimizers(name, backend, dtype):
    init = _init(dtype)
    over = {"lr": 3e-3, "weight_decay": 0.05}
    # Lamb clips by the norm of all its gradients by default (timm's): not per optimizer here.
    kw = {"max_grad_norm": None} if "max_grad_norm" in CLASSES[name].spec.defaults else {}
    joint = CLASSES[name]([{"params": init[:3]}, {"params": init[3:], **over}], backend=backend,
                          **kw)
    first = CLASSES[name](init[:3], backend=backend, **kw)
    second = CLASSES[name](init[3:], backend=backend, **over, **kw)
    for t in range(1, 8):
        g = _grad_list(dtype, t)
        joint.step(g)
        first.step(g[:3])
        second.step(g[3:])
    for a, b in zip(joint.params, first.params + second.params):
        assert bits(a) == bits(b)


@pytest.mark.parametrize("name", CLASSES)
def test_state_dict_round_trip_every_algorithm(name, backend):
    opt = CLASSES[name](_init(np.float64), backend=backend)
    for t in range(1, 6):
        opt.step(_grad_list(np.float64, t))
    saved = opt.state_dict()
    clone = CLASSES[name]([p.copy() for p in opt.params], backend=backend)
    clone.load_state_dict(saved)
    for t in range(6, 12):
        opt.step(_grad_list(np.float64, t))
        clone.step(_grad_list(np.float64, t))
    assert bits(opt.flat_params) == bits(clone.flat_params)
    for key, buf in opt.state.items():
        assert bits(buf) == bits(clone.state[key]), key


@pytest.mark.parametrize("name", CLASSES)
def test_bad_hyperparameter_in_a_group_changes_nothing(name):
    spec = ALGORITHMS[name]
    opt = CLASSES[name](_init(np.float32), backend="numpy")
    opt.step(_grad_list(np.float32, 1))
    before = opt.state_dict()
    params = opt.flat_params.copy()
    for h in spec.hyper:
        bad = "x" if h.default is not False else "yes"
        old = opt.param_groups[0][h.name]
        opt.param_groups[0][h.name] = bad if h.name != "lr" else -1.0
        with pytest.raises((TypeError, ValueError), match=h.name):
            opt.step(_grad_list(np.float32, 2))
        opt.param_groups[0][h.name] = old
        with pytest.raises((TypeError, ValueError), match=h.name):
            CLASSES[name](_init(np.float32), **{h.name: bad if h.name != "lr" else -1.0})
    assert bits(opt.flat_params) == bits(params)
    after = opt.state_dict()
    assert after["step"] == before["step"]
    for key in opt.state:
        assert bits(after[key]) == bits(before[key])


@pytest.mark.parametrize("name", CLASSES)
def test_signature_is_the_peers(name):
    """A torch.optim peer: torch's keywords and defaults (less its torch-only flags), plus
    adamfast's.  Another peer: its keywords in its order (``peer_keywords``), then
    adamfast's."""
    import inspect

    case = CASES[name]
    ours = inspect.signature(CLASSES[name]).parameters
    extras = set(GUARD_KEYWORDS) | set(case.extra_keywords)
    if case.peer_keywords is not None:
        names = [k for k, _ in case.peer_keywords]
        # A guard keyword the peer has too (timm's Lamb's max_grad_norm) keeps its place.
        guard = [k for k in GUARD_KEYWORDS if k not in names]
        assert list(ours) == ["params", *names, *case.extra_keywords, *guard]
        for k, default in case.peer_keywords:
            assert ours[k].default == default, (case.name, k)
        return
    torch = pytest.importorskip("torch")
    skip = {"foreach", "fused", "capturable", "differentiable"}
    theirs = {k: v for k, v in inspect.signature(getattr(torch.optim, case.torch_name))
              .parameters.items() if k not in skip}
    assert extras <= set(ours), case.name
    assert set(ours) - extras == set(theirs), case.name
    for k, v in theirs.items():
        assert ours[k].default == v.default, (case.name, k)


@pytest.mark.parametrize("name", [n for n in CLASSES if CASES[n].structural_switches])
def test_structural_switch_turned_on_later_allocates(name):
    spec = ALGORITHMS[name]
    start = spec.state_names(spec.kind_of([spec.validate(dict(spec.defaults))]))
    for kind, kw in CASES[name].kinds.items():
        added = [b for b in spec.state_names(kind) if b not in start]
        if not added:
            continue
        opt = CLASSES[name](_init(np.float32), backend="numpy")
        opt.step(_grad_list(np.float32, 1))
        assert all(getattr(opt, b).size == 0 for b in added), (kind, added)
        opt.param_groups[0].update(kw)
        opt.step(_grad_list(np.float32, 2))
        for b in added:
            buf = getattr(opt, b)
            assert buf.size == opt.flat_params.size and buf.any(), (kind, b)


def test_buffers_cannot_be_rebound():
    opt = adamfast.Adam([np.ones(1000, np.float32)], backend="numpy")
    for name in ("exp_avg", "exp_avg_sq", "flat_params", "flat_grads", "params"):
        with pytest.raises(AttributeError, match="owned by the optimizer"):
            setattr(opt, name, np.zeros(10, np.float32))


# --- convergence and properties ---------------------------------------------------

def _no_decay(name):
    # Weight decay moves the minimum: the convergence tests run without it (only
    # AdamW's default has any).
    return {"weight_decay": 0.0} if "weight_decay" in ALGORITHMS[name].defaults else {}


@pytest.mark.parametrize("name", CLASSES)
def test_converges_on_a_quadratic(name, backend):
    target = np.linspace(-2, 2, 64)
    opt = CLASSES[name]([np.zeros(64)], lr=CASES[name].quadratic_lr, backend=backend,
                        **_no_decay(name))
    (x,) = opt.params
    for _ in range(1500):
        opt.step([2 * (x - target)])
    assert np.abs(x - target).max() < 0.05, name


@pytest.mark.parametrize("name", CLASSES)
def test_converges_on_rosenbrock(name):
    def grad(z):
        a, b = z
        return np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])

    case = CASES[name]
    opt = CLASSES[name]([np.array([-1.0, 1.0])], lr=case.rosenbrock_lr,
                        backend="cython" if "cython" in BACKENDS else "numpy", **_no_decay(name))
    (z,) = opt.params
    f0 = (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2
    for _ in range(case.rosenbrock_steps):
        opt.step([grad(z)])
    f = (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2
    assert f < 0.1 * f0 and np.isfinite(z).all(), (name, z, f)


def test_lion_step_is_exactly_lr(backend):
    lr = 2.0 ** -10
    rng = np.random.default_rng(0)
    p0 = (rng.integers(-100, 100, 1025) * lr).astype(np.float32)
    opt = adamfast.Lion([p0], lr=lr, backend=backend)
    for t in range(1, 6):
        before = opt.params[0].copy()
        g = rng.standard_normal(1025).astype(np.float32)
        g[g == 0] = 1.0
        opt.step([g])
        assert np.array_equal(np.abs(opt.params[0] - before), np.full(1025, lr, np.float32))


def test_adagrad_accumulator_never_decreases(backend):
    opt = adamfast.Adagrad(_init(np.float32), lr_decay=0.01, weight_decay=0.1,
                           initial_accumulator_value=0.1, backend=backend)
    prev = opt.sum.copy()
    assert (prev == np.float32(0.1)).all()
    for t in range(1, 20):
        opt.step(_grad_list(np.float32, t))
        assert (opt.sum >= prev).all()
        prev = opt.sum.copy()


@pytest.mark.parametrize("t", [1, 2, 10, 100])
def test_eps_hat_equals_default_form_with_rescaled_eps(backend, dtype, t):
    e = 1e-3
    n = 1025
    rng = np.random.default_rng(t)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = (0.1 * rng.standard_normal(n)).astype(dtype), rng.random(n).astype(dtype)
    a = [x.copy() for x in (p, m, v)]
    b = [x.copy() for x in (p, m, v)]
    adamfast.adam_step(a[0], g, a[1], a[2], step=t, eps=e * np.sqrt(1 - 0.999 ** t),
                       eps_hat=True, backend=backend)
    adamfast.adam_step(b[0], g, b[1], b[2], step=t, eps=e, backend=backend)
    for x, y in zip(a, b):
        assert_close(x, y, dtype, "eps_hat vs default")


# --- functional steps ---------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in CLASSES if CASES[n].generated_functional])
def test_functional_step_equals_optimizer(name, backend):
    spec = ALGORITHMS[name]
    fn = adamfast.functional.STEPS[name]
    opt = CLASSES[name]([np.linspace(-1, 1, 1025)], backend=backend)
    kind = opt._kind
    p = np.linspace(-1, 1, 1025)
    state = {n: np.zeros(1025) for n in spec.state_names(kind)}
    gstate = dict(spec.gstate) if spec.gstate and spec.gstate_from_step is None else {}
    for t in range(1, 8):
        g = np.sin(np.arange(1025) * t)
        opt.step([g])
        out = fn(p, g, step=t, backend=backend, **state, **gstate)
        if gstate:
            gstate = out.group_state
    assert bits(p) == bits(opt.params[0])
    for n, buf in state.items():
        assert bits(buf) == bits(opt.state[n])


def test_functional_errors_name_the_argument():
    p = np.zeros(10)
    with pytest.raises(ValueError, match="exp_inf is required"):
        adamfast.adamax_step(p, p.copy(), np.zeros(10), step=1)
    with pytest.raises(TypeError, match="mu_product"):
        adamfast.nadam_step(p, p.copy(), np.zeros(10), np.zeros(10), step=1)
    with pytest.raises(ValueError, match="nesterov"):
        adamfast.sgd_step(p, p.copy(), np.zeros(10), step=1, nesterov=True)
    with pytest.raises(TypeError, match="unexpected"):
        adamfast.lion_step(p, p.copy(), np.zeros(10), step=1, amsgrad=True)


# --- schedules ----------------------------------------------------------------------

def test_schedules_values_and_use():
    s = adamfast.schedules
    assert s.inverse_sqrt(0.1)(4) == 0.05
    assert s.inverse_time(0.1, 0.5)(1) == 0.1 and s.inverse_time(0.1, 0.5)(3) == 0.05
    assert s.step_decay(1.0, 2, 0.5)(1) == 1.0 and s.step_decay(1.0, 2, 0.5)(3) == 0.5
    assert s.exponential(1.0, 0.5)(3) == 0.25
    assert s.linear_warmup(1.0, 4)(2) == 0.5 and s.linear_warmup(1.0, 4)(9) == 1.0
    c = s.cosine(1.0, total_steps=12, warmup_steps=2)
    assert c(1) == 0.5 and c(2) == 1.0 and c(3) == 1.0 and abs(c(8) - 0.5) < 1e-12
    assert c(13) == 0.0
    assert s.constant(0.3)(100) == 0.3
    with pytest.raises(ValueError, match="warmup_steps"):
        s.cosine(1.0, total_steps=2, warmup_steps=2)
    # An optimizer with a schedule equals one whose lr is set by hand each step.
    sched = s.inverse_sqrt(1e-2)
    a = adamfast.Adam([np.ones(17)], lr=sched, backend="numpy")
    b = adamfast.Adam([np.ones(17)], backend="numpy")
    for t in range(1, 6):
        g = np.cos(np.arange(17.0) * t)
        b.lr = 1e-2 / np.sqrt(t)
        a.step([g])
        b.step([g])
    assert bits(a.params[0]) == bits(b.params[0])
    import pickle

    assert pickle.loads(pickle.dumps(sched)) == sched


def test_slot_constants_match_each_modules_slots():
    # The reference modules name their slots once (SLOTS); the constants the
    # kernels index with must be those positions, and the shared ones everyone's.
    import importlib

    from adamfast.algorithms import _spec

    for spec in ALGORITHMS.values():
        module = importlib.import_module(spec.reference[next(iter(spec.kinds))].__module__)
        assert module.SLOTS == spec.slots
        assert spec.slots[:3] == _spec.SHARED_SLOTS
        for j, name in enumerate(spec.slots):
            assert getattr(module, name) == j, (spec.name, name)
        row, _ = spec.scalars(1, spec.validate(spec.defaults), spec.gstate and dict(spec.gstate))
        assert len(row) == len(spec.slots), spec.name
