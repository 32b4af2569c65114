"""``adam_step``: the functional entry point.

The data path is one straight line: validate, compute the float64 scalars,
pick the kernel, make one kernel call.

The cython backend first offers the call to its C fast path
(``adam_step_fast`` in kernels/_adam.pxi), which performs the same step in
one C call when every argument is of the trivially valid kind, and declines
(writes nothing) otherwise.  It exists because the Python checks cost tens of
microseconds with cold caches, as after a backward pass.  It is only an
optimisation: whatever it declines takes the full path below, so
:mod:`adamfast._validate` remains the one authority on validity and errors.
"""

from __future__ import annotations

import numpy as np

from . import _dispatch, _validate
from .reference import step_scalars

# Passed as max_exp_avg_sq when AMSGrad is off: the kernels never touch it.
_EMPTY = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def adam_step(params, grads, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, max_exp_avg_sq=None,
              maximize=False, backend="auto"):
    """Perform one Adam (or AdamW) update in place.

    Parameters
    ----------
    params : ndarray, float32 or float64, C-contiguous, writable
        Parameters theta; updated in place.
    grads : ndarray
        Gradient g of the loss at ``params``; same dtype and size; only read.
    exp_avg, exp_avg_sq : ndarray
        First and second moment estimates m and v (zeros before step 1);
        same dtype and size as ``params``; updated in place.
    step : int
        The 1-based number t of this update (1 for the first call).  It
        drives the bias corrections ``1 - beta**t``; the caller counts.
    lr, beta1, beta2, eps : float
        Learning rate, moment decay rates in [0, 1), and the term added to the
        denominator after the square root.  Defaults are the paper's.
    weight_decay : float
        L2 penalty (``decoupled=False``, as ``torch.optim.Adam``) or decoupled
        decay (``decoupled=True``, as ``torch.optim.AdamW``).
    amsgrad : bool
        Use the running maximum of ``exp_avg_sq``, kept in ``max_exp_avg_sq``
        (required then; ignored otherwise).
    maximize : bool
        Maximise the objective instead of minimising it.
    backend : {"auto", "numpy", "numba", "cython"}
        ``"auto"`` takes the fastest available.  Asking for an unavailable
        backend raises ValueError saying how to get it.  With cython, a call
        whose arguments are exact ndarrays, ints, floats and bools goes
        through one C function (same result, bit for bit); anything else is
        checked in Python first.

    Arrays may have any shape; elements are paired in C order.  Every
    argument is checked before anything is written: on error (TypeError or
    ValueError naming the argument) every buffer is left as it was.  NaN or
    Inf in ``grads`` are not checked for and propagate as in PyTorch.  The
    maths and its conventions are stated once, in :mod:`adamfast.reference`.
    """
    # Fast path (cython only; see the module docstring): True means done.
    fast = _dispatch.get_fast(backend)
    if fast is not None and fast(params, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                                 weight_decay, decoupled, amsgrad, max_exp_avg_sq, maximize,
                                 _dispatch.get_num_threads()):
        return
    # Full path: the single authority on what is valid.
    kernel = _dispatch.get_kernel(backend)
    t = _validate.step(step)
    lr, beta1, beta2, eps, weight_decay = _validate.hyperparameters(lr, beta1, beta2, eps,
                                                                    weight_decay)
    decoupled = _validate.flag("decoupled", decoupled)
    amsgrad = _validate.flag("amsgrad", amsgrad)
    maximize = _validate.flag("maximize", maximize)
    bufs = _validate.buffers(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad, _EMPTY)
    scalars = step_scalars(t, lr, beta1, beta2, eps, weight_decay, decoupled, maximize)
    kernel(*bufs, *scalars, amsgrad, _dispatch.get_num_threads())
