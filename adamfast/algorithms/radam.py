"""RAdam (Liu et al., ICLR 2020), as ``torch.optim.RAdam``.

Per element, for step ``t``::

    g     = -grad if maximize else grad
    theta = theta*(1 - lr*weight_decay)  if decoupled_weight_decay, else g += weight_decay*theta
    m     = beta1*m + (1 - beta1)*g
    v     = beta2*v + (1 - beta2)*g*g
    rho_inf = 2/(1 - beta2) - 1
    rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)           (per group, float64)
    if rho_t > 5 (rectified regime):
        r     = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
        theta = theta - lr*r*sqrt(1-beta2^t)/(1-beta1^t) * m / (sqrt(v) + eps)
    else (the first few steps: plain momentum SGD):
        theta = theta - lr/(1-beta1^t) * m

The regime is a per-group scalar; both regimes are computed element-wise and
one is selected, so the loop has no branch.  As in torch, eps is added to the
uncorrected sqrt(v).
"""

from __future__ import annotations

import math

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, pair, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (RADAM_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "OMB2", "EPS", "RECT", "KA", "KB")
GS, PS, L2, B1, OMB1, B2, OMB2, EPS, RECT, KA, KB = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    lr = hp["lr"]
    beta1, beta2 = hp["betas"]
    wd = hp["weight_decay"]
    decoupled = hp["decoupled_weight_decay"]
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * (beta2 ** t) / bc2
    if rho_t > 5.0:
        r = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        rect, ka = 1.0, lr * r * math.sqrt(bc2) / bc1
    else:
        rect, ka = 0.0, 0.0
    row = (-1.0 if hp["maximize"] else 1.0,
           1.0 - lr * wd if decoupled else 1.0,
           0.0 if decoupled else wd,
           beta1, 1.0 - beta1, beta2, 1.0 - beta2, hp["eps"], rect, ka, lr / bc1)
    return row, None


def update_radam(p, g, s, k):
    """The reference for the compiled RAdam element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    m = k[B1] * s[0] + k[OMB1] * g
    v = k[B2] * s[1] + k[OMB2] * (g * g)
    rectified = k[KA] * (m / (np.sqrt(v) + k[EPS]))
    plain = k[KB] * m
    p_new = theta - (rectified if k[RECT] != 0 else plain)
    s[0][...] = m
    s[1][...] = v
    p[...] = p_new


RADAM = Spec(
    name="RAdam",
    kinds={"radam": ("exp_avg", "exp_avg_sq")},
    hyper=(HP("lr", 1e-3, learning_rate), HP("betas", (0.9, 0.999), pair(unit_open)),
           HP("eps", 1e-8, nonneg), HP("weight_decay", 0.0, nonneg),
           HP("decoupled_weight_decay", False, flag), HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "radam",
    reference={"radam": update_radam}, slots=SLOTS, peer="torch.optim.RAdam")
