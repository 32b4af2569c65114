"""Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
Optimizing Deep Models", 2022), as ``timm.optim.Adan``.

Per element, for step ``t`` (1-based), with ``betas = (beta1, beta2, beta3)``::

    g_prev = g                                  at t = 1: the first difference is 0
    u      = g - g_prev
    m      = beta1*m + (1 - beta1)*g            exp_avg
    d      = beta2*d + (1 - beta2)*u            exp_avg_diff
    w      = beta2*u + g                        the Nesterov-corrected gradient
    n      = beta3*n + (1 - beta3)*w*w          exp_avg_sq
    denom  = sqrt(n)/sqrt(1 - beta3^t) + eps
    theta  = theta*(1 - lr*weight_decay)                        no_prox=True
    theta  = theta - lr/(1 - beta1^t) * m/denom
                   - lr*beta2/(1 - beta2^t) * d/denom
    theta  = theta/(1 + lr*weight_decay)                        no_prox=False (proximal)
    g_prev = g

The previous gradient is kept negated, ``neg_pre_grad = 0 - g``, as timm keeps
it (its state keys are this spec's buffer names, so checkpoints load both
ways), and ``u`` is computed as ``g + neg_pre_grad``.  ``0 - g`` rather than
``-g``: timm writes ``0 + (-1)*g``, which is +0 for a zero gradient.  Step 1
uses ``0 - g`` for the previous gradient (slot FIRST), as timm replaces the
state's value then; so does a param's first gradient at a later step in
adamfast.torch, whose count is the group's as timm's is (a param without a
gradient at step 1 starts at the group's count; spec ``first_slot``).  Each
step reads and writes four state buffers besides params and grads: 44 bytes
per float32 parameter.

timm's ``caution=True`` (the "Cautious Optimizers" mask) is not implemented:
it is refused.  timm's bias corrections and step sizes are computed in
float64 here as there; the kernels divide by ``sqrt(1 - beta3^t)`` and by
``1 + lr*weight_decay`` as timm does.
"""

from __future__ import annotations

import math

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, numbers_in, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (ADAN_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "OMB2", "B3", "OMB3", "BC3S", "EPS", "STEP",
         "STEPD", "DIV", "FIRST")
GS, PS, L2, B1, OMB1, B2, OMB2, B3, OMB3, BC3S, EPS, STEP, STEPD, DIV, FIRST = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    lr = hp["lr"]
    beta1, beta2, beta3 = hp["betas"]
    wd = hp["weight_decay"]
    no_prox = hp["no_prox"]
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    bc3 = 1.0 - beta3 ** t
    row = (1.0,
           1.0 - lr * wd if no_prox else 1.0,
           0.0,
           beta1, 1.0 - beta1, beta2, 1.0 - beta2, beta3, 1.0 - beta3,
           math.sqrt(bc3), hp["eps"], lr / bc1, lr * beta2 / bc2,
           1.0 if no_prox else 1.0 + lr * wd,
           1.0 if t == 1 else 0.0)
    return row, None


def update_adan(p, g, s, k):
    """The reference for the compiled Adan element functions."""
    m, n, d, neg_prev = s
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    neg = 0 - g
    u = g + (neg if k[FIRST] != 0 else neg_prev)
    m_new = k[B1] * m + k[OMB1] * g
    d_new = k[B2] * d + k[OMB2] * u
    w = k[B2] * u + g
    n_new = k[B3] * n + k[OMB3] * (w * w)
    denom = np.sqrt(n_new) / k[BC3S] + k[EPS]
    p_new = (theta - k[STEP] * (m_new / denom) - k[STEPD] * (d_new / denom)) / k[DIV]
    # Everything is computed; only now write (a failure above writes nothing).
    m[...] = m_new
    n[...] = n_new
    d[...] = d_new
    neg_prev[...] = neg
    p[...] = p_new


def _betas(name, value):
    b1, b2, b3 = numbers_in(name, value, 3, "three numbers (beta1, beta2, beta3)")
    return tuple(unit_open(f"{name}[{j}]", b) for j, b in enumerate((b1, b2, b3)))


def _no_caution(name, value):
    if flag(name, value):
        raise ValueError(f"{name}=True (timm's Cautious Optimizers mask) is not implemented by "
                         f"adamfast's Adan; use caution=False")
    return False


ADAN = Spec(
    name="Adan",
    kinds={"adan": ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")},
    hyper=(HP("lr", 1e-3, learning_rate, "learning rate, or a schedule (a callable of the step)"),
           HP("betas", (0.98, 0.92, 0.99), _betas,
              "decay rates of the gradient, difference and squared averages"),
           HP("eps", 1e-8, nonneg, "added to the denominator"),
           HP("weight_decay", 0.0, nonneg, "decoupled weight decay"),
           HP("no_prox", False, flag, "decay by multiplying first, not by the proximal division"),
           HP("caution", False, _no_caution, "timm's caution mask: not implemented (False only)")),
    scalars=scalars, kind_of=lambda groups: "adan",
    reference={"adan": update_adan}, slots=SLOTS, peer="timm.optim.Adan",
    torch_scalar_state=(), torch_step_in_group=True, first_slot="FIRST",
    torch_only=(("foreach", None),))
