"""NAdam with torch's momentum schedule (Dozat 2016), as ``torch.optim.NAdam``.

Per element, for step ``t``, with ``psi = momentum_decay``::

    mu_t  = beta1 * (1 - 0.5 * 0.96^(t*psi))          (per group, in float64)
    mu_product_t = mu_product_{t-1} * mu_t            (group state, starts at 1)
    g     = -grad if maximize else grad
    theta = theta*(1 - lr*weight_decay)  if decoupled_weight_decay, else g += weight_decay*theta
    m     = beta1*m + (1 - beta1)*g
    v     = beta2*v + (1 - beta2)*g*g
    denom = sqrt(v / (1 - beta2^t)) + eps
    theta = theta - (lr*(1 - mu_t)/(1 - mu_product_t) * g
                     + lr*mu_{t+1}/(1 - mu_product_t*mu_{t+1}) * m) / denom

torch applies the last line as two ``addcdiv`` calls; one division here, so
the two agree to a few ulps.  torch keeps ``mu_product`` as a scalar tensor of
its default dtype (float32 unless ``torch.set_default_dtype(torch.float64)``);
adamfast keeps it in float64.
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, _ranged, flag, learning_rate, nonneg, pair, unit_open

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (NADAM_<NAME>).
SLOTS = ("GS", "PS", "L2", "B1", "OMB1", "B2", "OMB2", "IBC2", "EPS", "CG", "CM")
GS, PS, L2, B1, OMB1, B2, OMB2, IBC2, EPS, CG, CM = range(len(SLOTS))


def scalars(t, hp, gstate):
    lr = hp["lr"]
    beta1, beta2 = hp["betas"]
    wd = hp["weight_decay"]
    decoupled = hp["decoupled_weight_decay"]
    psi = hp["momentum_decay"]
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (t * psi)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1) * psi)))
    mu_product = gstate["mu_product"] * mu
    mu_product_next = mu_product * mu_next
    row = (-1.0 if hp["maximize"] else 1.0,
           1.0 - lr * wd if decoupled else 1.0,
           0.0 if decoupled else wd,
           beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 / (1.0 - beta2 ** t), hp["eps"],
           lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product_next))
    return row, {"mu_product": mu_product}


def update_nadam(p, g, s, k):
    """The reference for the compiled NAdam element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    m = k[B1] * s[0] + k[OMB1] * g
    v = k[B2] * s[1] + k[OMB2] * (g * g)
    denom = np.sqrt(v * k[IBC2]) + k[EPS]
    p_new = theta - (k[CG] * g + k[CM] * m) / denom
    s[0][...] = m
    s[1][...] = v
    p[...] = p_new


# Each mu_t is in [0, 1) (beta1 in [0, 1)), so their product is in [0, 1]; 0 is
# real: exactly 0 after step 1 with beta1 = 0, and the float64 product of
# factors below 1/2 (momentum_decay=0) underflows to 0 after about 900 steps.
check_mu_product = _ranged(0.0, 1.0, hi_closed=True, type_text=True,
                           text="a finite number in [0, 1] (the product of the factors mu_t, each "
                                "in [0, 1); 1.0 before the first step)")

NADAM = Spec(
    name="NAdam",
    kinds={"nadam": ("exp_avg", "exp_avg_sq")},
    hyper=(HP("lr", 2e-3, learning_rate), HP("betas", (0.9, 0.999), pair(unit_open)),
           HP("eps", 1e-8, nonneg), HP("weight_decay", 0.0, nonneg),
           HP("momentum_decay", 4e-3, nonneg), HP("decoupled_weight_decay", False, flag),
           HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "nadam",
    reference={"nadam": update_nadam}, slots=SLOTS, gstate={"mu_product": 1.0},
    gstate_checks={"mu_product": check_mu_product}, peer="torch.optim.NAdam",
    torch_scalar_state=("step", "mu_product"))
