"""Constants and param checks shared by the modules of :mod:`adamfast.torch`."""

from __future__ import annotations

import numpy as np
import torch

from ..algorithms import ALGORITHMS

_NP = {torch.float32: np.float32, torch.float64: np.float64}
_GUARDED = {"max_grad_norm": None, "skip_nonfinite": False, "ema_decay": None}
_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_PARAM_ARGS = ("params", "param_names")
_CHECK = 32  # params whose data pointer each step checks, in rotation (see _step.collect)
# The registry's names of torch classes with these behaviours, each declared by its
# algorithm's spec (adamfast/algorithms/_spec.py says what each one means).
_SPARSE = tuple(n for n, s in ALGORITHMS.items() if s.torch_sparse_grads)
_STATE_AT_CONSTRUCTION = tuple(n for n, s in ALGORITHMS.items() if s.torch_state_at_construction)
_BETAS_ALIKE = tuple(n for n, s in ALGORITHMS.items() if s.torch_betas_alike)


def _scalar_dtype():
    """torch's dtype for scalar state (``step``, ``mu_product``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _describe(p):
    return f"tensor(shape={tuple(p.shape)}, dtype={p.dtype}, device={p.device})"


def _refusal(p):
    """Why adamfast.torch cannot update ``p`` in place, or None."""
    if type(p).__name__ == "DTensor" or hasattr(p, "_local_tensor"):
        return ("is a DTensor: adamfast.torch updates plain CPU tensors (step the local shards "
                "with a plain-tensor optimizer instead)")
    if isinstance(p, torch.nn.parameter.UninitializedParameter):
        return "is an UninitializedParameter: run the lazy module once before building the optimizer"
    if p.device.type != "cpu":
        return (f"is on {p.device}: adamfast.torch updates CPU tensors only (use torch.optim "
                f"with fused=True on accelerators)")
    if p.layout != torch.strided:
        return f"has layout {p.layout}: sparse tensors are not supported"
    if p.is_complex():
        return "is complex: complex params are not supported"
    if p.dtype in (torch.float16, torch.bfloat16):
        return (f"has dtype {p.dtype}: float16/bfloat16 params come with the precision issue; "
                f"use float32 or float64")
    if p.dtype not in _NP:
        return f"has dtype {p.dtype}: only float32 and float64 params are supported"
    if not p.is_contiguous():
        return ("is not contiguous: adamfast.torch refuses it rather than update a contiguous "
                "copy (the update would be lost); make the module's parameter contiguous first")
    return None
