"""torch's state_dict format in (``load_state_dict``), and the state a copy
(``copy.deepcopy``, ``pickle``) is made from.

Plain functions taking the optimizer; :class:`adamfast.torch.Optimizer` binds
them as its methods.
"""

from __future__ import annotations

import math
import numbers
import operator
from itertools import chain
from collections.abc import Mapping

import numpy as np
import torch

from ._common import _PARAM_ARGS

def step_count(value, where):
    """A step count from a checkpoint, as a float: a finite whole number >= 0, given as
    torch's checkpoints hold it (a scalar tensor of any real dtype, an int, a float)."""
    x = value
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{where} must be one number (a step count), got a tensor of "
                             f"shape {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{where} must be a real number (a step count), got a tensor of "
                            f"dtype {x.dtype}")
        x = x.item()
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{where} must be a real number (a step count), got "
                        f"{type(value).__name__} {value!r}")
    x = float(x)
    if not (math.isfinite(x) and x >= 0 and x.is_integer()):
        raise ValueError(f"{where} must be a finite whole number >= 0 (a step count), got "
                         f"{x!r}")
    return x


def real_tensor(v, want, where):
    """Refuse ``v`` unless it is a real tensor of ``want`` elements."""
    if not isinstance(v, torch.Tensor) or v.is_complex():
        raise TypeError(f"{where} must be a real tensor, got "
                        f"{v.dtype if isinstance(v, torch.Tensor) else type(v).__name__}")
    if v.numel() != want:
        raise ValueError(f"{where} must have {want} elements, got shape {tuple(v.shape)}")


def afresh(self, i, hp, step):
    """Param ``i`` without state, as torch starts one: its buffers at their initial
    values, its step count ``step`` (None: kept, a peer counting per group), its
    group state reset, its entry gone from torch's dicts."""
    slab, k = self._slab_of(i)
    for name in slab.names:
        slab.views[k][name].fill_(self._init_value(name, hp))
    if step is not None:
        self._steps_np[i] = step
    self._gs.reset(i, self.spec)
    self.__dict__["_torch_state"].pop(self._plist[i], None)
    self._has_state[i] = self._filled[i] = False


def load_state_dict(self, state_dict):
    """torch's format in; checked entirely, then copied into the existing views."""
    for hook in self._optimizer_load_state_dict_pre_hooks.values():
        out = hook(self, state_dict)
        if out is not None:
            state_dict = out
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or \
            "param_groups" not in state_dict:
        raise ValueError("state_dict must be a dict with 'state' and 'param_groups' "
                         "(from state_dict())")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(self.param_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    spec = self.spec
    id_map = {}
    new_groups = []
    group_steps = []
    for gi, (own, saved) in enumerate(zip(self.param_groups, saved_groups)):
        if len(saved["params"]) != len(own["params"]):
            raise ValueError("loaded state dict contains a parameter group that doesn't "
                             "match the size of optimizer's group")
        for sid, p in zip(saved["params"], own["params"]):
            id_map[sid] = p
        group = {k: v for k, v in own.items()}
        group.update({k: v for k, v in saved.items() if k not in _PARAM_ARGS})
        where = f"state_dict['param_groups'][{gi}]: "
        self._check_flags(group, where)
        new_groups.append((group, self._validate(group, where)))
        # The peer's group count (timm's): absent before the group's first step.
        group_steps.append(step_count(saved["step"], f"state_dict['param_groups'][{gi}]"
                                      f"['step']")
                           if spec.torch_step_in_group and saved.get("step") is not None
                           else 0.0)
        if spec.torch_step_in_group and saved.get("step") is not None:
            # The count, not the checkpoint's object: a tensor there may be the peer's
            # own, which its steps then add to.
            group["step"] = int(group_steps[-1])
    pindex = {id(p): i for i, p in enumerate(self._plist)}
    loaded = {}
    for sid, st in state_dict["state"].items():
        if sid not in id_map:
            continue
        p = id_map[sid]
        i = pindex[id(p)]
        if not isinstance(st, Mapping):
            raise TypeError(f"state_dict['state'][{sid!r}] must be a dict, got "
                            f"{type(st).__name__}")
        if not st:
            continue
        hp = new_groups[self._gidx[i]][1]
        keys = self._state_keys(hp)
        if not self._scalar_keys and all(st.get(k) is None for k in keys):
            # A peer that keeps no step has state once a buffer exists (torch's SGD
            # kept momentum_buffer=None before): none of them means no state yet.
            keys = ()
        missing = [k for k in keys if k not in st]
        if missing:
            raise ValueError(f"state_dict['state'][{sid!r}] is missing {missing} for "
                             f"{spec.name} with these settings")
        scalars = {}
        for k in keys:
            v = st[k]
            where = f"state_dict['state'][{sid!r}][{k!r}]"
            if k == "step":
                scalars[k] = step_count(v, where)
                continue
            if k in self._scalar_keys:
                if not isinstance(v, torch.Tensor):
                    v = torch.tensor(float(v))
                if v.numel() == 1 and not v.is_complex() and k in (spec.gstate or {}):
                    scalars[k] = spec.check_gstate(k, float(v), where)
            real_tensor(v, 1 if k in self._scalar_keys else p.numel(), where)
        loaded[i] = (st, keys, scalars)
    ema_in = self._check_ema(state_dict, id_map, pindex)
    # Everything fits: write.  First torch's dicts owed by the last step, with the
    # settings it used (the cache, which the new groups replace).
    if self._stale:
        self._sync_state()
    hps = [hp for _, hp in new_groups]
    before = [dict(own) for own in self.param_groups]
    try:
        for own, (group, _) in zip(self.param_groups, new_groups):
            params = own["params"]
            own.clear()
            own.update(group)
            own["params"] = params
        self._hp_cache = {}
        for slab in self._slabs:
            need = self._needed_names([hps[g] for g in set(slab.groups)])
            if not need <= set(slab.names):  # a switch the checkpoint turns on: grow
                self._layout()
                break
    except BaseException:
        for own, old in zip(self.param_groups, before):
            own.clear()
            own.update(old)
        self._hp_cache = {}
        raise
    for i, p in enumerate(self._plist):
        slab, k = self._slab_of(i)
        gi = self._gidx[i]
        hp = hps[gi]
        entry = loaded.get(i)
        # timm counts per group: a param without state still has the group's count.
        counted = group_steps[gi] if spec.torch_step_in_group else None
        if entry is None:
            self._afresh(i, hp, 0.0 if counted is None else counted)
            continue
        st, keys, scalars = entry
        for name in slab.names:
            if name in keys:
                src = st[name]
                if src.layout != torch.strided:  # torch's sparse momentum_buffer
                    src = src.to_dense()
                slab.views[k][name].copy_(src.reshape(slab.views[k][name].shape))
            else:
                slab.views[k][name].fill_(self._init_value(name, hp))
        if "step" in scalars:
            self._steps_np[i] = scalars["step"]
        elif counted is not None:
            self._steps_np[i] = counted
        else:  # SGD keeps no step: whether momentum started is the state
            self._steps_np[i] = 1.0 if keys else 0.0
        self._gs.set(i, loaded_gstate(spec, scalars, keys, int(self._steps_np[i])))
        extra = {kk: v for kk, v in st.items() if kk not in keys}
        self.state.pop(p, None)
        self._has_state[i] = self._filled[i] = False
        if keys:
            self._fill_state(i, hp)
        if extra:  # keys adamfast does not use are kept, as torch keeps them
            self.state[p].update(extra)
    if self._ema_list is not None:
        with torch.no_grad():
            for i, (p, e) in enumerate(zip(self._plist, self._ema_list)):
                src = p.detach() if ema_in is None else ema_in[i]
                e.copy_(src.reshape(e.shape))
    for slab in self._slabs:
        self._refresh(slab)
    for hook in self._optimizer_load_state_dict_post_hooks.values():
        hook(self)


def loaded_gstate(spec, scalars, keys, steps):
    """A param's group state from its loaded torch state (``scalars``: its scalar
    entries, checked; ``keys``: the entries taken), after ``steps`` steps: an entry
    torch keeps is read, one that follows from the step count
    (``spec.gstate_from_step``) is derived, any other starts afresh."""
    if not spec.gstate:
        return None
    out = {}
    for name, default in spec.gstate.items():
        if name in keys:
            out[name] = scalars[name]
        elif spec.gstate_from_step is not None:
            out[name] = spec.gstate_from_step(name, steps + 1)
        else:
            out[name] = default
    return out


def check_ema(self, state_dict, id_map, pindex):
    """The EMA tensors of a state_dict to load, checked ({param index: tensor}), or
    None: no EMA kept here, or none in the checkpoint (a torch.optim one), in
    which case the EMA restarts from the current params."""
    if self._ema_list is None or state_dict.get("ema") is None:
        return None
    saved = state_dict["ema"]
    if not isinstance(saved, Mapping):
        raise TypeError(f"state_dict['ema'] must be a dict {{param index: tensor}} (from "
                        f"state_dict()), got {type(saved).__name__}")
    out = {}
    for sid, p in id_map.items():
        if sid not in saved:
            raise ValueError(f"state_dict['ema'] has no entry for param {sid!r}")
        v = saved[sid]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            got = v.dtype if isinstance(v, torch.Tensor) else type(v).__name__
            raise TypeError(f"state_dict['ema'][{sid!r}] must be a real floating tensor, "
                            f"got {got}")
        if v.numel() != p.numel():
            raise ValueError(f"state_dict['ema'][{sid!r}] must have {p.numel()} elements, "
                             f"got shape {tuple(v.shape)}")
        out[pindex[id(p)]] = v
    return out


def copy_state(self):
    if self.__dict__.get("_exposed"):
        self._reconcile_state()  # the copy continues from what the caller left
    state = {}
    for i, p in enumerate(self._plist):
        st = self.state.get(p)
        if st:
            state[i] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                        for k, v in st.items()}
    return {
        "param_groups": [dict(g, params=list(g["params"])) for g in self.param_groups],
        "state": state,
        "ema": None if self._ema_list is None else
        {i: e.clone() for i, e in enumerate(self._ema_list)},
        # The group state in float64 (state_dict() holds torch's scalar dtype)
        "group_state": {name: a.copy() for name, a in self._gs.arrays.items()},
        # Every param's count, those without state included (a peer counting per group)
        "steps": self._steps_np.copy(),
        "defaults": dict(self.defaults),
        "options": {"max_grad_norm": self._max_grad_norm,
                    "skip_nonfinite": self._skip_nonfinite,
                    "ema_decay": self._ema_decay, "backend": self._backend.name},
        "last_result": self.last_result,
    }


def reconcile_state(self):
    """Take torch's state dicts back as the user left them, once ``opt.state`` was
    read or set since the last step: a param whose dict was emptied, deleted or
    replaced starts afresh, as torch.optim starts a param without state; a tensor
    put in place of a view has its values copied in (the view goes back in the
    dict, as ``load_state_dict`` leaves it); a replaced scalar (``step``,
    ``mu_product``) is read.  Everything is checked before anything is written."""
    spec = self.spec
    ts = self.__dict__["_torch_state"]
    if not isinstance(ts, Mapping):
        raise TypeError(f"opt.state must be a dict (param -> state), got {type(ts).__name__}")
    # A new opt.state holds nothing of the old one: every param with state is looked
    # at, not only those whose entries were filled in.
    replaced = self.__dict__.get("_state_replaced")
    nfilled = int(np.count_nonzero(self._filled))
    seen = self.__dict__.get("_state_seen")
    if not replaced and seen is not None and seen[0] is ts and seen[1] == nfilled and \
            _unchanged(ts, *seen[2:]):
        self.__dict__["_exposed"] = False
        return
    plan, fresh = [], []
    for i in np.flatnonzero(self._has_state if replaced else self._filled).tolist():
        p = self._plist[i]
        st = ts.get(p)
        gi = self._gidx[i]
        cached = self._hp_cache.get(gi)
        hp = cached[1] if cached is not None else self._validate(
            self.param_groups[gi], f"param_groups[{gi}]: ")
        if not isinstance(st, Mapping) or not st:
            # Emptied, deleted or replaced: afresh, unless it keeps nothing anyway.
            if self._state_keys(hp):
                fresh.append((i, hp))
            continue
        # The entries as the user left them, against the views they were filled with
        # (settings switched since may need more: the step fills those).
        slab, k = self._slab_of(i)
        changes = []
        for key, v in st.items():
            if key == "step" and "step" in self._scalar_keys:
                own = self._step_views[i]
            elif key in self._gs.views:
                own = self._gs.views[key][i]
            elif key in slab.names:
                own = slab.views[k][key]
            else:
                continue
            if v is own:
                continue
            where = f"opt.state[param {i}][{key!r}]"
            if key == "step":
                changes.append((key, own, step_count(v, where)))
            elif key in self._gs.views:
                changes.append((key, own, spec.check_gstate(key, _one(v, where), where)))
            else:
                real_tensor(v, own.numel(), where)
                changes.append((key, own, v))
        if changes:
            plan.append((i, st, changes))
    self.__dict__["_exposed"] = self.__dict__["_state_replaced"] = False
    if not plan and not fresh:
        # What the next look compares with, in C loops (a log that reads opt.state
        # at every step then costs ~0.1 us per param, not the loop above).
        dicts = list(ts.values())
        if all(type(d) is dict for d in dicts):
            self.__dict__["_state_seen"] = (ts, nfilled, dicts,
                                            list(chain.from_iterable(map(dict.values, dicts))))
        return
    self.__dict__["_state_seen"] = None
    with torch.no_grad():
        for i, hp in fresh:  # timm's count is the group's: kept
            self._afresh(i, hp, None if spec.torch_step_in_group else 0.0)
        for i, st, changes in plan:
            for key, own, v in changes:
                if key == "step":
                    self._steps_np[i] = v
                elif key in self._gs.views:
                    self._gs.set(i, {key: v})
                else:
                    src = v.to_dense() if v.layout != torch.strided else v
                    own.copy_(src.reshape(own.shape))
                st[key] = own
    for slab in self._slabs:
        self._refresh(slab)


def _unchanged(ts, dicts, values):
    """Whether opt.state is as reconcile_state last left it: the same dicts (in value
    order: no Tensor hashing), holding the same objects (plain dicts, their
    values read in C)."""
    return len(ts) == len(dicts) and all(map(operator.is_, ts.values(), dicts)) and \
        sum(map(len, dicts)) == len(values) and \
        all(map(operator.is_, chain.from_iterable(map(dict.values, dicts)), values))


def _one(v, where):
    """A scalar state entry as a float (a one-element real tensor or a number)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex():
            raise ValueError(f"{where} must be one real number, got a tensor of shape "
                             f"{tuple(v.shape)}")
        return v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{where} must be a real number, got {type(v).__name__}")
    return float(v)
