"""The guarded step: gradient unscaling, global-norm clipping, the non-finite skip.

A guarded step is at most two passes over memory:

1. only when clipping or skipping is asked for, a read-only pass over the
   gradients (4 bytes per float32 param) computing the sum of squares in
   float64 per fixed chunk, plus a non-finite flag (``sumsq_kernel`` of
   each backend; the order is defined once in ``adamfast._numpy_backend``);
2. the fused update, with the loss scale and the clip coefficient folded
   into the gradient multiplier that every kernel already applies (slot 0 of
   each scalar row), so the gradients are never rewritten in memory.  The
   parameter EMA is one more stream of that same pass.

Without clipping or skipping the step is exactly the single pass it always
was.  The semantics are ``torch.nn.utils.clip_grad_norm_``'s:
``coef = max_grad_norm / (total_norm + 1e-6)`` clamped to at most 1, with
the norm taken over the unscaled gradients; a NaN norm gives a NaN
coefficient, which propagates as in torch.

``skip_nonfinite`` judges the unscaled gradients ``grad * (1/grad_scale)``
as the kernel forms them: a finite gradient that unscaling overflows makes
the step non-finite.  (torch's CPU ``unscale_`` checks the scaled values, so
it lets such a step through with Inf gradients.)  A ``grad_scale`` whose
reciprocal does not fit in the gradients' dtype is refused before anything
is written.
"""

from __future__ import annotations

import math

import numpy as np

from . import _dispatch, _engine
from .algorithms._spec import NSLOT, _ranged, describe, flag, nonneg, unit_closed

_positive = _ranged(0.0, math.inf, lo_closed=False,
                    text="a finite number > 0 (the loss scale the gradients are divided by)")

__all__ = ["StepResult", "global_norm"]


class StepResult:
    """What a step did: ``grad_norm`` (the global L2 norm of the unscaled
    gradients before clipping, or None when neither clipping nor skipping
    asked for it), ``skipped`` (True when a non-finite gradient made
    ``skip_nonfinite`` skip the step: nothing changed), and, for the
    functional steps of algorithms that carry group state (NAdam),
    ``group_state``."""

    __slots__ = ("grad_norm", "skipped", "group_state")

    def __init__(self, grad_norm=None, skipped=False, group_state=None):
        self.grad_norm = grad_norm
        self.skipped = skipped
        self.group_state = group_state

    def __repr__(self):
        extra = f", group_state={self.group_state!r}" if self.group_state is not None else ""
        return f"StepResult(grad_norm={self.grad_norm!r}, skipped={self.skipped!r}{extra})"

    def __eq__(self, other):
        return isinstance(other, StepResult) and (self.grad_norm, self.skipped,
                                                   self.group_state) == (
            other.grad_norm, other.skipped, other.group_state)


_FMAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float32, np.float64)}

PLAIN = StepResult()  # the result of an unguarded step (immutable in use: never modified)


def sumsq(backend, flat, num_threads, inv=1.0):
    """(sum of squares in float64, all finite) of one 1-D buffer, in the defined order.

    "All finite" is about the unscaled gradients ``flat * inv`` as the kernel
    forms them (in the buffer's dtype), as torch's ``unscale_`` judges
    found_inf: unscaling can overflow where ``flat`` is finite.
    """
    n = flat.size
    out = np.empty((-(-n // _engine.CHUNK), 2))
    backend.sumsq(flat, out, num_threads)
    total = 0.0
    for s in out[:, 0].tolist():  # chunk order, whatever the thread count
        total += s
    finite = not out[:, 1].any()
    if finite and inv > 1.0 and n:
        # No element exceeds the norm, so only a norm this close to the dtype's
        # range can hide an element that overflows: then (rarely) find the
        # largest magnitude and unscale it as the kernel would.
        big = _FMAX[flat.dtype] / inv
        if not math.sqrt(total) < 0.5 * big:
            dt = flat.dtype.type
            with np.errstate(over="ignore"):
                finite = bool(np.isfinite(dt(np.abs(flat).max()) * dt(inv)))
    return total, finite


def global_norm(arrays, backend="auto"):
    """The global L2 norm of ``arrays`` (an array or a sequence), as the guarded step
    computes it: float64 sums of squares per fixed chunk of each array, added in
    order, so the result is bit-identical for any thread count and backend."""
    b = _dispatch.get_backend(backend)
    arrays = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
    total = 0.0
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
            raise TypeError(f"arrays[{i}] must be a numpy.ndarray of float32 or float64, got "
                            f"{describe(a)}")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"arrays[{i}] must be a plain ndarray: a masked array's mask would "
                            f"be ignored")
        # Only read: a contiguous copy of a strided array is harmless here.
        flat = np.ascontiguousarray(a.view(np.ndarray)).reshape(-1)
        if not flat.dtype.isnative:
            flat = flat.astype(flat.dtype.newbyteorder("="))
        s, _ = sumsq(b, flat, _dispatch.get_num_threads())
        total += s
    return math.sqrt(total)


def check_options(max_grad_norm, skip_nonfinite, ema_decay):
    """Validate the guarded step's keywords (at construction, or per functional call)."""
    if max_grad_norm is not None:
        max_grad_norm = nonneg("max_grad_norm", max_grad_norm)
    skip_nonfinite = flag("skip_nonfinite", skip_nonfinite)
    if ema_decay is not None:
        ema_decay = unit_closed("ema_decay", ema_decay)
    return max_grad_norm, skip_nonfinite, ema_decay


def check_scale(grad_scale):
    if grad_scale is None:
        return None
    if isinstance(grad_scale, np.ndarray) and grad_scale.size == 1:
        grad_scale = grad_scale.item()
    return _positive("grad_scale", grad_scale)


def unscale(grad_scale, dtypes):
    """The gradient multiplier 1/grad_scale, refused when it overflows one of
    ``dtypes`` (the gradients' dtypes): every unscaled gradient would be Inf,
    or NaN where it is zero, so such a scale is a mistake, not a step."""
    if grad_scale is None:
        return 1.0
    inv = 1.0 / grad_scale
    for dt in dtypes:
        if not inv <= _FMAX[np.dtype(dt)]:
            raise ValueError(f"grad_scale must be at least {1.0 / _FMAX[np.dtype(dt)]:.4g} for "
                             f"{np.dtype(dt)} gradients (its reciprocal, the unscaling factor, "
                             f"must fit in {np.dtype(dt)}), got {grad_scale!r}")
    return inv


def pass_threads(backend, size, num_threads):
    """The thread count for both passes of a guarded step over ``size`` gradients.

    On adamfast's pool (both compiled backends): from the pool's cold cut-off
    up, wake the workers now, so both passes start without a wake-up; below
    it, if the workers sleep, run both passes on the caller, which is faster
    than a worker arriving late (kernels/af_pool.h's AF_COLD_MIN_CHUNKS).
    Left to the pool, the update right after the norm pass would count as a
    loop of calls and wake them.
    """
    module = backend.module
    wake = getattr(module, "wake_pool", None)
    if wake is None or num_threads <= 1:
        return num_threads
    if size >= module.POOL_COLD_MIN:
        wake(num_threads)
        return num_threads
    return num_threads if module.pool_awake() else 1


def decide(total, finite, inv, max_grad_norm, skip_nonfinite, clip="torch"):
    """From the scaled gradients' sum of squares and the unscaled ones' finiteness, the guard's
    (multiplier or None if skipped, grad_norm of the unscaled grads, skipped): the clip
    rule ``clip`` names (the spec's), stated once:

    * ``"torch"``: torch.nn.utils.clip_grad_norm_'s, min(max_grad_norm / (norm + 1e-6), 1);
    * ``"timm"``: timm's Lamb's global clip, 1 / max(norm / max_grad_norm, 1) (timm divides
      the gradients by max(norm / max_grad_norm, 1); here it is folded into the multiplier).
    """
    norm = math.sqrt(total) * inv
    if skip_nonfinite and not finite:
        return None, norm, True
    if max_grad_norm is None:
        return inv, norm, False
    if clip == "timm":
        # torch's clamp_(min=1) keeps a NaN: so does this (nan < 1.0 is False).
        ratio = norm / max_grad_norm if max_grad_norm != 0 else (
            math.inf if norm > 0 else math.nan)
        if ratio < 1.0:
            ratio = 1.0
        return inv / ratio, norm, False
    # min(nan, 1.0) is nan: a NaN norm propagates, as torch.clamp does.
    coef = min(max_grad_norm / (norm + 1e-6), 1.0)
    return inv * coef, norm, False


def fold(row, mult, ema_decay):
    """A spec's row with the gradient multiplier folded into slot 0 and the EMA slots set."""
    if mult != 1.0:
        row = (row[0] * mult,) + tuple(row[1:])
    if ema_decay is not None:
        row = tuple(row) + (0.0,) * (NSLOT - 2 - len(row)) + (ema_decay, 1.0 - ema_decay)
    return row
