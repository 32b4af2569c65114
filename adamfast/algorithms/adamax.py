"""Adamax: Adam with the infinity norm (Kingma & Ba, ICLR 2015, section 7.1).

Per element, for step ``t``, as ``torch.optim.Adamax``::

    g     = -grad if maximize else grad
    g     = g + weight_decay * theta
    m     = beta1*m + (1 - beta1)*g
    u     = max(beta2*u, |g| + eps)               (exp_inf; NaN-propagating max)
    theta = theta - (lr / (1 - beta1^t)) * m / u

torch adds eps inside the max (the paper has none); this follows torch.
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, pair, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (ADAMAX_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "EPS", "CLR")
GS, PS, L2, B1, OMB1, B2, EPS, CLR = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    beta1, beta2 = hp["betas"]
    return (-1.0 if hp["maximize"] else 1.0, 1.0, hp["weight_decay"], beta1, 1.0 - beta1, beta2,
            hp["eps"], hp["lr"] / (1.0 - beta1 ** t)), None


def update_adamax(p, g, s, k):
    """The reference for the compiled Adamax element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    m = k[B1] * s[0] + k[OMB1] * g
    a = k[B2] * s[1]
    b = np.abs(g) + k[EPS]
    u = np.where((a != a) | (a >= b), a, b)
    p_new = theta - k[CLR] * (m / u)
    s[0][...] = m
    s[1][...] = u
    p[...] = p_new


ADAMAX = Spec(
    name="Adamax",
    kinds={"adamax": ("exp_avg", "exp_inf")},
    hyper=(HP("lr", 2e-3, learning_rate), HP("betas", (0.9, 0.999), pair(unit_open)),
           HP("eps", 1e-8, nonneg), HP("weight_decay", 0.0, nonneg),
           HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "adamax",
    reference={"adamax": update_adamax}, slots=SLOTS, peer="torch.optim.Adamax")
