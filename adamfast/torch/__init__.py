"""adamfast.torch: drop-in ``torch.optim`` optimizers for CPU tensors, one kernel call per step.

``adamfast.torch.Adam, AdamW, Adamax, NAdam, RAdam, Adagrad, RMSprop, SGD,
Adadelta, Lion, Adan, Lamb`` subclass :class:`torch.optim.Optimizer` and take the
installed torch class's constructor signature (Lion:
``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)``,
optax's formula; Adan and Lamb: timm's, ``foreach`` accepted and ignored),
plus the keyword-only ``backend=``, the guarded step's ``max_grad_norm``,
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
params without a gradient are skipped, their state and step count untouched;
Adan and Lamb count steps per group as timm's do, every ``step()`` call
advancing every group's count, and a param's first gradient then meets its
group's count).
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
nothing).  A structural switch turned on (AMSGrad, RMSprop's ``centered`` and
``momentum``, SGD's ``momentum``) lays the buffers out again at the next step
that goes through, whether or not the state was read in between: SGD's
momentum buffer starts from the gradient, as torch's does, the others at zero
(torch.optim raises KeyError there).  A step refused before writing leaves
the switch pending for the next one.  Unchanged groups cost one identity
check over the group's values, plus reading the Tensors' and lists' values.

Checkpoints
===========
``state_dict()`` is torch's own (torch's implementation): per param the keys
the torch class uses (``step`` as a scalar tensor of torch's scalar dtype,
float32 by default; ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
``mu_product``, ``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
``acc_delta``, ``exp_inf``), and ``param_groups`` with torch's keys.  The
state tensors are views of the flat buffers (references, as torch's are: use
``copy.deepcopy`` or ``torch.save`` for a snapshot).  The step never builds
these dicts: it marks the params that stepped for the first time, and the next
look at ``opt.state`` (``state_dict()``, ``opt.state[p]``) fills their entries,
with the settings that step used.  ``load_state_dict``
checks everything first (a ``step`` must be a finite whole number >= 0, as a
tensor of any real dtype, an int or a float) and then copies into the existing
views, laying the buffers out again when the checkpoint's groups turn a
structural switch on; it never rebinds them, and a refused checkpoint changes
nothing.  Checkpoints load into ``torch.optim`` and back.  The extras
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
(tracing would specialise on the step's float scalars and recompile at every
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

# The code, one module per job: _common (constants, param checks), _hyper
# (hyperparameters), _flat (the flat layout, gradient views), _step, _checkpoint
# (state_dict, copies), _hooks (torch's step wrapper, threads), _optimizer (the
# base class), _classes (the classes, made from the registry).

from ..algorithms import ALGORITHMS
from ._classes import _make, _signature  # noqa: F401  (_signature: as before the split)
from ._optimizer import Optimizer

__all__ = ["Optimizer", *ALGORITHMS]

CLASSES = {name: _make(name) for name in ALGORITHMS}
globals().update(CLASSES)
