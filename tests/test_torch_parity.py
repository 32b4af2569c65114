"""Against torch.optim.Adam / AdamW (for-loop implementation), when torch is installed."""

import numpy as np
import pytest

import adamfast
from conftest import MODES, assert_close, make_grads, make_state

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("n", [17, 1025, 100003])
@pytest.mark.parametrize("wd,dec,ams,mx", MODES)
def test_matches_torch(backend, dtype, n, wd, dec, ams, mx):
    steps = 20
    params, m, v, vmax = make_state(n, dtype, amsgrad=ams)
    tparam = torch.nn.Parameter(torch.from_numpy(params.copy()))
    cls = torch.optim.AdamW if dec else torch.optim.Adam
    opt = cls([tparam], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd,
              amsgrad=ams, maximize=mx, foreach=False)
    for t, g in enumerate(make_grads(n, dtype, steps), start=1):
        tparam.grad = torch.from_numpy(g.copy())
        opt.step()
        adamfast.adam_step(params, g, m, v, step=t, weight_decay=wd, decoupled=dec, amsgrad=ams,
                           max_exp_avg_sq=vmax, maximize=mx, backend=backend)
    state = opt.state[tparam]
    assert int(state["step"]) == steps
    assert_close(params, tparam.detach().numpy(), dtype, "params vs torch")
    assert_close(m, state["exp_avg"].numpy(), dtype, "exp_avg vs torch")
    assert_close(v, state["exp_avg_sq"].numpy(), dtype, "exp_avg_sq vs torch")
    if ams:
        assert_close(vmax, state["max_exp_avg_sq"].numpy(), dtype, "max_exp_avg_sq vs torch")


def test_optimizer_matches_torch_mixed_shapes(backend, dtype):
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (5,), (2, 3, 2), ()]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    topt = torch.optim.AdamW(tparams, lr=3e-3, weight_decay=0.05, amsgrad=True, foreach=False)
    opt = adamfast.AdamW(init, lr=3e-3, weight_decay=0.05, amsgrad=True, backend=backend)
    for _ in range(15):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step(grads)
    for mine, theirs in zip(opt.params, tparams):
        assert_close(mine, theirs.detach().numpy(), dtype, "params vs torch AdamW")
