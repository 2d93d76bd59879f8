"""Bivariate Taylor-polynomial losses (TaylorGLO, Gonzalez & Miikkulainen, arXiv 2002.00059)."""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any

import sympy
import torch
from sympy.core.parameters import distribute
from torch import Tensor, nn

from losses.base import LearnedLoss
from losses.symbols import Y_PRED, Y_TRUE, sympy_float


@dataclass(frozen=True)
class TaylorTerm:
    """One monomial ``(y - c_y)**true_power * (y_pred - c_p)**pred_power / (true_power! pred_power!)``."""

    true_power: int
    pred_power: int

    @property
    def denominator(self) -> int:
        """The Taylor factorial ``true_power! · pred_power!``."""
        return math.factorial(self.true_power) * math.factorial(self.pred_power)

    @property
    def scale(self) -> float:
        """The Taylor factor ``1 / (true_power! · pred_power!)`` as a float."""
        return 1.0 / self.denominator


def taylor_terms(order: int, *, drop_pred_free_terms: bool = False) -> tuple[TaylorTerm, ...]:
    """All monomials of total degree ``<= order``, sorted by true power, then prediction power.

    With ``drop_pred_free_terms`` the terms without ``y_pred`` (pred_power 0,
    including the constant) are left out: their derivative with respect to the
    prediction is zero, so they cannot change training.

    The third-order list without prediction-free terms is TaylorGLO's, in the
    order of its parameters θ2…θ7: (0,1), (0,2), (0,3), (1,1), (1,2), (2,1).
    """
    if not isinstance(order, int) or isinstance(order, bool) or order < 1:
        raise ValueError(f"order must be an integer >= 1; got {order!r}")
    return tuple(
        TaylorTerm(a, b)
        for a in range(order + 1)
        for b in range(order + 1 - a)
        if not (drop_pred_free_terms and b == 0)
    )


class TaylorLoss(LearnedLoss):
    """Bivariate Taylor polynomial of any order around a learnable centre.

    Per element, with centre ``(c_y, c_p)`` and coefficients ``θ_t``::

        ℓ(y_pred, y) = -Σ_t θ_t · (y - c_y)**a_t · (y_pred - c_p)**b_t / (a_t! · b_t!)

    over the terms ``t = (a_t, b_t)`` of ``taylor_terms`` (listed in ``self.terms``).
    The leading minus follows TaylorGLO, whose loss is ``-1/n Σ f(y_i, ŷ_i)``.
    Both ``elementwise`` and ``to_sympy`` are built from ``self.terms``.

    Parameters: ``centre`` = [c_y, c_p] (TaylorGLO's θ0, θ1), initialised to 0;
    ``coefficients`` (one per term), initialised standard normal from torch's
    global RNG.

    Args:
        task: ``"classification"`` (default) or ``"regression"``.
        order: Total degree of the polynomial, >= 1.
        drop_pred_free_terms: Leave out terms without ``y_pred``.
        dtype: dtype of the parameters (default: torch's default dtype).
        reduction: What ``forward`` returns: ``"mean"`` (default) over batch and outputs
            (TaylorGLO's ``1/n Σ``); ``"sum"``; ``"none"``, the per-element (B, C) values.
    """

    kind = "taylor"

    def __init__(
        self,
        *,
        task: str = "classification",
        order: int = 3,
        drop_pred_free_terms: bool = False,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(task=task, reduction=reduction)
        self.order = order
        self.drop_pred_free_terms = bool(drop_pred_free_terms)
        self.terms = taylor_terms(order, drop_pred_free_terms=self.drop_pred_free_terms)
        self.centre = nn.Parameter(torch.zeros(2, dtype=dtype))
        self.coefficients = nn.Parameter(torch.randn(len(self.terms), dtype=dtype))

    @classmethod
    def taylorglo(cls, *, task: str = "classification", dtype: torch.dtype | None = None,
                  reduction: str = "mean") -> TaylorLoss:
        """TaylorGLO's third-order loss with 8 parameters (arXiv 2002.00059, Eq. 5).

        ``-[θ2(ŷ-θ1) + ½θ3(ŷ-θ1)² + ⅙θ4(ŷ-θ1)³ + θ5(ŷ-θ1)(y-θ0) + ½θ6(ŷ-θ1)²(y-θ0)
        + ½θ7(ŷ-θ1)(y-θ0)²]`` with ``centre = [θ0, θ1]`` and ``coefficients = [θ2 … θ7]``.
        """
        return cls(task=task, order=3, drop_pred_free_terms=True, dtype=dtype, reduction=reduction)

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        dy = y_true - self.centre[0]
        dp = y_pred - self.centre[1]
        powers_y, powers_p = [None, dy], [None, dp]  # powers[k] = d**k; k = 0 is the constant 1.
        for _ in range(2, self.order + 1):
            powers_y.append(powers_y[-1] * dy)
            powers_p.append(powers_p[-1] * dp)
        coefficients = self.coefficients.unbind(0)
        total = functools.reduce(operator.add, (
            _product(coefficients[k] * term.scale, powers_y[term.true_power], powers_p[term.pred_power])
            for k, term in enumerate(self.terms)
        ))
        return -total

    def to_sympy(self) -> sympy.Expr:
        """``-(Σ θ_t/(a!b!)·(y - c_y)**a·(y_pred - c_p)**b)``, unexpanded, with 17-digit Floats."""
        c_y, c_p = (sympy_float(v) for v in self.centre.detach().double().cpu().tolist())
        coefficients = self.coefficients.detach().double().cpu().tolist()
        with distribute(False):  # Keep θ·(y - c_y) as written.
            dy, dp = Y_TRUE - c_y, Y_PRED - c_p
            terms = [
                sympy_float(theta) * sympy.Rational(1, term.denominator) * dy**term.true_power * dp**term.pred_power
                for theta, term in zip(coefficients, self.terms)
            ]
            return -sympy.Add(*terms)

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "order": self.order, "drop_pred_free_terms": self.drop_pred_free_terms,
                "reduction": self.reduction}


def _product(coefficient: Tensor, *factors: Tensor | None) -> Tensor:
    result = coefficient
    for factor in factors:
        if factor is not None:
            result = result * factor
    return result
