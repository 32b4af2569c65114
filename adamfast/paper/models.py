"""The four models, in NumPy, with their gradients written by hand.

Every model has the same three methods, so one training loop serves all:

* ``init(rng, dtype)``: a list of fresh parameter arrays;
* ``loss_grad(params, X, y, rng, grads=None)``: the training loss on one
  minibatch, with the model's noise (dropout) drawn from ``rng``; with
  ``grads`` (arrays shaped like ``params``) the gradient is written into them
  in place, which is how the optimizers' ``opt.grads`` views are filled;
* ``cost(params, X, y)``: the deterministic training cost (no dropout), the
  quantity the paper's figures plot.

Dropout is inverted (kept units are scaled by ``1/(1-p)``), so ``cost``
needs no rescaling.  ``tests/test_paper.py`` checks every gradient against
central finite differences in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SoftmaxRegression", "MLP", "LogisticRegression", "Autoencoder"]


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _softplus(a):
    # log(1 + e^a) = max(a, 0) + log1p(e^-|a|): no overflow, and several times
    # faster than np.logaddexp(0, a) in float32.
    out = np.exp(-np.abs(a))
    np.log1p(out, out=out)
    out += np.maximum(a, 0)
    return out


def _sigmoid(a):
    # The tanh form cannot overflow for any a.
    return 0.5 * np.tanh(0.5 * a) + 0.5


def _dropout(rng, shape, p, dtype):
    """An inverted-dropout mask, or None when p == 0 (no draw, so the stream of
    random numbers does not depend on a disabled layer)."""
    if p == 0:
        return None
    keep = rng.random(shape) >= p
    return keep.astype(dtype) / dtype.type(1 - p)


def _cross_entropy(z, y, grad_z):
    """Mean negative log-likelihood of integer labels y under logits z; the
    gradient with respect to z goes into grad_z (if not None)."""
    logp = _log_softmax(z)
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    if grad_z is not None:
        np.exp(logp, out=grad_z)
        grad_z[np.arange(n), y] -= 1
        grad_z /= n
    return float(loss)


class SoftmaxRegression:
    """Multiclass logistic regression with an L2 penalty on the weights (the
    paper's section 6.1): ``mean(-log softmax(X W + b)[y]) + l2/2 * |W|^2``."""

    def __init__(self, n_in, n_classes, l2):
        self.n_in, self.n_classes, self.l2 = n_in, n_classes, l2

    def init(self, rng, dtype):
        dtype = np.dtype(dtype)
        return [(0.01 * rng.standard_normal((self.n_in, self.n_classes))).astype(dtype),
                np.zeros(self.n_classes, dtype)]

    def loss_grad(self, params, X, y, rng=None, grads=None):
        W, b = params
        z = X @ W + b
        gz = np.empty_like(z) if grads is not None else None
        loss = _cross_entropy(z, y, gz) + 0.5 * self.l2 * float(np.vdot(W, W))
        if grads is not None:
            gW, gb = grads
            np.matmul(X.T, gz, out=gW)
            gW += self.l2 * W
            gz.sum(axis=0, out=gb)
        return loss

    def cost(self, params, X, y):
        return self.loss_grad(params, X, y)

    def accuracy(self, params, X, y):
        W, b = params
        return float(((X @ W + b).argmax(axis=1) == y).mean())


class MLP:
    """Two ReLU hidden layers and a softmax output, with dropout on the input
    (``p_in``) and on both hidden layers (``p_hidden``): the paper's section 6.2
    network, narrower."""

    def __init__(self, n_in, hidden, n_classes, p_in=0.2, p_hidden=0.5):
        self.sizes = (n_in, hidden, hidden, n_classes)
        self.p = (p_in, p_hidden, p_hidden)

    def init(self, rng, dtype):
        dtype = np.dtype(dtype)
        params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            # He initialisation, for ReLU.
            params.append((rng.standard_normal((fan_in, fan_out))
                           * np.sqrt(2.0 / fan_in)).astype(dtype))
            params.append(np.zeros(fan_out, dtype))
        return params

    def loss_grad(self, params, X, y, rng=None, grads=None):
        """With ``rng`` None there is no dropout (the cost)."""
        dtype = params[0].dtype
        h = X
        inputs, masks, actives = [], [], []
        for layer in range(3):
            mask = _dropout(rng, h.shape, self.p[layer], dtype) if rng is not None else None
            if mask is not None:
                h = h * mask
            inputs.append(h)
            masks.append(mask)
            W, b = params[2 * layer], params[2 * layer + 1]
            z = h @ W + b
            if layer < 2:
                active = z > 0
                actives.append(active)
                h = np.where(active, z, 0).astype(dtype, copy=False)
            else:
                h = z
        gz = np.empty_like(h) if grads is not None else None
        loss = _cross_entropy(h, y, gz)
        if grads is None:
            return loss
        for layer in (2, 1, 0):
            np.matmul(inputs[layer].T, gz, out=grads[2 * layer])
            gz.sum(axis=0, out=grads[2 * layer + 1])
            if layer == 0:
                break
            gh = gz @ params[2 * layer].T
            if masks[layer] is not None:
                gh *= masks[layer]
            gz = np.where(actives[layer - 1], gh, 0).astype(dtype, copy=False)
        return loss

    def cost(self, params, X, y):
        return self.loss_grad(params, X, y)

    def accuracy(self, params, X, y):
        h = X
        for layer in range(3):
            h = h @ params[2 * layer] + params[2 * layer + 1]
            if layer < 2:
                h = np.maximum(h, 0)
        return float((h.argmax(axis=1) == y).mean())


class LogisticRegression:
    """Binary logistic regression on bag-of-words features
    (:class:`~adamfast.paper.data.BinaryRows`) with dropout noise on the
    inputs, as the paper's IMDB experiment (section 6.1):
    ``mean(softplus(z) - y z)`` with ``z = (X * mask) w + b``.  No L2 term, so
    a word absent from a minibatch gets an exactly zero gradient: the sparse
    gradients that AdaGrad-style methods are made for.  Only the stored ones
    are touched (sums by ``np.bincount``, in float64), so a step costs the
    minibatch's non-zeros plus one pass over ``w``."""

    def __init__(self, n_in, p_in=0.5):
        self.n_in, self.p_in = n_in, p_in

    def init(self, rng, dtype):
        dtype = np.dtype(dtype)
        return [np.zeros(self.n_in, dtype), np.zeros(1, dtype)]

    def _logits(self, params, X, keep):
        w, b = params
        vals = w[X.indices].astype(np.float64)
        if keep is not None:
            vals *= keep
        return np.bincount(X.row_of_each(), weights=vals, minlength=len(X)) + float(b[0])

    def loss_grad(self, params, X, y, rng=None, grads=None):
        keep = None
        if rng is not None and self.p_in:
            keep = (rng.random(len(X.indices)) >= self.p_in) / (1 - self.p_in)
        z = self._logits(params, X, keep)
        loss = float(np.mean(_softplus(z) - y * z))
        if grads is not None:
            gz = (_sigmoid(z) - y) / len(y)
            contrib = gz[X.row_of_each()]
            if keep is not None:
                contrib *= keep
            grads[0][...] = np.bincount(X.indices, weights=contrib, minlength=self.n_in)
            grads[1][0] = gz.sum()
        return loss

    def cost(self, params, X, y):
        return self.loss_grad(params, X, y)

    def accuracy(self, params, X, y):
        return float(((self._logits(params, X, None) > 0) == (y > 0.5)).mean())


class Autoencoder:
    """A small deterministic autoencoder on pixel intensities in [0, 1]:
    ``x -> softplus -> linear code -> softplus -> sigmoid``, trained on the
    Bernoulli cross-entropy summed over pixels, averaged over examples.
    It stands in for the paper's variational autoencoder (section 6.4),
    whose point is the optimizer's behaviour, not the model."""

    def __init__(self, n_in, hidden, code):
        self.sizes = (n_in, hidden, code, hidden, n_in)

    def init(self, rng, dtype):
        dtype = np.dtype(dtype)
        params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            params.append((rng.standard_normal((fan_in, fan_out))
                           / np.sqrt(fan_in)).astype(dtype))
            params.append(np.zeros(fan_out, dtype))
        return params

    def loss_grad(self, params, X, y=None, rng=None, grads=None):
        """``y`` is ignored (the target is X); so is ``rng`` (no noise)."""
        dtype = params[0].dtype
        h = X
        inputs, pre = [], []
        for layer in range(4):
            inputs.append(h)
            z = h @ params[2 * layer] + params[2 * layer + 1]
            pre.append(z)
            # softplus after layers 0 and 2, the code (layer 1) is linear.
            h = _softplus(z).astype(dtype, copy=False) if layer in (0, 2) else z
        n = len(X)
        loss = float((_softplus(h) - X * h).sum() / n)
        if grads is None:
            return loss
        gz = ((_sigmoid(h) - X) / dtype.type(n)).astype(dtype, copy=False)
        for layer in (3, 2, 1, 0):
            np.matmul(inputs[layer].T, gz, out=grads[2 * layer])
            gz.sum(axis=0, out=grads[2 * layer + 1])
            if layer == 0:
                break
            gh = gz @ params[2 * layer].T
            below = layer - 1
            if below in (0, 2):
                gh *= _sigmoid(pre[below]).astype(dtype, copy=False)
            gz = gh
        return loss

    def cost(self, params, X, y=None):
        return self.loss_grad(params, X)
