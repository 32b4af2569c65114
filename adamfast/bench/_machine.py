"""The machine: CPU, cores, L3 size, OpenMP runtimes, load from other processes, the header."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from ._config import format_size

FALLBACK_L3_BYTES = 64 * 2**20
_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}


def try_import(name: str):
    """The module, or None when it is missing or broken (never an exception)."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # ImportError, or a broken install raising anything else
        return None


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


def openmp_runtimes() -> list[str] | None:
    """Paths of the OpenMP runtimes loaded in this process (needs threadpoolctl).

    Torch ships its own libgomp; Cython and Numba use the system one.  Two
    runtimes mean two thread pools that can spin against each other.
    """
    tpc = try_import("threadpoolctl")
    if tpc is None:
        return None
    try:
        return [i["filepath"] for i in tpc.threadpool_info() if i.get("user_api") == "openmp"]
    except Exception:
        return None


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


def _cython():
    """The extension module the cython backend loads, or None if it is not built."""
    try:
        from adamfast._dispatch import cython_module

        return cython_module()
    except (ImportError, ValueError):
        return None


def _numba_backend():
    try:
        import adamfast._numba as nb

        return nb
    except Exception:  # the package may be mid-rewrite or numba missing
        return None


def header_info(cfg, flush, setup, after=None) -> dict:
    """Everything the header prints (and the JSON keeps as ``meta``); ``after``: the
    :class:`~._peers.AfterTorch` of the run's after-torch tables, if any."""
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
    numba = try_import("numba")
    info["numba"] = numba.__version__ if numba is not None else None
    torch = try_import("torch")
    info["torch"] = torch.__version__ if torch is not None else None
    layer = None
    if numba is not None:
        nb = _numba_backend()
        if nb is not None and nb.threading_path() == "adamfast pool":
            layer = "none (adamfast's numba kernels run on adamfast's pool)"
        else:
            try:
                layer = numba.threading_layer()  # only known after a parallel call
            except ValueError:
                layer = None
    info["numba_threading_layer"] = layer or "not initialised"
    info["openmp_runtimes"] = openmp_runtimes()
    cy = _cython()
    info["cython_openmp"] = bool(cy.openmp_enabled()) if cy is not None else None
    simd = getattr(cy, "simd_info", None)
    info["cython_build"] = f"{cy.__name__}: {simd()}" if simd is not None else None
    # The serial cut-offs, because they decide the small-size rows and the
    # rooflines share them (they run through the same family_kernel).
    nb = _numba_backend()
    info["parallel_min"] = {name: getattr(mod, "PARALLEL_MIN", None)
                            for name, mod in (("cython", cy), ("numba", nb)) if mod is not None}
    if flush.enabled:
        src = "sysfs" if flush.l3_known else "assumed, sysfs unreadable"
        info["cache_mode"] = (f"cold: {flush.nbytes // 2**20} MiB read before each timed step "
                              f"(2x L3 of {flush.l3 // 2**20} MiB, {src})")
    else:
        info["cache_mode"] = "hot: no flush between steps"
    info["after_torch"] = None
    if after is not None:
        where = ("every table" if cfg.after_torch == "all" else
                 f"one more table at {format_size(max(cfg.sizes))} (rooflines, the default "
                 f"backend's adamfast rows, torch's and timm's fastest; --after-torch for "
                 f"every table, "
                 f"--no-after-torch for none)")
        when = "after the flush" if flush.enabled else "no flush (--hot)"
        info["after_torch"] = (f"{where}; torch.add over {format_size(after.size)} float32 "
                               f"before each timed step, {when}")
    info["dtype"] = cfg.dtype.name
    info["arrays"] = cfg.arrays
    info["groups"] = cfg.groups
    info["layout"] = cfg.layout
    if setup is not None:
        info["algorithm"] = setup.name
        info["kind"] = setup.kind
        info["hyperparameters"] = {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in setup.hp.items()}
        info["bytes_per_param"] = setup.bytes_per_param(cfg.dtype.itemsize)
        info["roofline_kind"] = setup.roofline_kind
    else:
        info["algorithm"] = "family"
    return info
