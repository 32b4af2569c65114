"""Fault injection: every case runs in a subprocess with a timeout."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

import adamfast
from conftest import COMPILED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("backend", COMPILED)
def test_fork_pool_after_parallel_use_does_not_hang(backend):
    r = _run(f"""
        import multiprocessing as mp, numpy as np, adamfast
        adamfast.set_num_threads(2)
        def job(_):
            a = [np.ones(1 << 20, np.float32) for _ in range(4)]
            adamfast.adam_step(*a, step=1, backend={backend!r})
            return float(a[0][0]), adamfast.get_num_threads()
        print(job(0))
        with mp.get_context("fork").Pool(1) as pool:
            print(pool.map_async(job, [0]).get(timeout=60))
        """)
    assert r.returncode == 0, r.stderr
    parent, child = r.stdout.split("\n")[:2]
    assert parent.startswith("(0.999") and parent.endswith(", 2)")
    assert child.startswith("[(0.999") and child.endswith(", 1)]")  # the child runs serially


@pytest.mark.parametrize("backend", COMPILED)
def test_os_fork_child_steps_and_exits(backend):
    r = _run(f"""
        import os, numpy as np, adamfast
        adamfast.set_num_threads(2)
        a = [np.ones(1 << 20, np.float32) for _ in range(4)]
        adamfast.adam_step(*a, step=1, backend={backend!r})
        pid = os.fork()
        if pid == 0:
            adamfast.adam_step(*a, step=2, backend={backend!r})
            os._exit(0 if adamfast.get_num_threads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


NUMBA_PATHS = """
    import hashlib, numpy as np, numba, adamfast, adamfast._numba as nb
    adamfast.set_num_threads(2)
    before = numba.get_num_threads()
    digest, same = hashlib.sha256(), True
    # 200003: serial on either path; 600001: parallel on either (numba's own
    # pool starts at 2**19).
    for dt, n in ((np.float32, 200003), (np.float64, 200003), (np.float32, 600001)):
        opts = [adamfast.AdamW([np.linspace(-1, 1, n, dtype=dt)], backend=b,
                               max_grad_norm=0.5, ema_decay=0.9) for b in ("numba", "numpy")]
        for t in range(3):
            g = np.cos(np.arange(n) * (t + 1)).astype(dt)
            res = [o.step([g]) for o in opts]
        same &= all(np.array_equal(opts[0].state_dict()[k], opts[1].state_dict()[k])
                    for k in ("exp_avg", "exp_avg_sq")) and res[0] == res[1]
        same &= opts[0].flat_params.tobytes() == opts[1].flat_params.tobytes()
        same &= opts[0].flat_ema.tobytes() == opts[1].flat_ema.tobytes()
        digest.update(opts[0].flat_params.tobytes() + opts[0].flat_ema.tobytes())
    print(nb.threading_path() == "adamfast pool", numba.get_num_threads() == before, same,
          digest.hexdigest())
"""


@pytest.mark.skipif(not {"numba", "cython"} <= set(COMPILED), reason="needs both backends")
def test_numba_parallel_path_runs_on_adamfasts_pool_unless_openmp_is_asked_for():
    """The numba backend's parallel work runs on the cython extension's pool (its
    block entries); ADAMFAST_THREADING=openmp brings numba's own prange team back.
    Both give the reference's bits (guarded step with the EMA, 2 threads), and
    neither touches numba's thread count."""
    pool = _run(NUMBA_PATHS, env={"ADAMFAST_THREADING": "pool"}, timeout=600)
    team = _run(NUMBA_PATHS, env={"ADAMFAST_THREADING": "openmp"}, timeout=600)
    assert pool.returncode == 0, pool.stderr
    assert team.returncode == 0, team.stderr
    on_pool, kept, same, digest = pool.stdout.split()
    assert (on_pool, kept, same) == ("True", "True", "True")
    assert team.stdout.split() == ["False", "True", "True", digest]


@pytest.mark.skipif("numba" not in COMPILED, reason="numba not installed")
def test_read_only_install_with_numba_steps(tmp_path):
    """An install directory nobody can write to (a read-only bind mount of a copy
    of the package, with HOME and the user cache read-only too): numba cannot
    cache beside the sources or in the user cache, and the numba backend still
    steps, caching in a private temporary directory instead."""
    import shutil

    site, ro = tmp_path / "site", tmp_path / "ro"
    shutil.copytree(os.path.dirname(adamfast.__file__), site / "adamfast",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(site), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a read-only bind mount needs root: {mounted.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)]).returncode != 0:
            pytest.skip("cannot remount the bind mount read-only")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
        env.update(PYTHONPATH=str(ro), HOME=str(ro), XDG_CACHE_HOME=str(ro))
        r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import numpy as np, numba, adamfast
            assert adamfast.__file__.startswith(%r), adamfast.__file__
            adamfast.set_num_threads(2)
            o = adamfast.Adam([np.ones(1 << 17, np.float32)], backend="numba")
            o.step([np.full(1 << 17, 0.5, np.float32)])
            print(float(o.params[0][0]), numba.config.CACHE_DIR)
            """ % str(ro))], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
            env=env)
    finally:
        subprocess.run(["umount", str(ro)])
    assert r.returncode == 0, r.stderr
    value, cache = r.stdout.split()
    assert abs(float(value) - 0.999) < 1e-6
    assert "adamfast-numba-cache" in cache


@pytest.mark.parametrize("value", ["100000", "3000000000", "abc", "0", "-2"])
def test_bad_thread_env_is_a_clear_error(value):
    r = _run("import adamfast", env={"ADAMFAST_NUM_THREADS": value})
    assert r.returncode != 0
    assert "ADAMFAST_NUM_THREADS" in r.stderr and "ValueError" in r.stderr


def test_bad_cython_isa_is_named_and_numpy_still_runs():
    r = _run("""
        import numpy as np, adamfast
        print(adamfast.available_backends())
        a = [np.ones(8) for _ in range(4)]
        adamfast.adam_step(*a, step=1, backend="numpy")
        try:
            adamfast.adam_step(*a, step=1, backend="cython")
        except ValueError as e:
            print("refused:", e)
        """, env={"ADAMFAST_CYTHON_ISA": "garbage"})
    assert r.returncode == 0, r.stderr
    assert "'cython'" not in r.stdout.split("\n")[0]
    assert "refused:" in r.stdout and "ADAMFAST_CYTHON_ISA" in r.stdout


def test_set_num_threads_refuses_absurd_values():
    for bad in (100000, 3000000000, 0):
        with pytest.raises(ValueError, match="n must be"):
            adamfast.set_num_threads(bad)


# --- overlap: the same decision as np.shares_memory, whatever the bases ------------------

@given(st.integers(0, 64), st.integers(0, 64), st.integers(1, 40), st.integers(1, 40))
def test_overlap_detection_matches_shares_memory(a0, b0, na, nb):
    base = np.zeros(200, np.float64)
    n = min(na, nb)
    x = base[a0:a0 + n]
    y = np.frombuffer(base, np.float64)[b0:b0 + n]  # another base object, same memory
    bufs = [x, y, np.zeros(n), np.zeros(n)]
    shares = np.shares_memory(x, y)
    try:
        adamfast.adam_step(*bufs, step=1, backend="numpy")
        refused = False
    except ValueError as exc:
        assert "overlap" in str(exc)
        refused = True
    assert refused == shares


def test_as_strided_alias_is_refused():
    base = np.zeros(100)
    alias = np.lib.stride_tricks.as_strided(base[10:], shape=(50,), strides=(8,))
    for backend in adamfast.available_backends():
        with pytest.raises(ValueError, match="overlap"):
            adamfast.adam_step(base[:50], alias, np.zeros(50), np.zeros(50), step=1,
                               backend=backend)


# --- no crash from Python-level misuse -----------------------------------------------------

def test_rebinding_an_optimizer_buffer_is_refused_not_a_crash():
    o = adamfast.Adam([np.ones(1000, np.float32)], backend=COMPILED[0] if COMPILED else "numpy")
    with pytest.raises(AttributeError):
        o.exp_avg = np.zeros(10, np.float32)
    o.step()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_and_memmap_inputs_are_updated_alike(tmp_path):
    n = 12
    results = []
    for backend in adamfast.available_backends():
        p = np.asmatrix(np.linspace(-1, 1, n).reshape(3, 4))
        g = np.asmatrix(np.ones((3, 4)))
        mm = np.memmap(tmp_path / f"m-{backend}", dtype=np.float64, mode="w+", shape=(3, 4))
        v = np.zeros((3, 4))
        adamfast.adam_step(p, g, mm, v, step=1, backend=backend)
        results.append((np.asarray(p).copy(), np.asarray(mm).copy(), v.copy()))
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert np.array_equal(a, b)


def test_masked_arrays_are_refused_everywhere():
    m = np.ma.masked_array(np.ones(4), mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="masked"):
        adamfast.Adam([m])
    with pytest.raises(TypeError, match="masked"):
        adamfast.adam_step(m, np.ones(4), np.zeros(4), np.zeros(4), step=1, backend="numpy")


def test_pickle_and_copy_give_live_independent_optimizers():
    import copy
    import pickle

    for cls in adamfast.optim.CLASSES.values():
        o = cls([np.ones(100, np.float32), np.ones(3, np.float32)], ema_decay=0.9)
        o.step([np.ones(100, np.float32), np.ones(3, np.float32)])
        for clone in (lambda x: pickle.loads(pickle.dumps(x)), copy.deepcopy, copy.copy):
            c = clone(o)
            assert np.shares_memory(c.params[0], c.flat_params)
            assert not np.shares_memory(c.flat_params, o.flat_params)
            c.grads[0][:] = 2
            o.grads[0][:] = 2
            c.step()
            o.step()
            assert np.array_equal(c.flat_params, o.flat_params)
            assert np.array_equal(c.flat_ema, o.flat_ema)


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "ckpt.npz"
    o = adamfast.NAdam([np.linspace(0, 1, 50)], lr=adamfast.schedules.cosine(1e-2, 100, 5))
    for _ in range(3):
        o.step([np.ones(50)])
    adamfast.save_checkpoint(path, o)
    c = adamfast.NAdam([np.zeros(50)])
    adamfast.load_checkpoint(path, c)
    for _ in range(3):
        o.step([np.ones(50)])
        c.step([np.ones(50)])
    assert np.array_equal(o.flat_params, c.flat_params)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary left behind
    # np.savez(**state_dict()) and np.load give back a state load_state_dict takes.
    np.savez(tmp_path / "sd.npz", **o.state_dict())
    c.load_state_dict(dict(np.load(tmp_path / "sd.npz", allow_pickle=True)))
    assert c.step_count == o.step_count


def test_step_count_must_be_an_integer():
    o = adamfast.Adam([np.ones(3)])
    with pytest.raises(ValueError, match="step_count"):
        o.step_count = 1.5
