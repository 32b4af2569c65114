"""Bad input: a clear TypeError or ValueError naming the argument, and nothing written."""

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch

N = 70000  # above the parallel threshold: the check must not depend on the path


def fresh(dtype=np.float32, n=N):
    rng = np.random.default_rng(0)
    return dict(params=rng.standard_normal(n).astype(dtype),
                grads=rng.standard_normal(n).astype(dtype),
                exp_avg=rng.standard_normal(n).astype(dtype),
                exp_avg_sq=rng.random(n).astype(dtype),
                max_exp_avg_sq=rng.random(n).astype(dtype))


def call(bufs, backend_, **kw):
    kw = {"step": 3, "amsgrad": True, "backend": backend_, **kw}
    args = [bufs[k] for k in ("params", "grads", "exp_avg", "exp_avg_sq")]
    kw.setdefault("max_exp_avg_sq", bufs["max_exp_avg_sq"])
    adamfast.adam_step(*args, **kw)


def frozen(bufs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in bufs.items()}


def assert_unchanged(bufs, before):
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(bufs[k], v, err_msg=f"{k} was written")


HYPER = [
    ("lr", -1e-3, ValueError, "lr must be a finite number >= 0, got -0.001"),
    ("lr", float("nan"), ValueError, "lr must be a finite number >= 0, got nan"),
    ("lr", float("inf"), ValueError, "lr must be"),
    ("lr", "0.1", TypeError, "lr must be a real number, got '0.1'"),
    ("lr", None, TypeError, "lr must be a real number"),
    ("eps", -1.0, ValueError, "eps must be a finite number >= 0"),
    ("eps", float("inf"), ValueError, "eps must be"),
    ("weight_decay", -0.1, ValueError, "weight_decay must be a finite number >= 0"),
    ("weight_decay", float("nan"), ValueError, "weight_decay must be"),
    ("beta1", 1.0, ValueError, r"beta1 must be in \[0, 1\), got 1.0"),
    ("beta1", -0.1, ValueError, "beta1 must be in"),
    ("beta2", 1.5, ValueError, "beta2 must be in"),
    ("beta2", float("nan"), ValueError, "beta2 must be in"),
    ("beta2", True, TypeError, "beta2 must be a real number"),
    ("step", 0, ValueError, "step must be a positive integer .*got 0"),
    ("step", -2, ValueError, "step must be a positive integer"),
    ("step", 1.0, TypeError, r"step must be a positive integer .*got 1.0 \(float\)"),
    ("step", True, TypeError, "step must be a positive integer"),
    ("amsgrad", "yes", TypeError, "amsgrad must be True or False"),
    ("maximize", 1, TypeError, "maximize must be True or False"),
    ("decoupled", None, TypeError, "decoupled must be True or False"),
    ("backend", "fortran", ValueError, "backend must be one of .*got 'fortran'"),
]


@pytest.mark.parametrize("name,value,exc,msg", HYPER, ids=[f"{h[0]}={h[1]!r}" for h in HYPER])
def test_bad_hyperparameter(backend, name, value, exc, msg):
    bufs = fresh()
    before = frozen(bufs)
    with pytest.raises(exc, match=msg):
        call(bufs, backend, **{name: value})
    assert_unchanged(bufs, before)


def test_numpy_scalars_accepted(backend):
    bufs = fresh(n=10)
    call(bufs, backend, lr=np.float32(1e-3), beta1=np.float64(0.9), step=np.int64(2),
         maximize=np.bool_(False))


def _noncontig(b):
    b["grads"] = np.repeat(b["grads"], 2)[::2]


def _fortran(b):
    b["params"] = np.asfortranarray(b["params"][:N - N % 7].reshape(7, -1))
    for k in ("grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        b[k] = b[k][:N - N % 7].copy()


def _readonly(name):
    def f(b):
        b[name].flags.writeable = False
    return f


def _set(name, value):
    def f(b):
        b[name] = value(b) if callable(value) else value
    return f


BUFFERS = [
    ("params list", _set("params", lambda b: b["params"].tolist()), TypeError,
     "params must be a numpy.ndarray of float32 or float64, got .*list"),
    ("grads int", _set("grads", lambda b: b["grads"].astype(np.int32)), TypeError,
     "grads must have dtype float32 or float64"),
    ("params float16", _set("params", lambda b: b["params"].astype(np.float16)), TypeError,
     "params must have dtype float32 or float64"),
    ("big-endian", _set("exp_avg", lambda b: b["exp_avg"].astype(">f4")), TypeError,
     "exp_avg must have dtype float32 or float64 .native byte order"),
    ("mixed dtype", _set("exp_avg_sq", lambda b: b["exp_avg_sq"].astype(np.float64)), TypeError,
     r"exp_avg_sq must have the same dtype as params \(float32\), got float64"),
    ("size mismatch", _set("grads", lambda b: b["grads"][:-1].copy()), ValueError,
     r"grads must have the same size as params \(70000 elements"),
    ("non-contiguous", _noncontig, ValueError, "grads must be C-contiguous"),
    ("fortran order", _fortran, ValueError, "params must be C-contiguous"),
    ("read-only params", _readonly("params"), ValueError, "params must be writable"),
    ("read-only exp_avg_sq", _readonly("exp_avg_sq"), ValueError, "exp_avg_sq must be writable"),
    ("read-only max", _readonly("max_exp_avg_sq"), ValueError, "max_exp_avg_sq must be writable"),
    ("unaligned", _set("exp_avg", lambda b: np.frombuffer(
        bytearray(b"\0" + b["exp_avg"].tobytes()), np.float32, offset=1)), ValueError,
     "exp_avg must be aligned"),
    ("amsgrad without buffer", _set("max_exp_avg_sq", None), ValueError,
     "max_exp_avg_sq is required when amsgrad=True"),
    ("masked", _set("grads", lambda b: np.ma.masked_array(b["grads"])), TypeError,
     "grads must be a plain numpy.ndarray"),
    ("same array twice", _set("exp_avg_sq", lambda b: b["exp_avg"]), ValueError,
     "exp_avg and exp_avg_sq overlap in memory"),
    ("grads aliases params", _set("grads", lambda b: b["params"]), ValueError,
     "params and grads overlap in memory"),
]


@pytest.mark.parametrize("case,mutate,exc,msg", BUFFERS, ids=[b[0] for b in BUFFERS])
def test_bad_buffer(backend, case, mutate, exc, msg):
    bufs = fresh()
    mutate(bufs)
    before = frozen(bufs)
    with pytest.raises(exc, match=msg):
        call(bufs, backend)
    assert_unchanged(bufs, before)


def test_overlapping_views_rejected(backend):
    flat = np.random.default_rng(0).standard_normal(400).astype(np.float32)
    before = flat.copy()
    p, g, m, v = flat[0:100], flat[100:200], flat[150:250], flat[300:400]
    with pytest.raises(ValueError, match="grads and exp_avg overlap"):
        adamfast.adam_step(p, g, m, v, step=1, backend=backend)
    np.testing.assert_array_equal(flat, before)
    # Disjoint views of one buffer are fine (that is what the optimizer does).
    adamfast.adam_step(flat[0:100], flat[100:200], flat[200:300], flat[300:400], step=1,
                       backend=backend)


def test_unavailable_backend_says_how(monkeypatch):
    monkeypatch.setattr(_dispatch, "_available", ("numpy",))
    monkeypatch.setattr(_dispatch, "_backends", {})
    bufs = fresh(n=10)
    with pytest.raises(ValueError, match="backend 'cython' is not available.*build_ext"):
        call(bufs, "cython")
    with pytest.raises(ValueError, match="backend 'numba' is not available.*pip install numba"):
        call(bufs, "numba")
    assert _dispatch.resolve("auto") == "numpy"


def test_available_backends():
    got = adamfast.available_backends()
    assert isinstance(got, tuple) and "numpy" in got
    assert set(got) <= {"numpy", "numba", "cython"}
