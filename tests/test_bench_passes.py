"""The roofline of a step of several passes (bench/_passes.py): Lamb is judged
against its own passes with trivial arithmetic, not a one-pass mix of streams."""

import numpy as np
import pytest

from adamfast.algorithms import ALGORITHMS
from adamfast.bench._config import make_setup
from adamfast.bench._run import _family_row
from adamfast.bench._timing import Impl, judged_roofline, summarize

try:
    import numba  # noqa: F401

    NUMBA = True
except ImportError:
    NUMBA = False

needs_numba = pytest.mark.skipif(not NUMBA, reason="roofline-passes runs in numba")


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_the_passes_move_the_bytes_the_spec_counts(name):
    spec = ALGORITHMS[name]
    for kind in spec.kinds:
        passes = spec.passes(kind)
        assert sum(len(ps.reads) + len(ps.writes) for ps in passes) * 4 == \
            spec.bytes_per_param(kind, 4)
        states = set(spec.kinds[kind])
        for ps in passes:
            assert set(ps.reads) | set(ps.writes) <= {"params", "grads"} | states
            assert set(ps.writes) <= set(ps.reads)  # every write is an update in place


def test_lamb_sweeps_three_times():
    setup = make_setup("Lamb")
    assert [ps.name for ps in setup.passes] == ["norm", "moments", "apply"]
    assert [ps.bytes_per_param(4) for ps in setup.passes] == [4, 24, 16]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_bandwidth_kernel_reads_and_writes_what_its_pass_names(dtype):
    """A kernel writes exactly its pass's writes, and each of its reads changes the
    result: the row moves the pass's traffic and no other."""
    from adamfast.bench._passes import _KERNELS

    n = 1000  # not a multiple of any vector width: the tails run too
    rng = np.random.default_rng(0)
    for ps in make_setup("Lamb").passes:
        kernel, args = _KERNELS[ps.name]
        names = ("params", "grads", "exp_avg", "exp_avg_sq")

        def run(perturb=None):
            bufs = {k: v.copy() for k, v in zip(names, base)}
            if perturb:
                bufs[perturb][n - 1] += 1
            before = {k: v.copy() for k, v in bufs.items()}
            out = kernel(*args(bufs["params"], bufs["grads"],
                               (bufs["exp_avg"], bufs["exp_avg_sq"])))
            return out, bufs, before

        base = [rng.standard_normal(n).astype(dtype) for _ in names]
        out, bufs, before = run()
        changed = {k for k in names if not np.array_equal(bufs[k], before[k])}
        assert changed == set(ps.writes), ps.name
        for name in ps.reads:
            out2, bufs2, _ = run(name)
            assert (out2 != out) or any(not np.array_equal(bufs2[k], bufs[k])
                                        for k in ps.writes), (ps.name, name)


def test_a_step_of_several_passes_is_judged_against_its_own_passes():
    one = Impl("roofline-openmp", None, "roofline", times_ns=[10_000_000] * 3)
    own = Impl("roofline-passes", None, "roofline", bytes_per_param=44,
               times_ns=[20_000_000] * 3)
    cy = Impl("adamfast-cython", None, "adamfast", backend="cython", times_ns=[22_000_000] * 3)
    # the one-pass row is faster per byte (28 B in 10 ms) but is not the step's traffic
    assert judged_roofline([one, own, cy], 28) == (own, 44)
    assert judged_roofline([one, cy], 28) == (one, 28)
    rows, info = summarize([one, own, cy], 1 << 20, 44, None, 28)
    assert info["impl"] == "roofline-passes" and info["roofline_bytes_per_param"] == 44
    assert info["one_pass_bytes_per_param"] == 28
    pct = {r["impl"]: r["pct_roofline"] for r in rows}
    assert pct["roofline-passes"] == pytest.approx(100)
    assert pct["adamfast-cython"] == pytest.approx(100 * 20 / 22)
    assert pct["roofline-openmp"] == pytest.approx(100 * (28 / 10) / (44 / 20))
    row = _family_row(make_setup("Lamb"), [one, own, cy], 4)
    assert row["roofline_impl"] == "roofline-passes"
    assert row["pct_roofline"] == pytest.approx(100 * 20 / 22)


@needs_numba
def test_a_lamb_run_shows_and_uses_roofline_passes(tmp_path):
    from test_bench_modes import _bench, _table_names

    stdout, report = _bench(tmp_path, ["--algorithm", "Lamb", "--sizes", "64K",
                                       "--impl", "adamfast-cython", "--no-overhead"])
    cold, _, after = stdout.partition("AFTER TORCH:")
    assert "roofline-passes" in _table_names(cold) and "roofline-passes" in _table_names(after)
    assert "\nroofline-passes* " in cold and "\nroofline-passes* " in after  # the judged row
    assert report["roofline"]["65536"]["impl"] == "roofline-passes"
    assert report["after_torch"]["65536"]["roofline"]["impl"] == "roofline-passes"
    assert "norm 4 + moments 24 + apply 16 B/param" in stdout


_NO_NUMBA = """
import sys
sys.modules["numba"] = None  # as if numba were not installed
from adamfast.bench import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_numba_lamb_is_judged_against_the_one_pass_rooflines(tmp_path):
    import adamfast
    from test_bench_modes import _bench

    if "cython" not in adamfast.available_backends():
        pytest.skip("needs the cython backend (the run has no backend without numba)")
    stdout, report = _bench(tmp_path, ["--algorithm", "Lamb", "--sizes", "64K", "--no-overhead",
                                       "--no-after-torch"], script=_NO_NUMBA)
    roof = report["roofline"]["65536"]
    assert roof["impl"] in ("roofline-pool", "roofline-openmp")
    assert roof["roofline_bytes_per_param"] == 28 and roof["bytes_per_param"] == 44
    assert "roofline-passes skipped" in stdout
    assert "norm 4 + moments 24 + apply 16 B/param" in stdout  # the header still names them


@needs_numba
@pytest.mark.parametrize("nstate", range(5))
def test_the_one_pass_roofline_reads_and_writes_every_stream(nstate):
    # roofline-prange's loop (outside the engines' drivers): params and every
    # state are read and written, grads read, each element once.
    from adamfast.bench._passes import one_pass

    n = 1000
    p = np.arange(n, dtype=np.float32)
    g = np.full(n, 2.0, np.float32)
    states = tuple(np.full(n, float(j), np.float32) for j in range(nstate))
    one_pass(p, g, states)
    assert np.array_equal(p, np.arange(n, dtype=np.float32) + 2)
    for j, s in enumerate(states):
        assert np.array_equal(s, np.full(n, j + 2.0, np.float32))
