"""Textbook NumPy optimizers: the baseline of the speed comparison.

Each is the algorithm written the way a NumPy training loop writes it: one
loop over the parameter arrays, the update as whole-array expressions
(temporaries allocated by NumPy), the formulas of the algorithm's paper with
``torch.optim``'s conventions, so that a run gives the same training curve
as adamfast's class up to float rounding.  They take the hyperparameters
the experiments use, nothing more (no weight decay, no ``maximize``).

Like adamfast's classes, an optimizer here owns ``params`` (copies of the
arrays given) and ``grads`` (arrays to fill in place), and ``lr`` may be a
schedule (a callable of the 1-based step).
"""

from __future__ import annotations

import numpy as np

__all__ = ["make"]


class _Textbook:
    def __init__(self, params, lr):
        self.params = [np.array(p, copy=True) for p in params]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.lr = lr
        self.t = 0

    def step(self):
        self.t += 1
        lr = self.lr(self.t) if callable(self.lr) else self.lr
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            self.update(i, p, g, lr)

    def state(self, i, p, n):
        """The i-th array's n state buffers, zeros at the first use."""
        st = self._state = getattr(self, "_state", {})
        if i not in st:
            st[i] = [np.zeros_like(p) for _ in range(n)]
        return st[i]


class Adam(_Textbook):
    """Kingma & Ba, Algorithm 1; ``bias_correction=False`` drops both corrections."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, bias_correction=True):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.bias_correction = eps, bias_correction

    def update(self, i, p, g, lr):
        m, v = self.state(i, p, 2)
        m[...] = self.beta1 * m + (1 - self.beta1) * g
        v[...] = self.beta2 * v + (1 - self.beta2) * g * g
        if self.bias_correction:
            m_hat = m / (1 - self.beta1 ** self.t)
            v_hat = v / (1 - self.beta2 ** self.t)
        else:
            m_hat, v_hat = m, v
        p -= lr * m_hat / (np.sqrt(v_hat) + self.eps)


class Adamax(_Textbook):
    """Kingma & Ba, section 7.1 (eps inside the max, as torch)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def update(self, i, p, g, lr):
        m, u = self.state(i, p, 2)
        m[...] = self.beta1 * m + (1 - self.beta1) * g
        u[...] = np.maximum(self.beta2 * u, np.abs(g) + self.eps)
        p -= lr / (1 - self.beta1 ** self.t) * m / u


class Adagrad(_Textbook):
    """Duchi et al. 2011."""

    def __init__(self, params, lr, eps=1e-10):
        super().__init__(params, lr)
        self.eps = eps

    def update(self, i, p, g, lr):
        (s,) = self.state(i, p, 1)
        s += g * g
        p -= lr * g / (np.sqrt(s) + self.eps)


class RMSprop(_Textbook):
    """Tieleman & Hinton 2012 (torch's: eps outside the root)."""

    def __init__(self, params, lr, alpha=0.99, eps=1e-8):
        super().__init__(params, lr)
        self.alpha, self.eps = alpha, eps

    def update(self, i, p, g, lr):
        (sq,) = self.state(i, p, 1)
        sq[...] = self.alpha * sq + (1 - self.alpha) * g * g
        p -= lr * g / (np.sqrt(sq) + self.eps)


class Adadelta(_Textbook):
    """Zeiler 2012 (torch's, with a learning rate multiplying the update)."""

    def __init__(self, params, lr, rho=0.9, eps=1e-6):
        super().__init__(params, lr)
        self.rho, self.eps = rho, eps

    def update(self, i, p, g, lr):
        sq, acc = self.state(i, p, 2)
        sq[...] = self.rho * sq + (1 - self.rho) * g * g
        delta = np.sqrt(acc + self.eps) / np.sqrt(sq + self.eps) * g
        acc[...] = self.rho * acc + (1 - self.rho) * delta * delta
        p -= lr * delta


class SGD(_Textbook):
    """SGD with Nesterov momentum, as torch.optim.SGD(nesterov=True)."""

    def __init__(self, params, lr, momentum=0.9, nesterov=True):
        super().__init__(params, lr)
        if not nesterov:
            raise ValueError("the textbook SGD here is the Nesterov variant; got nesterov=False")
        self.momentum = momentum

    def update(self, i, p, g, lr):
        (buf,) = self.state(i, p, 1)
        # From zeros, the first step gives buf = g, as torch's copy of g does.
        buf[...] = self.momentum * buf + g
        p -= lr * (g + self.momentum * buf)


class Lion(_Textbook):
    """Chen et al. 2023."""

    def __init__(self, params, lr, betas=(0.9, 0.99)):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas

    def update(self, i, p, g, lr):
        (m,) = self.state(i, p, 1)
        p -= lr * np.sign(self.beta1 * m + (1 - self.beta1) * g)
        m[...] = self.beta2 * m + (1 - self.beta2) * g


CLASSES = {cls.__name__: cls for cls in (Adam, Adamax, Adagrad, RMSprop, Adadelta, SGD, Lion)}


def make(name, params, lr, **options):
    """The textbook optimizer of adamfast's class ``name`` (e.g. ``"Adam"``)."""
    return CLASSES[name](params, lr, **options)
