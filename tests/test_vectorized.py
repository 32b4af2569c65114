"""The shipped loops are vectorized: packed sqrt/div in the kernels' machine code.

A dropped compiler flag or a select in the wrong place silently turns a loop
scalar (it happened to AMSGrad during the engine's rewrite), and nothing else
would notice: the results stay bit-identical, only the speed goes.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

import adamfast
from adamfast.algorithms import KINDS

# Kinds whose update has a square root or a division (the costly, vectorizable part).
WITH_SQRT_OR_DIV = [k for k in KINDS if k not in ("sgd", "sgd_momentum", "lion")]


def _cython_drive_ops(path):
    """{(kind index, dtype index): set of sqrt/div mnemonics} over the driver's
    specializations (_drive and the _span/_chunk gcc kept out of line)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    ops, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            f = re.match(r"_*pyx_fuse_(\d+)_(\d+)__pyx_f_\w+__(?:drive|span|chunk)\b",
                         m.group(1))
            name = (int(f.group(1)), int(f.group(2))) if f else None
            continue
        if name is not None:
            i = re.search(r"\t(v?(?:sqrt|div)[ps][sd])\b", line)
            if i:
                ops.setdefault(name, set()).add(i.group(1).lstrip("v"))
    return ops


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
@pytest.mark.parametrize("module", ["adamfast._cython", "adamfast._cython_avx2"])
def test_cython_loops_use_packed_sqrt_and_div(module):
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} not built here")
    ops = _cython_drive_ops(mod.__file__)
    for kind in WITH_SQRT_OR_DIV:
        k = mod.KINDS.index(kind)
        for d, packed in ((0, {"sqrtps", "divps"}), (1, {"sqrtpd", "divpd"})):
            found = ops.get((k, d), set())
            assert found & packed, f"{module}: {kind} ({'f32' if d == 0 else 'f64'}) is not " \
                                   f"vectorized (sqrt/div seen: {sorted(found)})"


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
def test_numba_loops_use_packed_sqrt_and_div(tmp_path):
    # inspect_asm needs a fresh compile: a private, empty cache directory.
    code = (
        "import re, adamfast._numba as nb\n"
        "for kind in %r:\n"
        "    serial = nb._load(nb.KINDS.index(kind))[0]\n"
        "    asm = serial.inspect_asm(serial.signatures[0])\n"
        "    print(kind, bool(re.search(r'\\bv?(sqrtps|divps)\\b', asm)))\n"
        % (["adam", "adam_amsgrad", "nadam", "rmsprop_centered_momentum", "adadelta"],))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split("\n"):
        if line:
            kind, ok = line.split()
            assert ok == "True", f"numba: {kind} is not vectorized"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
@pytest.mark.parametrize("module", ["adamfast._cython", "adamfast._cython_avx2"])
def test_cython_norm_pass_uses_packed_float64(module):
    """The guarded step's norm pass: its 16 lanes must become packed mulpd/addpd."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} not built here")
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", mod.__file__],
                         capture_output=True, text=True, check=True).stdout
    ops, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
            continue
        i = re.search(r"\t(v?(?:mul|add)[ps]d)\b", line)
        if i and name and ("sumsq" in name or "norm_block" in name):
            ops.setdefault(name, set()).add(i.group(1).lstrip("v"))
    assert ops, "no norm-pass function found in the machine code"
    assert any({"mulpd", "addpd"} <= found for found in ops.values()), ops


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
def test_numba_norm_pass_uses_packed_float64(tmp_path):
    """The numba norm pass's 16 lanes become packed mulpd/addpd (compiled with the
    SLP vectorizer), and numba's own SLP setting is left as the caller had it."""
    code = (
        "import re, numba, adamfast._numba as nb\n"
        "before = numba.config.SLP_VECTORIZE\n"
        "m = nb._import('adamfast._numba._norm', slp=True)\n"
        "assert numba.config.SLP_VECTORIZE == before, numba.config.SLP_VECTORIZE\n"
        "for sig in m.sumsq_serial.signatures:\n"
        "    asm = m.sumsq_serial.inspect_asm(sig)\n"
        "    print(all(re.search(r'\\bv?' + op + r'\\b', asm) for op in ('mulpd', 'addpd')))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"], r.stdout
