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
from conftest import CYTHON_BUILD_NAMES
from optim_cases import CASES

# Kinds whose update has a square root or a division (the costly, vectorizable part).
_WITHOUT = {k for c in CASES.values() for k in c.no_sqrt_or_div}
WITH_SQRT_OR_DIV = [k for k in KINDS if k not in _WITHOUT]


def _objdump_ops(path, key, insn):
    """{key(function name): set of mnemonics matching ``insn``, "v" prefix dropped}
    over the functions of the shared object at ``path`` for which ``key`` is not None."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    ops, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = key(m.group(1))
            continue
        if name is not None:
            i = re.search(r"\t(v?" + insn + r")\b", line)
            if i:
                ops.setdefault(name, set()).add(i.group(1).lstrip("v"))
    return ops


def _cython_drive_ops(path):
    """{(kind index, dtype index): set of sqrt/div mnemonics} over the driver's
    specializations (_drive and the _span/_chunk gcc kept out of line)."""
    def key(fn):
        f = re.match(r"_*pyx_fuse_(\d+)_(\d+)__pyx_f_\w+__(?:drive|span|chunk)\b", fn)
        return (int(f.group(1)), int(f.group(2))) if f else None

    return _objdump_ops(path, key, r"(?:sqrt|div)[ps][sd]")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
@pytest.mark.parametrize("module", CYTHON_BUILD_NAMES)
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


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
@pytest.mark.parametrize("module", CYTHON_BUILD_NAMES)
def test_cython_update_passes_prefetch_ahead(module):
    """Every kind's update loop, and pass 1 of the kinds that reduce per tensor,
    ask for their lines ahead (_driver.pxi's AF_AHEAD_BLOCK): without the
    requests an Adam step ran at 84% of the roofline instead of 97% (Intel
    Xeon, 16M float32), with the bits unchanged.  gcc deletes the calls of a
    function whose only statements are prefetches, so only the machine code
    shows they are there."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} not built here")

    def key(fn):
        f = re.match(r"_*pyx_fuse_(\d+)_(\d+)__pyx_f_\w+__(drive|span|chunk|rspan)\b", fn)
        if not f:
            return None
        return ("reduce" if f.group(3) == "rspan" else "update", int(f.group(1)),
                int(f.group(2)))

    ops = _objdump_ops(mod.__file__, key, r"prefetcht0")
    for kind in KINDS:
        k = mod.KINDS.index(kind)
        for d in (0, 1):
            assert ("update", k, d) in ops, \
                f"{module}: {kind} ({'f32' if d == 0 else 'f64'}) asks for no line ahead"
    assert any(name[0] == "reduce" for name in ops), f"{module}: pass 1 asks for no line ahead"


def _paired_packed_ops(path):
    """{(kind index, dtype index): set of packed sqrt/div mnemonics that appear twice
    within eight instructions} over the driver's specializations: the mark of a
    loop body vectorized as one group of two vectors per stream (the line loop;
    gcc does not unroll the plain loop, whose body has one of each)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    pairs, name, recent = {}, None, []
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            f = re.match(r"_*pyx_fuse_(\d+)_(\d+)__pyx_f_\w+__(?:drive|span|chunk)\b", m.group(1))
            name, recent = ((int(f.group(1)), int(f.group(2))) if f else None), []
            continue
        if name is None:
            continue
        i = re.search(r"\t(v(?:sqrt|div)p[sd])\s", line)
        recent = (recent + [i.group(1) if i else None])[-8:]
        if i and recent[:-1].count(i.group(1)):
            pairs.setdefault(name, set()).add(i.group(1)[1:])
    return pairs


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
def test_avx2_line_loop_is_vectorized():
    """The AVX2 build's line loop (kernels/_driver.pxi): one cache line of each stream
    per iteration, gcc emitting each operation's two vectors back to back.  Where
    gcc leaves it scalar (its inlining limits), it runs several times slower than
    the plain loop it replaced, with the bits unchanged."""
    import importlib

    try:
        mod = importlib.import_module("adamfast._cython_avx2")
    except ImportError:
        pytest.skip("adamfast._cython_avx2 not built here")
    if "line_loop=yes" not in mod.simd_info():
        pytest.skip("built without the line loop (a compiler without gcc's --param limits)")
    pairs = _paired_packed_ops(mod.__file__)
    for kind in WITH_SQRT_OR_DIV:
        k = mod.KINDS.index(kind)
        for d, packed in ((0, {"sqrtps", "divps"}), (1, {"sqrtpd", "divpd"})):
            assert pairs.get((k, d), set()) & packed, \
                f"{kind} ({'f32' if d == 0 else 'f64'}): the line loop is not vectorized"


# numba's entries that run: the block cfuncs (adamfast's pool, serial calls
# included) when the cython extension is there, else the njit serial entries.
# A cfunc has no inspect_asm; its LLVM IR shows packed operations as vector
# types, <N x float> / <N x double> with N >= 2.
NUMBA_ENTRY_IR = """
import re, sys, adamfast._numba as nb
def entry_ir(module, name):
    mod = nb._import('adamfast._numba.' + module, slp=module == '_norm')
    block = getattr(mod, name + '_block', None)
    if nb.threading_path() == 'adamfast pool' and block is not None:
        if name.endswith('_reduce'):  # pass 1, compiled as _reduce.reduce_kernel does
            block = nb._cfunc(block, slp=True)
        elif module != '_norm':  # a kind's entry: compiled on the kind's first use
            nb._load(nb.KINDS.index(name))
            block = nb._cfuncs[block]
        return block.inspect_llvm()
    serial = getattr(mod, name + '_serial')
    for sig in nb.SIGNATURES if module != '_norm' else ():
        serial.compile(sig)
    return '\\n'.join(serial.inspect_llvm(sig) for sig in serial.signatures)
def packed(ir, op, ty):
    return bool(re.search(op + r'[^\\n]*<\\d+ x ' + ty + '>', ir))
"""


def _run_entry_ir(code, tmp_path):
    """Run NUMBA_ENTRY_IR + ``code`` in a fresh process with an empty numba cache
    (a fresh compile) and return its stdout."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", NUMBA_ENTRY_IR + code], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
def test_numba_loops_use_packed_sqrt_and_div(tmp_path):
    # A fresh compile: a private, empty cache directory.
    out = _run_entry_ir(
        "for kind in %r:\n"
        "    ir = entry_ir(nb._MODULES[nb.KINDS.index(kind)], kind)\n"
        "    print(kind, all(packed(ir, op, ty) for op, ty in\n"
        "                   (('llvm.sqrt', 'float'), ('fdiv', 'float'),\n"
        "                    ('llvm.sqrt', 'double'), ('fdiv', 'double'))),\n"
        "          '\"prefer-vector-width\"=\"512\"' in ir, 'llvm.prefetch' in ir)\n"
        % (["adam", "adam_amsgrad", "nadam", "rmsprop_centered_momentum", "adadelta"],),
        tmp_path)
    lines = [line for line in out.split("\n") if line]
    assert len(lines) == 5, out
    for line in lines:
        kind, ok, wide, ahead = line.split()
        assert ok == "True", f"numba: {kind} is not vectorized"
        # _driver.prefer_wide_vectors: the widest vectors, as the cython AVX-512 build.
        assert wide == "True", f"numba: {kind}'s loop does not prefer 512-bit vectors"
        # _driver.ahead: the lines of each block asked for ahead.
        assert ahead == "True", f"numba: {kind}'s loop asks for no line ahead"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.skipif("cython" not in adamfast.available_backends(), reason="no cython backend")
@pytest.mark.parametrize("module", CYTHON_BUILD_NAMES)
def test_cython_norm_pass_uses_packed_float64(module):
    """The guarded step's norm pass: its 16 lanes must become packed mulpd/addpd, and
    it prefetches the gradients ahead into L2 (AF_SUMSQ_PREFETCH: prefetcht2)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} not built here")
    ops = _objdump_ops(mod.__file__,
                       lambda fn: fn if ("sumsq" in fn or "norm_block" in fn) else None,
                       r"(?:(?:mul|add)[ps]d|prefetcht[0-2])")
    assert ops, "no norm-pass function found in the machine code"
    assert any({"mulpd", "addpd", "prefetcht2"} <= found and "prefetcht0" not in found
               for found in ops.values()), ops


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
def test_numba_norm_pass_uses_packed_float64(tmp_path):
    """The numba norm pass's 16 lanes become packed float64 multiplies and adds
    (compiled with the SLP vectorizer), numba's own SLP setting is left as
    the caller had it, and the pass prefetches the gradients ahead into L2 (_ahead:
    locality 1, prefetcht2)."""
    out = _run_entry_ir(
        "import numba, numpy as np\n"
        "before = numba.config.SLP_VECTORIZE\n"
        "nb.sumsq_kernel(np.ones(100, np.float32), np.zeros((1, 2)), 1)\n"
        "nb.sumsq_kernel(np.ones(100), np.zeros((1, 2)), 1)\n"
        "assert numba.config.SLP_VECTORIZE == before, numba.config.SLP_VECTORIZE\n"
        "ir = entry_ir('_norm', 'sumsq')\n"
        "print(packed(ir, 'fmul', 'double'), packed(ir, 'fadd', 'double'),\n"
        "      re.search(r'llvm\\.prefetch[.\\w]*\\([^)]*i32 0, i32 1, i32 1\\)', ir)\n"
        "      is not None)\n",
        tmp_path)
    assert out.split() == ["True", "True", "True"], out


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
@pytest.mark.parametrize("module, name", [("sgd", "sgd_momentum"), ("lamb", "lamb_reduce"),
                                          ("rmsprop", "rmsprop_centered")])
def test_numba_typical_row_runs_a_loop_without_selects(tmp_path, module, name):
    """_driver.walk's copy of the loop for the typical row (_typical), and
    _reduce.reduce_chunk's: with the flags fixed by the test before it, LLVM
    drops the selects (SGD momentum's flags, RMSprop's centered, which also picks
    the grad_avg stored, Lamb's weight decay in pass 1), which it otherwise keeps
    in the vector loop as a compare and branch each.
    Both loops ask for their lines ahead (_driver.ahead), pass 1 too."""
    out = _run_entry_ir(
        f"ir = entry_ir({module!r}, {name!r})\n"
        "blocks = re.split(r'\\n(?=[\\w.]+:)', ir)\n"
        "vector = [b for b in blocks if re.search(r'fmul[^\\n]*<\\d+ x float>', b)]\n"
        "print(len(vector) > 0, any('select' not in b for b in vector),\n"
        "      any('select' in b for b in vector), 'llvm.prefetch' in ir)\n",
        tmp_path)
    # Vector loops exist; one (the typical copy) has no select; another (the
    # general copy) still selects at run time; the lines are asked for ahead.
    assert out.split() == ["True", "True", "True", "True"], out
