"""``python -m adamfast bench --guarded``: the fused guarded AdamW step against torch's pipeline.

What is compared, in one run, per thread count and size:

* adamfast's guarded step: ``adamfast.AdamW(..., max_grad_norm=1.0,
  skip_nonfinite=True)`` with ``step(grad_scale=S)``, and the same with
  ``ema_decay=0.999``; the same two through ``adamfast.torch.AdamW`` (the
  torch drop-in, gradients bound to its flat buffer); and adamfast's own
  unguarded ``adamfast.AdamW`` step over unscaled gradients.  The gradients
  carry the loss scale S = 1024 and are never rewritten.  Nominal traffic:
  32 bytes per float32 param (the norm pass reads the gradients, 4; the
  update, 28), 40 with the EMA (read and write it, 8).
* torch's pipeline, as a GradScaler training loop runs it on CPU:
  ``torch._amp_foreach_non_finite_check_and_unscale_`` (what
  ``GradScaler.unscale_`` calls), then ``torch.nn.utils.clip_grad_norm_``,
  then ``torch.optim.AdamW(fused=True).step()``: 48 bytes per param (unscale
  8, norm 4, clip 8, step 28); with the EMA, ``torch._foreach_lerp_`` (what
  ``AveragedModel`` with ``get_ema_multi_avg_fn`` calls), 12 more.  A row of
  the fused step alone shows what the guard costs torch.
* torch is given its best memory layout: its param, gradient, state and EMA
  tensors are views of staggered buffers (``adamfast.zeros_buffers``), as
  adamfast's own are, so the streams do not collide in the memory system and
  the comparison is of the passes, not of allocation luck.
* The gradients are unscaled (rescaled) in place by torch's pipeline, so
  before each torch pipeline step they are restored from a pristine copy,
  outside the timer and before the cache flush.  The unscaled global norm is
  4.0 (any size), so ``max_grad_norm=1.0`` clips on every step on both sides.
* Methodology as in the rest of the bench: the first call of each row is
  timed apart (then one more untimed call), rounds are interleaved in a
  fresh shuffled order, the caches are flushed before every timed step (a
  read-only pass over twice the L3), medians with p25-p75, and every ratio is
  paired round by round.  The roofline is the faster of two rows of 28
  B/param of trivial arithmetic: the engine's ``roofline2`` kind through the
  backend's ``family_kernel``, and a plain numba ``prange`` loop outside
  adamfast's drivers (when numba is installed), so that a loss in the drivers
  does not lower the ceiling too; "% roof" is each row's nominal traffic over
  its time, against it.

Targets (issue 8), at 16M float32, 1 and 2 threads: guarded >= 1.5x torch's
pipeline, guarded+EMA >= 2.0x torch's pipeline+EMA, guarded within 1.25x of
adamfast's own unguarded step.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

import numpy as np

SCALE = 1024.0
MAX_NORM = 1.0
EMA_DECAY = 0.999
NORM = 4.0  # the unscaled global norm of the gradients: clipping always on

TARGETS = (  # (label, numerator row, denominator row, target, ">=" or "<=")
    ("guarded vs torch pipeline", "torch pipeline", "adamfast.AdamW guarded", 1.5, ">="),
    ("guarded+EMA vs torch pipeline+EMA", "torch pipeline+EMA", "adamfast.AdamW guarded+EMA",
     2.0, ">="),
    ("guarded / own unguarded (time)", "adamfast.AdamW guarded", "adamfast.AdamW", 1.25, "<="),
    ("adamfast.torch guarded vs torch pipeline", "torch pipeline",
     "adamfast.torch.AdamW guarded", 1.5, ">="),
    ("adamfast.torch guarded+EMA vs torch pipeline+EMA", "torch pipeline+EMA",
     "adamfast.torch.AdamW guarded+EMA", 2.0, ">="),
)


class _Row:
    def __init__(self, name, step, nbytes, prepare=None):
        self.name, self.step, self.nbytes, self.prepare = name, step, nbytes, prepare
        self.times = []   # ms
        self.first = None  # ms
        self.note = ""


def need_buffers() -> int:
    """How many n-element buffers one size holds at once (for the memory check)."""
    # numpy API: 4 + 4 + 5; adamfast.torch: 4 + 5 (+ the initial tensors, freed);
    # torch: p, g, m, v, ema, pristine g; roofline: 4; data: 2 (+ temporaries).
    return 13 + 9 + 6 + 4 + 4


def _make_rows(n, dtype, backend, seed):
    import torch

    import adamfast
    import adamfast.torch as aft
    from adamfast import _dispatch, _engine, zeros_buffers

    rng = np.random.default_rng(seed)
    init = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n)
    grad = (grad * (NORM / np.sqrt(np.sum(grad * grad)))).astype(dtype)
    scaled = grad * dtype.type(SCALE)  # a power of two: exact
    rows = []

    # adamfast, NumPy API: the gradients are written once into opt.grads (the step reads them).
    def numpy_row(name, nbytes, g, **kw):
        opt = adamfast.AdamW([init.copy()], lr=1e-3, backend=backend, **kw)
        opt.grads[0][...] = g
        if kw:
            rows.append(_Row(name, lambda: opt.step(grad_scale=SCALE), nbytes))
        else:
            rows.append(_Row(name, opt.step, nbytes))
        return opt

    numpy_row("adamfast.AdamW", 28, grad)
    guarded = numpy_row("adamfast.AdamW guarded", 32, scaled, max_grad_norm=MAX_NORM,
                        skip_nonfinite=True)
    numpy_row("adamfast.AdamW guarded+EMA", 40, scaled, max_grad_norm=MAX_NORM,
              skip_nonfinite=True, ema_decay=EMA_DECAY)
    res = guarded.step(grad_scale=SCALE)  # a sanity check: clipping on, nothing skipped
    if res.skipped or not res.grad_norm > MAX_NORM:
        raise RuntimeError(f"guarded step sanity check failed: {res}")

    # adamfast.torch: the first step binds p.grad to the flat gradient buffer.
    def torch_api_row(name, nbytes, **kw):
        p = torch.nn.Parameter(torch.from_numpy(init.copy()))
        opt = aft.AdamW([p], lr=1e-3, backend=backend, max_grad_norm=MAX_NORM,
                        skip_nonfinite=True, **kw)
        p.grad = torch.from_numpy(scaled.copy())
        opt.step(grad_scale=SCALE)
        rows.append(_Row(name, lambda: opt.step(grad_scale=SCALE), nbytes))

    torch_api_row("adamfast.torch.AdamW guarded", 32)
    torch_api_row("adamfast.torch.AdamW guarded+EMA", 40, ema_decay=EMA_DECAY)

    # torch: fused AdamW over staggered buffers (p, g, its state and the EMA).
    pb, gb, mb, vb, eb, pristine = zeros_buffers(n, dtype, 6)
    pb[...] = init
    gb[...] = scaled
    pristine[...] = scaled
    eb[...] = init
    tp = torch.nn.Parameter(torch.from_numpy(pb))
    tp.grad = torch.from_numpy(gb)
    topt = torch.optim.AdamW([tp], lr=1e-3, fused=True)
    topt.step()  # creates the state; then it moves into the staggered buffers
    st = topt.state[tp]
    for key, buf in (("exp_avg", mb), ("exp_avg_sq", vb)):
        t = torch.from_numpy(buf)
        t.copy_(st[key])
        st[key] = t
    ema_t = torch.from_numpy(eb)
    g_t, pristine_t = tp.grad, torch.from_numpy(pristine)
    found = torch.zeros(1, dtype=torch.float32)
    inv = torch.full((1,), 1.0 / SCALE, dtype=torch.float32)

    def restore():
        g_t.copy_(pristine_t)
        found.zero_()

    def pipeline():
        torch._amp_foreach_non_finite_check_and_unscale_([g_t], found, inv)
        torch.nn.utils.clip_grad_norm_([tp], MAX_NORM)
        topt.step()

    def pipeline_ema():
        pipeline()
        with torch.no_grad():
            torch._foreach_lerp_([ema_t], [tp.detach()], 1.0 - EMA_DECAY)

    restore()
    pipeline()
    if found.item() != 0.0:
        raise RuntimeError("torch pipeline sanity check failed: found_inf set")
    rows.append(_Row("torch AdamW fused (step only)", topt.step, 28))
    rows.append(_Row("torch pipeline", pipeline, 48, restore))
    rows.append(_Row("torch pipeline+EMA", pipeline_ema, 60, restore))

    b = _dispatch.get_backend(backend)
    kid = b.kind_id("roofline2")
    rp, rg, r0, r1 = zeros_buffers(n, dtype, 4)
    for buf in (rp, rg, r0, r1):  # written, so that no stream reads the shared zero page
        buf.fill(1e-3)
    table = _engine.scalar_table([(1.0,)])
    chunks = _engine.single_chunks(n)

    def roofline():
        b.kernel(kid, rp, rg, (r0, r1), table, chunks, _dispatch.get_num_threads())
    rows.insert(0, _Row(f"roofline ({b.name})", roofline, 28))
    prange = _prange_roofline(rp, rg, (r0, r1))
    if prange is not None:
        rows.insert(1, _Row("roofline (numba prange)", prange, 28))
    return rows


def _prange_roofline(p, g, states):
    """The same traffic in a plain numba ``prange`` loop (the main table's
    ``roofline-prange``), outside adamfast's drivers, on adamfast's thread count:
    so that a loss in the drivers the adamfast rows share does not lower the
    ceiling too.  None without numba."""
    try:
        import numba

        from ._passes import one_pass
    except Exception:
        return None
    from adamfast import _dispatch

    from ._settings import on_numba_threads

    # The rows are made after the table's thread count is set (run).
    threads = min(_dispatch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    return on_numba_threads(threads, lambda: one_pass(p, g, states))


def _measure(rows, rounds, seed, flush, progress, label):
    rng = random.Random(seed)
    for r in rows:  # the first call apart, then one more untimed
        progress.show(f"warm-up {r.name} {label}")
        if r.prepare:
            r.prepare()
        flush()
        t0 = time.perf_counter_ns()
        r.step()
        r.first = (time.perf_counter_ns() - t0) / 1e6
        if r.prepare:
            r.prepare()
        r.step()
    for k in range(rounds):
        progress.show(f"round {k + 1}/{rounds} {label}")
        order = list(rows)
        rng.shuffle(order)
        for r in order:
            if r.prepare:
                r.prepare()  # outside the timer, before the flush
            flush()
            t0 = time.perf_counter_ns()
            r.step()
            r.times.append((time.perf_counter_ns() - t0) / 1e6)
    progress.clear()


def _quart(x):
    q25, q50, q75 = np.percentile(np.asarray(x, np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def _report(title, rows, n, dtype):
    by = {r.name: r for r in rows}
    # The fastest roofline row is the ceiling (each is 28 B/param).
    roof_row = min((r for r in rows if r.name.startswith("roofline")),
                   key=lambda r: statistics.median(r.times))
    roof = statistics.median(roof_row.times)
    roof_gbs = n * roof_row.nbytes / roof / 1e6
    item = np.dtype(dtype).itemsize / 4  # the nominal bytes are float32's
    print(f"\n{title} ({n:,} params)")
    print(f"{'implementation':<36}{'B/param':>8}{'ms/step':>9}{'p25-p75':>15}{'GB/s':>8}"
          f"{'% roof':>8}{'first ms':>10}")
    out = {"rows": [], "ratios": []}
    for r in rows:
        q25, med, q75 = _quart(r.times)
        gbs = n * r.nbytes * item / med / 1e6
        print(f"{r.name:<36}{r.nbytes * item:>8.0f}{med:>9.2f}{q25:>8.2f}-{q75:<6.2f}"
              f"{gbs:>8.1f}{gbs / (roof_gbs * item):>8.0%}{r.first:>10.1f}")
        out["rows"].append(dict(impl=r.name, bytes_per_param=r.nbytes * item, median_ms=med,
                                p25_ms=q25, p75_ms=q75, gb_per_s=gbs, first_call_ms=r.first,
                                times_ms=list(r.times)))
    print("paired ratios, median (p25-p75):")
    for label, num, den, target, sense in TARGETS:
        a, b = by[num].times, by[den].times
        q25, med, q75 = _quart([x / y for x, y in zip(a, b)])
        met = med >= target if sense == ">=" else med <= target
        print(f"  {label:<50}{med:>6.2f}x ({q25:.2f}-{q75:.2f})   target {sense} {target:.2f}x: "
              f"{'met' if met else 'MISSED'}")
        out["ratios"].append(dict(label=label, numerator=num, denominator=den, median=med,
                                  p25=q25, p75=q75, target=target, sense=sense, met=bool(met)))
    return out


def run(sizes, dtype="float32", threads=None, rounds=None, seed=0, backend="auto",
        json_path=None, quiet=False):
    """Print the --guarded tables; ``threads``: list of thread counts (default 1 and all cores).

    The arguments are checked by the command line (``_cli.check_guarded``) before this runs.
    """
    import torch

    import adamfast
    from adamfast import _dispatch

    from ._config import format_size
    from ._machine import cpu_model
    from ._timing import CacheFlusher, Progress

    dtype = np.dtype(dtype)
    cores = _dispatch._default_threads()
    threads = threads or sorted({1, min(2, cores), cores})
    flush = CacheFlusher(True)
    progress = Progress(not quiet)
    before = (torch.get_num_threads(), adamfast.get_num_threads())
    bname = _dispatch.get_backend(backend).name
    print(f"guarded AdamW step vs torch's pipeline: {dtype.name}, cold cache (flush "
          f"{flush.nbytes / 2**20:.0f} MiB), medians (p25-p75), paired ratios; "
          f"torch {torch.__version__}, adamfast {adamfast.__version__}, backend {bname}")
    print(f"cpu: {cpu_model()}; grad_scale S={SCALE:g}, max_grad_norm={MAX_NORM:g} (unscaled "
          f"norm {NORM:g}: clipping on every step), skip_nonfinite=True, ema_decay={EMA_DECAY}")
    results = []
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            adamfast.set_num_threads(nt)
            for n in sizes:
                reps = rounds or (21 if n >= 2**20 else 51)
                rows = _make_rows(n, dtype, backend, seed)
                label = f"{format_size(n)}, {nt} thread{'s' if nt > 1 else ''}"
                _measure(rows, reps, seed, flush, progress, label)
                out = _report(f"{label}, {reps} rounds", rows, n, dtype)
                results.append(dict(size=n, threads=nt, rounds=reps, **out))
                del rows
    finally:
        torch.set_num_threads(before[0])
        adamfast.set_num_threads(before[1])
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(meta=dict(torch=torch.__version__, adamfast=adamfast.__version__,
                                     backend=bname, dtype=dtype.name, cpu=cpu_model(),
                                     grad_scale=SCALE, max_grad_norm=MAX_NORM,
                                     ema_decay=EMA_DECAY, argv=sys.argv),
                           results=results), f, indent=1)
    return results


def memory_need(n, dtype) -> int:
    return need_buffers() * n * np.dtype(dtype).itemsize


__all__ = ["run", "memory_need"]
