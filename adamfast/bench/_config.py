"""What one run measures: the :class:`Config`, sizes, and the algorithm :class:`Setup`.

Pure Python and NumPy only, so that the command line can be parsed and
checked before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_SIZE = 16 * 2**20
DEFAULT_ALGORITHM = "Adam"
TEXTBOOK = "numpy-textbook"
# Rows in table order: reference first, then the compiled ones ("slow -> fast").
BACKEND_ORDER = ("numpy", "numba", "cython")
# The roofline rows: the bandwidth-only kind on each threading available, so that
# a loss in adamfast's own pool shows (see _rows.roofline_impls).
ROOFLINES = ("roofline-pool", "roofline-openmp", "roofline-prange")
# The torch op of the after-torch tables: element-wise over this many float32
# (a few MB), well above torch's grain size, so it is one OpenMP region on
# every thread torch has.
AFTER_TORCH_SIZE = 1 << 20
# Below this torch runs an element-wise op on one thread: no OpenMP region.
AFTER_TORCH_MIN = 1 << 16
# The NumPy textbook/in-place rows spell out Adam's formula; other algorithms
# compare with adamfast's own NumPy backend instead.
NUMPY_FORMULA = ("Adam", "AdamW")
# Settings that differ from the class defaults, and why they are needed.
# torch's SGD default (momentum=0) keeps no state, which would make it a
# pure streaming copy; momentum=0.9 is what SGD is trained with.
OVERRIDES = {"SGD": {"momentum": 0.9}}

_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}


class SizeError(ValueError):
    """A size that is not a positive whole number of parameters."""


def parse_size(text: str) -> int:
    """``"64K"`` -> 65536, ``"16M"`` -> 16777216, ``"1000"`` -> 1000 (binary suffixes)."""
    s = str(text).strip().upper()
    mult = 1
    if s and s[-1] in _SUFFIXES:
        mult = _SUFFIXES[s[-1]]
        s = s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise SizeError(f"not a size: {text!r} (use e.g. 1000, 64K, 1M, 16M)") from None
    # float() accepts "inf" and "nan": reject them here, before int() would
    # raise OverflowError (a traceback instead of a usage error).
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise SizeError(f"size must be a positive whole number: {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """Inverse of :func:`parse_size` where it is exact, else the plain number."""
    for suffix, mult in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{suffix}"
    return str(n)


@dataclass(frozen=True)
class Setup:
    """One algorithm as benchmarked: its spec, the settings of every row and its kind.

    ``hp`` are the raw hyperparameters with torch's names (the class defaults
    plus :data:`OVERRIDES` and ``--amsgrad``); every adamfast and torch row
    gets exactly these.
    """

    spec: object
    hp: dict
    kind: str
    notes: tuple = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state_names(self) -> tuple:
        return tuple(self.spec.state_names(self.kind))

    @property
    def nstate(self) -> int:
        return len(self.state_names)

    @property
    def passes(self) -> tuple:
        """The step's sweeps over memory (the spec's :class:`Pass` list)."""
        return tuple(self.spec.passes(self.kind))

    def describe_passes(self, itemsize: int) -> str:
        """``"norm 4 + moments 24 + apply 16 B/param"``."""
        return " + ".join(f"{ps.name} {ps.bytes_per_param(itemsize)}"
                          for ps in self.passes) + " B/param"

    @property
    def roofline_kind(self) -> str:
        return f"roofline{self.nstate}"

    def bytes_per_param(self, itemsize: int) -> int:
        """The step's traffic, as the spec counts it (every pass of it)."""
        return self.spec.bytes_per_param(self.kind, itemsize)

    def roofline_bytes(self, itemsize: int) -> int:
        """What one call of :attr:`roofline_kind` moves: read p, g and the N states, write
        p and the N states.  The step's own bytes when the step is one such pass."""
        return (3 + 2 * self.nstate) * itemsize

    @property
    def numpy_formula(self) -> bool:
        return self.name in NUMPY_FORMULA

    @property
    def baseline(self) -> str:
        """The row the paired speed-up column divides by."""
        return TEXTBOOK if self.numpy_formula else "adamfast-numpy"

    @property
    def torch_name(self) -> str | None:
        """``"Adam"`` for ``torch.optim.Adam``; None when the peer is not torch (Lion)."""
        peer = self.spec.peer
        return peer.rsplit(".", 1)[1] if peer.startswith("torch.optim.") else None

    def describe(self) -> str:
        changed = {k: v for k, v in self.hp.items() if v != self.spec.defaults[k]}
        extra = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{self.name}" + (f" ({extra})" if extra else " (default hyperparameters)")


def lookup_algorithm(name: str):
    """The registry's spec for ``name``, case-insensitive; KeyError listing the names."""
    from adamfast.algorithms import ALGORITHMS

    by_lower = {k.lower(): v for k, v in ALGORITHMS.items()}
    try:
        return by_lower[name.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def make_setup(name: str, amsgrad: bool = False) -> Setup:
    """The :class:`Setup` of ``name``; ValueError for a setting the algorithm lacks."""
    spec = lookup_algorithm(name)
    hp = dict(spec.defaults)
    notes = []
    over = OVERRIDES.get(spec.name, {})
    if over:
        hp.update(over)
        notes.append(f"{spec.name} runs with " + ", ".join(f"{k}={v}" for k, v in over.items())
                     + " on every row (the default keeps no state)")
    if amsgrad:
        if "amsgrad" not in hp:
            raise ValueError(f"--amsgrad applies to Adam and AdamW, not {spec.name}")
        hp["amsgrad"] = True
    kind = spec.kind_of([spec.validate(hp)])
    return Setup(spec=spec, hp=hp, kind=kind, notes=tuple(notes))


@dataclass
class Config:
    sizes: list[int]
    dtype: np.dtype
    threads: int
    arrays: int = 1
    groups: int = 1
    repeat: int | None = None
    algorithm: str = DEFAULT_ALGORITHM
    amsgrad: bool = False
    family: bool = False
    impl: list[str] | None = None
    hot: bool = False
    quiet: bool = False
    seed: int = 0
    layout: str = "staggered"  # "staggered" (zeros_buffers) or "separate" (one np array each)
    overhead: bool = True
    json_path: str | None = None
    plot_path: str | None = None
    setup: Setup | None = None  # the algorithm's Setup; None with --family
    # "extra": one after-torch table at the largest size besides the cold
    # tables (the default); "all": every table after torch (--after-torch);
    # "off": none (--no-after-torch, or no torch).
    after_torch: str = "extra"
    after_torch_size: int = AFTER_TORCH_SIZE
    # torch's threads in the after-torch tables: --threads when given, else
    # None, torch's own default (see _peers.torch_default_threads).
    torch_threads: int | None = None

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


def split_groups(count: int, groups: int) -> list[tuple[int, int]]:
    """[(first, last+1)] array indices of ``groups`` consecutive, near-equal groups."""
    bounds = np.linspace(0, count, groups + 1).round().astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:]))
