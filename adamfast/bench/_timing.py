"""Timing: the cache flusher, interleaved shuffled rounds, and the statistics."""

from __future__ import annotations

import random
import sys
import time
import timeit
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._machine import l3_bytes


@dataclass
class Impl:
    name: str
    step: Callable[[int], None]  # argument: the 1-based step number
    kind: str  # "roofline", "numpy", "adamfast", "torch", "timm", "deepspeed"
    backend: str | None = None  # the adamfast backend of a roofline/adamfast row
    # Run before each step, outside the timer and before the flush (timm's Lamb
    # gets back the gradients its step divided in place).
    prepare: Callable[[], None] | None = None
    # A roofline row that moves the step's own bytes in the step's own passes
    # (_passes.py): the ceiling a step of several passes is judged against.
    bytes_per_param: int | None = None
    times_ns: list[int] = field(default_factory=list)
    first_call_ns: int | None = None


class CacheFlusher:
    """Evicts the caches by streaming through 2x L3 with a read-only reduction.

    Read-only on purpose: a write pass would leave the flush buffer dirty in
    cache and the timed step would pay for writing it back.  The buffer is
    filled with ones, not zeros, because untouched calloc'd pages all map to
    the one shared zero page and reading them would evict nothing.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.l3, self.l3_known = l3_bytes()
        self.nbytes = 2 * self.l3
        self.buf = np.ones(self.nbytes // 8, dtype=np.int64) if enabled else None

    def __call__(self):
        if self.enabled:
            self.buf.max()


class Progress:
    """One status line on stderr, rewritten with \\r; silent when not a TTY."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.width = 0

    def show(self, text: str):
        if self.enabled:
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)

    def clear(self):
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


def measure(impls: list[Impl], rounds: int, flush, progress: Progress, label: str,
            seed: int, first_call: bool = True) -> list[str]:
    """Warm up each implementation, then ``rounds`` rounds over all of them in shuffled order.

    ``flush`` is called before every step, outside the timer: the
    :class:`CacheFlusher`, or :class:`~._peers.AfterTorch` (the flush, then
    a torch op).  A row whose first call raises (a numba kind module that
    does not load, say) is dropped from ``impls`` and reported in the
    returned notes, so one broken backend cannot stop the run.
    ``first_call=False``: rows that already ran (a second table over the
    same rows) record no first-call time.
    """
    rng = random.Random(seed)
    failed = []
    # Warm-up: the first call is timed on its own (JIT / cache load / lazy
    # state); a second untimed call settles page faults and thread pools.
    for impl in impls[:]:
        progress.show(f"warm-up {impl.name} {label}")
        if impl.prepare is not None:
            impl.prepare()
        flush()
        try:
            t0 = time.perf_counter_ns()
            impl.step(1)
            if first_call:
                impl.first_call_ns = time.perf_counter_ns() - t0
            if impl.prepare is not None:
                impl.prepare()
            impl.step(2)
        except Exception as exc:
            impls.remove(impl)
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            failed.append(f"{impl.name} failed on its first call ({type(exc).__name__}: "
                          f"{first}): row skipped")
    # Interleaved: a slow stretch of a shared machine hits every row alike,
    # and the paired ratios (same round) cancel most of it.
    for r in range(rounds):
        progress.show(f"round {r + 1}/{rounds} {label}")
        order = impls[:]
        rng.shuffle(order)
        for impl in order:
            if impl.prepare is not None:
                impl.prepare()
            flush()
            t0 = time.perf_counter_ns()
            impl.step(r + 3)
            impl.times_ns.append(time.perf_counter_ns() - t0)
    progress.clear()
    return failed


def quartiles(x) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(x, dtype=np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def paired(num: Impl, den: Impl) -> tuple[float, float, float]:
    """Quartiles of num/den time ratios within the same round (> 1: ``den`` is faster)."""
    return quartiles(np.asarray(num.times_ns, np.float64) / np.asarray(den.times_ns, np.float64))


def fastest(impls: list[Impl], kind: str) -> Impl | None:
    rows = [i for i in impls if i.kind == kind]
    return min(rows, key=lambda i: np.median(i.times_ns)) if rows else None


def judged_roofline(impls: list[Impl], roof_bytes: int) -> tuple[Impl | None, int]:
    """The roofline the step is judged against, and the bytes it moves per param:
    the fastest row that makes the step's own passes if there is one (a step of
    several passes), else the fastest one-pass roofline."""
    own = [i for i in impls if i.kind == "roofline" and i.bytes_per_param is not None]
    best = fastest(own, "roofline") or fastest(impls, "roofline")
    if best is None:
        return None, roof_bytes
    return best, best.bytes_per_param or roof_bytes


def summarize(impls: list[Impl], n: int, bytes_per_param: int,
              baseline: str | None, roof_bytes: int | None = None) -> tuple[list[dict], dict]:
    """Per-row statistics and a description of the roofline used.

    Every algorithm row moves ``bytes_per_param``; the one-pass rooflines (the
    engine's roofline{N} kind for the algorithm's N state buffers) move
    ``roof_bytes`` (default: the same).  They differ for a step of several
    passes (Lamb: a norm pass and two passes over its state), which is judged
    against ``roofline-passes``, its own passes with trivial arithmetic, when
    that row ran (see :func:`judged_roofline`); % roof is a ratio of GB/s,
    each row's over its own bytes.
    """
    roof_bytes = bytes_per_param if roof_bytes is None else roof_bytes
    best_roof, best_bytes = judged_roofline(impls, roof_bytes)
    roof_gbs = None
    if best_roof is not None:
        roof_gbs = n * best_bytes / (np.median(best_roof.times_ns) * 1e-9) / 1e9
    base = next((i for i in impls if i.name == baseline), None)
    rows = []
    for impl in impls:
        ns = np.asarray(impl.times_ns, dtype=np.float64)
        q25, med, q75 = quartiles(ns / 1e6)
        sec = med / 1e3
        bpp = ((impl.bytes_per_param or roof_bytes) if impl.kind == "roofline"
               else bytes_per_param)
        gbs = n * bpp / sec / 1e9
        row = dict(
            impl=impl.name, kind=impl.kind, size=n, median_ms=med, p25_ms=q25, p75_ms=q75,
            mparams_per_s=n / sec / 1e6, bytes_per_param=bpp, gb_per_s=gbs,
            pct_roofline=(100 * gbs / roof_gbs) if roof_gbs else None,
            first_call_ms=impl.first_call_ns / 1e6 if impl.first_call_ns is not None else None,
            times_ms=(ns / 1e6).tolist(),
        )
        if base is not None:
            s25, s50, s75 = paired(base, impl)
            row.update(speedup=s50, speedup_p25=s25, speedup_p75=s75)
        rows.append(row)
    roof = dict(impl=best_roof.name if best_roof else None, gb_per_s=roof_gbs,
                bytes_per_param=bytes_per_param, roofline_bytes_per_param=best_bytes,
                one_pass_bytes_per_param=roof_bytes,
                baseline=base.name if base else None)
    return rows, roof


def per_call_us(fn, repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean time per call, in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()  # enough calls for >= 0.2 s per repeat
    number = max(1, number // 2)  # ~0.1 s per repeat keeps this section short
    per_call = [t / number for t in timer.repeat(repeat=repeats, number=number)]
    return float(np.median(per_call)) * 1e6
