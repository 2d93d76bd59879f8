"""TaylorLoss against the published TaylorGLO formula and the Taylor-series definition."""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from losses import Y_PRED, Y_TRUE, TaylorLoss
from losses.taylor import TaylorTerm, taylor_terms

F64 = torch.float64


def published_taylorglo(y_pred: torch.Tensor, y: torch.Tensor, theta: list[float]) -> torch.Tensor:
    """TaylorGLO, arXiv 2002.00059, written out by hand (per element, before the mean):

    -[θ2(ŷ−θ1) + ½θ3(ŷ−θ1)² + ⅙θ4(ŷ−θ1)³ + θ5(ŷ−θ1)(y−θ0) + ½θ6(ŷ−θ1)²(y−θ0) + ½θ7(ŷ−θ1)(y−θ0)²]
    """
    t0, t1, t2, t3, t4, t5, t6, t7 = theta
    p, q = y_pred - t1, y - t0
    return -(t2 * p + 0.5 * t3 * p**2 + t4 * p**3 / 6 + t5 * p * q + 0.5 * t6 * p**2 * q + 0.5 * t7 * p * q**2)


def _set(loss: TaylorLoss, theta: list[float]) -> None:
    with torch.no_grad():
        loss.centre.copy_(torch.tensor(theta[:2], dtype=F64))
        loss.coefficients.copy_(torch.tensor(theta[2:], dtype=F64))


def test_taylorglo_has_exactly_eight_parameters_in_published_order() -> None:
    loss = TaylorLoss.taylorglo()
    assert sum(p.numel() for p in loss.parameters()) == 8
    assert loss.centre.shape == (2,) and loss.coefficients.shape == (6,)
    assert [(t.true_power, t.pred_power) for t in loss.terms] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_taylorglo_equals_the_published_formula(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    theta = (torch.randn(8, generator=generator, dtype=F64) * 2).tolist()
    loss = TaylorLoss.taylorglo(dtype=F64)
    _set(loss, theta)
    y_pred = torch.cat([torch.rand(50, generator=generator, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)])
    y = (torch.rand(52, generator=generator) < 0.3).to(F64)
    expected = published_taylorglo(y_pred, y, theta)
    torch.testing.assert_close(loss.elementwise(y_pred, y), expected, rtol=1e-12, atol=1e-12)
    # The exported formula is the same polynomial, symbolically.
    t = [sympy.Float(v, 17) for v in theta]
    p, q = Y_PRED - t[1], Y_TRUE - t[0]
    published = -(t[2] * p + t[3] * p**2 / 2 + t[4] * p**3 / 6
                  + t[5] * p * q + t[6] * p**2 * q / 2 + t[7] * p * q**2 / 2)
    difference = sympy.Poly(sympy.expand(loss.to_sympy() - published), Y_PRED, Y_TRUE)
    assert max(abs(float(c)) for c in difference.coeffs() or [0]) < 1e-12


def test_general_order_is_the_bivariate_taylor_series_with_factorials() -> None:
    loss = TaylorLoss(order=4, dtype=F64)
    c_y, c_p = 0.4, -0.7
    _set(loss, [c_y, c_p, *torch.linspace(-1, 1, len(loss.terms), dtype=F64).tolist()])
    y_pred, y = torch.tensor([0.2, 3.0, -1.5], dtype=F64), torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    expected = torch.zeros(3, dtype=F64)
    for theta, (a, b) in zip(loss.coefficients.tolist(), [(t.true_power, t.pred_power) for t in loss.terms]):
        expected -= theta * (y - c_y) ** a * (y_pred - c_p) ** b / (math.factorial(a) * math.factorial(b))
    torch.testing.assert_close(loss.elementwise(y_pred, y), expected, rtol=1e-12, atol=1e-12)


def test_dropping_prediction_free_terms_removes_exactly_the_terms_without_y_pred() -> None:
    full = taylor_terms(3)
    kept = taylor_terms(3, drop_pred_free_terms=True)
    assert set(full) - set(kept) == {TaylorTerm(0, 0), TaylorTerm(1, 0), TaylorTerm(2, 0), TaylorTerm(3, 0)}
    loss = TaylorLoss(order=3, drop_pred_free_terms=True, dtype=F64)
    expr = loss.to_sympy()
    assert sympy.expand(expr.subs(Y_PRED, loss.centre[1].item())) == 0  # Every term has a (y_pred - c_p) factor.


def test_term_scale_is_the_factorial_factor() -> None:
    assert TaylorTerm(2, 3).denominator == 12 and TaylorTerm(2, 3).scale == 1 / 12


@pytest.mark.parametrize("order", [0, -1, 2.0, True])
def test_invalid_order_is_rejected(order: object) -> None:
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        TaylorLoss(order=order)


def test_initialisation_is_documented_and_seeded() -> None:
    torch.manual_seed(3)
    first = TaylorLoss()
    torch.manual_seed(3)
    second = TaylorLoss()
    assert torch.equal(first.coefficients, second.coefficients)
    assert torch.equal(first.centre, torch.zeros(2))
