"""Formulas: to_sympy / lambdify / SymbolicLoss round trip / to_python / LaTeX, all in float64."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sympy
import torch
from test_losses_cases import CASE_IDS, F64, comparable, element_inputs, is_cross_entropy, make_loss

from losses import Y_PRED, Y_TRUE, MLPLoss, SymbolicLoss, TaylorLoss
from losses.printing import formula_string, latex_string

TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def _lambdified(expr: sympy.Expr, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    function = sympy.lambdify((Y_PRED, Y_TRUE), expr)
    with np.errstate(all="ignore"):
        values = np.broadcast_to(function(y_pred.numpy(), y_true.numpy()), y_pred.shape)
    return torch.from_numpy(np.array(values, dtype=np.float64))


@pytest.mark.parametrize("case", CASE_IDS)
def test_to_sympy_uses_only_the_two_public_symbols(case: str) -> None:
    expr = make_loss(case).to_sympy()
    assert expr.free_symbols <= {Y_PRED, Y_TRUE}
    assert Y_PRED == sympy.Symbol("y_pred") and Y_TRUE == sympy.Symbol("y")


@pytest.mark.parametrize("case", CASE_IDS)
def test_lambdify_of_to_sympy_equals_elementwise(case: str) -> None:
    loss = make_loss(case)
    expr = loss.to_sympy()
    # NumPy's exp overflows beyond 709, so inputs of ±1e3 only where the formula has no exp.
    y_pred, y_true = element_inputs(loss.task, large=not expr.has(sympy.exp))
    mask = comparable(loss, y_pred)
    expected = loss.elementwise(y_pred, y_true).detach()
    torch.testing.assert_close(_lambdified(expr, y_pred, y_true)[mask], expected[mask], **TOLERANCE)


@pytest.mark.parametrize("case", CASE_IDS)
def test_round_trip_through_symbolic_loss_agrees_on_edges(case: str) -> None:
    loss = make_loss(case)
    y_pred, y_true = element_inputs(loss.task, large=True)
    rebuilt = SymbolicLoss(loss.to_sympy(), task=loss.task, dtype=F64)
    again = SymbolicLoss(rebuilt.to_sympy(), task=loss.task, dtype=F64)
    mask = comparable(loss, y_pred)
    expected = loss.elementwise(y_pred, y_true).detach()
    for module in (rebuilt, again):
        torch.testing.assert_close(module.elementwise(y_pred, y_true).detach()[mask], expected[mask], **TOLERANCE)


@pytest.mark.parametrize("case", CASE_IDS)
def test_to_python_source_equals_elementwise_everywhere(case: str) -> None:
    loss = make_loss(case)
    source = loss.to_python()
    assert "def loss(y_pred, y):" in source
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - our own generated code.
    y_pred, y_true = element_inputs(loss.task, large=True)
    torch.testing.assert_close(namespace["loss"](y_pred, y_true), loss.elementwise(y_pred, y_true).detach(),
                               **TOLERANCE)


@pytest.mark.parametrize("case", ["ce", "mse", "taylorglo", "mlp", "symbolic"])
def test_to_latex_is_sympy_latex_of_the_formula(case: str) -> None:
    loss = make_loss(case)
    assert loss.to_latex() == sympy.latex(loss.to_sympy())


def test_fast_printers_match_sympy_printers_on_a_network() -> None:
    torch.manual_seed(0)
    expr = MLPLoss(hidden=(5, 4), bias=True).to_sympy()
    assert formula_string(expr) == str(expr)
    assert latex_string(expr) == sympy.latex(expr)


def test_cross_entropy_formula_is_the_unclamped_closed_form() -> None:
    loss = make_loss("ce")
    assert sympy.simplify(loss.to_sympy() - (-Y_TRUE * sympy.log(Y_PRED))) == 0
    y_pred = torch.tensor([0.0, 0.0, 0.5], dtype=F64)
    y_true = torch.tensor([0.0, 1.0, 1.0], dtype=F64)
    tiny = torch.finfo(F64).tiny
    expected = torch.tensor([0.0, -np.log(tiny), np.log(2.0)], dtype=F64)
    torch.testing.assert_close(loss.elementwise(y_pred, y_true), expected)


def test_squared_error_formula() -> None:
    assert sympy.expand(make_loss("mse").to_sympy() - (Y_PRED - Y_TRUE) ** 2) == 0


def test_formula_floats_carry_the_exact_float64_parameters() -> None:
    loss = make_loss("taylorglo")
    values = {float(f) for f in loss.to_sympy().atoms(sympy.Float)}
    assert -0.3 in values or 0.3 in values  # The centre c_y = 0.3 appears in (y - 0.3).
    for theta, term in zip(loss.coefficients.tolist(), loss.terms):
        assert -theta * term.scale in {-v for v in values} or theta * term.scale in values


def test_mlp_formula_is_the_network_written_out() -> None:
    torch.manual_seed(0)
    loss = MLPLoss(hidden=(1,), dtype=F64)
    (w1, v1), (w2,) = loss.layers[0].weight.tolist()[0], loss.layers[1].weight.tolist()[0]
    z = w1 * Y_PRED + v1 * Y_TRUE
    softplus_2 = sympy.log(1 + sympy.exp(2 * z)) / 2
    hidden = sympy.Rational(1, 4) * z + sympy.Rational(3, 4) * softplus_2
    expected = sympy.log(1 + sympy.exp(w2 * hidden))
    for point in [(0.3, 1.0), (0.9, 0.0), (-2.0, 5.0)]:
        subs = {Y_PRED: point[0], Y_TRUE: point[1]}
        assert float(loss.to_sympy().evalf(30, subs=subs)) == pytest.approx(float(expected.evalf(30, subs=subs)),
                                                                            rel=1e-14)


def test_default_mlp_export_is_fast_and_round_trips() -> None:
    torch.manual_seed(0)
    loss = MLPLoss(dtype=F64)
    start = time.perf_counter()
    expr = loss.to_sympy()
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"exporting the 40x40 MLPLoss took {elapsed:.1f} s (target: 2 s)"
    rebuilt = SymbolicLoss(expr, dtype=F64)
    y_pred, y_true = element_inputs("classification")
    torch.testing.assert_close(rebuilt.elementwise(y_pred, y_true), loss.elementwise(y_pred, y_true), **TOLERANCE)


def test_taylor_formula_has_one_term_per_description_entry() -> None:
    for order in (1, 2, 3, 5):
        for drop in (False, True):
            loss = TaylorLoss(order=order, drop_pred_free_terms=drop, dtype=F64)
            assert not is_cross_entropy(loss)
            polynomial = sympy.Poly(sympy.expand(-loss.to_sympy()), Y_TRUE, Y_PRED)
            assert polynomial.total_degree() == order
            assert len(loss.terms) == (order + 1) * (order + 2) // 2 - (order + 1 if drop else 0)
