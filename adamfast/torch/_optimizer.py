"""The base class of every :mod:`adamfast.torch` optimizer.

The work is done by plain functions, one module per job, bound here as
methods: the flat layout (:mod:`._flat`), hyperparameters (:mod:`._hyper`),
the step (:mod:`._step`), checkpoints and copies (:mod:`._checkpoint`),
torch's step wrapper and the threads warning (:mod:`._hooks`).  What they do
and why is in :mod:`adamfast.torch`'s docstring.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from .. import _dispatch, _guard
from ..algorithms._spec import nonneg
from . import _checkpoint, _flat, _hooks, _hyper, _step
from ._common import _GUARDED, _PARAM_ARGS, _STATE_AT_CONSTRUCTION, _describe, _refusal
from ._hyper import _plain


_UNSEEN = object()


def _clip_of_defaults(self):
    """The guard's clip of a class whose clip is a hyperparameter (timm's Lamb), read
    from ``self.defaults`` at each step as timm reads it; validated when it changes."""
    d = self.__dict__
    seen = d["_clip_seen"]
    if "defaults" not in d:  # in the constructor, before the defaults exist
        return seen[1]
    value = d["defaults"].get("max_grad_norm")
    if value is not seen[0]:
        plain = _plain(value)
        seen = (value, None if plain is None else nonneg("defaults['max_grad_norm']", plain))
        d["_clip_seen"] = seen
    return seen[1]


def _set_clip(self, value):
    self.__dict__["_clip_seen"] = (_UNSEEN, value)


# The ``_max_grad_norm`` of such a class: its other classes keep a plain attribute,
# so that their step pays nothing for it.
DEFAULTS_CLIP = property(_clip_of_defaults, _set_clip)


class Optimizer(torch.optim.Optimizer):
    """The base of every adamfast.torch class: everything is driven by ``spec``.

    Read :mod:`adamfast.torch`'s docstring for the layout, the gradient binding
    and the checkpoint format.  ``backend`` may be read and reassigned
    (``"auto"``, ``"cython"``, ``"numba"``, ``"numpy"``).
    """

    __module__ = "adamfast.torch"  # its public home, as before the split into modules
    spec = None
    _torch_class = None
    _extras = {}
    _step_supports_amp_scaling = True

    def __init__(self, params, *args, **kwargs):
        bound = self.__signature__.bind(params, *args, **kwargs)
        bound.apply_defaults()
        args = dict(bound.arguments)
        params = args.pop("params")
        backend = args.pop("backend")
        # A guard option that is also a hyperparameter (Lamb's max_grad_norm, timm's
        # global clip) stays in the defaults, as timm keeps it in param_groups.
        guard = _guard.check_options(*(_plain(args[name] if name in self.spec.defaults
                                              else args.pop(name)) for name in _GUARDED))
        self._max_grad_norm, self._skip_nonfinite, self._ema_decay = guard
        self._guard_on = self._max_grad_norm is not None or self._skip_nonfinite
        self.last_result = None
        defaults = {}
        for name, value in args.items():
            if name in self._extras and value == self._extras[name] and \
                    type(value) is type(self._extras[name]):
                continue  # at its default: kept out of param_groups (torch's keys only)
            defaults[name] = value
        defaults.update(self.spec.fixed)  # AdamW's decoupled_weight_decay=True, as torch's groups
        self._check_flags(defaults, "")
        self._backend = _dispatch.get_backend(backend)
        self.defaults = defaults
        self._validate(defaults, "")
        self._slabs = []
        self._plist = []
        self._stale = False
        self._ema_list = None
        self._hp_cache = {}
        self._lock = threading.Lock()  # serializes step()
        self._closure_thread = None
        self._building = True
        super().__init__(params, defaults)
        self._building = False
        self._layout()
        if self.spec.name in _STATE_AT_CONSTRUCTION:
            # torch's Adagrad creates step and sum in its constructor, for the params
            # given then only: a group added later, or a param that a loaded checkpoint
            # has no state for, gets its state at its first step, as in torch.
            for i, g in enumerate(self._gidx):
                self._fill_state(i, self._group_hp(g, self.param_groups[g]))
            for slab in self._slabs:
                self._refresh(slab)
        self._warn_threads()

    # --- hyperparameters (adamfast/torch/_hyper.py) ---------------------------

    _check_flags = _hyper.check_flags
    _hp = _hyper.hp
    _validate = _hyper.validate
    _group_hp = _hyper.group_hp
    _same_hp = _hyper.same_hp

    # --- params and layout (adamfast/torch/_flat.py) --------------------------

    def add_param_group(self, param_group):
        """torch's add_param_group, then adamfast's checks, then a new flat layout.

        Refused params (CUDA, sparse, complex, fp16/bf16, non-contiguous,
        duplicates) raise with nothing changed.  Adding a group after
        construction lays every dtype's buffers out again (copying params,
        grads and state), so state tensors taken before are stale afterwards.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            gi = len(self.param_groups) - 1
            seen = set()
            for other in self.param_groups[:-1]:
                seen.update(id(p) for p in other["params"])
            for j, p in enumerate(group["params"]):
                why = _refusal(p)
                if why is not None:
                    raise (NotImplementedError if "precision issue" in why else ValueError)(
                        f"param_groups[{gi}]['params'][{j}] ({_describe(p)}) {why}")
                if id(p) in seen:
                    raise ValueError(f"param_groups[{gi}]['params'][{j}] appears twice in the "
                                     f"optimizer: each param must be in one group, once")
                seen.add(id(p))
            self._check_flags(group, f"param_groups[{gi}]: ")
            self._validate(group, f"param_groups[{gi}]: ")
        except BaseException:
            del self.param_groups[n_before:]
            raise
        if not self._building:
            self._layout()

    _needed_names = _flat.needed_names
    _kind_covering = _flat.kind_covering
    _state_keys = _flat.state_keys
    _init_value = _flat.init_value
    _layout = _flat.layout
    _slab_of = _flat.slab_of
    _fill_state = _flat.fill_state
    _sync_state = _flat.sync_state

    @property
    def state(self):
        """torch's per-param state (``opt.state[p]``): views of the flat buffers,
        filled on access for params that took their first step since the last one."""
        d = self.__dict__
        if d.get("_stale"):
            self._sync_state()
        d["_exposed"] = True  # the next step takes back what the caller may change
        return d["_torch_state"]

    @state.setter
    def state(self, value):
        self.__dict__["_torch_state"] = value
        self.__dict__["_exposed"] = self.__dict__["_state_replaced"] = True
    _refresh = _flat.refresh

    # --- torch's machinery (adamfast/torch/_hooks.py) -------------------------

    _patch_step_function = _hooks.patch_step_function
    _warn_threads = _hooks.warn_threads

    # --- backend --------------------------------------------------------------

    @property
    def backend(self):
        """The backend in use (a concrete name, even if ``"auto"`` was asked for)."""
        return self._backend.name

    @backend.setter
    def backend(self, value):
        b = _dispatch.get_backend(value)
        ids = [b.kind_id(slab.kind) for slab in self._slabs]
        self._backend = b
        for slab, kid in zip(self._slabs, ids):
            slab.kind_id = slab.run.kid = kid

    # --- the guarded step's options and the EMA -------------------------------

    @property
    def max_grad_norm(self):
        """The global L2 norm the gradients are clipped to (None: no clipping); where it
        is a hyperparameter (Lamb), ``defaults["max_grad_norm"]``, as timm reads it."""
        return self._max_grad_norm

    @property
    def skip_nonfinite(self):
        """Whether a step whose gradients hold an Inf or NaN is skipped."""
        return self._skip_nonfinite

    @property
    def ema_decay(self):
        """The decay d of the parameter EMA (None: no EMA)."""
        return self._ema_decay

    @property
    def ema_params(self):
        """The parameter EMA, live: one tensor per param shaped like it, in the order
        of ``param_groups`` (None without ``ema_decay``).  The tensors are views of
        the flat EMA buffers that each step updates in place; a new list is built
        after ``add_param_group`` (which lays the buffers out again)."""
        return None if self._ema_list is None else list(self._ema_list)

    # --- the step (adamfast/torch/_step.py) -----------------------------------

    step = _step.step
    _collect = _step.collect
    _check_grad = _step.check_grad
    _check_sparse = _step.check_sparse
    _uniform_run = _step.uniform_run
    _classes_run = _step.classes_run
    _group_steps = _step.group_steps
    _adopt_group_steps = _step.adopt_group_steps

    # --- gradients ------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True):
        """torch's zero_grad.  ``set_to_none=True`` (torch's default) sets every grad
        to None; ``set_to_none=False`` zeroes the flat gradient buffer of each dtype
        with one torch ``zero_()`` (grads the optimizer has not bound are zeroed one by
        one)."""
        if set_to_none:
            for slab in self._slabs:
                for p in slab.params:
                    p.grad = None
            return
        for slab in self._slabs:
            # A view rebound away from the flat buffer is p.grad's own memory now,
            # zeroed in place below as torch does.
            _step.check_views(slab)
            # torch's fill runs on its intra-op threads, as torch.optim's zero_grad
            # does; NumPy's fill is one thread (a 17M-param model: ~7 ms).
            slab.grad.zero_()
            for p, v in zip(slab.params, slab.gviews):
                g = p.grad
                if g is not None and g is not v:
                    if g.grad_fn is not None:
                        g.detach_()
                    else:
                        g.requires_grad_(False)
                    g.zero_()

    # --- checkpoints and copies (adamfast/torch/_checkpoint.py) ---------------

    load_state_dict = _checkpoint.load_state_dict
    _check_ema = _checkpoint.check_ema
    _copy_state = _checkpoint.copy_state
    _reconcile_state = _checkpoint.reconcile_state
    _afresh = _checkpoint.afresh

    def state_dict(self):
        """torch's ``state_dict()``, plus, with ``ema_decay``, the top-level key ``"ema"``:
        ``{param index: tensor}`` for every param, indexed as ``"state"`` is (views of
        the flat EMA buffers, as the state tensors are).  ``torch.optim``'s
        ``load_state_dict`` ignores keys other than ``"state"`` and
        ``"param_groups"``, so the checkpoint still loads into torch.optim."""
        out = super().state_dict()
        if self.spec.torch_step_in_group:
            # The peer's step count per group (timm's), which every param of the group
            # holds (after a checkpoint whose params differ: the most), absent before
            # the group's first step, as there.
            for gi, g in enumerate(out["param_groups"]):
                steps = [self._steps_np[i] for i, gj in enumerate(self._gidx) if gj == gi]
                if steps and max(steps) > 0:
                    g["step"] = int(max(steps))
        if self._ema_list is not None:
            out["ema"] = dict(enumerate(self._ema_list))
        return out

    def __getstate__(self):
        """What a copy (``copy.deepcopy``, ``pickle``) is made from: the param groups,
        holding the params themselves (a model copied together with the optimizer
        keeps sharing them), compact clones of the state and the EMA, the guarded
        step's options and the backend.  ``__setstate__`` builds new flat buffers."""
        if self._closure_thread == threading.get_ident():  # in its own closure: lock held
            return self._copy_state()
        with self._lock:
            return self._copy_state()

    def __setstate__(self, state):
        """A copy: a new optimizer over the copied params (their ``.data`` becomes a
        view of its own flat buffers), then the state loaded as a checkpoint."""
        known = self.__signature__.parameters
        kwargs = {k: v for k, v in state["defaults"].items()
                  if k in known and k not in _PARAM_ARGS}
        # A guard option that is also a hyperparameter (Lamb's max_grad_norm) is in both.
        kwargs.update({k: v for k, v in state["options"].items() if k not in kwargs})
        Optimizer.__init__(self, [dict(g) for g in state["param_groups"]], **kwargs)
        groups, n = [], 0
        for g in self.param_groups:
            groups.append(dict(g, params=list(range(n, n + len(g["params"])))))
            n += len(g["params"])
        self.load_state_dict({"state": state["state"], "param_groups": groups,
                              "ema": state["ema"]})
        # A copy's group state, in float64 (older copies kept each name as a key of its own)
        saved = state.get("group_state") or {k: state[k] for k in self._gs.arrays if k in state}
        for name, values in saved.items():
            self._gs.arrays[name][:] = values
        self._gs.mirror()
        if state.get("steps") is not None:
            self._steps_np[:] = state["steps"]
        for slab in self._slabs:
            self._refresh(slab)
        self.last_result = state["last_result"]
