"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023), as optax.lion.

Per element::

    g     = -grad if maximize else grad
    c     = beta1*m + (1 - beta1)*g
    theta = theta - lr * (sign(c) + weight_decay*theta)
    m     = beta2*m + (1 - beta2)*g

``sign`` is numpy's: 0 for a zero, NaN for NaN.  torch has no Lion; the tests
compare with a NumPy transcription of optax's formula.
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, pair, unit_closed

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (LION_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "OMB2", "LR", "WD")
GS, PS, L2, B1, OMB1, B2, OMB2, LR, WD = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    beta1, beta2 = hp["betas"]
    return (-1.0 if hp["maximize"] else 1.0, 1.0, 0.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
            hp["lr"], hp["weight_decay"]), None


def update_lion(p, g, s, k):
    """The reference for the compiled Lion element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    c = k[B1] * s[0] + k[OMB1] * g
    sign = np.where(c > 0, 1, np.where(c < 0, -1, np.where(c == 0, 0, c))).astype(p.dtype)
    p_new = theta - k[LR] * (sign + k[WD] * theta)
    m = k[B2] * s[0] + k[OMB2] * g
    s[0][...] = m
    p[...] = p_new


LION = Spec(
    name="Lion",
    kinds={"lion": ("exp_avg",)},
    hyper=(HP("lr", 1e-4, learning_rate), HP("betas", (0.9, 0.99), pair(unit_closed)),
           HP("weight_decay", 0.0, nonneg), HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "lion",
    reference={"lion": update_lion}, slots=SLOTS, peer="optax.lion")
