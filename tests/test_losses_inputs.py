"""Bad inputs raise clear errors that say what is wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch

from losses import CrossEntropyLoss, MLPLoss, SquaredErrorLoss, TaylorLoss, encode_targets, prediction_transform


@pytest.fixture
def loss() -> MLPLoss:
    torch.manual_seed(0)
    return MLPLoss(hidden=(3,))


@pytest.mark.parametrize("outputs, labels, error, message", [
    (torch.zeros(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), TypeError, r"integer class labels.*targets.long\(\)"),
    (torch.zeros(4, 3), torch.ones(4, 3, dtype=torch.long), ValueError, r"shape \(B,\) = \(4,\)"),
    (torch.zeros(4, 3), torch.tensor([0, 1, 3, 1]), ValueError, r"integers in 0\.\.2; got label 3"),
    (torch.zeros(4, 3), torch.tensor([0, -1, 2, 1]), ValueError, r"got label -1"),
    (torch.zeros(4, 1), torch.tensor([0, 1, 2, 1]), ValueError, r"0 or 1 for a single sigmoid output"),
    (torch.zeros(4, 3), torch.tensor([True, False, True, True]), TypeError, "integer class labels"),
    (torch.zeros(4), torch.tensor([0, 1, 2, 1]), ValueError, r"0 or 1 for a single sigmoid output; got label 2"),
    (torch.zeros(4), torch.tensor([[0], [1], [1], [1]]), ValueError, r"shape \(B,\) = \(4,\).*reshape\(-1\)"),
    (torch.zeros(4, 3, 2), torch.zeros(4, 2, dtype=torch.long), ValueError, r"shape \(B, C\).*movedim\(1, -1\)"),
    (torch.zeros(()), torch.tensor(0), ValueError, r"shape \(B, C\).*unsqueeze\(1\)"),
    (torch.zeros(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 1]), TypeError, "floating point"),
    ([[0.0, 1.0]], torch.tensor([0]), TypeError, "torch.Tensor of shape"),
])
def test_classification_input_errors(loss: MLPLoss, outputs, labels, error, message: str) -> None:
    with pytest.raises(error, match=message):
        loss(outputs, labels)


@pytest.mark.parametrize("outputs, targets, error, message", [
    (torch.zeros(4, 2), torch.zeros(4), ValueError, r"shape \(B, C\) = \(4, 2\)"),
    (torch.zeros(4, 2), torch.zeros(4, 3), ValueError, "like the outputs"),
    (torch.zeros(4, 1), torch.tensor([1, 2, 3, 4]), TypeError, "regression targets must be floating point"),
])
def test_regression_input_errors(outputs, targets, error, message: str) -> None:
    with pytest.raises(error, match=message):
        SquaredErrorLoss()(outputs, targets)


def test_regression_accepts_flat_targets_for_one_output_and_casts_their_dtype() -> None:
    outputs = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    value = SquaredErrorLoss()(outputs, torch.tensor([0.0, 0.0]))
    assert value.dtype == torch.float64 and value.item() == 2.5


def test_elementwise_needs_one_shape_and_dtype(loss: MLPLoss) -> None:
    with pytest.raises(ValueError, match="same shape.*Use forward"):
        loss.elementwise(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="same dtype"):
        CrossEntropyLoss().elementwise(torch.zeros(3), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        loss.elementwise(torch.zeros(3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("build, message", [
    (lambda: MLPLoss(task="ranking"), "task must be one of 'classification', 'regression'; got 'ranking'"),
    (lambda: MLPLoss(activation="gelu"), "activation must be one of"),
    (lambda: MLPLoss(output="relu"), "output must be one of 'softplus', 'smooth_leaky_relu', 'identity'"),
    (lambda: MLPLoss(hidden=(40, 0)), "positive integers"),
    (lambda: MLPLoss(beta=0.0), "beta must be > 0"),
    (lambda: MLPLoss(gamma=1.5), r"gamma must be in \[0, 1\]"),
    (lambda: TaylorLoss(order=0), "order must be an integer"),
])
def test_invalid_hyperparameters(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_hyperparameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        MLPLoss("classification")  # type: ignore[misc]
    with pytest.raises(TypeError):
        TaylorLoss(3)  # type: ignore[misc]


def test_invalid_reduction_and_task_in_helpers() -> None:
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none'; got 'max'"):
        MLPLoss(reduction="max")
    with pytest.raises(ValueError, match="task must be one of"):
        prediction_transform(torch.zeros(2, 3), "ranking")
    with pytest.raises(ValueError, match="task must be one of"):
        encode_targets(torch.tensor([0, 1]), torch.zeros(2, 3), "ranking")
