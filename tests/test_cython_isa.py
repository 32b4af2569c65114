"""The cython backend's two builds (baseline and -mavx2) and how one is picked.

Both are compiled from kernels/_adam.pxi with -ffp-contract=off, so they must
agree bit for bit; only their speed differs.
"""

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from adamfast import _dispatch
from adamfast import _engine
from adamfast.algorithms._spec import NSLOT

from optim_cases import kind_cases

KIND_CASES = kind_cases()

from conftest import SIZES

STEPS = 20


def _variant(name):
    try:
        return importlib.import_module(_dispatch._CYTHON_VARIANTS[name])
    except ImportError:
        return None


BASELINE = _variant("baseline")
HAS_AVX2 = _dispatch._cpu_has_avx2()
# Never import the AVX2 build on a CPU without AVX2: it may die with SIGILL.
AVX2 = _variant("avx2") if HAS_AVX2 else None

needs_baseline = pytest.mark.skipif(BASELINE is None, reason="adamfast._cython is not built")
needs_avx2_cpu = pytest.mark.skipif(not HAS_AVX2, reason="this CPU lacks AVX2")


def _run(code, isa):
    env = {k: v for k, v in os.environ.items() if k != _dispatch.CYTHON_ISA_ENV}
    if isa is not None:
        env[_dispatch.CYTHON_ISA_ENV] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


@needs_baseline
@needs_avx2_cpu
def test_avx2_variant_is_built_on_x86_64():
    # On an AVX2 CPU with a gcc/clang build, setup.py builds both modules.
    assert AVX2 is not None, "adamfast._cython_avx2 is missing: rebuild (setup.py build_ext)"
    assert "variant=avx2 isa=avx2" in AVX2.simd_info()
    assert "fp_contract=off" in AVX2.simd_info()
    for name in ("CHUNK", "PARALLEL_MIN"):
        assert getattr(AVX2, name) == getattr(BASELINE, name)
    assert AVX2.openmp_enabled() == BASELINE.openmp_enabled()


@needs_baseline
@needs_avx2_cpu
@pytest.mark.parametrize("kind", KIND_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_variants_bit_identical(n, dtype, kind):
    """Every kind: the baseline and AVX2 builds agree bit for bit."""
    if AVX2 is None:
        pytest.fail("adamfast._cython_avx2 is not built on an AVX2 CPU")
    spec, hp = KIND_CASES[kind]
    nstate = len(spec.state_names(kind))
    rng = np.random.default_rng(1000 * n + (dtype == np.float64))
    p0 = rng.standard_normal(n).astype(dtype)
    p0[::13] = 0  # exact zeros and ties for sqrt/eps and the maxima
    s0 = [np.abs(rng.standard_normal(n)).astype(dtype) * 1e-3 for _ in range(nstate)]
    bufs = {mod: [p0.copy()] + [x.copy() for x in s0] for mod in (BASELINE, AVX2)}
    grng = np.random.default_rng(7 + n)
    gstate = dict(spec.gstate) if spec.gstate else None
    for step in range(1, STEPS + 1):
        g = (grng.standard_normal(n) * (1e-3 if step % 5 == 0 else 1.0)).astype(dtype)
        row, gstate = spec.scalars(step, hp, gstate)
        table = np.zeros((1, NSLOT))
        table[0, :len(row)] = row
        for mod, b in bufs.items():
            mod.family_kernel(mod.KINDS.index(kind), b[0], g, tuple(b[1:]), table,
                              _engine.single_chunks(n), 2)
    for a, b in zip(bufs[BASELINE], bufs[AVX2]):
        assert np.array_equal(a, b, equal_nan=True), f"{kind}: builds differ"


@needs_baseline
@needs_avx2_cpu
def test_roofline_variants_identical():
    if AVX2 is None:
        pytest.fail("adamfast._cython_avx2 is not built on an AVX2 CPU")
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(100003).astype(np.float32) for _ in range(5)]
    out = []
    for mod in (BASELINE, AVX2):
        p, g, m, v, w = (x.copy() for x in start)
        mod.family_kernel(mod.KINDS.index("roofline3"), p, g, (m, v, w), np.zeros((1, NSLOT)),
                          _engine.single_chunks(p.size), 2)
        out.append((p, m, v, w))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@needs_baseline
def test_default_picks_avx2_when_supported():
    r = _run("from adamfast import _dispatch as d; print(d.cython_module().simd_info())", None)
    assert r.returncode == 0, r.stderr
    if HAS_AVX2 and AVX2 is not None:
        assert "variant=avx2" in r.stdout
    else:
        assert "variant=baseline" in r.stdout


@needs_baseline
def test_force_baseline():
    code = ("import adamfast, numpy as np; from adamfast import _dispatch as d; "
            "m = d.cython_module(); print(m.__name__, m.simd_info()); "
            "print(d.get_backend('cython').kernel is m.family_kernel)")
    r = _run(code, "baseline")
    assert r.returncode == 0, r.stderr
    name, info = r.stdout.splitlines()[0].split(" ", 1)
    assert name == "adamfast._cython"
    assert "variant=baseline" in info
    if HAS_AVX2:  # an x86-64 machine: the baseline build is SSE2
        assert "isa=sse2" in info
    assert r.stdout.splitlines()[1] == "True"


@needs_baseline
@needs_avx2_cpu
def test_force_avx2():
    r = _run("from adamfast import _dispatch as d; print(d.cython_module().simd_info())", "avx2")
    assert r.returncode == 0, r.stderr
    assert "variant=avx2" in r.stdout


def test_force_avx2_without_cpu_support_errors():
    code = ("from adamfast import _dispatch as d; d._cpu_has_avx2 = lambda: False\n"
            "try:\n    d.cython_module()\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = _run(code, "avx2")
    assert r.returncode == 0, r.stderr
    assert "ValueError: " in r.stdout and "ADAMFAST_CYTHON_ISA=avx2" in r.stdout
    assert "does not support AVX2" in r.stdout


@pytest.mark.parametrize("value", ["avx512", "sse2", "1"])
def test_force_unknown_value_errors(value):
    code = ("from adamfast import _dispatch as d\n"
            "try:\n    d.get_backend('cython')\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = _run(code, value)
    assert r.returncode == 0, r.stderr
    assert "ValueError: " in r.stdout and "ADAMFAST_CYTHON_ISA must be one of" in r.stdout
    assert repr(value) in r.stdout
