"""The four experiments of Kingma & Ba (2015), section 6, scaled down, and the
loop that runs them: the grid search, and the timed reruns (adamfast's step
against the textbook NumPy step) of the chosen settings.

Every random draw comes from ``numpy.random.default_rng([seed, stream])``
created afresh for each run: every optimizer and learning rate of an
experiment starts from the same weights and sees the same minibatches and
the same dropout masks, and a run is a pure function of its settings.
adamfast's update is element-wise (bit-identical for any thread count), so
the results do not depend on ``adamfast.set_num_threads`` either.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import adamfast
from adamfast import schedules

from . import textbook
from .data import batches, digits, synthetic_bow
from .models import MLP, Autoencoder, LogisticRegression, SoftmaxRegression

__all__ = ["Candidate", "Experiment", "Run", "Search", "experiments", "KEYS", "train",
           "search", "time_pair", "lockstep"]

DTYPE = np.float32
KEYS = ("logreg", "mlp", "sparse", "biascorr")

# Learning-rate grids: 1-3-10 steps.
GRID = tuple(m * 10.0 ** e for e in range(-5, 2) for m in (1, 3))


def grid(lo, hi):
    """The 1-3-10 learning rates from lo to hi inclusive."""
    return tuple(x for x in GRID if lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9))


@dataclass(frozen=True)
class Candidate:
    """One line of a figure: an adamfast class, its fixed options and its lr grid."""

    label: str
    algorithm: str
    grid: tuple
    options: tuple = ()  # (name, value) pairs, passed to adamfast's class and the textbook one

    @property
    def kwargs(self):
        return dict(self.options)


@dataclass(frozen=True)
class Experiment:
    key: str
    title: str
    paper: str  # what the paper did, for the differences
    setup: object  # () -> (model, X, y, description)
    candidates: tuple
    epochs: int
    batch: int = 128
    decay: bool = False  # lr/sqrt(t), the paper's schedule for logistic regression
    timed: tuple = ()  # labels of the candidates rerun for the speed table (empty: all)
    seed: int = 0

    @property
    def early(self):
        """The table's early column: the cost after 10% of the epochs (the
        paper's figure 4 reads its losses after 10 and 100 epochs)."""
        return max(1, self.epochs // 10)


@dataclass
class Run:
    lr: float
    costs: list  # training cost at epochs 0..E (NaN after a divergence)
    accuracy: float | None = None
    fb_ns: list = field(default_factory=list)  # per step: minibatch gather, forward, backward
    step_ns: list = field(default_factory=list)  # per step: the optimizer step

    @property
    def final(self):
        c = self.costs[-1]
        return c if math.isfinite(c) else math.inf

    @property
    def score(self):
        """The grid search's criterion: the mean training cost over epochs
        1..E, the area under the learning curve (inf after a divergence)."""
        costs = self.costs[1:]
        return sum(costs) / len(costs) if all(map(math.isfinite, costs)) else math.inf

    def cost_at(self, epoch):
        c = self.costs[epoch]
        return c if math.isfinite(c) else math.inf


@dataclass
class Search:
    candidate: Candidate
    runs: dict  # lr -> Run

    @property
    def best(self):
        # Ties go to the smaller rate.
        return min(self.runs.values(), key=lambda r: (r.score, r.lr))

    @property
    def at_edge(self):
        lrs = sorted(self.runs)
        return len(lrs) > 1 and self.best.lr in (lrs[0], lrs[-1]) and \
            math.isfinite(self.best.score)


def _digits_setup(make_model, n=None):
    def setup():
        X, y = digits(DTYPE)
        if n is not None:
            X, y = X[:n], y[:n]
        model, desc = make_model()
        return model, X, y, f"digits {X.shape[0]}x{X.shape[1]} (scikit-learn), {desc}"
    return setup


def _bow_setup(n_docs, vocab):
    def setup():
        X, y, _ = synthetic_bow(n_docs, vocab, seed=0)
        return (LogisticRegression(vocab, p_in=0.5), X, y,
                f"SYNTHETIC bag-of-words {n_docs} docs x {vocab} words "
                f"({X.density():.2%} non-zero), planted logistic model, 50% input dropout")
    return setup


def experiments(quick=False):
    """The four experiments; ``quick`` is the tiny configuration of the tests
    (a few epochs, small models, two learning rates)."""
    def pick(full, tiny):
        return tiny if quick else full

    def g(lo, hi, tiny):
        return pick(grid(lo, hi), tiny)

    nesterov = (("momentum", 0.9), ("nesterov", True))
    hidden = pick(256, 64)
    n = pick(None, 1024)
    exps = [
        Experiment(
            "logreg", "1. Multiclass logistic regression (L2), lr/sqrt(t)",
            "MNIST, 784 pixels, minibatch 128, lr/sqrt(t); Adam, AdaGrad, SGD-Nesterov "
            "(figure 1, left)",
            _digits_setup(lambda: (SoftmaxRegression(64, 10, l2=1e-4),
                                   "softmax regression, L2 1e-4"), n),
            (Candidate("Adam", "Adam", g(3e-2, 3.0, (3e-2, 0.3))),
             Candidate("AdaGrad", "Adagrad", g(0.1, 10.0, (0.1, 1.0))),
             Candidate("SGD-Nesterov", "SGD", g(0.3, 30.0, (0.3, 3.0)), nesterov),
             Candidate("RMSprop", "RMSprop", g(1e-2, 1.0, (1e-2, 0.1))),
             Candidate("AdaMax", "Adamax", g(0.1, 10.0, (0.1, 1.0)))),
            epochs=pick(20, 3), decay=True),
        Experiment(
            "mlp", "2. MLP, 2 hidden ReLU layers, dropout",
            "MNIST, 2x1000 ReLU units, minibatch 128, dropout; Adam, AdaGrad, RMSProp, "
            "SGD-Nesterov, AdaDelta (figure 2a)",
            _digits_setup(lambda: (MLP(64, hidden, 10, p_in=0.2, p_hidden=0.5),
                                   f"MLP 64-{hidden}-{hidden}-10, dropout 0.2 in / 0.5 hidden"),
                          n),
            (Candidate("Adam", "Adam", g(1e-3, 3e-2, (3e-3, 1e-2))),
             Candidate("AdaGrad", "Adagrad", g(3e-3, 1e-1, (1e-2, 3e-2))),
             Candidate("RMSprop", "RMSprop", g(3e-4, 1e-2, (1e-3, 3e-3))),
             Candidate("AdaDelta", "Adadelta", g(0.3, 10.0, (1.0, 3.0))),
             Candidate("SGD-Nesterov", "SGD", g(1e-2, 0.3, (3e-2, 0.1)), nesterov),
             Candidate("Lion", "Lion", g(3e-4, 1e-2, (1e-3, 3e-3)))),
            epochs=pick(20, 3)),
        Experiment(
            "sparse", "3. Sparse features: logistic regression on bag-of-words",
            "IMDB, 10,000 most frequent words, 50% input dropout, lr/sqrt(t); Adam, AdaGrad, "
            "SGD-Nesterov (figure 1, right)",
            _bow_setup(pick(2000, 400), pick(10000, 500)),
            (Candidate("Adam", "Adam", g(1e-2, 1.0, (1e-2, 0.1))),
             Candidate("AdaGrad", "Adagrad", g(0.1, 3.0, (0.1, 1.0))),
             Candidate("SGD-Nesterov", "SGD", g(0.1, 3.0, (0.1, 1.0)), nesterov)),
            epochs=pick(20, 3)),
    ]
    bias = []
    for beta2 in (0.99, 0.999, 0.9999):
        for corrected in (True, False):
            bias.append(Candidate(
                f"beta2={beta2}, {'bias-corrected' if corrected else 'no correction'}", "Adam",
                g(1e-4, 1e-1, (1e-3, 1e-2)),
                (("betas", (0.9, beta2)), ("bias_correction", corrected))))
    code = pick(16, 8)
    exps.append(Experiment(
        "biascorr", "4. Bias correction: Adam with and without, autoencoder",
        "variational autoencoder on MNIST, 500 softplus units, 50-dim latent; beta1 in "
        "{0, 0.9}, log10(lr) in -5..-1, losses after 10 and 100 epochs (figure 4)",
        _digits_setup(lambda: (Autoencoder(64, pick(128, 16), code),
                               f"autoencoder 64-{pick(128, 16)}-{code}-{pick(128, 16)}-64, "
                               f"softplus, Bernoulli cross-entropy"), n),
        tuple(bias), epochs=pick(20, 3),
        timed=("beta2=0.999, bias-corrected", "beta2=0.999, no correction")))
    return exps


def _optimizer(exp, cand, lr, params, impl):
    rate = schedules.inverse_sqrt(lr) if exp.decay else lr
    if impl == "adamfast":
        return getattr(adamfast, cand.algorithm)(params, lr=rate, **cand.kwargs)
    return textbook.make(cand.algorithm, params, rate, **cand.kwargs)


def train(exp, data, cand, lr, impl="adamfast"):
    """One training run; ``impl`` is ``"adamfast"`` or ``"textbook"``."""
    model, X, y = data[:3]
    params = model.init(np.random.default_rng([exp.seed, 0]), DTYPE)
    opt = _optimizer(exp, cand, lr, params, impl)
    P, G = opt.params, opt.grads
    order = np.random.default_rng([exp.seed, 1])
    noise = np.random.default_rng([exp.seed, 2])
    run = Run(lr, [model.cost(P, X, y)])
    clock = time.perf_counter_ns
    fb, st = run.fb_ns, run.step_ns
    with np.errstate(all="ignore"):  # a diverging rate is a result, not a warning
        for _ in range(exp.epochs):
            for idx in batches(len(X), exp.batch, order):
                t0 = clock()
                model.loss_grad(P, X[idx], y[idx], noise, G)
                t1 = clock()
                opt.step()
                t2 = clock()
                fb.append(t1 - t0)
                st.append(t2 - t1)
            run.costs.append(model.cost(P, X, y))
            if not math.isfinite(run.costs[-1]):
                run.costs += [math.nan] * (exp.epochs + 1 - len(run.costs))
                break
        if hasattr(model, "accuracy") and math.isfinite(run.costs[-1]):
            run.accuracy = model.accuracy(P, X, y)
    return run


def search(exp, data, cand):
    """Every learning rate of the candidate's grid, with adamfast."""
    return Search(cand, {lr: train(exp, data, cand, lr) for lr in cand.grid})


def time_pair(exp, data, cand, lr):
    """The chosen setting run again with adamfast's step and with the textbook
    step, in the same loop: (adamfast run, textbook run)."""
    return train(exp, data, cand, lr, "adamfast"), train(exp, data, cand, lr, "textbook")


def lockstep(exp, data, cand, lr, steps=50):
    """adamfast and the textbook step side by side, fed the same gradients, for
    ``steps`` steps: the largest difference of a parameter, relative to the
    largest magnitude in its array.  It shows that the two implement the same
    optimizer.  (Run separately, two float32 trajectories drift apart: the
    model amplifies rounding differences, e.g. ReLU units switching.)"""
    model, X, y = data[:3]
    params = model.init(np.random.default_rng([exp.seed, 0]), DTYPE)
    opts = [_optimizer(exp, cand, lr, params, impl) for impl in ("adamfast", "textbook")]
    order = np.random.default_rng([exp.seed, 1])
    noise = np.random.default_rng([exp.seed, 2])
    done = 0
    with np.errstate(all="ignore"):
        while done < steps:
            for idx in batches(len(X), exp.batch, order)[:steps - done]:
                # Gradients at adamfast's parameters feed both: the optimizers
                # alone are compared, without the model amplifying differences.
                model.loss_grad(opts[0].params, X[idx], y[idx], noise, opts[0].grads)
                for g_tb, g_af in zip(opts[1].grads, opts[0].grads):
                    g_tb[...] = g_af
                for opt in opts:
                    opt.step()
                done += 1
    return max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
               for a, b in zip(opts[0].params, opts[1].params))
