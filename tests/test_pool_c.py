"""adamfast's thread pool as C of its own (kernels/af_pool.c, af_pool.h): what the
build ships and links, and the numba backend's one module for it (_numba/_pool.py)."""

import ctypes
import os
import re
import subprocess
import sys
import tarfile

import pytest

import adamfast
from adamfast import _dispatch
from conftest import CYTHON_BUILD_NAMES, cython_builds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")
# The sources the build compiles directly: the two modules and the pool.
ENTRY_SOURCES = tuple(name.split(".")[1] + ".pyx" for name in CYTHON_BUILD_NAMES) + ("af_pool.c",)
_INCLUDE = re.compile(r'^\s*(?:include\s+"([^"]+)"|cdef extern from "([^"]+)"'
                      r'|#\s*include\s+"([^"]+)")', re.M)


VARIANTS = cython_builds()
needs_cython = pytest.mark.skipif(not VARIANTS, reason="no cython build here")


def _build_inputs():
    """Every file under kernels/ the build reads, from the compiled sources through
    their Cython includes, extern headers and C includes (paths relative to ROOT)."""
    todo = [os.path.join(KERNELS, name) for name in ENTRY_SOURCES]
    seen = set()
    while todo:
        path = os.path.normpath(todo.pop())
        if path in seen:
            continue
        seen.add(path)
        with open(path) as f:
            text = f.read()
        for match in _INCLUDE.finditer(text):
            name = next(g for g in match.groups() if g)
            here = os.path.join(os.path.dirname(path), name)
            todo.append(here if os.path.exists(here) else os.path.join(KERNELS, name))
    return sorted(os.path.relpath(p, ROOT) for p in seen)


@pytest.mark.skipif(not (os.path.exists(os.path.join(ROOT, "setup.py"))
                         and os.path.exists(os.path.join(KERNELS, "_kinds.pxi"))),
                    reason="not a built source tree")
def test_sdist_ships_every_file_the_build_reads(tmp_path):
    inputs = _build_inputs()
    assert "kernels/af_pool.c" in inputs and "kernels/af_pool.h" in inputs
    assert "kernels/_pool.pxi" in inputs
    # egg-base keeps the metadata out of the source tree.
    run = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base",
                          str(tmp_path), "sdist", "-d", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = [p for p in inputs if p not in shipped]
    assert not missing, f"the sdist lacks {missing}"


@needs_cython
@pytest.mark.skipif(sys.platform == "win32", reason="dlsym lookup")
def test_pool_symbols_stay_inside_each_extension():
    # Each module links its own pool; an exported af_pool_run could bind the
    # other module's calls in a process that loads extensions RTLD_GLOBAL.
    for module in VARIANTS:
        lib = ctypes.CDLL(module.__file__)
        assert hasattr(lib, "PyInit_" + module.__name__.rsplit(".", 1)[1])
        for name in ("af_pool_run", "af_pool_wake", "af_pool_awake", "af_pool_set_policy",
                     "af_pool_policy", "af_pool_estimate", "af_pool_choose", "af_pool_record",
                     "af_pool_forget"):
            assert not hasattr(lib, name), f"{module.__name__} exports {name}"


@pytest.mark.skipif(len(VARIANTS) < 2, reason="needs two cython builds")
def test_each_build_has_a_pool_of_its_own():
    before = [mod._pool_policy()[0] for mod in VARIANTS]
    try:
        for j, mod in enumerate(VARIANTS):
            mod._set_pool_policy("pool" if j == 0 else "measured")
        assert [mod._pool_policy()[0] for mod in VARIANTS] == \
            ["pool"] + ["measured"] * (len(VARIANTS) - 1)
    finally:
        for mod, policy in zip(VARIANTS, before):
            mod._set_pool_policy(policy)


@pytest.mark.skipif("numba" not in adamfast.available_backends(), reason="numba not installed")
def test_numba_backend_takes_its_pool_from_one_module():
    from adamfast import _numba
    from adamfast._numba import _pool

    assert _pool.MODULE is _dispatch._pool_module()
    on_pool = _pool.MODULE is not None
    assert _numba.threading_path() == ("adamfast pool" if on_pool else "numba prange")
    assert (_pool.RUN_BLOCKS is not None) == on_pool
    assert _numba.PARALLEL_MIN == (_pool.POOL_PARALLEL_MIN if on_pool
                                   else _pool.NUMBA_PARALLEL_MIN)
    if on_pool:
        # The same cut-offs as the cython backend on the same pool.
        assert _numba.PARALLEL_MIN == _pool.MODULE.PARALLEL_MIN
        assert _numba.POOL_COLD_MIN == _pool.MODULE.POOL_COLD_MIN > 0


def test_numba_falls_back_to_its_own_pool_under_openmp_threading():
    if "numba" not in adamfast.available_backends() or not VARIANTS:
        pytest.skip("needs numba and a cython build")
    if not VARIANTS[0].openmp_enabled():
        pytest.skip("this build has no OpenMP")
    code = ("import adamfast._numba as nb, adamfast._numba._pool as p; "
            "print(nb.threading_path(), p.RUN_BLOCKS is None, nb.PARALLEL_MIN, "
            "nb.POOL_COLD_MIN, nb.pool_awake())")
    env = dict(os.environ, ADAMFAST_THREADING="openmp")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    from adamfast._numba import _pool

    assert run.stdout.split() == ["numba", "prange", "True", str(_pool.NUMBA_PARALLEL_MIN), "0",
                                  "False"]
