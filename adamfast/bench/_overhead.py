"""Per-call cost at small sizes: the fixed cost many small tensors pay, and the
range (1K-256K) where a scalar fast path would show."""

from __future__ import annotations

import functools

import numpy as np

from ._machine import try_import
from ._rows import Notes, backends, decoupled
from ._timing import per_call_us


def initial_state(setup, n, dtype):
    """The algorithm's state buffers by name, initialised as its optimizer would, each
    allocated on its own (as a NumPy user does) and written in full."""
    init = setup.spec.state_init
    return {name: np.full(n, init(name, setup.hp) if init else 0, dtype)
            for name in setup.state_names}


def functional_step(setup, p, g, state, backend):
    """(label, call) of the algorithm's functional step at step 10; the call takes
    ``step=t`` to run another step."""
    from adamfast import functional

    hp = setup.hp
    if setup.numpy_formula:  # adam_step has its own signature (beta1, beta2, decoupled)
        b1, b2 = hp["betas"]
        kw = {k: v for k, v in hp.items() if k not in ("betas", "decoupled_weight_decay")}
        fn = functools.partial(functional.adam_step, p, g, state["exp_avg"], state["exp_avg_sq"],
                               step=10, beta1=b1, beta2=b2, decoupled=decoupled(setup),
                               max_exp_avg_sq=state.get("max_exp_avg_sq"), backend=backend, **kw)
        return "adam_step", fn
    spec = setup.spec
    step = functional.STEPS[spec.name]
    args = [state.get(name) for name in spec.all_state_names()]
    # Group state the caller carries (NAdam's mu_product): its initial value
    # does for timing.
    carried = dict(spec.gstate) if spec.gstate and spec.gstate_from_step is None else {}
    fn = functools.partial(step, p, g, *args, step=10, backend=backend, **hp, **carried)
    return step.__name__, fn


SMALL_SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18)


def measure_small_sizes(cfg, setup, sizes=SMALL_SIZES) -> dict[str, list[float]]:
    """us/call at each of ``sizes`` for the default backend's functional step and
    ``Optimizer.step`` and torch's fastest: {label: [us per size]}, hot cache."""
    import adamfast

    best = adamfast.available_backends()[0]
    out: dict[str, list[float]] = {}
    for n in sizes:
        for label, us in measure_overhead(cfg, setup, n, only=(best,)).items():
            out.setdefault(label, []).append(us)
    return {k: v for k, v in out.items() if len(v) == len(sizes)}


def measure_overhead(cfg, setup, n: int = 16, only=None) -> dict[str, float]:
    """us/call of the functional step, ``Optimizer.step`` and torch's fastest, hot cache
    (every available backend, or those in ``only``)."""
    import adamfast

    rng = np.random.default_rng(cfg.seed)
    dt = cfg.dtype
    p = rng.standard_normal(n).astype(dt)
    g = rng.standard_normal(n).astype(dt)
    state = initial_state(setup, n, dt)
    notes = Notes()  # the table already reported unavailable backends
    names = [b for b in backends(notes) if only is None or b in only]
    out: dict[str, float] = {}

    def timed(label, fn):
        # A backend whose kernel fails here already has a note in the table;
        # leave it out of this line rather than stop at the very end.
        try:
            fn()  # compile / load outside the timing
        except Exception:
            return
        out[label] = per_call_us(fn)

    for backend in names:
        label, fn = functional_step(setup, p, g, state, backend)
        timed(f"{label}[{backend}]", fn)
    cls = getattr(adamfast, setup.name)
    for backend in names:
        opt = cls([p.copy()], backend=backend, **setup.hp)
        opt.grads[0][...] = g
        timed(f"{setup.name}.step[{backend}]", opt.step)
    torch = try_import("torch")
    if torch is not None:
        from ._peers import torch_modes

        found = torch_modes(torch, setup, notes)
        if found is not None:
            tcls, kw, modes = found
            tp = torch.from_numpy(p.copy())
            tp.grad = torch.from_numpy(g.copy())
            opt = tcls([tp], **kw, **{modes[0]: True})
            timed(f"torch-{modes[0]}", opt.step)
    return out
