"""The benchmark CLI: ``python -m adamfast bench``.

What it measures, and why it is measured this way:

* Every implementation does one full Adam step over the same parameters, and
  the time of that single step is taken with ``time.perf_counter_ns``.  The
  first call of each implementation is timed on its own and reported as
  "first call" (it holds Numba's JIT or cache load and torch's lazy state
  allocation), so it never leaks into the steady-state numbers.
* The rounds are interleaved: each round runs every implementation once, in
  a freshly shuffled order.  On a shared, noisy machine a slow stretch then
  hits all implementations alike instead of whichever ran during it, and the
  speed-up column is a *paired* ratio (baseline time / implementation time
  within the same round), which cancels most of that drift.
* By default the caches are cold: before each timed step a buffer of twice
  the L3 size is streamed through with a read-only reduction, outside the
  timer.  That is the honest setting for an optimizer step, which in training
  runs after the backward pass has evicted the optimizer state.  ``--hot``
  skips the flush (meaningful only for sizes that fit in cache).  The flush
  also gives the OpenMP pools of torch, Cython and Numba time to stop
  spinning, so one runtime's idle spinning does not steal a core from the
  next implementation on a small machine.
* Throughput is reported against a roofline measured in the same run: a
  kernel with the same memory traffic as an fp32 Adam step (read p, g, m, v;
  write p, m, v) and trivial arithmetic, run with the same thread count.  The
  NumPy baseline is the textbook formula; a second NumPy row uses in-place
  ufuncs with one scratch buffer, so the speed-up is not only measured
  against a strawman.
* By default p, g, m, v come from one ``adamfast.zeros_buffers`` call, as in
  ``adamfast.Adam``: separate equal-sized NumPy arrays start at the same
  offset modulo the huge page and their streams collide in cache sets/banks.
  ``--layout separate`` allocates each on its own and shows that cost.

Heavy or optional imports (numba, torch, matplotlib, the Cython extension)
happen inside functions, so ``--help`` is instant and every optional piece can
be missing without breaking the rest.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import sys
import time
import timeit
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_SIZE = 16 * 2**20
# Numba roofline: the same fixed chunking and serial cut-off as the Adam
# kernels, so the roofline pays the same threading costs they do.
ROOFLINE_CHUNK = 16384
ROOFLINE_PARALLEL_MIN = 65536
# Memory accesses per parameter: read p, g, m, v and write p, m, v; AMSGrad
# also reads and writes max_exp_avg_sq.
ACCESSES = 7
ACCESSES_AMSGRAD = 9
FALLBACK_L3_BYTES = 64 * 2**20
BASELINE = "numpy-textbook"
# Hyperparameters shared by every row.  Weight decay is only applied with
# --adamw, which is the case where it costs anything interesting.
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
ADAMW_WEIGHT_DECAY = 1e-2

_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}


# --------------------------------------------------------------------------
# Small helpers: sizes, machine description
# --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``"64K"`` -> 65536, ``"16M"`` -> 16777216, ``"1000"`` -> 1000 (binary suffixes)."""
    s = text.strip().upper()
    mult = 1
    if s and s[-1] in _SUFFIXES:
        mult = _SUFFIXES[s[-1]]
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1000, 64K, 1M, 16M)")
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"size must be a positive whole number: {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """Inverse of :func:`parse_size` where it is exact, else the plain number."""
    for suffix, mult in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{suffix}"
    return str(n)


def cpu_model() -> str:
    """Model name plus family/model and the SIMD level, from /proc/cpuinfo.

    Virtual machines often report a bare "AMD EPYC"; family and model tell
    the generation (family 25 is Zen 3/4), and the flags say which vector
    width the compiled kernels can use.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    name = fields.get("model name", platform.machine() or "unknown")
    extra = []
    if "cpu family" in fields and "model" in fields:
        extra.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    if flags:
        simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else (
            "avx" if "avx" in flags else "sse2")
        extra.append(simd + ("+fma" if "fma" in flags else ""))
    return f"{name} ({', '.join(extra)})" if extra else name


def core_count() -> int:
    # Cores this process may run on, which is what the thread pools get.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def l3_bytes() -> tuple[int, bool]:
    """(L3 size in bytes, whether it was read from sysfs rather than assumed)."""
    path = "/sys/devices/system/cpu/cpu0/cache/index3/size"
    try:
        with open(path) as f:
            text = f.read().strip().upper()
        mult = 1
        if text[-1] in _SUFFIXES:
            mult = _SUFFIXES[text[-1]]
            text = text[:-1]
        return int(text) * mult, True
    except (OSError, ValueError, IndexError):
        return FALLBACK_L3_BYTES, False


def _try_import(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # ImportError, or a broken install raising anything else
        return None


# --------------------------------------------------------------------------
# Roofline kernels
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def numba_roofline():
    """Build (or load from Numba's cache) the Numba roofline kernel.

    Same traffic as the Adam kernels: reads p, g, m, v and writes p, m, v,
    with one add per stream so the arithmetic costs nothing.  Built lazily
    because explicit signatures compile at decoration time.  Returns None
    when Numba is missing.
    """
    numba = _try_import("numba")
    if numba is None:
        return None
    from numba import njit, prange, types

    sigs = [types.void(*(types.Array(ft, 1, "C"),) * 4) for ft in (types.float32, types.float64)]

    @njit(sigs, cache=True, nogil=True)
    def serial(p, g, m, v):
        for i in range(p.size):
            gi = g[i]
            p[i] += gi
            m[i] += gi
            v[i] += gi

    @njit(sigs, cache=True, nogil=True, parallel=True)
    def parallel(p, g, m, v):
        n = p.size
        nchunks = (n + ROOFLINE_CHUNK - 1) // ROOFLINE_CHUNK
        for c in prange(nchunks):
            lo = c * ROOFLINE_CHUNK
            hi = min(lo + ROOFLINE_CHUNK, n)
            # Slice per chunk and index from 0: with ``range(lo, hi)`` Numba
            # cannot prove the index non-negative, keeps its wraparound
            # branch and LLVM leaves the loop scalar (checked with
            # inspect_asm: no ymm adds).  This form vectorizes.
            pc, gc, mc, vc = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
            for i in range(hi - lo):
                gi = gc[i]
                pc[i] += gi
                mc[i] += gi
                vc[i] += gi

    def roofline(p, g, m, v, num_threads):
        if p.size < ROOFLINE_PARALLEL_MIN or num_threads == 1:
            serial(p, g, m, v)
        else:
            if numba.get_num_threads() != num_threads:
                numba.set_num_threads(num_threads)
            parallel(p, g, m, v)

    return roofline


def cython_module():
    """The Cython extension the "cython" backend uses, or None if it is not built.

    There may be several builds of the same source (baseline and AVX2); the
    dispatcher knows which one the backend loads, and the roofline must come
    from that same build to be a fair ceiling.
    """
    dispatch = _try_import("adamfast._dispatch")
    pick = getattr(dispatch, "cython_module", None)
    if pick is not None:
        try:
            return pick()
        except (ImportError, ValueError):
            return None
    return _try_import("adamfast._cython")


def cython_roofline():
    """``roofline_kernel`` of the backend's Cython extension, else None."""
    return getattr(cython_module(), "roofline_kernel", None)


@functools.lru_cache(maxsize=None)
def deepspeed_cpu_adam():
    """(DeepSpeedCPUAdam, None) when DeepSpeed and its cpu_adam op work here, else (None, reason).

    Imported only after torch (run_bench imports torch first; DeepSpeed
    imports it too, and torch must be first to bind its own OpenMP runtime).
    Constructing the optimizer JIT-builds the cpu_adam C++ op with ninja/g++
    on first use (minutes; cached under ~/.cache/torch_extensions), so the
    build and one step are tried here, once per process, on a tiny tensor: a
    broken install or a failed build then becomes a note instead of breaking
    the benchmark.  DS_ACCELERATOR defaults to cpu (this is a CPU benchmark).
    """
    try:
        import torch
    except ImportError:
        return None, "deepspeed row skipped: torch not installed"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError:
        return None, "deepspeed not installed: deepspeed row skipped"
    except Exception as exc:
        return None, f"deepspeed import failed ({type(exc).__name__}: {exc}): deepspeed row skipped"
    try:
        p = torch.zeros(16)
        p.grad = torch.ones(16)
        DeepSpeedCPUAdam([p], lr=LR).step()
    except BaseException as exc:  # the JIT build can also raise SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        msg = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {msg[-1] if msg else ''}"
        return None, f"deepspeed cpu_adam op unusable ({why}): deepspeed row skipped"
    return DeepSpeedCPUAdam, None


# --------------------------------------------------------------------------
# Workload: the buffers every implementation steps over
# --------------------------------------------------------------------------


@dataclass
class Config:
    sizes: list[int]
    dtype: np.dtype
    threads: int
    arrays: int
    repeat: int | None
    amsgrad: bool
    adamw: bool
    impl: list[str] | None
    hot: bool
    quiet: bool
    seed: int = 0
    layout: str = "staggered"  # "staggered" (zeros_buffers) or "separate" (one np array each)

    @property
    def weight_decay(self) -> float:
        return ADAMW_WEIGHT_DECAY if self.adamw else 0.0

    @property
    def bytes_per_param(self) -> int:
        return (ACCESSES_AMSGRAD if self.amsgrad else ACCESSES) * self.dtype.itemsize

    def rounds_for(self, n: int) -> int:
        # Big sizes are dominated by memory traffic and vary little, small
        # ones by scheduler noise; give the small ones more rounds (they are
        # cheap) and keep the default 16M run well under two minutes.
        if self.repeat is not None:
            return self.repeat
        return 21 if n >= 2**20 else 51


def split_sizes(total: int, count: int, seed: int) -> list[int]:
    """``count`` mixed sizes summing to ``total``, like a model's tensors.

    Log-normal weights give a few big matrices and many small vectors; the
    seed makes the split the same in every run, so runs are comparable.
    """
    if count < 1 or count > total:
        raise ValueError(f"--arrays must be between 1 and the size ({total}), got {count}")
    if count == 1:
        return [total]
    rng = np.random.default_rng(seed)
    w = rng.lognormal(mean=0.0, sigma=1.5, size=count)
    sizes = np.maximum(1, np.floor(w / w.sum() * total).astype(np.int64))
    # Put the rounding remainder on the largest array so nothing goes below 1.
    sizes[np.argmax(sizes)] += total - int(sizes.sum())
    return [int(s) for s in sizes]


class Workload:
    """One flat set of p, g, m, v (and vmax) of ``n`` elements, plus views per array.

    All rows share this one set: only time matters, and every Adam variant
    keeps the state finite (steps are bounded by lr), so sharing costs
    nothing in realism and keeps 16M fp64 runs within memory.  The roofline
    gets its own p, g, m, v (its ``v += g`` would make v negative), laid out
    the same way as the Adam rows' so it is their ceiling in the same layout.

    ``cfg.layout`` decides the placement: "staggered" takes the set from one
    ``adamfast.zeros_buffers`` call (buffers under 1 MiB fall back to
    separate allocations there), "separate" allocates each array on its own.
    """

    def __init__(self, n: int, cfg: Config):
        self.n = n
        self.cfg = cfg
        dt = cfg.dtype
        rng = np.random.default_rng(cfg.seed)
        count = 5 if cfg.amsgrad else 4
        bufs = self._alloc(n, count)
        self.p, self.g, self.m, self.v = bufs[:4]
        self.vmax = bufs[4] if cfg.amsgrad else None
        self.p[...] = rng.standard_normal(n, dtype=np.float32)
        self.g[...] = rng.standard_normal(n, dtype=np.float32)
        # Filled explicitly even where already zero: calloc'd pages are
        # mapped lazily, and the first implementation to touch them would
        # pay for the page faults.
        self.m.fill(0)
        self.v.fill(1e-4)  # small positive, as after a few steps
        if self.vmax is not None:
            self.vmax.fill(1e-4)
        self.sizes = split_sizes(n, cfg.arrays, cfg.seed)
        bounds = np.cumsum([0] + self.sizes)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._roof = None
        self._scratch = None

    def _alloc(self, n: int, count: int) -> tuple:
        """``count`` buffers of ``n`` elements in the configured layout (contents undefined)."""
        if self.cfg.layout == "staggered":
            import adamfast

            return adamfast.zeros_buffers(n, self.cfg.dtype, count)
        return tuple(np.empty(n, self.cfg.dtype) for _ in range(count))

    def views(self, arr):
        return [arr[s] for s in self.slices]

    @property
    def scratch(self):
        # A plain allocation in both layouts: the in-place NumPy row is what
        # a careful NumPy user writes, and they would not stagger it.
        if self._scratch is None:
            self._scratch = np.empty(self.n, self.cfg.dtype)
            self._scratch.fill(0)
        return self._scratch

    @property
    def roofline_buffers(self):
        """(p, g, m, v) for the roofline kernels, in a set of their own."""
        if self._roof is None:
            bufs = self._alloc(self.n, 4)
            for dst, src in zip(bufs, (self.p, self.g, self.m, self.v)):
                dst[...] = src  # also faults every page in before timing
            self._roof = bufs
        return self._roof


class CpuMonitor:
    """How much CPU other processes (and the hypervisor, as steal) took meanwhile.

    On a small shared machine a parallel kernel whose thread is descheduled
    waits at every barrier, so a busy neighbour can make a 2-thread row
    several times slower.  The table cannot prevent that, but it can say
    when it happened.  Reads /proc/stat (whole machine) and subtracts this
    process's own CPU time; returns None where /proc is missing.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            import resource

            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError, ImportError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        hz = os.sysconf("SC_CLK_TCK")
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return dict(busy=(user + nice + system + irq + softirq) / hz, steal=steal / hz,
                    self=ru.ru_utime + ru.ru_stime, wall=time.monotonic())

    def stop(self) -> dict | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end["wall"] - self._start["wall"]
        ncpu = os.cpu_count() or 1
        if wall <= 0:
            return None
        others = (end["busy"] - self._start["busy"]) - (end["self"] - self._start["self"])
        steal = end["steal"] - self._start["steal"]
        return dict(other_pct=max(0.0, 100 * others / (wall * ncpu)),
                    steal_pct=100 * steal / (wall * ncpu), seconds=wall)


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


# --------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------


@dataclass
class Impl:
    name: str
    step: Callable[[int], None]  # argument: the 1-based Adam step number
    kind: str  # "roofline", "numpy", "adamfast", "torch", "deepspeed"
    times_ns: list[int] = field(default_factory=list)
    first_call_ns: int | None = None


def _numpy_textbook(views, cfg: Config):
    """Adam as written in the paper, with temporaries, assigned back with [:]."""
    b1, b2, lr, eps, wd = BETA1, BETA2, LR, EPS, cfg.weight_decay

    def step(t):
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        for p, g, m, v, vmax in views:
            if cfg.adamw:
                p[:] = p - lr * wd * p
            m[:] = b1 * m + (1 - b1) * g
            v[:] = b2 * v + (1 - b2) * g * g
            if vmax is not None:
                vmax[:] = np.maximum(vmax, v)
                vhat = vmax / bc2
            else:
                vhat = v / bc2
            mhat = m / bc1
            p[:] = p - lr * mhat / (np.sqrt(vhat) + eps)

    return step


def _numpy_inplace(views, cfg: Config):
    """The same update with ``out=`` ufuncs and one scratch buffer, no other temporaries.

    This is how a careful NumPy user writes it, so the speed-up over it is
    the part a compiled kernel really buys (one pass instead of ~12).
    """
    b1, b2, lr, eps, wd = BETA1, BETA2, LR, EPS, cfg.weight_decay

    def step(t):
        bc1 = 1 - b1**t
        inv_sqrt_bc2 = 1 / (1 - b2**t) ** 0.5
        step_size = lr / bc1
        for p, g, m, v, vmax, s in views:
            if cfg.adamw:
                np.multiply(p, 1 - lr * wd, out=p)
            np.multiply(m, b1, out=m)
            np.multiply(g, 1 - b1, out=s)
            np.add(m, s, out=m)
            np.multiply(v, b2, out=v)
            np.multiply(g, g, out=s)
            np.multiply(s, 1 - b2, out=s)
            np.add(v, s, out=v)
            if vmax is not None:
                np.maximum(vmax, v, out=vmax)
                src = vmax
            else:
                src = v
            np.sqrt(src, out=s)
            np.multiply(s, inv_sqrt_bc2, out=s)
            np.add(s, eps, out=s)
            np.divide(m, s, out=s)
            np.multiply(s, step_size, out=s)
            np.subtract(p, s, out=p)

    return step


def _adam_kwargs(cfg: Config) -> dict:
    return dict(lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=cfg.weight_decay,
                decoupled=cfg.adamw, amsgrad=cfg.amsgrad)


def _make_adamfast_optimizer(adamfast, arrays, cfg: Config, backend: str):
    """``adamfast.Adam`` (or ``AdamW``) over ``arrays``; tolerant of keyword spellings."""
    cls = adamfast.Adam
    kwargs = dict(lr=LR, backend=backend)
    if cfg.adamw and hasattr(adamfast, "AdamW"):
        cls = adamfast.AdamW
        kwargs["weight_decay"] = cfg.weight_decay
    elif cfg.adamw:
        kwargs.update(weight_decay=cfg.weight_decay, decoupled=True)
    if cfg.amsgrad:
        kwargs["amsgrad"] = True
    return cls(arrays, **kwargs)


def _backends_in_table_order(adamfast) -> list[str]:
    # Reference first, then the compiled ones: reads like "slow -> fast".
    order = ("numpy", "numba", "cython")
    avail = adamfast.available_backends()
    return [b for b in order if b in avail] + [b for b in avail if b not in order]


def build_impls(wl: Workload, cfg: Config) -> tuple[list[Impl], list[str]]:
    """Every implementation that can run here, plus notes on those that cannot."""
    import adamfast

    impls: list[Impl] = []
    notes: list[str] = []
    threads = cfg.threads

    # Rooflines: their own p, g, m, v in the workload's layout (see
    # Workload), the whole buffer even in the many-array case, since a
    # roofline is the ideal.
    rp, rg, rm, rv = wl.roofline_buffers
    nb_roof = numba_roofline()
    if nb_roof is not None:
        impls.append(Impl("roofline-numba", lambda t: nb_roof(rp, rg, rm, rv, threads),
                          "roofline"))
    else:
        notes.append("numba not installed: roofline-numba skipped")
    cy_roof = cython_roofline()
    if cy_roof is not None:
        impls.append(Impl("roofline-cython", lambda t: cy_roof(rp, rg, rm, rv, threads),
                          "roofline"))
    else:
        notes.append("adamfast._cython.roofline_kernel not available: roofline-cython skipped")

    vmax_views = wl.views(wl.vmax) if wl.vmax is not None else [None] * len(wl.slices)
    tb_views = list(zip(wl.views(wl.p), wl.views(wl.g), wl.views(wl.m), wl.views(wl.v), vmax_views))
    impls.append(Impl(BASELINE, _numpy_textbook(tb_views, cfg), "numpy"))
    ip_views = [(*t, s) for t, s in zip(tb_views, wl.views(wl.scratch))]
    impls.append(Impl("numpy-inplace", _numpy_inplace(ip_views, cfg), "numpy"))

    for backend in _backends_in_table_order(adamfast):
        name = f"adamfast-{backend}"
        if cfg.arrays == 1:
            kw = _adam_kwargs(cfg)
            p, g, m, v, vmax = wl.p, wl.g, wl.m, wl.v, wl.vmax

            def step(t, backend=backend, kw=kw, p=p, g=g, m=m, v=v, vmax=vmax):
                adamfast.adam_step(p, g, m, v, step=t, max_exp_avg_sq=vmax, backend=backend, **kw)

            impls.append(Impl(name, step, "adamfast"))
        else:
            # The optimizer owns one flat buffer (a copy of the arrays); give
            # it the workload's gradients once, they stay fixed across steps.
            opt = _make_adamfast_optimizer(adamfast, wl.views(wl.p), cfg, backend)
            for dst, src in zip(opt.grads, wl.views(wl.g)):
                dst[...] = src
            impls.append(Impl(name, lambda t, opt=opt: opt.step(), "adamfast"))

    torch = _try_import("torch")
    if torch is None:
        notes.append("torch not installed: torch rows skipped")
    else:
        torch.set_num_threads(threads)
        for mode in ("fused", "foreach"):
            # Same memory as the other rows: from_numpy shares the buffers,
            # and torch updates the parameters in place.
            params = [torch.from_numpy(a) for a in wl.views(wl.p)]
            for t_, g_ in zip(params, wl.views(wl.g)):
                t_.grad = torch.from_numpy(g_)
            cls = torch.optim.AdamW if cfg.adamw else torch.optim.Adam
            opt = cls(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=cfg.weight_decay,
                      amsgrad=cfg.amsgrad, **{mode: True})
            impls.append(Impl(f"torch-{mode}", lambda t, opt=opt: opt.step(), "torch"))

        # DeepSpeed's CPU Adam (its cpu_adam C++ op, AVX-vectorized, OpenMP
        # through torch's runtime, so torch.set_num_threads above applies).
        # Optional: any failure is a note, never an error.
        if cfg.amsgrad:
            notes.append("deepspeed-cpuadam has no AMSGrad: deepspeed row skipped")
        elif cfg.dtype != np.float32:
            notes.append(f"deepspeed-cpuadam supports float32 only: deepspeed row skipped "
                         f"for {cfg.dtype.name}")
        else:
            ds_cls, why = deepspeed_cpu_adam()
            if ds_cls is None:
                notes.append(why)
            else:
                try:
                    params = [torch.from_numpy(a) for a in wl.views(wl.p)]
                    for t_, g_ in zip(params, wl.views(wl.g)):
                        t_.grad = torch.from_numpy(g_)
                    opt = ds_cls(params, lr=LR, betas=(BETA1, BETA2), eps=EPS,
                                 weight_decay=cfg.weight_decay, adamw_mode=cfg.adamw)
                    impls.append(Impl("deepspeed-cpuadam", lambda t, opt=opt: opt.step(),
                                      "deepspeed"))
                except Exception as exc:
                    notes.append(f"deepspeed-cpuadam construction failed "
                                 f"({type(exc).__name__}: {exc}): deepspeed row skipped")

    if cfg.impl:
        # The roofline and the baseline always run: other columns need them.
        keep = lambda name: any(tok in name for tok in cfg.impl)  # noqa: E731
        impls = [i for i in impls if i.kind == "roofline" or i.name == BASELINE or keep(i.name)]
    return impls, notes


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


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


def measure(impls: list[Impl], rounds: int, flush: CacheFlusher, progress: Progress, label: str,
            seed: int):
    rng = random.Random(seed)
    # Warm-up: the first call is timed on its own (JIT / cache load / lazy
    # state); a second untimed call settles page faults and thread pools.
    for impl in impls:
        progress.show(f"warm-up {impl.name} size {label}")
        flush()
        t0 = time.perf_counter_ns()
        impl.step(1)
        impl.first_call_ns = time.perf_counter_ns() - t0
        impl.step(2)
    for r in range(rounds):
        progress.show(f"round {r + 1}/{rounds} size {label}")
        order = impls[:]
        rng.shuffle(order)
        for impl in order:
            flush()
            t0 = time.perf_counter_ns()
            impl.step(r + 3)
            impl.times_ns.append(time.perf_counter_ns() - t0)
    progress.clear()


def _quartiles(x) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(x, dtype=np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def summarize(impls: list[Impl], n: int, cfg: Config) -> tuple[list[dict], dict]:
    """Per-row statistics and a description of the roofline used."""
    roofs = [i for i in impls if i.kind == "roofline"]
    roof_bytes = ACCESSES * cfg.dtype.itemsize
    best_roof = min(roofs, key=lambda i: np.median(i.times_ns)) if roofs else None
    roof_gbs = None
    if best_roof is not None:
        roof_gbs = n * roof_bytes / (np.median(best_roof.times_ns) * 1e-9) / 1e9
    base = next((i for i in impls if i.name == BASELINE), None)
    rows = []
    for impl in impls:
        ns = np.asarray(impl.times_ns, dtype=np.float64)
        q25, med, q75 = _quartiles(ns / 1e6)
        bpp = roof_bytes if impl.kind == "roofline" else cfg.bytes_per_param
        sec = med / 1e3
        gbs = n * bpp / sec / 1e9
        row = dict(
            impl=impl.name, kind=impl.kind, size=n, median_ms=med, p25_ms=q25, p75_ms=q75,
            mparams_per_s=n / sec / 1e6, bytes_per_param=bpp, gb_per_s=gbs,
            pct_roofline=(100 * gbs / roof_gbs) if roof_gbs else None,
            first_call_ms=impl.first_call_ns / 1e6 if impl.first_call_ns is not None else None,
            times_ms=(ns / 1e6).tolist(),
        )
        if base is not None:
            ratios = np.asarray(base.times_ns, dtype=np.float64) / ns
            s25, s50, s75 = _quartiles(ratios)
            row.update(speedup=s50, speedup_p25=s25, speedup_p75=s75)
        rows.append(row)
    roof = dict(impl=best_roof.name if best_roof else None, gb_per_s=roof_gbs,
                bytes_per_param=roof_bytes)
    return rows, roof


def check_finite(wl: Workload) -> str | None:
    arrays = {"params": wl.p, "exp_avg": wl.m, "exp_avg_sq": wl.v}
    bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    return f"warning: non-finite values in {', '.join(bad)} after the run" if bad else None


# --------------------------------------------------------------------------
# Per-call overhead at a tiny size
# --------------------------------------------------------------------------


def _per_call_us(fn, repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean time per call, in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()  # enough calls for >= 0.2 s per repeat
    number = max(1, number // 2)  # ~0.1 s per repeat keeps this section short
    per_call = [t / number for t in timer.repeat(repeat=repeats, number=number)]
    return float(np.median(per_call)) * 1e6


def measure_overhead(cfg: Config, n: int = 16) -> dict[str, float]:
    """Fixed cost of one call (hot cache, tiny buffers): what many small tensors pay."""
    import adamfast

    rng = np.random.default_rng(cfg.seed)
    dt = cfg.dtype
    p = rng.standard_normal(n).astype(dt)
    g = rng.standard_normal(n).astype(dt)
    m = np.zeros(n, dt)
    v = np.full(n, 1e-4, dt)
    vmax = np.full(n, 1e-4, dt) if cfg.amsgrad else None
    kw = _adam_kwargs(cfg)
    out: dict[str, float] = {}
    for backend in _backends_in_table_order(adamfast):
        fn = functools.partial(adamfast.adam_step, p, g, m, v, step=10, max_exp_avg_sq=vmax,
                               backend=backend, **kw)
        fn()  # compile / load outside the timing
        out[f"adam_step[{backend}]"] = _per_call_us(fn)
    for backend in _backends_in_table_order(adamfast):
        opt = _make_adamfast_optimizer(adamfast, [p.copy()], cfg, backend)
        opt.grads[0][...] = g
        opt.step()
        out[f"Adam.step[{backend}]"] = _per_call_us(opt.step)
    torch = _try_import("torch")
    if torch is not None:
        tp = torch.from_numpy(p.copy())
        tp.grad = torch.from_numpy(g.copy())
        cls = torch.optim.AdamW if cfg.adamw else torch.optim.Adam
        opt = cls([tp], lr=LR, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, fused=True)
        opt.step()
        out["torch-fused"] = _per_call_us(opt.step)
    return out


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def openmp_runtimes() -> list[str] | None:
    """Paths of the OpenMP runtimes loaded in this process (needs threadpoolctl).

    Torch ships its own libgomp; Cython and Numba use the system one.  Two
    runtimes mean two thread pools that can spin against each other.
    """
    tpc = _try_import("threadpoolctl")
    if tpc is None:
        return None
    try:
        return [i["filepath"] for i in tpc.threadpool_info() if i.get("user_api") == "openmp"]
    except Exception:
        return None


def header_info(cfg: Config, flush: CacheFlusher) -> dict:
    import adamfast

    info = dict(
        adamfast=getattr(adamfast, "__version__", "unknown"),
        numpy=np.__version__,
        python=platform.python_version(),
        cpu=cpu_model(),
        cores=core_count(),
        threads=cfg.threads,
        backends=list(adamfast.available_backends()),
    )
    numba = _try_import("numba")
    info["numba"] = numba.__version__ if numba is not None else None
    torch = _try_import("torch")
    info["torch"] = torch.__version__ if torch is not None else None

    tinfo = {}
    get_info = getattr(adamfast, "threading_info", None)
    if get_info is not None:
        try:
            tinfo = dict(get_info())
        except Exception as exc:  # report, do not die over a diagnostic
            tinfo = {"error": repr(exc)}
    info["threading_info"] = tinfo
    layer = None
    if numba is not None:
        try:
            layer = numba.threading_layer()  # only known after a parallel call
        except ValueError:
            layer = None
    info["numba_threading_layer"] = layer or tinfo.get("numba_threading_layer", "not initialised")
    info["openmp_runtimes"] = openmp_runtimes()
    cy = cython_module()
    omp = getattr(cy, "openmp_enabled", None)
    info["cython_openmp"] = bool(omp()) if omp is not None else tinfo.get("cython_openmp")
    simd = getattr(cy, "simd_info", None)
    info["cython_build"] = (f"{cy.__name__}: {simd()}" if simd is not None
                            else getattr(cy, "__name__", None))
    if flush.enabled:
        src = "sysfs" if flush.l3_known else "assumed, sysfs unreadable"
        info["cache_mode"] = (f"cold: {flush.nbytes // 2**20} MiB read before each timed step "
                              f"(2x L3 of {flush.l3 // 2**20} MiB, {src})")
    else:
        info["cache_mode"] = "hot: no flush between steps"
    info["dtype"] = cfg.dtype.name
    info["arrays"] = cfg.arrays
    info["layout"] = cfg.layout
    variant = "AdamW" if cfg.adamw else "Adam"
    info["variant"] = variant + (" + AMSGrad" if cfg.amsgrad else "")
    info["bytes_per_param"] = cfg.bytes_per_param
    return info


def print_header(info: dict):
    v = lambda x: x if x is not None else "not installed"  # noqa: E731
    print(f"adamfast {info['adamfast']} | numpy {info['numpy']} | numba {v(info['numba'])} | "
          f"torch {v(info['torch'])} | python {info['python']}")
    print(f"CPU: {info['cpu']} | {info['cores']} cores | {info['threads']} threads")
    cy = info["cython_openmp"]
    cy_txt = "not built" if cy is None else ("yes" if cy else "no (serial)")
    print(f"numba threading layer: {info['numba_threading_layer']} | Cython OpenMP: {cy_txt}")
    if info.get("cython_build"):
        print(f"Cython build: {info['cython_build']}")
    rts = info.get("openmp_runtimes")
    if rts is not None:
        short = [p[p.index("site-packages/"):] if "site-packages/" in p else p for p in rts]
        print(f"OpenMP runtimes loaded: {', '.join(short) if short else 'none'}")
    print(f"cache: {info['cache_mode']}")
    layout = info.get("layout", "staggered")
    if layout == "staggered":
        print("layout: staggered (p, g, m, v from one adamfast.zeros_buffers call; "
              "--layout separate for one np array each)")
    else:
        print("layout: separate (one np allocation per array, as a user's own arrays; "
              "adamfast.Adam and torch state still allocate their own)")
    print(f"{info['variant']}, {info['dtype']}, {info['arrays']} array(s), "
          f"{info['bytes_per_param']} B/param moved (roofline: {ACCESSES} accesses)")


def print_table(rows: list[dict], roof: dict, n: int, rounds: int, arrays: int):
    print()
    where = f"{arrays} arrays" if arrays > 1 else "1 array"
    print(f"size {format_size(n)} ({n:,} params, {where}), {rounds} rounds; "
          f"times are medians, spread is p25-p75")
    cols = ("implementation", "ms/step", "p25-p75 ms", "Mparam/s", "GB/s", "% roof",
            "vs textbook (p25-p75)", "first ms")
    fmt = "{:<17} {:>9} {:>17} {:>9} {:>7} {:>7} {:>22} {:>9}"
    print(fmt.format(*cols))
    print("-" * (sum((17, 9, 17, 9, 7, 7, 22, 9)) + 7))

    def ms(x):
        return f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"

    for r in rows:
        spread = f"{ms(r['p25_ms'])}-{ms(r['p75_ms'])}"
        pct = f"{r['pct_roofline']:.0f}%" if r["pct_roofline"] is not None else "-"
        if "speedup" in r:
            sp = f"{r['speedup']:.2f}x ({r['speedup_p25']:.2f}-{r['speedup_p75']:.2f})"
        else:
            sp = "-"
        first = f"{r['first_call_ms']:.1f}" if r["first_call_ms"] is not None else "-"
        name = r["impl"] + ("*" if r["impl"] == roof["impl"] else "")
        print(fmt.format(name, ms(r["median_ms"]), spread, f"{r['mparams_per_s']:.0f}",
                         f"{r['gb_per_s']:.1f}", pct, sp, first))
    if roof["impl"]:
        print(f"* roofline = {roof['gb_per_s']:.1f} GB/s ({roof['impl']}, "
              f"{roof['bytes_per_param']} B/param); % roof = row GB/s / roofline GB/s")


def print_load(load: dict | None, cfg: Config):
    if load is None:
        return
    line = (f"machine during this size ({load['seconds']:.1f} s): other processes "
            f"{load['other_pct']:.0f}% of CPU, steal {load['steal_pct']:.0f}%")
    if load["seconds"] < 1:
        line += " (too short a window to judge)"  # /proc/stat counts in 10 ms ticks
    elif load["other_pct"] + load["steal_pct"] > 10:
        hit = "multi-threaded rows most" if cfg.threads > 1 else "memory bandwidth is shared"
        line += f" -- busy: numbers unreliable ({hit}), rerun when idle"
    print(line)


def print_overhead(overhead: dict[str, float], cfg: Config):
    parts = [f"{k} {v:.1f}" for k, v in overhead.items()]
    print()
    print(f"per-call overhead, n=16 {cfg.dtype.name}, hot cache, us/call (median of 7 repeats):")
    print("  " + " | ".join(parts))


def write_plot(path: str, results: dict[int, list[dict]], subtitle: str = ""):
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib (or adamfast[plot])")
    sizes = sorted(results)
    names = []
    for n in sizes:
        for r in results[n]:
            if r["impl"] not in names:
                names.append(r["impl"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        pts = [(n, r["mparams_per_s"]) for n in sizes for r in results[n] if r["impl"] == name]
        style = "--" if name.startswith("roofline") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name)
    ax.set_xscale("log", base=2)
    # Log y too: NumPy rows and the roofline differ by ~30x.
    ax.set_yscale("log")
    ax.set_xticks(sizes, [format_size(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("parameters")
    ax.set_ylabel("throughput (Mparam/s)")
    ax.set_title("adamfast: Adam step throughput" + (f" ({subtitle})" if subtitle else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adamfast",
        description="adamfast command line. "
                    "Run 'python -m adamfast bench --help' for the benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="time one Adam step per implementation",
        description=(
            "Time one Adam step per implementation (roofline, NumPy textbook and in-place, every "
            "adamfast backend, torch fused/foreach), interleaved over shuffled rounds, cold cache "
            "by default. Prints median ms/step, spread, throughput, % of a roofline measured in "
            "the same run, paired speed-up over NumPy textbook, and first-call time."
        ),
    )
    b.add_argument("--sizes", nargs="+", type=parse_size, default=[DEFAULT_SIZE], metavar="N",
                   help="parameter counts, suffixes K/M/G are powers of 2 (default: 16M)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for adamfast, the rooflines and torch (default: all cores)")
    b.add_argument("--arrays", type=int, default=1,
                   help="split each size into N arrays of mixed sizes (adamfast via adamfast.Adam, "
                        "torch over N tensors, NumPy loops per array); default 1")
    b.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="timed rounds per size (default: 21 for sizes >= 1M, 51 below)")
    b.add_argument("--amsgrad", action="store_true", help="AMSGrad variant (9 accesses/param)")
    b.add_argument("--adamw", action="store_true",
                   help=f"decoupled weight decay (AdamW, weight_decay={ADAMW_WEIGHT_DECAY})")
    b.add_argument("--impl", nargs="+", default=None, metavar="NAME",
                   help="only rows whose name contains one of these (comma lists allowed); "
                        "the rooflines and numpy-textbook always run as references")
    b.add_argument("--hot", action="store_true", help="hot cache: do not flush between steps")
    b.add_argument("--layout", choices=("staggered", "separate"), default="staggered",
                   help="buffer placement: 'staggered' (default) takes p, g, m, v from one "
                        "adamfast.zeros_buffers call, as adamfast.Adam does; 'separate' "
                        "allocates each with NumPy on its own, as a user's own arrays, "
                        "showing what that costs")
    b.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead line")
    b.add_argument("--json", metavar="PATH", help="write all results (with raw times) as JSON")
    b.add_argument("--plot", metavar="PATH", help="write a PNG of throughput vs size (matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    b.add_argument("--seed", type=int, default=0, help="seed for data and round order")
    return parser


def _config_from_args(args) -> Config:
    cores = core_count()
    threads = args.threads if args.threads is not None else cores
    if threads < 1:
        raise SystemExit("--threads must be >= 1")
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    if args.arrays < 1:
        raise SystemExit("--arrays must be >= 1")
    impl = None
    if args.impl:
        impl = [tok.strip() for item in args.impl for tok in item.split(",") if tok.strip()]
    return Config(sizes=args.sizes, dtype=np.dtype(args.dtype), threads=threads, arrays=args.arrays,
                  repeat=args.repeat, amsgrad=args.amsgrad, adamw=args.adamw, impl=impl,
                  hot=args.hot, quiet=args.quiet, seed=args.seed, layout=args.layout)


def run_bench(cfg: Config, json_path: str | None = None, plot_path: str | None = None,
              overhead: bool = True) -> dict:
    # Import torch before anything loads the system OpenMP runtime (Numba's
    # "omp" threading layer does, when its first parallel kernel loads).
    # Imported afterwards, torch binds to that libgomp instead of its bundled
    # one, and here its foreach path became ~10x slower (4 ms instead of
    # 0.3 ms per step at 8K params).  Importing torch first is also what a
    # training script does, so this is torch's realistic case.
    _try_import("torch")
    import adamfast

    for n in cfg.sizes:
        if cfg.arrays > n:
            raise SystemExit(f"--arrays {cfg.arrays} is more than size {n}")
    try:
        adamfast.set_num_threads(cfg.threads)
    except Exception as exc:
        raise SystemExit(f"cannot use {cfg.threads} threads: {exc}")

    # Compile/load the Numba roofline and run it once on a tiny parallel-sized
    # buffer so the header can name the threading layer Numba picked.
    roof = numba_roofline()
    if roof is not None:
        tiny = [np.zeros(ROOFLINE_PARALLEL_MIN, np.float32) for _ in range(4)]
        roof(*tiny, max(2, cfg.threads) if core_count() > 1 else 1)

    flush = CacheFlusher(enabled=not cfg.hot)
    info = header_info(cfg, flush)
    print_header(info)
    progress = Progress(enabled=not cfg.quiet)
    results: dict[int, list[dict]] = {}
    roofs: dict[int, dict] = {}
    notes_printed = False
    for size_idx, n in enumerate(cfg.sizes):
        wl = Workload(n, cfg)
        impls, notes = build_impls(wl, cfg)
        if not notes_printed:
            for note in notes:
                print(note)
            notes_printed = True
        rounds = cfg.rounds_for(n)
        monitor = CpuMonitor()
        measure(impls, rounds, flush, progress, format_size(n), seed=cfg.seed + size_idx)
        load = monitor.stop()
        rows, roof_info = summarize(impls, n, cfg)
        roof_info["machine_load"] = load
        results[n], roofs[n] = rows, roof_info
        print_table(rows, roof_info, n, rounds, cfg.arrays)
        print_load(load, cfg)
        warning = check_finite(wl)
        if warning:
            print(warning)
        sys.stdout.flush()
        del wl, impls  # free this size's buffers before the next one

    ovh = {}
    if overhead:
        progress.show("per-call overhead")
        ovh = measure_overhead(cfg)
        progress.clear()
        print_overhead(ovh, cfg)

    config = dict(sizes=cfg.sizes, dtype=cfg.dtype.name, threads=cfg.threads, arrays=cfg.arrays,
                  repeat={str(n): cfg.rounds_for(n) for n in cfg.sizes}, amsgrad=cfg.amsgrad,
                  adamw=cfg.adamw, impl=cfg.impl, hot=cfg.hot, seed=cfg.seed,
                  layout=cfg.layout)
    report = dict(meta=info, config=config, results={str(n): rows for n, rows in results.items()},
                  roofline={str(n): r for n, r in roofs.items()}, overhead_us=ovh)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {json_path}")
    if plot_path:
        write_plot(plot_path, results,
                   f"{cfg.dtype.name}, {cfg.threads} threads, {cfg.layout} layout")
        print(f"wrote {plot_path}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command != "bench":
        parser.print_help()
        return 2
    cfg = _config_from_args(args)
    if args.plot:
        # Fail before minutes of benchmarking, not after.
        if _try_import("matplotlib") is None:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib (or adamfast[plot])")
    run_bench(cfg, json_path=args.json, plot_path=args.plot, overhead=not args.no_overhead)
    return 0
