"""What an algorithm declares, and the checks every layer derives from it.

An algorithm is a :class:`Spec` plus, per *kind* (a structural variant such as
Adam with AMSGrad), one element-wise update written three times: the NumPy
reference here in ``adamfast.algorithms``, a Numba element function in
``adamfast._numba`` and a Cython one in ``kernels/algorithms``.  Everything
else -- validation, the scalar table, the chunk table, the dispatcher, the
optimizer classes, the functional steps, the benchmark rows and rooflines,
the parity tests -- is generic and reads the spec.

The scalar contract
===================
Python computes every per-step scalar once, in float64, with
``spec.scalars(t, hp, gstate)``, which returns ``(row, new_gstate)``: a tuple
of ``len(spec.slots)`` floats, slot ``j`` holding the value named
``spec.slots[j]``, and the algorithm's group state after this step (NAdam's
running ``mu_product``; SGD's "momentum has started" flag) or None when it
keeps none.  Rows are padded with zeros to :data:`NSLOT` and stacked into a
``(groups, NSLOT)`` float64 table; each kernel rounds a row to the buffer
dtype once per chunk and computes in that dtype.

Slot names are declared once per algorithm module (its ``SLOTS`` tuple, the
spec's ``slots``); the reference and numba read ``k[B1]`` with the module's
constants, and setup.py renders them into the Cython enum
``<MODULE>_<NAME>`` (``ADAM_B1``).  The first three slots are shared by every
algorithm, :data:`SHARED_SLOTS`: ``GS`` the gradient multiplier (``-1`` when
maximizing), ``PS`` the parameter scale of decoupled weight decay and ``L2``
the L2 coefficient, so that every kernel starts from the same ``g = grad*GS;
p = param*PS; g = g + L2*p`` prologue.  The last two, ``EMA_D`` and
``EMA_OMD``, carry the parameter EMA's decay d and 1 - d, which the drivers
apply to every kind.

The engine's constants
======================
:data:`CHUNK`, :data:`LANES`, :data:`NSLOT` and :data:`MAXSTATE` are defined
here and nowhere else: the numba backend imports them and setup.py renders
them into the Cython enum of ``kernels/_kinds.pxi``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Elements per chunk, the unit of work handed to a thread: a chunk's streams
# (up to 11 of 64 KiB in float32) sit near L2 size.  The norm pass's order
# depends on it too.
CHUNK = 16384
# Independent float64 accumulators of the norm pass (kernels/_driver.pxi).
LANES = 16
# Bytes ahead of its use at which a pass asks for each cache line of its
# streams.  The hardware prefetchers alone keep too few misses in flight:
# for a norm pass, which reads one stream and nothing else, and for an
# update, whose square roots and divisions fill the out-of-order window
# (kernels/_driver.pxi, adamfast/_numba/_driver.py and _norm.py, and the
# benchmark's roofline-passes use it).  The norm pass asks into L2 only: a
# lone read stream keeps more lines in flight there than through the L1's
# fill buffers (16M float32 on an Intel Xeon: 8% faster; docs/benchmarks.md).
PREFETCH_AHEAD = 4096
# Elements per block of an update pass: the block's lines of every stream
# are requested (PREFETCH_AHEAD on) just before it runs.  A multiple of every
# vector width and of a line's elements.  Bigger blocks issue more requests
# at once than a core keeps in flight, and lose them: docs/benchmarks.md has
# the sizes measured.
PREFETCH_BLOCK = 64
# Scalar slots per group row.  Adam needs the most (16); the last two carry
# the parameter EMA's decay d and 1 - d, which the drivers apply to every kind.
NSLOT = 18
# State buffers a kind may declare (the Cython driver's pointer table).
MAXSTATE = 8
SHARED_SLOTS = ("GS", "PS", "L2")
GS, PS, L2 = range(3)
EMA_D, EMA_OMD = NSLOT - 2, NSLOT - 1



def describe(value):
    """A short description of a value for an error message."""
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _real(name, value, expected="a real number"):
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    return float(value)


def _ranged(lo, hi, lo_closed=True, hi_closed=False, text=None, type_text=False):
    """A check for a finite real in a range; the range is part of the message (of a
    TypeError's too with ``type_text``)."""
    expected = text if type_text else "a real number"

    def check(name, value):
        if type(value) is float and (lo <= value if lo_closed else lo < value) and \
                (value <= hi if hi_closed else value < hi):
            return value
        x = _real(name, value, expected)
        ok = (lo <= x if lo_closed else lo < x) and (x <= hi if hi_closed else x < hi)
        if not ok or math.isnan(x):
            raise ValueError(f"{name} must be {text}, got {value!r}")
        return x
    check.text = text
    return check


nonneg = _ranged(0.0, math.inf, text="a finite number >= 0")
unit_open = _ranged(0.0, 1.0, text="in [0, 1)")
unit_closed = _ranged(0.0, 1.0, hi_closed=True, text="in [0, 1]")
finite = _ranged(-math.inf, math.inf, lo_closed=False, text="a finite number", type_text=True)


def flag(name, value):
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {describe(value)}")


def learning_rate(name, value):
    """lr: a finite number >= 0, or a schedule (a callable of the 1-based step)."""
    if callable(value) and not isinstance(value, (numbers.Number, np.ndarray)):
        if isinstance(value, type):
            # float(t) == t: a type taken for a schedule would make lr the step count.
            raise TypeError(f"{name} must be a number or a schedule (a function of the step), "
                            f"got the type {value.__qualname__}")
        return value
    return nonneg(name, value)


def numbers_in(name, value, n, what):
    """``value`` as a tuple of ``n`` values: a tuple or a list only, the containers
    whose in-place edits a step can see (a tuple cannot change; a group's list is
    copied into the cache of checked settings), unlike an array's."""
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise TypeError(f"{name} must be a tuple or list of {what}, got {describe(value)}"
                        + ("" if isinstance(value, (tuple, list)) else
                           " (convert it with tuple(): an array edited in place would go "
                           "unseen)"))
    return tuple(value)


def pair(check):
    """A pair of values, each checked by ``check`` (torch's ``betas``)."""
    def check_pair(name, value):
        a, b = numbers_in(name, value, 2, "two numbers")
        return (check(f"{name}[0]", a), check(f"{name}[1]", b))
    return check_pair


# Values whose identity fixes their value for good: a cache keyed on identity may
# trust them (a list, or an array, can change in place after it was checked).
_IMMUTABLE = frozenset((float, int, bool, str, type(None), np.float64, np.float32, np.bool_))


def _immutable(value):
    return type(value) in _IMMUTABLE or (
        type(value) is tuple and all(type(v) in _IMMUTABLE for v in value))


class HPCache:
    """The validated hyperparameters of the last call, by the identity of the values
    given, so that a hot loop passing the same objects (literals, defaults, a
    variable) skips the checks: identical objects of immutable types validate to
    the same result, whereas equal ones may not (``True == 1`` is a bad float,
    ``-0.0 == 0.0`` another sign).  Any other call is validated in full.

    ``get(raw)`` -> the cached result or None; ``put(raw, result)`` after a
    successful validation of ``raw`` (a tuple, in a fixed order per cache).
    The result is shared between calls: never mutate it.
    """

    __slots__ = ("_last",)

    def __init__(self):
        self._last = (None, None)

    def get(self, raw):
        last_raw, result = self._last
        if last_raw is not None and len(raw) == len(last_raw) and \
                all(map(operator.is_, raw, last_raw)):
            return result
        return None

    def put(self, raw, result):
        if all(map(_immutable, raw)):
            self._last = (raw, result)  # one store: other threads see old or new


@dataclass(frozen=True)
class HP:
    """One hyperparameter: its torch name, default and check."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str = ""


@dataclass(frozen=True)
class Pass:
    """One sweep of a step over memory: the buffers it reads and writes, by role
    (``params``, ``grads`` or a state buffer's name).  A buffer both read and
    written moves twice."""

    name: str
    reads: tuple
    writes: tuple

    def bytes_per_param(self, itemsize):
        return (len(self.reads) + len(self.writes)) * itemsize


@dataclass(frozen=True)
class Reduction:
    """Per-tensor sums of squares that a kind's update needs (Lamb's trust ratio).

    Such a kind's step is two passes (adamfast._reduce, called from
    adamfast._engine.run_kernel).  Pass 1, ``reduce_kernel``, runs ``moments``
    per element: it writes the state buffers (params untouched) and returns the
    quantities named by ``sums``, whose squares are summed in float64 per chunk
    in the norm pass's lane order; the chunks are then added per tensor in
    chunk order.  ``scalar(sums, row)`` turns one tensor's sums (a tuple of
    floats, in ``sums`` order) and its group's float64 row into one float64
    value, written into slot ``slot`` of that tensor's row.  Pass 2 is an
    ordinary ``family_kernel`` call of the kind (its element function reads the
    new state and that slot and writes params), with one scalar row per tensor.

    sums     names of the quantities (``("param", "update")``)
    slot     the slot name, in the spec's ``slots``, that receives the scalar
    scalar   ``(sums, row) -> float``
    moments  ``moments_<kind>(p, g, s, k) -> tuple of arrays``, the NumPy
             reference of pass 1 (it writes ``s`` and returns the quantities)
    """

    sums: tuple
    slot: str
    scalar: Callable
    moments: Callable


@dataclass(frozen=True)
class Spec:
    """An algorithm, declared once.

    name       the class name (``"Adam"``)
    kinds      structural variant -> names of its state buffers, in kernel
               order (at most MAXSTATE); each kind has one element function
               per backend
    slots      the names of the scalar row's slots, in order, starting with
               SHARED_SLOTS (see the module docstring)
    hyper      the hyperparameters, in torch's order, with defaults and checks
    scalars    ``(t, hp, gstate) -> (row, new_gstate)``; see the module docstring
    kind_of    ``(list of group hp dicts) -> kind``: the smallest kind that
               serves every group (structural switches are per-group flags
               inside a kind, so groups may differ)
    check      cross-field checks of one group's hp (raise ValueError)
    state_init ``(buffer name, hp) -> fill value`` before the first step
    gstate     the group state before the first step (a dict), or None
    gstate_checks  name -> check of a group-state entry given from outside (a
               functional step's keyword, a state_dict); undeclared entries
               are checked by the type of their initial value (a flag, or a
               finite number)
    peer       the torch class (``"torch.optim.Adam"``) or formula the tests
               compare with
    fixed      hyperparameters a class pins (AdamW's decoupled decay) and
               does not take as keywords
    torch_scalar_state  the scalar (0-d) entries of the torch peer's per-param
               state, for adamfast.torch's state_dict (SGD: none; NAdam: step
               and mu_product)
    torch_step_in_group  the torch peer counts steps per param group, in
               ``group["step"]``, not per param (timm's Adan and Lamb): the count
               advances at every ``step()`` call, for every group, a param
               without a gradient included (it is not updated, and its first
               gradient meets the group's count); adamfast.torch's step,
               state_dict and load_state_dict do the same
    first_slot the slot that is 1.0 on a param's first step, where the kernel
               starts a state buffer from the gradient (Adan's previous
               gradient): ``scalars`` sets it at t == 1, and a front end whose
               count is the group's (``torch_step_in_group``) sets it too for a
               param that first has a gradient at a later count
    torch_only the peer's constructor keywords that adamfast.torch accepts and
               ignores, as ``(name, default)`` pairs (timm's ``foreach``)
    torch_extra_keywords  hyperparameters of the spec that the torch peer's
               signature lacks (Adam's ``eps_hat``): adamfast.torch appends
               them as keyword-only arguments, with the spec's defaults; any
               other hyperparameter missing from torch's signature is an error
    torch_sparse_grads  the torch peer takes a sparse COO gradient (SGD,
               Adagrad); adamfast.torch then does too, the others refuse one
               with torch's RuntimeError
    torch_sparse_check  ``(hp, where) -> None``: a check of a group's hp when
               a sparse gradient arrives (Adagrad refuses eps=0); raises
               ValueError naming ``where``
    torch_state_at_construction  the torch peer's constructor creates the
               per-param state (Adagrad's step and sum), so adamfast.torch's does
    torch_betas_alike  the torch peer refuses ``betas`` that mix a float and a
               Tensor (Adam, AdamW), and so does adamfast.torch
    reduce     kind -> :class:`Reduction`, for a kind whose update needs
               per-tensor sums (two passes; see Reduction)
    clip       the formula of the guard's ``max_grad_norm`` (adamfast._guard):
               ``"torch"`` (clip_grad_norm_'s, the default) or ``"timm"``
               (grads / max(norm / max_grad_norm, 1), no 1e-6).  A spec with a
               hyperparameter named ``max_grad_norm`` (Lamb) makes it the
               guard's clip; adamfast.torch reads ``opt.defaults`` at each step,
               as timm does (a group's own value is kept, not used)
    c_step     ``(backend, params, grads, states, hp) -> f(t, nthreads) or None``:
               a backend's C version of the whole step over the flat buffers,
               scalars included (Adam's: the cython backend's adam_call), which
               the optimizer calls when the group is unchanged; ``f`` returns
               True once it has written step t, False to decline
    gstate_from_step  for the functional step: ``(name, t) -> value`` when
               the group state follows from the step alone (SGD's momentum
               starts at step 1); otherwise the caller carries it
    functional_step  the name of the hand-written functional step serving
               this algorithm (Adam's and AdamW's: ``adam_step``); None (the
               default) makes adamfast.functional generate ``<name>_step``
    """

    name: str
    kinds: dict
    hyper: tuple
    scalars: Callable
    kind_of: Callable
    reference: dict
    slots: tuple = SHARED_SLOTS
    check: Callable | None = None
    state_init: Callable | None = None
    gstate: dict | None = None
    gstate_checks: dict = field(default_factory=dict)
    peer: str = ""
    fixed: dict = field(default_factory=dict)
    gstate_from_step: Callable | None = None
    c_step: Callable | None = None
    torch_scalar_state: tuple = ("step",)
    torch_step_in_group: bool = False
    first_slot: str | None = None
    torch_only: tuple = ()
    torch_extra_keywords: tuple = ()
    torch_sparse_grads: bool = False
    torch_sparse_check: Callable | None = None
    torch_state_at_construction: bool = False
    torch_betas_alike: bool = False
    functional_step: str | None = None
    reduce: dict = field(default_factory=dict)
    clip: str = "torch"
    doc: str = ""

    @property
    def defaults(self):
        return {h.name: h.default for h in self.hyper}

    def state_names(self, kind):
        return self.kinds[kind]

    def __post_init__(self):
        for kind, names in self.kinds.items():
            if len(names) > MAXSTATE:
                raise ValueError(f"{self.name}: kind {kind!r} has {len(names)} state buffers, "
                                 f"at most MAXSTATE={MAXSTATE}")
        slots = self.slots
        if tuple(slots[:len(SHARED_SLOTS)]) != SHARED_SLOTS or len(set(slots)) != len(slots) \
                or len(slots) > NSLOT - 2 or not all(n.isidentifier() for n in slots) \
                or any(n in ("EMA_D", "EMA_OMD") for n in slots):
            raise ValueError(f"{self.name}: slots must be distinct identifiers starting with "
                             f"{SHARED_SLOTS}, at most NSLOT - 2 = {NSLOT - 2} of them, got "
                             f"{slots}")
        for kind, red in self.reduce.items():
            if kind not in self.kinds or red.slot not in slots:
                raise ValueError(f"{self.name}: reduce declares kind {kind!r} and slot "
                                 f"{red.slot!r}; both must be the spec's")
        if not set(self.torch_extra_keywords) <= set(self.defaults):
            raise ValueError(f"{self.name}: torch_extra_keywords must name hyperparameters of "
                             f"the spec, got {self.torch_extra_keywords}")
        if self.torch_sparse_check is not None and not self.torch_sparse_grads:
            raise ValueError(f"{self.name}: torch_sparse_check is set but torch_sparse_grads "
                             f"is False")
        if self.first_slot is not None and self.first_slot not in slots:
            raise ValueError(f"{self.name}: first_slot must be one of the slots, got "
                             f"{self.first_slot!r}")
        if self.clip not in ("torch", "timm"):
            raise ValueError(f"{self.name}: clip must be 'torch' or 'timm', got {self.clip!r}")
        seen = []
        for names in self.kinds.values():
            seen += [n for n in names if n not in seen]
        # Frozen: computed once here, read on every step.
        object.__setattr__(self, "_all_state", tuple(seen))
        object.__setattr__(self, "first_index", None if self.first_slot is None
                           else slots.index(self.first_slot))
        object.__setattr__(self, "_hp_names", tuple(h.name for h in self.hyper))
        object.__setattr__(self, "_checks", tuple((h.name, h.check) for h in self.hyper))
        object.__setattr__(self, "_gstate_checks", {
            name: self.gstate_checks.get(name) or (flag if isinstance(value, bool) else finite)
            for name, value in (self.gstate or {}).items()})

    def all_state_names(self):
        return self._all_state

    def passes(self, kind):
        """The sweeps over memory of one step with the spec's defaults, in order.

        One ``update`` pass reads params, grads and every state buffer and
        writes params and every state buffer.  A kind that reduces per tensor
        makes two: ``moments`` reads params, grads and the state and writes the
        state; ``apply`` reads params and the state and writes params.  The
        guard's ``norm`` pass, which reads the grads, comes first when the spec
        clips by default (Lamb).
        """
        states = tuple(self.kinds[kind])
        if kind not in self.reduce:
            return (Pass("update", ("params", "grads", *states), ("params", *states)),)
        norm = (Pass("norm", ("grads",), ()),) if self.defaults.get(
            "max_grad_norm") is not None else ()
        return norm + (Pass("moments", ("params", "grads", *states), states),
                       Pass("apply", ("params", *states), ("params",)))

    def bytes_per_param(self, kind, itemsize):
        """Memory traffic of one step, every pass of it (Lamb: 4 + 24 + 16 =
        44 B in float32)."""
        return sum(ps.bytes_per_param(itemsize) for ps in self.passes(kind))

    def validate(self, hp, where=""):
        """Check one group's hyperparameters; return a new dict of clean values.

        ``hp`` must hold every hyperparameter of the spec (missing ones are an
        error naming them); unknown keys are an error too.
        """
        out = {}
        for name, check in self._checks:
            if name not in hp:
                raise ValueError(f"{where}{name} is missing")
            # The label only matters in an error: no string built for the common case.
            out[name] = check(where + name if where else name, hp[name])
        if self.check is not None:
            self.check(out, where)
        out.update(self.fixed)
        return out

    def check_gstate(self, name, value, label=None):
        """One entry of the group state, checked as declared; ``label`` names it in errors."""
        return self._gstate_checks[name](label or name, value)

    def validate_gstate(self, gstate, where=""):
        """Check one group's state (a mapping with exactly the spec's keys); return a new
        dict of clean values.  Errors name ``{where}[{key!r}]``, or the bare key."""
        if not isinstance(gstate, Mapping) or set(gstate) != set(self._gstate_checks):
            raise ValueError(f"{where or 'group state'} must be a dict with keys "
                             f"{sorted(self._gstate_checks)}, got {describe(gstate)}")
        return {name: self.check_gstate(name, value, f"{where}[{name!r}]" if where else name)
                for name, value in gstate.items()}

    def check_names(self, keys, where=""):
        known = {h.name for h in self.hyper}
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise TypeError(f"{where}unknown hyperparameter(s) {unknown} for {self.name}; "
                            f"expected some of {sorted(known)}")
