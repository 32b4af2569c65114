"""The classes, made from the registry: torch's signature plus adamfast's options."""

from __future__ import annotations

import inspect

import torch

from ..algorithms import ALGORITHMS
from ._common import _GUARDED
from ._optimizer import DEFAULTS_CLIP, Optimizer

def _signature(spec, torch_cls):
    P = inspect.Parameter
    if torch_cls is not None:
        torch_sig = inspect.signature(torch_cls.__init__)
        params = [p.replace(annotation=P.empty) for n, p in torch_sig.parameters.items()
                  if n != "self"]
        names = {p.name for p in params}
        for h in spec.hyper:
            if h.name not in names and h.name not in spec.torch_extra_keywords:
                raise RuntimeError(f"{spec.name}: torch's signature has no {h.name!r}")
    else:
        params = [P("params", P.POSITIONAL_OR_KEYWORD)] + [
            P(h.name, P.POSITIONAL_OR_KEYWORD, default=h.default) for h in spec.hyper] + [
            P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, d in spec.torch_only]
    extra = []
    defaults = spec.defaults
    extra += [P(n, P.KEYWORD_ONLY, default=defaults[n]) for n in spec.torch_extra_keywords]
    # Lamb's max_grad_norm is its hyperparameter (timm's place), the guard's clip too.
    extra += [P(n, P.KEYWORD_ONLY, default=d) for n, d in _GUARDED.items()
              if n not in spec.defaults]
    extra += [P("backend", P.KEYWORD_ONLY, default="auto")]
    kinds = [p.kind for p in params]
    positional = [p for p in params if p.kind != P.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind == P.KEYWORD_ONLY]
    assert kinds == sorted(kinds)
    return inspect.Signature(positional + keyword + extra)


def _make(name):
    """The class of registry entry ``name``: everything comes from its spec."""
    spec = ALGORITHMS[name]
    peer = spec.peer.split(".")
    torch_name = peer[-1] if peer[:2] == ["torch", "optim"] else None
    torch_cls = getattr(torch.optim, torch_name) if torch_name else None
    sig = _signature(spec, torch_cls)
    doc = (f"{name} as ``{spec.peer}``, over flat buffers: one kernel call per dtype per step.\n\n"
           f"Signature: torch's (``{name}{sig}``).  The maths is in "
           f":mod:`{spec.reference[next(iter(spec.kinds))].__module__}`; the torch integration "
           f"(flat buffers, gradient binding, state_dict, GradScaler, threads) is described in "
           f":mod:`adamfast.torch`.")
    # adamfast's own hyperparameters (not in torch's signature): kept out of a
    # checkpoint's param_groups while they hold their defaults.
    torch_names = set(inspect.signature(torch_cls).parameters) if torch_cls else None
    extras = ({h.name: h.default for h in spec.hyper if h.name not in torch_names}
              if torch_names is not None else {})
    body = {
        "spec": spec, "_torch_class": torch_cls, "__signature__": sig,
        "__doc__": doc, "__module__": __package__, "_scalar_keys": spec.torch_scalar_state,
        "_extras": extras, "_hp_names": tuple(h.name for h in spec.hyper)}
    if "max_grad_norm" in spec.defaults:  # timm's Lamb: the clip is read from defaults
        body["_max_grad_norm"] = DEFAULTS_CLIP
    return type(name, (Optimizer,), body)
