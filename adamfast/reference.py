"""The NumPy reference: the one statement of adamfast's maths.

This module is the test oracle for every compiled kernel, the ``"numpy"``
backend and the fallback a user can always ask for.  It is written to be read.

The update
==========
One call performs step ``t`` (1-based) of Adam, Kingma & Ba, "Adam: A Method
for Stochastic Optimization", ICLR 2015, Algorithm 1, element by element::

    g_t   = -grad if maximize else grad            # maximize: ascend the objective
    g_t   = g_t + weight_decay * theta_{t-1}        # L2 weight decay (Adam, decoupled=False)
    theta = theta_{t-1} * (1 - lr * weight_decay)   # decoupled weight decay (AdamW, decoupled=True)
    m_t   = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t   = beta2 * v_{t-1} + (1 - beta2) * g_t**2
    vmax  = max(vmax_{t-1}, v_t)                    # AMSGrad only; then v_t := vmax below
    m_hat = m_t / (1 - beta1**t)
    v_hat = v_t / (1 - beta2**t)
    theta_t = theta - lr * m_hat / (sqrt(v_hat) + eps)

Conventions, stated once for the whole package:

* ``eps`` is added after the square root of the bias-corrected second moment,
  as in the paper, PyTorch and optax.
* L2 weight decay adds ``weight_decay * theta`` to the gradient before the
  moments see it (``torch.optim.Adam(weight_decay=...)``).  Decoupled weight
  decay multiplies ``theta`` by ``1 - lr * weight_decay`` before the update and
  leaves the moments alone (``torch.optim.AdamW``).  Exactly one of the two
  applies, chosen by ``decoupled``.
* AMSGrad keeps the running element-wise maximum of ``v_t`` in
  ``max_exp_avg_sq`` and bias-corrects that maximum
  (``torch.optim.Adam(amsgrad=True)``).  The maximum propagates NaN like
  ``np.maximum``.
* ``maximize`` negates the gradient; weight decay still pulls towards zero.
* NaN or Inf in ``grads`` are not checked for: they propagate into the moments
  and the parameters exactly as in PyTorch.  Nothing crashes and nothing is
  skipped; detecting non-finite gradients (loss scaling) is the caller's job.
* The paper's decayed rate ``lr / sqrt(t)`` is a schedule: pass the decayed
  value as ``lr`` at each step.

How the scalars reach the kernels
=================================
The Python layer (:func:`adamfast.adam_step`) turns the hyperparameters into
float64 scalars once per step with :func:`step_scalars`, and every backend,
this one included, receives the same buffers and the same scalars
(the kernel contract of :mod:`adamfast._dispatch`).  In those scalars the last
line above reads::

    theta_t = theta - step_size * (m_t / (sqrt(v_t) * inv_bc2_sqrt + eps))
    step_size = lr / (1 - beta1**t),   inv_bc2_sqrt = 1 / sqrt(1 - beta2**t)

which is the same expression, since ``sqrt(v_hat) = sqrt(v_t) / sqrt(1 - beta2**t)``.
PyTorch evaluates nearly the same way (it divides by ``sqrt(1 - beta2**t)``
where this multiplies by the inverse, and updates ``m_t`` with ``lerp``), so
the two agree to a few ulps.  A float32 step computes
in float32 with each scalar rounded to float32 once, as NumPy does for a
Python float meeting a float32 array.  Every compiled kernel performs the same
operations in the same order, so in practice it agrees with this reference
to the last bit; the tests still compare with per-dtype tolerances.
"""

from __future__ import annotations

import math
import numpy as np

__all__ = ["step_scalars", "adam_kernel"]


def step_scalars(step, lr, beta1, beta2, eps, weight_decay, decoupled, maximize):
    """Compute the per-step scalars in float64 (Python floats), once per step.

    Returns, in kernel-argument order: ``beta1, 1 - beta1, beta2, 1 - beta2,
    eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt`` where ``l2`` is
    ``weight_decay`` for L2 decay (else 0), ``param_scale`` is
    ``1 - lr * weight_decay`` for decoupled decay (else 1), ``grad_sign`` is
    -1 when maximizing (else 1), ``step_size = lr / (1 - beta1**step)`` and
    ``inv_bc2_sqrt = 1 / sqrt(1 - beta2**step)``.  Arguments are assumed
    validated (see :mod:`adamfast._validate`).
    """
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    # A plain tuple: this runs on every call, and a NamedTuple costs ~0.5 us.
    return (
        beta1,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        eps,
        0.0 if decoupled else weight_decay,
        1.0 - lr * weight_decay if decoupled else 1.0,
        -1.0 if maximize else 1.0,
        lr / bias_correction1,
        1.0 / math.sqrt(bias_correction2),
    )



def adam_kernel(
    params,  # OUT: theta, updated in place
    grads,  # IN: g, never written
    exp_avg,  # OUT: m, updated in place
    exp_avg_sq,  # OUT: v, updated in place
    max_exp_avg_sq,  # OUT: running max of v (AMSGrad); length 0 otherwise
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    l2,
    param_scale,
    grad_sign,
    step_size,
    inv_bc2_sqrt,
    amsgrad,
    num_threads,
):
    """One Adam step with NumPy: the reference twin of every compiled kernel.

    Buffers are 1-D, C-contiguous, of one dtype; scalars come from
    :func:`step_scalars`.  ``num_threads`` is accepted for the common
    signature and ignored.  See the module docstring for the maths.
    """
    dtype = params.dtype.type
    # Round each float64 scalar to the buffer dtype once, as the kernels do.
    beta1, one_minus_beta1 = dtype(beta1), dtype(one_minus_beta1)
    beta2, one_minus_beta2 = dtype(beta2), dtype(one_minus_beta2)
    eps, l2, param_scale = dtype(eps), dtype(l2), dtype(param_scale)
    grad_sign, step_size, inv_bc2_sqrt = dtype(grad_sign), dtype(step_size), dtype(inv_bc2_sqrt)

    # Non-finite values propagate silently, as in the compiled kernels and PyTorch.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        g = grads * grad_sign  # maximize
        theta = params * param_scale  # decoupled weight decay (AdamW); exact when 1
        if l2 != 0:
            g = g + l2 * theta  # L2 weight decay (Adam)
        exp_avg[...] = beta1 * exp_avg + one_minus_beta1 * g  # m_t
        exp_avg_sq[...] = beta2 * exp_avg_sq + one_minus_beta2 * (g * g)  # v_t
        v = exp_avg_sq
        if amsgrad:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            v = max_exp_avg_sq
        # sqrt(v_hat) + eps, with v_hat = v_t / (1 - beta2**t)
        denom = np.sqrt(v) * inv_bc2_sqrt + eps
        # theta_t = theta - lr * m_hat / (sqrt(v_hat) + eps), m_hat = m_t / (1 - beta1**t)
        params[...] = theta - step_size * (exp_avg / denom)
