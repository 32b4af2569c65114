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
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping

import numpy as np

from . import _dispatch, _engine, _guard
from .algorithms import ALGORITHMS
from .algorithms._spec import describe, learning_rate
from ._memory import zeros_buffers

__all__ = ["Optimizer", *ALGORITHMS]  # the classes are made from the registry, at the end

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


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


class Optimizer:
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
    _guarded = frozenset()

    def __init__(self, params, *args, backend="auto", max_grad_norm=None, skip_nonfinite=False,
                 ema_decay=None, **kwargs):
        spec = self.spec
        bound = self._signature().bind(params, *args, **kwargs)
        defaults = {name: value for name, value in bound.arguments.items()
                    if name not in ("params", "backend", "max_grad_norm", "skip_nonfinite",
                                    "ema_decay")}
        defaults = {h.name: defaults.get(h.name, h.default) for h in spec.hyper}
        self._backend = _dispatch.get_backend(backend)
        guard = _guard.check_options(max_grad_norm, skip_nonfinite, ema_decay)
        self.defaults = defaults
        spec.validate(self._numeric_lr(defaults), "")

        groups = _as_groups(params)
        dtype = None
        arrays = []
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
                arrays.append(a)
        clean = [spec.validate(self._numeric_lr(hp), f"param_groups[{gi}]: ")
                 for gi, hp in enumerate(hps)]

        self._shapes = tuple(a.shape for a in arrays)
        sizes = [a.size for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        total = offsets[-1]
        self._slices = tuple(slice(offsets[i], offsets[i + 1]) for i in range(len(arrays)))
        counts = [len(g[0]) for g in groups]
        firsts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        self._bounds = [(offsets[firsts[g]], offsets[firsts[g + 1]]) for g in range(len(groups))]
        self._chunks = _engine.chunk_table(self._bounds)

        kind = spec.kind_of(clean)
        names = spec.state_names(kind)
        # One staggered allocation for params, grads and the state: see adamfast._memory.
        bufs = zeros_buffers(total, dtype, 2 + len(names))
        self.__dict__["flat_params"], self.__dict__["flat_grads"] = bufs[0], bufs[1]
        self._state = dict(zip(names, bufs[2:]))
        self._empty = np.zeros(0, dtype)
        for a, s in zip(arrays, self._slices):
            self.flat_params[s] = a.reshape(-1)
        for name in names:
            self._init_state(name, clean)
        self.__dict__["params"] = self._views(self.flat_params)
        self.__dict__["grads"] = self._views(self.flat_grads)
        # The guarded step's options (fixed at construction) and the parameter
        # EMA, which starts as a copy of the initial params.
        self._max_grad_norm, self._skip_nonfinite, self._ema_decay = guard
        self._guard_on = self._max_grad_norm is not None or self._skip_nonfinite
        if self._ema_decay is not None:
            self.__dict__["flat_ema"] = self.flat_params.copy()
            self.__dict__["ema_params"] = self._views(self.flat_ema)
        else:
            self.__dict__["flat_ema"] = None
            self.__dict__["ema_params"] = None
        self.param_groups = []
        for g, hp in enumerate(hps):
            group = {"params": list(self.params[firsts[g]:firsts[g + 1]])}
            group.update(hp)
            self.param_groups.append(group)
        self._gstate = [dict(spec.gstate) if spec.gstate else None for _ in groups]
        # Per group: (raw hp tuple, validated hp, lr is a schedule).
        self._cache = [None] * len(groups)
        self._kind = kind
        self._plan = None  # (kind id, state slots): set at the first step (_replan)
        self.step_count = 0

    # --- construction helpers ----------------------------------------------

    @classmethod
    def _signature(cls):
        return cls.__signature__

    @staticmethod
    def _numeric_lr(hp):
        """Validate with a schedule's place taken by a number (it is checked each step)."""
        if callable(hp.get("lr")) and not isinstance(hp.get("lr"), (int, float)):
            learning_rate("lr", hp["lr"])
            hp = dict(hp, lr=0.0)
        return hp

    def _init_state(self, name, groups):
        buf = self._state[name]
        if self.spec.state_init is None:
            buf.fill(0)
            return
        for (lo, hi), hp in zip(self._bounds, groups):
            buf[lo:hi] = self.spec.state_init(name, hp)

    def _views(self, flat):
        return tuple(flat[s].reshape(shape) for s, shape in zip(self._slices, self._shapes))

    # --- attributes: the buffers are owned, never rebound --------------------

    _OWNED = ("params", "grads", "flat_params", "flat_grads", "flat_ema", "ema_params")

    def __getattr__(self, name):
        spec = type(self).spec
        if spec is not None and name in spec.all_state_names():
            return self.__dict__["_state"].get(name, self.__dict__["_empty"])
        if spec is not None and name in type(self)._hp_names and "param_groups" in self.__dict__:
            # A hyperparameter as an attribute (adamfast 0.1's API): group 0's value.
            return self.__dict__["param_groups"][0][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name not in self._guarded:
            object.__setattr__(self, name, value)
            return
        spec = self.spec
        if name in self._OWNED or (spec is not None and name in spec.all_state_names()):
            raise AttributeError(f"{name} is owned by the optimizer and cannot be rebound (the "
                                 f"kernels rely on its size); copy into it instead: "
                                 f"opt.{name}[...] = value")
        if spec is not None and name in type(self)._hp_names and "param_groups" in self.__dict__:
            # Setting a hyperparameter sets it in every group, checked first.
            check = next(h.check for h in spec.hyper if h.name == name)
            value = check(name, value)
            for group in self.param_groups:
                group[name] = value
            self.defaults[name] = value
            return
        object.__setattr__(self, name, value)

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
        self._backend = _dispatch.get_backend(value)
        self._cache = [None] * len(self.param_groups)  # replan with the new kind ids

    # --- the step ------------------------------------------------------------

    def _check_grads(self, grads):
        """Validate a gradient argument fully before anything is copied."""
        dtype = self.flat_params.dtype
        if isinstance(grads, np.ndarray):
            if grads.dtype != dtype or grads.size != self.flat_grads.size:
                raise ValueError(f"grads given as one array must be {dtype} with "
                                 f"{self.flat_grads.size} elements (all params, in order), got "
                                 f"{describe(grads)}")
            return [(self.flat_grads, grads.reshape(-1))]
        grads = list(grads)
        if len(grads) != len(self._shapes):
            raise ValueError(f"grads must hold one array per parameter ({len(self._shapes)}), got "
                             f"{len(grads)}")
        pairs = []
        for i, (g, dst) in enumerate(zip(grads, self.grads)):
            if isinstance(g, np.generic):  # a 0-d param's gradient, as arithmetic returns it
                g = np.asarray(g)
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {describe(g)}")
            if g.dtype != dtype:
                raise TypeError(f"grads[{i}] must have dtype {dtype} like the params (no silent "
                                f"precision change), got {g.dtype}")
            if g.shape != dst.shape:
                raise ValueError(f"grads[{i}] must have shape {dst.shape}, got {g.shape}")
            pairs.append((dst, g))
        return pairs

    def _group_hp(self, t):
        """Every group's validated hyperparameters for step t, and whether any
        group's settings changed since the last step (then they were checked)."""
        spec = self.spec
        names = self._hp_names
        getter = self._getter
        out = []
        changed = False
        for gi, group in enumerate(self.param_groups):
            try:
                raw = getter(group)
            except KeyError as exc:
                raise ValueError(f"param_groups[{gi}] is missing {exc}") from None
            cached = self._cache[gi]
            if cached is None or cached[0] != raw:
                hp = spec.validate(self._numeric_lr(dict(zip(names, raw))),
                                   f"param_groups[{gi}]: ")
                hp["lr"] = raw[0] if callable(raw[0]) else hp["lr"]
                cached = (raw, hp, callable(raw[0]))
                changed = True
            hp = cached[1]
            if callable(hp["lr"]):
                lr = hp["lr"](t)
                if callable(lr):
                    raise TypeError(f"param_groups[{gi}]: lr({t}) must return a number")
                hp = dict(hp, lr=learning_rate(f"param_groups[{gi}]: lr({t})", lr))
            out.append((hp, cached))
        return out, changed

    def _replan(self, hps):
        """The kind, its kernel id and its state buffers, after a change of settings."""
        kind = self.spec.kind_of(hps)
        if kind != self._kind:
            self._grow(kind, hps)
        state = tuple(self._state[n] for n in self.spec.state_names(kind))
        self._plan = (self._backend.kind_id(kind),
                      state + (self._empty,) * (3 - len(state)))
        self.__dict__.pop("_c_args", None)

    def step(self, grads=None, *, grad_scale=None):
        """Take one step; return a :class:`~adamfast.StepResult`.

        ``grads`` is optional: by default the step uses ``opt.grads`` as the
        caller filled them.  It may also be a sequence of arrays shaped like
        the params, or one flat array of all gradients; these are copied into
        ``opt.grads``.  ``grad_scale`` is the loss scale: the gradients are
        divided by it inside the kernel, never rewritten in memory.
        Everything (gradients, every group's hyperparameters) is checked
        first: a bad call changes nothing.  With ``skip_nonfinite``, a step
        whose gradients hold an Inf or NaN changes nothing either (params,
        state, EMA and step count) and reports ``skipped=True``.
        """
        t = self.step_count + 1
        if grads is None and grad_scale is None and len(self.param_groups) == 1 \
                and not self._guard_on and self.flat_ema is None:
            # The common case, kept short: ~25% of a small step is Python here.
            cached = self._cache[0]
            if cached is not None and not cached[2]:
                try:
                    same = self._getter(self.param_groups[0]) == cached[0]
                except KeyError:
                    same = False
                if same:
                    hp = cached[1]
                    if self._c_twin(t, hp):
                        self.__dict__["step_count"] = t
                        return _guard.PLAIN
                    row, new = self.spec.scalars(t, hp, self._gstate[0])
                    self._run((row,), t, (new,))
                    return _guard.PLAIN
        return self._step_general(grads, t, grad_scale)

    def _step_general(self, grads, t, grad_scale):
        spec = self.spec
        hps, changed = self._group_hp(t)
        pairs = self._check_grads(grads) if grads is not None else ()
        grad_scale = _guard.check_scale(grad_scale)
        rows, gstates = [], []
        for (hp, _), gs in zip(hps, self._gstate):
            row, new = spec.scalars(t, hp, gs)
            rows.append(row)
            gstates.append(new)
        # Everything is valid: from here on, write (the gradients first: the
        # guard reads them).
        if changed or self._plan is None:
            self._cache = [cached for _, cached in hps]
            self._replan([hp for hp, _ in hps])
        for dst, src in pairs:
            if dst is not src:
                np.copyto(dst, src)
        result = _guard.PLAIN
        nthreads = _dispatch.get_num_threads()
        if self._guard_on:
            nthreads = _guard.pass_threads(self._backend, self.flat_grads.size, nthreads)
        if grad_scale is not None or self._guard_on or self.flat_ema is not None:
            mult, norm, skipped = _guard.multiplier(
                self._backend, self.flat_grads, grad_scale, self._max_grad_norm,
                self._skip_nonfinite, nthreads)
            if skipped:
                return _guard.StepResult(norm, True)
            rows = [_guard.fold(row, mult, self._ema_decay) for row in rows]
            if norm is not None:
                result = _guard.StepResult(norm, False)
        self._run(rows, t, gstates, nthreads)
        return result

    def _run(self, rows, t, gstates, nthreads=None):
        kid, (s0, s1, s2) = self._plan
        b = self._backend
        if nthreads is None:
            nthreads = _dispatch.get_num_threads()
        ema = self.flat_ema
        # One group: the cython backend takes the row as a tuple in C, no table.
        if len(rows) > 1 or b.step_fast is None or not b.step_fast(
                kid, self.flat_params, self.flat_grads, s0, s1, s2, rows[0], nthreads, ema):
            b.kernel(kid, self.flat_params, self.flat_grads, s0, s1, s2,
                     _engine.scalar_table(rows), self._chunks, nthreads, ema)
        if self.spec.gstate is not None:
            self._gstate = list(gstates)
        self.__dict__["step_count"] = t

    def _c_twin(self, t, hp):
        """Hook: a backend's C twin of the whole step (scalars included); False to decline."""
        return False

    def _grow(self, kind, hps):
        """A structural switch was turned on: allocate the buffers it needs."""
        for name in self.spec.state_names(kind):
            if name not in self._state:
                self._state[name] = np.zeros(self.flat_params.size, self.flat_params.dtype)
                self._init_state(name, hps)
        self._kind = kind

    def zero_grad(self):
        """Set every gradient to zero (in place: the ``grads`` views stay valid)."""
        self.flat_grads.fill(0)

    @property
    def step_count(self):
        """Number of steps taken; the next :meth:`step` is step ``step_count + 1``."""
        return self.__dict__["step_count"]

    @step_count.setter
    def step_count(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"step_count must be an integer >= 0, got {describe(value)}")
        self.__dict__["step_count"] = int(value)

    # --- copying and pickling ------------------------------------------------
    # pickle and deepcopy copy every view separately, which would leave
    # opt.params, opt.grads and the param groups' arrays detached from the
    # flat buffers the kernels update.  So only the flat buffers travel, and
    # the views are rebuilt on arrival.

    _VIEWS = ("params", "grads", "ema_params", "_plan", "_c_args")

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}
        state["_backend"] = self._backend.name
        state["param_groups"] = [dict(g, params=len(g["params"])) for g in self.param_groups]
        return state

    def __setstate__(self, state):
        state = dict(state)
        backend = _dispatch.get_backend(state.pop("_backend"))
        groups = state.pop("param_groups")
        self.__dict__.update(state)
        self.__dict__["_backend"] = backend
        self.__dict__["params"] = self._views(self.flat_params)
        self.__dict__["grads"] = self._views(self.flat_grads)
        self.__dict__["ema_params"] = (None if self.flat_ema is None
                                       else self._views(self.flat_ema))
        self.__dict__["_plan"] = None
        self.__dict__["_cache"] = [None] * len(groups)
        first = 0
        rebuilt = []
        for g in groups:
            n = g["params"]
            rebuilt.append(dict(g, params=list(self.params[first:first + n])))
            first += n
        self.__dict__["param_groups"] = rebuilt

    def __copy__(self):
        # A shallow copy would share the buffers and silently step both: copy
        # is an independent optimizer, like deepcopy.
        import copy

        return copy.deepcopy(self)

    # --- checkpointing -------------------------------------------------------

    def state_dict(self):
        """A snapshot of the optimizer state: copies, not views.

        Holds ``step``, every state buffer in use (flat, by torch's names),
        ``param_groups`` (hyperparameters per group, and the indices of its
        params, as torch), the group state of algorithms that keep one
        (NAdam's ``mu_product``), and the algorithm, shapes and dtype it
        belongs to.  The parameters themselves are not included (save
        ``opt.flat_params`` alongside, as with PyTorch).
        """
        groups, first = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = list(range(first, first + n))
            first += n
            groups.append(entry)
        out = {"algorithm": self.spec.name, "step": self.step_count,
               "param_groups": groups, "group_state": [dict(g) if g else None
                                                       for g in self._gstate],
               "shapes": [tuple(s) for s in self._shapes], "dtype": str(self.flat_params.dtype)}
        for name in self.spec.all_state_names():
            out[name] = self._state[name].copy() if name in self._state else None
        if self.flat_ema is not None:
            out["ema"] = self.flat_ema.copy()
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; everything is checked before anything changes."""
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
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict['step'] must be an integer >= 0, got {step!r}")
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
            spec.validate(self._numeric_lr(hp), f"state_dict['param_groups'][{gi}]: ")
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
        if spec.gstate is not None:
            self._gstate = [{k: (bool(v) if isinstance(spec.gstate[k], bool) else float(v))
                             for k, v in g.items()} for g in gstate]
        self.step_count = int(step)

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items() if k != "params")
        return (f"{type(self).__name__}({len(self._shapes)} arrays in {len(self.param_groups)} "
                f"group(s), {self.flat_params.size} {self.flat_params.dtype} params, {hp}, "
                f"backend={self.backend!r}, step_count={self.step_count})")


def _adam_c_twin(self, t, hp):
    """Adam's whole step in C (adam_step_fast: its scalars are the C twin of
    adamfast.algorithms.adam.scalars, bit for bit); declines like any fast path."""
    fast = self._backend.adam_fast
    if fast is None:
        return False
    args = self.__dict__.get("_c_args")
    if args is None or args[0] is not hp:
        # Built once per change of settings: the per-step cost is one call.
        _, (s0, s1, s2) = self._plan
        beta1, beta2 = hp["betas"]
        args = self.__dict__["_c_args"] = (
            hp, (self.flat_params, self.flat_grads, s0, s1),
            (hp["lr"], beta1, beta2, hp["eps"], hp["weight_decay"], hp["decoupled_weight_decay"],
             hp["amsgrad"], s2, hp["maximize"]),
            (hp["eps_hat"], hp["eps_root"], hp["bias_correction"], hp["nesterov"]))
    return fast(*args[1], t, *args[2], _dispatch.get_num_threads(), *args[3])


_C_TWINS = {"adam": _adam_c_twin}


def _make_class(spec, doc):
    """A class with torch's signature, from the spec."""
    P = inspect.Parameter
    sig = inspect.Signature(
        [P("params", P.POSITIONAL_OR_KEYWORD)]
        + [P(h.name, P.POSITIONAL_OR_KEYWORD, default=h.default) for h in spec.hyper]
        + [P("backend", P.KEYWORD_ONLY, default="auto"),
           P("max_grad_norm", P.KEYWORD_ONLY, default=None),
           P("skip_nonfinite", P.KEYWORD_ONLY, default=False),
           P("ema_decay", P.KEYWORD_ONLY, default=None)])
    cls = type(spec.name, (Optimizer,), {
        "spec": spec, "__signature__": sig, "__doc__": doc, "__module__": __name__,
        "_hp_names": tuple(h.name for h in spec.hyper),
        "_c_twin": _C_TWINS[spec.c_twin] if spec.c_twin else Optimizer._c_twin,
        "_getter": staticmethod(operator.itemgetter(*(h.name for h in spec.hyper))),
        "_guarded": frozenset(Optimizer._OWNED + spec.all_state_names()
                              + tuple(h.name for h in spec.hyper))})
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
