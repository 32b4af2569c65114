"""What the tests know about each algorithm, in one place: one ``AlgorithmCase`` per
registry entry (``adamfast.algorithms.ALGORITHMS``), in the manner of torch's
``optim_db`` (``torch.testing._internal.common_optimizers``).

Tests parametrize over ``CASES`` and read a case's fields and capability flags;
none of them tests an algorithm's name to include or leave it out.
``tests/test_optim_cases.py`` checks the table against the package: one case
per registry entry, every kind covered, and each flag agreeing with what the
package does.  A registry entry without a case is a KeyError when the test
files that read ``CASES[name]`` are collected: loud, never a silent skip.

Adding an algorithm
-------------------

Append one ``AlgorithmCase`` to ``_ALL`` below, in the registry's order.  The
fields a new entry must think about:

* ``name`` (the class name, ``spec.name``) and ``peer`` (``spec.peer``:
  ``"torch.optim.<Name>"``, ``"timm.optim.<Name>"``, or a formula such as
  ``"optax.lion"``);
* ``kinds``: per kind of the spec, hyperparameters that select that kind and
  switch on as much of its arithmetic as they can (weight decay, ...); every
  kind must have one (``test_family.py`` runs each kind on every backend and
  dtype against the reference, bit for bit);
* ``quadratic_lr``: the learning rate of the convergence test on a quadratic
  (1500 steps to within 0.05 of the minimum); ``rosenbrock_lr`` and
  ``rosenbrock_steps`` if the defaults (2e-2, 4000 steps) do not converge;
* with a ``torch.optim`` peer: ``peer_cases`` (the defaults first, then each
  switch and the weight decay modes; compared with torch element by element
  in ``test_family_torch.py`` and ``test_torch_dropin.py``), ``parity_lr``
  when 3e-3 is too small or too large for the algorithm to move in 20 steps;
  the signature is taken from torch's class (plus ``extra_keywords``);
* with any other peer: ``peer_keywords``, the peer's constructor keywords and
  defaults in order (the class's signature is checked against it), and
  ``peer_test``, the file (or ``file::test``) comparing it with that peer;
* ``rich_kw``: the one configuration used by tests that run a class in a
  single configuration (the guarded step, interrupts, stateful tests):
  switch on the structural state the defaults leave off (momentum, ...);
* the flags, when they hold: ``c_fast_path`` (``spec.c_step``), ``step_in_group``
  (``spec.torch_step_in_group``), ``sparse_grads`` (adamfast.torch takes a
  sparse gradient as torch does), ``generated_functional`` (False when the
  functional step is hand-written, as ``adam_step``), ``no_sqrt_or_div`` (kinds
  whose update has neither: nothing for ``test_vectorized.py`` to look for);
* ``deviations``: documented differences from the peer that a test has to
  accommodate, as ``{key: reason}``; the tests read the key.

Special maths (a peer outside torch, a property only this algorithm has) goes
in the algorithm's own test file, as ``test_adan.py``.
"""

from dataclasses import dataclass, field

# adamfast's keywords on every class (the guarded step and the backend).
GUARD_KEYWORDS = ("backend", "max_grad_norm", "skip_nonfinite", "ema_decay")

# Deviation keys the tests read.
# torch keeps a per-group scalar of the step (NAdam's mu_product) in its default
# dtype; adamfast computes it in float64: compare under torch's default dtype
# float64 whenever float64 params take part.
GROUP_SCALAR_DTYPE = "group_scalar_dtype"


@dataclass(frozen=True)
class AlgorithmCase:
    name: str
    peer: str
    kinds: dict
    quadratic_lr: float
    rosenbrock_lr: float = 2e-2
    rosenbrock_steps: int = 4000
    peer_cases: tuple = ()
    parity_lr: float = 3e-3
    peer_keywords: tuple | None = None
    peer_test: str | None = None
    extra_keywords: tuple = ()
    rich_kw: dict = field(default_factory=dict)
    c_fast_path: bool = False
    step_in_group: bool = False
    sparse_grads: bool = False
    generated_functional: bool = True
    no_sqrt_or_div: tuple = ()
    deviations: dict = field(default_factory=dict)
    notes: str = ""

    @property
    def torch_peer(self):
        """The peer is a torch.optim class: parity, checkpoints and signature from torch."""
        return self.peer.startswith("torch.optim.")

    @property
    def torch_name(self):
        return self.peer.rsplit(".", 1)[1] if self.torch_peer else None

    @property
    def structural_switches(self):
        """Hyperparameters that change the kind (AMSGrad, momentum, centered)."""
        return len(self.kinds) > 1

    def __str__(self):  # pytest ids
        return self.name


_ADAM_EXTRAS = ("eps_hat", "eps_root", "bias_correction", "nesterov")

_ALL = (
    AlgorithmCase(
        "Adam", "torch.optim.Adam",
        kinds={"adam": dict(weight_decay=0.1),
               "adam_amsgrad": dict(amsgrad=True, weight_decay=0.1)},
        quadratic_lr=0.05,
        peer_cases=({}, {"weight_decay": 0.1, "amsgrad": True}, {"maximize": True},
                    {"decoupled_weight_decay": True, "weight_decay": 0.1}),
        extra_keywords=_ADAM_EXTRAS, rich_kw={"weight_decay": 0.1}, c_fast_path=True,
        # adam_step is hand-written (exp_avg, exp_avg_sq, beta1, beta2, decoupled):
        # test_against_reference.py and test_fast_path.py cover it.
        generated_functional=False),
    AlgorithmCase(
        "AdamW", "torch.optim.AdamW",
        kinds={"adam": dict(weight_decay=0.1),
               "adam_amsgrad": dict(amsgrad=True, weight_decay=0.1)},
        quadratic_lr=0.05,
        peer_cases=({}, {"amsgrad": True, "weight_decay": 0.05}),
        extra_keywords=_ADAM_EXTRAS, rich_kw={"amsgrad": True}, c_fast_path=True,
        generated_functional=False),
    AlgorithmCase(
        "Adamax", "torch.optim.Adamax",
        kinds={"adamax": dict(weight_decay=0.01)}, quadratic_lr=0.05,
        peer_cases=({}, {"weight_decay": 0.1, "maximize": True})),
    AlgorithmCase(
        "NAdam", "torch.optim.NAdam",
        kinds={"nadam": dict(weight_decay=0.01)}, quadratic_lr=0.05,
        peer_cases=({}, {"weight_decay": 0.1},
                    {"weight_decay": 0.1, "decoupled_weight_decay": True,
                     "momentum_decay": 0.01}),
        deviations={GROUP_SCALAR_DTYPE:
                    "mu_product is computed in float64 whatever the params' dtype; torch "
                    "keeps it in its default dtype, so with float64 params and the "
                    "default float32 torch's bias correction carries float32 rounding"}),
    AlgorithmCase(
        "RAdam", "torch.optim.RAdam",
        kinds={"radam": dict(weight_decay=0.01)}, quadratic_lr=0.05,
        # RAdam's first steps are momentum SGD (torch's too): 2e-2 diverges there.
        rosenbrock_lr=5e-3,
        peer_cases=({}, {"weight_decay": 0.1},
                    {"weight_decay": 0.1, "decoupled_weight_decay": True})),
    AlgorithmCase(
        "Adagrad", "torch.optim.Adagrad",
        kinds={"adagrad": dict(weight_decay=0.01, lr_decay=0.01)},
        quadratic_lr=0.5, rosenbrock_lr=0.3, parity_lr=0.05,
        peer_cases=({}, {"lr_decay": 0.01, "initial_accumulator_value": 0.1,
                         "weight_decay": 0.1}),
        rich_kw={"lr_decay": 0.01}, sparse_grads=True),
    AlgorithmCase(
        "RMSprop", "torch.optim.RMSprop",
        kinds={"rmsprop": dict(weight_decay=0.01), "rmsprop_centered": dict(centered=True),
               "rmsprop_momentum": dict(momentum=0.9),
               "rmsprop_centered_momentum": dict(centered=True, momentum=0.9)},
        quadratic_lr=0.01, parity_lr=0.005,
        peer_cases=({}, {"centered": True}, {"momentum": 0.9},
                    {"centered": True, "momentum": 0.5, "weight_decay": 0.1}),
        rich_kw={"momentum": 0.5, "centered": True}),
    AlgorithmCase(
        "SGD", "torch.optim.SGD",
        kinds={"sgd": dict(weight_decay=0.01), "sgd_momentum": dict(momentum=0.9, nesterov=True)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3, parity_lr=0.01,
        peer_cases=({}, {"momentum": 0.9},
                    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
                    {"momentum": 0.9, "nesterov": True, "maximize": True}),
        rich_kw={"momentum": 0.9}, sparse_grads=True, no_sqrt_or_div=("sgd", "sgd_momentum")),
    AlgorithmCase(
        "Adadelta", "torch.optim.Adadelta",
        kinds={"adadelta": dict(weight_decay=0.01)},
        quadratic_lr=1.0, rosenbrock_lr=0.05,
        rosenbrock_steps=30000,  # Adadelta is slow there
        parity_lr=0.5, peer_cases=({}, {"rho": 0.8, "weight_decay": 0.1})),
    AlgorithmCase(
        "Lion", "optax.lion",
        kinds={"lion": dict(weight_decay=0.1)},
        quadratic_lr=0.01, rosenbrock_lr=3e-3,
        parity_lr=1e-4,  # its default
        peer_keywords=(("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0),
                       ("maximize", False)),
        peer_test="tests/test_family_torch.py::test_lion_matches_optax_formula",
        no_sqrt_or_div=("lion",)),
    AlgorithmCase(
        "Adan", "timm.optim.Adan",
        kinds={"adan": dict(weight_decay=0.05)}, quadratic_lr=0.05,
        peer_keywords=(("lr", 1e-3), ("betas", (0.98, 0.92, 0.99)), ("eps", 1e-8),
                       ("weight_decay", 0.0), ("no_prox", False), ("caution", False)),
        peer_test="tests/test_adan.py", step_in_group=True,
        deviations={"caution": "timm's Cautious Optimizers mask is refused (test_adan.py)"},
        notes="against timm within a bound derived from the peaks of exp_avg and "
              "exp_avg_sq (test_adan._assert_near_timm): timm rounds differently"),
    AlgorithmCase(
        "Lamb", "timm.optim.Lamb",
        kinds={"lamb": dict(weight_decay=0.01)}, quadratic_lr=0.005,
        peer_keywords=(("lr", 1e-3), ("bias_correction", True), ("betas", (0.9, 0.999)),
                       ("eps", 1e-6), ("weight_decay", 0.01), ("grad_averaging", True),
                       ("max_grad_norm", 1.0), ("trust_clip", False), ("always_adapt", False),
                       ("decoupled_decay", False), ("caution", False),
                       ("corrected_weight_decay", False)),
        peer_test="tests/test_lamb.py", step_in_group=True,
        deviations={"caution": "timm's Cautious Optimizers mask is refused (test_lamb.py)",
                    "corrected_weight_decay": "refused (test_lamb.py)"},
        notes="two passes with a per-tensor trust ratio (adamfast._reduce); against timm "
              "within bounds in ulps derived in test_lamb.py"),
)

CASES = {c.name: c for c in _ALL}
TORCH_CASES = {n: c for n, c in CASES.items() if c.torch_peer}


def peer_case_params():
    """(name, kwargs) for every hyperparameter case of a torch peer, with readable ids."""
    import pytest

    return [pytest.param(n, kw, id=f"{n}-" + ("-".join(f"{k}={v}" for k, v in kw.items())
                                             or "defaults"))
            for n, c in TORCH_CASES.items() for kw in c.peer_cases]


def kind_cases():
    """Per kind: (spec, hyperparameters validated as float64) selecting it with its
    arithmetic switched on; the first algorithm declaring a kind supplies it."""
    from adamfast.algorithms import ALGORITHMS

    cases = {}
    for spec in ALGORITHMS.values():
        for kind in spec.kinds:
            if kind in cases:
                continue
            hp = spec.validate(dict(spec.defaults, **CASES[spec.name].kinds[kind]))
            assert spec.kind_of([hp]) == kind, (spec.name, kind)
            cases[kind] = (spec, hp)
    return cases


def buffer_switches():
    """Per algorithm with a torch.optim peer whose per-group switches decide which state
    buffers are updated (the kinds): ``(name, on, off)``, ``on`` the hyperparameters
    of its largest kind, ``off`` those of a smaller kind (the switches ``on`` sets,
    at their defaults, then that kind's case).  torch leaves a buffer that a group's
    settings do not use untouched, and uses it again when they switch back."""
    from adamfast.algorithms import ALGORITHMS

    out = []
    for name, case in TORCH_CASES.items():
        if not case.structural_switches:
            continue
        spec = ALGORITHMS[name]
        full = max(case.kinds, key=lambda k: len(spec.kinds[k]))
        on = case.kinds[full]
        for kind, kw in case.kinds.items():
            if kind != full:
                off = dict({k: spec.defaults[k] for k in on}, **kw)
                out.append((name, on, off))
    return out


def buffer_switch_params():
    """buffer_switches() as pytest params with readable ids."""
    import pytest

    def text(kw):
        return ",".join(f"{k}={v}" for k, v in kw.items())

    return [pytest.param(n, on, off, id=f"{n}-off:{text(off)}")
            for n, on, off in buffer_switches()]
