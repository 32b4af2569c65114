"""The cython backend's builds (baseline, -mavx2 and -mavx512f) and how one is picked.

All are compiled from kernels/_family.pxi with -ffp-contract=off, so they
must agree bit for bit; only their speed differs.
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
HAS_AVX512 = _dispatch._cpu_has_avx512()
# Never import an ISA build on a CPU without its ISA: it may die with SIGILL.
AVX2 = _variant("avx2") if HAS_AVX2 else None
AVX512 = _variant("avx512") if HAS_AVX512 else None
# The ISA builds this CPU runs, by name: each must be built (on x86-64 with gcc).
WIDE = {name: mod for name, mod, has in (("avx2", AVX2, HAS_AVX2), ("avx512", AVX512, HAS_AVX512))
        if has}

needs_baseline = pytest.mark.skipif(BASELINE is None, reason="adamfast._cython is not built")
needs_avx2_cpu = pytest.mark.skipif(not HAS_AVX2, reason="this CPU lacks AVX2")
needs_avx512_cpu = pytest.mark.skipif(not HAS_AVX512, reason="this CPU lacks AVX-512F")
wide_builds = pytest.mark.parametrize("variant", ["avx2", "avx512"])


def _wide(variant):
    # The ISA build, or a skip (CPU) or failure (CPU has it, build missing).
    if variant not in WIDE:
        pytest.skip(f"this CPU lacks {_dispatch._VARIANT_NEEDS[variant][0]}")
    if WIDE[variant] is None:
        pytest.fail(f"{_dispatch._CYTHON_VARIANTS[variant]} is missing on a CPU that runs it: "
                    f"rebuild (setup.py build_ext)")
    return WIDE[variant]


def _run(code, isa):
    env = {k: v for k, v in os.environ.items() if k != _dispatch.CYTHON_ISA_ENV}
    if isa is not None:
        env[_dispatch.CYTHON_ISA_ENV] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


@needs_baseline
@wide_builds
def test_isa_variant_is_built_on_x86_64(variant):
    # On a CPU with the ISA and a gcc/clang build, setup.py builds its module.
    mod = _wide(variant)
    isa = {"avx2": "avx2", "avx512": "avx512f"}[variant]
    assert f"variant={variant} isa={isa}" in mod.simd_info()
    assert "fp_contract=off" in mod.simd_info()
    for name in ("CHUNK", "PARALLEL_MIN"):
        assert getattr(mod, name) == getattr(BASELINE, name)
    assert mod.openmp_enabled() == BASELINE.openmp_enabled()


@needs_baseline
@wide_builds
@pytest.mark.parametrize("kind", KIND_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_variants_bit_identical(n, dtype, kind, variant):
    """Every kind: the baseline build and each ISA build agree bit for bit."""
    wide = _wide(variant)
    spec, hp = KIND_CASES[kind]
    nstate = len(spec.state_names(kind))
    rng = np.random.default_rng(1000 * n + (dtype == np.float64))
    p0 = rng.standard_normal(n).astype(dtype)
    p0[::13] = 0  # exact zeros and ties for sqrt/eps and the maxima
    s0 = [np.abs(rng.standard_normal(n)).astype(dtype) * 1e-3 for _ in range(nstate)]
    bufs = {mod: [p0.copy()] + [x.copy() for x in s0] for mod in (BASELINE, wide)}
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
    for a, b in zip(bufs[BASELINE], bufs[wide]):
        assert np.array_equal(a, b, equal_nan=True), f"{kind}: builds differ"


@needs_baseline
@wide_builds
def test_roofline_variants_identical(variant):
    wide = _wide(variant)
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(100003).astype(np.float32) for _ in range(5)]
    out = []
    for mod in (BASELINE, wide):
        p, g, m, v, w = (x.copy() for x in start)
        mod.family_kernel(mod.KINDS.index("roofline3"), p, g, (m, v, w), np.zeros((1, NSLOT)),
                          _engine.single_chunks(p.size), 2)
        out.append((p, m, v, w))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@needs_baseline
def test_default_picks_the_widest_build_the_cpu_runs():
    r = _run("from adamfast import _dispatch as d; print(d.cython_module().simd_info())", None)
    assert r.returncode == 0, r.stderr
    if HAS_AVX512 and AVX512 is not None:
        assert "variant=avx512" in r.stdout
    elif HAS_AVX2 and AVX2 is not None:
        assert "variant=avx2" in r.stdout
    else:
        assert "variant=baseline" in r.stdout


@needs_baseline
def test_default_without_avx512_takes_avx2():
    code = ("from adamfast import _dispatch as d; d._cpu_has_avx512 = lambda: False; "
            "print(d.cython_module().simd_info())")
    r = _run(code, None)
    assert r.returncode == 0, r.stderr
    assert ("variant=avx2" if HAS_AVX2 and AVX2 is not None else "variant=baseline") in r.stdout


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
@wide_builds
def test_force_isa_build(variant):
    _wide(variant)
    r = _run("from adamfast import _dispatch as d; print(d.cython_module().simd_info())", variant)
    assert r.returncode == 0, r.stderr
    assert f"variant={variant} " in r.stdout


@pytest.mark.parametrize("variant, feature", [("avx2", "AVX2"), ("avx512", "AVX512F")])
def test_force_isa_without_cpu_support_errors(variant, feature):
    code = (f"from adamfast import _dispatch as d; d._cpu_has_{variant} = lambda: False\n"
            "try:\n    d.cython_module()\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = _run(code, variant)
    assert r.returncode == 0, r.stderr
    assert "ValueError: " in r.stdout and f"ADAMFAST_CYTHON_ISA={variant}" in r.stdout
    assert f"does not support {feature}" in r.stdout


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
def test_force_isa_build_not_built_errors(variant):
    code = (f"import sys; sys.modules[{_dispatch._CYTHON_VARIANTS[variant]!r}] = None\n"
            f"from adamfast import _dispatch as d; d._cpu_has_{variant} = lambda: True\n"
            "try:\n    d.cython_module()\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = _run(code, variant)
    assert r.returncode == 0, r.stderr
    assert f"{_dispatch._CYTHON_VARIANTS[variant]} is not built" in r.stdout
    assert _dispatch._VARIANT_NEEDS[variant][1] in r.stdout


@pytest.mark.parametrize("value", ["avx512bw", "sse2", "1"])
def test_force_unknown_value_errors(value):
    code = ("from adamfast import _dispatch as d\n"
            "try:\n    d.get_backend('cython')\nexcept ValueError as e:\n    print('ValueError:', e)")
    r = _run(code, value)
    assert r.returncode == 0, r.stderr
    assert "ValueError: " in r.stdout and "ADAMFAST_CYTHON_ISA must be one of" in r.stdout
    assert repr(value) in r.stdout
