"""Adam's epsilon-hat form against scikit-learn's MLP optimizer, element by element.

scikit-learn's ``AdamOptimizer`` (the one ``MLPClassifier(solver="adam")``
uses) adds epsilon to the uncorrected sqrt(v) and folds both bias corrections
into the step size: adamfast's ``eps_hat=True``.  Its code is the peer here,
driven over many steps and sizes that hit the SIMD and chunk tails.
"""

import numpy as np
import pytest

import adamfast
from conftest import assert_close

optimizers = pytest.importorskip("sklearn.neural_network._stochastic_optimizers")

SIZES = (1, 7, 17, 1023, 100003)


@pytest.mark.parametrize("hp", [{}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}],
                         ids=["defaults", "custom"])
def test_eps_hat_adam_matches_sklearn_adam_optimizer(backend, dtype, hp):
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    lr = hp.get("lr", 1e-3)
    b1, b2 = hp.get("betas", (0.9, 0.999))
    eps = hp.get("eps", 1e-8)
    # The peer runs in float64 on the same inputs: the float32 comparison is
    # then against the exact maths, within float32's tolerance.
    ref = [p.astype(np.float64) for p in params]
    peer64 = optimizers.AdamOptimizer(ref, learning_rate_init=lr, beta_1=b1, beta_2=b2,
                                      epsilon=eps)
    opt = adamfast.Adam(params, backend=backend, eps_hat=True, **hp)
    for t in range(60):
        grads = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
                 for n in SIZES]
        opt.step(grads)
        peer64.update_params(ref, [g.astype(np.float64) for g in grads])
    assert opt.step_count == peer64.t == 60
    for ours, theirs in zip(opt.params, ref):
        assert_close(ours, theirs, dtype, f"params of size {ours.size}")
    sd = opt.state_dict()  # flat buffers, params in order
    assert_close(sd["exp_avg"], np.concatenate(peer64.ms), dtype, "exp_avg")
    assert_close(sd["exp_avg_sq"], np.concatenate(peer64.vs), dtype, "exp_avg_sq")
