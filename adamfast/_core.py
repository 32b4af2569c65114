"""The one step core: the step procedure, written once, under every front end.

:func:`take_step` is that procedure: over one or more :class:`Run` (a flat buffer
set: an optimizer's buffers, one dtype of adamfast.torch, a functional call's
arrays) it makes the guard's norm pass (one norm across runs), the skip
decision, folds the gradient multiplier and the EMA decay into the scalar rows,
makes the writes (adamfast._engine.run_kernel: the fast path or the kernel)
and commits each run's counters and group state, atomically under
KeyboardInterrupt.  The front ends only translate their API into runs:
adamfast.functional (one run per call), :class:`StepCore` (the NumPy classes:
the per-dtype flat state of adamfast._core_flat, every group's scalars, and
the C step's short path) and adamfast.torch (a run per dtype slab).
"""

from __future__ import annotations

import numpy as np

from . import _dispatch, _engine, _guard
from ._core_flat import _FLOATS, FlatState, _layout, _Params, _split, _views_of  # noqa: F401
from .algorithms._spec import describe, learning_rate
from ._validate import MAX_STEP


def _kernel_wrote(exc, module):
    """Whether the kernel call that raised ``exc`` had written its step (``module``:
    the backend's).

    An exception raised in the calling frame itself was raised by a signal
    handler as the call returned: after the writes, for compiled code is
    never interrupted midway.  One raised inside the backend's own code is a
    refusal of bad input, made before writing (the compiled kernels are
    Cython functions, which add traceback entries), or an interrupt of its
    Python code (numba's validation, the numpy backend): a backend that
    says ``MARKS_UNWRITTEN = True`` sets ``exc.adamfast_unwritten = True`` on
    whatever stops it before its first write, so that what it leaves
    unmarked came after; another's is taken to have come before its writes,
    like a refusal (the numpy backend computes everything first).  From
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
            if tb.tb_lineno == tb.tb_frame.f_code.co_firstlineno:
                return False  # entered through adamfast._engine.run_kernel: not begun
            return getattr(module, "MARKS_UNWRITTEN", False)
        tb = tb.tb_next
    return not isinstance(exc, Exception)


class Run:
    """One flat buffer set of a step (one dtype of adamfast.torch, an optimizer's
    buffers, a functional call's arrays): what :func:`take_step` needs to write it.

    ``rows`` are the spec's scalar rows (before the guard's fold), ``chunks`` the
    chunk table over them, ``single`` says that ``rows[0]`` covers every element
    (the backends' fast path may take it), ``tensors`` the tensor boundaries
    (:func:`adamfast._engine.run_kernel`), ``spans`` the ``(lo, hi)`` ranges of
    ``grads`` that the guard's norm covers (None: all of it), and ``commit`` a
    function advancing this run's counters and group state once it is written
    (None: the caller keeps none).  ``commit`` must make the same stores if run
    again after an interrupt stopped it midway (assignments; a count that adds one
    goes last, after its last Python call: CPython runs signal handlers at calls).
    A front end keeps one Run per buffer set and sets ``rows`` (and ``spans``,
    ``commit``) at each step.
    """

    __slots__ = ("kid", "params", "grads", "states", "rows", "chunks", "ema", "single",
                 "tensors", "spans", "commit")

    def __init__(self, kid, params, grads, states, chunks, ema=None, single=False,
                 tensors=None):
        self.kid, self.params, self.grads, self.states = kid, params, grads, states
        self.chunks, self.ema, self.single, self.tensors = chunks, ema, single, tensors
        self.rows = self.spans = self.commit = None


def take_step(b, runs, guard, nthreads, skip=False, clip="torch"):
    """The step procedure, written once for every front end: the guard's norm pass
    over every run's gradients (one norm across dtypes), the skip decision, the
    gradient multiplier and the EMA decay folded into the scalar rows, the writes
    (:func:`adamfast._engine.run_kernel`, backend ``b``), then each run's commit.
    Return the :class:`~adamfast.StepResult`.

    ``guard`` is ``(inv, max_grad_norm, skip_nonfinite, ema_decay)``, validated,
    ``inv`` the unscaling factor 1/grad_scale (1.0 without a loss scale).  ``skip``
    skips the step whatever the gradients (torch.amp's found_inf), after the norm;
    ``clip`` names the spec's clip formula (:func:`adamfast._guard.decide`).

    Everything must be valid when this is called: an Exception from a kernel is a
    refusal made before it wrote, and propagates with nothing counted.  An
    interrupt that arrives once a kernel wrote (see :func:`_kernel_wrote`) commits
    that run, lets the other runs step too, and then propagates: the counters never
    lag the buffers.
    """
    # One function, not a wrapper around the procedure: a Python call less per step.
    try:
        inv, max_grad_norm, skip_nonfinite, ema_decay = guard
        norm = None
        mult = inv
        if max_grad_norm is not None or skip_nonfinite:
            nthreads = _guard.pass_threads(b, sum(r.grads.size for r in runs), nthreads)
            total, finite = 0.0, True
            for r in runs:
                spans = r.spans
                for flat in ((r.grads,) if spans is None else
                             [r.grads[lo:hi] for lo, hi in spans]):
                    ss, ok = _guard.sumsq(b, flat, nthreads, inv)
                    total += ss
                    finite = finite and ok
            mult, norm, skipped = _guard.decide(total, finite, inv, max_grad_norm,
                                                skip_nonfinite, clip)
            if skipped:
                return _guard.StepResult(norm, True)
        if skip:
            return _guard.StepResult(norm, True)
        fold = mult != 1.0 or ema_decay is not None
        pending = None
        for r in runs:
            rows = [_guard.fold(row, mult, ema_decay) for row in r.rows] if fold else r.rows
            # Inside the try, only the kernel's call may run a signal handler (see
            # _kernel_wrote): an interrupt raised later is after the writes.
            try:
                _engine.run_kernel(b, r.kid, r.params, r.grads, r.states, rows, r.chunks,
                                   nthreads, r.ema, r.single, r.tensors)
            except BaseException as exc:
                if not _kernel_wrote(exc, b.module):
                    raise
                pending = exc
            commit = r.commit
            if commit is not None:
                try:
                    commit()
                except BaseException as exc:  # an interrupt as the stores began: make them
                    commit()
                    pending = pending or exc
        if pending is not None:
            raise pending
        return _guard.PLAIN if norm is None else _guard.StepResult(norm, False)
    finally:
        # A commit refers to its front end, which holds the run: drop the cycle now,
        # or each optimizer dropped would wait for the cyclic GC.
        for r in runs:
            r.commit = None


def _snapshot(value):
    """``value`` with every list in it copied (tuples rebuilt around them): a
    hyperparameter list edited in place must compare unequal to its cached copy."""
    if type(value) is list:
        return [_snapshot(v) for v in value]
    if type(value) is tuple:
        return tuple(_snapshot(v) for v in value)
    return value

class StepCore(FlatState):
    """:class:`FlatState` and the step over it."""

    @staticmethod
    def _numeric_lr(hp, where=""):
        """Validate with a schedule's place taken by a number (it is checked each step)."""
        if callable(hp.get("lr")) and not isinstance(hp.get("lr"), (int, float)):
            learning_rate(where + "lr", hp["lr"])
            hp = dict(hp, lr=0.0)
        return hp

    def _check_grads(self, grads):
        """Validate a gradient argument fully before anything is copied."""
        dtype = self.flat_params.dtype
        shapes = self._shapes
        if isinstance(grads, np.ndarray):
            n = self.flat_grads.size
            # Any other shape of that size would be read in some order that need not be
            # the params' (a transposed gradient): refused rather than guessed.
            one_param = len(shapes) == 1
            one = one_param and grads.shape == tuple(shapes[0])
            if grads.dtype != dtype or grads.size != n or not (grads.ndim == 1 or one):
                alt = f" or shaped like the one param {tuple(shapes[0])}" if one_param else ""
                raise ValueError(f"grads given as one array must be {dtype} with {n} elements "
                                 f"(all params, in order), 1-D{alt}, got {describe(grads)}")
            return [(self.flat_grads, grads.reshape(-1))]
        if isinstance(grads, (str, bytes)) or not hasattr(grads, "__iter__"):
            raise TypeError(f"grads must be None, one numpy.ndarray or a sequence of arrays (one "
                            f"per param), got {describe(grads)}")
        grads = list(grads)
        if len(grads) != len(shapes):
            raise ValueError(f"grads must hold one array per parameter ({len(shapes)}), got "
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
            try:
                stale = cached is None or cached[0] != raw
            except (TypeError, ValueError):  # an == that is no bool (an array): check afresh
                stale = True
            if stale:
                lr = raw[1]
                where = f"param_groups[{gi}]: "
                hp = spec.validate(self._numeric_lr(dict(zip(names, raw[1:])), where), where)
                hp["lr"] = lr if callable(lr) else hp["lr"]
                # A copy of each list (betas): the group's own list may be edited in
                # place, and the cached one must then compare unequal.
                cached = ((raw[0], *_snapshot(raw[1:])), hp, callable(lr))
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
        self._run_obj = None

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
                c_call = d["_c_args"]
                same = False
                if c_call is not None and c_call[1] is not None:
                    # The C step's call was made from group 0 as it was then (its copy,
                    # last): a group still equal to it, its params the same list, has
                    # the same validated hyperparameters.  One dict comparison is
                    # ~0.1 us less than reading and comparing the hyperparameters.
                    snap = c_call[2]
                    try:
                        group, = self.param_groups
                        same = group == snap and group["params"] is snap["params"]
                    except (KeyError, TypeError, ValueError):
                        pass  # the general path says what is wrong
                if not same:
                    cached = d["_cache"][0]
                    if cached is None or cached[2]:
                        return self._step_general(grads, t, grad_scale)
                    try:
                        group, = self.param_groups
                        raw = self._getter(group)
                        same = raw[0] is d["_plists"][0] and raw == cached[0]
                    except (KeyError, TypeError, ValueError):
                        pass  # the general path says what is wrong
                    if not same:
                        return self._step_general(grads, t, grad_scale)
                    hp = cached[1]
                    if c_call is None or c_call[0] is not hp:
                        c_call = d["_c_args"] = [hp, self._c_step(hp), None]
                    if c_call[1] is None:
                        row, new = self.spec.scalars(t, hp, d["_gstate"][0])
                        fast = self._backend.step_fast
                        if fast is not None:
                            # The backend's one-group fast path, straight: take_step's
                            # generality costs ~1.5 us here.  It declines (False,
                            # nothing written) whatever it cannot do in one call.
                            kid, states = d["_plan"]
                            try:
                                done = fast(kid, self.flat_params, self.flat_grads, states, row,
                                            _dispatch.get_num_threads())
                            except BaseException as exc:
                                self._interrupted(exc, t, [new])
                                raise
                            if done:
                                d["_gstate"] = [new]
                                d["step_count"] = t
                                return _guard.PLAIN
                        self._run((row,), t, [new])
                        return _guard.PLAIN
                    # (Re)taken copy of the group for the short test above.
                    c_call[2] = {k: v if k == "params" else _snapshot(v)
                                 for k, v in group.items()}
                # The C step's call, written once and inline (a method call costs ~0.1
                # us).  Between the kernel's return and the count, no bytecode that
                # runs a signal handler: see _kernel_wrote.
                try:
                    done = c_call[1](t, _dispatch.get_num_threads())
                except BaseException as exc:
                    self._interrupted(exc, t, None)
                    raise
                if done:
                    d["step_count"] = t
                    return _guard.PLAIN
                return self._step_general(grads, t, grad_scale)  # declined: nothing written
            return self._step_general(grads, t, grad_scale)

    def _step_general(self, grads, t, grad_scale):
        spec = self.spec
        hps, changed = self._group_hp(t)
        pairs = self._check_grads(grads) if grads is not None else ()
        inv = 1.0 if grad_scale is None else _guard.unscale(_guard.check_scale(grad_scale),
                                                             (self.flat_params.dtype,))
        rows, gstates = [], []
        for (hp, _), gs, joined in zip(hps, self._gstate, self._joined):
            row, new = spec.scalars(t - joined, hp, gs)
            rows.append(row)
            gstates.append(new)
        # Everything is valid: from here on, write (the gradients first: the guard reads them).
        if changed or self._plan is None:
            self._cache = [cached for _, cached in hps]
            self._replan([hp for hp, _ in hps])
        for dst, src in pairs:
            if dst is not src:
                np.copyto(dst, src)
        return self._run(rows, t, gstates, inv)

    def _run(self, rows, t, gstates, inv=1.0):
        """Step t through :func:`take_step`; its commit advances ``step_count`` and the
        group state (``gstates``, a new list) with the buffers."""
        d = self.__dict__
        run = d["_run_obj"]
        if run is None:
            kid, states = self._plan
            run = d["_run_obj"] = Run(kid, self.flat_params, self.flat_grads, states,
                                      self._chunks, self.flat_ema, tensors=self._tensors)
        run.rows = rows
        run.single = len(rows) == 1

        def commit():
            d["_gstate"] = gstates
            d["step_count"] = t

        run.commit = commit
        return take_step(self._backend, (run,),
                         (inv, self._max_grad_norm, self._skip_nonfinite, self._ema_decay),
                         _dispatch.get_num_threads(), clip=self.spec.clip)

    def _interrupted(self, exc, t, gstates):
        """The C step's call of step t raised ``exc``: count the step if it was written."""
        if _kernel_wrote(exc, self._backend.module):
            d = self.__dict__
            if gstates is not None:
                d["_gstate"] = gstates
            d["step_count"] = t

    def _c_step(self, hp):
        """The spec's C version of the whole step (scalars included) on this backend, as
        a function ``f(t, nthreads)`` returning True once it has written step t, or
        None.  It may still decline a call (returns False), like any fast path."""
        make = self.spec.c_step
        if make is None:
            return None
        return make(self._backend, self.flat_params, self.flat_grads, self._plan[1], hp)

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
        if value >= MAX_STEP - 1:  # the next step, step_count + 1, must convert
            raise ValueError(f"step_count must be below 2**1023 - 1 (the maths takes the next "
                             f"step as a double), got an integer of {int(value).bit_length()} "
                             f"bits")
        joined = max(self._joined)
        if value < joined:
            raise ValueError(f"step_count must be >= {joined}, the step count when param group "
                             f"{self._joined.index(joined)} was added (its own count would be "
                             f"negative), got {value!r}")
        self.__dict__["step_count"] = int(value)
