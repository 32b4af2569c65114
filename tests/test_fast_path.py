"""The cython backend's C fast path (``adam_step_fast``) against the Python path.

``adam_step`` first offers a call to ``adam_step_fast``, which performs it in
one C call or declines.  It must (1) compute the step scalars bit for bit as
``adamfast._numpy_backend.step_scalars`` does, (2) produce bit for bit the full
path's result, and (3) never perform a step that the full path would reject,
writing nothing when it declines.
"""

import random
import struct
import sys

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch, functional

from conftest import MODES, adam_row as step_scalars, cython_builds, full_path

pytestmark = pytest.mark.skipif("cython" not in adamfast.available_backends(),
                                reason="the cython backend is not built")


MODULES = cython_builds() if "cython" in adamfast.available_backends() else []


@pytest.fixture
def mod():
    """The module adam_step's cython backend uses."""
    return _dispatch.cython_module()


def bits(a):
    """An array's raw bytes: compares -0.0 and NaN payloads exactly."""
    return np.ascontiguousarray(a).tobytes()


def float_bits(values):
    """Python floats as raw IEEE bytes (-0.0 differs from 0.0)."""
    return struct.pack(f"<{len(values)}d", *values)


# --- (1) the scalars -----------------------------------------------------------

def _random_scalar_args(rng):
    edge_betas = (0.0, -0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 2**-52, 1 - 2**-53, 1e-300)
    def beta():
        r = rng.random()
        if r < 0.2:
            return rng.choice(edge_betas)
        if r < 0.5:
            return 1.0 - 10.0 ** rng.uniform(-16, 0)  # close to 1: the usual case
        return rng.random()
    def nonneg():
        r = rng.random()
        if r < 0.1:
            return rng.choice((0.0, -0.0, 5e-324, 1e308, 1.0))
        return 10.0 ** rng.uniform(-12, 3)
    r = rng.random()
    if r < 0.3:
        step = rng.randint(1, 100)
    elif r < 0.9:
        step = int(10 ** rng.uniform(0, 9))  # 1 .. 10**9
    else:  # beyond 2**53: the int is rounded to double, as Python does
        step = rng.choice((2**53 + 1, 2**53 + 3, 2**62 + 1, 2**63 - 1, rng.randint(1, 2**63 - 1)))
    return (step, nonneg(), beta(), beta(), nonneg(), nonneg(), rng.random() < 0.5,
            rng.random() < 0.5)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.VARIANT)
def test_scalars_bit_identical_to_step_scalars(module):
    rng = random.Random(20240607)
    declined = 0
    for _ in range(20000):
        args = _random_scalar_args(rng)
        fast = module._fast_scalars(*args)
        want = step_scalars(*args)
        if fast is None:
            # The only refusal: beta**step is subnormal (see _step_scalars).
            step, _, b1, b2 = args[:4]
            assert any(0 < b**step < sys.float_info.min for b in (b1, b2)), args
            declined += 1
            continue
        assert float_bits(fast) == float_bits(want), args
    assert declined < 200


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.VARIANT)
@pytest.mark.parametrize("step", [1, 2, 3, 10, 1000, 10**6, 10**9, 2**31 - 1, 2**31, 2**53 + 1,
                                  2**63 - 1])
def test_scalars_defaults_and_large_steps(module, step):
    for args in ((step, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False),
                 (step, 3e-4, 0.9, 0.999, 1e-8, 0.01, True, True),
                 (step, 1e-2, 0.99, 0.9999999, 1e-6, 0.1, False, True)):
        assert float_bits(module._fast_scalars(*args)) == float_bits(step_scalars(*args))


# --- (2) the same result as the full path --------------------------------------

def _state(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    p = rng.standard_normal(n).astype(dtype).reshape(shape)
    m = (0.1 * rng.standard_normal(n)).astype(dtype).reshape(shape)
    v = (0.01 * rng.random(n)).astype(dtype).reshape(shape)
    vmax = (0.01 * rng.random(n)).astype(dtype).reshape(shape)
    return p, m, v, vmax


def _grads(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    g = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 2, size=n)
    g[rng.random(n) < 0.05] = 0.0
    if n > 10:  # non-finite gradients propagate identically on both paths
        g[3], g[7] = np.inf, np.nan
    return g.astype(dtype).reshape(shape)


SHAPES = [(0,), (1,), (17,), (100003,), (3, 5, 7), (2, 0, 3), (317, 331), (1, 1, 1, 17)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", MODES)
def test_fast_path_matches_full_path(monkeypatch, mod, dtype, shape, wd, decoupled, amsgrad,
                                     maximize):
    # Prove that adam_step takes the fast path here: the full path would raise.
    def no_full_path(*args):
        raise AssertionError("adam_step fell back to the full path")

    monkeypatch.setattr(functional._validate, "step", no_full_path)
    fast_state = _state(shape, dtype, seed=0)
    full_state = tuple(a.copy() for a in fast_state)
    kw = dict(lr=2e-3, beta1=0.85, beta2=0.995, eps=1e-7, weight_decay=wd, decoupled=decoupled,
              amsgrad=amsgrad, maximize=maximize)
    for k, t in enumerate((1, 2, 3, 1000, 10**6)):
        g = _grads(shape, dtype, seed=k + 1)
        g.flags.writeable = False  # grads may be read-only
        p, m, v, vmax = fast_state
        adamfast.adam_step(p, g, m, v, step=t, max_exp_avg_sq=vmax if amsgrad else None,
                           backend="cython", **kw)
        p, m, v, vmax = full_state
        full_path(mod, p, g, m, v, vmax, t, **kw)
        for name, a, b in zip(("params", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), fast_state,
                              full_state):
            assert bits(a) == bits(b), f"{name} differs at step {t}"


def test_fast_path_disjoint_views_accepted(mod, dtype):
    """zeros_buffers hands out views of one allocation above 1 MiB: disjoint, so taken."""
    n = 300000
    fast = adamfast.zeros_buffers(n, dtype, 5)
    assert all(a.base is not None for a in fast)
    full = tuple(np.zeros(n, dtype) for _ in range(5))
    g = _grads((n,), dtype, seed=3)
    for bufs in (fast, full):
        bufs[0][...] = 1.0
        bufs[1][...] = g
    p, g_, m, v, vmax = fast
    args = (3, 1e-3, 0.9, 0.999, 1e-8, 0.01, False, True, vmax, False)
    assert mod.adam_step_fast(p, g_, m, v, *args, 2) is True
    full_path(mod, full[0], full[1], full[2], full[3], full[4], 3, 1e-3, 0.9, 0.999,
              1e-8, 0.01, False, True, False)
    for a, b in zip(fast, full):
        assert bits(a) == bits(b)


def test_flat_buffer_views_like_the_optimizer(mod):
    """Adjacent disjoint slices of one buffer are fine (as in test_validation)."""
    flat = np.random.default_rng(0).standard_normal(400).astype(np.float32)
    ref = flat.copy()
    assert mod.adam_step_fast(flat[0:100], flat[100:200], flat[200:300], flat[300:400], 1, 1e-3,
                              0.9, 0.999, 1e-8, 0.0, False, False, None, False, 1) is True
    full_path(mod, ref[0:100], ref[100:200], ref[200:300], ref[300:400], None, 1,
              1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    assert bits(flat) == bits(ref)


# --- (3) declining: everything the fast path does not take -------------------------

N = 1000


def good(dtype=np.float32, n=N):
    rng = np.random.default_rng(0)
    return dict(params=rng.standard_normal(n).astype(dtype),
                grads=rng.standard_normal(n).astype(dtype),
                exp_avg=rng.standard_normal(n).astype(dtype),
                exp_avg_sq=rng.random(n).astype(dtype),
                step=5, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False, amsgrad=True, max_exp_avg_sq=rng.random(n).astype(dtype),
                maximize=False)


ORDER = ("params", "grads", "exp_avg", "exp_avg_sq", "step", "lr", "beta1", "beta2", "eps",
         "weight_decay", "decoupled", "amsgrad", "max_exp_avg_sq", "maximize")


def call_fast(mod, kw, num_threads=2):
    return mod.adam_step_fast(*(kw[k] for k in ORDER), num_threads)


def _readonly(name):
    def f(kw):
        kw[name] = kw[name].copy()
        kw[name].flags.writeable = False
    return f


def _set(name, value):
    def f(kw):
        kw[name] = value(kw) if callable(value) else value
    return f


def _overlapping_view(kw):
    flat = np.zeros(2 * N, np.float32)
    kw["exp_avg"], kw["exp_avg_sq"] = flat[:N], flat[N // 2:N // 2 + N]


class FloatSub(float):
    pass


class IntSub(int):
    pass


class ArraySub(np.ndarray):
    pass


DECLINE = [
    # hyperparameters of the wrong exact type (the full path converts them)
    ("int lr", _set("lr", 0)),
    ("np.float32 lr", _set("lr", np.float32(1e-3))),
    ("np.float64 beta1", _set("beta1", np.float64(0.9))),
    ("float subclass eps", _set("eps", FloatSub(1e-8))),
    ("str lr", _set("lr", "0.1")),
    ("None weight_decay", _set("weight_decay", None)),
    ("bool step", _set("step", True)),
    ("np.int64 step", _set("step", np.int64(5))),
    ("int subclass step", _set("step", IntSub(5))),
    ("float step", _set("step", 5.0)),
    ("numpy bool flag", _set("maximize", np.bool_(False))),
    ("numpy bool amsgrad", _set("amsgrad", np.bool_(True))),
    ("int flag", _set("decoupled", 0)),
    # out of range
    ("step 0", _set("step", 0)),
    ("step -1", _set("step", -1)),
    ("step > LONG_MAX", _set("step", 2**63)),
    ("NaN lr", _set("lr", float("nan"))),
    ("inf lr", _set("lr", float("inf"))),
    ("negative lr", _set("lr", -1e-3)),
    ("beta1=1.0", _set("beta1", 1.0)),
    ("beta2 NaN", _set("beta2", float("nan"))),
    ("beta1 negative", _set("beta1", -0.1)),
    ("inf eps", _set("eps", float("inf"))),
    ("negative weight_decay", _set("weight_decay", -0.1)),
    ("subnormal beta**step", _set("beta2", 0.5)),  # step 5 is fine: see the next line
    # buffers
    ("list params", _set("params", lambda kw: kw["params"].tolist())),
    ("ndarray subclass", _set("grads", lambda kw: kw["grads"].view(ArraySub))),
    ("masked", _set("grads", lambda kw: np.ma.masked_array(kw["grads"]))),
    ("float16", _set("params", lambda kw: kw["params"].astype(np.float16))),
    ("int32 grads", _set("grads", lambda kw: kw["grads"].astype(np.int32))),
    ("big-endian", _set("exp_avg", lambda kw: kw["exp_avg"].astype(">f4"))),
    ("mixed dtype", _set("exp_avg_sq", lambda kw: kw["exp_avg_sq"].astype(np.float64))),
    ("mismatched sizes", _set("grads", lambda kw: kw["grads"][:-1].copy())),
    ("mismatched max size", _set("max_exp_avg_sq", lambda kw: kw["max_exp_avg_sq"][:-1].copy())),
    ("non-contiguous", _set("grads", lambda kw: np.repeat(kw["grads"], 2)[::2])),
    ("fortran order", _set("params", lambda kw: np.asfortranarray(kw["params"].reshape(10, -1)))),
    ("read-only params", _readonly("params")),
    ("read-only exp_avg", _readonly("exp_avg")),
    ("read-only max", _readonly("max_exp_avg_sq")),
    ("unaligned", _set("exp_avg", lambda kw: np.frombuffer(
        bytearray(b"\0" + kw["exp_avg"].tobytes()), np.float32, offset=1))),
    ("amsgrad without buffer", _set("max_exp_avg_sq", None)),
    ("a view overlapping another", _overlapping_view),
    ("same array twice", _set("exp_avg_sq", lambda kw: kw["exp_avg"])),
    ("grads aliases params", _set("grads", lambda kw: kw["params"])),
    ("max aliases exp_avg_sq", _set("max_exp_avg_sq", lambda kw: kw["exp_avg_sq"])),
    ("params view into grads", _set("params", lambda kw: kw["grads"][:])),
]


@pytest.mark.parametrize("case,mutate", DECLINE, ids=[c[0] for c in DECLINE])
def test_fast_path_declines_and_writes_nothing(mod, case, mutate):
    kw = good()
    mutate(kw)
    if case == "subnormal beta**step":
        kw["step"] = 1060  # 0.5**1060 is subnormal
    before = {k: bits(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    assert call_fast(mod, kw) is False
    for k, b in before.items():
        assert bits(kw[k]) == b, f"{k} was written"


def test_good_call_is_taken(mod):
    """The baseline of the table above: the unmodified call is accepted."""
    kw = good()
    assert call_fast(mod, kw) is True


@pytest.mark.parametrize("vmax", [None, "garbage", np.zeros(3, np.float16)],
                         ids=["None", "str", "wrong array"])
def test_max_exp_avg_sq_ignored_without_amsgrad(mod, vmax):
    kw = good()
    kw["amsgrad"] = False
    kw["max_exp_avg_sq"] = vmax
    assert call_fast(mod, kw) is True


def test_get_backend_fast_paths(monkeypatch):
    cy = _dispatch.get_backend("cython")
    assert cy.adam_fast is _dispatch.cython_module().adam_step_fast
    assert cy.adam_call is _dispatch.cython_module().adam_step_call
    assert cy.step_fast is _dispatch.cython_module().step_fast
    assert _dispatch.get_backend("numpy").adam_fast is None
    assert _dispatch.get_backend("numpy").adam_call is None
    if "numba" in adamfast.available_backends():
        assert _dispatch.get_backend("numba").adam_fast is None
        assert _dispatch.get_backend("numba").adam_call is None
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.get_backend("fortran")
    with pytest.raises(TypeError, match="backend must be a str"):
        _dispatch.get_backend(["cython"])
    monkeypatch.setattr(_dispatch, "_available", ("numpy",))
    monkeypatch.setattr(_dispatch, "_backends", {})
    assert _dispatch.get_backend("auto").adam_fast is None
    with pytest.raises(ValueError, match="backend 'cython' is not available"):
        _dispatch.get_backend("cython")


# --- soundness: random mixes of good and bad arguments ---------------------------

def _choices():
    """Per argument, values the full path accepts and values it rejects."""
    return dict(
        step=[1, 7, 10**9, 0, -3, True, np.int64(4), 2.0, 2**63, None],
        lr=[1e-3, 0.0, -0.0, 1e300, 0, np.float32(1e-3), -1.0, float("nan"), float("inf"), "x"],
        beta1=[0.9, 0.0, 1 - 2**-53, 1.0, -0.1, float("nan"), np.float64(0.5), 1],
        beta2=[0.999, 0.0, 0.5, 1.0, 2.0, float("nan")],
        eps=[1e-8, 0.0, float("inf"), -1e-8],
        weight_decay=[0.0, 0.1, 1e308, float("nan"), -0.1],
        decoupled=[False, True, np.bool_(True), 1, None],
        amsgrad=[False, True, np.bool_(False), "yes"],
        maximize=[False, True, np.bool_(True), 0],
    )


def _buffers(rng, dtype, n):
    """Fresh buffers, sometimes with one of them made invalid or aliased."""
    gen = np.random.default_rng(rng.randrange(2**32))
    b = [gen.standard_normal(n).astype(dtype) for _ in range(5)]
    r = rng.random()
    if r < 0.5:
        return b
    i = rng.randrange(5)
    kind = rng.choice(["alias", "view", "readonly", "dtype", "size", "strided", "2d", "none"])
    if kind == "alias":
        b[i] = b[rng.randrange(5)]
    elif kind == "view":  # a slice of another buffer: overlaps unless n == 0
        j = rng.randrange(5)
        b[i] = b[j][:] if rng.random() < 0.5 else np.concatenate([b[j], b[j]])[:n]
    elif kind == "readonly":
        b[i].flags.writeable = False
    elif kind == "dtype":
        b[i] = b[i].astype(np.float64 if dtype == np.float32 else np.float32)
    elif kind == "size":
        b[i] = b[i][:-1].copy() if n else np.zeros(1, dtype)
    elif kind == "strided":
        b[i] = np.repeat(b[i], 2)[::2]
    elif kind == "2d" and n % 2 == 0:
        b[i] = b[i].reshape(2, -1)
    elif kind == "none":
        b[i] = None
    return b


def _snapshot(bufs):
    return {k: (a, bits(a)) for k, a in bufs.items() if isinstance(a, np.ndarray)}


def _restore(snap):
    # All snapshots predate any write, so the order does not matter even
    # when buffers alias.  Read-only arrays are never written.
    for a, b in snap.values():
        if a.flags.writeable:
            a[...] = np.frombuffer(b, a.dtype).reshape(a.shape)


def test_never_accepts_what_the_full_path_rejects(monkeypatch, mod):
    """Random argument mixes, each run on the same objects by both paths (state
    restored in between): fast True => the full path accepts and gives the
    same bits; full path raises => fast declined; declined => nothing written."""
    rng = random.Random(7)
    choices = _choices()
    names = ("params", "grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    taken = declined_valid = rejected = 0
    for _ in range(3000):
        dtype = rng.choice((np.float32, np.float64))
        n = rng.choice((0, 1, 5, 64))
        hyper = {k: rng.choice(v) if rng.random() < 0.3 else v[0] for k, v in choices.items()}
        bufs = dict(zip(names, _buffers(rng, dtype, n)))
        snap = _snapshot(bufs)

        with monkeypatch.context() as mp:
            mp.setattr(_dispatch.get_backend("cython"), "adam_fast", None)
            try:
                adamfast.adam_step(*(bufs[k] for k in names[:4]),
                                   max_exp_avg_sq=bufs["max_exp_avg_sq"], backend="cython",
                                   **hyper)
                full_ok = True
            except (TypeError, ValueError, OverflowError):
                full_ok = False
        full_after = {k: bits(a) for k, (a, _) in snap.items()}
        _restore(snap)
        assert {k: bits(a) for k, (a, _) in snap.items()} == {k: b for k, (_, b) in snap.items()}

        ok = mod.adam_step_fast(*(bufs[k] if k in bufs else hyper[k] for k in ORDER), 2)
        after = {k: bits(a) for k, (a, _) in snap.items()}
        if ok:
            assert full_ok, ("fast path accepted what the full path rejects", hyper)
            assert after == full_after, hyper
            taken += 1
        else:
            assert after == {k: b for k, (_, b) in snap.items()}, "a declined call wrote"
            if full_ok:
                declined_valid += 1
            else:
                rejected += 1
        # adam_step_call (adamfast.Adam's C step): the same answer and the same bits,
        # its arguments given once and the step at the call.
        _restore(snap)
        args = [bufs[k] if k in bufs else hyper[k] for k in ORDER if k != "step"]
        assert mod.adam_step_call(*args)(hyper["step"], 2) is ok
        assert {k: bits(a) for k, (a, _) in snap.items()} == after, hyper
    assert taken > 300 and rejected > 300 and declined_valid > 100, (taken, rejected,
                                                                     declined_valid)
