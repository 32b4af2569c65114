"""The optimizer classes, all on one base: one flat buffer per quantity, one kernel call per step.

``adamfast.Adam, AdamW, Adamax, NAdam, RAdam, Adagrad, RMSprop, SGD, Adadelta,
Lion`` take ``params`` and then exactly ``torch.optim``'s keywords and
defaults for that class (Lion: optax's), plus ``backend=``.  ``params`` takes
torch's forms: an array, a list of arrays, or a list of group dicts
``{"params": [arrays], **overrides}`` where any hyperparameter may be
overridden per group.

The optimizer copies the arrays it is given into one contiguous parameter
buffer at construction and from then on *owns* them: ``opt.params`` are
views into that buffer (in the order given, groups concatenated), and they
are what training must read and what the optimizer updates.  Gradients live
in one flat buffer too; ``opt.grads`` are views of it, to be filled in place
(``np.copyto(opt.grads[i], g)`` or a backward pass writing ``out=``).  So a
step is one kernel call over everything, with no per-step copy, whatever the
number of arrays and groups.

Example::

    opt = adamfast.AdamW([w, b], lr=1e-3)
    w, b = opt.params                 # the live arrays from now on
    for batch in data:
        gw, gb = opt.grads
        compute_gradients(w, b, batch, out=(gw, gb))
        opt.step()

``opt.param_groups`` is a list of dicts as in torch; their hyperparameters
may be changed between steps (that is how schedules and torch-style
schedulers work) and are validated before the next step writes anything.
``lr`` may also be a schedule: a callable of the 1-based step
(:mod:`adamfast.schedules`).  Structural switches (AMSGrad, RMSprop's
``centered``/``momentum``, SGD's ``momentum``) decide which state buffers
exist; the optimizer allocates the union over its groups, and a switch
turned on later allocates its buffer (zeros) at the next step.

The structure of ``param_groups`` is the flat buffers' layout:
:meth:`Optimizer.add_param_group` adds a group (and lays the buffers out
anew); any other change (removing, reordering or replacing a group,
changing a group's ``"params"``) is refused with the same ValueError on
every backend, before anything is written.

A step is atomic as seen from Python: ``step_count`` and the group state
advance with the buffers or not at all, also when a KeyboardInterrupt
arrives during the kernel (it is raised as the kernel returns).
``step()`` calls on one optimizer from several threads run one at a time
(a lock per optimizer: different optimizers never wait for each other).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping

import numpy as np

from . import _dispatch, _guard
# The flat state and the step are adamfast._core's; its private names stay
# importable from here (adamfast.optim._kernel_wrote, ...).
from ._core import _FLOATS, StepCore, _kernel_wrote  # noqa: F401
from ._validate import MAX_STEP
from ._core import _layout, _Params, _split, _views_of  # noqa: F401
from .algorithms import ALGORITHMS
from .algorithms._spec import describe, learning_rate  # noqa: F401

_UNSET = object()  # max_grad_norm not given

__all__ = ["Optimizer", *ALGORITHMS]  # the classes are made from the registry, at the end


def _as_groups(params):
    """torch's three forms of ``params`` -> [(arrays, overrides)]."""
    if isinstance(params, np.ndarray):
        return [([params], {})]
    if isinstance(params, Mapping):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"params must be an array, a list of arrays or a list of group dicts, "
                        f"got {describe(params)}") from None
    if not items:
        raise ValueError("params must hold at least one array, got an empty sequence")
    if all(isinstance(x, Mapping) for x in items):
        groups = []
        for i, g in enumerate(items):
            if "params" not in g:
                raise ValueError(f"param group {i} must have a 'params' key, got keys {sorted(g)}")
            p = g["params"]
            arrays = [p] if isinstance(p, np.ndarray) else list(p)
            if not arrays:
                raise ValueError(f"param group {i} has an empty 'params' list")
            groups.append((arrays, {k: v for k, v in g.items() if k != "params"}))
        return groups
    if any(isinstance(x, Mapping) for x in items):
        raise TypeError("params must be all arrays or all group dicts, not a mixture")
    return [(items, {})]


class Optimizer(StepCore):
    """The base of every optimizer class: everything is driven by ``spec``.

    Attributes
    ----------
    params, grads : tuple of ndarray
        Views into ``flat_params`` and ``flat_grads``, shaped like the inputs.
    flat_params, flat_grads : ndarray
        The flat buffers.  Every state buffer of the algorithm is an
        attribute too (``opt.exp_avg``, ``opt.square_avg``, ...); one that
        the current settings do not use has length 0.  They are owned by the
        optimizer and cannot be rebound (copy into them instead).
    param_groups : list of dict
        One per group, as torch: ``"params"`` (the group's live views) and
        the hyperparameters.
    step_count : int
        Number of steps taken; the next :meth:`step` is step ``step_count + 1``.
    """

    spec = None  # set by each subclass
    _rebind_checked = frozenset()

    def __init__(self, params, *args, backend="auto", max_grad_norm=_UNSET, skip_nonfinite=False,
                 ema_decay=None, **kwargs):
        spec = self.spec
        # Lamb's max_grad_norm is a hyperparameter of its spec and the guard's clip.
        own_clip = "max_grad_norm" in spec.defaults
        if own_clip and max_grad_norm is not _UNSET:
            kwargs["max_grad_norm"] = max_grad_norm
        bound = self._signature().bind(params, *args, **kwargs)
        defaults = {name: value for name, value in bound.arguments.items()
                    if name not in ("params", "backend", "skip_nonfinite", "ema_decay")}
        defaults = {h.name: defaults.get(h.name, h.default) for h in spec.hyper}
        if own_clip:
            max_grad_norm = defaults["max_grad_norm"]
        elif max_grad_norm is _UNSET:
            max_grad_norm = None
        self._backend = _dispatch.get_backend(backend)
        guard = _guard.check_options(max_grad_norm, skip_nonfinite, ema_decay)
        self.defaults = defaults
        spec.validate(self._numeric_lr(defaults, ""), "")

        groups = _as_groups(params)
        dtype = None
        arrays = []
        seen = {}  # id -> first index (the arrays are alive in `arrays` meanwhile)
        hps = []
        for gi, (garrays, overrides) in enumerate(groups):
            spec.check_names(overrides, f"param_groups[{gi}]: ")
            hp = dict(defaults)
            hp.update(overrides)
            hps.append(hp)
            for a in garrays:
                i = len(arrays)
                if not isinstance(a, np.ndarray) or a.dtype not in _FLOATS:
                    raise TypeError(f"params[{i}] must be a numpy.ndarray of float32 or float64, "
                                    f"got {describe(a)}")
                if isinstance(a, np.ma.MaskedArray):
                    raise TypeError(f"params[{i}] must be a plain numpy.ndarray; a masked array's "
                                    f"mask would be ignored")
                if dtype is None:
                    dtype = a.dtype
                elif a.dtype != dtype:
                    raise TypeError(f"params[{i}] must have the dtype of params[0] ({dtype}), got "
                                    f"{a.dtype}: one optimizer holds one dtype")
                if seen.setdefault(id(a), i) != i:  # two copies that would drift apart
                    raise ValueError(f"params[{i}] is params[{seen[id(a)]}]: the same array "
                                     f"twice (a param belongs to one group, once)")
                arrays.append(a)
        wheres = [f"param_groups[{gi}]: " for gi in range(len(hps))]
        clean = [spec.validate(self._numeric_lr(hp, w), w) for hp, w in zip(hps, wheres)]

        self._setup(arrays, [len(g[0]) for g in groups], clean, hps, guard)

    # --- construction helpers ----------------------------------------------

    @classmethod
    def _signature(cls):
        return cls.__signature__

    @property
    def max_grad_norm(self):
        """Clip to this global L2 norm (None: no clipping); fixed at construction."""
        return self._max_grad_norm

    @property
    def skip_nonfinite(self):
        """Skip a step whose gradients hold an Inf or NaN; fixed at construction."""
        return self._skip_nonfinite

    @property
    def ema_decay(self):
        """The decay d of the parameter EMA (None: no EMA); fixed at construction."""
        return self._ema_decay

    @property
    def decoupled(self):
        """Decoupled weight decay (AdamW's) in group 0."""
        hp = dict(self.param_groups[0], **self.spec.fixed)
        return bool(hp.get("decoupled_weight_decay", False))

    @property
    def state(self):
        """The state buffers the current settings use, by torch's names (flat, live)."""
        return dict(self._state)

    @property
    def backend(self):
        """The backend in use: a concrete name, even if ``"auto"`` was asked for."""
        return self._backend.name

    @backend.setter
    def backend(self, value):
        backend = _dispatch.get_backend(value)
        with self._holding():
            self.__dict__.update(_backend=backend, _c_args=None, _run_obj=None,
                                 _cache=[None] * len(self._plists))  # replan: new kind ids

    # --- adding a param group --------------------------------------------------

    def add_param_group(self, param_group):
        """Add a group of arrays, as ``torch.optim.Optimizer.add_param_group``.

        ``param_group`` is a dict with ``"params"`` (an array or a list of
        arrays of the optimizer's dtype, none of them optimized already) and
        any hyperparameter overrides; the other hyperparameters are taken from
        ``opt.defaults``.  The arrays are copied into the optimizer, whose flat
        buffers are laid out anew: ``opt.params``, ``opt.grads``, the flat
        buffers, the state buffers, the EMA and every group's ``"params"``
        are new arrays afterwards (read them again), with the same values and
        state for the params already there and the gradients already in
        ``opt.grads``.  The new params start with fresh state (their EMA: a
        copy of them) and count their own steps from 1, as torch counts steps
        per param; ``step_count`` goes on counting the optimizer's steps, and
        an ``lr`` schedule gets that.  Everything is checked first: a bad
        group changes nothing.

        This is the one change of structure ``param_groups`` takes: removing,
        reordering or replacing groups, or changing a group's ``"params"``,
        is refused.
        """
        with self._holding():
            self._add_param_group(param_group)

    def _add_param_group(self, param_group):
        self._check_structure()
        spec = self.spec
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict with a 'params' key (an array or a list "
                            f"of arrays) and hyperparameter overrides, got "
                            f"{describe(param_group)}")
        if "params" not in param_group:
            raise ValueError(f"param_group must have a 'params' key, got keys "
                             f"{sorted(param_group)}")
        given = param_group["params"]
        if isinstance(given, np.ndarray):
            arrays = [given]
        elif isinstance(given, (set, frozenset)):
            raise TypeError("param_group['params'] must be an array or an ordered sequence of "
                            "arrays; a set's order changes from run to run, got a set")
        else:
            try:
                arrays = list(given)
            except TypeError:
                raise TypeError(f"param_group['params'] must be an array or a list of arrays, "
                                f"got {describe(given)}") from None
        if not arrays:
            raise ValueError("param_group['params'] is empty: a group holds at least one array")
        overrides = {k: v for k, v in param_group.items() if k != "params"}
        spec.check_names(overrides, "param_group: ")
        dtype = self.flat_params.dtype
        for i, a in enumerate(arrays):
            where = f"param_group['params'][{i}]"
            if not isinstance(a, np.ndarray) or a.dtype not in _FLOATS:
                raise TypeError(f"{where} must be a numpy.ndarray of float32 or float64, got "
                                f"{describe(a)}")
            if isinstance(a, np.ma.MaskedArray):
                raise TypeError(f"{where} must be a plain numpy.ndarray; a masked array's mask "
                                f"would be ignored")
            if a.dtype != dtype:
                raise TypeError(f"{where} must have the optimizer's dtype ({dtype}), got "
                                f"{a.dtype}: one optimizer holds one dtype")
            if np.may_share_memory(a, self.flat_params):
                raise ValueError(f"{where} is already optimized by this optimizer (it is a view "
                                 f"of opt.flat_params): a param belongs to one group only")
            if any(a is b for b in arrays[:i]):
                raise ValueError(f"{where} appears twice in param_group['params']: a param "
                                 f"belongs to one group only")
        hp = dict(self.defaults)
        hp.update(overrides)
        clean = spec.validate(self._numeric_lr(hp, "param_group: "), "param_group: ")

        # Valid: lay out new buffers (an allocation failure changes nothing yet).
        plist = self._append_group(arrays, clean)
        self.param_groups.append(dict(hp, params=plist))

    # --- checkpointing -------------------------------------------------------

    def state_dict(self):
        """A snapshot of the optimizer state: copies, not views.

        Holds ``step``, every state buffer in use (flat, by torch's names),
        ``param_groups`` (hyperparameters per group, and the indices of its
        params, as torch), the group state of algorithms that keep one
        (NAdam's ``mu_product``), and the algorithm, shapes and dtype it
        belongs to.  The parameters themselves are not included (save
        ``opt.flat_params`` alongside, as with PyTorch).  ``group_step`` holds
        each group's own step count: ``step`` but for a group added later
        (:meth:`add_param_group`).
        """
        with self._holding():
            self._check_structure()
            groups, first = [], 0
            for group in self.param_groups:
                n = len(group["params"])
                entry = {k: v for k, v in group.items() if k != "params"}
                entry["params"] = list(range(first, first + n))
                first += n
                groups.append(entry)
            step = self.step_count
            out = {"algorithm": self.spec.name, "step": step,
                   "group_step": [step - j for j in self._joined],
                   "param_groups": groups, "group_state": [dict(g) if g else None
                                                           for g in self._gstate],
                   "shapes": [tuple(s) for s in self._shapes],
                   "dtype": str(self.flat_params.dtype)}
            for name in self.spec.all_state_names():
                out[name] = self._state[name].copy() if name in self._state else None
            if self.flat_ema is not None:
                out["ema"] = self.flat_ema.copy()
            return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; everything is checked before anything changes."""
        with self._holding():
            self._check_structure()
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict):
        spec = self.spec
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping from state_dict(), got "
                            f"{describe(state_dict)}")
        # What np.savez(**opt.state_dict()) then np.load(..., allow_pickle=True)
        # gives back: lists, dicts, numbers and None as 0-d arrays.
        state_dict = {k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype == object
                          else v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v)
                      for k, v in state_dict.items()}
        missing = {"algorithm", "step", "param_groups", "shapes", "dtype"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}")
        if state_dict["algorithm"] != spec.name:
            raise ValueError(f"state_dict['algorithm'] must be {spec.name!r} to fit this "
                             f"optimizer, got {state_dict['algorithm']!r}")
        dtype = str(self.flat_params.dtype)
        if str(state_dict["dtype"]) != dtype:
            raise TypeError(f"state_dict['dtype'] must be {dtype!r} to fit this optimizer, got "
                            f"{state_dict['dtype']!r}")
        try:
            shapes = [tuple(int(d) for d in s) for s in state_dict["shapes"]]
        except (TypeError, ValueError):
            raise ValueError(f"state_dict['shapes'] must be a list of shapes, got "
                             f"{describe(state_dict['shapes'])}") from None
        if shapes != list(self._shapes):
            raise ValueError(f"state_dict['shapes'] must be {list(self._shapes)} to fit this "
                             f"optimizer, got {shapes}")
        step = state_dict["step"]
        if isinstance(step, np.ndarray) and step.ndim == 0:
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0 or \
                step >= MAX_STEP - 1:
            raise ValueError(f"state_dict['step'] must be an integer >= 0 and below 2**1023 - "
                             f"1, got {describe(step)}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict['param_groups'] must be a list of "
                             f"{len(self.param_groups)} groups, got {describe(groups)}")
        names = self._hp_names
        new_hps = []
        for gi, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, Mapping):
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a mapping, got "
                                f"{describe(saved)}")
            if len(saved.get("params", ())) != len(own["params"]):
                raise ValueError(f"state_dict['param_groups'][{gi}] holds "
                                 f"{len(saved.get('params', ()))} params, this group "
                                 f"{len(own['params'])}")
            hp = {n: saved[n] for n in names if n in saved}
            absent = [n for n in names if n not in saved]
            if absent:
                raise ValueError(f"state_dict['param_groups'][{gi}] is missing {absent}")
            spec.validate(self._numeric_lr(hp, f"state_dict['param_groups'][{gi}]: "),
                          f"state_dict['param_groups'][{gi}]: ")
            new_hps.append(hp)
        kind = spec.kind_of([self._numeric_lr(h) for h in new_hps])
        needed = spec.state_names(kind)
        n = self.flat_params.size
        absent = [name for name in needed if name not in state_dict]
        if absent:
            raise ValueError(f"state_dict is missing {absent}")
        for name in needed:
            arr = state_dict.get(name)
            if not isinstance(arr, np.ndarray) or arr.dtype != self.flat_params.dtype \
                    or arr.size != n:
                raise ValueError(f"state_dict[{name!r}] must be a {dtype} array of {n} elements, "
                                 f"got {describe(arr)}")
        ema = state_dict.get("ema")
        if self.flat_ema is not None and not (isinstance(ema, np.ndarray)
                                              and ema.dtype == self.flat_params.dtype
                                              and ema.size == n):
            raise ValueError(f"state_dict['ema'] must be a {dtype} array of {n} elements (this "
                             f"optimizer keeps a parameter EMA), got {describe(ema)}")
        gstate = state_dict.get("group_state")
        if spec.gstate is not None:
            if not isinstance(gstate, (list, tuple)) or len(gstate) != len(groups) or not all(
                    isinstance(g, Mapping) and set(g) == set(spec.gstate) for g in gstate):
                raise ValueError(f"state_dict['group_state'] must be a list of "
                                 f"{len(groups)} dicts with keys {sorted(spec.gstate)}, got "
                                 f"{describe(gstate)}")
            gstate = [spec.validate_gstate(g, f"state_dict['group_state'][{gi}]")
                      for gi, g in enumerate(gstate)]
        # Absent from a state_dict of before add_param_group: every group counts `step`.
        group_step = state_dict.get("group_step")
        if group_step is None:
            joined = (0,) * len(groups)
        else:
            try:
                group_step = list(group_step)
            except TypeError:
                group_step = None
            if group_step is None or len(group_step) != len(groups) or not all(
                    isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))
                    and 0 <= s <= step for s in group_step):
                raise ValueError(f"state_dict['group_step'] must be a list of {len(groups)} "
                                 f"integers in [0, step={step}] (each group's own step count), "
                                 f"got {describe(state_dict['group_step'])}")
            joined = tuple(int(step - s) for s in group_step)
        # Everything fits: now write, into the existing buffers.
        if kind != self._kind:
            self._grow(kind, new_hps)
        for name in needed:
            np.copyto(self._state[name], state_dict[name].reshape(-1))
        if self.flat_ema is not None:
            np.copyto(self.flat_ema, ema.reshape(-1))
        for own, hp in zip(self.param_groups, new_hps):
            own.update(hp)
        self._cache = [None] * len(self.param_groups)
        self._c_args = None  # made from the groups as they were
        if spec.gstate is not None:
            self._gstate = gstate
        self.__dict__.update(step_count=int(step), _joined=joined)
        self._fast = self._fast_ok()

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items() if k != "params")
        return (f"{type(self).__name__}({len(self._shapes)} arrays in {len(self.param_groups)} "
                f"group(s), {self.flat_params.size} {self.flat_params.dtype} params, {hp}, "
                f"backend={self.backend!r}, step_count={self.step_count})")


# The methods that hold the optimizer's lock: a call of one of them from inside
# another, in one thread, is refused rather than left to deadlock.
Optimizer._LOCKED_CODE = _LOCKED_CODE = frozenset(f.__code__ for f in (
    Optimizer.step, Optimizer.add_param_group, Optimizer.state_dict,
    Optimizer.load_state_dict, Optimizer.__getstate__, Optimizer.backend.fset))


def _make_class(spec, doc):
    """A class with torch's signature, from the spec."""
    P = inspect.Parameter
    sig = inspect.Signature(
        [P("params", P.POSITIONAL_OR_KEYWORD)]
        + [P(h.name, P.POSITIONAL_OR_KEYWORD, default=h.default) for h in spec.hyper]
        + [P("backend", P.KEYWORD_ONLY, default="auto")]
        + ([P("max_grad_norm", P.KEYWORD_ONLY, default=None)]
           if "max_grad_norm" not in spec.defaults else [])  # Lamb's is a hyperparameter
        + [P("skip_nonfinite", P.KEYWORD_ONLY, default=False),
           P("ema_decay", P.KEYWORD_ONLY, default=None)])
    cls = type(spec.name, (Optimizer,), {
        "spec": spec, "__signature__": sig, "__doc__": doc, "__module__": __name__,
        "_hp_names": tuple(h.name for h in spec.hyper),
        "_getter": staticmethod(operator.itemgetter("params", *(h.name for h in spec.hyper))),
        "_rebind_checked": frozenset(Optimizer._OWNED + spec.all_state_names()
                              + tuple(h.name for h in spec.hyper) + ("param_groups",))})
    return cls


def _doc(spec):
    hp = "\n".join(f"    {h.name} : default {h.default!r}" + (f"\n        {h.doc}" if h.doc else "")
                   for h in spec.hyper)
    module = spec.reference[next(iter(spec.kinds))].__module__
    return (f"{spec.name} over NumPy arrays in one flat buffer (peer: {spec.peer}).\n\n"
            f"Parameters\n----------\nparams : array, list of arrays or list of group dicts\n"
            f"{hp}\nbackend : {{'auto', 'numpy', 'numba', 'cython'}}\n\n"
            f"The maths is stated in :mod:`{module}`; the rest is :class:`Optimizer`'s.")


# One class per registry entry (adamfast.Adam, ..., adamfast.Lion).
CLASSES = {name: _make_class(spec, _doc(spec)) for name, spec in ALGORITHMS.items()}
globals().update(CLASSES)