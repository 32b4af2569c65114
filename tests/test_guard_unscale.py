"""The guarded step's non-finite check covers the *unscaled* gradients.

Unscaling (multiplying by 1/grad_scale) can overflow where the scaled
gradients are finite: that is a non-finite step for ``skip_nonfinite``.  A
grad_scale whose reciprocal overflows the gradients' dtype would make every
unscaled gradient Inf (or NaN for a zero): it is refused, naming grad_scale,
before anything is written.
"""

import numpy as np
import pytest

import adamfast
from adamfast import _dispatch
from adamfast._guard import sumsq

F32MAX = float(np.finfo(np.float32).max)


def bits(a):
    return np.ascontiguousarray(a).tobytes()


def _grads(n, value, dtype=np.float32):
    g = np.full(n, 0.5, dtype)
    g[n // 2] = value  # one element, in the middle of a chunk
    return g


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("grad,scale", [(3e38, 0.5), (F32MAX, 0.99999)],
                         ids=["3e38/0.5", "max/0.99999"])
def test_unscale_overflow_is_a_nonfinite_step(backend, grad, scale, clip):
    params = np.linspace(-1, 1, 16391).astype(np.float32)
    opt = adamfast.Adam([params], backend=backend, skip_nonfinite=True, max_grad_norm=clip)
    before = bits(opt.flat_params), bits(opt.exp_avg), bits(opt.exp_avg_sq)
    res = opt.step([_grads(params.size, grad)], grad_scale=scale)
    assert res.skipped
    assert (bits(opt.flat_params), bits(opt.exp_avg), bits(opt.exp_avg_sq)) == before
    assert opt.step_count == 0


def test_unscale_overflow_in_the_functional_step(backend):
    p = np.ones(1025, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    res = adamfast.adam_step(p, _grads(p.size, 3e38), m, v, step=1, grad_scale=0.5,
                             skip_nonfinite=True, backend=backend)
    assert res.skipped and (p == 1).all() and not m.any() and not v.any()


def test_large_norm_without_an_overflowing_element_is_not_skipped(backend):
    # Each unscaled gradient fits in float32; only their norm exceeds it: nothing
    # is infinite, so the step is taken.
    params = np.zeros(64, np.float32)
    opt = adamfast.Adam([params], backend=backend, skip_nonfinite=True)
    g = np.full(64, 1.5e38, np.float32)
    res = opt.step([g], grad_scale=0.5)
    assert not res.skipped and opt.step_count == 1
    assert np.isfinite(opt.flat_params).all()


def test_the_check_rounds_as_the_kernel_does():
    b = _dispatch.get_backend("numpy")
    g = np.array([F32MAX], np.float32)
    # float32(1 + 2**-25) rounds to 1: the kernel multiplies by exactly 1.
    assert sumsq(b, g, 1, inv=1.0 + 2.0 ** -25)[1]
    assert not sumsq(b, g, 1, inv=1.0 + 2.0 ** -23)[1]
    assert sumsq(b, g.astype(np.float64), 1, inv=2.0)[1]


@pytest.mark.parametrize("grads", [np.ones(33, np.float32), np.zeros(33, np.float32)],
                         ids=["ones", "zeros"])
@pytest.mark.parametrize("skip", [False, True])
def test_reciprocal_overflowing_the_dtype_is_refused(backend, grads, skip):
    params = np.linspace(-1, 1, 33).astype(np.float32)
    opt = adamfast.Adam([params], backend=backend, skip_nonfinite=skip)
    before = bits(opt.flat_params)
    with pytest.raises(ValueError, match=r"grad_scale.*float32.*got 1e-39"):
        opt.step([grads], grad_scale=1e-39)
    assert bits(opt.flat_params) == before and opt.step_count == 0
    p, m, v = params.copy(), np.zeros(33, np.float32), np.zeros(33, np.float32)
    with pytest.raises(ValueError, match=r"grad_scale.*float32.*got 1e-39"):
        adamfast.adam_step(p, grads, m, v, step=1, grad_scale=1e-39, backend=backend,
                           skip_nonfinite=skip)
    assert bits(p) == bits(params) and not m.any() and not v.any()


def test_tiny_grad_scale_is_fine_for_float64(backend):
    params = np.linspace(-1, 1, 33)
    opt = adamfast.Adam([params], backend=backend, skip_nonfinite=True)
    res = opt.step([np.full(33, 1e-40)], grad_scale=1e-39)
    assert not res.skipped and opt.step_count == 1


@pytest.mark.parametrize("bad", [0.0, -1.0, -np.inf])
def test_bad_grad_scale_message_says_greater_than_zero(bad):
    opt = adamfast.Adam([np.ones(3, np.float32)], backend="numpy")
    with pytest.raises(ValueError, match="grad_scale") as info:
        opt.step([np.ones(3, np.float32)], grad_scale=bad)
    assert "> 0" in str(info.value) and ">= 0" not in str(info.value)


# --- adamfast.torch ---------------------------------------------------------------------

def _torch_pair(skip=True):
    torch = pytest.importorskip("torch")
    import adamfast.torch as aft

    w = torch.nn.Parameter(torch.linspace(-1, 1, 16391))
    b = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    return torch, w, b, aft.AdamW([w, b], skip_nonfinite=skip)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_torch_unscale_overflow_is_skipped(clip):
    torch, w, b, opt = _torch_pair()
    if clip is not None:
        import adamfast.torch as aft
        opt = aft.AdamW([w, b], skip_nonfinite=True, max_grad_norm=clip)
    w.grad = torch.from_numpy(_grads(w.numel(), 3e38))
    b.grad = torch.ones(5, dtype=torch.float64)
    # The unscaled gradients overflow float32.  (torch's CPU unscale op checks the
    # scaled values, so it would not flag this; the guard checks what the step uses.)
    assert not torch.isfinite(w.grad * 2.0).all()
    before = w.detach().clone(), b.detach().clone()
    res = opt.step(grad_scale=0.5)
    assert res.skipped
    assert torch.equal(w.detach(), before[0]) and torch.equal(b.detach(), before[1])
    assert not opt.state[w] or float(opt.state[w]["step"]) == 0


def test_torch_reciprocal_overflow_is_refused():
    torch, w, b, opt = _torch_pair(skip=False)
    w.grad = torch.ones_like(w)
    b.grad = torch.ones_like(b)
    before = w.detach().clone()
    with pytest.raises(ValueError, match=r"grad_scale.*float32"):
        opt.step(grad_scale=1e-39)
    assert torch.equal(w.detach(), before)
