"""LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT
in 76 minutes", 2019), as ``timm.optim.Lamb`` (NVIDIA's FusedLAMB variant).

For step ``t`` (1-based, counted per param group: in adamfast.torch, as in timm,
every ``step()`` call advances every group's count, whether or not its params
have gradients), per tensor (each array of
the NumPy API, each parameter of adamfast.torch), element by element::

    g      = grad / max(global_norm / max_grad_norm, 1)   the guard's clip (below)
    m      = beta1*m + beta3*g               exp_avg;   beta3 = 1 - beta1, or 1
                                             without grad_averaging
    v      = beta2*v + (1 - beta2)*g*g       exp_avg_sq
    theta  = theta*(1 - lr*weight_decay)     decoupled_decay only
    u      = (m/bc1) / (sqrt(v)/sqrt(bc2) + eps)
                                             bc = 1 - beta^t, or 1 without bias_correction;
                                             computed as m*(1/bc1) / (sqrt(v)*(1/sqrt(bc2)) + eps)
    u      = u + weight_decay*theta          L2 (not decoupled), weight_decay != 0 only
    r      = ||theta|| / ||u||               per tensor; 1 if either norm is 0 (or NaN),
                                             min(r, 1) with trust_clip; r = 1 unless
                                             weight_decay != 0 or always_adapt
    theta  = theta - lr*(u*r)

The norms are taken of theta after the decoupled decay and of u after the L2
term, as timm takes them.

The step is two passes over memory (adamfast._reduce): pass 1
(:func:`moments_lamb`) writes ``m`` and ``v`` and sums ``theta**2`` and
``u**2`` in float64 per chunk (the norm pass's lane order), the sums are added
per tensor and the ratio is computed in float64 in Python
(:func:`trust_ratio`), and pass 2 (:func:`update_lamb`, the kind's
``family_kernel`` element function) recomputes ``u`` from the new ``m``, ``v``
and ``theta`` and writes ``theta``.  With the clip's norm pass, a float32 step
moves 4 + 24 + 16 = 44 bytes per parameter.

``max_grad_norm`` (default 1.0, as timm) is the guarded step's clip, with
timm's formula: the gradient multiplier is ``1 / max(norm / max_grad_norm,
1)`` over the global L2 norm of every gradient of the optimizer (no 1e-6,
unlike torch's ``clip_grad_norm_``), folded into the kernels' gradient
multiplier: adamfast never writes the caller's gradients, where timm divides
``p.grad`` in place.  As timm, adamfast.torch.Lamb reads
``opt.defaults["max_grad_norm"]`` at each step (validated when it changes); a
param group's own ``max_grad_norm`` is kept in the group and not used.
``None`` switches clipping off.

timm's ``caution=True`` and ``corrected_weight_decay=True`` are refused (not
implemented).  timm's norms and ratio are computed in the tensors' dtype;
here in float64 (then rounded to the dtype once, as every scalar).  timm
divides by ``bc1`` and ``sqrt(bc2)``; the kernels multiply by their
reciprocals, computed in float64 (as adamfast's Adam does): one division and
one square root per element and pass, not three divisions, at most an ulp
from timm's each (tests/test_lamb.py measures the whole difference).
"""

from __future__ import annotations

import math

import numpy as np

from ._spec import HP, Reduction, Spec, flag, learning_rate, nonneg, pair, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (LAMB_<NAME>).  ADAPT and TCLIP are read only by
# trust_ratio; TRUST is set per tensor for pass 2.
SLOTS = ("GS", "PS", "L2", "B1", "B3", "B2", "OMB2", "IBC1", "IBC2S", "EPS", "WD", "LR", "TRUST",
         "ADAPT", "TCLIP")
GS, PS, L2, B1, B3, B2, OMB2, IBC1, IBC2S, EPS, WD, LR, TRUST, ADAPT, TCLIP = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    lr = hp["lr"]
    beta1, beta2 = hp["betas"]
    wd = hp["weight_decay"]
    decoupled = hp["decoupled_decay"]
    if hp["bias_correction"]:
        bc1, bc2s = 1.0 - beta1 ** t, math.sqrt(1.0 - beta2 ** t)
    else:
        bc1, bc2s = 1.0, 1.0
    row = (1.0,
           1.0 - lr * wd if decoupled and wd != 0 else 1.0,
           0.0,
           beta1, 1.0 - beta1 if hp["grad_averaging"] else 1.0, beta2, 1.0 - beta2,
           1.0 / bc1, 1.0 / bc2s, hp["eps"],
           0.0 if decoupled else wd,
           lr, 1.0,
           1.0 if wd != 0 or hp["always_adapt"] else 0.0,
           1.0 if hp["trust_clip"] else 0.0)
    return row, None


def _update(p, m, v, k):
    # The update direction u and theta, as both passes compute them.
    theta = p * k[PS]
    u = (m * k[IBC1]) / (np.sqrt(v) * k[IBC2S] + k[EPS])
    if k[WD] != 0:
        u = u + k[WD] * theta
    return theta, u


def moments_lamb(p, g, s, k):
    """Pass 1 (reference): write exp_avg and exp_avg_sq; return (theta, u), whose
    squares are summed per tensor.  Params are not written."""
    m, v = s
    g = g * k[GS]
    m_new = k[B1] * m + k[B3] * g
    v_new = k[B2] * v + k[OMB2] * (g * g)
    theta, u = _update(p, m_new, v_new, k)
    m[...] = m_new
    v[...] = v_new
    return theta, u


def update_lamb(p, g, s, k):
    """Pass 2 (reference), the kind's element function: theta - lr*(u*TRUST) from the
    state pass 1 wrote; the gradients are not read."""
    theta, u = _update(p, s[0], s[1], k)
    p[...] = theta - k[LR] * (u * k[TRUST])


def trust_ratio(sums, row):
    """The per-tensor scalar of pass 2, in float64: timm's trust ratio."""
    if not row[ADAPT]:
        return 1.0
    w, u = math.sqrt(sums[0]), math.sqrt(sums[1])
    # timm's nested torch.where: 1 unless both norms are > 0 (a NaN norm fails the test).
    r = w / u if (w > 0 and u > 0) else 1.0
    if row[TCLIP] and r > 1.0:  # torch.clamp(max=1): a NaN stays NaN
        r = 1.0
    return r


def _optional_clip(name, value):
    return None if value is None else nonneg(name, value)


def _refused(what):
    def check(name, value):
        if flag(name, value):
            raise ValueError(f"{name}=True ({what}) is not implemented by adamfast's Lamb; "
                             f"use {name}=False")
        return False
    return check


LAMB = Spec(
    name="Lamb",
    kinds={"lamb": ("exp_avg", "exp_avg_sq")},
    hyper=(HP("lr", 1e-3, learning_rate, "learning rate, or a schedule (a callable of the step)"),
           HP("bias_correction", True, flag, "divide the moments by 1 - beta^t"),
           HP("betas", (0.9, 0.999), pair(unit_open), "decay rates of the two moments"),
           HP("eps", 1e-6, nonneg, "added to the denominator"),
           HP("weight_decay", 0.01, nonneg, "L2 added to the update, or decoupled decay"),
           HP("grad_averaging", True, flag, "scale the gradient by 1 - beta1 in exp_avg"),
           HP("max_grad_norm", 1.0, _optional_clip,
              "timm's global clip, the guard's: grads / max(norm / max_grad_norm, 1); None: off"),
           HP("trust_clip", False, flag, "clamp the trust ratio at 1 (LAMBC)"),
           HP("always_adapt", False, flag, "apply the trust ratio when weight_decay is 0 too"),
           HP("decoupled_decay", False, flag, "decay theta by 1 - lr*weight_decay first"),
           HP("caution", False, _refused("timm's Cautious Optimizers mask"),
              "timm's caution mask: not implemented (False only)"),
           HP("corrected_weight_decay", False, _refused("timm's lr**2/max_lr decay scale"),
              "timm's corrected decay: not implemented (False only)")),
    scalars=scalars, kind_of=lambda groups: "lamb",
    reference={"lamb": update_lamb}, slots=SLOTS, peer="timm.optim.Lamb",
    reduce={"lamb": Reduction(sums=("param", "update"), slot="TRUST", scalar=trust_ratio,
                              moments=moments_lamb)},
    clip="timm", torch_scalar_state=(), torch_step_in_group=True,
    torch_only=(("foreach", None),))
