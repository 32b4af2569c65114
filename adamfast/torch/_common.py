"""Constants and param checks shared by the modules of :mod:`adamfast.torch`."""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..algorithms import ALGORITHMS

_NP = {torch.float32: np.float32, torch.float64: np.float64}
_GUARDED = {"max_grad_norm": None, "skip_nonfinite": False, "ema_decay": None}
_TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_PARAM_ARGS = ("params", "param_names")
# Params, and gradient views, whose data pointer each step checks in rotation,
# besides the count of their storage's users (PtrWatch).
_CHECK = 8
# The registry's names of torch classes with these behaviours, each declared by its
# algorithm's spec (adamfast/algorithms/_spec.py says what each one means).
_SPARSE = tuple(n for n, s in ALGORITHMS.items() if s.torch_sparse_grads)
_STATE_AT_CONSTRUCTION = tuple(n for n, s in ALGORITHMS.items() if s.torch_state_at_construction)
_BETAS_ALIKE = tuple(n for n, s in ALGORITHMS.items() if s.torch_betas_alike)


# A StorageImpl's count of users (the tensors on its memory), or None where this
# torch has no such call: then every bound view's pointer is compared at every step.
_storage_uses = getattr(torch._C, "_storage_Use_Count", None)


_data_ptr = torch.Tensor.data_ptr


class PtrWatch:
    """Tensors on one storage, laid out at known data pointers: which of them point
    elsewhere now (their ``.data`` rebound).

    While the storage's count of users is the one last seen with every tensor on
    it, none was rebound but for a rebinding that keeps the old memory alive (a
    new tensor on it meanwhile, as ``old = p.data; p.data = new``), which _CHECK
    tensors per call, in rotation, find.  With _CHECK tensors or fewer, or when
    the count moved, all are compared: data_ptr() costs as much as the rest of
    the per-param work."""

    __slots__ = ("store", "uses", "at")

    def __init__(self, store):
        self.store = store  # the StorageImpl's address
        self.uses = None    # its count of users when every tensor was last seen on it
        self.at = 0         # where the rotation resumes

    def moved(self, objs, ptrs):
        """The positions in ``objs`` whose data pointer is no longer in ``ptrs``
        (empty when none)."""
        n = len(objs)
        if n > _CHECK and self.uses is not None and _storage_uses(self.store) == self.uses:
            lo = self.at
            self.at = (lo + _CHECK) % n
            if list(map(_data_ptr, objs[lo:lo + _CHECK])) == ptrs[lo:lo + _CHECK]:
                return ()
        elif list(map(_data_ptr, objs)) == ptrs:
            self.seen(n)
            return ()
        return [k for k, (o, ptr) in enumerate(zip(objs, ptrs)) if o.data_ptr() != ptr]

    def seen(self, n):
        """Every one of the ``n`` tensors is on the storage again: its count now."""
        if n > _CHECK and _storage_uses is not None:
            self.uses = _storage_uses(self.store)


def _holders(g):
    """(Python references, users of its memory) of the tensor ``g``, called with
    ``g`` a local variable of the caller; None where they cannot be counted: no
    such call in this torch, or memory torch does not own alone (a NumPy array's,
    not resizable; shared with other processes)."""
    if _storage_uses is None:
        return None
    st = g.untyped_storage()
    if not st.resizable() or st.is_shared():
        return None
    return sys.getrefcount(g), _storage_uses(st._cdata)


def _counts_of_a_grad_held_by_its_param_only():
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.zeros(1)
    g = p.grad
    return _holders(g)


# What _holders gives for a grad that nothing but its param holds (a fresh grad of
# backward, or one assigned and dropped): only such a grad may be replaced by the
# flat buffer's view, since nobody could see the change.  A grad the user keeps,
# or whose memory another tensor shares, stays p.grad and is copied at each step.
_ALONE = _counts_of_a_grad_held_by_its_param_only()


def _alone(holders):
    return holders is not None and holders[0] <= _ALONE[0] and holders[1] <= _ALONE[1]


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
    if p.is_shared():
        return ("is in shared memory (share_memory(), Hogwild): adamfast.torch moves params "
                "into its own flat buffer, and the shared tensor would no longer be updated; "
                "use torch.optim for shared params")
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
