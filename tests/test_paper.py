"""``python -m adamfast paper``: the models' hand-written gradients, the
textbook baseline, the experiments in their tiny configuration, determinism,
the command line and the optional dependencies."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import adamfast
from adamfast.paper import cli, textbook
from adamfast.paper import experiments as E
from adamfast.paper.data import BinaryRows, MissingDependency, digits, synthetic_bow
from adamfast.paper.models import MLP, Autoencoder, LogisticRegression, SoftmaxRegression


# --- gradients against central finite differences (float64) ------------------

def _small_bow(rng):
    X, y, _ = synthetic_bow(n_docs=12, vocab=9, seed=3)
    assert 0 < X.density() < 1
    return X, y


MODELS = {
    "softmax": lambda rng: (SoftmaxRegression(5, 3, l2=0.1), rng.random((7, 5)),
                            rng.integers(0, 3, 7)),
    "mlp-dropout": lambda rng: (MLP(5, 6, 3, p_in=0.2, p_hidden=0.5), rng.random((7, 5)),
                                rng.integers(0, 3, 7)),
    "mlp": lambda rng: (MLP(5, 6, 3, p_in=0.0, p_hidden=0.0), rng.random((7, 5)),
                        rng.integers(0, 3, 7)),
    "bow-dropout": lambda rng: (LogisticRegression(9, p_in=0.5), *_small_bow(rng)),
    "autoencoder": lambda rng: (Autoencoder(6, 5, 2), rng.random((7, 6)), None),
}


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(1)
    model, X, y = MODELS[name](rng)
    params = [p + 0.1 * rng.standard_normal(p.shape)  # off zero: biases and w start at 0
              for p in model.init(np.random.default_rng(2), np.float64)]

    def loss():
        # A fresh generator each time: the same dropout masks in every evaluation.
        return model.loss_grad(params, X, y, np.random.default_rng(5))

    grads = [np.full_like(p, np.nan) for p in params]
    model.loss_grad(params, X, y, np.random.default_rng(5), grads)
    h = 1e-6
    for p, g in zip(params, grads):
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = loss()
            p[i] = old - h
            down = loss()
            p[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)
    assert any(np.any(g != 0) for g in grads)


def test_dropout_changes_the_mlp_loss_and_cost_has_none():
    rng = np.random.default_rng(0)
    model = MLP(5, 6, 3, p_in=0.2, p_hidden=0.5)
    params = model.init(rng, np.float64)
    X, y = rng.random((20, 5)), rng.integers(0, 3, 20)
    with_noise = [model.loss_grad(params, X, y, np.random.default_rng(s)) for s in (1, 2)]
    assert with_noise[0] != with_noise[1]
    assert model.cost(params, X, y) == model.loss_grad(params, X, y, None)


def test_binary_rows_gather_matches_the_dense_matrix():
    X, _, _ = synthetic_bow(n_docs=30, vocab=50, seed=1)
    dense = X.toarray()
    idx = np.array([4, 0, 29, 4])
    np.testing.assert_array_equal(X[idx].toarray(), dense[idx])
    assert isinstance(X[idx], BinaryRows) and X[idx].shape == (4, 50)


# --- the textbook baseline is the same optimizer ------------------------------

OPTIONS = {
    "Adam": {"betas": (0.9, 0.999)},
    "Adamax": {},
    "Adagrad": {},
    "RMSprop": {},
    "Adadelta": {},
    "SGD": {"momentum": 0.9, "nesterov": True},
    "Lion": {},
}


@pytest.mark.parametrize("bias_correction", [True, False])
def test_textbook_adam_matches_adamfast(bias_correction):
    _check_textbook("Adam", dict(OPTIONS["Adam"], bias_correction=bias_correction), 1e-3)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_textbook_matches_adamfast(name):
    _check_textbook(name, OPTIONS[name], adamfast.schedules.inverse_sqrt(0.05))


def _check_textbook(name, options, lr):
    assert set(OPTIONS) == set(textbook.CLASSES)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = getattr(adamfast, name)(params, lr=lr, **options)
    theirs = textbook.make(name, params, lr, **options)
    for _ in range(6):
        for g_ours, g_theirs in zip(ours.grads, theirs.grads):
            g_ours[...] = g_theirs[...] = rng.standard_normal(g_ours.shape)
        ours.step()
        theirs.step()
    for a, b, p0 in zip(ours.params, theirs.params, params):
        assert np.max(np.abs(a - p0)) > 1e-5  # it moved (by far more than the tolerance)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# --- the experiments, tiny -----------------------------------------------------

@pytest.fixture(scope="module")
def quick_outcomes():
    pytest.importorskip("sklearn")
    limit, _ = cli._blas_threads(1)  # as the command runs them
    with limit:
        return {exp.key: cli.run_experiment(exp) for exp in E.experiments(quick=True)}


class adamfast_threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = adamfast.get_num_threads()
        adamfast.set_num_threads(self.n)

    def __exit__(self, *exc):
        adamfast.set_num_threads(self.old)


@pytest.mark.parametrize("key", E.KEYS)
def test_tiny_experiment_loss_decreases_for_every_optimizer(quick_outcomes, key):
    out = quick_outcomes[key]
    assert [s.candidate.label for s in out.searches] == \
        [c.label for c in out.exp.candidates]
    for s in out.searches:
        best = s.best
        assert len(best.costs) == out.exp.epochs + 1
        assert best.final < 0.95 * best.costs[0], (s.candidate.label, best.costs)


@pytest.mark.parametrize("key", E.KEYS)
def test_tiny_experiment_timed_reruns(quick_outcomes, key):
    out = quick_outcomes[key]
    assert out.speed
    for sp in out.speed:
        assert sp.reproduced, sp.label  # the same run twice gives the same curve, bit for bit
        assert sp.agreement < 1e-4, (sp.label, sp.agreement)  # textbook = same optimizer
        assert len(sp.adamfast.step_ns) == len(sp.textbook.step_ns) > 0
        fb, af, tb = sp.medians()
        assert fb > 0 and af > 0 and tb > 0


def test_results_do_not_depend_on_adamfast_threads():
    pytest.importorskip("sklearn")
    # Above 512K elements adamfast's step runs on its pool even when the workers
    # slept during the forward and backward pass (docs/threads.md, "adamfast's pool"), so with 2
    # threads the step is split.
    exp = next(e for e in E.experiments() if e.key == "mlp")
    exp = dataclasses.replace(exp, epochs=2, setup=E._digits_setup(
        lambda: (MLP(64, 720, 10), "MLP"), 384))
    model, X, y, _ = exp.setup()
    cand = exp.candidates[0]
    assert sum(p.size for p in model.init(np.random.default_rng(0), E.DTYPE)) > 512 * 1024
    curves = []
    limit, _ = cli._blas_threads(1)
    with limit:
        for n in (1, 2, 1):
            with adamfast_threads(n):
                curves.append(E.train(exp, (model, X, y), cand, 1e-3).costs)
    assert curves[0][-1] < curves[0][0]
    assert curves[0] == curves[1] == curves[2]


def test_grid_search_picks_the_lowest_mean_cost_and_flags_the_edge():
    runs = {lr: E.Run(lr, [1.0, c, c]) for lr, c in ((0.1, 0.5), (0.3, 0.2), (1.0, float("nan")))}
    s = E.Search(E.Candidate("x", "Adam", (0.1, 0.3, 1.0)), runs)
    assert s.best.lr == 0.3 and not s.at_edge
    del runs[1.0]
    assert E.Search(s.candidate, runs).at_edge


# --- the command line ------------------------------------------------------------

BAD = [
    (["--threads", "0"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["--blas-threads", "0"], "--blas-threads"),
    (["--experiments", "cnn"], "--experiments"),
    (["--experiments"], "--experiments"),
    (["--out", os.devnull], "--out"),
    (["--out", os.path.join(os.devnull, "sub")], "--out"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("args, flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_name_the_argument(args, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert flag in err, err
    assert "grid search" not in out


def test_too_many_threads_is_refused_and_nothing_changed(capsys, tmp_path):
    before = adamfast.get_num_threads()
    out = tmp_path / "new"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--threads", "100000", "--out", str(out), "--no-plots"])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err
    assert adamfast.get_num_threads() == before
    assert not out.exists()


def test_python_m_adamfast_paper_dispatches():
    r = subprocess.run([sys.executable, "-m", "adamfast", "paper", "--threads", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "python -m adamfast paper" in r.stderr and "--threads" in r.stderr
    assert "Traceback" not in r.stderr


# --- optional dependencies ----------------------------------------------------------

def test_missing_scikit_learn_is_a_clear_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependency, match=r"scikit-learn.*adamfast\[paper\]"):
        digits()
    target = tmp_path / "new"
    assert cli.main(["--experiments", "logreg", "--no-plots", "--out", str(target)]) == 1
    out, err = capsys.readouterr()
    assert "scikit-learn is not installed" in err and "pip install 'adamfast[paper]'" in err
    assert "logreg" in err and "Traceback" not in err
    assert "grid search" not in out and not target.exists()


def test_missing_matplotlib_is_a_clear_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["--experiments", "sparse", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "matplotlib is not installed" in err and "--no-plots" in err
    assert "grid search" not in out


@pytest.mark.parametrize("args, flag", [b for b in BAD if b[1] == "--out"])
def test_bad_out_is_named_even_without_matplotlib(monkeypatch, capsys, args, flag):
    # A usage error (exit 2) is reported before a missing package (exit 1).
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_missing_matplotlib_creates_no_directory(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "new" / "figures"
    assert cli.main(["--experiments", "sparse", "--out", str(out)]) == 1
    assert not (tmp_path / "new").exists()


def test_runs_without_any_optional_package(monkeypatch, capsys, tmp_path):
    for name in ("matplotlib", "sklearn", "sklearn.datasets", "threadpoolctl"):
        monkeypatch.setitem(sys.modules, name, None)
    assert cli.main(["--quick", "--experiments", "sparse", "--no-plots",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "BLAS threads not limited" in out and "SYNTHETIC" in out
    assert sorted(os.listdir(tmp_path)) == ["paper.json"]


def test_cli_writes_pngs_and_the_recorded_search(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    assert cli.main(["--quick", "--experiments", "logreg", "biascorr",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for key in ("logreg", "biascorr"):
        with open(tmp_path / f"{key}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{key}.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "paper.json").read_text())
    assert [e["key"] for e in record["experiments"]] == ["logreg", "biascorr"]
    logreg = record["experiments"][0]
    for opt in logreg["optimizers"]:
        grid = {g["lr"]: g["mean_cost"] for g in opt["grid"]}
        assert len(grid) == 2
        assert grid[opt["chosen_lr"]] == min(grid.values())
        assert f"{opt['label']}" in out
    assert record["fingerprint"] in out
    assert "[reproduced]" in out or "[NOT reproduced]" in out
