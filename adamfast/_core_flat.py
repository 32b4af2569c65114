"""The per-dtype flat state of an optimizer: one buffer per quantity, and views of it.

The params, grads, every state buffer and the parameter EMA live in flat
buffers laid out group after group; ``params``/``grads`` and each group's
``"params"`` are views of them, and the chunk table says where each group
lies.  :func:`_layout` (where each array and group lies), :func:`_allocate`
(the buffers) and :func:`_views_of` are the one layout of every front end
that keeps flat state: :class:`FlatState` here (the NumPy classes) and each
dtype slab of adamfast.torch.  :class:`FlatState` owns its layout
(construction, growth when a structural switch turns on, a group added) and
the lock that keeps the step and the methods that re-lay out apart.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading

import numpy as np

from . import _dispatch, _engine
from .algorithms._spec import describe
from ._memory import zeros_buffers

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _layout(shapes, counts):
    """Where each array (``shapes``) and each group (``counts`` arrays) lies in the flat
    buffers, and the chunk table of the groups."""
    offsets = [0, *itertools.accumulate(math.prod(s) for s in shapes)]
    firsts = [0, *itertools.accumulate(counts)]
    bounds = [(offsets[firsts[g]], offsets[firsts[g + 1]]) for g in range(len(counts))]
    return {"_shapes": tuple(shapes), "_counts": tuple(counts),
            "_slices": tuple(slice(offsets[i], offsets[i + 1]) for i in range(len(shapes))),
            "_bounds": bounds, "_chunks": _engine.chunk_table(bounds),
            "_tensors": np.array(offsets, dtype=np.intp)}


def _views_of(flat, layout):
    """The view of each array in ``flat`` (a NumPy array or a torch tensor)."""
    return tuple(flat[s].reshape(shape) for s, shape in zip(layout["_slices"], layout["_shapes"]))


def _allocate(total, dtype, names, ema):
    """Zeroed flat buffers of ``total`` elements: params, grads, the state buffers
    ``names`` (a dict by name) and, when ``ema``, the parameter EMA (else None).
    One staggered allocation (adamfast._memory): the EMA is one more stream of the
    same pass, and the streams must not collide in the caches."""
    names = tuple(names)
    bufs = zeros_buffers(total, dtype, 2 + len(names) + bool(ema))
    return (bufs[0], bufs[1], dict(zip(names, bufs[2:2 + len(names)])),
            bufs[-1] if ema else None)


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


class FlatState:
    """The flat buffers, their views and the group layout of one optimizer
    (``spec`` is the subclass's)."""

    spec = None
    _LOCKED_CODE = frozenset()  # the methods that hold the lock: set by adamfast.optim

    def _setup(self, arrays, counts, clean, hps, guard):
        """Lay out the buffers for ``arrays`` (``counts`` per group), validated
        (``clean``, ``hps`` as given), and set the counters and group state."""
        spec = self.spec
        dtype = arrays[0].dtype
        self.__dict__.update(_layout([a.shape for a in arrays], counts))
        total = self._bounds[-1][1]

        kind = spec.kind_of(clean)
        names = spec.state_names(kind)
        self._max_grad_norm, self._skip_nonfinite, self._ema_decay = guard
        params, grads, self._state, ema = _allocate(total, dtype, names,
                                                    self._ema_decay is not None)
        self.__dict__["flat_params"], self.__dict__["flat_grads"] = params, grads
        self._empty = np.zeros(0, dtype)
        for a, s in zip(arrays, self._slices):
            self.flat_params[s] = a.reshape(-1)
        for name in names:
            self._init_state(name, clean)
        self.__dict__["params"] = self._views(self.flat_params)
        self.__dict__["grads"] = self._views(self.flat_grads)
        # The guarded step's options are fixed at construction; the parameter EMA
        # starts as a copy of the initial params.
        self._guard_on = self._max_grad_norm is not None or self._skip_nonfinite
        if ema is not None:
            ema[:] = params
        self.__dict__["flat_ema"] = ema
        self.__dict__["ema_params"] = None if ema is None else self._views(ema)
        # The "params" list of each group, as handed out: param_groups must keep
        # exactly these (see _check_structure).
        self._plists = _split(self.params, self._counts)
        self.param_groups = [dict(hp, params=plist) for plist, hp in zip(self._plists, hps)]
        self._gstate = [dict(spec.gstate) if spec.gstate else None for _ in counts]
        # Per group: the step_count when it joined (add_param_group): its own step
        # count is step_count minus that, as torch counts steps per param.
        self._joined = (0,) * len(counts)
        # Per group: (its "params" and raw hp, validated hp, lr is a schedule).
        self._cache = [None] * len(counts)
        self._kind = kind
        self._plan = None  # (kind id, state slots): set at the first step (_replan)
        self._c_args = None  # [hp, the C step's call for it, group 0's copy]: see step()
        self._run_obj = None  # the core's Run over these buffers (_core.take_step)
        self._lock = threading.Lock()  # serializes step() and the methods that re-lay out
        self.step_count = 0
        self._fast = self._fast_ok()

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
            if frame.f_code in self._LOCKED_CODE and frame.f_locals.get("self") is self:
                calls += 1
            if calls == 2:
                raise RuntimeError(f"{type(self).__name__}.{frame.f_code.co_name}() is running "
                                   f"in this thread (this call comes from inside it, e.g. from "
                                   f"an lr schedule), and step() and the methods that change "
                                   f"the optimizer run one at a time")
            frame = frame.f_back

    def _grow(self, kind, hps):
        """A structural switch was turned on: allocate the buffers it needs."""
        for name in self.spec.state_names(kind):
            if name not in self._state:
                self._state[name] = np.zeros(self.flat_params.size, self.flat_params.dtype)
                self._init_state(name, hps)
        self._kind = kind

    def _append_group(self, arrays, clean):
        """Lay out the buffers anew with the group ``arrays`` (validated: ``clean``)
        at the end; return the new group's ``"params"`` list."""
        spec = self.spec
        dtype = self.flat_params.dtype
        layout = _layout(self._shapes + tuple(a.shape for a in arrays),
                         self._counts + (len(arrays),))
        n = self.flat_params.size
        flat, grads, state, ema = _allocate(layout["_bounds"][-1][1], dtype, self._state,
                                            self.flat_ema is not None)
        flat[:n] = self.flat_params
        for a, s in zip(arrays, layout["_slices"][len(self._shapes):]):
            flat[s] = a.reshape(-1)
        grads[:n] = self.flat_grads
        for name, buf in state.items():
            buf[:n] = self._state[name]
            if spec.state_init is not None:
                buf[n:] = spec.state_init(name, clean)
        if ema is not None:
            ema[:n] = self.flat_ema
            ema[n:] = flat[n:]
        params = _views_of(flat, layout)
        plists = _split(params, layout["_counts"])
        joined = self._joined + (self.step_count,)
        # One update of the attributes, then the groups' lists follow.
        self.__dict__.update(
            layout, flat_params=flat, flat_grads=grads, _state=state,
            params=params, grads=_views_of(grads, layout), flat_ema=ema,
            ema_params=None if ema is None else _views_of(ema, layout),
            _gstate=self._gstate + [dict(spec.gstate) if spec.gstate else None],
            _joined=joined, _cache=[None] * len(joined), _plan=None, _c_args=None,
            _run_obj=None, _fast=False, _plists=self._plists + [plists[-1]])
        for old, new in zip(self._plists, plists):
            list.__setitem__(old, slice(None), new)  # the lists handed out stay the same
        return plists[-1]

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
        if name not in self._rebind_checked:
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

    # --- copying and pickling ------------------------------------------------
    # pickle and deepcopy copy every view separately, which would leave
    # opt.params, opt.grads and the param groups' arrays detached from the
    # flat buffers the kernels update.  So only the flat buffers travel, and
    # the views are rebuilt on arrival.

    _VIEWS = ("params", "grads", "ema_params", "_plan", "_c_args", "_run_obj", "_plists", "_lock",
              "_cache", "_tensors")

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
        d.update(_plan=None, _c_args=None, _run_obj=None, _cache=[None] * len(groups),
                 _lock=threading.Lock())
        d["_plists"] = _split(self.params, self._counts)
        d["param_groups"] = [dict(g, params=plist) for g, plist in zip(groups, self._plists)]
        d["_fast"] = self._fast_ok()
        d["_tensors"] = np.array([0, *(s.stop for s in self._slices)], dtype=np.intp)

    def __copy__(self):
        # A shallow copy would share the buffers and silently step both: copy
        # is an independent optimizer, like deepcopy.
        import copy

        return copy.deepcopy(self)
