"""The flat per-dtype layout: one slab of flat buffers per dtype (params, grads,
state, EMA), each param's ``.data``, ``.grad`` and torch state a view of them.
Each slab is laid out and allocated as the NumPy classes' flat state is
(adamfast._core_flat), one tensor per param.

Plain functions taking the optimizer; :class:`adamfast.torch.Optimizer` binds
them as its methods.
"""

from __future__ import annotations

import numpy as np
import torch

from .._core import Run
from .._core_flat import _allocate, _layout, _views_of
from ._common import _CHECK, _NP, PtrWatch, _alone, _holders, _scalar_dtype

class _GroupState:
    """The spec's group state (``spec.gstate``: name -> value before the first step),
    per param: one numpy array per name (float64, or bool for a flag).  The names
    torch keeps in its per-param state (``spec.torch_scalar_state``) also live in a
    tensor of torch's scalar dtype, whose 0-d views are that state's entries."""

    def __init__(self, spec, n, sdt):
        init = spec.gstate or {}
        self.arrays = {name: np.full(n, v, bool if isinstance(v, bool) else np.float64)
                       for name, v in init.items()}
        self.tensors = {name: torch.full((n,), float(v), dtype=sdt) for name, v in init.items()
                        if name in spec.torch_scalar_state}
        self.np = {name: t.numpy() for name, t in self.tensors.items()}
        self.views = {name: [t[i] for i in range(n)] for name, t in self.tensors.items()}

    def mirror(self):
        """Copy the arrays into torch's scalar tensors (after writing the arrays)."""
        for name, a in self.np.items():
            a[:] = self.arrays[name]

    def get(self, i):
        """Param ``i``'s group state, a new dict (None when the spec keeps none)."""
        if not self.arrays:
            return None
        return {name: a[i].item() for name, a in self.arrays.items()}

    def set(self, idx, new):
        """Params ``idx`` (an index or index array) take the group state ``new``."""
        if new is None:
            return
        for name, v in new.items():
            self.arrays[name][idx] = v
            a = self.np.get(name)
            if a is not None:
                a[idx] = v

    def reset(self, i, spec):
        self.set(i, spec.gstate)


def new_gstate(spec, n, sdt):
    return _GroupState(spec, n, sdt)


class _Slab:
    """The flat buffers of one dtype: params, grads, state; views per param; chunk tables."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.params = []      # the params, in layout order (global order filtered by dtype)
        self.index = None     # their global indices (np.intp)
        self.ranges = []      # (lo, hi) per param
        self.bounds = None    # the tensor boundaries: 0, each param's hi (np.intp)
        self.chunks = None    # the chunk table of its groups (rows: the groups, in order)
        self.groups = []      # the group index of each param
        self.gviews = []      # the bound gradient views, per param
        self.gptrs = []       # their data_ptr, as laid out
        self.gwatch = None    # PtrWatch of the storage under slab.grad and gviews
        self.few = None       # with few params, they and gviews (_step.still_bound)
        self.few_ptrs = None  # and their pointers
        self.ptrs = []        # expected data_ptr per param
        self.np = {}          # "param", "grad", state names -> flat numpy buffers
        self.grad = None      # the flat gradient buffer as a torch tensor (zero_grad)
        self.names = ()       # state buffer names of this slab's kind
        self.kind = None
        self.kind_id = None
        self.uniform = True   # every group's params at one step count and group state
        self.full = None      # (group rows, chunk table) when every param steps
        self.everyone = False  # the slab holds every param (step counts: one numpy op)
        self.pwatch = None    # PtrWatch of the storage the params' .data share
        self.ema = None       # the flat parameter EMA (numpy) when ema_decay is set
        self.ema_views = []   # its views, per param
        self.run = None       # the step core's Run over these buffers (adamfast._core)
        self.members = {}     # group -> the global indices of its params here
        self.first = {}       # group -> the first of them (its step count, group state)


def needed_names(self, hps):
    return set(self.spec.state_names(self.spec.kind_of(hps))) if hps else set()

def kind_covering(self, names):
    """The smallest kind of the spec whose state buffers include ``names``."""
    best = None
    for kind, kn in self.spec.kinds.items():
        if set(names) <= set(kn) and (best is None or len(kn) < len(self.spec.kinds[best])):
            best = kind
    return best

def state_keys(self, hp):
    """The torch state keys of a param in a group with ``hp``, in torch's order."""
    names = self.spec.state_names(self.spec.kind_of([hp]))
    return self._scalar_keys + tuple(names)

def init_value(self, name, hp):
    init = self.spec.state_init
    return 0.0 if init is None else init(name, hp)

def layout(self):
    """(Re)build every slab from the params of param_groups, keeping values and state."""
    if self._slabs and self.__dict__.get("_exposed"):
        self._reconcile_state()  # what the caller did to opt.state comes along
    hps = [self._validate(g, f"param_groups[{gi}]: ") for gi, g in enumerate(self.param_groups)]
    plist, gidx = [], []
    for gi, g in enumerate(self.param_groups):
        for p in g["params"]:
            plist.append(p)
            gidx.append(gi)
    n = len(plist)
    if self._stale:  # the state the old layout owes torch's dicts: its values move over
        self._sync_state()
    old_index = {id(p): i for i, p in enumerate(self._plist)}
    # The EMA of the params kept from the old layout (a new param's starts as its copy).
    old_ema = {id(p): e for p, e in zip(self._plist, self._ema_list or ())}
    ema_on = self._ema_decay is not None
    sdt = _scalar_dtype()
    steps = torch.zeros(n, dtype=sdt)
    gs = new_gstate(self.spec, n, sdt)
    has = np.zeros(n, bool)
    for i, p in enumerate(plist):
        j = old_index.get(id(p))
        if j is not None:
            steps[i] = self._steps[j]
            for name, arr in gs.arrays.items():
                arr[i] = self._gs.arrays[name][j]
            has[i] = self._has_state[j]
    gs.mirror()
    ours = {id(v) for slab in self._slabs for v in slab.gviews}
    slabs = []
    for dtype in (torch.float32, torch.float64):
        members = [i for i in range(n) if plist[i].dtype == dtype]
        if not members:
            continue
        slab = _Slab(dtype)
        slab.params = [plist[i] for i in members]
        slab.index = np.array(members, dtype=np.intp)
        slab.groups = [gidx[i] for i in members]
        slab.everyone = len(members) == n
        gset = sorted(set(slab.groups))
        names = self._needed_names([hps[g] for g in gset])
        for p in slab.params:  # keep the buffers a param already has state in
            st = self.state.get(p)
            if st:
                names |= {k for k in self.spec.all_state_names() if k in st}
        slab.kind = self._kind_covering(names)
        slab.names = tuple(self.spec.state_names(slab.kind))
        slab.kind_id = self._backend.kind_id(slab.kind)
        # The layout of the NumPy classes (adamfast._core_flat), over this slab's params:
        # its groups are contiguous, in the order of param_groups.
        lay = _layout([p.shape for p in slab.params], [slab.groups.count(g) for g in gset])
        np_params, np_grads, np_state, np_ema = _allocate(lay["_bounds"][-1][1], _NP[dtype],
                                                          slab.names, ema_on)
        slab.np = {"param": np_params, "grad": np_grads, **np_state}
        if ema_on:
            slab.np["ema"] = np_ema
        slab.ema = np_ema
        bases = {k: torch.from_numpy(v) for k, v in slab.np.items()}
        flat = {k: _views_of(t, lay) for k, t in bases.items()}
        # One storage under slab.grad and the gradient views: its count of users
        # tells a view rebound away from it (_step.check_views).
        slab.grad = bases["grad"]
        slab.empty = np.zeros(0, _NP[dtype])
        slab.ranges = [(s.start, s.stop) for s in lay["_slices"]]
        slab.bounds = lay["_tensors"]
        slab.chunks = lay["_chunks"]
        new_state = []
        for k, (i, p) in enumerate(zip(members, slab.params)):
            pv = flat["param"][k]
            pv.copy_(p.data)
            gv = flat["grad"][k]
            grad = p.grad
            bind = False
            if grad is not None:
                gv.copy_(grad)
                # Our own view of the old layout, or a grad nobody else can see replaced.
                bind = id(grad) in ours or (grad.layout == torch.strided and
                                            _alone(_holders(grad)))
            old = self.state.get(p) or {}
            views = {}
            for name in slab.names:
                v = flat[name][k]
                if isinstance(old.get(name), torch.Tensor):
                    v.copy_(old[name])
                else:
                    v.fill_(self._init_value(name, hps[gidx[i]]))
                views[name] = v
            if ema_on:
                ev = flat["ema"][k]
                ev.copy_(old_ema.get(id(p), p.data))
                slab.ema_views.append(ev)
            new_state.append((p, pv, gv, bind, views))
        # Everything is allocated and copied: now rebind.
        for k, (p, pv, gv, bind, views) in enumerate(new_state):
            p.data = pv
            if bind:
                p.grad = gv
            slab.gviews.append(gv)
            slab.gptrs.append(gv.data_ptr())
            slab.ptrs.append(pv.data_ptr())
        slab.gwatch = PtrWatch(slab.grad.untyped_storage()._cdata)
        if len(slab.params) <= _CHECK:
            slab.few = slab.params + slab.gviews
            slab.few_ptrs = slab.ptrs + slab.gptrs
        slab.pwatch = PtrWatch(bases["param"].untyped_storage()._cdata)
        slab.views = [v for *_, v in new_state]
        slab.run = Run(slab.kind_id, slab.np["param"], slab.np["grad"],
                       tuple(slab.np[n] for n in slab.names), None, slab.ema,
                       tensors=slab.bounds)
        slabs.append(slab)
    self._plist = plist
    self._gidx = gidx
    # Per group, its first param's index (every param of a group counted by group
    # holds the group's count): timm's group["step"] read from it (_step.group_steps).
    self._gfirst = {}
    for i, gi in enumerate(gidx):
        self._gfirst.setdefault(gi, i)
    self._steps = steps
    self._steps_np = steps.numpy()
    # 0-dim views, one per param, made once: torch's state["step"] (a scalar tensor)
    # that the step updates with one numpy operation over all params.
    self._step_views = [steps[i] for i in range(n)]
    self._gs = gs
    self._has_state = has
    self._filled = np.zeros(n, bool)
    self._stale = False
    self._slabs = slabs
    self._hp_cache = {}
    if ema_on:  # in the order of param_groups, as opt.param_groups lists the params
        where = {}
        for slab in slabs:
            for k, i in enumerate(slab.index):
                where[int(i)] = slab.ema_views[k]
        self._ema_list = [where[i] for i in range(n)]
    # torch's per-param state dicts: views of the new buffers.
    for i, p in enumerate(plist):
        if has[i]:
            self._fill_state(i, hps[gidx[i]])
    for slab in slabs:
        self._refresh(slab)

def slab_of(self, i):
    for slab in self._slabs:
        pos = np.searchsorted(slab.index, i)
        if pos < len(slab.index) and slab.index[pos] == i:
            return slab, int(pos)
    raise KeyError(i)

def fill_state(self, i, hp):
    """Make ``self.state[p]`` hold torch's keys for param ``i``: views, never copies."""
    p = self._plist[i]
    keys = self._state_keys(hp)
    self._has_state[i] = True
    self._filled[i] = True
    if not keys:  # a kind without state buffers (SGD without momentum) keeps none, as torch
        return
    slab, k = self._slab_of(i)
    st = self._torch_state[p]
    views = self._gs.views
    for key in keys:
        if key == "step":
            st["step"] = self._step_views[i]
        elif key in views:
            st[key] = views[key][i]
        else:
            st[key] = slab.views[k][key]


def sync_state(self):
    """torch's per-param state dicts for the params that took their first step since
    the last look: the step only marks them (``_has_state``), so that building
    torch's form costs nothing per step; reading ``opt.state`` (state_dict(),
    a user's ``opt.state[p]``) fills them, with the hyperparameters that step used."""
    self._stale = False
    todo = np.flatnonzero(self._has_state & ~self._filled)
    for i in todo.tolist():
        gi = self._gidx[i]
        cached = self._hp_cache.get(gi)
        hp = cached[1] if cached is not None else self._validate(
            self.param_groups[gi], f"param_groups[{gi}]: ")
        self._fill_state(i, hp)

def refresh(self, slab):
    """Recompute a slab's uniformity and the groups of its all-params run."""
    rows = sorted(set(slab.groups))
    slab.full = (rows, slab.chunks)  # the chunk table's rows are these groups, in order
    uniform = True
    groups = np.array(slab.groups)
    slab.members = {g: slab.index[groups == g] for g in rows}
    slab.first = {g: int(idx[0]) for g, idx in slab.members.items()}
    for g in rows:
        idx = slab.members[g]
        for arr in (self._steps_np, *self._gs.arrays.values()):
            if idx.size and not (arr[idx] == arr[idx[0]]).all():
                uniform = False
    slab.all_state = bool(self._has_state[slab.index].all())
    if self.spec.first_slot is not None and not slab.all_state:
        # A param's first step at a later count than 1 needs a row of its own
        # (spec.first_slot), which classes_run gives it.
        for g in rows:
            has = self._has_state[slab.members[g]]
            if not has.all() and (has.any() or self._steps_np[slab.first[g]] > 0):
                uniform = False
    slab.uniform = uniform
