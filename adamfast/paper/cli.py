"""``python -m adamfast paper``: the parser, the checks made before any work,
and the run.

A mistake in the arguments or a missing optional package costs a second,
not the minutes of a run: everything is checked before the first experiment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

import adamfast
from adamfast.bench._cli import _positive_int  # one parser of whole numbers for both CLIs

from . import report
from .data import MissingDependency, require
from .experiments import DTYPE, KEYS, experiments, lockstep, search, time_pair

__all__ = ["build_parser", "main"]

DIGITS = {"logreg", "mlp", "biascorr"}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m adamfast paper",
        description=(
            "Reproduce the experiments of Kingma & Ba, 'Adam: A Method for Stochastic "
            "Optimization' (ICLR 2015), section 6, scaled down to run in minutes on "
            "bundled data: logistic regression with lr/sqrt(t), an MLP with dropout, sparse "
            "bag-of-words features (synthetic) and Adam's bias correction. Each optimizer's "
            "learning rate comes from a grid search. Prints the grid searches, a results "
            "table, the optimizer-step speed-up over a textbook NumPy step and the paper's "
            "findings checked; writes one PNG per experiment and paper.json to --out. "
            "Needs the [paper] extra: pip install 'adamfast[paper]'."),
    )
    parser.add_argument("--out", metavar="DIR", default="adamfast-paper",
                        help="directory for the figures and paper.json (created if missing; "
                             "default: %(default)s)")
    parser.add_argument("--experiments", nargs="+", choices=KEYS, default=list(KEYS),
                        metavar="NAME",
                        help=f"which experiments, among {', '.join(KEYS)} (default: all)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="adamfast's threads (adamfast.set_num_threads); the results do "
                             "not depend on it (default: adamfast's current setting)")
    parser.add_argument("--blas-threads", type=_positive_int, default=1, metavar="N",
                        help="BLAS threads for the models' matrix products, set with "
                             "threadpoolctl (default: %(default)s: the matrices are small, and "
                             "more threads spin against adamfast's on a shared machine)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny configuration (small models, 3 epochs, 2 learning rates): "
                             "a smoke test, not the paper's comparison")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the figures (then matplotlib is not needed)")
    return parser


def _check_out(parser, path):
    """Refuse an --out that cannot become a writable directory, creating nothing."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            parser.error(f"argument --out: {path!r} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            parser.error(f"argument --out: the directory {path!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        parser.error(f"argument --out: cannot create the directory {path!r}: "
                     f"{parent!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"argument --out: cannot create the directory {path!r}: "
                     f"{parent!r} is not writable")


def _make_out(parser, path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        parser.error(f"argument --out: cannot create the directory {path!r}: "
                     f"{exc.strerror or exc}")


def _versions(plots):
    n = adamfast.get_num_threads()
    parts = [f"adamfast {adamfast.__version__} (backend {adamfast.available_backends()[0]}, "
             f"{n} thread{'s' if n != 1 else ''})", f"numpy {np.__version__}"]
    for module in ("sklearn", "matplotlib") if plots else ("sklearn",):
        mod = sys.modules.get(module)
        if mod is not None:
            parts.append(f"{'scikit-learn' if module == 'sklearn' else module} "
                         f"{mod.__version__}")
    return ", ".join(parts)


def _blas_threads(n):
    """A context limiting BLAS to n threads, and a line saying so."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "BLAS threads not limited (threadpoolctl is missing)"
    return threadpool_limits(n, user_api="blas"), f"BLAS threads {n}"


def run_experiment(exp):
    """Grid search, then the timed reruns of the chosen settings: an Outcome."""
    t0 = time.perf_counter()
    model, X, y, desc = exp.setup()
    data = (model, X, y)
    searches = [search(exp, data, c) for c in exp.candidates]
    n_params = sum(p.size for p in model.init(np.random.default_rng(0), DTYPE))
    speed = []
    for s in searches:
        if exp.timed and s.candidate.label not in exp.timed:
            continue
        af, tb = time_pair(exp, data, s.candidate, s.best.lr)
        speed.append(report.Speed(s.candidate.label, n_params, af, tb,
                                  reproduced=list(map(repr, af.costs)) ==
                                  list(map(repr, s.best.costs)),
                                  agreement=lockstep(exp, data, s.candidate, s.best.lr)))
    return report.Outcome(exp, desc, searches, speed, time.perf_counter() - t0)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    keys = [k for k in KEYS if k in args.experiments]
    plots = not args.no_plots
    previous = adamfast.get_num_threads()
    if args.threads is not None:
        try:
            adamfast.set_num_threads(args.threads)
        except ValueError as exc:
            parser.error(f"argument --threads: {exc}")
    # Usage errors (exit 2) come before missing packages (exit 1), and nothing is
    # created until both have passed.
    _check_out(parser, args.out)
    try:
        try:
            if DIGITS.intersection(keys):
                require("sklearn.datasets", "the digits data of the " + ", ".join(
                    k for k in keys if k in DIGITS) + " experiment(s)")
            if plots:
                require("matplotlib", "the figures (or pass --no-plots)")
        except MissingDependency as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 1
        _make_out(parser, args.out)
        limit, blas = _blas_threads(args.blas_threads)
        with limit:
            return _run(args, keys, plots, blas)
    finally:
        adamfast.set_num_threads(previous)


def _run(args, keys, plots, blas):
    from . import plots as plotting

    t_start = time.perf_counter()
    print("adamfast paper: Kingma & Ba (ICLR 2015), section 6, scaled down "
          "(differences from the paper: docs/paper.md)")
    print(_versions(plots) + f"; {blas}; {np.dtype(DTYPE).name}")
    if args.quick:
        print("QUICK configuration: tiny models, 3 epochs, 2 learning rates: a smoke test, "
              "not the paper's comparison")
    outcomes, figures = [], []
    for exp in experiments(quick=args.quick):
        if exp.key not in keys:
            continue
        out = run_experiment(exp)
        outcomes.append(out)
        print(f"\n[{exp.key}] {exp.title}")
        print(f"  data: {out.data}")
        print(f"  {exp.epochs} epochs, minibatch {exp.batch}, "
              f"{'lr/sqrt(t)' if exp.decay else 'constant lr'}; "
              f"{sum(len(s.runs) for s in out.searches)} runs + {2 * len(out.speed)} timed, "
              f"{out.seconds:.1f} s")
        print(f"  the paper: {exp.paper}")
        print("\n".join(report.grid_lines(out)))
        if plots:
            figures.append(plotting.plot(out, args.out))
    found = report.findings(outcomes)
    print("\nResults at the chosen learning rates (identical from run to run and for any "
          "thread count):")
    print("\n".join(report.results_table(outcomes)))
    print(f"results fingerprint (every curve of every grid search): "
          f"{report.fingerprint(outcomes)}")
    print("\nSpeed: the chosen settings rerun, the same loop with adamfast's step and with a "
          "textbook NumPy step.\nMedians per step; 'step share': the optimizer step's share of "
          "the whole training step (adamfast / textbook);\n'whole': the speed-up of the whole "
          "training step; 'lockstep': the largest relative difference of a parameter after 50 "
          "steps\nof both fed the same gradients.  These times vary from run to run:")
    print("\n".join(report.speed_table(outcomes)))
    reran = all(sp.reproduced for out in outcomes for sp in out.speed)
    print(f"timed adamfast reruns reproduced their grid-search curves bit for bit: "
          f"{'yes' if reran else 'NO'}")
    print("\nThe paper's findings, checked:")
    for f in found:
        verdict = "reproduced" if f.reproduced else "NOT reproduced"
        print(f"  [{verdict}] {f.experiment}: {f.claim}\n      {f.evidence}")
    settings = {"quick": args.quick, "threads": adamfast.get_num_threads(), "blas": blas,
                "versions": _versions(plots), "dtype": np.dtype(DTYPE).name,
                "selection": "lowest mean training cost over epochs 1..E; ties to the "
                             "smaller learning rate"}
    path = os.path.join(args.out, "paper.json")
    with open(path, "w") as f:
        json.dump(report.to_json(outcomes, found, settings), f, indent=1)
    print(f"\nwritten: {', '.join(figures + [path])}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0
