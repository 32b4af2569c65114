"""Fitting into torch's machinery: the step wrapper (hooks, profiler,
``torch.compile``) and the warning about threads under torchrun.

Plain functions taking the optimizer; :class:`adamfast.torch.Optimizer` binds
them as its methods.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from .. import _dispatch

def patch_step_function(self):
    """torch wraps ``step`` in ``profile_hook_step`` (a profiler range and the step
    hooks), which costs ~10 us per call here, as much as the rest of a small
    step.  adamfast's wrapper calls torch's exactly when a step hook is
    registered or the profiler is on, and the bare step otherwise."""
    self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
    cls = type(self)
    if not getattr(cls.step, "hooked", None):
        cls.step = _hook_step(cls.step)
        cls.step.hooked = True

def warn_threads(self):
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return
    if local > 1 and not os.environ.get("ADAMFAST_NUM_THREADS"):
        cores = os.cpu_count() or 1
        if local * _dispatch.get_num_threads() > cores:
            warnings.warn(
                f"adamfast.torch: {local} local ranks each step with "
                f"{_dispatch.get_num_threads()} threads on {cores} cores (adamfast ignores "
                f"OMP_NUM_THREADS); set ADAMFAST_NUM_THREADS={max(1, cores // local)} to "
                f"share the cores", RuntimeWarning, stacklevel=3)


def _hook_step(func):
    from torch.autograd import profiler
    from torch.optim import optimizer as topt

    hooked = torch.optim.Optimizer.profile_hook_step(func)

    def run(self, *args, **kwargs):
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or topt._global_optimizer_pre_hooks or topt._global_optimizer_post_hooks
                or profiler._is_profiler_enabled):
            return hooked(self, *args, **kwargs)
        return func(self, *args, **kwargs)

    # Under torch.compile the step runs eagerly, nothing of it traced: tracing into it
    # would specialise on every step's float scalars and recompile each step.  dynamo does
    # not trace this wrapper (skip: free per call) but calls it for real, its frame
    # callback still installed, so the step then runs under torch.compiler.disable
    # (``run``), which costs ~0.5 us a call and is paid only there.  Importing
    # torch._dynamo here costs nothing more: torch.optim's add_param_group imports it
    # in the same constructor.
    from torch._dynamo.decorators import skip

    eager = torch.compiler.disable(run, recursive=True)
    callback = torch._C._dynamo.eval_frame.get_eval_frame_callback

    @functools.wraps(func)
    def step(self, *args, **kwargs):
        if callback() is not None:
            return eager(self, *args, **kwargs)
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or topt._global_optimizer_pre_hooks or topt._global_optimizer_post_hooks
                or profiler._is_profiler_enabled):
            return hooked(self, *args, **kwargs)
        return func(self, *args, **kwargs)
    return skip(step)
