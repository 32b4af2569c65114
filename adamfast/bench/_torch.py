"""``python -m adamfast bench --torch``: ``opt.step()`` of adamfast.torch against torch.optim.

What is measured, and why:

* Each row is ``opt.step()`` of an optimizer over ``torch.nn.Parameter``s, as
  a training loop calls it: ``adamfast.torch.AdamW`` (gradients bound to its
  flat buffer, as after the first step with ``zero_grad(set_to_none=False)``),
  ``torch.optim.AdamW(fused=True)`` and ``torch.optim.AdamW(foreach=True)``.
  The first call of each is timed separately (lazy state allocation, the
  first gradient copy) and never enters the medians.
* Three parameter sets: a model-shaped list of 200 tensors of mixed sizes
  totalling 16M float32 (what a training loop has), one 64M tensor, and one
  16M tensor that torch allocates itself (``torch.randn``), where torch's own
  allocations of p, grad and state start at one offset modulo the huge page
  and their streams collide in the memory system.  adamfast moves the params
  into its staggered buffers in every case; torch keeps whatever layout the
  params and its ``zeros_like`` state have.
* The roofline is measured in the same run: the engine's ``roofline2`` kind
  (AdamW's exact traffic, 28 B/param in float32, trivial arithmetic) through
  ``get_backend(...).kernel`` over staggered flat buffers of the same size.
* Cold cache: a 64 MiB buffer (more than L3) is streamed with a read-only
  reduction before every timed step, outside the timer.  Rounds are
  interleaved in shuffled order; medians; the ratio to torch fused is paired
  round by round.
* Per-call overhead: hot steps over k tensors of 16 params (k = 1 and 200),
  reported per call and per tensor, for adamfast and torch fused.
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np

BYTES = 28  # AdamW fp32: read p, g, m, v; write p, m, v
FLUSH_BYTES = 64 * 2**20


def _model_sizes(total=16 * 2**20, count=200, seed=0):
    """200 tensor sizes of a transformer-like model: big matrices, small vectors."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([0, 1, 2], size=count, p=[0.45, 0.35, 0.2])
    raw = np.where(kinds == 0, rng.uniform(1, 4, count) * 2**16,      # weight matrices
                   np.where(kinds == 1, rng.uniform(1, 8, count) * 2**10,  # biases, norms
                            rng.uniform(1, 3, count) * 2**18))        # embeddings, MLP
    sizes = np.maximum(1, (raw / raw.sum() * total).astype(np.int64))
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return [int(s) for s in sizes]


def _setups():
    import torch

    def model():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(s, generator=g) for s in _model_sizes()]

    return [("model: 200 tensors, 16M", model),
            ("one 64M tensor", lambda: [torch.randn(64 * 2**20)]),
            ("one 16M tensor (torch's layout)", lambda: [torch.randn(16 * 2**20)])]


class _Row:
    def __init__(self, name, step):
        self.name, self.step, self.times, self.first = name, step, [], None


def _make_rows(tensors, backend):
    import torch

    import adamfast.torch as aft
    from adamfast import _dispatch, _engine, zeros_buffers

    rows = []
    n = sum(t.numel() for t in tensors)

    def optimizer_row(name, make, bind):
        params = [torch.nn.Parameter(t.clone()) for t in tensors]
        opt = make(params)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        if bind:  # the first step binds the grads to the flat buffer
            opt.step()
        rows.append(_Row(name, opt.step))

    optimizer_row("adamfast.torch.AdamW", lambda ps: aft.AdamW(ps, lr=1e-3, backend=backend),
                  True)
    optimizer_row("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                  False)
    optimizer_row("torch AdamW foreach",
                  lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), False)
    b = _dispatch.get_backend(backend)
    kid = b.kind_id("roofline2")
    p, g, s0, s1 = zeros_buffers(n, np.float32, 4)
    for buf in (p, g, s0, s1):  # written, so that no stream reads the shared zero page
        buf.fill(1e-3)
    table = _engine.scalar_table([(1.0,)])
    chunks = _engine.single_chunks(n)

    def roofline():
        b.kernel(kid, p, g, (s0, s1), table, chunks, _dispatch.get_num_threads())
    rows.insert(0, _Row(f"roofline ({b.name})", roofline))
    return rows


def _measure(rows, rounds, seed):
    flush = np.ones(FLUSH_BYTES // 8, np.int64)
    rng = random.Random(seed)
    for r in rows:
        flush.max()
        t0 = time.perf_counter_ns()
        r.step()
        r.first = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(rounds):
        order = list(rows)
        rng.shuffle(order)
        for r in order:
            flush.max()
            t0 = time.perf_counter_ns()
            r.step()
            r.times.append((time.perf_counter_ns() - t0) / 1e6)


def _overhead(backend):
    """Hot per-call time over k tensors of 16 params: (us at 1, us at 200, us per tensor)."""
    import torch

    import adamfast.torch as aft
    out = {}
    for name, make in (("adamfast", lambda ps: aft.AdamW(ps, lr=1e-3, backend=backend)),
                       ("torch fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))):
        res = []
        for k in (1, 200):
            params = [torch.nn.Parameter(torch.randn(16)) for _ in range(k)]
            opt = make(params)
            for p in params:
                p.grad = torch.randn_like(p)
            for _ in range(20):
                opt.step()
            best = []
            for _ in range(7):
                reps = 200
                t0 = time.perf_counter_ns()
                for _ in range(reps):
                    opt.step()
                best.append((time.perf_counter_ns() - t0) / reps / 1e3)
            res.append(min(best))
        out[name] = (res[0], res[1], (res[1] - res[0]) / 199)
    return out


def run(threads=None, rounds=None, backend="auto", seed=0):
    """Print the --torch tables; threads: list of thread counts (default 1 and all cores)."""
    import torch

    import adamfast
    from adamfast import _dispatch

    cores = _dispatch._default_threads()
    threads = threads or sorted({1, cores})
    rounds = rounds or 11
    before = (torch.get_num_threads(), adamfast.get_num_threads())
    print(f"adamfast.torch vs torch.optim: AdamW opt.step(), float32, cold cache, {rounds} rounds, "
          f"medians (p25-p75); torch {torch.__version__}, adamfast {adamfast.__version__}, "
          f"backend {_dispatch.get_backend(backend).name}")
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            adamfast.set_num_threads(nt)
            for label, make in _setups():
                tensors = make()
                n = sum(t.numel() for t in tensors)
                rows = _make_rows(tensors, backend)
                del tensors
                _measure(rows, rounds, seed)
                _report(f"{label}, {nt} thread{'s' if nt > 1 else ''}", rows, n)
                del rows
        torch.set_num_threads(before[0])
        adamfast.set_num_threads(before[1])
        ov = _overhead(backend)
        print("per-call overhead, hot, tensors of 16 params:  " + ";  ".join(
            f"{k} {a:.1f} us (1 tensor), {b:.1f} us (200 tensors), {c:.2f} us/tensor"
            for k, (a, b, c) in ov.items()))
    finally:
        torch.set_num_threads(before[0])
        adamfast.set_num_threads(before[1])


def _report(title, rows, n):
    roof = statistics.median(rows[0].times)
    fused = next(r for r in rows if r.name == "torch AdamW fused")
    print(f"\n{title} ({n:,} params)")
    print(f"{'implementation':<26}{'ms/step':>9}{'p25-p75':>15}{'GB/s':>8}{'% roof':>8}"
          f"{'vs fused':>10}{'first ms':>10}")
    for r in rows:
        q = statistics.quantiles(r.times, n=4)
        med = statistics.median(r.times)
        ratio = statistics.median(f / t for f, t in zip(fused.times, r.times))
        print(f"{r.name:<26}{med:>9.2f}{q[0]:>8.2f}-{q[2]:<6.2f}{n * BYTES / med / 1e6:>8.1f}"
              f"{roof / med:>8.0%}{ratio:>9.2f}x{r.first:>10.1f}")
