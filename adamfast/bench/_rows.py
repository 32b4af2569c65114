"""The implementations timed for one algorithm: rooflines, NumPy formulas, adamfast backends.

torch and DeepSpeed rows live in :mod:`._peers`.  Every row is an
:class:`~._timing.Impl` whose ``step(t)`` performs one full step.
"""

from __future__ import annotations

import numpy as np

from ._config import BACKEND_ORDER, ROOFLINES, TEXTBOOK, split_groups, split_sizes
from ._settings import on_numba_threads, on_pool_policy, on_threading
from ._timing import Impl
from ._timm import timm_class_name


class Notes(list):
    """Messages about rows that cannot run here, each kept once."""

    def add(self, text: str):
        if text not in self:
            self.append(text)


_UINTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def touch(*arrays):
    """Write every element of each array once, keeping its bits.

    A page that was never written maps the shared zero page: reading it
    costs no memory traffic (which flatters whichever row reads it first,
    a roofline above all), and its first write costs a page fault.  An
    or-with-zero through an integer view rewrites each element as it is,
    NaNs and signed zeros included.  ``None`` and empty arrays are skipped.
    """
    for a in arrays:
        if a is None or a.size == 0:
            continue
        if not a.flags.c_contiguous:
            raise ValueError(f"touch: a C-contiguous array is needed, got strides {a.strides}")
        u = a.reshape(-1).view(_UINTS[a.itemsize])
        np.bitwise_or(u, 0, out=u)


class Workload:
    """The buffers of one size: p and g, Adam's m, v (and vmax), and the roofline's own set.

    p and g are shared by the NumPy and torch rows and copied into every
    adamfast optimizer (which owns its buffers, as in real use); only time
    matters, and every algorithm keeps its state finite under fixed
    gradients, so sharing costs nothing in realism and keeps 16M float64 runs
    within memory.  The roofline gets its own set (its ``s += g`` would make
    Adam's v negative), always from ``adamfast.zeros_buffers``: it is the
    machine's ceiling for the step's bytes, so with ``--layout separate`` the
    user arrays' collision shows as a share below it (on such arrays the
    bandwidth-only kind slowed more than Adam did, and was beaten by the rows
    it judged).

    ``cfg.layout`` decides the placement: "staggered" takes each set from one
    ``adamfast.zeros_buffers`` call (buffers under 1 MiB fall back to
    separate allocations there), "separate" allocates each array on its own.
    """

    def __init__(self, n: int, cfg, setup, numpy_rows: bool = True):
        self.n = n
        self.cfg = cfg
        self.setup = setup
        rng = np.random.default_rng(cfg.seed)
        # Adam's moments, only for the NumPy formula rows.
        nstate = setup.nstate if (numpy_rows and setup.numpy_formula) else 0
        bufs = self._alloc(n, 2 + nstate)
        self.p, self.g = bufs[:2]
        self.p[...] = rng.standard_normal(n, dtype=np.float32)
        self.g[...] = rng.standard_normal(n, dtype=np.float32)
        self.m = self.v = self.vmax = None
        if nstate:
            self.m, self.v = bufs[2], bufs[3]
            self.vmax = bufs[4] if nstate == 3 else None
            # Filled explicitly even where already zero: calloc'd pages are
            # mapped lazily, and the first row to touch them would pay for
            # the page faults.
            self.m.fill(0)
            self.v.fill(1e-4)  # small positive, as after a few steps
            if self.vmax is not None:
                self.vmax.fill(1e-4)
        self.sizes = split_sizes(n, cfg.arrays, cfg.seed)
        bounds = np.cumsum([0] + self.sizes)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._roof = None
        self._scratch = None
        # (label, array) pairs checked for non-finite values after the run.
        self.checks = [("params", self.p)]
        touch(self.p, self.g, self.m, self.v, self.vmax)

    def _alloc(self, n: int, count: int) -> tuple:
        """``count`` buffers of ``n`` elements in the configured layout (contents undefined)."""
        if self.cfg.layout == "staggered":
            import adamfast

            return adamfast.zeros_buffers(n, self.cfg.dtype, count)
        return tuple(np.empty(n, self.cfg.dtype) for _ in range(count))

    def views(self, arr):
        return [arr[s] for s in self.slices]

    def grouped(self, items, groups: int):
        """``items`` (one per array) as torch-style group dicts, or the plain list for 1 group."""
        if groups == 1:
            return list(items)
        return [{"params": list(items[a:b])} for a, b in split_groups(len(items), groups)]

    @property
    def scratch(self):
        # A plain allocation in both layouts: the in-place NumPy row is what
        # a careful NumPy user writes, and they would not stagger it.
        if self._scratch is None:
            self._scratch = np.empty(self.n, self.cfg.dtype)
            self._scratch.fill(0)
        return self._scratch

    @property
    def roofline_buffers(self):
        """(p, g, s0, ...) for the roofline kernels, with the algorithm's number of states,
        staggered in every layout (see the class)."""
        if self._roof is None:
            import adamfast

            bufs = adamfast.zeros_buffers(self.n, self.cfg.dtype, 2 + self.setup.nstate)
            bufs[0][...] = self.p
            bufs[1][...] = self.g
            for s in bufs[2:]:
                s.fill(0)
            touch(*bufs)
            self._roof = bufs
        return self._roof


_loaded = {}


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line`` of an exception, cut to ``limit`` characters for a note."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_backend(name: str, notes: Notes):
    """The adamfast Backend ``name``, or None with a note (numba may be mid-rewrite)."""
    if name not in _loaded:
        from adamfast import _dispatch

        try:
            _loaded[name] = _dispatch.get_backend(name)
        except Exception as exc:  # ValueError when unavailable; anything from a broken import
            _loaded[name] = None
            notes.add(f"adamfast backend {name!r} skipped ({short_error(exc)})")
    return _loaded[name]


def backends(notes: Notes, wanted=BACKEND_ORDER) -> list:
    """The adamfast backends that load here, in table order (reference first)."""
    import adamfast

    avail = adamfast.available_backends()
    out = []
    for name in wanted:
        if name not in avail:
            notes.add(f"adamfast backend {name!r} not available here: its rows skipped")
        elif load_backend(name, notes) is not None:
            out.append(name)
    return out


def roofline_impls(wl: Workload, cfg, setup, notes: Notes) -> list[Impl]:
    """The roofline{N} kind on every threading available, one row each.

    The algorithm's kind has N state buffers and the engine's roofline{N}
    kind moves exactly its bytes per parameter with trivial arithmetic.
    Timed on three threadings, so that a loss in adamfast's own pool (which
    the algorithm rows run on) shows instead of being shared by its ceiling:

    * ``roofline-pool``: the cython extension's family_kernel on adamfast's
      own pool threads (its measured choice of an OpenMP team for large
      calls switched off for this row), with the chunking and serial cut-off
      of the algorithm kernels;
    * ``roofline-openmp``: the same kernel on an OpenMP team (the extension's
      parallel path switched for this row's call only);
    * ``roofline-prange``: a plain numba ``prange`` loop with the same
      traffic (``_passes.one_pass``), on numba's threading layer (always
      parallel: it has no cut-off), outside both engines' drivers, so that
      a loss in the drivers the algorithm rows share does not lower every
      ceiling too.

    All three share one set of buffers (the workload's roofline set).
    """
    from adamfast import _engine
    from adamfast.algorithms._spec import NSLOT

    bufs = wl.roofline_buffers
    p, g = bufs[0], bufs[1]
    states = tuple(bufs[2:])
    scalars = np.zeros((1, NSLOT))  # the rooflines read no scalars; one row satisfies the checks
    chunks = _engine.single_chunks(wl.n)
    threads = cfg.threads
    kind = setup.roofline_kind
    impls = []

    cy = load_backend("cython", notes) if "cython" in _available() else None
    if cy is None:
        notes.add("roofline-pool and roofline-openmp skipped: no usable cython extension")
    else:
        try:
            kid = cy.kind_id(kind)
        except ValueError as exc:
            notes.add(f"roofline-pool and roofline-openmp skipped: {exc}")
        else:
            def kernel(t, k=cy.kernel, kid=kid):
                k(kid, p, g, states, scalars, chunks, threads)

            module = cy.module
            pool_only = on_pool_policy(module, "pool", kernel)
            impls.append(Impl("roofline-pool", on_threading(module, "pool", pool_only),
                              "roofline", backend="cython"))
            if module.openmp_enabled():
                impls.append(Impl("roofline-openmp", on_threading(module, "openmp", kernel),
                                  "roofline", backend="cython"))
            else:
                notes.add("roofline-openmp skipped: this cython build has no OpenMP")

    try:
        import numba

        from ._passes import one_pass
    except Exception as exc:
        notes.add(f"roofline-prange skipped ({short_error(exc)})")
        return impls
    nthreads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if nthreads < threads:
        notes.add(f"roofline-prange runs {nthreads} threads: numba's pool was sized at start-up "
                  f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")

    def prange_step(t):
        one_pass(p, g, states)

    impls.append(Impl("roofline-prange", on_numba_threads(nthreads, prange_step), "roofline",
                      backend="numba"))
    return impls


def _available() -> tuple:
    import adamfast

    return adamfast.available_backends()


def _textbook(views, hp, decoupled):
    """Adam as written in the paper, with temporaries, assigned back with [:]."""
    (b1, b2), lr, eps, wd = hp["betas"], hp["lr"], hp["eps"], hp["weight_decay"]

    def step(t):
        bc1 = 1 - b1**t
        bc2 = 1 - b2**t
        for p, g, m, v, vmax in views:
            if wd and decoupled:
                p[:] = p - lr * wd * p
            elif wd:
                g = g + wd * p
            m[:] = b1 * m + (1 - b1) * g
            v[:] = b2 * v + (1 - b2) * g * g
            if vmax is not None:
                vmax[:] = np.maximum(vmax, v)
                vhat = vmax / bc2
            else:
                vhat = v / bc2
            mhat = m / bc1
            p[:] = p - lr * mhat / (np.sqrt(vhat) + eps)

    return step


def _inplace(views, hp, decoupled):
    """The same update with ``out=`` ufuncs and one scratch buffer, no other temporaries.

    This is how a careful NumPy user writes it, so the speed-up over it is
    the part a compiled kernel really buys (one pass instead of ~12).
    """
    (b1, b2), lr, eps, wd = hp["betas"], hp["lr"], hp["eps"], hp["weight_decay"]

    def step(t):
        bc1 = 1 - b1**t
        inv_sqrt_bc2 = 1 / (1 - b2**t) ** 0.5
        step_size = lr / bc1
        for p, g, m, v, vmax, s in views:
            if wd and decoupled:
                np.multiply(p, 1 - lr * wd, out=p)
            np.multiply(m, b1, out=m)
            if wd and not decoupled:
                # L2: the state sees g + wd*p; with one scratch buffer it is formed twice.
                np.multiply(p, wd, out=s)
                np.add(s, g, out=s)
                np.multiply(s, 1 - b1, out=s)
                np.add(m, s, out=m)
                np.multiply(p, wd, out=s)
                np.add(s, g, out=s)
                np.multiply(s, s, out=s)
            else:
                np.multiply(g, 1 - b1, out=s)
                np.add(m, s, out=m)
                np.multiply(g, g, out=s)
            np.multiply(v, b2, out=v)
            np.multiply(s, 1 - b2, out=s)
            np.add(v, s, out=v)
            if vmax is not None:
                np.maximum(vmax, v, out=vmax)
                src = vmax
            else:
                src = v
            np.sqrt(src, out=s)
            np.multiply(s, inv_sqrt_bc2, out=s)
            np.add(s, eps, out=s)
            np.divide(m, s, out=s)
            np.multiply(s, step_size, out=s)
            np.subtract(p, s, out=p)

    return step


def decoupled(setup) -> bool:
    return setup.name == "AdamW" or bool(setup.hp.get("decoupled_weight_decay"))


def keep_all(name: str) -> bool:
    return True


def numpy_impls(wl: Workload, setup, keep=keep_all) -> list[Impl]:
    """NumPy textbook and in-place rows (Adam/AdamW only: they are Adam's formula)."""
    if not setup.numpy_formula or wl.m is None:
        return []
    vmax = wl.views(wl.vmax) if wl.vmax is not None else [None] * len(wl.slices)
    tb = list(zip(wl.views(wl.p), wl.views(wl.g), wl.views(wl.m), wl.views(wl.v), vmax))
    ip = [(*t, s) for t, s in zip(tb, wl.views(wl.scratch))]
    wl.checks += [("exp_avg", wl.m), ("exp_avg_sq", wl.v)]
    dec = decoupled(setup)
    rows = [Impl(TEXTBOOK, _textbook(tb, setup.hp, dec), "numpy")]
    if keep("numpy-inplace"):
        rows.append(Impl("numpy-inplace", _inplace(ip, setup.hp, dec), "numpy"))
    return rows


def make_optimizer(wl: Workload, setup, backend: str, groups: int):
    """``adamfast.<Algorithm>`` over the workload's arrays in ``groups`` groups.

    The optimizer copies the arrays into its own flat buffers, as in real
    use; the workload's gradients are copied in once and stay fixed.
    """
    import adamfast

    cls = getattr(adamfast, setup.name)
    opt = cls(wl.grouped(wl.views(wl.p), groups), backend=backend, **setup.hp)
    opt.flat_grads[...] = wl.g  # groups are consecutive arrays: the same element order
    return opt


def adamfast_impls(wl: Workload, cfg, setup, notes: Notes, wanted=BACKEND_ORDER, keep=keep_all,
                   one_group_rows: bool = True) -> list[Impl]:
    """One row per backend: ``opt.step()`` of the optimizer class, one kernel call per step.

    With ``--groups G > 1`` each compiled backend also gets a row over the
    same arrays in one group (unless ``one_group_rows`` is False), so the
    cost of groups is a paired ratio.  Rows ``keep`` rejects are never built:
    each optimizer owns a copy of the parameters and its state.
    """
    impls = []
    names = backends(notes, wanted)
    variants = [(cfg.groups, "")]
    if cfg.groups > 1 and one_group_rows:
        variants.append((1, "-1group"))
    for groups, suffix in variants:
        for backend in names:
            label = f"adamfast-{backend}{suffix}"
            if (suffix and backend == "numpy") or not keep(label):
                continue  # the reference's per-group cost is not the question
            opt = make_optimizer(wl, setup, backend, groups)
            # zeros_buffers leaves the state's pages unmapped until written.
            touch(opt.flat_params, opt.flat_grads, *opt.state.values())
            wl.checks.append((f"{label} params", opt.flat_params))
            wl.checks += [(f"{label} {k}", v) for k, v in opt.state.items()]
            impls.append(Impl(label, lambda t, opt=opt: opt.step(), "adamfast", backend=backend))
    return impls


USER_ARRAYS = " (user arrays)"


def user_array_impls(wl: Workload, cfg, setup, notes: Notes, wanted=("numba", "cython"),
                     keep=keep_all) -> list[Impl]:
    """With ``--layout separate``: the functional step on the user's own arrays.

    ``adamfast.adam_step(p, g, m, v, step=t, ...)`` (the algorithm's
    functional step for the others) called directly on the workload's
    separately allocated p and g, with state a NumPy user allocates beside
    them (``np.full`` per array), one call per array: what a NumPy user
    runs.  The optimizer rows copy the same arrays into their own staggered
    buffers, so the gap between the two is the cost of the user's layout.
    The rows of every backend share one set of state arrays.
    """
    if cfg.layout != "separate":
        return []
    from ._overhead import functional_step, initial_state

    names = [b for b in backends(notes, wanted)
             if keep(f"{functional_name(setup)}-{b}{USER_ARRAYS}")]
    if not names:
        return []
    states = [initial_state(setup, a.size, cfg.dtype) for a in wl.views(wl.p)]
    for k, state in enumerate(states):
        touch(*state.values())
        wl.checks += [(f"user arrays {name}[{k}]", a) for name, a in state.items()]
    impls = []
    for backend in names:
        calls = [functional_step(setup, p, g, state, backend)[1]
                 for p, g, state in zip(wl.views(wl.p), wl.views(wl.g), states)]

        def step(t, calls=calls):
            for call in calls:
                call(step=t)

        impls.append(Impl(f"{functional_name(setup)}-{backend}{USER_ARRAYS}", step, "adamfast",
                          backend=backend))
    return impls


def functional_name(setup) -> str:
    """The name of the algorithm's functional step: ``adam_step`` for Adam and AdamW."""
    if setup.numpy_formula:
        return "adam_step"
    from adamfast import functional

    return functional.STEPS[setup.spec.name].__name__


def possible_names(setup, groups: int, layout: str = "staggered") -> list[str]:
    """Every row name this algorithm can have (whether or not it can run here)."""
    names = list(ROOFLINES)
    if setup.numpy_formula:
        names += [TEXTBOOK, "numpy-inplace"]
    names += [f"adamfast-{b}" for b in BACKEND_ORDER]
    if groups > 1:
        names += [f"adamfast-{b}-1group" for b in BACKEND_ORDER if b != "numpy"]
    if layout == "separate":
        names += [f"{functional_name(setup)}-{b}{USER_ARRAYS}" for b in ("numba", "cython")]
    if setup.torch_name is not None:
        names += ["torch-fused", "torch-foreach"]
    if timm_class_name(setup) is not None:
        names += ["timm-foreach", "timm"]
    if setup.numpy_formula:
        names.append("deepspeed-cpuadam")
    return names


def check_finite(wl: Workload) -> str | None:
    bad = [label for label, a in wl.checks if not np.isfinite(a).all()]
    return f"warning: non-finite values in {', '.join(bad)} after the run" if bad else None
