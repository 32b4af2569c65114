"""Environment variables and file modes: bad values name the variable, the thread-count
rules are docs/threads.md's, and checkpoints get the umask's mode.

Environment cases run in a subprocess: adamfast reads these variables once, at import.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch
from conftest import CYTHON_BUILD_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every cython build made unimportable, as on a machine where none was built.
NO_EXTENSION = "; ".join(f"sys.modules[{name!r}] = None" for name in CYTHON_BUILD_NAMES)
ENV_VARS = ("ADAMFAST_THREADING", "ADAMFAST_CYTHON_ISA", "ADAMFAST_NUM_THREADS",
            "NUMBA_NUM_THREADS")


def _run(code, env=None, timeout=300):
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**base, **(env or {})})


def _has_cython_pool():
    try:
        return _dispatch.cython_module().threading_mode() == "pool"
    except (ImportError, ValueError):
        return False


HAS_NUMBA = "numba" in adamfast.available_backends()
HAS_CYTHON = "cython" in adamfast.available_backends()
ON_POOL = HAS_CYTHON and _has_cython_pool()
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
needs_cython = pytest.mark.skipif(not HAS_CYTHON, reason="the cython extension is not built")

STEP_ALL = """
    import numpy as np, adamfast
    for backend in ("auto", "cython", "numba", "numpy"):
        a = [np.ones(8) for _ in range(4)]
        try:
            adamfast.adam_step(*a, step=1, backend=backend)
            print(backend, "ran", adamfast.Adam([np.ones(3)], backend=backend).backend)
        except ValueError as e:
            print(backend, "refused", e)
    """


# --- finding 7: a bad ADAMFAST_THREADING / ADAMFAST_CYTHON_ISA --------------------------

@needs_cython
@pytest.mark.parametrize("var, value", [("ADAMFAST_THREADING", "pooll"),
                                        ("ADAMFAST_THREADING", "omp"),
                                        ("ADAMFAST_CYTHON_ISA", "avx22"),
                                        ("ADAMFAST_CYTHON_ISA", "sse")])
def test_bad_backend_env_names_the_variable_and_auto_does_not_move(var, value):
    r = _run(STEP_ALL, env={var: value})
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    # auto never silently moves to another backend: it refuses, naming the variable
    for backend in ("auto", "cython", "numba"):
        if backend == "numba" and not HAS_NUMBA:
            continue
        assert lines[backend].startswith("refused"), (backend, lines[backend])
        assert var in lines[backend] and repr(value) in lines[backend], lines[backend]
    # the numpy backend depends on neither variable
    assert lines["numpy"] == "ran numpy"


@needs_cython
@pytest.mark.parametrize("value", ["pool", " OpenMP ", ""])
def test_good_threading_values_keep_auto_on_cython(value):
    r = _run(STEP_ALL, env={"ADAMFAST_THREADING": value})
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["auto"] == "ran cython"


def test_backend_status_is_public_and_explains():
    assert "backend_status" in adamfast.__all__
    status = adamfast.backend_status()
    assert set(status) >= {"numpy", "numba", "cython", "auto", "cython_build", "threading"}
    avail = adamfast.available_backends()
    for name in ("numpy", "numba", "cython"):
        entry = status[name]
        assert entry["available"] == (name in avail)
        assert (entry["reason"] is None) == entry["available"]
    assert status["auto"] == avail[0]
    if HAS_CYTHON:
        variant = _dispatch.cython_module().simd_info().split()[0].split("=")[1]
        assert status["cython_build"] == variant
        assert status["threading"]["cython"] == _dispatch.cython_module().threading_mode()
    if HAS_NUMBA:
        import adamfast._numba as nb

        assert status["threading"]["numba"] == nb.threading_path()


STATUS = """
    import json, sys, adamfast
    {prelude}
    print(json.dumps(adamfast.backend_status()))
    """


@needs_cython
def test_backend_status_names_a_bad_variable():
    r = _run(STATUS.format(prelude=""), env={"ADAMFAST_THREADING": "pooll"})
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["cython"]["available"] is False
    assert "ADAMFAST_THREADING" in status["cython"]["reason"]
    assert "'pooll'" in status["cython"]["reason"]
    assert status["auto"] is None and "ADAMFAST_THREADING" in status["auto_error"]
    assert status["numpy"]["available"] is True


@needs_cython
def test_backend_status_without_the_extension():
    """A missing extension is not a configuration error: auto moves on, and the status
    says why cython is unavailable and where numba's threads run."""
    prelude = NO_EXTENSION
    r = _run(STATUS.format(prelude=prelude))
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["cython"]["available"] is False
    assert "build_ext" in status["cython"]["reason"]
    assert status["cython_build"] is None and status["threading"]["cython"] is None
    assert status["auto"] == ("numba" if HAS_NUMBA else "numpy")
    if HAS_NUMBA:
        assert status["threading"]["numba"] == "numba prange"


@needs_cython
def test_backend_status_needs_no_numba_import():
    r = _run("""
        import sys, adamfast
        adamfast.backend_status()
        print('numba' in sys.modules)
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# --- finding 8: thread-count rules -----------------------------------------------------

@needs_numba
@pytest.mark.skipif(not ON_POOL, reason="no cython pool here")
def test_numba_limit_does_not_apply_on_the_pool():
    r = _run("""
        import numpy as np, adamfast, adamfast._numba as nb
        adamfast.set_num_threads(2)
        out = []
        for backend in ("numba", "numpy"):
            a = [np.linspace(-1, 1, 1 << 20, dtype=np.float32) for _ in range(2)]
            a += [np.zeros(1 << 20, np.float32) for _ in range(2)]
            adamfast.adam_step(*a, step=1, backend=backend)
            out.append(a[0])
        print(adamfast.get_num_threads(), nb.threading_path(), np.array_equal(*out))
        """, env={"NUMBA_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "adamfast", "pool", "True"]


@needs_numba
@needs_cython
def test_numba_limit_applies_on_numbas_own_pool():
    r = _run("""
        import adamfast
        try:
            adamfast.set_num_threads(2)
        except ValueError as e:
            print("refused", e)
        """, env={"NUMBA_NUM_THREADS": "1", "ADAMFAST_THREADING": "openmp"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused n must be <= 1") and "NUMBA_NUM_THREADS=1" in r.stdout


NUMBA_LOAD = """
    import sys
    {prelude}
    import numpy as np, adamfast
    a = [np.ones(8) for _ in range(4)]
    for backend in ("numba", "auto"):
        try:
            adamfast.adam_step(*a, step=1, backend=backend)
            print(backend, "ran", adamfast.get_num_threads())
        except ValueError as e:
            print(backend, "refused", e)
    adamfast.set_num_threads(1)  # replaces the env default: numba loads now
    adamfast.adam_step(*a, step=1, backend="numba")
    print("after set_num_threads(1): ran")
    """


@needs_numba
@pytest.mark.parametrize("where", ["no extension", "openmp"])
def test_env_default_is_checked_against_numbas_pool(where):
    """ADAMFAST_NUM_THREADS above NUMBA_NUM_THREADS is refused, naming it, when numba's
    kernels load on numba's own pool (import adamfast itself never imports numba)."""
    if where == "openmp" and not HAS_CYTHON:
        pytest.skip("the cython extension is not built")
    prelude = NO_EXTENSION if where == "no extension" else ""
    env = {"NUMBA_NUM_THREADS": "1", "ADAMFAST_NUM_THREADS": "64"}
    if where == "openmp":
        env["ADAMFAST_THREADING"] = "openmp"
    r = _run(NUMBA_LOAD.format(prelude=prelude), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("numba refused ADAMFAST_NUM_THREADS must be <= 1"), lines[0]
    assert "'64'" in lines[0] and "NUMBA_NUM_THREADS=1" in lines[0]
    if where == "no extension":  # auto is numba here
        assert lines[1].startswith("auto refused ADAMFAST_NUM_THREADS"), lines[1]
    else:                        # auto is cython, whose OpenMP team has no such limit
        assert lines[1] == "auto ran 64"
    assert lines[2] == "after set_num_threads(1): ran"


@needs_numba
@pytest.mark.skipif(not ON_POOL, reason="no cython pool here")
def test_env_default_above_numbas_pool_is_fine_on_the_pool():
    r = _run(NUMBA_LOAD.format(prelude=""),
             env={"NUMBA_NUM_THREADS": "1", "ADAMFAST_NUM_THREADS": "64"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["numba ran 64", "auto ran 64"]


@pytest.mark.parametrize("value", ["1_0", " 10", "10 ", "+10", "\u0661\u0660", "0x10", "1e1",
                                   "10.0", "\uff11\uff10"])
def test_thread_env_parses_ascii_digits_only(value):
    r = _run("import adamfast; print(adamfast.get_num_threads())",
             env={"ADAMFAST_NUM_THREADS": value})
    assert r.returncode != 0, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "ADAMFAST_NUM_THREADS" in last, r.stderr
    assert repr(value) in last


@pytest.mark.parametrize("value, n", [("2", 2), ("01", 1), ("", None)])
def test_thread_env_accepts_digits(value, n):
    r = _run("import os, adamfast; print(adamfast.get_num_threads())",
             env={"ADAMFAST_NUM_THREADS": value})
    assert r.returncode == 0, r.stderr
    expected = n if n is not None else len(os.sched_getaffinity(0))
    assert int(r.stdout) == expected


# --- finding 13: checkpoint file mode --------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o027])
def test_checkpoint_gets_the_umasks_mode(tmp_path, umask):
    opt = adamfast.Adam([np.ones(5, np.float32)])
    opt.step([np.full(5, 0.5, np.float32)])
    path = tmp_path / "ckpt.npz"
    previous = os.umask(umask)
    try:
        adamfast.save_checkpoint(path, opt)
        first = stat.S_IMODE(os.stat(path).st_mode)
        os.chmod(path, 0o600)
        adamfast.save_checkpoint(path, opt)  # over an existing file, atomically
        second = stat.S_IMODE(os.stat(path).st_mode)
    finally:
        os.umask(previous)
    assert first == second == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temporary file left
    fresh = adamfast.Adam([np.zeros(5, np.float32)])
    adamfast.load_checkpoint(path, fresh)
    assert np.array_equal(fresh.flat_params, opt.flat_params)
