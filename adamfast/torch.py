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

Sparse gradients (``nn.Embedding(sparse=True)``): SGD and Adagrad take a
``torch.sparse_coo`` grad as torch's do.  It is densified into the flat
gradient buffer (duplicate indices summed) and ``p.grad`` stays the sparse
tensor (never rebound), so a sparse grad costs a dense copy per step: a
correct path, not a fast one.  The result is torch's element by element (an
entry the gradient does not touch gets a zero gradient, which leaves it, and
its ``sum``, unchanged).  What torch refuses is refused with torch's
RuntimeError: ``weight_decay != 0`` and ``fused=True`` with a sparse grad, and
a sparse grad in any other class.  Adagrad with ``eps=0`` is refused too
(ValueError): an untouched entry whose accumulator is 0 would be 0/0 in the
dense kernel, where torch's sparse path skips it.  The state is dense:
``momentum_buffer`` is a strided tensor where torch's sparse path keeps a
sparse one (a checkpoint with a sparse one loads, densified).  A grad with the
wrong dtype, shape, device or layout is refused with a message naming that
property.

Hyperparameters
===============
A group's hyperparameters may change between steps, as schedulers change
them, in place included: a Tensor ``lr`` that a scheduler ``fill_``s, Tensor
betas changed in place, list betas mutated.  Each step sees the current
values, and a changed value is validated before anything is written (as at
construction: a refused value raises ValueError and the step changes
nothing).  Unchanged groups cost one identity check over the group's values,
plus reading the Tensors' and lists' values.

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
As torch's, Adagrad creates ``step`` and ``sum`` in its constructor (for the
params given then; a group added later gets its state at its first step, as
does a param that a loaded checkpoint has no state for).

Saving a module, not the optimizer: every param is a view of its dtype's flat
buffer, and ``torch.save`` writes a tensor's whole storage.  So
``torch.save(model.state_dict())`` writes the buffer once (no waste: the
params fill it exactly), but a submodule's ``state_dict()`` (or a single param) also
writes the whole flat buffer: a 10-element bias of a 1M-parameter model saves
as 4 MB.  ``pickle.dumps`` is worse: it writes the whole storage once per
tensor.  Save a part compactly by cloning it first::

    sd = model.head.state_dict()
    torch.save({k: v.clone() for k, v in sd.items()}, "head.pt")

Copies
======
``copy.deepcopy(opt)`` and ``pickle`` work as with torch.optim.  A copy is an
independent optimizer over the copied params: it lays out flat buffers of its
own and rebinds each copied param's ``.data`` to a view of them (a copy cannot
share the original's buffers).  ``copy.deepcopy((model, opt))`` (or one pickle
of both) copies each param once, so the copied optimizer steps the copied
model; ``copy.deepcopy(opt)`` alone copies the params too, and the copy then
steps params no model holds, as torch.optim's copy does.  The copy carries
``param_groups``, the state (as ``load_state_dict`` takes it, plus NAdam's
``mu_product`` in float64), the EMA, the guarded step's options, the backend
and ``last_result``; step hooks and gradients are not copied (torch.optim
copies no hooks, and ``Parameter`` copies no ``.grad``).

Concurrency, interruption, ``torch.compile``
============================================
``step()`` on one optimizer from several threads is serialized by a lock
per optimizer (one step after the other, none lost; optimizers never share
a lock, so different optimizers in different threads run concurrently).  A
``step()`` called from inside the same optimizer's step (by its closure)
raises RuntimeError instead of deadlocking.  Only ``step()`` (and taking a
copy) holds the lock: ``zero_grad``, ``load_state_dict`` and
``add_param_group`` concurrent with a step are the caller's to order, as with
torch.optim.

A step is atomic as the user sees it: everything is checked before anything
is written, and a kernel checks its arguments before it writes, so an
exception leaves params, state and counters as they were.  A KeyboardInterrupt
(Ctrl-C) arriving during the kernel call is raised when the call returns,
after it wrote: the step then completes its bookkeeping (``step``,
``mu_product``, the other dtype's kernel) before the interrupt propagates, so
the counters never lag the buffers.  (The numpy backend's kernel is Python
code and can be interrupted midway; the compiled kernels cannot.  With params
of both dtypes a step is two kernel calls; only a bug could make the second
refuse arguments the first accepted.)

Under ``torch.compile``, the step runs eagerly: dynamo does not trace it
(tracing would guard on the step's float scalars and recompile at every
step), so a compiled training step graph-breaks at ``opt.step()`` and never
recompiles because of it.

Threads
=======
torch's threads run forward and backward, adamfast's the step; how they
share the cores (torchrun included): docs/threads.md.

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
import operator
import os
import threading
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
_SPARSE = ("SGD", "Adagrad")  # torch's classes that take sparse gradients
_STATE_AT_CONSTRUCTION = ("Adagrad",)  # torch's classes whose constructor creates the state
_BETAS_ALIKE = ("Adam", "AdamW")  # torch's classes refusing betas that mix float and Tensor


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


_PLAIN_TYPES = (float, int, bool, str, type(None), np.float64, np.float32, np.bool_)


def _reader(value):
    """A zero-argument function returning the current value of a hyperparameter that
    can change in place without the group noticing (a Tensor, which schedulers
    ``fill_``; a list; a tuple holding either), or None for one that cannot."""
    if type(value) in _PLAIN_TYPES:  # isinstance(x, torch.Tensor) costs ~0.2 us
        return None
    if isinstance(value, torch.Tensor):
        return value.tolist
    if isinstance(value, (list, tuple)):
        parts = [_reader(v) for v in value]
        if all(r is None for r in parts):
            return value.copy if isinstance(value, list) else None
        return lambda: [v if r is None else r() for v, r in zip(value, parts)]
    return None


def _readers(raw):
    """One function reading every in-place-changeable value of ``raw``, or None."""
    found = [r for r in map(_reader, raw) if r is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return lambda: [r() for r in found]


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
            for pool in self._pools:
                self._refresh(pool)
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
        if self.spec.name in _BETAS_ALIKE:
            b = group.get("betas")
            if isinstance(b, (tuple, list)) and len(b) == 2 and \
                    isinstance(b[0], torch.Tensor) != isinstance(b[1], torch.Tensor):
                raise ValueError(f"{where}betas must be either both floats or both Tensors, as "
                                 f"in torch.optim.{self.spec.name}; got {b!r}")
        hp = self._hp(group)
        if callable(hp["lr"]):
            raise TypeError(f"{where}lr must be a number or a tensor; adamfast.torch takes "
                            f"schedules through torch.optim.lr_scheduler")
        return self.spec.validate(hp, where)

    def _group_hp(self, gi, group):
        """A group's validated hp, checked again only when a value changed (schedulers).

        The cache holds the objects the group held when it was validated.  The
        step's check is one of identity over the group's values (cheaper than
        reading the hyperparameters one by one), then, for the values that can
        change in place (a Tensor lr that a scheduler ``fill_``s, Tensor betas,
        list betas), of their current value: an in-place change takes effect and
        is checked.  Equality alone would not do: a Tensor compares equal to the
        float of its value (in the Tensor's precision), so replacing one by the
        other would go unseen.
        """
        cached = self._hp_cache.get(gi)
        if cached is not None and (
                (len(group) == len(cached[0]) and all(map(operator.is_, group.values(),
                                                          cached[0])))
                or self._same_hp(gi, group, cached)):
            read = cached[2]
            if read is None or read() == cached[3]:
                return cached[1]
        self._hp_changed = True
        where = f"param_groups[{gi}]: "
        self._check_flags(group, where)
        raw = tuple(map(group.get, self._hp_names))
        read = _readers(raw)
        seen = None if read is None else read()  # before validating: a change after it is seen
        hp = self._validate(group, where)
        self._hp_cache[gi] = [tuple(group.values()), hp, read, seen, raw]
        return hp

    def _same_hp(self, gi, group, cached):
        """The group holds other objects than when validated: whether its
        hyperparameters are still the cached ones (the others may differ: a
        scheduler's ``initial_lr``, a user's key), each the same object or a plain
        number of the same type and value (a scheduler assigning an equal float).
        If so the cache takes the new objects, for the next identity check."""
        raw = tuple(map(group.get, self._hp_names))
        for a, b in zip(raw, cached[4]):
            if a is not b and (type(a) is not type(b) or type(a) not in _PLAIN_TYPES or a != b):
                return False
        self._check_flags(group, f"param_groups[{gi}]: ")
        cached[0] = tuple(group.values())
        cached[4] = raw
        return True

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

    def _collect(self, pool, hps):
        """Which params of a pool step (their grads checked), before anything is written.

        Returns (inactive positions, foreign positions): params whose grad is
        None, and params whose grad is not the bound view (to copy and rebind,
        or, when sparse, to densify into the flat gradient buffer).
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
            self._check_grad(pool, k, hps)
        return inactive, foreign

    def _check_grad(self, pool, k, hps):
        """A grad the optimizer has not bound: refused, naming what is wrong, unless the
        flat gradient buffer can take it (a dense grad like the param, or a sparse COO
        grad where torch's class takes one)."""
        p = pool.params[k]
        g = p.grad
        where = f"the grad of param {int(pool.index[k])} ({_describe(p)})"
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{where} must be a tensor, got {type(g).__name__}")
        if g.layout != torch.strided:
            self._check_sparse(g, where, pool.groups[k], hps[pool.groups[k]])
        if g.device.type != "cpu":
            raise ValueError(f"{where} is on {g.device}; expected cpu, the param's device")
        if g.dtype != p.dtype:
            raise ValueError(f"{where} has dtype {g.dtype}; expected {p.dtype}, the param's dtype")
        if g.shape != p.shape:
            raise ValueError(f"{where} has shape {tuple(g.shape)}; expected {tuple(p.shape)}, "
                             f"the param's shape")

    def _check_sparse(self, g, where, gi, hp):
        """torch's rules for a sparse grad: SGD and Adagrad take a COO grad (not with
        weight_decay, nor fused=True); the other classes raise RuntimeError."""
        name = self.spec.name
        if g.layout != torch.sparse_coo:
            raise ValueError(f"{where} has layout {g.layout}; expected torch.strided (dense)"
                             + (" or torch.sparse_coo" if name in _SPARSE else ""))
        if name not in _SPARSE:
            raise RuntimeError(f"{name} does not support sparse gradients ({where} has layout "
                               f"torch.sparse_coo); SGD and Adagrad do, as in torch.optim")
        if self.param_groups[gi].get("fused"):
            raise RuntimeError(f"{name} with fused=True does not support sparse gradients, as "
                               f"torch.optim.{name} ({where} is sparse)")
        if hp["weight_decay"] != 0:
            raise RuntimeError(f"{name}: the weight_decay option is not compatible with sparse "
                               f"gradients, as in torch.optim.{name} ({where} is sparse)")
        if name == "Adagrad" and hp["eps"] == 0:
            # The dense kernel would give 0/0 where the accumulator is still 0 and the
            # sparse grad has no entry; torch's sparse path leaves those entries alone.
            raise ValueError(f"Adagrad with eps=0 cannot take a sparse gradient ({where} is "
                             f"sparse): an entry it does not touch would become NaN; use "
                             f"eps > 0 (the default is 1e-10)")

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

        Concurrent calls on one optimizer are serialized by its lock (one step
        after the other, none lost); a ``step()`` called from inside this
        optimizer's own step (its closure) raises RuntimeError.
        """
        ct = self._closure_thread
        if ct is not None and ct == threading.get_ident():
            raise RuntimeError(
                f"{type(self).__name__}.step() was called from inside its own step(), by "
                f"the closure: the outer step would then apply a second update with stale "
                f"counters.  Return the loss from the closure and let step() step")
        # A with-block: a Ctrl-C cannot land between taking the lock and the handler
        # that releases it, as it can after a lock.acquire() call.
        with self._lock:
            loss = None
            if closure is not None:
                # Marks the thread running the closure, so that a step() from inside
                # it is refused (above) instead of waiting for the lock forever.
                self._closure_thread = threading.get_ident()
                try:
                    with torch.enable_grad():
                        loss = closure()
                finally:
                    self._closure_thread = None
            d = self.__dict__
            amp_scale = d.get("grad_scale")
            found_inf = d.get("found_inf")
            if grad_scale is not None:
                if amp_scale is not None:
                    raise ValueError("grad_scale was given to step() while torch.amp."
                                     "GradScaler also passes its scale: the gradients would be "
                                     "unscaled twice; use one or the other")
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
            plans = [(pool, *self._collect(pool, hps)) for pool in self._pools]
            spec = self.spec
            nthreads = _dispatch.get_num_threads()
            # Everything is valid: from here on, write (the gradients first: the guard reads them).
            for pool, inactive, foreign in plans:
                if foreign:
                    with torch.no_grad():
                        for k in foreign:
                            g = pool.params[k].grad
                            if g.layout == torch.strided:
                                pool.gviews[k].copy_(g)
                                pool.params[k].grad = pool.gviews[k]
                            else:  # sparse: densified (duplicates summed), p.grad left as is
                                pool.gviews[k].copy_(g.to_dense())
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
            interrupted = None
            for pool, inactive, foreign in plans:
                if inactive is None and pool.uniform:
                    rows_g, chunks = pool.full
                    rows, news = [], []
                    for g in rows_g:
                        i = self._first(pool, g)
                        row, new = spec.scalars(int(self._steps_np[i]) + 1, hps[g], self._gstate(i))
                        rows.append(_guard.fold(row, mult, ema))
                        news.append((g, new))
                    try:
                        self._kernel(pool, rows, chunks, nthreads, single=len(rows) == 1)
                    except Exception:
                        raise  # the kernels check their arguments before writing: nothing to count
                    except BaseException as exc:
                        # A Ctrl-C that came during the C call is raised as it returns, after the
                        # kernel wrote: the counters advance with the buffers, the other dtypes
                        # step too, and then it propagates.
                        interrupted = exc
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
                    interrupted = self._step_classes(pool, set(inactive or ()), hps, mult,
                                                     nthreads) or interrupted
            result = self.last_result = _guard.PLAIN if norm is None else _guard.StepResult(norm)
            if interrupted is not None:
                raise interrupted
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
        b = self._backend
        p, g = pool.np["param"], pool.np["grad"]
        ema = pool.ema
        if single and b.step_fast is not None and \
                b.step_fast(pool.kind_id, p, g, s, tuple(map(float, rows[0])), nthreads, ema):
            return
        b.kernel(pool.kind_id, p, g, s, scalar_table(rows), chunks, nthreads, ema)

    def _step_classes(self, pool, inactive, hps, mult, nthreads):
        """The general case: params at different step counts or group states, or some
        without a gradient.  Each (group, step, group state) is one row of the
        scalar table; one kernel call still does every param that steps.  Returns
        the KeyboardInterrupt (or other BaseException) the kernel call raised after
        writing, for the caller to raise once the step is counted."""
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
            return None
        rows, news = [], []
        for (g, step, _), c in classes.items():
            i = members[c][0]
            row, new = spec.scalars(int(step) + 1, hps[g], self._gstate(i))
            rows.append(_guard.fold(row, mult, self._ema_decay))
            news.append(new)
        interrupted = None
        try:
            self._kernel(pool, rows, _chunks(ranges), nthreads, single=False)
        except Exception:
            raise
        except BaseException as exc:  # as in _step: the kernel wrote, count the step
            interrupted = exc
        for c, idx in enumerate(members):
            idx = np.asarray(idx, dtype=np.intp)
            self._steps_np[idx] += 1
            self._set_gstate(idx, news[c])
            for i in idx:
                if not self._has_state[i]:
                    self._fill_state(int(i), hps[self._gidx[i]])
        self._refresh(pool)
        return interrupted

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
                continue
            st, keys = entry
            for name in pool.names:
                if name in keys:
                    src = st[name]
                    if src.layout != torch.strided:  # torch's sparse momentum_buffer
                        src = src.to_dense()
                    pool.views[k][name].copy_(src.reshape(pool.views[k][name].shape))
                else:
                    pool.views[k][name].fill_(self._init_value(name, hp))
            if "step" in keys:
                self._steps_np[i] = float(st["step"])
            elif self.spec.torch_step_in_group:  # timm's Adan: the group counts the steps
                self._steps_np[i] = float(new_groups[self._gidx[i]][0].get("step", 1))
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
        if self.spec.torch_step_in_group:
            # The peer's step count per group (timm's Adan): the most steps any of
            # the group's params took, absent before its first step, as there.
            for gi, g in enumerate(out["param_groups"]):
                steps = [self._steps_np[i] for i, gj in enumerate(self._gidx) if gj == gi]
                if steps and max(steps) > 0:
                    g["step"] = int(max(steps))
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

    # --- copies ---------------------------------------------------------------

    def __getstate__(self):
        """What a copy (``copy.deepcopy``, ``pickle``) is made from: the param groups,
        holding the params themselves (a model copied together with the optimizer
        keeps sharing them), compact clones of the state and the EMA, the guarded
        step's options and the backend.  ``__setstate__`` builds new flat buffers."""
        if self._closure_thread == threading.get_ident():  # in its own closure: lock held
            return self._copy_state()
        with self._lock:
            return self._copy_state()

    def _copy_state(self):
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
            # NAdam's mu_product in float64 (state_dict() holds torch's scalar dtype)
            "mu_product": self._mu64.copy(),
            "defaults": dict(self.defaults),
            "options": {"max_grad_norm": self._max_grad_norm,
                        "skip_nonfinite": self._skip_nonfinite,
                        "ema_decay": self._ema_decay, "backend": self._backend.name},
            "last_result": self.last_result,
        }

    def __setstate__(self, state):
        """A copy: a new optimizer over the copied params (their ``.data`` becomes a
        view of its own flat buffers), then the state loaded as a checkpoint."""
        known = self.__signature__.parameters
        kwargs = {k: v for k, v in state["defaults"].items()
                  if k in known and k not in _PARAM_ARGS}
        Optimizer.__init__(self, [dict(g) for g in state["param_groups"]], **kwargs,
                           **state["options"])
        groups, n = [], 0
        for g in self.param_groups:
            groups.append(dict(g, params=list(range(n, n + len(g["params"])))))
            n += len(g["params"])
        self.load_state_dict({"state": state["state"], "param_groups": groups,
                              "ema": state["ema"]})
        self._mu64[:] = state["mu_product"]
        self._mu_np[:] = state["mu_product"]
        self.last_result = state["last_result"]


# --- the classes ----------------------------------------------------------------

def _hook_step(func):
    from torch.autograd import profiler
    from torch.optim import optimizer as topt

    hooked = torch.optim.Optimizer.profile_hook_step(func)

    def run(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or topt._global_optimizer_pre_hooks or topt._global_optimizer_post_hooks
                or profiler._is_profiler_enabled):
            return hooked(self, *args, **kwargs)
        return func(self, *args, **kwargs)

    # Under torch.compile the step runs eagerly, nothing of it traced: tracing into it
    # would guard on every step's float scalars and recompile each step.  dynamo does
    # not trace this wrapper (skip: free per call) but calls it for real, its frame
    # callback still installed, so the step then runs under torch.compiler.disable
    # (``run``), which costs ~0.5 us a call and is paid only there.  Importing
    # torch._dynamo here costs nothing more: torch.optim's add_param_group imports it
    # in the same constructor.
    from torch._dynamo.decorators import skip

    eager = torch.compiler.disable(run, recursive=True)
    callback = torch._C._dynamo.eval_frame.get_eval_frame_callback

    @functools.wraps(func)
    def step(self, *args, **kwargs):
        if callback() is not None:
            return eager(self, *args, **kwargs)
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or topt._global_optimizer_pre_hooks or topt._global_optimizer_post_hooks
                or profiler._is_profiler_enabled):
            return hooked(self, *args, **kwargs)
        return func(self, *args, **kwargs)
    return skip(step)


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
            P(h.name, P.POSITIONAL_OR_KEYWORD, default=h.default) for h in spec.hyper] + [
            P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, d in spec.torch_only]
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
