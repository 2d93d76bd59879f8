"""Robust-loss baselines over C classes: generalised cross-entropy and focal loss.

Both are criteria with ``torch.nn.CrossEntropyLoss``'s shapes and options (outputs (B, C),
(C,) or (B, C, d1, ..., dK); class indices or probabilities; ``weight``, ``ignore_index``,
``reduction``; :mod:`losses.criteria`) and an exact per-element SymPy form in ``Y_PRED``
(the softmax probability) and ``Y_TRUE`` (the one-hot entry), which sums over the classes of
a sample to the published loss of that sample:

- Generalised cross-entropy (GCE; Zhang & Sabuncu, NeurIPS 2018, arXiv 1805.07836):
  ``ℓ(p, y) = y·(1 - p**q)/q``, per sample ``(1 - p_y**q)/q``. q → 0 gives cross-entropy,
  q = 1 the mean absolute error ``1 - p_y``, which is robust to label noise.
- Focal loss (Lin et al., ICCV 2017, arXiv 1708.02002): ``ℓ(p, y) = -y·(1 - p)**γ·log(p)``,
  per sample ``-(1 - p_y)**γ·log(p_y)``: cross-entropy with well-classified samples (p_y
  near 1) down-weighted; γ = 0 is cross-entropy.

``forward`` works on ``log_softmax`` of the outputs (``expm1`` for ``1 - p``), so it stays
finite and exact where a probability underflows; ``elementwise`` is the formula on
probabilities (focal clamps ``log`` at ``tiny`` as :class:`~losses.CrossEntropyLoss` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sympy
import torch
from torch import Tensor

from losses.criteria import IGNORE_INDEX, ClassCriterion
from losses.symbols import Y_PRED, Y_TRUE, sympy_float


def _exact_number(value: float) -> sympy.Number:
    """An integer-valued hyper-parameter as a SymPy Integer (``(1 - y_pred)**2``), else its float64 Float."""
    return sympy.Integer(int(value)) if float(value).is_integer() else sympy_float(value)


def _check_number(name: str, value: object, low: float, high: float, *, low_open: bool, example: str) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{name} must be a number {'in ' if math.isfinite(high) else ''}{interval} "
                         f"(e.g. {example}); got {value!r}")
    return float(value)


def _power_of_nonnegative(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for base >= 0, with gradient 0 (not 0·inf = NaN) where base == 0.

    The focal factor ``(1 - p)**γ`` multiplies ``log p``, which is 0 where ``1 - p`` is, and the
    product's derivative tends to 0 there for every γ > 0; autograd of the plain power would
    give ``γ·0**(γ-1) = inf`` for γ < 1 and then NaN.
    """
    positive = base > 0
    powered = torch.where(positive, base, torch.ones_like(base)) ** exponent
    return torch.where(positive, powered, torch.zeros_like(base) if exponent > 0 else torch.ones_like(base))


def _only_classification(name: str, task: str) -> None:
    if task != "classification":
        raise ValueError(f"{name} is a classification loss; use task='classification' "
                         "(SquaredErrorLoss for regression)")


class GeneralizedCrossEntropyLoss(ClassCriterion):
    """Generalised cross-entropy, per element ``ℓ(y_pred, y) = y·(1 - y_pred**q)/q`` (module docstring).

    Args:
        q: the exponent, in (0, 1]; 0.7 (default) is the paper's choice for CIFAR.
        reduction: ``"mean"`` (default; over samples, weighted as ``nn.CrossEntropyLoss`` does),
            ``"sum"`` or ``"none"`` (one value per sample).
        weight: a weight per class, shape (C,), or None.
        ignore_index: samples labelled so are left out (default -100).
        task: ``"classification"``, the only one (kept so configs read alike).
    """

    kind = "generalized_cross_entropy"

    def __init__(self, *, q: float = 0.7, reduction: str = "mean", weight: Tensor | Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX, task: str = "classification") -> None:
        _only_classification("GeneralizedCrossEntropyLoss", task)
        super().__init__(task=task, reduction=reduction, weight=weight, ignore_index=ignore_index)
        self.q = _check_number("q", q, 0.0, 1.0, low_open=True, example="0.7")

    def _per_class(self, log_probs: Tensor, y_true: Tensor) -> Tensor:
        return y_true * -torch.expm1(self.q * log_probs) / self.q

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return y_true * (1 - y_pred ** self.q) / self.q

    def to_sympy(self) -> sympy.Expr:
        """``y*(1 - y_pred**q)/q`` with q exact."""
        q = _exact_number(self.q)
        return Y_TRUE * (1 - Y_PRED ** q) / q

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "q": self.q, "reduction": self.reduction, **self._criterion_config()}


class FocalLoss(ClassCriterion):
    """Focal loss, per element ``ℓ(y_pred, y) = -y·(1 - y_pred)**γ·log(y_pred)`` (module docstring).

    Args:
        gamma: the focusing exponent γ >= 0; 2 (default) as in the paper, 0 is cross-entropy.
        reduction: ``"mean"`` (default; over samples, weighted as ``nn.CrossEntropyLoss`` does),
            ``"sum"`` or ``"none"`` (one value per sample).
        weight: a weight per class, shape (C,), or None (the paper's α-balancing is a class weight).
        ignore_index: samples labelled so are left out (default -100).
        task: ``"classification"``, the only one (kept so configs read alike).
    """

    kind = "focal"

    def __init__(self, *, gamma: float = 2.0, reduction: str = "mean", weight: Tensor | Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX, task: str = "classification") -> None:
        _only_classification("FocalLoss", task)
        super().__init__(task=task, reduction=reduction, weight=weight, ignore_index=ignore_index)
        self.gamma = _check_number("gamma", gamma, 0.0, math.inf, low_open=False, example="2.0")

    def _per_class(self, log_probs: Tensor, y_true: Tensor) -> Tensor:
        return -y_true * _power_of_nonnegative(-torch.expm1(log_probs), self.gamma) * log_probs

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        log_p = torch.log(y_pred.clamp_min(torch.finfo(y_pred.dtype).tiny))
        return -y_true * _power_of_nonnegative(1 - y_pred, self.gamma) * log_p

    def to_sympy(self) -> sympy.Expr:
        """``-y*(1 - y_pred)**gamma*log(y_pred)`` with γ exact, unclamped."""
        return -Y_TRUE * (1 - Y_PRED) ** _exact_number(self.gamma) * sympy.log(Y_PRED)

    def to_python(self) -> str:
        """Source of ``def loss(y_pred, y):`` including the clamp, so it equals ``elementwise`` on [0, 1]."""
        return (
            "import torch\n\n\n"
            "def _log(p):\n"
            "    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))\n\n\n"
            "def loss(y_pred, y):\n"
            '    """Per-element focal loss; y_pred and y are tensors of one shape."""\n'
            f"    return -y * (1 - y_pred) ** {self.gamma!r} * _log(y_pred)\n"
        )

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "gamma": self.gamma, "reduction": self.reduction, **self._criterion_config()}


__all__ = ["FocalLoss", "GeneralizedCrossEntropyLoss"]
