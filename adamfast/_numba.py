"""Numba kernels: the ``"numba"`` backend.

Reference twin: :func:`adamfast.reference.adam_kernel`.  Every kernel here
performs the same operations in the same order on the same dtype, so it agrees
with the reference element by element.

This module is imported on the first use of the backend, never by
``import adamfast``: the explicit signatures below compile (or load from the
on-disk cache, ``cache=True``) at import time.

Why the code looks the way it does:

* Plain loops with explicit float32/float64 signatures and no ``fastmath``:
  precision changes are never silent, and without fastmath LLVM still
  vectorizes this loop because it has no reduction.
* ``error_model="numpy"``: numba's default Python error model checks every
  float division for a zero divisor to raise ZeroDivisionError, a branch per
  element that blocks vectorization.  IEEE semantics (inf/NaN) are what the
  reference and PyTorch give anyway.
* Scalars are typed as the buffer dtype in the signature, so the dispatcher
  rounds the float64 scalars from :func:`adamfast.reference.step_scalars` once
  per call and the loop is pure float32 (or float64) arithmetic.
* Two entry points: a serial one for small buffers, because launching the
  thread pool costs microseconds, and a ``parallel=True`` one that walks fixed
  chunks with ``prange``.  The update is element-wise, so the result does not
  depend on the thread count at all; fixed chunks keep the split static.
* AMSGrad is a separate loop rather than a branch per element, so neither loop
  carries a branch the vectorizer must if-convert around a memory access.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types

CHUNK = 16384
# Numba's parallel launch costs more than OpenMP's in the Cython module: with
# cold caches, one thread beat two below ~512K float32 params here (64K:
# 0.13 vs 0.18 ms; 256K: 0.28 vs 0.36 ms; 1M: 0.80 vs 0.72 ms).
PARALLEL_MIN = 1 << 19


def _signatures(*extra):
    """float32 and float64 signatures: five buffers (grads read-only), ten
    scalars of the buffer dtype, amsgrad, then ``extra``."""
    sigs = []
    for ft in (types.float32, types.float64):
        buf = types.Array(ft, 1, "C")
        ro = types.Array(ft, 1, "C", readonly=True)
        sigs.append(types.void(buf, ro, buf, buf, buf, *(ft,) * 10, types.boolean, *extra))
    return sigs


@njit(_signatures(types.intp, types.intp), cache=True, nogil=True, error_model="numpy")
def _adam_range(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt, amsgrad,
                lo, hi):
    # Updates elements [lo, hi) through slices: indexing the full arrays with a
    # signed loop counter makes numba emit wraparound handling that stops LLVM
    # from vectorizing, while a slice walked from 0 vectorizes.
    p_ = params[lo:hi]
    g_ = grads[lo:hi]
    m_ = exp_avg[lo:hi]
    v_ = exp_avg_sq[lo:hi]
    if amsgrad:
        vmax_ = max_exp_avg_sq[lo:hi]
        for i in range(hi - lo):
            g = g_[i] * grad_sign
            p = p_[i] * param_scale
            if l2 != 0:
                g = g + l2 * p
            m = beta1 * m_[i] + one_minus_beta1 * g
            v = beta2 * v_[i] + one_minus_beta2 * (g * g)
            m_[i] = m
            v_[i] = v
            vm = vmax_[i]
            if not (vm != vm or vm >= v):  # NaN-propagating max, as np.maximum
                vm = v
            vmax_[i] = vm
            p_[i] = p - step_size * (m / (np.sqrt(vm) * inv_bc2_sqrt + eps))
    else:
        for i in range(hi - lo):
            g = g_[i] * grad_sign
            p = p_[i] * param_scale
            if l2 != 0:
                g = g + l2 * p
            m = beta1 * m_[i] + one_minus_beta1 * g
            v = beta2 * v_[i] + one_minus_beta2 * (g * g)
            m_[i] = m
            v_[i] = v
            p_[i] = p - step_size * (m / (np.sqrt(v) * inv_bc2_sqrt + eps))


@njit(_signatures(), cache=True, nogil=True, error_model="numpy", parallel=True)
def _adam_parallel(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2,
                   one_minus_beta2, eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt, amsgrad):
    n = params.size
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _adam_range(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1,
                    beta2, one_minus_beta2, eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt,
                    amsgrad, lo, hi)


def adam_kernel(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt, amsgrad,
                num_threads):
    """The Numba Adam kernel (contract: :mod:`adamfast._dispatch`)."""
    n = params.size
    if n < PARALLEL_MIN or num_threads == 1:
        _adam_range(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1,
                    beta2, one_minus_beta2, eps, l2, param_scale, grad_sign, step_size,
                    inv_bc2_sqrt, amsgrad, 0, n)
        return
    # numba's thread count is per calling thread and capped by the pool size
    # fixed at start-up; only touch it when it differs.
    num_threads = min(num_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != num_threads:
        numba.set_num_threads(num_threads)
    _adam_parallel(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, one_minus_beta1,
                   beta2, one_minus_beta2, eps, l2, param_scale, grad_sign, step_size, inv_bc2_sqrt,
                   amsgrad)
