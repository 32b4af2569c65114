"""Rows of other libraries: torch's fused/foreach optimizers and DeepSpeed's CPU Adam."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os

import numpy as np

from ._machine import try_import
from ._timing import Impl


def torch_kwargs(cls, setup) -> dict:
    """The setup's hyperparameters that torch's class takes (adamfast uses torch's names).

    adamfast-only settings (eps_hat, eps_root, ...) are dropped; they must be
    at their defaults, or the torch row would compute something else.
    """
    sig = inspect.signature(cls).parameters
    kw = {k: v for k, v in setup.hp.items() if k in sig}
    odd = [k for k, v in setup.hp.items() if k not in sig and v != setup.spec.defaults[k]]
    if odd:
        raise ValueError(f"torch.optim.{cls.__name__} has no {odd}: no torch row can match")
    return kw


@functools.lru_cache(maxsize=None)
def fused_ok(cls, kw_items: tuple) -> bool:
    """Whether ``cls(..., fused=True)`` steps on CPU in this torch (tried on a tiny tensor).

    torch only grows CPU fused kernels over time (2.13: Adam, AdamW, SGD,
    Adagrad), so the answer is tried, not listed.
    """
    import torch

    p = torch.zeros(16)
    p.grad = torch.ones(16)
    try:
        cls([p], **dict(kw_items), fused=True).step()
    except (TypeError, RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def torch_modes(torch, setup, notes) -> tuple[object, dict, list[str]] | None:
    """(class, kwargs, modes fastest first), or None with a note."""
    if setup.torch_name is None:
        notes.add(f"{setup.name} has no torch implementation (its reference is "
                  f"{setup.spec.peer}): no torch row")
        return None
    cls = getattr(torch.optim, setup.torch_name, None)
    if cls is None:
        notes.add(f"torch {torch.__version__} has no torch.optim.{setup.torch_name}: no torch row")
        return None
    kw = torch_kwargs(cls, setup)
    if fused_ok(cls, tuple(sorted(kw.items()))):
        return cls, kw, ["fused", "foreach"]
    notes.add(f"torch.optim.{setup.torch_name} has no fused CPU implementation in torch "
              f"{torch.__version__}: torch-foreach is its fastest")
    return cls, kw, ["foreach"]


def torch_impls(wl, cfg, setup, notes, fastest_only: bool = False, keep=None) -> list[Impl]:
    """torch's fused (where it exists on CPU) and foreach implementations of the same class.

    Same memory as the other rows: ``from_numpy`` shares the workload's p and
    g, and torch updates the parameters in place (its state is its own).
    """
    torch = try_import("torch")
    if torch is None:
        notes.add("torch not installed: torch rows skipped")
        return []
    torch.set_num_threads(cfg.threads)
    found = torch_modes(torch, setup, notes)
    if found is None:
        return []
    cls, kw, modes = found
    impls = []
    for mode in modes[:1] if fastest_only else modes:
        if keep is not None and not keep(f"torch-{mode}"):
            continue
        params = [torch.from_numpy(a) for a in wl.views(wl.p)]
        for t_, g_ in zip(params, wl.views(wl.g)):
            t_.grad = torch.from_numpy(g_)
        opt = cls(wl.grouped(params, cfg.groups), **kw, **{mode: True})
        impls.append(Impl(f"torch-{mode}", lambda t, opt=opt: opt.step(), "torch"))
    return impls


@functools.lru_cache(maxsize=None)
def torch_default_threads() -> int | None:
    """torch's own thread count, read once, before the benchmark sets any (None without
    torch).  Called as soon as torch is imported, so later calls still see the default."""
    torch = try_import("torch")
    return None if torch is None else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch at ``threads`` threads (None: torch's default) inside, the previous count after."""
    torch = try_import("torch")
    previous = torch.get_num_threads()
    want = torch_default_threads() if threads is None else threads
    if want != previous:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class AfterTorch:
    """Before each timed step, outside the timer: the cache flush, then one torch op on
    all of torch's threads, as a backward pass runs right before the optimizer step.

    The op is ``torch.add(a, b, out=c)`` over ``size`` float32: element-wise and
    well above torch's grain size, so one OpenMP region in torch's runtime, whose
    workers keep spinning for a while after it (libgomp's default wait policy)
    on the cores the step then wants.  Nothing of torch's is configured here:
    OMP_WAIT_POLICY is left as the user has it, and torch's thread count is the
    caller's business (:func:`torch_threads`).
    """

    def __init__(self, flush, size: int):
        import torch

        from ._rows import touch

        self.flush = flush
        self.size = size
        self.a = torch.ones(size)
        self.b = torch.ones(size)
        self.c = torch.empty(size)
        touch(self.a.numpy(), self.b.numpy(), self.c.numpy())
        self._add = torch.add

    def __call__(self):
        self.flush()
        self._add(self.a, self.b, out=self.c)

    def describe(self, threads: int) -> str:
        from ._config import format_size

        policy = os.environ.get("OMP_WAIT_POLICY")
        wait = (f"OMP_WAIT_POLICY={policy}" if policy else
                "OMP_WAIT_POLICY unset: its workers spin a while after")
        when = "after the flush" if self.flush.enabled else "hot cache, no flush"
        return (f"before each timed step ({when}), torch.add over "
                f"{format_size(self.size)} float32 ({3 * 4 * self.size / 2**20:.0f} MiB) on "
                f"torch's {threads} thread(s) ({wait})")


@functools.lru_cache(maxsize=None)
def deepspeed_cpu_adam():
    """(DeepSpeedCPUAdam, None) when DeepSpeed and its cpu_adam op work here, else (None, reason).

    Imported only after torch (the runner imports torch first; DeepSpeed
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
        DeepSpeedCPUAdam([p], lr=1e-3).step()
    except BaseException as exc:  # the JIT build can also raise SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        msg = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {msg[-1] if msg else ''}"
        return None, f"deepspeed cpu_adam op unusable ({why}): deepspeed row skipped"
    return DeepSpeedCPUAdam, None


def deepspeed_impls(wl, cfg, setup, notes, keep=None) -> list[Impl]:
    """DeepSpeed's CPU Adam (its cpu_adam C++ op, AVX-vectorized, OpenMP through
    torch's runtime, so torch.set_num_threads applies).  Optional: any failure
    is a note, never an error."""
    if not setup.numpy_formula or (keep is not None and not keep("deepspeed-cpuadam")):
        return []
    if setup.hp.get("amsgrad"):
        notes.add("deepspeed-cpuadam has no AMSGrad: deepspeed row skipped")
        return []
    if cfg.dtype != np.float32:
        notes.add(f"deepspeed-cpuadam supports float32 only: deepspeed row skipped for "
                  f"{cfg.dtype.name}")
        return []
    if try_import("torch") is None:
        return []  # the torch note says it
    ds_cls, why = deepspeed_cpu_adam()
    if ds_cls is None:
        notes.add(why)
        return []
    import torch

    from ._rows import decoupled

    try:
        params = [torch.from_numpy(a) for a in wl.views(wl.p)]
        for t_, g_ in zip(params, wl.views(wl.g)):
            t_.grad = torch.from_numpy(g_)
        hp = setup.hp
        opt = ds_cls(wl.grouped(params, cfg.groups), lr=hp["lr"], betas=hp["betas"],
                     eps=hp["eps"], weight_decay=hp["weight_decay"], adamw_mode=decoupled(setup))
    except Exception as exc:
        notes.add(f"deepspeed-cpuadam construction failed ({type(exc).__name__}: {exc}): "
                  f"deepspeed row skipped")
        return []
    return [Impl("deepspeed-cpuadam", lambda t, opt=opt: opt.step(), "deepspeed")]
