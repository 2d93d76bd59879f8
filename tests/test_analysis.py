"""Closed-form extraction, Taylor expansion and run-directory reading (toolkit.analysis.fit, closed_form, rundir)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import write_run
import sympy
import torch

import losses
from losses import Y_PRED, Y_TRUE
from toolkit.analysis.fit import approximate_loss, fidelity, loss_values, taylor_expansion
from toolkit.analysis.rundir import AnalysisError, find_runs, load_loss_source, read_run, run_labels


def _grid_values(expression, task, p, y):
    return loss_values(losses.SymbolicLoss(expression, task=task, dtype=torch.float64), p, y)


@pytest.fixture(scope="module")
def cross_entropy_imitation() -> losses.MLPLoss:
    """A small MLP loss trained for a moment to imitate binary cross-entropy (finite: clipped at 0.02)."""
    torch.manual_seed(1)
    loss = losses.MLPLoss(hidden=(16, 16))
    optimiser = torch.optim.Adam(loss.parameters(), lr=1e-2)
    for _ in range(300):
        p, y = torch.rand(256), (torch.rand(256) < 0.5).float()
        target = -y * torch.log(p.clamp_min(0.02)) - (1 - y) * torch.log((1 - p).clamp_min(0.02))
        error = ((loss.elementwise(p, y) - target) ** 2).mean()
        optimiser.zero_grad()
        error.backward()
        optimiser.step()
    assert float(error.detach()) < 0.1
    return loss


def test_taylor_loss_is_recovered_exactly():
    torch.manual_seed(0)
    taylor = losses.TaylorLoss.taylorglo()
    result = approximate_loss(taylor, target_r2=1 - 1e-15)
    assert result.r2 > 1 - 1e-12 and result.meets_target
    assert result.n_terms <= 8  # a cubic in y_pred per target value, without a constant (TaylorGLO drops it)
    p = np.random.default_rng(0).random(50)
    for label in (0.0, 1.0):
        y = np.full_like(p, label)
        np.testing.assert_allclose(_grid_values(result.expression, "classification", p, y),
                                   loss_values(taylor, p, y), rtol=1e-9, atol=1e-9)


def test_regression_taylor_surface_is_recovered_exactly():
    torch.manual_seed(0)
    taylor = losses.TaylorLoss(task="regression", order=2)
    result = approximate_loss(taylor, target_r2=1 - 1e-15, points=21)
    assert result.r2 > 1 - 1e-12 and result.n_terms <= 6
    rng = np.random.default_rng(1)
    p, y = rng.uniform(-3, 3, 40), rng.uniform(-3, 3, 40)
    np.testing.assert_allclose(_grid_values(result.expression, "regression", p, y), loss_values(taylor, p, y),
                               rtol=1e-8, atol=1e-8)


def test_cross_entropy_imitation_fits_with_few_terms(cross_entropy_imitation):
    result = approximate_loss(cross_entropy_imitation, max_terms=12, target_r2=0.9995)
    assert result.n_terms <= 12
    assert result.r2 >= 0.999 and min(result.r2_by_part.values()) >= 0.999
    assert set(result.parts) == {"y=1", "y=0"}
    # The reported fidelity is that of the printed formula, re-parsed from its text.
    reparsed = losses.SymbolicLoss(str(result.expression), dtype=torch.float64).to_sympy()
    again = fidelity(reparsed, cross_entropy_imitation)
    assert again["r2"] == pytest.approx(result.r2, abs=1e-6)
    assert again["max_abs_error"] == pytest.approx(result.max_abs_error, rel=1e-3, abs=1e-6)
    # Its ℓ1 falls with the probability of the true class, like cross-entropy.
    values = _grid_values(result.expression, "classification", np.array([0.05, 0.5, 0.95]), np.ones(3))
    assert values[0] > values[1] > values[2]


def test_known_closed_forms_are_read_back():
    result = approximate_loss(losses.CrossEntropyLoss(binary=True), domain=(0.001, 0.999))
    assert result.n_terms == 2 and result.r2 > 1 - 1e-9
    expected = -Y_TRUE * sympy.log(Y_PRED) - (1 - Y_TRUE) * sympy.log(1 - Y_PRED)
    assert float(sympy.simplify(sympy.nsimplify(result.expression) - expected)) == 0
    square = approximate_loss(losses.SquaredErrorLoss(), points=21)
    assert square.n_terms == 3 and square.r2 > 1 - 1e-12


def test_every_result_trains_with_symbolic_loss(cross_entropy_imitation):
    logits = torch.randn(8, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    approx = approximate_loss(cross_entropy_imitation, max_terms=6)
    expressions = [approx.expression, taylor_expansion(cross_entropy_imitation, y_pred=0.5, order=3),
                   losses.SymbolicLoss(approx.expression).to_sympy()]
    for expression in expressions:
        loss = losses.SymbolicLoss(expression)
        value = loss(logits, labels)
        grad_logits, grad_constants = torch.autograd.grad(value, [logits, loss.constants])
        assert torch.isfinite(value) and torch.isfinite(grad_logits).all() and torch.isfinite(grad_constants).all()
    assert isinstance(approx.to_loss(), losses.SymbolicLoss)
    json.dumps(approx.summary())


def _sympy_derivatives(expression, point: dict, order: int) -> dict:
    out = {}
    for a in range(order + 1):
        for b in range(order + 1 - a):
            term = expression
            if a:
                term = sympy.diff(term, Y_TRUE, a)
            if b:
                term = sympy.diff(term, Y_PRED, b)
            out[(a, b)] = float(term.subs(point).evalf())
    return out


def test_taylor_expansion_matches_sympy_calculus():
    torch.manual_seed(3)
    loss = losses.MLPLoss(hidden=(3,), dtype=torch.float64)
    exact = loss.to_sympy()
    expansion = taylor_expansion(loss, y_pred=0.3, y_true=0.7, order=3, digits=None)
    point = {Y_PRED: 0.3, Y_TRUE: 0.7}
    expected = _sympy_derivatives(exact, point, 3)
    got = _sympy_derivatives(expansion, point, 3)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_classification_taylor_expansion_is_one_polynomial_per_target():
    torch.manual_seed(0)
    taylor = losses.TaylorLoss.taylorglo(dtype=torch.float64)
    expansion = taylor_expansion(taylor, y_pred=0.4, order=3, digits=None)
    p = np.linspace(0, 1, 11)
    for label in (0.0, 1.0):  # a cubic in y_pred is its own third-order expansion
        y = np.full_like(p, label)
        np.testing.assert_allclose(_grid_values(expansion, "classification", p, y), loss_values(taylor, p, y),
                                   atol=1e-12)
    rounded = taylor_expansion(taylor, y_pred=0.4, order=1, digits=3)
    assert all(len(str(abs(float(f))).rstrip("0").split(".")[-1]) <= 3 for f in rounded.atoms(sympy.Float)
               if abs(float(f)) < 1)
    with pytest.raises(AnalysisError, match="regression"):
        taylor_expansion(losses.SquaredErrorLoss(), y_pred=0.0)
    with pytest.raises(AnalysisError, match="order"):
        taylor_expansion(taylor, y_pred=0.4, order=0)


def test_bad_domains_and_budgets_are_user_errors():
    with pytest.raises(AnalysisError, match="not finite"):
        approximate_loss(losses.SymbolicLoss("-y*log(y_pred)"))
    with pytest.raises(AnalysisError, match="lo < hi"):
        approximate_loss(losses.CrossEntropyLoss(), domain=(1.0, 0.5))
    with pytest.raises(AnalysisError, match="max_terms"):
        approximate_loss(losses.CrossEntropyLoss(), max_terms=1)


# ---------------------------------------------------------------- run directories
def _write_run(path, *, loss="adalfl", seed=0, snapshot_steps=(0, 10, 20), truncated=False) -> None:
    torch.manual_seed(seed)
    snapshot = losses.TaylorLoss(order=2)
    write_run(path, loss=loss, seed=seed, error=0.1, steps=20, config={"loss_param": "taylor"},
              history=[{"phase": "train", "step": 10, "train_loss": 1.0}],
              snapshots=[(s, snapshot) for s in snapshot_steps], torn_snapshot=truncated)


def test_run_directory_snapshots_and_errors(tmp_path):
    _write_run(tmp_path / "a" / "seed-0", truncated=True)
    run = read_run(tmp_path / "a" / "seed-0")
    assert run.method == "adalfl-taylor" and run.seed == 0
    assert run.snapshot_steps() == [0, 10, 20]  # the half-written last line is ignored
    assert isinstance(run.loss_at(10), losses.TaylorLoss)
    with pytest.raises(AnalysisError, match="no loss snapshot at step 15.*0, 10, 20"):
        run.loss_at(15)
    with pytest.raises(AnalysisError, match="no loss.json"):
        run.loss_at()
    with pytest.raises(AnalysisError, match="does not exist"):
        read_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="not a run directory"):
        read_run(tmp_path / "empty")
    loss, task = load_loss_source(tmp_path / "a" / "seed-0", step=20)
    assert task == "classification"
    losses.save_loss(loss, tmp_path / "loss.json")
    assert load_loss_source(tmp_path / "loss.json")[0].kind == "taylor"
    with pytest.raises(AnalysisError, match="--step needs a run directory"):
        load_loss_source(tmp_path / "loss.json", step=0)


def test_find_runs_expands_parents_and_labels_are_unique(tmp_path):
    _write_run(tmp_path / "adalfl" / "seed-0")
    _write_run(tmp_path / "ce" / "seed-0", loss="ce", snapshot_steps=())
    runs = find_runs([tmp_path])
    assert sorted(r.method for r in runs) == ["adalfl-taylor", "ce"]
    assert sorted(run_labels(runs)) == ["adalfl_seed-0", "ce_seed-0"]
    (tmp_path / "nothing" / "below").mkdir(parents=True)
    with pytest.raises(AnalysisError, match="no run directories"):
        find_runs([tmp_path / "nothing"])


def test_approximation_of_a_snapshot_has_a_finite_fidelity(tmp_path):
    _write_run(tmp_path / "run")
    loss = read_run(tmp_path / "run").loss_at(0)
    result = approximate_loss(loss)
    assert math.isfinite(result.r2) and result.r2 > 0.9999 and result.n_terms <= 6


def test_method_labels(tmp_path):
    cases = [({"loss": "ce"}, "ce"), ({"loss": "ml3", "config": {"loss_param": "taylor"}}, "ml3-taylor"),
             ({"loss": "taylorglo"}, "taylorglo"), ({"loss": "reused", "loss_from": "/runs/a/approx.json"},
                                                    "reused:approx.json"),
             ({"loss": "reused-adapt", "loss_from": "-y*log(y_pred)"}, "reused-adapt:-y*log(y_pred)"), ({}, "unknown")]
    for i, (results, label) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(results))
        assert read_run(tmp_path / str(i)).method == label
