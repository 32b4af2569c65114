"""One step core: the per-dtype flat state (adamfast._core_flat) and the step
procedure of :class:`adamfast.Optimizer`: every group's scalars, the guarded
step (norm pass, skip, fold), the fast path or the kernel, then the counters
and group state.  adamfast.optim adds the NumPy API over it.
"""

from __future__ import annotations

import numpy as np

from . import _dispatch, _engine, _guard
from ._core_flat import _FLOATS, FlatState, _layout, _Params, _split, _views_of  # noqa: F401
from .algorithms._spec import describe, learning_rate


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
            if tb.tb_lineno == tb.tb_frame.f_code.co_firstlineno:
                return False  # entered through adamfast._engine.run_kernel: not begun
            return getattr(module, "MARKS_UNWRITTEN", False)
        tb = tb.tb_next
    return not isinstance(exc, Exception)


class StepCore(FlatState):
    """:class:`FlatState` and the step over it."""

    @staticmethod
    def _numeric_lr(hp):
        """Validate with a schedule's place taken by a number (it is checked each step)."""
        if callable(hp.get("lr")) and not isinstance(hp.get("lr"), (int, float)):
            learning_rate("lr", hp["lr"])
            hp = dict(hp, lr=0.0)
        return hp

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
        try:
            _engine.run_kernel(b, kid, self.flat_params, self.flat_grads, states, rows,
                               self._chunks, nthreads, ema, tensors=self._tensors)
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
