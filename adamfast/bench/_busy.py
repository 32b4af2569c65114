"""``python -m adamfast bench --busy-core``: 1 thread against all cores, with a core busy.

On a shared machine another process often holds a core.  A parallel step
then waits for the thread that shares that core, and the promise is that
asking for more threads never makes a step slower: with one core busy, the
median step on all cores is no slower than on one thread.

What is timed, per compiled backend and size: ``adamfast.Adam`` over one
float32 array, one step per timing, the thread counts interleaved step by
step (drift hits both alike), hot cache (a flush would hide the wait), while
a separate process spins on one core.  Reported: median and 90th percentile
per thread count, their ratio, and the verdict on the median.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from ._config import format_size
from ._machine import core_count

DEFAULT_SIZES = (1 << 16, 1 << 20, 1 << 24)
# Steps per thread count: ~0.3 s of work per size at the machine's speed.
_STEPS = {1 << 16: 400, 1 << 20: 120}
_STEPS_LARGE = 40


def steps_for(n: int, repeat: int | None) -> int:
    if repeat is not None:
        return repeat
    return _STEPS.get(n, _STEPS_LARGE if n > (1 << 20) else 400)


def _spinner():
    # A separate process, so the GIL and adamfast's own threads are not involved.
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # let it reach its core
    return spin


def measure(backend: str, n: int, threads: int, steps: int, seed: int) -> dict:
    """Seconds per step at 1 and ``threads`` threads, interleaved; {count: times}."""
    import adamfast

    rng = np.random.default_rng(seed)
    counts = (1, threads)
    opts = {}
    for nt in counts:
        p = rng.standard_normal(n, dtype=np.float32)
        opt = adamfast.Adam([p], backend=backend)
        for g in opt.grads:
            g[...] = rng.standard_normal(g.size, dtype=np.float32)
        opts[nt] = opt
    before = adamfast.get_num_threads()
    times = {nt: [] for nt in counts}
    try:
        for nt in counts:  # the first step of each (cache load) is not timed
            adamfast.set_num_threads(nt)
            opts[nt].step()
        for _ in range(steps):
            for nt in counts:
                adamfast.set_num_threads(nt)
                t = time.perf_counter()
                opts[nt].step()
                times[nt].append(time.perf_counter() - t)
    finally:
        adamfast.set_num_threads(before)
    return times


def run(sizes=None, threads=None, repeat=None, seed=0, json_path=None, quiet=False) -> dict:
    import adamfast

    threads = threads or max(2, core_count())
    sizes = sizes or list(DEFAULT_SIZES)
    backends = [b for b in adamfast.available_backends() if b != "numpy"]
    print(f"BUSY CORE: adamfast.Adam float32, 1 vs {threads} threads, interleaved, hot cache, "
          f"while another process spins on one core of {core_count()}")
    print("verdict: the median on all threads must be no slower than on 1 thread")
    header = (f"{'backend':<8} {'size':>6} {'steps':>6} {'1 thr ms':>9} {'p90':>8} "
              f"{f'{threads} thr ms':>9} {'p90':>8} {'ratio':>6}  verdict")
    print(header)
    print("-" * len(header))
    rows = []
    spin = _spinner()
    try:
        for backend in backends:
            for i, n in enumerate(sizes):
                if not quiet:
                    print(f"  {backend} {format_size(n)}...", end="\r", file=sys.stderr)
                times = measure(backend, n, threads, steps_for(n, repeat), seed + i)
                med = {nt: float(np.median(v)) for nt, v in times.items()}
                p90 = {nt: float(np.percentile(v, 90)) for nt, v in times.items()}
                ok = med[threads] <= med[1]
                row = dict(backend=backend, size=n, steps=len(times[1]), median_s=med,
                           p90_s=p90, ratio=med[threads] / med[1], ok=ok)
                rows.append(row)
                print(f"{backend:<8} {format_size(n):>6} {row['steps']:>6} "
                      f"{1e3 * med[1]:>9.3f} {1e3 * p90[1]:>8.3f} {1e3 * med[threads]:>9.3f} "
                      f"{1e3 * p90[threads]:>8.3f} {row['ratio']:>6.2f}  "
                      f"{'ok' if ok else 'SLOWER'}")
    finally:
        spin.kill()
        spin.wait()
    if not quiet:
        print(" " * 40, end="\r", file=sys.stderr)
    print("ratio = median on all threads / median on 1 thread (below 1: the extra thread helps)")
    report = dict(mode="busy-core", threads=threads,
                  rows=[{**r, "median_s": {str(k): v for k, v in r["median_s"].items()},
                         "p90_s": {str(k): v for k, v in r["p90_s"].items()}} for r in rows])
    if json_path:
        from ._report import write_json

        write_json(json_path, report)
    return report
