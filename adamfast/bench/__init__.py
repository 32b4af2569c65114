"""The benchmark CLI: ``python -m adamfast bench``.

What it measures, and why it is measured this way:

* Every implementation does one full optimizer step over the same
  parameters, and the time of that single step is taken with
  ``time.perf_counter_ns``.  The first call of each implementation is timed
  on its own and reported as "first call" (it holds Numba's JIT or cache
  load and torch's lazy state allocation), so it never leaks into the
  steady-state numbers.
* The rounds are interleaved: each round runs every implementation once, in
  a freshly shuffled order.  On a shared, noisy machine a slow stretch then
  hits all implementations alike instead of whichever ran during it, and the
  speed-up column is a *paired* ratio (baseline time / implementation time
  within the same round), which cancels most of that drift.
* By default the caches are cold: before each timed step a buffer of twice
  the L3 size is streamed through with a read-only reduction, outside the
  timer.  That is the honest setting for an optimizer step, which in training
  runs after the backward pass has evicted the optimizer state.  ``--hot``
  skips the flush (meaningful only for sizes that fit in cache).  The flush
  also gives the OpenMP pools of torch, Cython and Numba time to stop
  spinning, so one runtime's idle spinning does not steal a core from the
  next implementation on a small machine.
* That is not how a training loop runs, though: there the step comes right
  after the backward pass, whose OpenMP workers (torch's libgomp) are still
  spinning on the cores the step wants.  So the run also times the step
  *after torch*: after the flush and outside the timer, one torch op on
  torch's threads (``torch.add`` over ``--after-torch-size`` float32, a few
  MB, well above torch's grain size) runs before each timed step.  torch's
  settings are left alone: OMP_WAIT_POLICY is never set, and torch keeps its
  own thread count unless ``--threads`` is given.  By default one more
  table at the largest size does this for the rooflines, the default
  backend's adamfast rows and torch's fastest row (over the same rows and
  buffers as its cold table; the speed-up column is then against torch);
  ``--after-torch`` runs every table this way, ``--no-after-torch`` none.
* Throughput is reported against a roofline measured in the same run: the
  engine's ``roofline{N}`` kind for an algorithm whose kind has N state
  buffers (read p, g and N states; write p and N states; one add each).  It
  moves exactly the algorithm's bytes per parameter (``spec.bytes_per_param``)
  and is timed on every threading available, one row each, so that a loss in
  adamfast's own pool (which the adamfast rows run on) shows instead of being
  shared by the ceiling: ``roofline-pool`` (the cython extension's
  family_kernel on adamfast's pool, with the algorithm kernels' chunking and
  serial cut-off), ``roofline-openmp`` (the same kernel on an OpenMP team:
  the extension's parallel path is switched for that row's call only) and
  ``roofline-prange`` (a plain numba ``prange`` loop with the kind's
  traffic, ``_passes.one_pass``, outside both engines' drivers, on numba's
  threading layer, at the run's thread count for that call only).  % roof is
  judged against the fastest of them; the gap to it is the cost of the
  arithmetic and of the threading.  A step of several passes (Lamb's norm,
  moments and apply passes, ``spec.passes``) is judged instead against
  ``roofline-passes`` (``_passes.py``): those passes with trivial arithmetic
  in plain numba ``prange`` loops, since a one-pass mix of streams runs
  faster than its passes can.
* Every page of every buffer is written before timing (the workload's
  arrays, the rooflines', each optimizer's, the user arrays' state): a page
  never written maps the shared zero page, whose reads cost no memory
  traffic and would flatter whichever row reads it, a roofline above all.
* adamfast rows are the optimizer class (``adamfast.Adam(...).step()``) over
  one flat buffer: what a user runs, one kernel call per step, Python
  overhead included, as torch's rows are ``opt.step()`` of torch's class.
  torch's rows are its fastest CPU implementations of the same class:
  ``fused=True`` where torch has it on CPU (tried, not assumed), and
  ``foreach=True``.  Where timm has the algorithm (Adan, Lamb, Lion, AdamW
  as its AdamWLegacy), ``timm-foreach`` and ``timm`` (its per-tensor loop)
  rows run timm's class the same way, loaded from timm's own files (see
  :mod:`._timm`), and every compiled adamfast row gets its paired ratio to
  each torch and timm row.  For Adam/AdamW the NumPy baseline is the textbook
  formula, and a second NumPy row uses in-place ufuncs with one scratch
  buffer, so the speed-up is not only measured against a strawman; other
  algorithms compare with adamfast's own NumPy backend.
* By default p, g and the state come from ``adamfast.zeros_buffers``, as in
  the adamfast optimizers: separate equal-sized NumPy arrays start at the
  same offset modulo the huge page and their streams collide in cache
  sets/banks.  ``--layout separate`` allocates each on its own and shows that
  cost: adamfast's optimizers still copy into their own staggered buffers,
  and rows ``adam_step-<backend> (user arrays)`` (the algorithm's functional
  step for the others) call the functional step directly on the separately
  allocated arrays, with state allocated beside them, as a NumPy user does.
  The rooflines stay on staggered buffers in either layout: they are the
  machine's ceiling for the step's bytes, not the layout's.
* ``--groups G`` spreads ``--arrays`` tensors over G param groups and adds
  1-group rows over the same arrays, so the cost of groups is a paired ratio
  from the same run; ``--family`` times every registered algorithm, each in
  its own interleaved rounds with its own roofline, cython and numba each
  against it, and torch's and timm's fastest rows against the faster.

Heavy or optional imports (numba, torch, matplotlib, the Cython extension)
happen inside functions, so ``--help`` is instant and every optional piece can
be missing without breaking the rest.

Modules: :mod:`._cli` (arguments and their checks), :mod:`._config`
(settings, sizes, the algorithm setup), :mod:`._machine` (CPU, L3, header,
load monitor), :mod:`._timing` (flusher, rounds, statistics), :mod:`._rows`
and :mod:`._peers` (the implementations; timm's in :mod:`._timm`), :mod:`._passes`
(``roofline-passes``, the roofline of a step of several passes),
:mod:`._settings` (rows run with one global setting changed),
:mod:`._overhead` (per-call cost), :mod:`._report` (tables, JSON, plot), :mod:`._run` (the drivers),
:mod:`._torch` (``--torch``: adamfast.torch against torch.optim),
:mod:`._guarded` (``--guarded``: the guarded step against torch's pipeline)
and :mod:`._busy` (``--busy-core``: 1 thread against all cores with a core
busy).
"""

from __future__ import annotations

import sys

from ._config import format_size, make_setup, parse_size, split_sizes
from ._machine import core_count, cpu_model, try_import
from ._timing import CacheFlusher

__all__ = ["main", "CacheFlusher", "core_count", "cpu_model", "format_size", "make_setup",
           "parse_size", "split_sizes", "try_import"]


def main(argv: list[str] | None = None) -> int:
    from ._cli import build_parser, config_from_args

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command != "bench":
        parser.print_help()
        return 2
    if args.torch + args.guarded + args.busy_core + args.overhead > 1:
        parser.bench.error("--torch, --guarded, --busy-core and --overhead are separate runs; "
                           "give one")
    if args.torch:  # adamfast.torch against torch.optim (_torch.py)
        from ._cli import check_mode
        from ._torch import run as run_torch

        check_mode(parser.bench, args, "torch")
        run_torch([args.threads] if args.threads else None, args.repeat, seed=args.seed)
        return 0
    if args.guarded:  # the guarded step against torch's pipeline (_guarded.py)
        from ._cli import check_mode
        from ._guarded import run as run_guarded

        check_mode(parser.bench, args, "guarded")
        run_guarded(args.sizes, args.dtype, [args.threads] if args.threads else None,
                    args.repeat, seed=args.seed, json_path=args.json, quiet=args.quiet)
        return 0
    if args.busy_core:  # 1 thread against all cores with a core busy (_busy.py)
        from ._busy import run as run_busy
        from ._cli import check_mode

        check_mode(parser.bench, args, "busy_core")
        given = any(a == "--sizes" or a.startswith("--sizes=") for a in argv)
        run_busy(args.sizes if given else None, args.threads, args.repeat, seed=args.seed,
                 json_path=args.json, quiet=args.quiet)
        return 0
    if args.overhead:  # the per-call table (_overhead.py)
        from ._cli import check_mode
        from ._overhead import run_per_call

        check_mode(parser.bench, args, "overhead")
        run_per_call(args.repeat, seed=args.seed)
        return 0
    cfg = config_from_args(parser.bench, args)
    from ._run import run

    run(cfg)
    return 0
