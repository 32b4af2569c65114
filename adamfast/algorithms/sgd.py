"""SGD with momentum, dampening and Nesterov momentum, as ``torch.optim.SGD``.

Per element::

    g     = -grad if maximize else grad
    g     = g + weight_decay * theta
    if momentum != 0:
        buf = g                                   on the first momentum step (torch copies g)
        buf = momentum*buf + (1 - dampening)*g    afterwards
        g   = g + momentum*buf if nesterov else buf
    theta = theta - lr * g

Whether momentum has started is group state (``momentum_started``): torch
decides it per tensor by the momentum buffer being None, and all tensors of a
group start together.
"""

from __future__ import annotations


from ._spec import HP, Spec, flag, learning_rate, nonneg

# The scalar row's slots, named once (tests/test_family.py checks the constants
# below against it): the numba kernels import the constants, setup.py renders
# the Cython enum (SGD_<NAME>).
SLOTS = ("GS", "PS", "L2", "LR", "MOM", "OMD", "NES", "FIRST", "USEMOM")
GS, PS, L2, LR, MOM, OMD, NES, FIRST, USEMOM = range(len(SLOTS))


def scalars(t, hp, gstate):
    use = hp["momentum"] != 0
    first = use and not gstate["momentum_started"]
    row = (-1.0 if hp["maximize"] else 1.0, 1.0, hp["weight_decay"], hp["lr"], hp["momentum"],
           1.0 - hp["dampening"], 1.0 if hp["nesterov"] else 0.0, 1.0 if first else 0.0,
           1.0 if use else 0.0)
    return row, {"momentum_started": gstate["momentum_started"] or use}


def _update(p, g, buf, k):
    g = g * k[GS]
    theta = p * k[PS]
    if k[L2] != 0:
        g = g + k[L2] * theta
    d = g
    if buf is not None and k[USEMOM] != 0:
        buf_new = g if k[FIRST] != 0 else k[MOM] * buf + k[OMD] * g
        d = g + k[MOM] * buf_new if k[NES] != 0 else buf_new
    p_new = theta - k[LR] * d
    if buf is not None and k[USEMOM] != 0:
        buf[...] = buf_new
    p[...] = p_new


def update_sgd(p, g, s, k):
    """The reference for the compiled SGD element functions."""
    _update(p, g, None, k)


def update_sgd_momentum(p, g, s, k):
    _update(p, g, s[0], k)


def _check(hp, where):
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError(f"{where}nesterov=True requires momentum > 0 and dampening == 0 (as "
                         f"torch.optim.SGD), got momentum={hp['momentum']!r}, "
                         f"dampening={hp['dampening']!r}")


SGD = Spec(
    name="SGD",
    kinds={"sgd": (), "sgd_momentum": ("momentum_buffer",)},
    hyper=(HP("lr", 1e-3, learning_rate), HP("momentum", 0.0, nonneg),
           HP("dampening", 0.0, nonneg), HP("weight_decay", 0.0, nonneg),
           HP("nesterov", False, flag), HP("maximize", False, flag)),
    scalars=scalars,
    kind_of=lambda groups: "sgd_momentum" if any(g["momentum"] != 0 for g in groups) else "sgd",
    reference={"sgd": update_sgd, "sgd_momentum": update_sgd_momentum}, slots=SLOTS,
    check=_check, gstate={"momentum_started": False}, peer="torch.optim.SGD",
    gstate_from_step=lambda name, t: t > 1, torch_scalar_state=(), torch_sparse_grads=True)
