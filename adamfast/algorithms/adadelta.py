"""Adadelta (Zeiler 2012), as ``torch.optim.Adadelta``.

Per element::

    g     = -grad if maximize else grad
    g     = g + weight_decay * theta
    sq    = rho*sq + (1 - rho)*g*g                          (square_avg)
    delta = sqrt(acc + eps) / sqrt(sq + eps) * g
    acc   = rho*acc + (1 - rho)*delta*delta                 (acc_delta)
    theta = theta - lr * delta
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, unit_closed

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (ADADELTA_<NAME>).
SLOTS = ("GS", "PS", "L2", "RHO", "OMR", "EPS", "LR")
GS, PS, L2, RHO, OMR, EPS, LR = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    rho = hp["rho"]
    return (-1.0 if hp["maximize"] else 1.0, 1.0, hp["weight_decay"], rho, 1.0 - rho, hp["eps"],
            hp["lr"]), None


def update_adadelta(p, g, s, k):
    """The reference for the compiled Adadelta element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    sq = k[RHO] * s[0] + k[OMR] * (g * g)
    delta = np.sqrt(s[1] + k[EPS]) / np.sqrt(sq + k[EPS]) * g
    acc = k[RHO] * s[1] + k[OMR] * (delta * delta)
    p_new = theta - k[LR] * delta
    s[0][...] = sq
    s[1][...] = acc
    p[...] = p_new


ADADELTA = Spec(
    name="Adadelta",
    kinds={"adadelta": ("square_avg", "acc_delta")},
    hyper=(HP("lr", 1.0, learning_rate), HP("rho", 0.9, unit_closed), HP("eps", 1e-6, nonneg),
           HP("weight_decay", 0.0, nonneg), HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "adadelta",
    reference={"adadelta": update_adadelta}, slots=SLOTS, peer="torch.optim.Adadelta")
