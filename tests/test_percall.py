"""The per-call fast paths: numba's step_fast, the one-pass buffer check and the
hyperparameter cache.  Each must do exactly what the full path does, or decline
and leave the call to it (which raises the full path's errors)."""

import subprocess
import sys

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, _engine, _validate
from adamfast.algorithms import ALGORITHMS
from adamfast.algorithms._spec import CHUNK, HPCache

from conftest import BACKENDS

needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")

# Every single-pass kind of the registry, with the spec that declares it.
KINDS = [(spec, kind) for spec in ALGORITHMS.values() for kind in spec.kinds
         if kind not in getattr(spec, "reduce", {})]
KINDS = list({kind: (spec, kind) for spec, kind in KINDS}.values())


def _row(spec, t=3):
    gstate = dict(spec.gstate) if spec.gstate else None
    row, _ = spec.scalars(t, spec.validate(spec.defaults), gstate)
    return row


def _buffers(spec, kind, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    # Positive state: valid for every kind (second moments, accumulators).
    states = tuple(np.abs(rng.standard_normal(n)).astype(dtype) for _ in spec.kinds[kind])
    return p, g, states


def _copy(bufs):
    p, g, states = bufs
    return p.copy(), g.copy(), tuple(s.copy() for s in states)


def _same(a, b):
    (p, g, s), (q, h, r) = a, b
    return all(np.array_equal(x, y, equal_nan=True) and x.tobytes() == y.tobytes()
               for x, y in zip((p, g, *s), (q, h, *r)))


@needs_numba
@pytest.mark.parametrize("spec,kind", KINDS, ids=[k for _, k in KINDS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 17, CHUNK + 5, 100003])
@pytest.mark.parametrize("with_ema", [False, True])
def test_numba_step_fast_writes_what_family_kernel_writes(spec, kind, dtype, n, with_ema):
    b = _dispatch.get_backend("numba")
    kid = b.kind_id(kind)
    row = _row(spec)
    if with_ema:
        row = row + (0.0,) * (_engine.NSLOT - 2 - len(row)) + (0.9, 0.1)
    fast = _buffers(spec, kind, n, dtype)
    slow = _copy(fast)
    ema_f = np.linspace(-1, 1, n).astype(dtype) if with_ema else None
    ema_s = None if ema_f is None else ema_f.copy()
    p, g, s = fast
    assert b.step_fast(kid, p, g, s, row, 2, ema_f) is True
    p, g, s = slow
    b.kernel(kid, p, g, s, _engine.scalar_table([row]), _engine.single_chunks(n), 2, ema_s)
    assert _same(fast, slow)
    if with_ema:
        assert ema_f.tobytes() == ema_s.tobytes()


def _adam():
    spec = ALGORITHMS["Adam"]
    return spec, _row(spec)


@pytest.fixture(params=["C checks", "Python checks"])
def numba_checks(request, monkeypatch):
    """numba's step_fast checks in C (on adamfast's pool) or in Python (numba's own
    pool): every refusal holds on both."""
    from adamfast._numba import _fast

    if request.param == "C checks" and _fast.STEP_BLOCKS is None:
        pytest.skip("numba runs on its own pool here")
    if request.param == "Python checks":
        monkeypatch.setattr(_fast, "STEP_BLOCKS", None)
    return request.param


def _declines(args, mutate=None):
    """step_fast returns False and writes nothing."""
    b = _dispatch.get_backend("numba")
    kid, p, g, states, row, nthreads, *ema = args
    arrays = [a for a in (p, g, *(states if isinstance(states, tuple) else ()), *ema)
              if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    assert b.step_fast(kid, p, g, states, row, nthreads, *ema) is False
    for a, c in zip(arrays, before):
        assert a.tobytes() == c.tobytes()


def _good(n=64, dtype=np.float32):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(n).astype(dtype) for _ in range(4)]


@needs_numba
@pytest.mark.parametrize("case", [
    "kind out of range", "kind a bool", "threads a float", "states a list", "states short",
    "row a list", "row too long", "row of strings", "params a list", "params float16",
    "params big-endian", "grads float64", "state short", "params read-only",
    "state read-only", "params strided", "state a subclass", "same array twice",
    "overlapping views", "ema wrong size", "ema overlaps params",
])
def test_numba_step_fast_declines_what_the_full_path_must_judge(case, numba_checks):
    b = _dispatch.get_backend("numba")
    spec, row = _adam()
    kid = b.kind_id("adam")
    p, g, m, v = _good()
    args = [kid, p, g, (m, v), row, 1]
    if case == "kind out of range":
        args[0] = len(b.module.KINDS)
    elif case == "kind a bool":
        args[0] = True
    elif case == "threads a float":
        args[5] = 1.0
    elif case == "states a list":
        args[3] = [m, v]
    elif case == "states short":
        args[3] = (m,)
    elif case == "row a list":
        args[4] = list(row)
    elif case == "row too long":
        args[4] = row + (0.0,) * 10
    elif case == "row of strings":
        args[4] = ("x",) * len(row)
    elif case == "params a list":
        args[1] = p.tolist()
    elif case == "params float16":
        args[1] = p.astype(np.float16)
    elif case == "params big-endian":
        args[1] = p.astype(">f4")
    elif case == "grads float64":
        args[2] = g.astype(np.float64)
    elif case == "state short":
        args[3] = (m[:10].copy(), v)
    elif case == "params read-only":
        p.setflags(write=False)
    elif case == "state read-only":
        v.setflags(write=False)
    elif case == "params strided":
        args[1] = np.zeros(128, np.float32)[::2]
    elif case == "state a subclass":
        args[3] = (m, np.ma.masked_array(v))
    elif case == "same array twice":
        args[3] = (m, m)
    elif case == "overlapping views":
        base = np.zeros(200, np.float32)
        args[1], args[3] = base[0:64], (base[32:96], v)
    elif case == "ema wrong size":
        args.append(np.zeros(65, np.float32))
    elif case == "ema overlaps params":
        args.append(p)
    _declines(args)


@needs_numba
@pytest.mark.parametrize("case", ["chunks a list", "chunks int32", "chunks short", "chunks long",
                                  "chunks strided", "nstate too large", "no block entry"])
def test_pool_step_blocks_declines_a_call_it_cannot_check(case):
    # The C entry behind numba's step_fast on adamfast's pool checks the chunk
    # table's dtype and size (its rows are single_chunks', trusted) and its own
    # arguments, and declines rather than run a block entry out of bounds.
    from adamfast._numba import _pool

    if _pool.STEP_BLOCKS is None:
        pytest.skip("numba runs on its own pool here")
    b = _dispatch.get_backend("numba")
    spec, row = _adam()
    kid = b.kind_id("adam")
    p, g, m, v = _good(n=2 * CHUNK + 3)
    before = [a.copy() for a in (p, m, v)]
    block = entry = (b.module._entries.get(kid) or b.module._load(kid))[2]
    chunks = _engine.single_chunks(p.size)
    nstate = 2
    if case == "chunks a list":
        chunks = chunks.tolist()
    elif case == "chunks int32":
        chunks = chunks.astype(np.int32)
    elif case == "chunks short":
        chunks = chunks[:-1].copy()
    elif case == "chunks long":
        chunks = np.concatenate([chunks, chunks[-1:]])
    elif case == "chunks strided":
        chunks = np.repeat(chunks, 2, axis=0)[::2]
    elif case == "nstate too large":
        nstate = 99
    elif case == "no block entry":
        block = 0
    assert _pool.STEP_BLOCKS(block, nstate, p, g, (m, v), row, chunks, 1, 1, None) is False
    assert all(a.tobytes() == c.tobytes() for a, c in zip((p, m, v), before))
    # The same call with the right table is taken.
    assert _pool.STEP_BLOCKS(entry, 2, p, g, (m, v), row, _engine.single_chunks(p.size), 1, 1,
                             None) is True


@needs_numba
def test_numba_step_fast_takes_read_only_grads_and_disjoint_views_of_one_buffer():
    b = _dispatch.get_backend("numba")
    spec, row = _adam()
    kid = b.kind_id("adam")
    base = np.random.default_rng(2).standard_normal(4 * 64).astype(np.float32)
    ref = base.copy()
    views = [base[k * 64:(k + 1) * 64] for k in range(4)]
    views[1].setflags(write=False)
    assert b.step_fast(kid, views[0], views[1], (views[2], views[3]), row, 1) is True
    p, g, m, v = (ref[k * 64:(k + 1) * 64] for k in range(4))
    b.kernel(kid, p, g, (m, v), _engine.scalar_table([row]), _engine.single_chunks(64), 1)
    assert base.tobytes() == ref.tobytes()


@needs_numba
def test_numba_step_fast_marks_an_interrupt_before_its_writes(monkeypatch, numba_checks):
    b = _dispatch.get_backend("numba")
    spec, row = _adam()
    p, g, m, v = _good()
    before = [a.copy() for a in (p, m, v)]

    def interrupted(n):
        raise KeyboardInterrupt

    monkeypatch.setattr(_engine, "single_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        b.step_fast(b.kind_id("adam"), p, g, (m, v), row, 1)
    assert info.value.adamfast_unwritten is True
    assert all(a.tobytes() == c.tobytes() for a, c in zip((p, m, v), before))


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_step_with_the_same_objects_or_equal_ones_gives_the_same_bits(backend):
    lr, betas = 3e-3, (0.8, 0.99)
    out = []
    for call in range(3):
        p, g, m, v = _good(33)
        # Call 0 fills the cache; call 1 hits it; call 2 passes equal new objects.
        kw = dict(lr=lr, beta1=betas[0], beta2=betas[1]) if call < 2 else \
            dict(lr=float(str(lr)), beta1=float(str(betas[0])), beta2=float(str(betas[1])))
        adamfast.adam_step(p, g, m, v, step=4, weight_decay=0.01, backend=backend, **kw)
        out.append((p.tobytes(), m.tobytes(), v.tobytes()))
    assert out[0] == out[1] == out[2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,good,bad,error", [
    ("lr", 1.0, True, TypeError),
    ("amsgrad", False, 0, TypeError),
    ("nesterov", False, 0.0, TypeError),
    ("eps", 1e-8, float("nan"), ValueError),
])
def test_a_value_equal_to_a_cached_one_is_still_checked(backend, name, good, bad, error):
    p, g, m, v = _good(8)
    adamfast.adam_step(p, g, m, v, step=1, backend=backend, **{name: good})
    adamfast.adam_step(p, g, m, v, step=2, backend=backend, **{name: good})  # cached
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(error, match=name):
        adamfast.adam_step(p, g, m, v, step=3, backend=backend, **{name: bad})
    assert all(a.tobytes() == c.tobytes() for a, c in zip((p, m, v), before))


def test_hp_cache_trusts_identity_of_immutable_values_only():
    cache = HPCache()
    one, zero = 1.5, 0.0
    cache.put((one, zero, True), "ok")
    assert cache.get((one, zero, True)) == "ok"
    assert cache.get((float("1.5"), zero, True)) is None  # equal, not the same object
    assert cache.get((one, -0.0, True)) is None
    assert cache.get((one, zero)) is None
    betas = [0.9, 0.99]
    cache.put((one, betas), "list")
    assert cache.get((one, betas)) is None  # a list can change in place: never cached


@pytest.mark.parametrize("case", ["owned", "2-D", "views", "read-only grads"])
def test_buffers_one_pass_check_gives_the_full_checks_views(case):
    rng = np.random.default_rng(3)
    if case == "views":
        base = rng.standard_normal(40)
        arrays = [base[k * 10:(k + 1) * 10] for k in range(4)]
    else:
        shape = (3, 5) if case == "2-D" else (15,)
        arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    if case == "read-only grads":
        arrays[1].setflags(write=False)
    named = [(f"a{k}", a, k != 1) for k, a in enumerate(arrays)]
    views = _validate.buffers(named)
    assert _validate._plain(named) is not None
    for view, a in zip(views, arrays):
        assert view.ndim == 1 and view.size == a.size and np.shares_memory(view, a)


@pytest.mark.parametrize("case", ["same array twice", "overlapping views"])
def test_buffers_one_pass_check_leaves_an_overlap_to_the_full_message(case):
    if case == "same array twice":
        a = np.zeros(8)
        named = [("params", a, True), ("grads", np.ones(8), False), ("exp_avg", a, True)]
        message = "params and exp_avg overlap"
    else:
        base = np.zeros(20)
        named = [("params", base[:8], True), ("grads", base[4:12], False)]
        message = "params and grads overlap"
    assert _validate._plain(named) is None
    with pytest.raises(ValueError, match=message):
        _validate.buffers(named)


def test_bench_overhead_prints_the_per_call_table():
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--overhead", "--repeat", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for backend in ("numba", "cython"):
        if backend in BACKENDS:
            assert f"adam_step(..., backend={backend!r})" in r.stdout
            assert f"Adam(...).step() on {backend}" in r.stdout
    assert "<= 5" in r.stdout and "median" in r.stdout
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--overhead", "--sizes", "1K"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--sizes does not apply to --overhead" in r.stderr


class _Sub(np.ndarray):
    pass


@needs_numba
@pytest.mark.parametrize("case,error", [
    ("grads float64", TypeError), ("state short", ValueError), ("params 2-D", ValueError),
    ("state strided", ValueError), ("state read-only", ValueError), ("params a list", TypeError),
    ("ema short", ValueError), ("ema read-only", ValueError),
    ("grads read-only", None), ("state a subclass", None), ("with ema", None),
])
def test_numba_family_kernel_one_pass_check_keeps_every_refusal(case, error):
    b = _dispatch.get_backend("numba")
    spec, row = _adam()
    p, g, m, v = _good(16)
    ema = None
    if case == "grads float64":
        g = g.astype(np.float64)
    elif case == "state short":
        m = m[:15].copy()
    elif case == "params 2-D":
        p = p.reshape(4, 4)
    elif case == "state strided":
        m = np.zeros(32, np.float32)[::2]
    elif case == "state read-only":
        v.setflags(write=False)
    elif case == "params a list":
        p = p.tolist()
    elif case == "ema short":
        ema = np.zeros(15, np.float32)
    elif case == "ema read-only":
        ema = np.zeros(16, np.float32)
        ema.setflags(write=False)
    elif case == "grads read-only":
        g.setflags(write=False)
    elif case == "state a subclass":
        m = m.view(_Sub)
    elif case == "with ema":
        ema = np.zeros(16, np.float32)
    arrays = [a for a in (p, m, v, ema) if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    call = (b.kind_id("adam"), p, g, (m, v), _engine.scalar_table([row]),
            _engine.single_chunks(16), 1, ema)
    if error is None:
        b.kernel(*call)
        assert any(a.tobytes() != c.tobytes() for a, c in zip(arrays, before))
        return
    with pytest.raises(error, match="family_kernel: "):
        b.kernel(*call)
    assert all(a.tobytes() == c.tobytes() for a, c in zip(arrays, before))
