"""RMSprop (Tieleman & Hinton 2012), as ``torch.optim.RMSprop``.

Per element::

    g     = -grad if maximize else grad
    g     = g + weight_decay * theta
    sq    = alpha*sq + (1 - alpha)*g*g                    (square_avg)
    ga    = alpha*ga + (1 - alpha)*g                      (grad_avg; centered only)
    avg   = sqrt(sq - ga*ga) if centered else sqrt(sq)
    avg   = avg + eps
    buf   = momentum*buf + g/avg;  theta -= lr*buf       if momentum > 0
    theta = theta - lr * g/avg                             otherwise

``centered`` and ``momentum > 0`` need state buffers, so the kind (which
buffers exist) is the union over the groups; within a kind they are per-group
flags selected element-wise, so groups may differ.  A group with a flag off
leaves that buffer alone, as torch.optim.RMSprop does (it is used again when
the flag is switched back on), whichever kind runs the step.  torch updates
grad_avg with ``lerp``; this computes ``alpha*ga + (1-alpha)*g`` (a few ulps
apart).
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (RMSPROP_<NAME>).
SLOTS = ("GS", "PS", "L2", "ALPHA", "OMA", "EPS", "LR", "MOM", "CEN", "USEMOM")
GS, PS, L2, ALPHA, OMA, EPS, LR, MOM, CEN, USEMOM = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    alpha = hp["alpha"]
    return (-1.0 if hp["maximize"] else 1.0, 1.0, hp["weight_decay"], alpha, 1.0 - alpha,
            hp["eps"], hp["lr"], hp["momentum"], 1.0 if hp["centered"] else 0.0,
            1.0 if hp["momentum"] > 0 else 0.0), None


def _update(p, g, sq, ga, buf, k):
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    sq_new = k[ALPHA] * sq + k[OMA] * (g * g)
    if ga is not None and k[CEN] != 0:
        ga_new = k[ALPHA] * ga + k[OMA] * g
        avg = np.sqrt(sq_new - ga_new * ga_new)
    else:
        avg = np.sqrt(sq_new)
    avg = avg + k[EPS]
    q = g / avg
    if buf is not None:
        buf_new = k[MOM] * buf + q
        d = buf_new if k[USEMOM] != 0 else q
    else:
        d = q
    p_new = theta - k[LR] * d
    sq[...] = sq_new
    if ga is not None and k[CEN] != 0:
        ga[...] = ga_new
    if buf is not None and k[USEMOM] != 0:
        buf[...] = buf_new
    p[...] = p_new


def update_rmsprop(p, g, s, k):
    _update(p, g, s[0], None, None, k)


def update_rmsprop_centered(p, g, s, k):
    _update(p, g, s[0], s[1], None, k)


def update_rmsprop_momentum(p, g, s, k):
    _update(p, g, s[0], None, s[1], k)


def update_rmsprop_centered_momentum(p, g, s, k):
    _update(p, g, s[0], s[1], s[2], k)


def _kind_of(groups):
    centered = any(g["centered"] for g in groups)
    momentum = any(g["momentum"] > 0 for g in groups)
    return "rmsprop" + ("_centered" if centered else "") + ("_momentum" if momentum else "")


RMSPROP = Spec(
    name="RMSprop",
    kinds={"rmsprop": ("square_avg",),
           "rmsprop_centered": ("square_avg", "grad_avg"),
           "rmsprop_momentum": ("square_avg", "momentum_buffer"),
           "rmsprop_centered_momentum": ("square_avg", "grad_avg", "momentum_buffer")},
    hyper=(HP("lr", 1e-2, learning_rate), HP("alpha", 0.99, nonneg), HP("eps", 1e-8, nonneg),
           HP("weight_decay", 0.0, nonneg), HP("momentum", 0.0, nonneg),
           HP("centered", False, flag), HP("maximize", False, flag)),
    scalars=scalars, kind_of=_kind_of,
    reference={"rmsprop": update_rmsprop, "rmsprop_centered": update_rmsprop_centered,
               "rmsprop_momentum": update_rmsprop_momentum,
               "rmsprop_centered_momentum": update_rmsprop_centered_momentum}, slots=SLOTS,
    peer="torch.optim.RMSprop")
