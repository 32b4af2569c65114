"""The tests' registry of algorithm cases (optim_cases.py) against the package: one case
per registry entry, every kind covered, and every flag saying what the package does."""

import os
import re

import pytest

import adamfast
from adamfast.algorithms import ALGORITHMS
from optim_cases import CASES, TORCH_CASES

HERE = os.path.dirname(os.path.abspath(__file__))


def test_one_case_per_algorithm_in_registry_order():
    assert list(CASES) == list(ALGORITHMS)
    assert list(CASES) == list(adamfast.optim.CLASSES)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_case_agrees_with_the_spec(name):
    spec, case = ALGORITHMS[name], CASES[name]
    assert case.name == spec.name
    assert case.peer == spec.peer
    assert case.c_fast_path == (spec.c_step is not None)
    assert case.step_in_group == spec.torch_step_in_group
    assert case.generated_functional == (name in adamfast.functional.STEPS)
    assert case.generated_functional == (spec.functional_step is None)
    assert case.sparse_grads == spec.torch_sparse_grads
    if case.torch_peer:
        assert tuple(case.extra_keywords) == spec.torch_extra_keywords
    assert set(case.no_sqrt_or_div) <= set(spec.kinds)
    assert set(case.extra_keywords) <= set(spec.defaults)
    assert case.quadratic_lr > 0 and case.rosenbrock_lr > 0 and case.parity_lr > 0
    for key, reason in case.deviations.items():
        assert isinstance(reason, str) and reason, (name, key)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_kind_has_hyperparameters_selecting_it(name):
    spec, case = ALGORITHMS[name], CASES[name]
    assert set(case.kinds) == set(spec.kinds), "a kind without a case runs nowhere"
    for kind, kw in case.kinds.items():
        hp = spec.validate(dict(spec.defaults, **kw))
        assert spec.kind_of([hp]) == kind, (name, kind, kw)
    assert case.structural_switches == (len(spec.kinds) > 1)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_configurations_are_valid(name):
    spec, case = ALGORITHMS[name], CASES[name]
    for kw in (case.rich_kw, *case.peer_cases):
        spec.validate(dict(spec.defaults, **kw))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_peer_is_tested_somewhere(name):
    case = CASES[name]
    if case.torch_peer:
        # test_family_torch and test_torch_dropin run peer_cases, defaults first.
        assert case.peer_cases and case.peer_cases[0] == {}
        assert case.peer_keywords is None and case.peer_test is None
        return
    assert not case.peer_cases, "peer_cases are compared with torch.optim classes only"
    assert case.peer_keywords, "another peer's signature must be written out"
    assert case.peer_test, "another peer needs its own test"
    path, _, test = case.peer_test.partition("::")
    with open(os.path.join(HERE, os.pardir, path)) as f:
        text = f.read()
    if test:
        assert re.search(rf"^def {re.escape(test)}\(", text, re.M), case.peer_test


def test_torch_cases_are_adamfast_torchs_peers():
    torch = pytest.importorskip("torch")
    import adamfast.torch as aft

    with_peer = {n for n, c in aft.CLASSES.items() if c._torch_class is not None}
    assert with_peer == set(TORCH_CASES)
    for name, case in TORCH_CASES.items():
        assert aft.CLASSES[name]._torch_class is getattr(torch.optim, case.torch_name)


# Where an algorithm's or a kind's name may be written: its own files
# (adamfast/algorithms/, and its numba module adamfast/_numba/<module>.py), the
# benchmark and the paper's scripts, which name their rows; and adam_step's spec and
# kinds, as adam_step is Adam's own API.
_NAME_ALLOWED_DIRS = ("algorithms", "bench", "paper")
_NAME_ALLOWED_LINES = {("functional.py", '_ADAM = ALGORITHMS["Adam"]'),
                       ("functional.py", 'kind = "adam_amsgrad" if hp["amsgrad"] else "adam"')}


def _quoted_names(text, names):
    """(line number, line) of every line of ``text`` holding a name of ``names`` as a
    whole string literal ("Adam" or 'Adam', not "Adam's" nor "AdamW")."""
    pattern = re.compile(r"""(["'])(%s)\1""" % "|".join(map(re.escape, names)))
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if pattern.search(line)]


def _numba_modules():
    """The algorithms' own numba modules (adamfast/_numba/<module>.py), from the
    registry's kinds: none where numba is not installed."""
    try:
        import adamfast._numba as nb
    except ImportError:
        return set()
    from adamfast.algorithms import KINDS

    return {nb._MODULES[nb.KINDS.index(kind)] for kind in KINDS}


def test_quoted_names_finds_literals_only():
    text = 'a = ("SGD", \'Adagrad\')\nb = "Adam\'s"\nc = "AdamWx"\nd = f"{x}Adam"\n'
    assert _quoted_names(text, ("SGD", "Adagrad", "Adam")) == [(1, 'a = ("SGD", \'Adagrad\')')]


def test_no_algorithm_name_outside_its_own_files():
    """Group state and per-class behaviour come from the spec (adamfast/algorithms/
    _spec.py's torch_* fields, functional_step and c_step): no module tests a class's
    name or a kind's."""
    from adamfast.algorithms import KINDS

    root = os.path.dirname(adamfast.__file__)
    own = {os.path.join("_numba", f"{module}.py") for module in _numba_modules()}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in _NAME_ALLOWED_DIRS:
            continue
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            if not fn.endswith((".py", ".pyx", ".pxi")):
                continue
            path = os.path.join(dirpath, fn)
            relpath = os.path.normpath(os.path.join(rel, fn))
            if relpath in own:
                continue
            with open(path, encoding="utf-8") as f:
                hits = _quoted_names(f.read(), tuple(ALGORITHMS) + tuple(KINDS))
            found += [f"{relpath}:{i}: {line}" for i, line in hits
                      if (relpath, line) not in _NAME_ALLOWED_LINES]
    assert not found, "algorithm names outside their own files:\n" + "\n".join(found)


# The hand-written kernels naming a kind: Adam's whole step in C (spec.c_step).
_KIND_ALLOWED_LINES = {("_adam_fast.pxi", '_ADAM = KINDS.index("adam")'),
                       ("_adam_fast.pxi", '_ADAM_AMSGRAD = KINDS.index("adam_amsgrad")')}


def test_no_kind_named_in_the_shared_kernels():
    """kernels/ outside algorithms/ names no kind (setup.py renders every per-kind line,
    the reduce dispatch included, into _kinds.pxi): a new kind edits no shared file."""
    kernels = os.path.join(HERE, os.pardir, "kernels")
    if not os.path.isdir(kernels):
        pytest.skip("not a source checkout")
    from adamfast.algorithms import KINDS

    names = "|".join(map(re.escape, sorted(KINDS, key=len, reverse=True)))
    pattern = re.compile(rf"""\b_[Ker]_({names})\b|(["'])({names})\2""")
    found = []
    for fn in sorted(os.listdir(kernels)):
        if not fn.endswith((".pxi", ".pyx", ".in", ".h")) or fn == "_kinds.pxi":
            continue
        with open(os.path.join(kernels, fn), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if pattern.search(line) and (fn, line.strip()) not in _KIND_ALLOWED_LINES:
                    found.append(f"kernels/{fn}:{i}: {line.strip()}")
    assert not found, "kinds named in shared kernel files:\n" + "\n".join(found)
