"""The benchmark's command line: bad arguments are refused before any work starts.

Each case runs ``python -m adamfast bench`` in a subprocess and expects
argparse's exit status 2 with a message naming the argument, quickly (no
benchmark ran) and without a traceback.
"""

import subprocess
import sys
import time

import pytest

CASES = [
    (["--sizes", "inf"], "--sizes"),
    (["--sizes", "nan"], "--sizes"),
    (["--sizes", "0"], "--sizes"),
    (["--sizes", "12Q"], "--sizes"),
    (["--json", "/nonexistent-dir/out.json"], "--json"),
    (["--json", "/"], "--json"),
    (["--plot", "/nonexistent-dir/out.png"], "--plot"),
    (["--impl", "nonexistent"], "--impl"),
    (["--algorithm", "adamx"], "--algorithm"),
    (["--threads", "0"], "--threads"),
    (["--repeat", "-1"], "--repeat"),
    (["--guarded", "--amsgrad"], "--amsgrad"),
    (["--guarded", "--json", "/nonexistent-dir/g.json"], "--json"),
    (["--after-torch", "--no-after-torch"], "--no-after-torch"),
    (["--after-torch-size", "0"], "--after-torch-size"),
    (["--after-torch-size", "x"], "--after-torch-size"),
    (["--after-torch-size", "1K"], "--after-torch-size"),  # too small for a parallel torch op
    (["--no-after-torch", "--after-torch-size", "2M"], "--after-torch-size"),
    (["--family", "--no-after-torch"], "--no-after-torch"),
    (["--family", "--after-torch-size", "2M"], "--after-torch-size"),
    (["--torch", "--after-torch"], "--after-torch"),
    (["--guarded", "--no-after-torch"], "--no-after-torch"),
    (["--guarded", "--after-torch-size", "2M"], "--after-torch-size"),
]


@pytest.mark.parametrize("args, flag", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_cli_arguments_fail_fast_and_name_the_argument(args, flag):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adamfast", "bench", "--quiet", *args],
                       capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    assert flag in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "ms/step" not in r.stdout  # nothing was timed
    assert elapsed < 60, f"refusing {args} took {elapsed:.0f} s: work ran before the check"
