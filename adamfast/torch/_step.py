"""The step: gradients checked and bound, then one run per dtype slab handed to the
step core (adamfast._core.take_step: the guard's pass, the kernel calls, the commits).

Plain functions taking the optimizer; :class:`adamfast.torch.Optimizer` binds
them as its methods.
"""

from __future__ import annotations

import threading
from operator import attrgetter
from operator import is_ as _is

import numpy as np
import torch

from .. import _dispatch, _guard
from . import _checkpoint
from .._core import take_step
from ._common import _NP, _SPARSE, _alone, _data_ptr, _describe, _holders
from ._hyper import _plain
from .._engine import chunk_table

_grad_of = attrgetter("grad")

def collect(self, slab, hps):
    """Which params of a slab step (their grads checked), before anything is written.

    Returns (inactive positions, foreign positions): params whose grad is
    None, and params whose grad is not the bound view (to copy and rebind,
    or, when sparse, to densify into the flat gradient buffer).
    """
    inactive = foreign = None
    params = slab.params
    check_views(slab)
    # Every grad the bound view (the common case) is one test run in C, without a
    # Python loop over the params; only otherwise are they sorted one by one.
    if not all(map(_is, map(_grad_of, params), slab.gviews)):
        for k, (p, v) in enumerate(zip(params, slab.gviews)):
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
    check_ptrs(slab)
    for k in foreign or ():
        self._check_grad(slab, k, hps)
    return inactive, foreign

def check_views(slab):
    """Whether every gradient view is still bound to the flat buffer (slab.gwatch).
    A view whose memory was rebound (``p.grad.data = x``) is given up: replaced by
    a fresh view, and the rebound tensor, still ``p.grad``, is then read like any
    grad the optimizer did not bind (and False is returned).  Code that rebinds
    while keeping the old memory alive (a list of p.grad.data taken before
    ``p.grad.data = averaged``) rebinds every grad, so the rotation finds it at once."""
    views = slab.gviews
    moved = slab.gwatch.moved(views, slab.gptrs)
    for k in moved:
        lo, hi = slab.ranges[k]
        views[k] = slab.grad[lo:hi].view(slab.params[k].shape)
    if moved:
        if slab.few is not None:
            slab.few = slab.params + views
        slab.gwatch.seen(len(views))
    return not moved

def still_bound(slab):
    """check_views and check_ptrs in one: with few params (slab.few: the params and
    the gradient views, whose pointers are slab.few_ptrs), one comparison of all
    their pointers says that nothing was rebound."""
    few = slab.few
    if few is not None and list(map(_data_ptr, few)) == slab.few_ptrs:
        return True
    bound = check_views(slab)
    check_ptrs(slab)
    return bound

def check_ptrs(slab):
    """Refuse a slab whose params' .data was rebound (slab.pwatch)."""
    moved = slab.pwatch.moved(slab.params, slab.ptrs)
    if moved:
        k = moved[0]
        raise RuntimeError(
            f"param {int(slab.index[k])} ({_describe(slab.params[k])}) no longer shares memory "
            f"with the optimizer's flat buffer: its .data was rebound after the optimizer was "
            f"built (module.to(), ZeroRedundancyOptimizer(parameters_as_bucket_view="
            f"True), FSDP, ...).  The step would update a buffer nobody reads; build the "
            f"optimizer after such changes")

def check_grad(self, slab, k, hps):
    """A grad the optimizer has not bound: refused, naming what is wrong, unless the
    flat gradient buffer can take it (a dense grad like the param, or a sparse COO
    grad where torch's class takes one)."""
    p = slab.params[k]
    g = p.grad
    where = f"the grad of param {int(slab.index[k])} ({_describe(p)})"
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"{where} must be a tensor, got {type(g).__name__}")
    if g.layout != torch.strided:
        self._check_sparse(g, where, slab.groups[k], hps[slab.groups[k]])
    if g.device.type != "cpu":
        raise ValueError(f"{where} is on {g.device}; expected cpu, the param's device")
    if g.dtype != p.dtype:
        raise ValueError(f"{where} has dtype {g.dtype}; expected {p.dtype}, the param's dtype")
    if g.shape != p.shape:
        raise ValueError(f"{where} has shape {tuple(g.shape)}; expected {tuple(p.shape)}, "
                         f"the param's shape")

def check_sparse(self, g, where, gi, hp):
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
    if self.spec.torch_sparse_check is not None:
        self.spec.torch_sparse_check(hp, where)

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
        if d.get("_exposed"):
            self._reconcile_state()
        if self.spec.torch_step_in_group:
            self._adopt_group_steps()
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
        inv = 1.0 if scale is None else _guard.unscale(scale, [_NP[p.dtype] for p in self._slabs])
        groups = self.param_groups
        slabs = self._slabs
        if len(groups) == 1 and len(slabs) == 1:
            # The common case in short (one group, its values the cached objects, and
            # one slab, every grad its bound view, every param at one count): what
            # the loops below would find, ~0.4 us sooner.
            c = self._hp_cache.get(0)
            g = groups[0]
            slab = slabs[0]
            if c is not None and c[2] is None and slab.uniform and len(g) == len(c[0]) and \
                    all(map(_is, g.values(), c[0])) and still_bound(slab) and \
                    all(map(_is, map(_grad_of, slab.params), slab.gviews)):
                run = self._uniform_run(slab, (c[1],))
                guard = (inv, self._max_grad_norm, self._skip_nonfinite, self._ema_decay)
                result = self.last_result = take_step(self._backend, (run,), guard,
                                                      _dispatch.get_num_threads(),
                                                      skip=amp_skip, clip=self.spec.clip)
                return loss if closure is not None else result
        self._hp_changed = False
        # group_hp's identity test inlined for a group whose values cannot change in
        # place (the common case): the method call costs as much as the test.
        cache = self._hp_cache
        hps = []
        try:
            for gi, g in enumerate(groups):
                c = cache.get(gi)
                if c is not None and c[2] is None and len(g) == len(c[0]) and \
                        all(map(_is, g.values(), c[0])):
                    hps.append(c[1])
                else:
                    hps.append(self._group_hp(gi, g))
            # The grads are checked before a switch turned on grows the layout, so that
            # a refused step leaves the buffers and torch's state dicts as they were.
            plans = [(slab, *self._collect(slab, hps)) for slab in self._slabs]
            if self._hp_changed:
                for slab in self._slabs:
                    need = self._needed_names([hps[g] for g in set(slab.groups)])
                    if not need <= set(slab.names):  # a structural switch was turned on
                        self._layout()
                        hps = [self._group_hp(gi, g) for gi, g in enumerate(groups)]
                        plans = [(slab, *self._collect(slab, hps)) for slab in self._slabs]
                        break
        except BaseException:
            if self._hp_changed:
                # The cache took settings this step did not apply: the next step must
                # see them as changed, or it would take them without growing the layout.
                self._hp_cache = {}
            raise
        spec = self.spec
        nthreads = _dispatch.get_num_threads()
        guard = (inv, self._max_grad_norm, self._skip_nonfinite, self._ema_decay)
        # Everything is valid: from here on, write (the gradients first: the guard reads them).
        for slab, inactive, foreign in plans:
            if foreign:
                with torch.no_grad():
                    for k in foreign:
                        g = slab.params[k].grad
                        if g.layout == torch.strided:
                            slab.gviews[k].copy_(g)
                            if _alone(_holders(g)):  # else the user still sees g
                                slab.params[k].grad = slab.gviews[k]
                        else:  # sparse: densified (duplicates summed), p.grad left as is
                            slab.gviews[k].copy_(g.to_dense())
        runs = []
        idle = []
        for slab, inactive, foreign in plans:
            run = (self._uniform_run(slab, hps) if inactive is None and slab.uniform else
                   self._classes_run(slab, set(inactive or ()), hps))
            if run is not None:
                runs.append(run)
            elif spec.torch_step_in_group:  # no gradient here, but the groups still count
                idle.append((slab, self._steps_np[slab.index] + 1))
        count_idle = None
        if idle:
            def count_idle():
                for slab, after in idle:  # assignments: may be made twice (adamfast._core.Run)
                    self._steps_np[slab.index] = after
                    self._refresh(slab)
                self._group_steps()
            if runs:  # counted with the last run's commit: never without the writes
                commit = runs[-1].commit

                def both():
                    commit()
                    count_idle()
                runs[-1].commit = both
        # Nothing changes in a skipped step: params, state, EMA and step counts (GradScaler's
        # found_inf is skipped exactly as torch's fused optimizers skip it).
        result = self.last_result = take_step(self._backend, runs, guard, nthreads,
                                              skip=amp_skip, clip=spec.clip)
        if count_idle is not None and not runs and not result.skipped:
            count_idle()
        return loss if closure is not None else result

def uniform_run(self, slab, hps):
    """The run of a slab whose params all step, each group's at one step count and
    group state: one scalar row per group (the rows of ``slab.full``)."""
    spec = self.spec
    rows_g, chunks = slab.full
    steps = self._steps_np
    first = slab.first
    if len(rows_g) == 1 and not spec.gstate:  # one row, no group state: no loop (~0.15 us)
        g, = rows_g
        t = int(steps.item(first[g])) + 1
        rows, news, ts = (spec.scalars(t, hps[g], None)[0],), (), (t,)
    else:
        rows, news, ts = [], [], set()
        for g in rows_g:
            i = first[g]
            t = int(steps.item(i)) + 1
            ts.add(t)
            row, new = spec.scalars(t, hps[g], self._gs.get(i))
            rows.append(row)
            news.append((g, new))
    # Every param of the optimizer at step t - 1 (one slab, every group at one count):
    # the counts become t with one fill, ~1 us less than adding 1 to each.
    fill = t if slab.everyone and len(ts) == 1 else None
    group_counted = spec.torch_step_in_group
    run = slab.run
    # (The spec's checks make every hyperparameter a float, so the rows are tuples of
    # floats, as the fast path takes them; another row would only make it decline.)
    run.rows, run.chunks, run.single, run.spans = rows, chunks, len(rows) == 1, None

    def commit():
        # Stores that may be made twice (see adamfast._core.Run), the count last.
        if spec.gstate is not None:
            for g, new in news:
                self._gs.set(slab.members[g], new)
        if not slab.all_state:
            # torch's state dicts are filled when read (_flat.sync_state), not here
            self._has_state[slab.index] = True
            self._stale = slab.all_state = True
        if fill is not None:
            steps.fill(fill)
        elif slab.everyone:
            self._steps_np += 1
        else:
            steps[slab.index] += 1
        if group_counted:
            self._group_steps()

    run.commit = commit
    return run

def group_steps(self):
    """timm's ``group["step"]`` for a spec counted by group: kept live in
    param_groups, as the peer's is, from the group's first step on."""
    steps = self._steps_np
    for gi, i in self._gfirst.items():
        t = int(steps[i])
        if t:
            self.param_groups[gi]["step"] = t

def adopt_group_steps(self):
    """A group["step"] written since the last step (timm's restart_opt sets it to 0)
    is the group's count from now on, as timm reads it."""
    steps = self._steps_np
    moved = False
    for gi, i in self._gfirst.items():
        v = self.param_groups[gi].get("step")
        if v is None:
            if not steps[i]:
                continue
            t = 0.0  # deleted: timm starts the count again
        elif v == steps[i]:
            continue
        else:
            t = _checkpoint.step_count(v, f"param_groups[{gi}]['step']")
        steps[[j for j, g in enumerate(self._gidx) if g == gi]] = t
        moved = True
    if moved:
        for slab in self._slabs:
            self._refresh(slab)

def classes_run(self, slab, inactive, hps):
    """The general case: params at different step counts or group states, or some
    without a gradient (``inactive``: their positions).  Each (group, step, group
    state) is one row of the scalar table; one kernel call still does every param
    that steps.  None when no param of the slab steps."""
    spec = self.spec
    classes = {}
    ranges = []
    members = []
    spans = []
    steps = self._steps_np
    first_at = spec.first_index
    has = self._has_state
    for k, (i, g, (lo, hi)) in enumerate(zip(slab.index, slab.groups, slab.ranges)):
        if k in inactive:
            continue
        gs = self._gs.get(i)
        # A param's first step at a later count (its group counted while it had no
        # gradient) starts from its gradient, as at count 1: a row of its own.
        first = first_at is not None and not has[i]
        key = (g, float(steps[i]), None if gs is None else tuple(gs.values()), first)
        c = classes.get(key)
        if c is None:
            c = classes[key] = len(classes)
            members.append([])
        members[c].append(int(i))
        if ranges and ranges[-1][0] == c and ranges[-1][2] == lo:
            ranges[-1] = (c, ranges[-1][1], hi)
        else:
            ranges.append((c, lo, hi))
        if spans and spans[-1][1] == lo:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    if not classes:
        return None
    rows, news = [], []
    for (g, step, _, first), c in classes.items():
        row, new = spec.scalars(int(step) + 1, hps[g], self._gs.get(members[c][0]))
        if first:
            row = row[:first_at] + (1.0,) + row[first_at + 1:]
        rows.append(row)
        news.append(new)
    members = [np.asarray(idx, dtype=np.intp) for idx in members]
    everyone = np.concatenate(members)
    # The peer's count is the group's (timm's): params without a gradient count too.
    counted = slab.index if spec.torch_step_in_group else everyone
    after = steps[counted] + 1
    run = slab.run
    run.rows, run.chunks, run.single = rows, chunk_table(
        [r[1:] for r in ranges], [r[0] for r in ranges]), False
    run.spans = None if not inactive else spans

    def commit():
        # Assignments only: they may be made twice (see adamfast._core.Run).
        for idx, new in zip(members, news):
            self._gs.set(idx, new)
        self._has_state[everyone] = True
        self._stale = True
        steps[counted] = after
        self._refresh(slab)
        if spec.torch_step_in_group:
            self._group_steps()

    run.commit = commit
    return run
