"""adamfast.torch against torch's own optimizer test database.

torch ships the database that drives its ``test/test_optim.py`` in the wheel:
``torch.testing._internal.common_optimizers.optim_db``.  For every
``adamfast.torch`` class whose peer is a ``torch.optim`` class (Lion has none:
it follows optax), this module runs, on CPU:

* every ``optim_inputs_func`` config (with torch's own flag variants, see
  ``_configs``), in float32 and float64, without a scheduler and with each of
  the entry's ``scheduler_inputs``: torch's class and adamfast's step side by
  side on identical copies of a small model, and params, every state tensor
  and ``state_dict()`` are compared after every step (and before the first);
* ``state_dict`` both ways: torch's loads into adamfast's class and adamfast's
  into torch's, and each pair then keeps stepping identically;
* every ``optim_error_inputs_func`` input: adamfast refuses it with torch's
  exception type.

The loop follows torch's ``_test_derived_optimizers``: one step in which no
param has a gradient and one in which the bias has none (both must leave
those params and their state alone), plus ``zero_grad`` alternating between
``set_to_none=True`` and ``False``, which are two different gradient paths in
adamfast.torch (a fresh grad copied and rebound, or backward accumulating
into the bound view).  Schedulers step after each optimizer step, as in
torch's ``test_forloop_goes_right_direction``.
"""

import contextlib
import copy
import inspect
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

# common_utils (imported by common_optimizers) freezes torch.backends' flags and
# patches TorchScript's call paths at import, for torch's own suite.  Undo both,
# so that the rest of this pytest session runs as it would without this module.
_FLAGS_FROZEN = torch.backends.flags_frozen()
_SCRIPT_CALLS = (torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__)
from torch.testing._internal import common_optimizers as co  # noqa: E402  (needs expecttest)

if not _FLAGS_FROZEN:
    # torch.backends is a module wrapper: the flag lives in its functions' globals.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = _SCRIPT_CALLS

from torch.nn import Parameter  # noqa: E402
from torch.optim.lr_scheduler import ReduceLROnPlateau  # noqa: E402

import adamfast.torch as aft  # noqa: E402
from optim_cases import CASES, GROUP_SCALAR_DTYPE  # noqa: E402

DEVICE = "cpu"
DTYPES = (torch.float32, torch.float64)
# 14 steps: the default scheduler_inputs' StepLR(step_size=10) first changes lr for
# step 11, and ReduceLROnPlateau(patience=10) reduces it after step 12 when the
# loss never improves (the maximize configs); 7 steps would exercise neither.
STEPS = 14
NO_GRAD_STEP = 2   # no param has a gradient: a no-op for every param
FROZEN_STEP = 3    # the bias has no gradient: it and its state stay untouched
# Tolerance in units of the dtype's eps: rtol, and atol relative to the largest
# magnitude in the tensor.  torch and adamfast order the operations differently
# (one fused kernel against torch's op-by-op for-loop, foreach or fused paths);
# over 14 steps the largest difference seen is about 10 ulps.
ULPS = 256

INFOS = {info.optim_cls: info for info in co.optim_db}
PEERS = {name: cls for name, cls in aft.CLASSES.items() if cls._torch_class is not None}
_TORCH_ONLY = ("foreach", "fused", "capturable", "differentiable")


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.+=]+", "_", text.replace(" & ", "+")).strip("_")


def _kw_slug(kwargs):
    """What tells two error inputs with the same description apart."""
    def short(v):
        if isinstance(v, torch.Tensor):
            return "Tensor"
        if isinstance(v, tuple):
            return "(" + ",".join(map(short, v)) + ")"
        return repr(v)
    return ",".join(f"{k}={short(v)}" for k, v in kwargs.items())


def _dt(dtype):
    return str(dtype).replace("torch.", "")


def _configs(info, dtype):
    """The entry's configs with torch's own flag variants.

    torch's helper adds, per config, the base with every flag the class
    supports set to False, and one variant per flag set to True (fused only
    where torch has a fused CPU kernel).  It leaves foreach out on CPU (torch's
    foreach kernels are for accelerators), but foreach=True runs on CPU through
    torch's per-tensor fallback, and adamfast documents foreach as accepted and
    ignored: a foreach variant of each config is added to check that here.
    """
    out = co._get_optim_inputs_including_global_cliquey_kwargs(DEVICE, dtype, info)
    more = []
    for inp in out:
        if not any(inp.kwargs.get(f) for f in _TORCH_ONLY):
            kw = copy.deepcopy(inp.kwargs)
            kw["foreach"] = True
            more.append(co.OptimizerInput(params=None, kwargs=kw, desc=f"{inp.desc} & foreach"))
    return out + more


def _foreach_only(err):
    """An error input torch refuses only for its foreach implementation."""
    return bool(err.optimizer_error_input.kwargs.get("foreach")) and \
        "foreach=True" in err.error_regex


def _sched_name(makers):
    probe = torch.optim.SGD([Parameter(torch.zeros(1))], lr=0.1)
    return "+".join(type(make(probe)).__name__ for make in makers)


PARITY, REFUSED, ROUNDTRIP, ERRORS = [], [], [], []
for _name, _cls in PEERS.items():
    _info = INFOS.get(_cls._torch_class)
    if _info is None:
        continue  # test_every_peer_is_in_optim_db reports it
    for _dtype in DTYPES:
        for _i, _inp in enumerate(_configs(_info, _dtype)):
            _id = f"{_name}-{_dt(_dtype)}-{_slug(_inp.desc)}"
            if _inp.kwargs.get("differentiable"):
                # adamfast's documented rule: differentiable=True is refused.
                REFUSED.append(pytest.param(_name, _dtype, _i, id=f"{_id}-refused"))
                continue
            flagged = any(_inp.kwargs.get(f) for f in _TORCH_ONLY)
            # Checkpoints cross over before any step (a fresh optimizer's state) and
            # mid-run; the flag variants mid-run only (the flags are only carried).
            for _at in ([STEPS // 2] if flagged else [0, STEPS // 2]):
                ROUNDTRIP.append(pytest.param(_name, _dtype, _i, _at, id=f"{_id}-at{_at}"))
            # The flag variants run without a scheduler; the plain configs with each.
            scheds = [None] if flagged else [None, *range(len(_info.scheduler_inputs))]
            for _s in scheds:
                tag = "nosched" if _s is None else \
                    f"sched{_s}={_sched_name(_info.scheduler_inputs[_s])}"
                PARITY.append(pytest.param(_name, _dtype, _i, _s, id=f"{_id}-{tag}"))
    if _info.optim_error_inputs_func is not None:
        _errs = _info.optim_error_inputs_func(device=DEVICE, dtype=torch.float32)
        _descs = [e.optimizer_error_input.desc for e in _errs]
        for _i, _err in enumerate(_errs):
            _e = _err.optimizer_error_input
            _id = f"{_name}-{_slug(_e.desc)}"
            if _descs.count(_e.desc) > 1:
                _id += f"-{_kw_slug(_e.kwargs)}"
            if _foreach_only(_err):
                _id += "-foreach_ignored"
            elif issubclass(_err.error_type, Warning):
                _id += "-raises_where_torch_warns"
            ERRORS.append(pytest.param(_name, _i, id=_id))


# --- helpers ----------------------------------------------------------------------

@contextlib.contextmanager
def _scalar_dtype_for(name, dtype):
    """A case with the GROUP_SCALAR_DTYPE deviation and float64 params: run with
    torch's default dtype float64.

    Documented deviation (NAdam): adamfast computes ``mu_product`` in float64,
    whatever the params' dtype; torch keeps it in its default dtype, so with
    float64 params and the default float32 its bias correction carries float32
    rounding (~1e-7 relative), far outside float64 tolerances.  Under default
    dtype float64 torch computes it in float64 too, and both keep ``step`` and
    ``mu_product`` as float64 scalars, so the comparison stays exact-dtype.
    """
    if GROUP_SCALAR_DTYPE not in CASES[name].deviations or dtype != torch.float64:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _model(dtype, seed=0):
    """A 7x3 weight and a 5 bias (no size a multiple of a SIMD width) and an input."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 3, generator=g, dtype=dtype)
    b = torch.randn(5, generator=g, dtype=dtype)
    x = torch.randn(3, generator=g, dtype=dtype)
    return [w, b], x


def _loss(params, x):
    w, b = params
    y = w @ x
    return (y[:5] + b).pow(2).sum() + 0.5 * y[5:].pow(2).sum()


class _Side:
    """One optimizer on its own copy of the params, with its schedulers."""

    def __init__(self, cls, init, kwargs, makers=()):
        self.params = [Parameter(t.detach().clone()) for t in init]
        # Fresh hyperparameter objects per optimizer: a scheduler changes a Tensor lr
        # in place, which must not reach the other optimizer.
        self.opt = cls(self.params, **copy.deepcopy(kwargs))
        self.scheds = [make(self.opt) for make in makers]

    def backward(self, x, i):
        self.opt.zero_grad(set_to_none=(i % 2 == 0))
        if i == NO_GRAD_STEP:
            with torch.no_grad():
                return _loss(self.params, x).item()
        loss = _loss(self.params, x)
        loss.backward()
        if i == FROZEN_STEP:
            self.params[1].grad = None
        return loss.item()

    def sched_step(self, loss):
        for s in self.scheds:
            if isinstance(s, ReduceLROnPlateau):
                s.step(loss)
            else:
                s.step()


def _step_pair(ref, mine, x, i):
    loss = ref.backward(x, i)
    mine.backward(x, i)
    ref.opt.step()
    mine.opt.step()
    # Both schedulers get torch's loss: ReduceLROnPlateau decides on a threshold,
    # and a loss differing in the last ulp must not make the two decide apart.
    ref.sched_step(loss)
    mine.sched_step(loss)


def _close(actual, expected, what):
    assert isinstance(actual, torch.Tensor), f"{what}: adamfast has {type(actual).__name__}, " \
                                             f"torch a tensor"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, torch's {expected.dtype}"
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)}, torch's {tuple(expected.shape)}"
    exp = expected.detach()
    tol = ULPS * torch.finfo(exp.dtype).eps
    scale = float(exp.abs().max()) if exp.numel() else 0.0
    torch.testing.assert_close(actual.detach(), exp, rtol=tol, atol=tol * scale, equal_nan=True,
                               msg=lambda m: f"{what} differs from torch:\n{m}")


def _same(actual, expected, what):
    """Element by element: tensors within tolerance, containers recursively, the rest ==."""
    if isinstance(expected, torch.Tensor):
        _close(actual, expected, what)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{what}: {type(actual).__name__}, torch a dict"
        assert set(actual) == set(expected), \
            f"{what}: keys {sorted(map(str, actual))}, torch's {sorted(map(str, expected))}"
        for k in expected:
            _same(actual[k], expected[k], f"{what}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), \
            f"{what}: {actual!r}, torch's {expected!r}"
        for k, (a, e) in enumerate(zip(actual, expected)):
            _same(a, e, f"{what}[{k}]")
    else:
        assert type(actual) is type(expected) and actual == expected, \
            f"{what}: {actual!r}, torch's {expected!r}"


def _state_dict(opt, ignore):
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        for k in ignore:
            g.pop(k, None)
    return sd


def _compare(ref, mine, when, ignore=()):
    for k, (a, t) in enumerate(zip(mine.params, ref.params)):
        _close(a, t, f"{when}: param {k}")
        _same(dict(mine.opt.state.get(a, {})), dict(ref.opt.state.get(t, {})),
              f"{when}: state[param {k}]")
    _same(_state_dict(mine.opt, ignore), _state_dict(ref.opt, ignore), f"{when}: state_dict()")


def _info(name):
    return INFOS[PEERS[name]._torch_class]


def _config(name, dtype, index):
    """A fresh copy of config ``index`` (a Tensor lr is a new tensor each call)."""
    return _configs(_info(name), dtype)[index]


def _reference(name, kwargs, init, makers=()):
    """torch's side, and the param_groups keys the comparison leaves out.

    torch refuses a Tensor lr (or Tensor betas) with foreach=True unless
    capturable; adamfast documents foreach as ignored, so it runs the config, and
    the reference is then torch's for-loop: the same maths, with foreach=False
    in its param_groups where adamfast keeps the flag as given.
    """
    tcls = PEERS[name]._torch_class
    try:
        return _Side(tcls, init, kwargs, makers), ()
    except ValueError as e:
        if not (kwargs.get("foreach") and "foreach=True" in str(e)):
            raise
    return _Side(tcls, init, {**kwargs, "foreach": False}, makers), ("foreach",)


# --- the tests --------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # torch's fused CPU kernels split even these tiny tensors across its threads; on a
    # busy 2-core machine a step then waits milliseconds for a thread.  The results
    # are per element, so the thread count changes nothing that is compared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_peer_is_in_optim_db():
    assert PEERS, "adamfast.torch has no class with a torch.optim peer"
    missing = [n for n, c in PEERS.items() if c._torch_class not in INFOS]
    assert not missing, f"no optim_db entry for {missing}: they would go untested here"
    # The classes left out are exactly those whose peer is not a torch.optim class.
    for name, cls in aft.CLASSES.items():
        if name not in PEERS:
            assert not cls.spec.peer.startswith("torch.optim."), name


@pytest.mark.parametrize("name,dtype,index,sched", PARITY)
def test_matches_torch(name, dtype, index, sched):
    info = _info(name)
    inp = _config(name, dtype, index)
    makers = () if sched is None else info.scheduler_inputs[sched]
    init, x = _model(dtype)
    with _scalar_dtype_for(name, dtype):
        ref, ignore = _reference(name, inp.kwargs, init, makers)
        mine = _Side(PEERS[name], init, inp.kwargs, makers)
        _compare(ref, mine, "before the first step", ignore)
        for i in range(STEPS):
            _step_pair(ref, mine, x, i)
            _compare(ref, mine, f"after step {i + 1}", ignore)


@pytest.mark.parametrize("name,dtype,index,at", ROUNDTRIP)
def test_state_dict_both_ways(name, dtype, index, at):
    inp = _config(name, dtype, index)
    init, x = _model(dtype)
    with _scalar_dtype_for(name, dtype):
        t1, ignore = _reference(name, inp.kwargs, init)
        a1 = _Side(PEERS[name], init, inp.kwargs)
        for i in range(at):
            _step_pair(t1, a1, x, i)
        # torch's test_state_dict deep-copies too: torch's load_state_dict keeps a
        # tensor of the right dtype as it is, which would alias the other optimizer.
        sd_t = copy.deepcopy(t1.opt.state_dict())
        sd_a = copy.deepcopy(a1.opt.state_dict())
        # torch's checkpoint into adamfast, adamfast's into torch, each on a copy of
        # the params of the optimizer that saved it.
        a2 = _Side(PEERS[name], [p.detach() for p in t1.params], inp.kwargs)
        a2.opt.load_state_dict(copy.deepcopy(sd_t))
        t2, _ = _reference(name, inp.kwargs, [p.detach() for p in a1.params])
        t2.opt.load_state_dict(copy.deepcopy(sd_a))
        _compare(t1, a2, "torch's state_dict loaded into adamfast", ignore)
        _compare(t2, a1, "adamfast's state_dict loaded into torch", ignore)
        for i in range(at, STEPS):
            _step_pair(t1, a2, x, i)
            _step_pair(t2, a1, x, i)
            _compare(t1, a2, f"torch's state_dict in adamfast, step {i + 1}", ignore)
            _compare(t2, a1, f"adamfast's state_dict in torch, step {i + 1}", ignore)


@pytest.mark.parametrize("name,dtype,index", REFUSED)
def test_refuses_differentiable(name, dtype, index):
    """differentiable=True (autograd through the step) is refused: the kernel
    updates the params in place outside autograd.  torch accepts the config."""
    inp = _config(name, dtype, index)
    init, _ = _model(dtype)
    _Side(PEERS[name]._torch_class, init, inp.kwargs)
    params = [Parameter(t.clone()) for t in init]
    before = [(p.data_ptr(), p.detach().clone()) for p in params]
    with pytest.raises(ValueError, match="differentiable"):
        PEERS[name](params, **copy.deepcopy(inp.kwargs))
    for p, (ptr, value) in zip(params, before):  # refused before anything was written
        assert p.data_ptr() == ptr and torch.equal(p.detach(), value)


@pytest.mark.parametrize("name", [n for n, c in PEERS.items()
                                  if "capturable" in inspect.signature(c._torch_class).parameters])
def test_refuses_capturable(name):
    """capturable=True is for CUDA graph capture; adamfast steps CPU tensors.  No
    optim_db config sets it on CPU (those are CUDA-only configs)."""
    params = [Parameter(t.clone()) for t in _model(torch.float32)[0]]
    with pytest.raises(ValueError, match="capturable"):
        PEERS[name](params, capturable=True)


def _error_input(name, index):
    """A fresh copy of error input ``index`` (its sample params are new tensors)."""
    return _info(name).optim_error_inputs_func(device=DEVICE, dtype=torch.float32)[index]


def _raised(build, step=False):
    """The exception ``build()`` (then ``.step()`` when ``step``) raises, or None."""
    try:
        opt = build()
        if step:
            opt.step()
    except Exception as e:  # noqa: BLE001  (the type is what is compared)
        return e
    return None


@pytest.mark.parametrize("name,index", ERRORS)
def test_error_input(name, index):
    err = _error_input(name, index)
    inp = err.optimizer_error_input
    tcls, acls = PEERS[name]._torch_class, PEERS[name]
    at_step = err.error_on == co.OptimizerErrorEnum.STEP_ERROR

    if issubclass(err.error_type, Warning):
        # Documented deviation: a param listed twice in a group is refused with a
        # ValueError where torch warns and steps it once (with flat buffers, one
        # tensor cannot hold two places in the layout).
        assert "duplicate" in inp.desc, f"a new warning-type error input: {inp.desc}"
        with pytest.warns(err.error_type, match=err.error_regex):
            tcls(inp.params, **inp.kwargs)
        inp = _error_input(name, index).optimizer_error_input
        with warnings.catch_warnings():
            # adamfast runs torch's add_param_group first, which warns, then refuses.
            warnings.simplefilter("ignore", err.error_type)
            with pytest.raises(ValueError, match="twice"):
                acls(inp.params, **inp.kwargs)
        return

    if _foreach_only(err):
        # torch refuses this for its foreach implementation only: the same config
        # without foreach is valid.  adamfast documents foreach as accepted and
        # ignored, so it must accept the config and step as torch's for-loop does.
        init, x = _model(torch.float32)
        ref = _Side(tcls, init, {**inp.kwargs, "foreach": False})
        mine = _Side(acls, init, inp.kwargs)
        for i in range(3):
            _step_pair(ref, mine, x, i)
            _compare(ref, mine, f"after step {i + 1}", ignore=("foreach",))
        return

    expected = _raised(lambda: tcls(inp.params, **inp.kwargs), at_step)
    assert expected is not None and isinstance(expected, err.error_type), \
        f"torch no longer raises {err.error_type.__name__} here: got {expected!r}"
    forms = [None] if inp.params is not None else [None, "real"]
    for form in forms:
        inp = _error_input(name, index).optimizer_error_input
        params = inp.params
        if form == "real":
            # torch's test_errors passes params=None, relying on the hyperparameters
            # being checked before the params; with a real param the refusal must
            # come from the hyperparameters all the same.
            params = [Parameter(torch.randn(1, 1))]
        got = _raised(lambda: acls(params, **inp.kwargs))
        if got is None and at_step:
            # A refusal at construction is as good (nothing written); else at step.
            got = _raised(lambda: acls(params, **inp.kwargs), step=True)
        where = "" if form is None else " (with a real param instead of None)"
        assert got is not None, \
            f"adamfast accepts it{where}; torch raises {type(expected).__name__}: {expected}"
        assert isinstance(got, type(expected)), \
            f"adamfast raises {type(got).__name__}{where} ({got}); torch " \
            f"{type(expected).__name__} ({expected})"
