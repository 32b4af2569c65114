"""The benchmark's roofline rows, its after-torch tables and its user-array rows.

Structure only: tiny sizes and few rounds, never a speed (the machine is shared).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import adamfast
from adamfast.bench._cli import build_parser, config_from_args
from adamfast.bench._config import AFTER_TORCH_SIZE, ROOFLINES, Config, make_setup
from adamfast.bench._rows import (Notes, Workload, on_numba_threads, on_threading, roofline_impls,
                                  touch)

torch = pytest.importorskip("torch")
CYTHON = "cython" in adamfast.available_backends()
NUMBA = "numba" in adamfast.available_backends()
needs_all = pytest.mark.skipif(not (CYTHON and NUMBA), reason="needs the cython and numba backends")


def _config(*argv):
    threads = adamfast.get_num_threads()
    parser = build_parser()
    try:
        return config_from_args(parser.bench, parser.parse_args(["bench", *argv]))
    finally:
        adamfast.set_num_threads(threads)


def test_after_torch_flags_parse():
    assert _config().after_torch == "extra"  # the default run adds one after-torch table
    assert _config("--after-torch").after_torch == "all"
    assert _config("--no-after-torch").after_torch == "off"
    assert _config("--family").after_torch == "off"
    assert _config("--family", "--after-torch").after_torch == "all"
    assert _config().after_torch_size == AFTER_TORCH_SIZE
    assert _config("--after-torch-size", "2M").after_torch_size == 2 * 2**20
    # torch keeps its own thread count unless --threads is given
    assert _config().torch_threads is None
    assert _config("--threads", "1").torch_threads == 1


def _run(tmp_path, *argv):
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--quiet", "--sizes", "64K",
                        "--repeat", "2", "--no-overhead", "--json", str(out), *argv],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout, json.loads(out.read_text())


def _table_names(block: str) -> list[str]:
    """Row names of the first table in ``block`` (the lines between the rule and the footer)."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    names = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("*"):
            break
        names.append(line.split("  ")[0].rstrip("*").strip())
    return names


@needs_all
def test_default_run_has_three_rooflines_and_an_after_torch_table(tmp_path):
    stdout, report = _run(tmp_path)
    cold, _, after = stdout.partition("AFTER TORCH:")
    assert after, "no after-torch table in the default run"
    best = adamfast.available_backends()[0]
    cold_names, after_names = _table_names(cold), _table_names(after)
    assert set(ROOFLINES) <= set(cold_names)
    assert after_names == [*ROOFLINES, f"adamfast-{best}", "torch-fused"]
    assert "rooflines on three threadings" in cold
    assert "the fastest of roofline-pool, roofline-openmp, roofline-prange" in after
    assert "vs torch fused" in after

    assert report["config"]["after_torch"] == "extra"
    cold_rows = report["results"]["65536"]
    assert set(ROOFLINES) <= {r["impl"] for r in cold_rows}
    assert all(r["first_call_ms"] is not None for r in cold_rows)
    table = report["after_torch"]["65536"]
    assert [r["impl"] for r in table["rows"]] == after_names
    assert table["roofline"]["impl"] in ROOFLINES
    assert table["roofline"]["rooflines"] == list(ROOFLINES)
    assert table["roofline"]["baseline"] == "torch-fused"
    assert table["torch_threads"] == torch.get_num_threads()  # torch's default, untouched
    assert table["torch_op"]["params"] == AFTER_TORCH_SIZE
    # the rows already ran in the cold table: no first call to report
    assert all(r["first_call_ms"] is None for r in table["rows"])
    # % roof is judged against the fastest roofline
    fastest = min((r for r in table["rows"] if r["kind"] == "roofline"),
                  key=lambda r: r["median_ms"])
    assert table["roofline"]["impl"] == fastest["impl"]
    assert max(r["pct_roofline"] for r in table["rows"] if r["kind"] == "roofline") == \
        pytest.approx(100)


@needs_all
def test_after_torch_run_with_user_arrays(tmp_path):
    stdout, report = _run(tmp_path, "--after-torch", "--hot", "--layout", "separate",
                          "--threads", "1", "--impl", "cython", "torch-fused")
    assert stdout.count("AFTER TORCH:") == 1  # every table after torch, no extra one
    user = "adam_step-cython (user arrays)"
    names = _table_names(stdout.partition("AFTER TORCH:")[2])
    assert names == [*ROOFLINES, "numpy-textbook", "adamfast-cython", user, "torch-fused"]
    assert report["config"]["after_torch"] == "all"
    table = report["after_torch"]["65536"]
    assert [r["impl"] for r in table["rows"]] == names
    assert [r["impl"] for r in report["results"]["65536"]] == names
    assert table["roofline"]["baseline"] == "torch-fused"
    assert table["torch_threads"] == 1  # --threads applies to torch
    assert "warning: non-finite" not in stdout


def test_extra_after_torch_table_takes_the_default_backends_rows_and_torchs_fastest():
    from adamfast.bench._run import after_torch_rows
    from adamfast.bench._timing import Impl

    names = [("roofline-pool", "roofline"), ("roofline-prange", "roofline"),
             ("numpy-textbook", "numpy"), ("adamfast-numba", "adamfast"),
             ("adamfast-cython", "adamfast"), ("adamfast-cython-1group", "adamfast"),
             ("adam_step-numba (user arrays)", "adamfast"),
             ("adam_step-cython (user arrays)", "adamfast"), ("torch-fused", "torch"),
             ("torch-foreach", "torch")]
    impls = [Impl(name, lambda t: None, kind) for name, kind in names]
    impls[0].times_ns.append(1)
    impls[0].first_call_ns = 1
    rows = after_torch_rows(impls, "cython", make_setup("Adam"))
    assert [r.name for r in rows] == ["roofline-pool", "roofline-prange", "adamfast-cython",
                                      "adamfast-cython-1group",
                                      "adam_step-cython (user arrays)", "torch-fused"]
    assert rows[0] is not impls[0] and rows[0].times_ns == [] and rows[0].first_call_ns is None


def _workload(n=1 << 16, layout="staggered"):
    setup = make_setup("Adam")
    cfg = Config(sizes=[n], dtype=np.dtype(np.float32), threads=2, layout=layout, setup=setup)
    return Workload(n, cfg, setup), cfg, setup


@pytest.mark.skipif(not CYTHON, reason="needs the cython extension")
def test_openmp_roofline_restores_the_threading_mode_when_the_kernel_raises():
    from adamfast._dispatch import cython_module

    module = cython_module()
    if not module.openmp_enabled():
        pytest.skip("this cython build has no OpenMP")
    before = module.threading_mode()
    seen = []

    def failing(t):
        seen.append(module.threading_mode())
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        on_threading(module, "openmp", failing)(1)
    assert seen == ["openmp"]
    assert module.threading_mode() == before

    # The real row: a read-only params buffer makes the kernel itself refuse.
    wl, cfg, setup = _workload()
    rows = {i.name: i for i in roofline_impls(wl, cfg, setup, Notes())}
    rows["roofline-openmp"].step(1)  # runs
    assert module.threading_mode() == before
    wl.roofline_buffers[0].flags.writeable = False
    with pytest.raises(ValueError):
        rows["roofline-openmp"].step(2)
    assert module.threading_mode() == before


@pytest.mark.skipif(not NUMBA, reason="needs numba")
def test_prange_roofline_restores_numba_threads_when_it_raises():
    import numba

    before = numba.get_num_threads()
    want = 1 if before != 1 else min(2, numba.config.NUMBA_NUM_THREADS)
    if want == before:
        pytest.skip("numba has one thread only")
    seen = []

    def failing(t):
        seen.append(numba.get_num_threads())
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError):
        on_numba_threads(want, failing)(1)
    assert seen == [want]
    assert numba.get_num_threads() == before


@needs_all
def test_rooflines_move_the_same_data_on_every_threading():
    wl, cfg, setup = _workload(100003 * 3)
    rows = roofline_impls(wl, cfg, setup, Notes())
    assert [r.name for r in rows] == list(ROOFLINES)
    p, g, s0, s1 = wl.roofline_buffers
    want_p, want_s = p.copy(), s1.copy()
    for k, row in enumerate(rows, 1):
        row.step(k)
        want_p += g  # one p += g per call, every element (float32, as the kernels)
        want_s += g
        np.testing.assert_array_equal(p, want_p, err_msg=row.name)
        np.testing.assert_array_equal(s1, want_s, err_msg=row.name)


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_touch_maps_every_page_and_keeps_every_bit():
    import mmap

    # A fresh anonymous mapping: none of its pages is resident yet (a calloc'd
    # array may reuse memory that an earlier test left mapped).
    region = mmap.mmap(-1, 32 * 2**20)
    a = np.frombuffer(region, np.float32)
    before = _resident_bytes()
    touch(a)
    assert _resident_bytes() - before >= 0.9 * a.nbytes
    b = np.array([-0.0, np.nan, np.inf, -1.5, 1e-45], np.float32)
    bits = b.view(np.uint32).copy()
    touch(b, None, np.zeros(0))
    np.testing.assert_array_equal(b.view(np.uint32), bits)


_TORCH_THREADS_PROBE = """
import sys, torch
seen = set()
step = torch.optim.Adam.step
def counted(self, *a, **k):
    seen.add(torch.get_num_threads())
    return step(self, *a, **k)
torch.optim.Adam.step = counted
from adamfast.__main__ import _main
try:
    _main(sys.argv[1:])
finally:
    print("TORCH_THREADS_AT_STEP", sorted(seen))
"""


@needs_all
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_torch_rows_run_at_the_thread_count_asked_for(tmp_path):
    # numba starts its threading layer on the first prange roofline, and that
    # start set torch's OpenMP thread count back to all cores: the torch rows
    # of a --threads 1 run then ran on 2 threads.
    script = tmp_path / "probe.py"
    script.write_text(_TORCH_THREADS_PROBE)
    r = subprocess.run([sys.executable, str(script), "bench", "--quiet", "--sizes", "64K",
                        "--repeat", "2", "--no-overhead", "--threads", "1",
                        "--impl", "torch-fused"],
                       capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       env={**os.environ, "PYTHONWARNINGS": "ignore",
                            "PYTHONPATH": os.path.dirname(os.path.dirname(
                                os.path.abspath(adamfast.__file__)))})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    line = next(x for x in r.stdout.splitlines() if x.startswith("TORCH_THREADS_AT_STEP"))
    assert line == "TORCH_THREADS_AT_STEP [1]", line


def test_busy_core_mode_reports_both_thread_counts_per_compiled_backend(tmp_path):
    # The busy-core promise (2 threads never slower than 1 with a core busy) is a
    # timing, so it is measured by the benchmark, not asserted here; this checks
    # that the mode measures what its table says.
    out = tmp_path / "busy.json"
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--busy-core", "--quiet",
                        "--sizes", "64K", "--repeat", "5", "--json", str(out)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    report = json.loads(out.read_text())
    compiled = [b for b in adamfast.available_backends() if b != "numpy"]
    assert [row["backend"] for row in report["rows"]] == compiled
    threads = report["threads"]
    assert threads >= 2
    for row in report["rows"]:
        assert row["size"] == 65536 and row["steps"] == 5
        med = row["median_s"]
        assert set(med) == {"1", str(threads)} and all(v > 0 for v in med.values())
        assert row["ratio"] == pytest.approx(med[str(threads)] / med["1"])
        assert row["ok"] == (med[str(threads)] <= med["1"])
        assert f"{row['backend']:<8}" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["--threads", "1"], "--threads 1: --busy-core compares 1 thread with more"),
    (["--dtype", "float64"], "--dtype does not apply to --busy-core"),
    (["--guarded"], "separate runs"),
])
def test_busy_core_mode_refuses_what_does_not_apply(argv, message):
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--busy-core", *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-1000:]


# timm's rows and the family table.  timm's package is never imported (its
# __init__ needs torchvision): its optim files are loaded from an installed
# timm or from a wheel.

import glob  # noqa: E402

from adamfast.bench import _timm  # noqa: E402

TIMM_WHEELS = sorted(glob.glob("/opt/pypi/files/timm-*.whl"))
needs_timm_wheel = pytest.mark.skipif(not TIMM_WHEELS, reason="no timm wheel in /opt/pypi/files")


def _bench(tmp_path, argv, env=None, script=None):
    """(stdout, JSON report) of a small benchmark run in a fresh process."""
    out = tmp_path / "run.json"
    cmd = [sys.executable, *(["-c", script, "bench"] if script else ["-m", "adamfast", "bench"]),
           "--quiet", "--repeat", "2", "--hot", "--json", str(out), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout, json.loads(out.read_text())


@needs_timm_wheel
def test_timm_optim_files_load_from_the_wheel_alone(monkeypatch):
    if __import__("importlib").util.find_spec("timm") is not None:
        pytest.skip("timm is installed: the installed files are used, not the wheel")
    monkeypatch.setenv(_timm.WHEEL_ENV, TIMM_WHEELS[-1])
    _timm.find_optim_dir.cache_clear()
    try:
        folder, where = _timm.find_optim_dir()
        assert os.path.isfile(os.path.join(folder, "adan.py")) and TIMM_WHEELS[-1] in where
        for name in ("Adan", "Lamb", "Lion"):  # Lamb and Lion import timm's _types/_helpers
            cls, _ = _timm.load_class(name)
            assert cls.__name__ == name and issubclass(cls, torch.optim.Optimizer)
        assert "timm" not in sys.modules
        # timm's Lamb divides the gradients in place (its global clip); Adan does not
        lamb, adan = _timm.load_class("Lamb")[0], _timm.load_class("Adan")[0]
        assert _timm.writes_grads(lamb, (), "loop")
        assert not _timm.writes_grads(adan, (), "foreach")
        assert _timm.modes(adan) == ["foreach", "loop"] and _timm.modes(lamb) == ["loop"]

        monkeypatch.setenv(_timm.WHEEL_ENV, "/nonexistent/timm-9.9.9-py3-none-any.whl")
        _timm.find_optim_dir.cache_clear()
        folder, why = _timm.find_optim_dir()
        assert folder is None and "/nonexistent/timm-9.9.9" in why and "skipped" in why
    finally:
        _timm.find_optim_dir.cache_clear()


@needs_timm_wheel
def test_timm_rows_share_params_and_give_back_the_grads_they_divide(monkeypatch):
    monkeypatch.setenv(_timm.WHEEL_ENV, TIMM_WHEELS[-1])
    _timm.find_optim_dir.cache_clear()
    threads = adamfast.get_num_threads()
    cfg = Config(sizes=[4096], dtype=np.dtype(np.float32), threads=threads)
    try:
        wl = Workload(4096, cfg, make_setup("Adan"))
        notes = Notes()
        impls = _timm.timm_impls(wl, cfg, make_setup("Adan"), notes)
        assert [(i.name, i.kind, i.prepare) for i in impls] == [
            ("timm-foreach", "timm", None), ("timm", "timm", None)]
        before = wl.p.copy()
        impls[0].step(1)
        assert not np.array_equal(before, wl.p)  # timm updated the workload's params in place
        assert any("timm rows:" in n for n in notes)
        lamb = next((a for a in adamfast.algorithms.ALGORITHMS if a == "Lamb"), None)
        if lamb is None:
            return  # the rest needs Lamb in the registry
        setup = make_setup(lamb)
        wl = Workload(4096, cfg, setup)
        (row,) = _timm.timm_impls(wl, cfg, setup, Notes())
        assert row.name == "timm" and row.prepare is not None
        g = wl.g.copy()
        row.step(1)
        row.prepare()
        np.testing.assert_array_equal(wl.g, g)  # the shared grads never change
    finally:
        _timm.find_optim_dir.cache_clear()


@needs_all
@needs_timm_wheel
def test_timm_rows_and_their_ratios_in_an_algorithms_run(tmp_path):
    stdout, report = _bench(tmp_path, ["--algorithm", "Adan", "--sizes", "64K", "--no-overhead"],
                            env={_timm.WHEEL_ENV: TIMM_WHEELS[-1]})
    cold, _, after = stdout.partition("AFTER TORCH:")
    names = _table_names(cold)
    assert names[-2:] == ["timm-foreach", "timm"]
    assert "timm-foreach" in _table_names(after)  # torch has no Adan: timm is the baseline
    assert "vs timm foreach" in after
    ratios = report["peer_ratios"]["65536"]
    assert set(ratios) == {"adamfast-numba", "adamfast-cython"}
    for by_peer in ratios.values():
        assert list(by_peer) == ["timm-foreach", "timm"]
        r = by_peer["timm-foreach"]
        assert 0 < r["p25"] <= r["median"] <= r["p75"]
    assert "x torch / x timm" in cold
    from adamfast.bench._report import _x

    assert f"{_x(ratios['adamfast-cython']['timm-foreach']['median'])}x timm-foreach" in cold

    # --impl selects timm's rows by name
    stdout, report = _bench(tmp_path, ["--algorithm", "Adan", "--sizes", "64K", "--no-overhead",
                                       "--no-after-torch", "--impl", "timm-foreach"],
                            env={_timm.WHEEL_ENV: TIMM_WHEELS[-1]})
    assert [r["impl"] for r in report["results"]["65536"]] == [*ROOFLINES, "adamfast-numpy",
                                                                "timm-foreach"]


_NO_TIMM = """
import sys
from adamfast.bench import _timm
_timm.find_optim_dir = lambda: (None, "timm not found (the test hid it): timm rows skipped")
from adamfast.bench import main
sys.exit(main(sys.argv[1:]))
"""


@needs_all
def test_timm_rows_are_omitted_with_one_line_when_timm_is_not_found(tmp_path):
    stdout, report = _bench(tmp_path, ["--algorithm", "Adan", "--sizes", "64K", "--no-overhead",
                                       "--no-after-torch"], script=_NO_TIMM)
    assert stdout.count("timm not found (the test hid it)") == 1
    names = [r["impl"] for r in report["results"]["65536"]]
    assert names == [*ROOFLINES, "adamfast-numpy", "adamfast-numba", "adamfast-cython"]
    assert report["peer_ratios"]["65536"] == {}


@needs_all
def test_family_table_lists_every_registered_algorithm(tmp_path):
    from adamfast.algorithms import ALGORITHMS

    env = {_timm.WHEEL_ENV: TIMM_WHEELS[-1]} if TIMM_WHEELS else {}
    stdout, report = _bench(tmp_path, ["--family", "--sizes", "64K"], env=env)
    rows = report["family"]["65536"]
    assert [r["algorithm"] for r in rows] == list(ALGORITHMS)
    table = stdout.split("x timm (p25-p75)")[1].splitlines()[2:]
    assert [line.split()[0] for line in table[:len(ALGORITHMS)]] == list(ALGORITHMS)
    for r in rows:
        # a backend whose kernel is missing (a stale build) is a note, not a crash
        missing = {"cython", "numba"} - set(r["backends"])
        for b in missing:
            assert any(n.startswith(f"adamfast-{b} failed on its first call")
                       for n in report["notes"]), (r["algorithm"], b)
        assert r["bytes_per_param"] == make_setup(r["algorithm"]).bytes_per_param(4)
        for b in r["backends"].values():
            assert b["ms"] > 0 and b["pct_roofline"] > 0
        if r["backends"]:
            assert r["backend"] == min(r["backends"], key=lambda k: r["backends"][k]["ms"])
        torch_has = make_setup(r["algorithm"]).torch_name is not None
        assert (r["torch_impl"] is not None) == torch_has
        assert (r.get("ratio") is not None) == (torch_has and bool(r["backends"]))
    if TIMM_WHEELS:
        by_name = {r["algorithm"]: r for r in rows}
        assert by_name["Adan"]["timm_impl"] == "timm-foreach"
        assert by_name["Adan"]["timm_ratio"] > 0
        if "Lamb" in by_name:
            assert by_name["Lamb"]["timm_impl"] == "timm"  # timm's Lamb has no foreach path


class _TwoPassSpec:
    """A stand-in spec whose step moves more than its one-pass roofline (as Lamb's)."""

    name = "TwoPass"
    peer = ""

    def state_names(self, kind):
        return ("exp_avg", "exp_avg_sq")

    def bytes_per_param(self, kind, itemsize):
        return 11 * itemsize


def test_a_several_pass_step_is_judged_against_its_own_bytes():
    from adamfast.bench._config import Setup
    from adamfast.bench._run import _family_row
    from adamfast.bench._timing import Impl, summarize

    setup = Setup(spec=_TwoPassSpec(), hp={}, kind="twopass")
    assert (setup.bytes_per_param(4), setup.roofline_bytes(4)) == (44, 28)
    roof = Impl("roofline-pool", None, "roofline", times_ns=[10_000_000] * 3)
    cy = Impl("adamfast-cython", None, "adamfast", backend="cython", times_ns=[20_000_000] * 3)
    nb = Impl("adamfast-numba", None, "adamfast", backend="numba", times_ns=[22_000_000] * 3)
    row = _family_row(setup, [roof, cy, nb], 4)
    # 44 B in 20 ms against 28 B in 10 ms
    assert row["pct_roofline"] == pytest.approx(100 * (44 / 20) / (28 / 10))
    assert row["backends"]["numba"]["pct_roofline"] == pytest.approx(100 * (44 / 22) / (28 / 10))
    rows, info = summarize([roof, cy, nb], 1 << 20, 44, None, 28)
    assert rows[1]["pct_roofline"] == pytest.approx(row["pct_roofline"])
    assert rows[0]["pct_roofline"] == pytest.approx(100)
    assert (info["bytes_per_param"], info["roofline_bytes_per_param"]) == (44, 28)


def test_roofline_buffers_are_staggered_in_every_layout():
    """The roofline is the machine's ceiling for the step's bytes: its buffers are laid
    out as zeros_buffers lays them (in distinct cache lines modulo a 4 KiB page) even with
    --layout separate, whose user arrays start at one offset and collide; a roofline
    slowed by that collision was beaten by the rows it judges."""
    n = 1 << 20  # 4 MiB per buffer: above zeros_buffers' separate-allocation size
    for layout in ("staggered", "separate"):
        wl, _, setup = _workload(n, layout)
        bufs = wl.roofline_buffers
        assert len(bufs) == 2 + setup.nstate
        offsets = {b.ctypes.data % 4096 // 64 for b in bufs}
        assert len(offsets) == len(bufs), layout
        np.testing.assert_array_equal(bufs[0], wl.p)
        np.testing.assert_array_equal(bufs[1], wl.g)
