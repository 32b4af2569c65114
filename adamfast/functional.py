"""The functional steps: one in-place update per call, one function per algorithm.

``adam_step`` has its own signature (kept from adamfast 0.1: ``beta1``,
``beta2``, ``decoupled``); every other algorithm gets a step generated from
its spec, named after it (``adamax_step``, ``nadam_step``, ``radam_step``,
``adagrad_step``, ``rmsprop_step``, ``sgd_step``, ``adadelta_step``,
``lion_step``).  Each takes ``params, grads`` and the algorithm's state
buffers (torch's state names, in torch's order; buffers a call does not need,
such as RMSprop's ``grad_avg`` without ``centered``, may be None), then
keyword-only ``step`` (1-based) and the hyperparameters with torch's names
and defaults, then ``backend``.

The data path is one straight line: validate (the spec's checks, then the
buffers), compute the float64 scalars, pick the kernel, make one kernel call.
The cython backend first offers the call to a C fast path that performs it
only when it is trivially valid and otherwise declines, so this module
remains the one authority on validity and errors.  Every argument is checked
before anything is written.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import _dispatch, _engine, _guard, _validate
from ._core import Run, take_step
from .algorithms import ALGORITHMS
from .algorithms._spec import HPCache, describe, flag, nonneg, unit_open

_ADAM = ALGORITHMS["Adam"]
_UNSET = object()  # a functional step's max_grad_norm not given
# adam_step's validated hyperparameters, by the identity of the values given.
_HP_CACHE = HPCache()


def adam_step(params, grads, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, eps_hat=False, eps_root=0.0, bias_correction=True,
              nesterov=False, grad_scale=None, max_grad_norm=None, skip_nonfinite=False,
              ema=None, ema_decay=None, backend="auto"):
    """Perform one Adam (or AdamW) update in place; return a :class:`~adamfast.StepResult`.

    Parameters
    ----------
    params : ndarray, float32 or float64, C-contiguous, writable
        Parameters theta; updated in place.
    grads : ndarray
        Gradient g of the loss at ``params``; same dtype and size; only read.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates m and v (zeros before step 1);
        same dtype and size as ``params``; updated in place.
    step : int
        The 1-based number t of this update (1 for the first call).
    lr, beta1, beta2, eps : float
        Learning rate, moment decay rates in [0, 1), and the term added to the
        denominator.  Defaults are the paper's.
    weight_decay : float
        L2 penalty (``decoupled=False``, as ``torch.optim.Adam``) or decoupled
        decay (``decoupled=True``, as ``torch.optim.AdamW``).
    amsgrad : bool
        Use the running maximum of ``exp_avg_sq``, kept in ``max_exp_avg_sq``
        (required then; ignored otherwise).
    maximize : bool
        Maximise the objective instead of minimising it.
    eps_hat, eps_root, bias_correction, nesterov
        The other frameworks' conventions (TensorFlow/Keras' epsilon-hat,
        optax's eps_root and nesterov, DeepSpeed's bias_correction); see
        :mod:`adamfast.algorithms.adam`.
    grad_scale, max_grad_norm, skip_nonfinite, ema, ema_decay
        The guarded step (see :mod:`adamfast._guard`): divide the gradients
        by the loss scale ``grad_scale`` inside the kernel, clip them to the
        L2 norm ``max_grad_norm`` as ``torch.nn.utils.clip_grad_norm_``, skip
        the step (nothing written) when they hold an Inf or NaN, and update
        the parameter EMA ``ema`` (an array like params) with decay
        ``ema_decay`` in the same pass.
    backend : {"auto", "numpy", "numba", "cython"}
        ``"auto"`` takes the fastest available.

    Arrays may have any shape; elements are paired in C order.  On error
    (TypeError or ValueError naming the argument) every buffer is left as it
    was.  NaN or Inf in ``grads`` propagate as in PyTorch.
    """
    b = _dispatch.get_backend(backend)
    nthreads = _dispatch.get_num_threads()
    guarded = not (grad_scale is None and max_grad_norm is None and skip_nonfinite is False
                   and ema is None and ema_decay is None)
    # Fast path (cython only): True means done.
    if not guarded and b.adam_fast is not None and b.adam_fast(
            params, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
            decoupled, amsgrad, max_exp_avg_sq, maximize, nthreads, eps_hat, eps_root,
            bias_correction, nesterov):  # all positional: keywords cost ~0.3 us here
        return _guard.PLAIN
    # Full path: the single authority on what is valid.
    t = _validate.step(step)
    raw = (lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize, eps_hat, eps_root,
           bias_correction, nesterov)
    hp = _HP_CACHE.get(raw)
    if hp is None:
        hp = _ADAM.validate({
            "lr": nonneg("lr", lr), "betas": (unit_open("beta1", beta1), unit_open("beta2", beta2)),
            "eps": eps, "weight_decay": weight_decay,
            "amsgrad": amsgrad, "maximize": maximize,
            "decoupled_weight_decay": flag("decoupled", decoupled), "eps_hat": eps_hat,
            "eps_root": eps_root, "bias_correction": bias_correction, "nesterov": nesterov})
        _HP_CACHE.put(raw, hp)
    states = (exp_avg, exp_avg_sq)
    if hp["amsgrad"]:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq is required when amsgrad=True: pass an array like "
                             "exp_avg_sq, zero-initialised before the first step")
        states = (exp_avg, exp_avg_sq, max_exp_avg_sq)
    kind = "adam_amsgrad" if hp["amsgrad"] else "adam"
    # The generic fast path (numba's; cython's when adam_fast declined): buffers
    # checked, or declined.  Anything that can raise is left to the full path.
    if not guarded and b.step_fast is not None and kind in b.kind_ids:
        try:
            row, _ = _ADAM.scalars(t, hp, None)
        except ArithmeticError:
            row = None
        if row is not None and b.step_fast(b.kind_ids[kind], params, grads, states, row,
                                           nthreads):
            return _guard.PLAIN
    named = [("params", params, True), ("grads", grads, False), ("exp_avg", exp_avg, True),
             ("exp_avg_sq", exp_avg_sq, True)]
    if hp["amsgrad"]:
        named.append(("max_exp_avg_sq", max_exp_avg_sq, True))
    guard = _guard_args(grad_scale, max_grad_norm, skip_nonfinite, ema, ema_decay, named)
    views = _validate.buffers(named)
    row, _ = _ADAM.scalars(t, hp, None)
    return _guarded_run(b, b.kind_id(kind), views, row, guard, nthreads)


def _guard_args(grad_scale, max_grad_norm, skip_nonfinite, ema, ema_decay, named):
    """Validate the guarded step's arguments; put ``ema`` last in ``named`` when given."""
    max_grad_norm, skip_nonfinite, ema_decay = _guard.check_options(max_grad_norm,
                                                                    skip_nonfinite, ema_decay)
    if (ema is None) != (ema_decay is None):
        raise ValueError(f"ema and ema_decay go together: pass both (the EMA buffer, like "
                         f"params, and its decay) or neither, got ema={describe(ema)} and "
                         f"ema_decay={ema_decay!r}")
    if ema is not None:
        named.append(("ema", ema, True))
    return _guard.check_scale(grad_scale), max_grad_norm, skip_nonfinite, ema_decay


def _guarded_run(b, kid, views, row, guard, nthreads, clip="torch"):
    """A functional step's writes, through the step core (adamfast._core.take_step):
    the guard's pass 1 if asked for, then the kernel (``clip``: the spec's clip
    formula, see adamfast._guard.decide)."""
    grad_scale, max_grad_norm, skip_nonfinite, ema_decay = guard
    ema = views.pop() if ema_decay is not None else None
    inv = _guard.unscale(grad_scale, (views[1].dtype,))
    run = Run(kid, views[0], views[1], tuple(views[2:]), _engine.single_chunks(views[0].size),
              ema, single=True)
    run.rows = (row,)
    return take_step(b, (run,), (inv, max_grad_norm, skip_nonfinite, ema_decay), nthreads,
                     clip=clip)


def _make_step(spec):
    """The functional step of ``spec``: signature, validation and call, all from the spec."""
    state_names = spec.all_state_names()
    hp_names = [h.name for h in spec.hyper]
    gstate_names = list(spec.gstate or {})
    fname = spec.name.lower() + "_step"

    def step_fn(params, grads, *state, step, backend="auto", grad_scale=None,
                max_grad_norm=_UNSET, skip_nonfinite=False, ema=None, ema_decay=None, **kwargs):
        b = _dispatch.get_backend(backend)
        nthreads = _dispatch.get_num_threads()
        t = _validate.step(step)
        hp = {h.name: h.default for h in spec.hyper}
        unknown = [k for k in kwargs if k not in hp and k not in gstate_names]
        if unknown:
            raise TypeError(f"{fname}() got unexpected keyword argument(s) {unknown}")
        hp.update((k, v) for k, v in kwargs.items() if k in hp)
        if callable(hp["lr"]):
            raise TypeError(f"lr must be a number in {fname}(): evaluate a schedule yourself "
                            f"(lr=schedule(step)), got {describe(hp['lr'])}")
        if "max_grad_norm" in hp:  # the spec's own clip (Lamb's): one value for both
            if max_grad_norm is not _UNSET:
                hp["max_grad_norm"] = max_grad_norm
        elif max_grad_norm is _UNSET:
            max_grad_norm = None
        hp = spec.validate(hp)
        if "max_grad_norm" in hp:
            max_grad_norm = hp["max_grad_norm"]
        gstate = None
        if spec.gstate is not None:
            gstate = {}
            for name, default in spec.gstate.items():
                if name in kwargs:
                    gstate[name] = spec.check_gstate(name, kwargs[name])
                elif spec.gstate_from_step is not None:
                    gstate[name] = spec.gstate_from_step(name, t)
                else:
                    raise TypeError(f"{fname}() needs the keyword argument {name!r} (its value "
                                    f"after the previous step; {default!r} before step 1), "
                                    f"which it returns updated")
        kind = spec.kind_of([hp])
        needed = spec.state_names(kind)
        given = dict(zip(state_names, state))
        named = [("params", params, True), ("grads", grads, False)]
        for name in needed:
            if given.get(name) is None:
                raise ValueError(f"{name} is required by {fname}() with these settings (kind "
                                 f"{kind!r}): pass an array like params, initialised as "
                                 f"torch.optim.{spec.name} initialises it")
            named.append((name, given[name], True))
        row, new_gstate = spec.scalars(t, hp, gstate)
        kid = b.kind_id(kind)
        guarded = not (grad_scale is None and max_grad_norm is None and skip_nonfinite is False
                       and ema is None and ema_decay is None)
        # Fast path first (cython): buffers checked in C, or declined.
        if not guarded and b.step_fast is not None and b.step_fast(
                kid, params, grads, tuple(given[name] for name in needed), row, nthreads):
            result = _guard.PLAIN
        else:
            guard = _guard_args(grad_scale, max_grad_norm, skip_nonfinite, ema, ema_decay, named)
            result = _guarded_run(b, kid, _validate.buffers(named), row, guard, nthreads,
                                  spec.clip)
        if spec.gstate is not None and spec.gstate_from_step is None:
            if result.skipped:  # a skipped step leaves the group state as it was
                new_gstate = gstate
            return _guard.StepResult(result.grad_norm, result.skipped, new_gstate)
        return result

    params_ = [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
               inspect.Parameter("grads", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params_ += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                for n in state_names]
    params_ += [inspect.Parameter("step", inspect.Parameter.KEYWORD_ONLY)]
    if spec.gstate is not None and spec.gstate_from_step is None:
        params_ += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in gstate_names]
    params_ += [inspect.Parameter(h.name, inspect.Parameter.KEYWORD_ONLY, default=h.default)
                for h in spec.hyper]
    params_ += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                for n, d in (("grad_scale", None), ("max_grad_norm", None),
                             ("skip_nonfinite", False), ("ema", None), ("ema_decay", None))
                if n not in hp_names]  # Lamb's max_grad_norm is its hyperparameter
    params_ += [inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto")]

    def wrapper(params, grads, *args, **kwargs):
        nstate = len(state_names)
        if len(args) > nstate:
            raise TypeError(f"{fname}() takes {2 + nstate} positional arguments (params, grads, "
                            f"{', '.join(state_names)}), got {2 + len(args)}")
        state = list(args) + [None] * (nstate - len(args))
        for i, name in enumerate(state_names):
            if name in kwargs:
                if i < len(args):
                    raise TypeError(f"{fname}() got multiple values for argument {name!r}")
                state[i] = kwargs.pop(name)
        if "step" not in kwargs:
            raise TypeError(f"{fname}() missing required keyword-only argument 'step'")
        return step_fn(params, grads, *state, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = fname
    wrapper.__signature__ = inspect.Signature(params_)
    returns = (f"\n\nReturns a StepResult whose ``group_state`` holds "
               f"{', '.join(gstate_names)} after this step, to pass to the next call."
               if spec.gstate is not None and spec.gstate_from_step is None else
               "\n\nReturns a StepResult (grad_norm, skipped).")
    wrapper.__doc__ = (
        f"One {spec.name} update in place (peer: {spec.peer}).\n\n"
        f"State buffers: {', '.join(state_names)} (torch's names; zeros before step 1 unless "
        f"torch initialises them otherwise).  Hyperparameters: {', '.join(hp_names)}, with "
        f"torch's defaults.  grad_scale, max_grad_norm, skip_nonfinite, ema and ema_decay: "
        f"the guarded step, as in adam_step.  The maths is stated in :mod:`{spec.reference[next(iter(spec.kinds))].__module__}`."
        f"{returns}")
    wrapper.spec = spec
    return wrapper


# One functional step per registry entry but those a hand-written one serves
# (spec.functional_step: adam_step, above, for Adam and AdamW): adamax_step, ..., lion_step.
STEPS = {name: _make_step(spec) for name, spec in ALGORITHMS.items()
         if spec.functional_step is None}
globals().update({fn.__name__: fn for fn in STEPS.values()})
__all__ = ["adam_step", *(fn.__name__ for fn in STEPS.values())]
