"""Shared cases for the losses tests: every parameterisation and preset, in float64.

Other test_losses_* files import CASES and the input helpers from here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import losses
from losses import (CrossEntropyLoss, FocalLoss, GeneralizedCrossEntropyLoss, MLPLoss, SquaredErrorLoss, SymbolicLoss,
                    TaylorLoss)

F64 = torch.float64


def _taylor(order: int, drop: bool, *, task: str = "classification", glo: bool = False) -> TaylorLoss:
    loss = TaylorLoss.taylorglo(task=task, dtype=F64) if glo else TaylorLoss(
        task=task, order=order, drop_pred_free_terms=drop, dtype=F64)
    with torch.no_grad():
        loss.centre.copy_(torch.tensor([0.3, -0.2], dtype=F64))  # Non-zero so both centres appear.
    return loss


def _symbolic(task: str) -> SymbolicLoss:
    text = "0.7*(y_pred - y)**2 + 0.1*log(1 + exp(2.5*y_pred)) - 0.3*tanh(y*y_pred) + 0.05*Abs(y_pred)**1.5"
    return SymbolicLoss(text, task=task, dtype=F64)


CASES: dict[str, Callable[[], losses.LearnedLoss]] = {
    "ce": lambda: CrossEntropyLoss(),
    "ce-binary": lambda: CrossEntropyLoss(binary=True),
    "ce-smoothed": lambda: CrossEntropyLoss(label_smoothing=0.1),
    "mse": lambda: SquaredErrorLoss(),
    "mse-classification": lambda: SquaredErrorLoss(task="classification"),
    "mlp": lambda: MLPLoss(hidden=(6, 5), dtype=F64),
    "mlp-regression": lambda: MLPLoss(task="regression", hidden=(6, 5), dtype=F64),
    "mlp-bias-sleaky-out": lambda: MLPLoss(hidden=(5, 4), bias=True, output="smooth_leaky_relu",
                                           beta=3.0, gamma=0.1, dtype=F64),
    "mlp-tanh-identity-deep": lambda: MLPLoss(task="regression", hidden=(4, 4, 3), activation="tanh",
                                              output="identity", dtype=F64),
    "mlp-softplus-wide": lambda: MLPLoss(hidden=(9,), activation="softplus", dtype=F64),
    "mlp-linear": lambda: MLPLoss(task="regression", hidden=(), output="identity", dtype=F64),
    "ml3": lambda: MLPLoss.ml3(hidden=(6, 5), dtype=F64),
    "ml3-bias-regression": lambda: MLPLoss.ml3(task="regression", hidden=(5,), bias=True, dtype=F64),
    # Order 1 only for regression: a loss linear in probabilities has zero gradient through softmax.
    "taylor-1-regression": lambda: _taylor(1, False, task="regression"),
    "taylor-2-regression": lambda: _taylor(2, False, task="regression"),
    "taylor-3": lambda: _taylor(3, False),
    "taylor-4-drop": lambda: _taylor(4, True),
    "taylorglo": lambda: _taylor(3, True, glo=True),
    "taylorglo-regression": lambda: _taylor(3, True, task="regression", glo=True),
    "symbolic": lambda: _symbolic("classification"),
    "symbolic-regression": lambda: _symbolic("regression"),
    "gce": lambda: GeneralizedCrossEntropyLoss(),
    "gce-mae": lambda: GeneralizedCrossEntropyLoss(q=1.0),
    "focal": lambda: FocalLoss(),
    "focal-fractional": lambda: FocalLoss(gamma=1.5),
}
CASE_IDS = list(CASES)


def make_loss(case: str, seed: int = 0) -> losses.LearnedLoss:
    torch.manual_seed(seed)
    return CASES[case]()


def element_inputs(task: str, *, large: bool = True, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (y_pred, y) pairs in the loss's space, plus the edges, as float64 vectors.

    Classification: probabilities in [0, 1] including exactly 0 and 1, targets 0/1.
    Regression: values in [-3, 3], plus ±1e3 when ``large``.
    """
    generator = torch.Generator().manual_seed(seed)
    if task == "classification":
        y_pred = torch.cat([torch.rand(40, generator=generator, dtype=F64),
                            torch.tensor([0.0, 0.0, 1.0, 1.0, 1e-300, 1 - 1e-16], dtype=F64)])
        y_true = torch.cat([(torch.rand(40, generator=generator) < 0.5).to(F64),
                            torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)])
        return y_pred, y_true
    y_pred = torch.rand(40, generator=generator, dtype=F64) * 6 - 3
    y_true = torch.rand(40, generator=generator, dtype=F64) * 6 - 3
    if large:
        y_pred = torch.cat([y_pred, torch.tensor([1e3, -1e3, 1e3, -1e3, 0.0], dtype=F64)])
        y_true = torch.cat([y_true, torch.tensor([-1e3, 1e3, 1e3, 0.0, -1e3], dtype=F64)])
    return y_pred, y_true


def is_cross_entropy(loss: losses.LearnedLoss) -> bool:
    return isinstance(loss, CrossEntropyLoss)


def comparable(loss: losses.LearnedLoss, y_pred: torch.Tensor) -> torch.Tensor:
    """Mask of inputs where the SymPy form is defined: cross-entropy's -y*log(y_pred) needs y_pred > 0
    (and 1 - y_pred > 0 for the binary form), as the focal loss's log does; elementwise clamps there instead."""
    if isinstance(loss, FocalLoss):
        return y_pred > 1e-200
    if not is_cross_entropy(loss):
        return torch.ones_like(y_pred, dtype=torch.bool)
    return (y_pred > 1e-200) & ((y_pred < 1) if loss.binary else True)


@pytest.mark.parametrize("case", CASE_IDS)
def test_case_builds_float64_loss_with_kind(case: str) -> None:
    loss = make_loss(case)
    assert loss.kind in {"cross_entropy", "squared_error", "mlp", "taylor", "symbolic", "generalized_cross_entropy",
                         "focal"}
    assert all(p.dtype == F64 for p in loss.parameters())
    y_pred, y_true = element_inputs(loss.task)
    assert loss.elementwise(y_pred, y_true).shape == y_pred.shape


def test_inputs_include_the_edges() -> None:
    y_pred, _ = element_inputs("classification")
    assert (y_pred == 0).any() and (y_pred == 1).any()
    y_pred, y_true = element_inputs("regression")
    assert y_pred.abs().max() == 1e3 and y_true.abs().max() == 1e3
