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
import itertools
import math
import operator
import sys
import threading
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


def _layout(shapes, counts):
    """Where each array (``shapes``) and each group (``counts`` arrays) lies in the flat
    buffers, and the chunk table of the groups."""
    offsets = [0, *itertools.accumulate(math.prod(s) for s in shapes)]
    firsts = [0, *itertools.accumulate(counts)]
    bounds = [(offsets[firsts[g]], offsets[firsts[g + 1]]) for g in range(len(counts))]
    return {"_shapes": tuple(shapes), "_counts": tuple(counts),
            "_slices": tuple(slice(offsets[i], offsets[i + 1]) for i in range(len(shapes))),
            "_bounds": bounds, "_chunks": _engine.chunk_table(bounds)}


def _views_of(flat, layout):
    return tuple(flat[s].reshape(shape) for s, shape in zip(layout["_slices"], layout["_shapes"]))


def _split(views, counts):
    """One ``_Params`` per group, from the views of every array."""
    firsts = [0, *itertools.accumulate(counts)]
    return [_Params(views[firsts[g]:firsts[g + 1]]) for g in range(len(counts))]


class _Params(list):
    """A param group's ``"params"``: the live views of its arrays, fixed as a list.

    The flat buffers are laid out for exactly these arrays, and the kernels
    step them whatever the list says; so the list refuses to change rather
    than be silently ignored.
    """

    __slots__ = ()

    def _refuse(self, *args, **kwargs):
        raise TypeError("a param group's 'params' cannot be changed in place: the optimizer's "
                        "flat buffers are laid out for exactly these arrays; add arrays in a "
                        "new group with opt.add_param_group({'params': [...]})")

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):
        # A copy is a plain list: it is detached from the optimizer anyway.
        return list, (list(self),)


def _kernel_wrote(exc, module):
    """Whether the kernel call that raised ``exc`` had written its step (``module``:
    the backend's).

    An exception raised in the calling frame itself was raised by a signal
    handler as the call returned: after the writes, for compiled code is
    never interrupted midway.  One raised inside the backend's own code is a
    refusal of bad input, made before writing (the compiled kernels are
    Cython functions, which add traceback entries), or an interrupt of its
    Python code (numba's validation, the numpy reference): a backend that
    says ``MARKS_UNWRITTEN = True`` sets ``exc.adamfast_unwritten = True`` on
    whatever stops it before its first write, so that what it leaves
    unmarked came after; another's is taken to have come before its writes,
    like a refusal (the numpy reference computes everything first).  From
    elsewhere (a wrapper of the kernel), an interrupt came after the call.
    """
    if getattr(exc, "adamfast_unwritten", False):
        return False
    tb = exc.__traceback__
    if tb is None or tb.tb_next is None:
        return True
    callee = tb.tb_next
    if callee.tb_lineno == callee.tb_frame.f_code.co_firstlineno:
        return False  # raised as a Python kernel was entered: it had not begun
    name = module.__name__
    while tb is not None:
        where = tb.tb_frame.f_globals.get("__name__", "")
        if where == name or where.startswith(name + "."):
            return getattr(module, "MARKS_UNWRITTEN", False)
        tb = tb.tb_next
    return not isinstance(exc, Exception)


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

        self.__dict__.update(_layout([a.shape for a in arrays], [len(g[0]) for g in groups]))
        total = self._bounds[-1][1]

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
        # The "params" list of each group, as handed out: param_groups must keep
        # exactly these (see _check_structure).
        self._plists = _split(self.params, self._counts)
        self.param_groups = [dict(hp, params=plist) for plist, hp in zip(self._plists, hps)]
        self._gstate = [dict(spec.gstate) if spec.gstate else None for _ in groups]
        # Per group: the step_count when it joined (add_param_group): its own step
        # count is step_count minus that, as torch counts steps per param.
        self._joined = (0,) * len(groups)
        # Per group: (its "params" and raw hp, validated hp, lr is a schedule).
        self._cache = [None] * len(groups)
        self._kind = kind
        self._plan = None  # (kind id, state slots): set at the first step (_replan)
        self._c_args = None  # (hp, the C twin's call) for that hp: see step()
        self._lock = threading.Lock()  # serializes step() and the methods that re-lay out
        self.step_count = 0
        self._fast = self._fast_ok()

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
        return _views_of(flat, self.__dict__)

    def _fast_ok(self):
        """Can step() take its short path: one group, its own steps, no guard, no EMA?"""
        return (len(self._counts) == 1 and self._joined[0] == 0 and not self._guard_on
                and self.flat_ema is None)

    def _check_structure(self):
        """Refuse, before anything is written, a param_groups whose groups are not the
        optimizer's: removed, added, reordered or replaced groups, or a rebound
        ``"params"``.  The flat buffers are laid out for those groups, and every
        backend would step them whatever the list says."""
        groups = self.param_groups
        plists = self._plists
        if not isinstance(groups, list):
            what = f"param_groups is {describe(groups)}, not a list"
        elif len(groups) != len(plists):
            what = f"it holds {len(groups)} groups, the optimizer {len(plists)}"
        else:
            for gi, (group, plist) in enumerate(zip(groups, plists)):
                try:
                    if group["params"] is plist:
                        continue
                except (KeyError, TypeError, IndexError):
                    what = f"param_groups[{gi}] ({describe(group)}) has no 'params'"
                    break
                what = (f"param_groups[{gi}]['params'] is not the list of this group's arrays "
                        f"(a group was replaced, reordered or its 'params' rebound)")
                break
            else:
                return
        raise ValueError(f"param_groups no longer matches the optimizer's param groups: {what}. "
                         f"The flat buffers are laid out for its groups, so groups cannot be "
                         f"removed, reordered or replaced, nor their 'params' rebound; add "
                         f"arrays with add_param_group(), change hyperparameters in place, and "
                         f"restore param_groups to go on")

    def _holding(self):
        """The lock, for ``with``: the methods other than step() that hold it."""
        lock = self._lock
        if lock.locked():
            self._check_reentry()
        return lock

    def _check_reentry(self):
        """The lock is taken: by another thread (then wait for it), or by this thread,
        inside a call of this optimizer (an lr schedule that steps it): refuse that,
        which would deadlock."""
        frame = sys._getframe(1)
        calls = 0  # the innermost is the call that asks for the lock
        while frame is not None:
            if frame.f_code in _LOCKED_CODE and frame.f_locals.get("self") is self:
                calls += 1
            if calls == 2:
                raise RuntimeError(f"{type(self).__name__}.{frame.f_code.co_name}() is running "
                                   f"in this thread (this call comes from inside it, e.g. from "
                                   f"an lr schedule), and step() and the methods that change "
                                   f"the optimizer run one at a time")
            frame = frame.f_back

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
        if name == "param_groups":
            if not isinstance(value, list):
                raise TypeError(f"param_groups must be a list of group dicts, got "
                                f"{describe(value)}")
            object.__setattr__(self, name, value)
            return
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
        backend = _dispatch.get_backend(value)
        with self._holding():
            self.__dict__.update(_backend=backend, _c_args=None,
                                 _cache=[None] * len(self._plists))  # replan: new kind ids

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
        groups = self.param_groups
        plists = self._plists
        if len(groups) != len(plists):
            self._check_structure()
        out = []
        changed = False
        for gi, group in enumerate(groups):
            try:
                raw = getter(group)  # ("params", *hyperparameters)
            except (KeyError, TypeError) as exc:
                self._check_structure()
                raise ValueError(f"param_groups[{gi}] is missing {exc}") from None
            if raw[0] is not plists[gi]:
                self._check_structure()
            cached = self._cache[gi]
            if cached is None or cached[0] != raw:
                lr = raw[1]
                hp = spec.validate(self._numeric_lr(dict(zip(names, raw[1:]))),
                                   f"param_groups[{gi}]: ")
                hp["lr"] = lr if callable(lr) else hp["lr"]
                cached = (raw, hp, callable(lr))
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
        self._plan = (self._backend.kind_id(kind), state)
        self._c_args = None

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

        A step is atomic as seen from Python: the counters (``step_count``,
        the group state) advance with the buffers, also when a
        KeyboardInterrupt arrives during the kernel.  Concurrent
        calls on one optimizer, from several threads, run one at a time, in
        the order they take its lock; different optimizers never wait for
        each other.
        """
        # `with`, not acquire(): an interrupt can then never leave the lock held.
        lock = self._lock
        if lock.locked():
            self._check_reentry()
        with lock:
            d = self.__dict__
            t = d["step_count"] + 1
            if grads is None and grad_scale is None and d["_fast"]:
                # The common case, kept short: ~25% of a small step is Python here.
                cached = d["_cache"][0]
                if cached is not None and not cached[2]:
                    try:
                        group, = self.param_groups
                        raw = self._getter(group)
                        same = raw[0] is d["_plists"][0] and raw == cached[0]
                    except (KeyError, TypeError, ValueError):
                        same = False  # the general path says what is wrong
                    if same:
                        hp = cached[1]
                        twin = d["_c_args"]
                        if twin is None or twin[0] is not hp:
                            twin = d["_c_args"] = (hp, self._c_twin(hp))
                        if twin[1] is not None:
                            fast, head, mid, tail = twin[1]
                            nthreads = _dispatch.get_num_threads()
                            # Between the kernel's return and the count, no bytecode
                            # that runs a signal handler: see _kernel_wrote.
                            try:
                                done = fast(*head, t, *mid, nthreads, *tail)
                            except BaseException as exc:
                                self._interrupted(exc, t, None)
                                raise
                            if done:
                                d["step_count"] = t
                                return _guard.PLAIN
                        row, new = self.spec.scalars(t, hp, d["_gstate"][0])
                        self._run((row,), t, [new])
                        return _guard.PLAIN
            return self._step_general(grads, t, grad_scale)

    def _step_general(self, grads, t, grad_scale):
        spec = self.spec
        hps, changed = self._group_hp(t)
        pairs = self._check_grads(grads) if grads is not None else ()
        grad_scale = _guard.check_scale(grad_scale)
        rows, gstates = [], []
        for (hp, _), gs, joined in zip(hps, self._gstate, self._joined):
            row, new = spec.scalars(t - joined, hp, gs)
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
        """One kernel call for step t, then the counters: ``step_count`` and the
        group state (``gstates``, a new list) advance with the buffers."""
        kid, states = self._plan
        b = self._backend
        if nthreads is None:
            nthreads = _dispatch.get_num_threads()
        ema = self.flat_ema
        d = self.__dict__
        # Inside each try, only the kernel's call may run a signal handler; after
        # it, stores only (see _kernel_wrote).
        if len(rows) == 1 and b.step_fast is not None:
            # One group: the cython backend takes the row as a tuple in C, no table.
            row = rows[0]
            try:
                done = b.step_fast(kid, self.flat_params, self.flat_grads, states, row,
                                   nthreads, ema)
            except BaseException as exc:
                self._interrupted(exc, t, gstates)
                raise
            if done:
                d["_gstate"] = gstates
                d["step_count"] = t
                return
        table = _engine.scalar_table(rows)
        chunks = self._chunks
        try:
            b.kernel(kid, self.flat_params, self.flat_grads, states, table, chunks, nthreads,
                     ema)
        except BaseException as exc:
            self._interrupted(exc, t, gstates)
            raise
        d["_gstate"] = gstates
        d["step_count"] = t

    def _interrupted(self, exc, t, gstates):
        """The kernel call of step t raised ``exc``: count the step if it was written."""
        if _kernel_wrote(exc, self._backend.module):
            d = self.__dict__
            if gstates is not None:
                d["_gstate"] = gstates
            d["step_count"] = t

    def _c_twin(self, hp):
        """Hook: a backend's C twin of the whole step (scalars included), as
        ``(function, args before t, args between t and the thread count, args after)``,
        or None.  It may still decline a call (returns False), like any fast path."""
        return None

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
        joined = max(self._joined)
        if value < joined:
            raise ValueError(f"step_count must be >= {joined}, the step count when param group "
                             f"{self._joined.index(joined)} was added (its own count would be "
                             f"negative), got {value!r}")
        self.__dict__["step_count"] = int(value)

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
        clean = spec.validate(self._numeric_lr(hp), "param_group: ")

        # Valid: lay out new buffers (an allocation failure changes nothing yet).
        layout = _layout(self._shapes + tuple(a.shape for a in arrays),
                         self._counts + (len(arrays),))
        n = self.flat_params.size
        names = tuple(self._state)
        bufs = zeros_buffers(layout["_bounds"][-1][1], dtype, 2 + len(names))
        ema = None if self.flat_ema is None else np.empty(bufs[0].size, dtype)
        bufs[0][:n] = self.flat_params
        for a, s in zip(arrays, layout["_slices"][len(self._shapes):]):
            bufs[0][s] = a.reshape(-1)
        bufs[1][:n] = self.flat_grads
        for name, buf in zip(names, bufs[2:]):
            buf[:n] = self._state[name]
            if spec.state_init is not None:
                buf[n:] = spec.state_init(name, clean)
        if ema is not None:
            ema[:n] = self.flat_ema
            ema[n:] = bufs[0][n:]
        params = _views_of(bufs[0], layout)
        plists = _split(params, layout["_counts"])
        joined = self._joined + (self.step_count,)
        # One update of the attributes, then the groups' lists follow.
        self.__dict__.update(
            layout, flat_params=bufs[0], flat_grads=bufs[1], _state=dict(zip(names, bufs[2:])),
            params=params, grads=_views_of(bufs[1], layout), flat_ema=ema,
            ema_params=None if ema is None else _views_of(ema, layout),
            _gstate=self._gstate + [dict(spec.gstate) if spec.gstate else None],
            _joined=joined, _cache=[None] * len(joined), _plan=None, _c_args=None,
            _fast=False, _plists=self._plists + [plists[-1]])
        for old, new in zip(self._plists, plists):
            list.__setitem__(old, slice(None), new)  # the lists handed out stay the same
        self.param_groups.append(dict(hp, params=plists[-1]))

    # --- copying and pickling ------------------------------------------------
    # pickle and deepcopy copy every view separately, which would leave
    # opt.params, opt.grads and the param groups' arrays detached from the
    # flat buffers the kernels update.  So only the flat buffers travel, and
    # the views are rebuilt on arrival.

    _VIEWS = ("params", "grads", "ema_params", "_plan", "_c_args", "_plists", "_lock", "_cache")

    def __getstate__(self):
        with self._holding():
            self._check_structure()
            state = {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}
            state["_backend"] = self._backend.name
            state["param_groups"] = [dict(g, params=len(g["params"])) for g in self.param_groups]
            return state

    def __setstate__(self, state):
        state = dict(state)
        backend = _dispatch.get_backend(state.pop("_backend"))
        groups = state.pop("param_groups")
        d = self.__dict__
        d.update(state)
        d["_backend"] = backend
        d["params"] = self._views(self.flat_params)
        d["grads"] = self._views(self.flat_grads)
        d["ema_params"] = None if self.flat_ema is None else self._views(self.flat_ema)
        d.update(_plan=None, _c_args=None, _cache=[None] * len(groups), _lock=threading.Lock())
        d["_plists"] = _split(self.params, self._counts)
        d["param_groups"] = [dict(g, params=plist) for g, plist in zip(groups, self._plists)]
        d["_fast"] = self._fast_ok()

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
        if spec.gstate is not None:
            self._gstate = gstate
        self.__dict__.update(step_count=int(step), _joined=joined)
        self._fast = self._fast_ok()

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items() if k != "params")
        return (f"{type(self).__name__}({len(self._shapes)} arrays in {len(self.param_groups)} "
                f"group(s), {self.flat_params.size} {self.flat_params.dtype} params, {hp}, "
                f"backend={self.backend!r}, step_count={self.step_count})")


def _adam_c_twin(self, hp):
    """Adam's whole step in C (adam_step_fast: its scalars are the C twin of
    adamfast.algorithms.adam.scalars, bit for bit), called by step() as
    ``fast(*head, t, *mid, nthreads, *tail)``; it declines like any fast path."""
    fast = self._backend.adam_fast
    if fast is None:
        return None
    _, states = self._plan
    max_sq = states[2] if len(states) == 3 else None  # adam_amsgrad's third buffer
    beta1, beta2 = hp["betas"]
    return (fast, (self.flat_params, self.flat_grads, states[0], states[1]),
            (hp["lr"], beta1, beta2, hp["eps"], hp["weight_decay"], hp["decoupled_weight_decay"],
             hp["amsgrad"], max_sq, hp["maximize"]),
            (hp["eps_hat"], hp["eps_root"], hp["bias_correction"], hp["nesterov"]))


_C_TWINS = {"adam": _adam_c_twin}

# The methods that hold the optimizer's lock: a call of one of them from inside
# another, in one thread, is refused rather than left to deadlock.
_LOCKED_CODE = frozenset(f.__code__ for f in (
    Optimizer.step, Optimizer.add_param_group, Optimizer.state_dict,
    Optimizer.load_state_dict, Optimizer.__getstate__, Optimizer.backend.fset))


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
        "_getter": staticmethod(operator.itemgetter("params", *(h.name for h in spec.hyper))),
        "_guarded": frozenset(Optimizer._OWNED + spec.all_state_names()
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
