"""Adagrad (Duchi, Hazan & Singer, JMLR 2011), as ``torch.optim.Adagrad``.

Per element, for step ``t``::

    g     = -grad if maximize else grad
    g     = g + weight_decay * theta
    sum   = sum + g*g                    (starts at initial_accumulator_value)
    clr   = lr / (1 + (t - 1)*lr_decay)  (per group, float64)
    theta = theta - clr * g / (sqrt(sum) + eps)

The accumulator never decreases (g*g >= 0).

A sparse gradient (``adamfast.torch``, as torch's sparse path) is the dense
update with ``g = 0`` where it has no entry: there ``sum`` is unchanged and
``theta - clr * 0 / (sqrt(sum) + eps)`` is ``theta`` exactly, as long as
``sqrt(sum) + eps > 0``.  With ``eps = 0`` and ``sum = 0`` that is 0/0, where
torch leaves the entry alone, so ``adamfast.torch`` refuses a sparse gradient
with ``eps = 0``; torch refuses ``weight_decay`` with one (it would make
every entry's gradient nonzero).
"""

from __future__ import annotations

import numpy as np

from ._spec import HP, Spec, flag, learning_rate, nonneg

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (ADAGRAD_<NAME>).
SLOTS = ("GS", "PS", "L2", "EPS", "CLR")
GS, PS, L2, EPS, CLR = range(len(SLOTS))


def scalars(t, hp, gstate=None):
    return (-1.0 if hp["maximize"] else 1.0, 1.0, hp["weight_decay"], hp["eps"],
            hp["lr"] / (1.0 + (t - 1) * hp["lr_decay"])), None


def update_adagrad(p, g, s, k):
    """The reference for the compiled Adagrad element functions."""
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    acc = s[0] + g * g
    p_new = theta - k[CLR] * (g / (np.sqrt(acc) + k[EPS]))
    s[0][...] = acc
    p[...] = p_new


def _check_sparse(hp, where):
    """eps=0 with a sparse gradient: the dense kernel would give 0/0 where the sum is
    still 0 and the gradient has no entry, where torch's sparse path leaves the
    param alone."""
    if hp["eps"] == 0:
        raise ValueError(f"Adagrad with eps=0 cannot take a sparse gradient ({where} is "
                         f"sparse): an entry it does not touch would become NaN; use "
                         f"eps > 0 (the default is 1e-10)")


ADAGRAD = Spec(
    name="Adagrad",
    kinds={"adagrad": ("sum",)},
    hyper=(HP("lr", 1e-2, learning_rate), HP("lr_decay", 0.0, nonneg),
           HP("weight_decay", 0.0, nonneg), HP("initial_accumulator_value", 0.0, nonneg),
           HP("eps", 1e-10, nonneg), HP("maximize", False, flag)),
    scalars=scalars, kind_of=lambda groups: "adagrad",
    reference={"adagrad": update_adagrad}, slots=SLOTS,
    state_init=lambda name, hp: hp["initial_accumulator_value"],
    peer="torch.optim.Adagrad",
    # torch's Adagrad takes sparse gradients and creates its state in __init__.
    torch_sparse_grads=True, torch_sparse_check=_check_sparse,
    torch_state_at_construction=True)
