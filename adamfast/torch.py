"""adamfast.torch: drop-in ``torch.optim`` optimizers for CPU tensors, one kernel call per step.

``adamfast.torch.Adam, AdamW, Adamax, NAdam, RAdam, Adagrad, RMSprop, SGD,
Adadelta, Lion`` subclass :class:`torch.optim.Optimizer` and take the
installed torch class's constructor signature (Lion:
``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)``,
optax's formula), plus the keyword-only ``backend=``, the guarded step's ``max_grad_norm``,
``skip_nonfinite`` and ``ema_decay`` (below) and, on Adam and AdamW,
``eps_hat``, ``eps_root``, ``bias_correction`` and ``nesterov`` (see
:mod:`adamfast.algorithms.adam`).  Replacing ``torch.optim.AdamW`` by
``adamfast.torch.AdamW`` in a training loop should change nothing but the speed.

Why flat buffers
================
A CPU optimizer step is bound by memory bandwidth: an fp32 Adam step moves
28 bytes per parameter.  torch's foreach/fused steps go tensor by tensor, and
each tensor costs a dispatch.  Here, at construction, the params of each dtype
(float32, float64) are copied into one flat buffer laid out by
:func:`adamfast.zeros_buffers` (staggered, so the streams don't collide in the
memory system), and each ``p.data`` becomes a view of it, as
``ZeroRedundancyOptimizer(parameters_as_bucket_view=True)`` does.  The state
(``exp_avg``, ...) lives in flat buffers of the same layout, and the gradients
in one flat gradient buffer.  A step is then **one kernel call per dtype**,
whatever the number of tensors and param groups: param groups, and params at
different step counts, are rows of the scalar table and ranges of the chunk
table (:mod:`adamfast._engine`).  A param is never ``.contiguous()``-ed: a
non-contiguous param is refused, never updated through a copy.

Gradients: binding, and ``set_to_none``
=======================================
The step uses exactly the params whose ``p.grad`` is not None (torch's rule:
params without a gradient are skipped, their state and step count untouched).
At each step, a ``p.grad`` that is not the optimizer's view of the flat
gradient buffer (a fresh tensor after ``zero_grad(set_to_none=True)``, or one
the user assigned) is checked, copied into the flat buffer and **rebound**:
``p.grad`` becomes that view, so the next backward pass accumulates into it in
place (autograd adds into an existing ``.grad`` in place).  So:

* ``zero_grad(set_to_none=False)``: one memset of the flat gradient buffer per
  dtype; the following backward accumulates into the bound views; the step
  copies nothing (zero copy).
* ``zero_grad()`` / ``set_to_none=True`` (torch's default, kept so that code
  testing ``p.grad is None`` behaves as with torch): the grads become None,
  backward allocates fresh ones, and the step copies them into the flat buffer
  (8 bytes per float32 param).  That costs about what ``set_to_none=False``
  costs torch's own backward (a memset plus an in-place add, 16 bytes per
  param, against a fresh buffer and a copy, 8), so neither mode is a trap.

A ``p.data`` rebound behind the optimizer's back (``module.to(...)``,
``ZeroRedundancyOptimizer(parameters_as_bucket_view=True)``, FSDP resharding)
would make the step update a buffer nobody reads: the step checks the params'
data pointers and raises instead.  Each step checks 32 params in rotation (all
of them in a model of up to 32 tensors), because ``p.data_ptr()`` costs as
much as the rest of the per-tensor work: a rebinding is reported within
ceil(tensors/32) steps, before the run could go on silently.

Checkpoints
===========
``state_dict()`` is torch's own (torch's implementation): per param the keys
the torch class uses (``step`` as a scalar tensor of torch's scalar dtype,
float32 by default; ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
``mu_product``, ``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
``acc_delta``, ``exp_inf``), and ``param_groups`` with torch's keys.  The
state tensors are views of the flat buffers (references, as torch's are: use
``copy.deepcopy`` or ``torch.save`` for a snapshot).  ``load_state_dict``
checks everything first and then copies into the existing views; it never
rebinds them.  Checkpoints load into ``torch.optim`` and back.  The extras
(``eps_hat`` ...) appear in ``param_groups`` only when set to a non-default
value, so a default adamfast checkpoint's groups have exactly torch's keys.

Threads
=======
torch's intra-op pool (``torch.set_num_threads``) runs forward and backward;
adamfast's threads (``adamfast.set_num_threads``, ``ADAMFAST_NUM_THREADS``,
default: every core in the process's affinity mask) run the step.  In a
training loop they alternate (backward, then step), so each may use every
core; they are separate OpenMP runtimes (torch ships its own libgomp) and
only compete if the step runs concurrently with torch work (e.g. in another
Python thread).  ``OMP_NUM_THREADS`` does not reach adamfast's step: the
Cython kernel passes its own thread count to each parallel region.  So under
``torchrun``, which sets ``OMP_NUM_THREADS=1`` when it starts several
processes per node, torch's backward runs on one thread per rank while each
rank's adamfast step still uses every core in its affinity mask: not silently
single-threaded, but with N local ranks stepping at once, N times the cores
are busy.  adamfast warns once in that case (``LOCAL_WORLD_SIZE`` > 1, no
``ADAMFAST_NUM_THREADS``, more threads in all than cores); set
``ADAMFAST_NUM_THREADS=cores//local_ranks`` or bind ranks to cores.

torch's flags
=============
``foreach`` and ``fused`` are accepted and ignored: the step is always one
fused kernel call over flat buffers, so there is nothing to choose; they are
kept in ``param_groups`` as given, so a checkpoint means the same to
torch.optim.  ``capturable=True`` (CUDA graph capture) and
``differentiable=True`` (autograd through the step) are refused: the tensors
are CPU tensors and the kernel updates them in place outside autograd.

The guarded step
================
The keyword-only ``max_grad_norm=None``, ``skip_nonfinite=False`` and
``ema_decay=None`` are those of the NumPy classes (:mod:`adamfast._guard`),
fixed at construction and readable as attributes; they are options of the
optimizer, not of a param group, so they never appear in ``param_groups``.

* ``step(closure=None, *, grad_scale=None)``.  ``grad_scale`` is the loss
  scale the gradients carry: ``1/grad_scale`` is folded into the kernel's
  gradient multiplier, the gradients are never rewritten in memory.
* ``max_grad_norm=c`` clips with ``torch.nn.utils.clip_grad_norm_``'s
  semantics over all params of all groups and dtypes that have a gradient
  (``clip_grad_norm_`` ignores params whose grad is None; so does this):
  ``coef = min(c / (total_norm + 1e-6), 1)``, with the norm taken over the
  unscaled gradients.  The norm is a read-only pass over the flat gradient
  buffers (4 bytes per float32 param; float64 sums per fixed chunk, added in
  layout order: the same for any thread count), and the coefficient is
  folded into the same multiplier.  A NaN norm gives a NaN coefficient,
  which propagates, as in torch.
* ``skip_nonfinite=True``: a step whose gradients hold an Inf or NaN is
  skipped.  Params, every state buffer, the EMA and the step counts stay
  untouched, bit for bit.
* ``ema_decay=d``: a parameter EMA, one more stream of the update pass (one
  more staggered flat buffer per dtype).  It starts as a copy of the params
  when the optimizer is built (a param added by ``add_param_group``: its
  value then), and after every step that is not skipped becomes
  ``d*ema + (1-d)*p_new``, for the params that stepped: a param without a
  gradient is skipped entirely, its EMA included (torch's ``AveragedModel``
  would average it anyway; the two agree while such a param does not move).
  ``opt.ema_params`` is the list of live views, shaped like the params, in
  the order of ``param_groups``; copy them into an evaluation model with
  ``e.copy_(...)`` (never rebind a param's ``.data``).
* What a step did: without a closure ``step()`` returns an
  :class:`adamfast.StepResult` (``grad_norm``: the norm of the unscaled
  gradients before clipping, or None when neither clipping nor skipping asked
  for it; ``skipped``).  With a closure it returns the closure's loss, as
  torch's contract says.  Either way the result is in ``opt.last_result``.
* Checkpoints: with ``ema_decay``, ``state_dict()`` has one more top-level
  key, ``"ema"``: ``{param index: tensor}`` for every param, indexed as
  ``"state"`` is.  ``torch.optim``'s ``load_state_dict`` reads only
  ``"state"`` and ``"param_groups"``, so the checkpoint still loads there.
  ``load_state_dict`` checks ``"ema"`` with the rest before writing; a
  checkpoint without it (from torch.optim, or from an adamfast optimizer
  without an EMA) restarts the EMA from the current params.
  ``ZeroRedundancyOptimizer.consolidate_state_dict`` keeps only
  ``"state"`` and ``"param_groups"``: it drops the EMA.
* Sharded optimizers: under ``ZeroRedundancyOptimizer`` each rank's
  optimizer holds only its shard, so ``max_grad_norm`` and
  ``skip_nonfinite`` would see that shard's gradients only (a per-shard norm,
  and ranks that disagree on skipping).  Use them where every rank's
  optimizer holds all the params (one process, DDP); the EMA is element-wise
  and fine per shard.

``torch.amp.GradScaler``: the classes set ``_step_supports_amp_scaling``, as
torch's fused optimizers do.  GradScaler then hands over ``grad_scale`` and
``found_inf`` as attributes, and they take the guarded path above:
``grad_scale`` is that loss scale (the norm for ``max_grad_norm`` is then
taken over the unscaled gradients, as after ``scaler.unscale_`` and
``clip_grad_norm_``), and a step with ``found_inf`` is skipped like a
non-finite one (params, state, EMA and step counts untouched; torch's fused
CPU kernels write the unscaled gradients back, adamfast does not).
``step(grad_scale=...)`` together with GradScaler is refused (the gradients
would be unscaled twice).  Before such a ``step``, GradScaler itself checks
the gradients for Inf/NaN (``_check_inf_per_device``: one pass of torch's
own); a loop that drives the loss scale itself with
``step(grad_scale=S)`` and ``skip_nonfinite=True`` does without that pass.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from . import _dispatch, _guard
from ._engine import CHUNK, scalar_table
from ._memory import zeros_buffers
from .algorithms import ALGORITHMS

# The classes are made from the registry at the end of this module.
__all__ = ["Optimizer", *ALGORITHMS]

_NP = {torch.float32: np.float32, torch.float64: np.float64}
_ADAM_EXTRAS = {"eps_hat": False, "eps_root": 0.0, "bias_correction": True, "nesterov": False}
_GUARDED = {"max_grad_norm": None, "skip_nonfinite": False, "ema_decay": None}
_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_PARAM_ARGS = ("params", "param_names")
_CHECK = 32  # params whose data pointer each step checks, in rotation (see _collect)


def _scalar_dtype():
    """torch's dtype for scalar state (``step``, ``mu_product``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _plain(value):
    """torch accepts tensors as hyperparameters (lr, betas); the spec checks numbers."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a tensor hyperparameter must hold one value, got shape "
                             f"{tuple(value.shape)}")
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _describe(p):
    return f"tensor(shape={tuple(p.shape)}, dtype={p.dtype}, device={p.device})"


def _refusal(p):
    """Why adamfast.torch cannot update ``p`` in place, or None."""
    if type(p).__name__ == "DTensor" or hasattr(p, "_local_tensor"):
        return ("is a DTensor: adamfast.torch updates plain CPU tensors (step the local shards "
                "with a plain-tensor optimizer instead)")
    if isinstance(p, torch.nn.parameter.UninitializedParameter):
        return "is an UninitializedParameter: run the lazy module once before building the optimizer"
    if p.device.type != "cpu":
        return (f"is on {p.device}: adamfast.torch updates CPU tensors only (use torch.optim "
                f"with fused=True on accelerators)")
    if p.layout != torch.strided:
        return f"has layout {p.layout}: sparse tensors are not supported"
    if p.is_complex():
        return "is complex: complex params are not supported"
    if p.dtype in (torch.float16, torch.bfloat16):
        return (f"has dtype {p.dtype}: float16/bfloat16 params come with the precision issue; "
                f"use float32 or float64")
    if p.dtype not in _NP:
        return f"has dtype {p.dtype}: only float32 and float64 params are supported"
    if not p.is_contiguous():
        return ("is not contiguous: adamfast.torch refuses it rather than update a contiguous "
                "copy (the update would be lost); make the module's parameter contiguous first")
    return None


class _Pool:
    """The flat buffers of one dtype: params, grads, state; views per param; chunk tables."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.params = []      # the params, in layout order (global order filtered by dtype)
        self.index = None     # their global indices (np.intp)
        self.ranges = []      # (lo, hi) per param
        self.groups = []      # the group index of each param
        self.gviews = []      # the bound gradient views, per param
        self.ptrs = []        # expected data_ptr per param
        self.np = {}          # "param", "grad", state names -> flat numpy buffers
        self.names = ()       # state buffer names of this pool's kind
        self.kind = None
        self.kind_id = None
        self.uniform = True   # every group's params at one step count and group state
        self.full = None      # (group rows, chunk table) when every param steps
        self.everyone = False  # the pool holds every param (step counts: one numpy op)
        self.check_at = 0     # where the rotating data-pointer check resumes
        self.ema = None       # the flat parameter EMA (numpy) when ema_decay is set
        self.ema_views = []   # its views, per param


def _chunks(ranges):
    """The (row, lo, hi) chunk table for ranges [(row, lo, hi), ...], each split by CHUNK."""
    rows = []
    for r, lo, hi in ranges:
        for s in range(lo, hi, CHUNK):
            rows.append((r, s, min(s + CHUNK, hi)))
    table = np.array(rows, dtype=np.intp).reshape(-1, 3)
    table.setflags(write=False)
    return table


class Optimizer(torch.optim.Optimizer):
    """The base of every adamfast.torch class: everything is driven by ``spec``.

    Read the module docstring for the layout, the gradient binding and the
    checkpoint format.  ``backend`` may be read and reassigned
    (``"auto"``, ``"cython"``, ``"numba"``, ``"numpy"``).
    """

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
        guard = _guard.check_options(*(_plain(args.pop(name)) for name in _GUARDED))
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
        self._pools = []
        self._plist = []
        self._ema_list = None
        self._hp_cache = {}
        self._building = True
        super().__init__(params, defaults)
        self._building = False
        self._layout()
        self._warn_threads()

    # --- hyperparameters ------------------------------------------------------

    def _check_flags(self, group, where):
        if group.get("capturable"):
            raise ValueError(f"{where}capturable=True is for CUDA graph capture; adamfast.torch "
                             f"steps CPU tensors and does not support it")
        if group.get("differentiable"):
            raise ValueError(f"{where}differentiable=True is not supported: adamfast's kernel "
                             f"updates the params in place outside autograd")

    def _hp(self, group):
        """The spec's hyperparameters of a group, as plain numbers (extras default)."""
        out = {}
        for name in self._hp_names:
            if name in group:
                out[name] = _plain(group[name])
            elif name in self._extras:
                out[name] = self.defaults.get(name, self._extras[name])
            else:
                raise ValueError(f"param group is missing {name!r}")
        return out

    def _validate(self, group, where):
        hp = self._hp(group)
        if callable(hp["lr"]):
            raise TypeError(f"{where}lr must be a number or a tensor; adamfast.torch takes "
                            f"schedules through torch.optim.lr_scheduler")
        return self.spec.validate(hp, where)

    def _group_hp(self, gi, group):
        """A group's validated hp, checked again only when a value changed (schedulers)."""
        raw = tuple(map(group.get, self._hp_names))
        cached = self._hp_cache.get(gi)
        if cached is not None and cached[0] == raw:
            return cached[1]
        self._hp_changed = True
        self._check_flags(group, f"param_groups[{gi}]: ")
        hp = self._validate(group, f"param_groups[{gi}]: ")
        self._hp_cache[gi] = (raw, hp)
        return hp

    # --- params and layout ----------------------------------------------------

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

    def _needed_names(self, hps):
        return set(self.spec.state_names(self.spec.kind_of(hps))) if hps else set()

    def _kind_covering(self, names):
        """The smallest kind of the spec whose state buffers include ``names``."""
        best = None
        for kind, kn in self.spec.kinds.items():
            if set(names) <= set(kn) and (best is None or len(kn) < len(self.spec.kinds[best])):
                best = kind
        return best

    def _state_keys(self, hp):
        """The torch state keys of a param in a group with ``hp``, in torch's order."""
        names = self.spec.state_names(self.spec.kind_of([hp]))
        return self._scalar_keys + tuple(names)

    def _init_value(self, name, hp):
        init = self.spec.state_init
        return 0.0 if init is None else init(name, hp)

    def _layout(self):
        """(Re)build every pool from the params of param_groups, keeping values and state."""
        hps = [self._validate(g, f"param_groups[{gi}]: ") for gi, g in enumerate(self.param_groups)]
        plist, gidx = [], []
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                plist.append(p)
                gidx.append(gi)
        n = len(plist)
        old_index = {id(p): i for i, p in enumerate(self._plist)}
        # The EMA of the params kept from the old layout (a new param's starts as its copy).
        old_ema = {id(p): e for p, e in zip(self._plist, self._ema_list or ())}
        ema_on = self._ema_decay is not None
        sdt = _scalar_dtype()
        steps = torch.zeros(n, dtype=sdt)
        mu = torch.ones(n, dtype=sdt)
        mu64 = np.ones(n)
        started = np.zeros(n, bool)
        has = np.zeros(n, bool)
        for i, p in enumerate(plist):
            j = old_index.get(id(p))
            if j is not None:
                steps[i] = self._steps[j]
                mu64[i] = self._mu64[j]
                mu[i] = self._mu[j]
                started[i] = self._started[j]
                has[i] = self._has_state[j]
        pools = []
        for dtype in (torch.float32, torch.float64):
            members = [i for i in range(n) if plist[i].dtype == dtype]
            if not members:
                continue
            pool = _Pool(dtype)
            pool.params = [plist[i] for i in members]
            pool.index = np.array(members, dtype=np.intp)
            pool.groups = [gidx[i] for i in members]
            pool.everyone = len(members) == n
            gset = sorted(set(pool.groups))
            names = self._needed_names([hps[g] for g in gset])
            for p in pool.params:  # keep the buffers a param already has state in
                st = self.state.get(p)
                if st:
                    names |= {k for k in self.spec.all_state_names() if k in st}
            pool.kind = self._kind_covering(names)
            pool.names = tuple(self.spec.state_names(pool.kind))
            pool.kind_id = self._backend.kind_id(pool.kind)
            total = sum(p.numel() for p in pool.params)
            # The EMA is one more stream of the same pass: one more staggered buffer.
            bufs = zeros_buffers(total, _NP[dtype], 2 + len(pool.names) + ema_on)
            pool.np = dict(zip(("param", "grad") + pool.names + ("ema",) * ema_on, bufs))
            pool.ema = pool.np.get("ema")
            flat = {k: torch.from_numpy(v) for k, v in pool.np.items()}
            pool.empty = np.zeros(0, _NP[dtype])
            lo = 0
            new_state = []
            for k, (i, p) in enumerate(zip(members, pool.params)):
                hi = lo + p.numel()
                pool.ranges.append((lo, hi))
                shape = p.shape
                pv = flat["param"][lo:hi].view(shape)
                pv.copy_(p.data)
                gv = flat["grad"][lo:hi].view(shape)
                grad = p.grad
                if grad is not None:
                    gv.copy_(grad)
                old = self.state.get(p) or {}
                views = {}
                for name in pool.names:
                    v = flat[name][lo:hi].view(shape)
                    if isinstance(old.get(name), torch.Tensor):
                        v.copy_(old[name])
                    else:
                        v.fill_(self._init_value(name, hps[gidx[i]]))
                    views[name] = v
                if ema_on:
                    ev = flat["ema"][lo:hi].view(shape)
                    ev.copy_(old_ema.get(id(p), p.data))
                    pool.ema_views.append(ev)
                new_state.append((p, pv, gv, grad is not None, views))
                lo = hi
            # Everything is allocated and copied: now rebind.
            for k, (p, pv, gv, had_grad, views) in enumerate(new_state):
                p.data = pv
                if had_grad:
                    p.grad = gv
                pool.gviews.append(gv)
                pool.ptrs.append(pv.data_ptr())
            pool.views = [v for *_, v in new_state]
            pools.append(pool)
        self._plist = plist
        self._gidx = gidx
        self._steps = steps
        self._steps_np = steps.numpy()
        # 0-dim views, one per param, made once: torch's state["step"] (a scalar tensor)
        # that the step updates with one numpy operation over all params.
        self._step_views = [steps[i] for i in range(n)]
        self._mu_views = [mu[i] for i in range(n)]
        self._mu = mu
        self._mu_np = mu.numpy()
        self._mu64 = mu64
        self._started = started
        self._has_state = has
        self._pools = pools
        self._hp_cache = {}
        if ema_on:  # in the order of param_groups, as opt.param_groups lists the params
            where = {}
            for pool in pools:
                for k, i in enumerate(pool.index):
                    where[int(i)] = pool.ema_views[k]
            self._ema_list = [where[i] for i in range(n)]
        # torch's per-param state dicts: views of the new buffers.
        for i, p in enumerate(plist):
            if has[i]:
                self._fill_state(i, hps[gidx[i]])
        for pool in pools:
            self._refresh(pool)

    def _pool_of(self, i):
        for pool in self._pools:
            pos = np.searchsorted(pool.index, i)
            if pos < len(pool.index) and pool.index[pos] == i:
                return pool, int(pos)
        raise KeyError(i)

    def _fill_state(self, i, hp):
        """Make ``self.state[p]`` hold torch's keys for param ``i``: views, never copies."""
        p = self._plist[i]
        keys = self._state_keys(hp)
        self._has_state[i] = True
        if not keys:  # SGD without momentum keeps no state, as torch
            return
        pool, k = self._pool_of(i)
        st = self.state[p]
        for key in keys:
            if key == "step":
                st["step"] = self._step_views[i]
            elif key == "mu_product":
                st["mu_product"] = self._mu_views[i]
            else:
                st[key] = pool.views[k][key]

    def _refresh(self, pool):
        """Recompute a pool's uniformity and its all-params chunk table."""
        rows = sorted(set(pool.groups))
        pos = {g: r for r, g in enumerate(rows)}
        spans = {}
        for g, (lo, hi) in zip(pool.groups, pool.ranges):
            a, b = spans.get(g, (lo, hi))
            spans[g] = (min(a, lo), max(b, hi))
        pool.full = (rows, _chunks([(pos[g], a, b) for g, (a, b) in spans.items()]))
        uniform = True
        groups = np.array(pool.groups)
        for g in rows:
            idx = pool.index[groups == g]
            for arr in (self._steps_np, self._mu64, self._started):
                if idx.size and not (arr[idx] == arr[idx[0]]).all():
                    uniform = False
        pool.uniform = uniform
        pool.all_state = bool(self._has_state[pool.index].all())

    def _patch_step_function(self):
        """torch wraps ``step`` in ``profile_hook_step`` (a profiler range and the step
        hooks), which costs ~10 us per call here, as much as the rest of a small
        step.  adamfast's wrapper calls torch's exactly when a step hook is
        registered or the profiler is on, and the bare step otherwise."""
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        cls = type(self)
        if not getattr(cls.step, "hooked", None):
            cls.step = _hook_step(cls.step)
            cls.step.hooked = True

    def _warn_threads(self):
        try:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        except ValueError:
            return
        if local > 1 and not os.environ.get("ADAMFAST_NUM_THREADS"):
            cores = os.cpu_count() or 1
            if local * _dispatch.get_num_threads() > cores:
                warnings.warn(
                    f"adamfast.torch: {local} local ranks each step with "
                    f"{_dispatch.get_num_threads()} threads on {cores} cores (adamfast ignores "
                    f"OMP_NUM_THREADS); set ADAMFAST_NUM_THREADS={max(1, cores // local)} to "
                    f"share the cores", RuntimeWarning, stacklevel=3)

    # --- backend --------------------------------------------------------------

    @property
    def backend(self):
        """The backend in use (a concrete name, even if ``"auto"`` was asked for)."""
        return self._backend.name

    @backend.setter
    def backend(self, value):
        b = _dispatch.get_backend(value)
        ids = [b.kind_id(pool.kind) for pool in self._pools]
        self._backend = b
        for pool, kid in zip(self._pools, ids):
            pool.kind_id = kid

    # --- the guarded step's options and the EMA -------------------------------

    @property
    def max_grad_norm(self):
        """The global L2 norm the gradients are clipped to (None: no clipping)."""
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

    # --- the step -------------------------------------------------------------

    def _collect(self, pool):
        """Which params of a pool step (their grads checked), before anything is written.

        Returns (inactive positions, foreign positions): params whose grad is
        None, and params whose grad is not the bound view (to copy and rebind).
        """
        inactive = foreign = None
        k = 0
        for p, v in zip(pool.params, pool.gviews):
            g = p.grad
            if g is not v:
                if g is None:
                    if inactive is None:
                        inactive = []
                    inactive.append(k)
                else:
                    if foreign is None:
                        foreign = []
                    foreign.append(k)
            k += 1
        # The data pointers: _CHECK params per step, in rotation (all of them when
        # there are few): p.data_ptr() costs as much as the rest of the per-param work.
        n = len(pool.params)
        lo = pool.check_at if n > _CHECK else 0
        pool.check_at = (lo + _CHECK) % n if n > _CHECK else 0
        for k in range(lo, min(n, lo + _CHECK)):
            p = pool.params[k]
            if p.data_ptr() != pool.ptrs[k]:
                raise RuntimeError(
                    f"param {int(pool.index[k])} ({_describe(p)}) no longer shares memory with "
                    f"the optimizer's flat buffer: its .data was rebound after the optimizer was "
                    f"built (module.to(), ZeroRedundancyOptimizer(parameters_as_bucket_view="
                    f"True), FSDP, ...).  The step would update a buffer nobody reads; build the "
                    f"optimizer after such changes")
        for k in foreign or ():
            p, g = pool.params[k], pool.params[k].grad
            if not isinstance(g, torch.Tensor) or g.layout != torch.strided or \
                    g.device.type != "cpu" or g.dtype != p.dtype or g.shape != p.shape:
                raise ValueError(f"the grad of param {int(pool.index[k])} must be a dense CPU "
                                 f"tensor like the param ({_describe(p)}), got "
                                 f"{_describe(g) if isinstance(g, torch.Tensor) else type(g)}")
        return inactive, foreign

    def step(self, closure=None, *, grad_scale=None):
        """One step over every param with a gradient: one kernel call per dtype.

        ``closure`` is torch's: re-evaluates the model and returns the loss.
        ``grad_scale`` is the loss scale the gradients carry (they are divided
        by it inside the kernel, never rewritten); ``torch.amp.GradScaler``
        passes its own scale and ``found_inf`` through the attributes torch's
        fused optimizers read, and both take the same guarded path (see the
        module docstring).  Everything (grads, every group's hyperparameters,
        the scale) is checked before anything is written.

        Returns the closure's loss when a closure is given (torch's contract),
        and otherwise the :class:`adamfast.StepResult` of the step
        (``grad_norm``, ``skipped``).  Either way the result is also kept in
        ``opt.last_result``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        d = self.__dict__
        amp_scale = d.get("grad_scale")
        found_inf = d.get("found_inf")
        if grad_scale is not None:
            if amp_scale is not None:
                raise ValueError("grad_scale was given to step() while torch.amp.GradScaler "
                                 "also passes its scale: the gradients would be unscaled twice; "
                                 "use one or the other")
            scale = _guard.check_scale(_plain(grad_scale))
        else:
            scale = None if amp_scale is None else _guard.check_scale(float(amp_scale))
        amp_skip = found_inf is not None and float(found_inf) != 0.0
        inv = _guard.unscale(scale, [_NP[pool.dtype] for pool in self._pools])
        groups = self.param_groups
        self._hp_changed = False
        hps = [self._group_hp(gi, g) for gi, g in enumerate(groups)]
        if self._hp_changed:
            for pool in self._pools:
                need = self._needed_names([hps[g] for g in set(pool.groups)])
                if not need <= set(pool.names):  # a structural switch was turned on: grow
                    self._layout()
                    hps = [self._group_hp(gi, g) for gi, g in enumerate(groups)]
                    break
        plans = [(pool, *self._collect(pool)) for pool in self._pools]
        spec = self.spec
        nthreads = _dispatch.get_num_threads()
        # Everything is valid: from here on, write (the gradients first: the guard reads them).
        for pool, inactive, foreign in plans:
            if foreign:
                with torch.no_grad():
                    for k in foreign:
                        pool.gviews[k].copy_(pool.params[k].grad)
                        pool.params[k].grad = pool.gviews[k]
        if self._guard_on:
            nthreads = _guard.pass_threads(self._backend,
                                           sum(pool.np["grad"].size for pool in self._pools),
                                           nthreads)
        mult, norm, skipped = self._guard_pass(plans, inv, nthreads)
        if skipped or amp_skip:
            # Nothing changes: params, state, EMA and step counts (GradScaler's found_inf
            # is skipped exactly as torch's fused optimizers skip it).
            result = self.last_result = _guard.StepResult(norm, True)
            return loss if closure is not None else result
        ema = self._ema_decay
        for pool, inactive, foreign in plans:
            if inactive is None and pool.uniform:
                rows_g, chunks = pool.full
                rows, news = [], []
                for g in rows_g:
                    i = self._first(pool, g)
                    row, new = spec.scalars(int(self._steps_np[i]) + 1, hps[g], self._gstate(i))
                    rows.append(_guard.fold(row, mult, ema))
                    news.append((g, new))
                self._kernel(pool, rows, chunks, nthreads, single=len(rows) == 1)
                if pool.everyone:
                    self._steps_np += 1
                else:
                    self._steps_np[pool.index] += 1
                if spec.gstate is not None:
                    groups_arr = np.asarray(pool.groups)
                    for g, new in news:
                        self._set_gstate(pool.index[groups_arr == g], new)
                if not pool.all_state:
                    for i in pool.index:
                        if not self._has_state[i]:
                            self._fill_state(int(i), hps[self._gidx[i]])
                    pool.all_state = True
            else:
                self._step_classes(pool, set(inactive or ()), hps, mult, nthreads)
        result = self.last_result = _guard.PLAIN if norm is None else _guard.StepResult(norm)
        return loss if closure is not None else result

    def _guard_pass(self, plans, inv, nthreads):
        """Pass 1 of the guarded step over every dtype's gradients at once:
        (gradient multiplier, grad_norm or None, skipped).

        ``adamfast._guard.decide``'s rule over several flat buffers: the
        norm covers exactly the params that step (torch's clip_grad_norm_
        ignores params whose grad is None), float64 sums of squares per fixed
        chunk of each buffer's active ranges, added in layout order, so it is
        the same for any thread count.  Runs only with clipping or skipping.
        """
        if not self._guard_on:
            return inv, None, False
        b = self._backend
        total, finite = 0.0, True
        for pool, inactive, _ in plans:
            flat = pool.np["grad"]
            if inactive is None:
                spans = [(0, flat.size)]
            else:
                off = set(inactive)
                spans = []
                for k, (lo, hi) in enumerate(pool.ranges):
                    if k in off:
                        continue
                    if spans and spans[-1][1] == lo:
                        spans[-1] = (spans[-1][0], hi)
                    else:
                        spans.append((lo, hi))
            for lo, hi in spans:
                ss, ok = _guard.sumsq(b, flat[lo:hi], nthreads, inv)
                total += ss
                finite = finite and ok
        return _guard.decide(total, finite, inv, self._max_grad_norm, self._skip_nonfinite)

    def _first(self, pool, g):
        return int(pool.index[pool.groups.index(g)])

    def _gstate(self, i):
        gs = self.spec.gstate
        if gs is None:
            return None
        if "mu_product" in gs:
            return {"mu_product": float(self._mu64[i])}
        return {"momentum_started": bool(self._started[i])}

    def _set_gstate(self, idx, new):
        if new is None:
            return
        if "mu_product" in new:
            self._mu64[idx] = new["mu_product"]
            self._mu_np[idx] = new["mu_product"]
        else:
            self._started[idx] = new["momentum_started"]

    def _kernel(self, pool, rows, chunks, nthreads, single):
        s = tuple(pool.np[n] for n in pool.names)
        s = s + (pool.empty,) * (3 - len(s))
        b = self._backend
        p, g = pool.np["param"], pool.np["grad"]
        ema = pool.ema
        if single and b.step_fast is not None and \
                b.step_fast(pool.kind_id, p, g, s[0], s[1], s[2], tuple(map(float, rows[0])),
                            nthreads, ema):
            return
        b.kernel(pool.kind_id, p, g, s[0], s[1], s[2], scalar_table(rows), chunks, nthreads, ema)

    def _step_classes(self, pool, inactive, hps, mult, nthreads):
        """The general case: params at different step counts or group states, or some
        without a gradient.  Each (group, step, group state) is one row of the
        scalar table; one kernel call still does every param that steps."""
        spec = self.spec
        classes = {}
        ranges = []
        members = []
        for k, (i, g, (lo, hi)) in enumerate(zip(pool.index, pool.groups, pool.ranges)):
            if k in inactive:
                continue
            gs = self._gstate(i)
            key = (g, float(self._steps_np[i]), None if gs is None else tuple(gs.values()))
            c = classes.get(key)
            if c is None:
                c = classes[key] = len(classes)
                members.append([])
            members[c].append(int(i))
            if ranges and ranges[-1][0] == c and ranges[-1][2] == lo:
                ranges[-1] = (c, ranges[-1][1], hi)
            else:
                ranges.append((c, lo, hi))
        if not classes:
            return
        rows, news = [], []
        for (g, step, _), c in classes.items():
            i = members[c][0]
            row, new = spec.scalars(int(step) + 1, hps[g], self._gstate(i))
            rows.append(_guard.fold(row, mult, self._ema_decay))
            news.append(new)
        self._kernel(pool, rows, _chunks(ranges), nthreads, single=False)
        for c, idx in enumerate(members):
            idx = np.asarray(idx, dtype=np.intp)
            self._steps_np[idx] += 1
            self._set_gstate(idx, news[c])
            for i in idx:
                if not self._has_state[i]:
                    self._fill_state(int(i), hps[self._gidx[i]])
        self._refresh(pool)

    # --- gradients ------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True):
        """torch's zero_grad.  ``set_to_none=True`` (torch's default) sets every grad
        to None; ``set_to_none=False`` zeroes the flat gradient buffer with one
        memset per dtype (grads the optimizer has not bound are zeroed one by one)."""
        if set_to_none:
            for pool in self._pools:
                for p in pool.params:
                    p.grad = None
            return
        for pool in self._pools:
            pool.np["grad"].fill(0)
            for p, v in zip(pool.params, pool.gviews):
                g = p.grad
                if g is not None and g is not v:
                    if g.grad_fn is not None:
                        g.detach_()
                    else:
                        g.requires_grad_(False)
                    g.zero_()

    # --- checkpoints ----------------------------------------------------------

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
        id_map = {}
        new_groups = []
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
            if self.spec.name == "SGD" and st.get("momentum_buffer", None) is None:
                keys = ()
            missing = [k for k in keys if k not in st]
            if missing:
                raise ValueError(f"state_dict['state'][{sid!r}] is missing {missing} for "
                                 f"{self.spec.name} with these settings")
            for k in keys:
                v = st[k]
                if not isinstance(v, torch.Tensor) and k in ("step", "mu_product"):
                    v = torch.tensor(float(v))
                if not isinstance(v, torch.Tensor) or v.is_complex():
                    raise TypeError(f"state_dict['state'][{sid!r}][{k!r}] must be a real tensor")
                want = 1 if k in self._scalar_keys else p.numel()
                if v.numel() != want:
                    raise ValueError(f"state_dict['state'][{sid!r}][{k!r}] must have {want} "
                                     f"elements, got shape {tuple(v.shape)}")
            loaded[i] = (st, keys)
        ema_in = self._check_ema(state_dict, id_map, pindex)
        # Everything fits: write.
        for own, (group, _) in zip(self.param_groups, new_groups):
            params = own["params"]
            own.clear()
            own.update(group)
            own["params"] = params
        self._hp_cache = {}
        hps = [hp for _, hp in new_groups]
        need_layout = False
        for pool in self._pools:
            need = self._needed_names([hps[g] for g in set(pool.groups)])
            if not need <= set(pool.names):
                need_layout = True
        if need_layout:
            self._layout()
        for i, p in enumerate(self._plist):
            pool, k = self._pool_of(i)
            hp = hps[self._gidx[i]]
            entry = loaded.get(i)
            extra = {}
            if entry is None:
                for name in pool.names:
                    pool.views[k][name].fill_(self._init_value(name, hp))
                self._steps_np[i] = 0
                self._mu64[i] = self._mu_np[i] = 1.0
                self._started[i] = False
                self.state.pop(p, None)
                self._has_state[i] = False
                if self.spec.name == "Adagrad":  # torch's Adagrad has state from the start
                    self._fill_state(i, hp)
                continue
            st, keys = entry
            for name in pool.names:
                if name in keys:
                    pool.views[k][name].copy_(st[name].reshape(pool.views[k][name].shape))
                else:
                    pool.views[k][name].fill_(self._init_value(name, hp))
            if "step" in keys:
                self._steps_np[i] = float(st["step"])
            else:  # SGD keeps no step: whether momentum started is the state
                self._steps_np[i] = 1.0 if keys else 0.0
            if "mu_product" in keys:
                self._mu64[i] = self._mu_np[i] = float(st["mu_product"])
            self._started[i] = "momentum_buffer" in keys
            extra = {kk: v for kk, v in st.items() if kk not in keys}
            self.state.pop(p, None)
            self._has_state[i] = False
            if keys:
                self._fill_state(i, hp)
            if extra:  # keys adamfast does not use are kept, as torch keeps them
                self.state[p].update(extra)
        if self._ema_list is not None:
            with torch.no_grad():
                for i, (p, e) in enumerate(zip(self._plist, self._ema_list)):
                    src = p.detach() if ema_in is None else ema_in[i]
                    e.copy_(src.reshape(e.shape))
        for pool in self._pools:
            self._refresh(pool)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def state_dict(self):
        """torch's ``state_dict()``, plus, with ``ema_decay``, the top-level key ``"ema"``:
        ``{param index: tensor}`` for every param, indexed as ``"state"`` is (views of
        the flat EMA buffers, as the state tensors are).  ``torch.optim``'s
        ``load_state_dict`` ignores keys other than ``"state"`` and
        ``"param_groups"``, so the checkpoint still loads into torch.optim."""
        out = super().state_dict()
        if self._ema_list is not None:
            out["ema"] = dict(enumerate(self._ema_list))
        return out

    def _check_ema(self, state_dict, id_map, pindex):
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

    def __setstate__(self, state):
        raise TypeError("adamfast.torch optimizers are not picklable; save state_dict() instead")


# --- the classes ----------------------------------------------------------------

def _hook_step(func):
    from torch.autograd import profiler
    from torch.optim import optimizer as topt

    hooked = torch.optim.Optimizer.profile_hook_step(func)

    @functools.wraps(func)
    def step(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or topt._global_optimizer_pre_hooks or topt._global_optimizer_post_hooks
                or profiler._is_profiler_enabled):
            return hooked(self, *args, **kwargs)
        return func(self, *args, **kwargs)
    return step


def _signature(spec, torch_cls):
    P = inspect.Parameter
    if torch_cls is not None:
        torch_sig = inspect.signature(torch_cls.__init__)
        params = [p.replace(annotation=P.empty) for n, p in torch_sig.parameters.items()
                  if n != "self"]
        names = {p.name for p in params}
        for h in spec.hyper:
            if h.name not in names and (spec.name not in ("Adam", "AdamW")
                                        or h.name not in _ADAM_EXTRAS):
                raise RuntimeError(f"{spec.name}: torch's signature has no {h.name!r}")
    else:
        params = [P("params", P.POSITIONAL_OR_KEYWORD)] + [
            P(h.name, P.POSITIONAL_OR_KEYWORD, default=h.default) for h in spec.hyper]
    extra = []
    if spec.name in ("Adam", "AdamW"):
        extra += [P(n, P.KEYWORD_ONLY, default=d) for n, d in _ADAM_EXTRAS.items()]
    extra += [P(n, P.KEYWORD_ONLY, default=d) for n, d in _GUARDED.items()]
    extra += [P("backend", P.KEYWORD_ONLY, default="auto")]
    kinds = [p.kind for p in params]
    positional = [p for p in params if p.kind != P.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind == P.KEYWORD_ONLY]
    assert kinds == sorted(kinds)
    return inspect.Signature(positional + keyword + extra)


def _make(name):
    """The class of registry entry ``name``: everything comes from its spec."""
    spec = ALGORITHMS[name]
    peer = spec.peer.split(".")
    torch_name = peer[-1] if peer[:2] == ["torch", "optim"] else None
    torch_cls = getattr(torch.optim, torch_name) if torch_name else None
    sig = _signature(spec, torch_cls)
    doc = (f"{name} as ``{spec.peer}``, over flat buffers: one kernel call per dtype per step.\n\n"
           f"Signature: torch's (``{name}{sig}``).  The maths is in "
           f":mod:`{spec.reference[next(iter(spec.kinds))].__module__}`; the torch integration "
           f"(flat buffers, gradient binding, state_dict, GradScaler, threads) is described in "
           f":mod:`adamfast.torch`.")
    # adamfast's own hyperparameters (not in torch's signature): kept out of a
    # checkpoint's param_groups while they hold their defaults.
    torch_names = set(inspect.signature(torch_cls).parameters) if torch_cls else None
    extras = ({h.name: h.default for h in spec.hyper if h.name not in torch_names}
              if torch_names is not None else {})
    return type(name, (Optimizer,), {
        "spec": spec, "_torch_class": torch_cls, "__signature__": sig,
        "__doc__": doc, "__module__": __name__, "_scalar_keys": spec.torch_scalar_state,
        "_extras": extras, "_hp_names": tuple(h.name for h in spec.hyper)})


CLASSES = {name: _make(name) for name in ALGORITHMS}
globals().update(CLASSES)
