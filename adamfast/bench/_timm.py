"""timm's rows: ``timm-foreach`` (its ``torch._foreach`` path) and ``timm`` (its per-tensor loop).

timm's package ``__init__`` imports torchvision and its model zoo, which a
CPU optimizer benchmark has no use for (and which is often not installed),
so the package is never imported.  Only the files ``timm/optim/<name>.py``
are loaded, as submodules of a stand-in package ``_adamfast_timm`` whose
path is timm's ``optim`` folder: their relative imports (``._types``,
``._helpers``) then resolve to timm's own files and nothing else of timm
runs.  The folder comes from an installed timm (found, not imported), else
from a wheel: ``$ADAMFAST_TIMM_WHEEL`` when set (then only that one), else
the newest ``timm-*.whl`` in :data:`WHEEL_DIRS`, whose ``timm/optim/*.py``
are extracted to a temporary folder removed at exit.

Whatever is missing or broken becomes one note and no row: never an error.
"""

from __future__ import annotations

import atexit
import functools
import glob
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile
import zipfile

import numpy as np

from ._machine import try_import
from ._timing import Impl

WHEEL_ENV = "ADAMFAST_TIMM_WHEEL"
WHEEL_DIRS = ("/opt/pypi/files", "/tmp/timm")
PACKAGE = "_adamfast_timm"
# Algorithms timm implements with the same update and hyperparameters, beyond
# those whose spec names a ``timm.optim.<Class>`` peer (which are found from
# the peer): name -> timm's class.  Lion's reference is optax's, and timm's
# Lion computes the same step; timm's AdamWLegacy is torch's AdamW formula.
SAME_AS_TIMM = {"Lion": "Lion", "AdamW": "AdamWLegacy"}
# timm's file of a class, where it is not the class name in lower case.
MODULE_OF = {"AdamWLegacy": "adamw"}


def timm_class_name(setup) -> str | None:
    """timm's class for the algorithm (``"Adan"``), or None when timm has none."""
    peer = setup.spec.peer or ""
    if peer.startswith("timm.optim."):
        return peer.rsplit(".", 1)[1]
    return SAME_AS_TIMM.get(setup.name)


def _version(path: str) -> str:
    m = re.match(r"timm-([^-]+)-", os.path.basename(path))
    return m.group(1) if m else "unknown"


def _wheel() -> tuple[str | None, str]:
    """(the wheel to use, or None; where it was looked for)."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        return (given if os.path.isfile(given) else None), f"${WHEEL_ENV}={given}"
    found = [w for d in WHEEL_DIRS for w in glob.glob(os.path.join(d, "timm-*.whl"))]

    def key(path):  # newest version first; a name that does not parse sorts last
        return tuple(int(x) if x.isdigit() else -1 for x in _version(path).split("."))

    found.sort(key=key, reverse=True)
    return (found[0] if found else None), ", ".join(f"{d}/timm-*.whl" for d in WHEEL_DIRS)


def _extract(wheel: str) -> str:
    """timm/optim/*.py of ``wheel`` in a temporary folder (removed at exit); that folder."""
    root = tempfile.mkdtemp(prefix="adamfast-timm-")
    atexit.register(shutil.rmtree, root, True)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"timm/optim/[^/]+\.py", n)]
        if not names:
            raise FileNotFoundError(f"{wheel} holds no timm/optim/*.py")
        z.extractall(root, members=names)
    return os.path.join(root, "timm", "optim")


@functools.lru_cache(maxsize=None)
def find_optim_dir() -> tuple[str | None, str]:
    """(timm's ``optim`` folder, or None; where it came from, or why there is none).

    Cached: a wheel is extracted once per process.
    """
    spec = importlib.util.find_spec("timm")  # finds, never runs timm's __init__
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "optim")
        if os.path.isdir(folder):
            try:
                from importlib.metadata import version

                v = version("timm")
            except Exception:
                v = "unknown"
            return folder, f"timm {v} installed at {folder}"
    wheel, where = _wheel()
    if wheel is None:
        return None, (f"timm not found (not installed, no wheel at {where}; timm's package "
                      f"needs torchvision, so only its optim files are used): timm rows skipped")
    try:
        folder = _extract(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        return None, f"timm wheel {wheel} unreadable ({type(exc).__name__}: {exc}): timm rows skipped"
    return folder, f"timm {_version(wheel)} from {wheel}"


_packages: dict = {}


def _package(folder: str) -> str:
    """The stand-in package whose path is ``folder``: one per folder, made once."""
    if folder not in _packages:
        name = PACKAGE if not _packages else f"{PACKAGE}_{len(_packages)}"
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [folder]
        sys.modules[name] = module
        _packages[folder] = name
    return _packages[folder]


def load_class(class_name: str):
    """(timm's optimizer class, where timm came from) or (None, why not)."""
    folder, where = find_optim_dir()
    if folder is None:
        return None, where
    module_name = MODULE_OF.get(class_name, class_name.lower())
    if not os.path.isfile(os.path.join(folder, f"{module_name}.py")):
        return None, f"{where} has no optim/{module_name}.py: no timm row"
    try:
        module = importlib.import_module(f"{_package(folder)}.{module_name}")
        return getattr(module, class_name), where
    except Exception as exc:  # a timm file that needs what is not here
        from ._rows import short_error

        return None, f"timm's optim/{module_name}.py does not load ({short_error(exc)}): no timm row"


def timm_kwargs(cls, setup) -> dict:
    """The setup's hyperparameters that timm's class takes; ValueError when one it lacks
    is not at its default (the row would compute something else)."""
    sig = inspect.signature(cls).parameters
    kw = {k: v for k, v in setup.hp.items() if k in sig}
    odd = [k for k, v in setup.hp.items() if k not in sig and v != setup.spec.defaults[k]]
    if odd:
        raise ValueError(f"timm's {cls.__name__} has no {odd}: no timm row can match")
    return kw


def modes(cls) -> list[str]:
    """timm's implementations of ``cls``, fastest first: foreach when it takes the keyword."""
    return (["foreach", "loop"] if "foreach" in inspect.signature(cls).parameters
            else ["loop"])


def row_name(mode: str) -> str:
    return "timm-foreach" if mode == "foreach" else "timm"


@functools.lru_cache(maxsize=None)
def writes_grads(cls, kw_items: tuple, mode: str) -> bool:
    """Whether a step of ``cls`` changes the gradients (timm's Lamb divides them by the
    clip coefficient in place); tried on a small tensor, not assumed."""
    import torch

    gen = torch.Generator().manual_seed(0)
    p = torch.randn(64, generator=gen)
    p.grad = 10 * torch.randn(64, generator=gen)  # a norm well above any max_grad_norm of 1
    before = p.grad.clone()
    takes = "foreach" in inspect.signature(cls).parameters
    extra = {"foreach": mode == "foreach"} if takes else {}
    cls([p], **dict(kw_items), **extra).step()
    return not torch.equal(before, p.grad)


def timm_impls(wl, cfg, setup, notes, fastest_only: bool = False, keep=None) -> list[Impl]:
    """timm's foreach (where it has one) and per-tensor implementations of the algorithm.

    Timed as the torch rows: ``from_numpy`` shares the workload's p and g
    (timm updates p in place; its state is its own and is written on its
    first step, so every page is touched before timing).  A class that
    writes the gradients gets its own copy, put back outside the timer
    before each step: the step then does a training step's work every time,
    and no other row sees its gradients change.
    """
    name = timm_class_name(setup)
    if name is None:
        return []
    wanted = [m for m in ("foreach", "loop") if keep is None or keep(row_name(m))]
    if not wanted:
        return []
    if try_import("torch") is None:
        return []  # the torch note says it
    cls, where = load_class(name)
    if cls is None:
        notes.add(where)
        return []
    notes.add(f"timm rows: {where} (its optim/<name>.py files only, loaded on their own)")
    try:
        kw = timm_kwargs(cls, setup)
    except ValueError as exc:
        notes.add(str(exc))
        return []
    import torch

    torch.set_num_threads(cfg.threads)
    found = modes(cls)
    takes_foreach = "foreach" in found
    if "foreach" not in found:
        notes.add(f"timm's {name} has no foreach implementation: its per-tensor loop (row "
                  f"'timm') is its fastest")
    found = found[:1] if fastest_only else found
    impls = []
    for mode in found:
        if mode not in wanted:
            continue
        # timm's default (foreach=None) picks for itself: say which, always.
        extra = {"foreach": mode == "foreach"} if takes_foreach else {}
        params = [torch.from_numpy(a) for a in wl.views(wl.p)]
        prepare = None
        grads = wl.g
        if writes_grads(cls, tuple(sorted(kw.items())), mode):
            grads = np.empty_like(wl.g)  # written in full below: every page touched
            np.copyto(grads, wl.g)
            prepare = functools.partial(np.copyto, grads, wl.g)
        for t_, g_ in zip(params, wl.views(grads)):
            t_.grad = torch.from_numpy(g_)
        opt = cls(wl.grouped(params, cfg.groups), **kw, **extra)
        impls.append(Impl(row_name(mode), lambda t, opt=opt: opt.step(), "timm",
                          prepare=prepare))
    return impls
