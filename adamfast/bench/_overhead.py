"""Per-call cost at small sizes: the fixed cost many small tensors pay, and the
range (1K-256K) where a scalar fast path would show.

``python -m adamfast bench --overhead`` prints :func:`per_call_table`: the hot
calls at 16 float32 params that have a per-call target, each timed in rounds
interleaved with the others (load drift hits every row alike), with median
and quartiles, plus adamfast.torch's step at 1 and 200 tensors and its cost
per extra tensor (torch's fused step alongside, for scale).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import timeit

import numpy as np

from ._machine import try_import
from ._rows import Notes, backends, decoupled
from ._timing import per_call_us


def initial_state(setup, n, dtype):
    """The algorithm's state buffers by name, initialised as its optimizer would, each
    allocated on its own (as a NumPy user does) and written in full."""
    init = setup.spec.state_init
    return {name: np.full(n, init(name, setup.hp) if init else 0, dtype)
            for name in setup.state_names}


def functional_step(setup, p, g, state, backend):
    """(label, call) of the algorithm's functional step at step 10; the call takes
    ``step=t`` to run another step."""
    from adamfast import functional

    hp = setup.hp
    if setup.numpy_formula:  # adam_step has its own signature (beta1, beta2, decoupled)
        b1, b2 = hp["betas"]
        kw = {k: v for k, v in hp.items() if k not in ("betas", "decoupled_weight_decay")}
        fn = functools.partial(functional.adam_step, p, g, state["exp_avg"], state["exp_avg_sq"],
                               step=10, beta1=b1, beta2=b2, decoupled=decoupled(setup),
                               max_exp_avg_sq=state.get("max_exp_avg_sq"), backend=backend, **kw)
        return "adam_step", fn
    spec = setup.spec
    step = functional.STEPS[spec.name]
    args = [state.get(name) for name in spec.all_state_names()]
    # Group state the caller carries (NAdam's mu_product): its initial value
    # does for timing.
    carried = dict(spec.gstate) if spec.gstate and spec.gstate_from_step is None else {}
    fn = functools.partial(step, p, g, *args, step=10, backend=backend, **hp, **carried)
    return step.__name__, fn


SMALL_SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18)


def measure_small_sizes(cfg, setup, sizes=SMALL_SIZES) -> dict[str, list[float]]:
    """us/call at each of ``sizes`` for the default backend's functional step and
    ``Optimizer.step`` and torch's fastest: {label: [us per size]}, hot cache."""
    import adamfast

    best = adamfast.available_backends()[0]
    out: dict[str, list[float]] = {}
    for n in sizes:
        for label, us in measure_overhead(cfg, setup, n, only=(best,)).items():
            out.setdefault(label, []).append(us)
    return {k: v for k, v in out.items() if len(v) == len(sizes)}


def measure_overhead(cfg, setup, n: int = 16, only=None) -> dict[str, float]:
    """us/call of the functional step, ``Optimizer.step`` and torch's fastest, hot cache
    (every available backend, or those in ``only``)."""
    import adamfast

    rng = np.random.default_rng(cfg.seed)
    dt = cfg.dtype
    p = rng.standard_normal(n).astype(dt)
    g = rng.standard_normal(n).astype(dt)
    state = initial_state(setup, n, dt)
    notes = Notes()  # the table already reported unavailable backends
    names = [b for b in backends(notes) if only is None or b in only]
    out: dict[str, float] = {}

    def timed(label, fn):
        # A backend whose kernel fails here already has a note in the table;
        # leave it out of this line rather than stop at the very end.
        try:
            fn()  # compile / load outside the timing
        except Exception:
            return
        out[label] = per_call_us(fn)

    for backend in names:
        label, fn = functional_step(setup, p, g, state, backend)
        timed(f"{label}[{backend}]", fn)
    cls = getattr(adamfast, setup.name)
    for backend in names:
        opt = cls([p.copy()], backend=backend, **setup.hp)
        opt.grads[0][...] = g
        timed(f"{setup.name}.step[{backend}]", opt.step)
    torch = try_import("torch")
    if torch is not None:
        from ._peers import torch_modes

        found = torch_modes(torch, setup, notes)
        if found is not None:
            tcls, kw, modes = found
            tp = torch.from_numpy(p.copy())
            tp.grad = torch.from_numpy(g.copy())
            opt = tcls([tp], **kw, **{modes[0]: True})
            timed(f"torch-{modes[0]}", opt.step)
    return out


# (label, target us/call or None): the per-call targets of issue 16, hot calls
# at 16 float32 params.
PER_CALL_TARGETS = {
    "adam_step(..., backend='numba')": 5.0,
    "adam_step(..., backend='cython')": None,
    "Adam(...).step() on cython": 1.0,
    "Adam(...).step() on numba": 5.0,
    "Adam(...).step() on numpy": None,
}
PER_CALL_N = 16


def _per_call_fns(n, seed):
    """{label: call} for the rows of PER_CALL_TARGETS whose backend is available."""
    import adamfast

    rng = np.random.default_rng(seed)
    available = adamfast.available_backends()
    fns = {}
    for backend in ("numba", "cython"):
        if backend in available:
            p, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
            m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
            fns[f"adam_step(..., backend={backend!r})"] = functools.partial(
                adamfast.adam_step, p, g, m, v, step=10, backend=backend)
    for backend in ("cython", "numba", "numpy"):
        if backend in available:
            opt = adamfast.Adam([rng.standard_normal(n).astype(np.float32)], backend=backend)
            opt.grads[0][...] = rng.standard_normal(n)
            fns[f"Adam(...).step() on {backend}"] = opt.step
    return fns


def _torch_fns(n, seed):
    """{(name, k): step} of adamfast.torch.Adam and torch.optim.Adam(fused=True) over k
    tensors of n params (k = 1 and 200), or {} without torch."""
    from ._machine import try_import

    torch = try_import("torch")
    if torch is None:
        return {}
    import adamfast.torch as aft

    gen = torch.Generator().manual_seed(seed)
    fns = {}
    for name, make in (("adamfast.torch.Adam", lambda ps: aft.Adam(ps, lr=1e-3)),
                       ("torch.optim.Adam(fused=True)",
                        lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True))):
        for k in (1, 200):
            params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for _ in range(k)]
            for p in params:
                p.grad = torch.randn(n, generator=gen)
            try:
                opt = make(params)
                opt.step()  # lazy state outside the timing
            except Exception:  # noqa: BLE001 -- a peer that cannot run here is left out
                break
            fns[(name, k)] = opt.step
    return fns


def _time_interleaved(fns, repeat):
    """{key: ([us per call, one per round], [CPU us per call, one per round])}:
    ``repeat`` rounds, each timing every call over a batch of ~20 ms, in the same
    order.  The CPU time is the calling thread's (these calls never start a
    worker): on a busy machine it leaves out the time the thread waited for a core."""
    batches = {}
    for key, fn in fns.items():
        fn()
        number, _ = timeit.Timer(fn).autorange()  # >= 0.2 s
        batches[key] = max(1, number // 10)
    times = {key: ([], []) for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            number = batches[key]
            c0, t0 = time.thread_time(), time.perf_counter()
            for _ in range(number):
                fn()
            t1, c1 = time.perf_counter(), time.thread_time()
            times[key][0].append((t1 - t0) / number * 1e6)
            times[key][1].append((c1 - c0) / number * 1e6)
    return times


def _quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def per_call_table(repeat: int | None = None, seed: int = 0) -> dict:
    """Time the per-call rows; return ``{"rows": [...], "torch": [...], "load": (before,
    after)}``: each row a dict of label, target (us or None), median, p25, p75 (us);
    each torch row a dict of name, us at 1 tensor, us at 200, us per extra tensor
    (medians of wall time; the rows also carry the median CPU time, cpu_us)."""
    repeat = repeat or 15
    before = os.getloadavg()
    fns = _per_call_fns(PER_CALL_N, seed)
    tfns = _torch_fns(PER_CALL_N, seed)
    times = _time_interleaved({**fns, **tfns}, repeat)
    rows = []
    for label, target in PER_CALL_TARGETS.items():
        if label in times:
            wall, cpu = times[label]
            lo, hi = _quartiles(wall)
            rows.append({"label": label, "target_us": target,
                         "median_us": statistics.median(wall), "p25_us": lo, "p75_us": hi,
                         "cpu_us": statistics.median(cpu)})
    trows = []
    for name in dict.fromkeys(name for name, _ in tfns):
        if (name, 1) in times and (name, 200) in times:
            one = statistics.median(times[(name, 1)][0])
            many = statistics.median(times[(name, 200)][0])
            trows.append({"name": name, "us_1": one, "us_200": many,
                          "us_per_tensor": (many - one) / 199})
    return {"rows": rows, "torch": trows, "load": (before[0], os.getloadavg()[0]),
            "repeat": repeat}


def print_per_call_table(res: dict):
    """The table of :func:`per_call_table`'s result."""
    import adamfast

    print(f"per-call cost, hot cache, {PER_CALL_N} float32 params: median (p25-p75) "
          f"of {res['repeat']} interleaved rounds, us/call; adamfast {adamfast.__version__}")
    print(f"{'call':<36}{'target':>8}{'median':>9}{'p25-p75':>15}{'cpu':>8}  verdict")
    for r in res["rows"]:
        target = "-" if r["target_us"] is None else f"<= {r['target_us']:g}"
        verdict = "" if r["target_us"] is None else (
            "met" if r["median_us"] <= r["target_us"] else "MISSED")
        print(f"{r['label']:<36}{target:>8}{r['median_us']:>9.2f}"
              f"{r['p25_us']:>8.2f}-{r['p75_us']:<6.2f}{r['cpu_us']:>8.2f}  {verdict}")
    if res["torch"]:
        print(f"\n{'opt.step() over k tensors of 16':<36}{'k=1':>8}{'k=200':>9}{'per tensor':>12}")
        for r in res["torch"]:
            print(f"{r['name']:<36}{r['us_1']:>8.2f}{r['us_200']:>9.1f}{r['us_per_tensor']:>12.3f}")
    else:
        print("(no torch: adamfast.torch's row left out)")
    before, after = res["load"]
    cores = os.cpu_count() or 1
    note = " -- busy: rerun when idle" if max(before, after) > 0.5 * cores else ""
    print(f"verdict: the wall-time median against the target; cpu: the calling thread's CPU "
          f"time (median), which a busy machine inflates less")
    print(f"1-minute load average {before:.2f} before, {after:.2f} after "
          f"({cores} cores){note}")


def run_per_call(repeat: int | None = None, seed: int = 0):
    """``python -m adamfast bench --overhead``."""
    print_per_call_table(per_call_table(repeat, seed))
