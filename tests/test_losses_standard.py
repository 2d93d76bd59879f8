"""Cross-entropy and squared error against torch's references; forward's transforms and reductions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losses import CrossEntropyLoss, MLPLoss, SquaredErrorLoss, encode_targets, prediction_transform

F64 = torch.float64


def _batch(classes: int = 4, batch: int = 6, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator, dtype=F64) * scale
    labels = torch.randint(0, max(classes, 2), (batch,), generator=generator)
    return logits, labels


def test_cross_entropy_forward_is_torch_cross_entropy_over_classes() -> None:
    logits, labels = _batch()
    loss = CrossEntropyLoss()
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels) / 4)
    torch.testing.assert_close(loss(logits, labels, reduction="sum"), F.cross_entropy(logits, labels, reduction="sum"))
    per_element = loss(logits, labels, reduction="none")
    assert per_element.shape == (6, 4)
    torch.testing.assert_close(per_element.sum(dim=1), F.cross_entropy(logits, labels, reduction="none"))


def test_cross_entropy_forward_equals_elementwise_definition() -> None:
    logits, labels = _batch(scale=10.0)
    loss = CrossEntropyLoss()
    y = encode_targets(labels, logits, "classification")
    expected = loss.elementwise(prediction_transform(logits, "classification"), y)
    torch.testing.assert_close(loss(logits, labels, reduction="none"), expected, rtol=1e-12, atol=1e-12)


def test_binary_cross_entropy_matches_torch() -> None:
    logits, labels = _batch(classes=1)
    loss = CrossEntropyLoss(binary=True)
    expected = F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.to(F64))
    torch.testing.assert_close(loss(logits, labels), expected)
    y = encode_targets(labels, logits, "classification")
    torch.testing.assert_close(loss(logits, labels, reduction="none"), loss.elementwise(torch.sigmoid(logits), y))


def test_cross_entropy_refuses_a_single_output_without_binary() -> None:
    logits, labels = _batch(classes=1)
    with pytest.raises(ValueError, match="binary=True"):
        CrossEntropyLoss()(logits, labels)
    with pytest.raises(ValueError, match="single output"):
        CrossEntropyLoss(binary=True)(*_batch(classes=3))


def test_squared_error_matches_mse_loss_for_regression_and_brier_for_classification() -> None:
    outputs = torch.randn(5, 3, dtype=F64)
    targets = torch.randn(5, 3, dtype=F64)
    torch.testing.assert_close(SquaredErrorLoss()(outputs, targets), F.mse_loss(outputs, targets))
    single = torch.randn(5, 1, dtype=F64)
    torch.testing.assert_close(SquaredErrorLoss()(single, targets[:, 0]), F.mse_loss(single[:, 0], targets[:, 0]))
    logits, labels = _batch()
    brier = (torch.softmax(logits, 1) - F.one_hot(labels, 4)).pow(2).mean()
    torch.testing.assert_close(SquaredErrorLoss(task="classification")(logits, labels), brier)


def test_prediction_transform_softmax_sigmoid_identity() -> None:
    logits, _ = _batch()
    torch.testing.assert_close(prediction_transform(logits, "classification"), torch.softmax(logits, 1))
    torch.testing.assert_close(prediction_transform(logits[:, :1], "classification"), torch.sigmoid(logits[:, :1]))
    assert prediction_transform(logits, "regression") is logits


def test_encode_targets_one_hot_binary_and_regression() -> None:
    logits, labels = _batch()
    torch.testing.assert_close(encode_targets(labels, logits, "classification"), F.one_hot(labels, 4).to(F64))
    binary = encode_targets(torch.tensor([0, 1, 1]), torch.zeros(3, 1), "classification")
    assert binary.dtype == torch.float32 and binary.tolist() == [[0.0], [1.0], [1.0]]
    regression = encode_targets(torch.tensor([1.5, 2.5]), torch.zeros(2, 1, dtype=F64), "regression")
    assert regression.dtype == F64 and regression.shape == (2, 1)


def test_mlp_forward_is_mean_of_elementwise_on_probabilities() -> None:
    torch.manual_seed(0)
    loss = MLPLoss(hidden=(4,), dtype=F64)
    logits, labels = _batch()
    expected = loss.elementwise(torch.softmax(logits, 1), F.one_hot(labels, 4).to(F64)).mean()
    torch.testing.assert_close(loss(logits, labels), expected)


def test_forward_leaves_inputs_untouched() -> None:
    logits, labels = _batch()
    logits_copy, labels_copy = logits.clone(), labels.clone()
    for loss in (CrossEntropyLoss(), MLPLoss(hidden=(3,), dtype=F64), SquaredErrorLoss(task="classification")):
        loss(logits, labels)
    assert torch.equal(logits, logits_copy) and torch.equal(labels, labels_copy)
