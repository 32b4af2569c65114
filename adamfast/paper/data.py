"""The data: scikit-learn's digits (shipped inside scikit-learn, never
downloaded) and a synthetic bag-of-words problem with a planted linear model.

Both are deterministic: digits is a fixed file, and the synthetic set is
drawn from ``numpy.random.default_rng(seed)``, whose stream numpy keeps
stable across versions.
"""

from __future__ import annotations

import importlib

import numpy as np

__all__ = ["MissingDependency", "require", "digits", "BinaryRows", "synthetic_bow", "batches"]

INSTALL_HINT = "pip install 'adamfast[paper]'"


class MissingDependency(RuntimeError):
    """An optional package that a part of ``python -m adamfast paper`` needs is
    not installed."""


def require(module, purpose):
    """Import ``module`` or raise :class:`MissingDependency` saying what needs
    it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        package = {"sklearn": "scikit-learn"}.get(top, top)
        raise MissingDependency(f"{package} is not installed; it is needed for {purpose}. "
                                f"Install the extra: {INSTALL_HINT}") from None


def digits(dtype=np.float32):
    """scikit-learn's 8x8 digits: X (1797, 64) in [0, 1], y (1797,) int labels."""
    datasets = require("sklearn.datasets", "the digits data of the logistic regression, "
                                           "MLP and bias-correction experiments")
    X, y = datasets.load_digits(return_X_y=True)
    return (X / 16.0).astype(dtype), y.astype(np.intp)


class BinaryRows:
    """Rows of 0/1 features stored as the column indices of their ones (CSR
    without the values): a bag-of-words matrix.  ``X[idx]`` gathers rows."""

    def __init__(self, indptr, indices, n_features):
        self.indptr, self.indices, self.n_features = indptr, indices, n_features

    def __len__(self):
        return len(self.indptr) - 1

    @property
    def shape(self):
        return (len(self), self.n_features)

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        lo, hi = self.indptr[idx], self.indptr[idx + 1]
        indptr = np.concatenate([[0], np.cumsum(hi - lo)])
        indices = np.concatenate([self.indices[a:b] for a, b in zip(lo, hi)]) if len(idx) else \
            self.indices[:0]
        return BinaryRows(indptr, indices, self.n_features)

    def row_of_each(self):
        """The row number of every stored one."""
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def density(self):
        return len(self.indices) / (len(self) * self.n_features)

    def toarray(self, dtype=np.float64):
        out = np.zeros(self.shape, dtype)
        out[self.row_of_each(), self.indices] = 1
        return out


def synthetic_bow(n_docs=2000, vocab=10000, seed=0):
    """A SYNTHETIC sparse bag-of-words classification problem.

    Word frequencies follow Zipf's law (``p_k ~ 1/(k + 10)``, so most of the
    vocabulary is rare); each document holds 20-120 word draws, recorded as
    binary presence features.  The label is drawn from a planted logistic
    model whose weights are N(0, 1) for every word: rare words carry as
    much signal per occurrence as frequent ones, which is the situation
    where per-coordinate step sizes (AdaGrad, Adam) pay off.

    Returns X (:class:`BinaryRows`, about 0.5% non-zero), y in {0., 1.}
    (float64) and the planted weights.
    """
    rng = np.random.default_rng(seed)
    freq = 1.0 / (np.arange(vocab) + 10.0)
    freq /= freq.sum()
    rows = []
    for length in rng.integers(20, 121, size=n_docs):
        rows.append(np.unique(rng.choice(vocab, size=length, p=freq)))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    X = BinaryRows(indptr, np.concatenate(rows), vocab)
    w_true = rng.standard_normal(vocab)
    z = np.bincount(X.row_of_each(), weights=w_true[X.indices], minlength=n_docs)
    z = 3.0 * (z - z.mean()) / z.std()  # logits of a well-separated but noisy problem
    y = (rng.random(n_docs) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return X, y, w_true


def batches(n, batch, rng):
    """The minibatch index arrays of one epoch, in a random order from ``rng``."""
    perm = rng.permutation(n)
    return [perm[i:i + batch] for i in range(0, n, batch)]
