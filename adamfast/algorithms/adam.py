"""Adam and AdamW (Kingma & Ba, ICLR 2015, Algorithm 1; Loshchilov & Hutter).

The maths, per element, for step ``t`` (1-based)::

    g     = -grad if maximize else grad
    theta = theta * (1 - lr*weight_decay)      if decoupled_weight_decay (AdamW)
    g     = g + weight_decay * theta           otherwise (L2, torch.optim.Adam)
    m     = beta1*m + (1 - beta1)*g
    v     = beta2*v + (1 - beta2)*g*g
    vmax  = max(vmax, v); v := vmax            amsgrad (NaN-propagating max); a group
                                               with amsgrad off leaves vmax alone
    m_hat = m / (1 - beta1^t)
            or, nesterov=True (optax.adam(nesterov=True)):
            beta1*m/(1 - beta1^(t+1)) + (1 - beta1)*g/(1 - beta1^t)
    v_hat = v / (1 - beta2^t)
    theta = theta - lr * m_hat / (sqrt(v_hat + eps_root) + eps)

The conventions, and which framework each reproduces:

* default: eps after the square root of the bias-corrected v (the paper's
  Algorithm 1, torch.optim.Adam, optax.adam);
* ``eps_root``: added inside the square root to the bias-corrected v (optax);
* ``eps_hat=True``: the paper's section-2 form, eps added to the
  *uncorrected* sqrt(v) and the corrections folded into the step size,
  ``lr_t = lr*sqrt(1-beta2^t)/(1-beta1^t); theta -= lr_t*m/(sqrt(v) + eps)``
  (TensorFlow/Keras Adam, scikit-learn's MLP);
* ``bias_correction=False``: no corrections at all, m_hat = m and v_hat = v
  (DeepSpeed's ``bias_correction=False``);
* ``nesterov=True``: Nesterov momentum as optax.adam(nesterov=True) (Dozat's
  "NAdam" without a momentum schedule; torch's NAdam is :mod:`.nadam`).

In the kernels' scalars the last line is
``theta - step_size * (num / (sqrt(v*a + r)*b + eps))`` with
``num = c1*m + c2*g`` (``c1 = 1, c2 = 0`` without Nesterov): by default ``step_size = lr/(1-beta1^t)``,
``a = 1, r = 0, b = 1/sqrt(1-beta2^t)``, which equals the formula above
since ``sqrt(v_hat) = sqrt(v)/sqrt(1-beta2^t)``; with ``eps_root``
``a = 1/(1-beta2^t), r = eps_root, b = 1``.  ``v*1 + 0`` and ``1*m + 0*g``
are exact for finite values (the one difference from the plain formula is
the sign of a zero update), so the default path rounds as the plain formula.  torch divides by
``sqrt(1-beta2^t)`` where this multiplies by its inverse and updates m with
``lerp``, so the two agree to a few ulps.
"""

from __future__ import annotations

import math

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg, pair, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (ADAM_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "OMB2", "STEP", "A", "R", "B", "EPS", "NEST", "C1",
    "C2", "AMS")
GS, PS, L2, B1, OMB1, B2, OMB2, STEP, A, R, B, EPS, NEST, C1, C2, AMS = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    lr = hp["lr"]
    beta1, beta2 = hp["betas"]
    wd = hp["weight_decay"]
    decoupled = hp["decoupled_weight_decay"]
    if hp["bias_correction"]:
        bc1 = 1.0 - beta1 ** t
        bc2 = 1.0 - beta2 ** t
    else:
        bc1 = bc2 = 1.0
    root = hp["eps_root"]
    if hp["eps_hat"]:
        base, a, b = lr * math.sqrt(bc2), 1.0, 1.0
    elif root != 0.0:
        base, a, b = lr, 1.0 / bc2, 1.0
    else:
        base, a, b = lr, 1.0, 1.0 / math.sqrt(bc2)
    if hp["nesterov"]:
        # The first-moment corrections live in c1 and c2, not in the step size.
        bc1_next = 1.0 - beta1 ** (t + 1) if hp["bias_correction"] else 1.0
        nest, c1, c2, step_size = 1.0, beta1 / bc1_next, (1.0 - beta1) / bc1, base
    else:
        nest, c1, c2, step_size = 0.0, 1.0, 0.0, base / bc1
    row = (-1.0 if hp["maximize"] else 1.0,
           1.0 - lr * wd if decoupled else 1.0,
           0.0 if decoupled else wd,
           beta1, 1.0 - beta1, beta2, 1.0 - beta2,
           step_size, a, root, b, hp["eps"], nest, c1, c2,
           1.0 if hp["amsgrad"] else 0.0)
    return row, None


def _update(p, g, m, v, vmax, k, amsgrad_kind):
    """The reference for every compiled Adam element function."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    m_new = k[B1] * m + k[OMB1] * g
    v_new = k[B2] * v + k[OMB2] * (g * g)
    vv = v_new
    ams = amsgrad_kind and k[AMS] != 0
    if ams:
        vv = np.where((vmax != vmax) | (vmax >= v_new), vmax, v_new)  # np.maximum semantics
    denom = np.sqrt(vv * k[A] + k[R]) * k[B] + k[EPS]
    num = k[C1] * m_new + k[C2] * g
    p_new = theta - k[STEP] * (num / denom)
    # Everything is computed; only now write (a failure above writes nothing).
    m[...] = m_new
    v[...] = v_new
    # A group with amsgrad off leaves its running max alone, as torch.optim.Adam does
    # (frozen, and used again when amsgrad is switched back on), whatever the kind.
    if ams:
        vmax[...] = vv
    p[...] = p_new


def update_adam(p, g, s, k):
    _update(p, g, s[0], s[1], None, k, False)


def update_adam_amsgrad(p, g, s, k):
    _update(p, g, s[0], s[1], s[2], k, True)


def _kind_of(groups):
    return "adam_amsgrad" if any(g["amsgrad"] for g in groups) else "adam"


_HYPER = (
    HP("lr", 1e-3, learning_rate, "learning rate, or a schedule (a callable of the step)"),
    HP("betas", (0.9, 0.999), pair(unit_open), "decay rates of the moments"),
    HP("eps", 1e-8, nonneg, "added to the denominator"),
    HP("weight_decay", 0.0, nonneg, "L2 penalty, or decoupled decay"),
    HP("amsgrad", False, flag, "use the running maximum of v"),
    HP("maximize", False, flag, "maximize the objective"),
    HP("decoupled_weight_decay", False, flag, "AdamW's decoupled decay"),
    HP("eps_hat", False, flag, "the paper's epsilon-hat form (TensorFlow/Keras)"),
    HP("eps_root", 0.0, nonneg, "added inside the square root (optax)"),
    HP("bias_correction", True, flag, "apply the bias corrections (DeepSpeed)"),
    HP("nesterov", False, flag, "Nesterov momentum (optax.adam(nesterov=True))"),
)

_KINDS = {"adam": ("exp_avg", "exp_avg_sq"),
          "adam_amsgrad": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
_REFERENCE = {"adam": update_adam, "adam_amsgrad": update_adam_amsgrad}

# What the peers' classes do and adamfast.torch reproduces, and what adamfast adds
# (the extra keywords; the hand-written adam_step of adamfast.functional).
_TORCH = dict(torch_extra_keywords=("eps_hat", "eps_root", "bias_correction", "nesterov"),
              torch_betas_alike=True, functional_step="adam_step")

def _c_step(backend, params, grads, states, hp):
    """The whole step in C (the backend's adam_call: adam_step_fast's step, whose
    scalars are the C version of :func:`scalars`, bit for bit), or None where the
    backend has none."""
    make = backend.adam_call
    if make is None:
        return None
    max_sq = states[2] if len(states) == 3 else None  # adam_amsgrad's third buffer
    beta1, beta2 = hp["betas"]
    return make(params, grads, states[0], states[1], hp["lr"], beta1, beta2, hp["eps"],
                hp["weight_decay"], hp["decoupled_weight_decay"], hp["amsgrad"], max_sq,
                hp["maximize"], hp["eps_hat"], hp["eps_root"], hp["bias_correction"],
                hp["nesterov"])


ADAM = Spec(name="Adam", kinds=_KINDS, hyper=_HYPER, scalars=scalars, kind_of=_kind_of,
            reference=_REFERENCE, slots=SLOTS, peer="torch.optim.Adam", c_step=_c_step,
            **_TORCH)

_HYPER_W = tuple(HP(h.name, 1e-2, h.check, h.doc) if h.name == "weight_decay" else h
                 for h in _HYPER if h.name != "decoupled_weight_decay")
ADAMW = Spec(name="AdamW", kinds=_KINDS, hyper=_HYPER_W, scalars=scalars, kind_of=_kind_of,
             reference=_REFERENCE, slots=SLOTS, peer="torch.optim.AdamW",
             fixed={"decoupled_weight_decay": True}, c_step=_c_step, **_TORCH)
