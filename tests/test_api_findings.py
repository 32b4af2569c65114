"""The NumPy API at its edges, as a user trial found them: each case was a silent
wrong result, a half-written step or an error that did not say what was wrong."""

import re

import numpy as np
import pytest

import adamfast
from adamfast import schedules


def _flat(opt):
    return {name: getattr(opt, name).copy() for name in ("flat_params", "flat_grads")}


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_betas_given_as_an_array_are_refused(backend):
    # An array is a mutable container the step's settings cache cannot snapshot
    # (a tuple cannot change, a list is copied): an in-place edit would go unseen.
    w = np.ones(4, np.float32)
    with pytest.raises(TypeError, match=r"betas must be a tuple or list of two numbers, got "
                                        r"array"):
        adamfast.Adam([w], betas=np.array([0.9, 0.999]), backend=backend)
    opt = adamfast.Adam([w], backend=backend)
    opt.grads[0][...] = 1
    opt.step()
    before = _flat(opt)
    opt.param_groups[0]["betas"] = np.array([0.5, 0.999])
    with pytest.raises(TypeError, match=r"param_groups\[0\]: betas must be a tuple or list"):
        opt.step()
    assert opt.step_count == 1
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(opt, name), value)


def test_adan_betas_given_as_an_array_are_refused():
    with pytest.raises(TypeError, match=r"betas must be a tuple or list of three numbers"):
        adamfast.Adan([np.ones(3)], betas=np.array([0.98, 0.92, 0.99]))


def test_betas_list_edited_in_place_still_counts():
    # The supported mutable form: a list, whose edits the next step sees.
    a = adamfast.Adam([np.linspace(-1, 1, 8)], lr=0.1, betas=[0.9, 0.999], backend="numpy")
    b = adamfast.Adam([np.linspace(-1, 1, 8)], lr=0.1, betas=(0.9, 0.999), backend="numpy")
    for opt in (a, b):
        opt.grads[0][...] = np.cos(np.arange(8.0))
        opt.step()
    a.param_groups[0]["betas"][0] = 0.5
    b.param_groups[0]["betas"] = (0.5, 0.999)
    a.step()
    b.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


@pytest.mark.parametrize("params", [
    lambda w: [w, w],
    lambda w: [{"params": [w]}, {"params": [w], "lr": 0.5}],
])
def test_the_same_array_twice_is_refused(params):
    # Each would become its own copy, and the two would drift apart (torch: a
    # warning in one group, ValueError across groups).
    w = np.ones(3)
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\]: the same array twice"):
        adamfast.Adam(params(w))


def test_one_grad_array_must_be_flat_or_shaped_like_the_single_param():
    w = np.arange(6.0).reshape(2, 3)
    g = np.zeros((2, 3))
    g[0, 1] = 1.0
    opt = adamfast.SGD([w], lr=1.0, backend="numpy")
    with pytest.raises(ValueError, match=r"grads given as one array must be .*, 1-D or shaped "
                                         r"like the one param \(2, 3\), got "
                                         r"array\(shape=\(3, 2\)"):
        opt.step(g.T)
    assert opt.step_count == 0
    np.testing.assert_array_equal(opt.params[0], w)
    opt.step(g)
    opt.step(g.reshape(-1))
    expected = w.copy()
    expected[0, 1] -= 2.0
    np.testing.assert_array_equal(opt.params[0], expected)
    two = adamfast.SGD([np.zeros(2), np.zeros(4)], lr=1.0, backend="numpy")
    with pytest.raises(ValueError, match=r"grads given as one array must be .*, 1-D, got"):
        two.step(np.ones((2, 3)))
    two.step(np.arange(6.0))
    np.testing.assert_array_equal(two.flat_params, -np.arange(6.0))


@pytest.mark.parametrize("grads", [5, "abc", b"ab", 2.5])
def test_grads_of_the_wrong_kind_name_the_argument(grads):
    opt = adamfast.SGD([np.zeros(3)], lr=1.0, backend="numpy")
    with pytest.raises(TypeError, match=r"grads must be None, one numpy\.ndarray or a sequence "
                                        r"of arrays \(one per param\), got"):
        opt.step(grads)
    assert opt.step_count == 0


@pytest.mark.parametrize("lr", [float, int, np.float32, adamfast.Adam])
def test_a_type_is_not_a_schedule(lr):
    # float(t) == t: a type taken for a schedule makes the learning rate the step count.
    with pytest.raises(TypeError, match=r"lr must be a number or a schedule \(a function of the "
                                        r"step\), got the type"):
        adamfast.SGD([np.zeros(1)], lr=lr)
    opt = adamfast.SGD([np.zeros(1)], lr=0.1)
    opt.param_groups[0]["lr"] = lr
    with pytest.raises(TypeError, match=r"param_groups\[0\]: lr must be a number or a schedule"):
        opt.step()
    assert opt.step_count == 0


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_a_step_too_large_for_a_double_is_a_clear_error(backend):
    # The step enters the maths as a double (beta ** t): past 2**1023 (t + 1 for
    # Nesterov) Python raised a bare OverflowError.
    bufs = [np.ones(5, np.float32) for _ in range(4)]
    before = [b.copy() for b in bufs]
    with pytest.raises(ValueError, match=r"step must be below 2\*\*1023 \(the maths takes it as "
                                         r"a double\), got an integer of 1329 bits"):
        adamfast.adam_step(*bufs, step=10**400, backend=backend)
    for b, b0 in zip(bufs, before):
        np.testing.assert_array_equal(b, b0)
    opt = adamfast.Adam([np.ones(5, np.float32)], backend=backend)
    with pytest.raises(ValueError, match=r"step_count must be below 2\*\*1023 - 1"):
        opt.step_count = 2**1023 - 1
    state = opt.state_dict()
    state["step"] = 2**1023
    with pytest.raises(ValueError, match=r"state_dict\['step'\] must be an integer >= 0 and "
                                         r"below 2\*\*1023 - 1"):
        opt.load_state_dict(state)
    assert opt.step_count == 0
    opt.step_count = 2**1023 - 2  # the largest count whose next step still converts
    opt.grads[0][...] = 1
    opt.step()
    assert opt.step_count == 2**1023 - 1


def test_schedules_take_numpy_integers():
    assert schedules.cosine(0.1, np.int64(10))(3) == schedules.cosine(0.1, 10)(3)
    assert schedules.step_decay(0.1, np.int32(4))(9) == schedules.step_decay(0.1, 4)(9)
    with pytest.raises(ValueError, match=r"total_steps must be an integer >= 1, got True"):
        schedules.cosine(0.1, True)


def test_strided_grads_are_refused_as_read_not_written():
    bufs = [np.ones(8, np.float32) for _ in range(4)]
    bufs[1] = np.ones(16, np.float32)[::2]
    with pytest.raises(ValueError, match=r"grads must be C-contiguous \(the kernels read it as "
                                         r"one flat run\)") as info:
        adamfast.adam_step(*bufs, step=1, backend="numpy")
    assert "updated in place" not in str(info.value)


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
@pytest.mark.parametrize("which, name", [("flat_params", "params"), ("exp_avg", "states[0]")])
def test_a_read_only_buffer_of_the_optimizer_is_refused_before_any_write(backend, which, name):
    # The optimizer's own buffers made read-only: every backend refuses the step
    # the same way, with nothing written and the count unchanged.
    opt = adamfast.Adam([np.ones(5, np.float32)], backend=backend)
    opt.grads[0][...] = 1
    getattr(opt, which).flags.writeable = False
    with pytest.raises(ValueError, match=rf"family_kernel: {re.escape(name)} must be writable"):
        opt.step()
    assert opt.step_count == 0
    np.testing.assert_array_equal(opt.params[0], 1)
    np.testing.assert_array_equal(opt.exp_avg, 0)
