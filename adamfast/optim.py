"""Adam and AdamW optimizers over NumPy arrays kept in one flat buffer each.

The optimizer copies the arrays it is given into one contiguous parameter
buffer at construction and from then on *owns* them: ``opt.params`` are
views into that buffer, and they are what training must read and what the
optimizer updates.  The arrays passed to the constructor are not updated.
Gradients live in one flat buffer too; ``opt.grads`` are views of it, to be
filled in place (``np.copyto(opt.grads[i], g)`` or a backward pass writing
``out=opt.grads[i]``).  So a step is one kernel call over everything, with no
per-step copy, whatever the number of arrays.

Example::

    opt = adamfast.AdamW([w, b], lr=1e-3)
    w, b = opt.params                 # the live arrays from now on
    for batch in data:
        gw, gb = opt.grads
        compute_gradients(w, b, batch, out=(gw, gb))
        opt.step()
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _dispatch, _validate
from ._memory import zeros_buffers
from .reference import step_scalars

__all__ = ["Adam", "AdamW"]


class Adam:
    """Adam (Kingma & Ba, 2015) over a list of float32 or float64 arrays.

    Parameters
    ----------
    params : ndarray or sequence of ndarrays
        The initial parameters, of any shapes and one dtype (float32 or
        float64).  They are copied; use ``opt.params`` afterwards.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        L2 penalty added to the gradient (AdamW: decoupled decay).
    amsgrad : bool, default False
        Fixed at construction: it decides whether the extra state exists.
    maximize : bool, default False
    backend : {"auto", "numpy", "numba", "cython"}

    Attributes
    ----------
    params, grads : tuple of ndarray
        Views into ``flat_params`` and ``flat_grads``, shaped like the inputs.
    flat_params, flat_grads, exp_avg, exp_avg_sq, max_exp_avg_sq : ndarray
        The flat buffers (``max_exp_avg_sq`` has length 0 without AMSGrad).
    step_count : int
        Number of steps taken; the next :meth:`step` is step ``step_count + 1``.

    ``lr``, ``betas``, ``eps``, ``weight_decay``, ``maximize`` and ``backend``
    can be changed between steps (schedules); each assignment is validated.
    There is one parameter group: for per-group hyperparameters, use one
    optimizer per group.
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, backend="auto"):
        arrays = [params] if isinstance(params, np.ndarray) else list(params)
        if not arrays:
            raise ValueError("params must hold at least one array, got an empty sequence")
        dtype = None
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray) or a.dtype not in _validate._FLOAT_DTYPES:
                raise TypeError(f"params[{i}] must be a numpy.ndarray of float32 or float64, got "
                                f"{_validate._describe(a)}")
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                raise TypeError(f"params[{i}] must have the dtype of params[0] ({dtype}), got "
                                f"{a.dtype}: one optimizer holds one dtype")
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.maximize = maximize
        self.backend = backend
        self._amsgrad = _validate.flag("amsgrad", amsgrad)

        self._shapes = tuple(a.shape for a in arrays)
        sizes = [a.size for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        total = offsets[-1]
        # One staggered allocation for all flat buffers: see adamfast._memory.
        bufs = zeros_buffers(total, dtype, 5 if self._amsgrad else 4)
        self.flat_params, self.flat_grads, self.exp_avg, self.exp_avg_sq = bufs[:4]
        self.max_exp_avg_sq = bufs[4] if self._amsgrad else np.zeros(0, dtype)
        self._slices = tuple(slice(offsets[i], offsets[i + 1]) for i in range(len(arrays)))
        for a, s in zip(arrays, self._slices):
            self.flat_params[s] = a.reshape(-1)
        self.params = self._views(self.flat_params)
        self.grads = self._views(self.flat_grads)
        self.step_count = 0

    # --- hyperparameters: validated on assignment, so step() need not -------

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _validate.nonneg("lr", value)

    @property
    def betas(self):
        return (self._beta1, self._beta2)

    @betas.setter
    def betas(self, value):
        try:
            beta1, beta2 = value
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {value!r}") from None
        self._beta1, self._beta2 = _validate.beta("beta1", beta1), _validate.beta("beta2", beta2)

    @property
    def eps(self):
        return self._eps

    @eps.setter
    def eps(self, value):
        self._eps = _validate.nonneg("eps", value)

    @property
    def weight_decay(self):
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay = _validate.nonneg("weight_decay", value)

    @property
    def maximize(self):
        return self._maximize

    @maximize.setter
    def maximize(self, value):
        self._maximize = _validate.flag("maximize", value)

    @property
    def backend(self):
        """The backend in use: a concrete name, even if ``"auto"`` was asked for."""
        return self._backend

    @backend.setter
    def backend(self, value):
        self._kernel = _dispatch.get_kernel(value)
        self._backend = _dispatch.resolve(value)

    @property
    def amsgrad(self):
        return self._amsgrad

    @property
    def decoupled(self):
        return self._decoupled

    # --- the step ----------------------------------------------------------

    def _views(self, flat):
        return tuple(flat[s].reshape(shape) for s, shape in zip(self._slices, self._shapes))

    def _check_grads(self, grads):
        """Validate a gradient argument fully before anything is copied."""
        dtype = self.flat_params.dtype
        if isinstance(grads, np.ndarray):
            if grads.dtype != dtype or grads.size != self.flat_grads.size:
                raise ValueError(f"grads given as one array must be {dtype} with "
                                 f"{self.flat_grads.size} elements (all params, in order), got "
                                 f"{_validate._describe(grads)}")
            return [(self.flat_grads, grads.reshape(-1))]
        grads = list(grads)
        if len(grads) != len(self._shapes):
            raise ValueError(f"grads must hold one array per parameter ({len(self._shapes)}), got "
                             f"{len(grads)}")
        pairs = []
        for i, (g, dst) in enumerate(zip(grads, self.grads)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {_validate._describe(g)}")
            if g.dtype != dtype:
                raise TypeError(f"grads[{i}] must have dtype {dtype} like the params (no silent "
                                f"precision change), got {g.dtype}")
            if g.shape != dst.shape:
                raise ValueError(f"grads[{i}] must have shape {dst.shape}, got {g.shape}")
            pairs.append((dst, g))
        return pairs

    def step(self, grads=None):
        """Take one step.

        ``grads`` is optional: by default the step uses ``opt.grads`` as the
        caller filled them.  For convenience it may be a sequence of arrays
        shaped like the params, or one flat array of all gradients; these are
        copied into ``opt.grads`` (checked first: a bad argument changes
        nothing).
        """
        if grads is not None:
            for dst, src in self._check_grads(grads):
                if dst is not src:
                    np.copyto(dst, src)
        t = self.step_count + 1
        scalars = step_scalars(t, self._lr, self._beta1, self._beta2, self._eps,
                               self._weight_decay, self._decoupled, self._maximize)
        self._kernel(self.flat_params, self.flat_grads, self.exp_avg, self.exp_avg_sq,
                     self.max_exp_avg_sq, *scalars, self._amsgrad, _dispatch.get_num_threads())
        self.step_count = t

    def zero_grad(self):
        """Set every gradient to zero (in place: the ``grads`` views stay valid)."""
        self.flat_grads.fill(0)

    # --- checkpointing -----------------------------------------------------

    def _hyperparameters(self):
        return {"lr": self._lr, "betas": self.betas, "eps": self._eps,
                "weight_decay": self._weight_decay, "amsgrad": self._amsgrad,
                "maximize": self._maximize, "decoupled": self._decoupled}

    def state_dict(self):
        """A snapshot of the optimizer state: copies, not views.

        Holds ``step``, the moment buffers (flat), the hyperparameters, and
        the shapes and dtype it belongs to.  The parameters themselves are not
        included (save ``opt.flat_params`` alongside, as with PyTorch).
        """
        return {
            "step": self.step_count,
            "exp_avg": self.exp_avg.copy(),
            "exp_avg_sq": self.exp_avg_sq.copy(),
            "max_exp_avg_sq": self.max_exp_avg_sq.copy() if self._amsgrad else None,
            "hyperparameters": self._hyperparameters(),
            "shapes": [tuple(s) for s in self._shapes],
            "dtype": str(self.flat_params.dtype),
        }

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping from state_dict(), got "
                            f"{_validate._describe(state_dict)}")
        missing = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "hyperparameters",
                   "shapes", "dtype"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}")
        dtype = str(self.flat_params.dtype)
        if state_dict["dtype"] != dtype:
            raise TypeError(f"state_dict['dtype'] must be {dtype!r} to fit this optimizer, got "
                            f"{state_dict['dtype']!r}")
        shapes = [tuple(s) for s in state_dict["shapes"]]
        if shapes != list(self._shapes):
            raise ValueError(f"state_dict['shapes'] must be {list(self._shapes)} to fit this "
                             f"optimizer, got {shapes}")
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict['step'] must be an integer >= 0, got {step!r}")
        hp = state_dict["hyperparameters"]
        if not isinstance(hp, Mapping):
            raise TypeError(f"state_dict['hyperparameters'] must be a mapping, got {hp!r}")
        for key in ("amsgrad", "decoupled"):
            if hp.get(key) != getattr(self, key):
                raise ValueError(f"state_dict['hyperparameters'][{key!r}] is {hp.get(key)!r} but "
                                 f"this optimizer has {key}={getattr(self, key)}")
        try:
            lr = _validate.nonneg("lr", hp["lr"])
            beta1, beta2 = hp["betas"]
            beta1, beta2 = _validate.beta("beta1", beta1), _validate.beta("beta2", beta2)
            eps = _validate.nonneg("eps", hp["eps"])
            weight_decay = _validate.nonneg("weight_decay", hp["weight_decay"])
            maximize = _validate.flag("maximize", hp["maximize"])
        except KeyError as exc:
            raise ValueError(f"state_dict['hyperparameters'] is missing {exc}") from None
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if self._amsgrad else [])
        for name in names:
            arr = state_dict[name]
            own = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != own.dtype or arr.size != own.size:
                raise ValueError(f"state_dict[{name!r}] must be a {own.dtype} array of {own.size} "
                                 f"elements, got {_validate._describe(arr)}")
        # Everything fits: now write, into the existing buffers.
        for name in names:
            np.copyto(getattr(self, name), state_dict[name].reshape(-1))
        self.step_count = int(step)
        self._lr, self._beta1, self._beta2 = lr, beta1, beta2
        self._eps, self._weight_decay, self._maximize = eps, weight_decay, maximize

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items()
                       if k != "decoupled")
        return (f"{type(self).__name__}({len(self._shapes)} arrays, {self.flat_params.size} "
                f"{self.flat_params.dtype} params, {hp}, backend={self._backend!r}, "
                f"step_count={self.step_count})")


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay.

    The same as :class:`Adam` except that ``weight_decay`` (default 1e-2)
    multiplies the parameters by ``1 - lr * weight_decay`` before each update,
    exactly as ``torch.optim.AdamW``, instead of adding an L2 term to the
    gradient.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, backend="auto"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, backend=backend)
