"""The printed report: the grid searches, the results table, the speed table,
the paper's qualitative findings checked against the results, and the JSON
record of everything.

Everything except the speed table (and the timings in the progress lines)
is a function of the training curves alone, so it is identical from run to
run and for any thread count; ``fingerprint`` hashes those curves so two
runs can be compared at a glance.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass

__all__ = ["Outcome", "Speed", "Finding", "grid_lines", "results_table", "speed_table",
           "findings", "fingerprint", "to_json"]


@dataclass
class Speed:
    label: str
    n_params: int
    adamfast: object  # Run
    textbook: object  # Run
    reproduced: bool  # the timed adamfast rerun gave the grid search's curve bit for bit
    agreement: float  # experiments.lockstep: adamfast vs textbook on the same gradients

    def medians(self):
        fb = statistics.median(self.adamfast.fb_ns + self.textbook.fb_ns) / 1e3
        af = statistics.median(self.adamfast.step_ns) / 1e3
        tb = statistics.median(self.textbook.step_ns) / 1e3
        return fb, af, tb


@dataclass
class Outcome:
    """One experiment's results."""

    exp: object  # Experiment
    data: str  # the data/model description
    searches: list
    speed: list
    seconds: float

    def best(self, label):
        return next(s.best for s in self.searches if s.candidate.label == label)

    def search(self, label):
        return next(s for s in self.searches if s.candidate.label == label)


@dataclass
class Finding:
    experiment: str
    claim: str
    reproduced: bool
    evidence: str


def _num(x, width=0):
    text = "diverged" if not math.isfinite(x) else f"{x:.4g}"
    return text.rjust(width)


def _lr(x):
    return f"{x:g}"


def grid_lines(out):
    """The recorded grid search of one experiment."""
    lines = [f"  grid search, mean training cost over epochs 1-{out.exp.epochs} "
             f"(* chosen; ! chosen at the edge of its grid):"]
    width = max(len(s.candidate.label) for s in out.searches)
    for s in out.searches:
        best = s.best
        cells = []
        for lr, run in s.runs.items():
            mark = ("!" if s.at_edge else "*") if run is best else " "
            cells.append(f"{_lr(lr)}: {_num(run.score)}{mark}")
        lines.append(f"    {s.candidate.label:<{width}}  " + "  ".join(cells))
    return lines


def results_table(outcomes):
    head = (f"{'experiment':<10} {'optimizer':<30} {'lr':>7} {'cost@10%':>10} {'final cost':>10} "
            f"{'mean cost':>10} {'train acc':>9}")
    lines = [head, "-" * len(head)]
    for out in outcomes:
        for s in out.searches:
            b = s.best
            acc = f"{b.accuracy:.1%}" if b.accuracy is not None else "-"
            lines.append(f"{out.exp.key:<10} {s.candidate.label:<30} {_lr(b.lr):>7} "
                         f"{_num(b.cost_at(out.exp.early), 10)} {_num(b.final, 10)} "
                         f"{_num(b.score, 10)} {acc:>9}")
    return lines


def speed_table(outcomes):
    head = (f"{'experiment':<10} {'optimizer':<30} {'params':>8} {'fwd+bwd':>8} {'adamfast':>9} "
            f"{'textbook':>9} {'step':>6} {'step share':>11} {'whole':>6} {'lockstep':>9}")
    lines = [head, f"{'':<10} {'':<30} {'':>8} {'us':>8} {'step us':>9} {'step us':>9} "
                   f"{'x':>6} {'af / tb':>11} {'x':>6} {'rel. diff':>9}",
             "-" * len(head)]
    for out in outcomes:
        for sp in out.speed:
            fb, af, tb = sp.medians()
            lines.append(f"{out.exp.key:<10} {sp.label:<30} {sp.n_params:>8} {fb:>8.1f} "
                         f"{af:>9.1f} {tb:>9.1f} {tb / af:>6.1f} "
                         f"{af / (fb + af):>5.1%} {tb / (fb + tb):>5.1%} "
                         f"{(fb + tb) / (fb + af):>6.2f} {sp.agreement:>9.1e}")
    return lines


def _ratio(a, b):
    return a / b if b > 0 else math.inf


def findings(outcomes):
    """The paper's qualitative claims, each checked against the results with the
    criterion stated in docs/paper.md.  Speed of convergence is the grid
    search's criterion: the mean training cost over the epochs."""
    found = []
    by_key = {o.exp.key: o for o in outcomes}

    def score(out, label):
        return out.best(label).score

    def finals(out, *labels):
        return "; final cost " + ", ".join(f"{k} {_num(out.best(k).final)}" for k in labels)

    if "logreg" in by_key:
        o = by_key["logreg"]
        adam, sgd, ada = (score(o, k) for k in ("Adam", "SGD-Nesterov", "AdaGrad"))
        r = _ratio(adam, sgd)
        found.append(Finding("logreg", "Adam converges as fast as SGD-Nesterov (within 20%)",
                             r <= 1.2, f"mean cost Adam {adam:.4g}, SGD-Nesterov {sgd:.4g}: "
                                       f"ratio {r:.2f}" + finals(o, "Adam", "SGD-Nesterov")))
        found.append(Finding("logreg", "Adam and SGD-Nesterov both converge faster than AdaGrad",
                             adam < ada and sgd < ada,
                             f"mean cost AdaGrad {ada:.4g}, Adam {adam:.4g}, SGD-Nesterov "
                             f"{sgd:.4g}" + finals(o, "AdaGrad", "Adam", "SGD-Nesterov")))
    if "mlp" in by_key:
        o = by_key["mlp"]
        adam = score(o, "Adam")
        paper = [s.candidate.label for s in o.searches
                 if s.candidate.label not in ("Adam", "Lion")]
        rivals = {k: score(o, k) for k in paper}
        runner = min(rivals, key=rivals.get)
        found.append(Finding("mlp", "Adam converges faster than " + ", ".join(paper),
                             adam < rivals[runner],
                             f"mean cost Adam {adam:.4g}, next best {runner} "
                             f"{rivals[runner]:.4g}" + finals(o, "Adam", *paper)))
        if any(s.candidate.label == "Lion" for s in o.searches):
            lion = score(o, "Lion")
            found.append(Finding("mlp", "(not in the paper) Adam converges faster than Lion",
                                 adam < lion, f"mean cost Adam {adam:.4g}, Lion {lion:.4g}"
                                 + finals(o, "Adam", "Lion")))
    if "sparse" in by_key:
        o = by_key["sparse"]
        adam, ada, sgd = (score(o, k) for k in ("Adam", "AdaGrad", "SGD-Nesterov"))
        found.append(Finding("sparse", "AdaGrad beats SGD-Nesterov by a large margin "
                                       "(at least 1.5x lower mean cost)",
                             _ratio(sgd, ada) >= 1.5,
                             f"mean cost AdaGrad {ada:.4g}, SGD-Nesterov {sgd:.4g}: "
                             f"{_ratio(sgd, ada):.2f}x" + finals(o, "AdaGrad", "SGD-Nesterov")))
        r = _ratio(adam, ada)
        found.append(Finding("sparse", "Adam converges as fast as AdaGrad (within 20%)",
                             r <= 1.2, f"mean cost Adam {adam:.4g}, AdaGrad {ada:.4g}: ratio "
                                       f"{r:.2f}" + finals(o, "Adam", "AdaGrad")))
    if "biascorr" in by_key:
        found += _bias_findings(by_key["biascorr"])
    return found


def _bias_findings(o):
    """At the learning rate chosen with bias correction (what a user who tuned
    Adam as published would run), compare the run without it."""
    early, last = o.exp.early, o.exp.epochs
    pairs = {}
    for s in o.searches:
        if s.candidate.kwargs["bias_correction"]:
            beta2 = s.candidate.kwargs["betas"][1]
            plain = o.search(s.candidate.label.replace("bias-corrected", "no correction"))
            pairs[beta2] = (s.best.lr, s.runs[s.best.lr], plain.runs[s.best.lr])
    found = []
    top = max(pairs)
    lr, corr, plain = pairs[top]
    found.append(Finding(
        "biascorr", f"without bias correction, beta2={top} is unstable (at the learning rate "
                    f"chosen with correction, the cost after {last} epochs is at least 1.2x "
                    f"the corrected run's)",
        _ratio(plain.final, corr.final) >= 1.2,
        f"lr {_lr(lr)}, corrected vs uncorrected: after {early} epochs "
        f"{_num(corr.cost_at(early))} vs {_num(plain.cost_at(early))}, after {last} "
        f"{_num(corr.final)} vs {_num(plain.final)}"))
    ratios = [_ratio(p.final, c.final) for _, (_, c, p) in sorted(pairs.items())]
    found.append(Finding(
        "biascorr", "the harm of dropping the correction grows as beta2 approaches 1 "
                    "(same comparison)",
        all(a < b for a, b in zip(ratios, ratios[1:])),
        "uncorrected/corrected final cost: " + ", ".join(
            f"beta2={b2} {r:.2f}" for b2, r in zip(sorted(pairs), ratios))))
    best = {flag: min((s for s in o.searches if s.candidate.kwargs["bias_correction"] == flag),
                      key=lambda s: s.best.score) for flag in (True, False)}
    found.append(Finding(
        "biascorr", "the best setting overall uses bias correction (each variant at its own "
                    "best learning rate)",
        best[True].best.score < best[False].best.score,
        f"best mean cost with correction {best[True].best.score:.4g} "
        f"({best[True].candidate.label}, lr {_lr(best[True].best.lr)}), without "
        f"{best[False].best.score:.4g} ({best[False].candidate.label}, "
        f"lr {_lr(best[False].best.lr)})"))
    return found


def fingerprint(outcomes):
    """A short hash of every training curve of every grid search."""
    h = hashlib.sha256()
    for out in outcomes:
        for s in out.searches:
            for lr, run in s.runs.items():
                h.update(repr((out.exp.key, s.candidate.label, lr, run.costs)).encode())
    return h.hexdigest()[:16]


def _finite(x):
    return x if isinstance(x, float) and math.isfinite(x) else None


def to_json(outcomes, found, settings):
    """Everything, for ``DIR/paper.json``: settings, every run of every grid
    search, the choices, the speed rows and the findings."""
    exps = []
    for out in outcomes:
        e = out.exp
        exps.append({
            "key": e.key, "title": e.title, "data": out.data, "paper": e.paper,
            "epochs": e.epochs, "batch": e.batch, "lr_schedule": "lr/sqrt(t)" if e.decay
            else "constant", "seed": e.seed, "seconds": round(out.seconds, 2),
            "optimizers": [{
                "label": s.candidate.label, "class": f"adamfast.{s.candidate.algorithm}",
                "options": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in s.candidate.options},
                "chosen_lr": s.best.lr, "chosen_at_grid_edge": s.at_edge,
                "grid": [{"lr": lr, "mean_cost": _finite(run.score),
                          "costs": [_finite(c) for c in run.costs],
                          "train_accuracy": run.accuracy} for lr, run in s.runs.items()],
            } for s in out.searches],
            "speed": [{
                "label": sp.label, "params": sp.n_params,
                "fwd_bwd_us": sp.medians()[0], "adamfast_step_us": sp.medians()[1],
                "textbook_step_us": sp.medians()[2],
                "rerun_reproduced_grid_curve": sp.reproduced,
                "lockstep_rel_diff": sp.agreement,
            } for sp in out.speed],
        })
    return {"settings": settings, "experiments": exps, "fingerprint": fingerprint(outcomes),
            "findings": [{"experiment": f.experiment, "claim": f.claim,
                          "reproduced": f.reproduced, "evidence": f.evidence} for f in found]}
