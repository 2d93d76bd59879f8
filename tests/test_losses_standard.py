"""Cross-entropy and squared error against torch's references (drop-in criteria); forward's transforms."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn

from losses import (Y_PRED, Y_TRUE, CrossEntropyLoss, MLPLoss, SquaredErrorLoss, encode_targets, prediction_transform,
                    task_gradient, task_loss, task_loss_module)

F64 = torch.float64


def _batch(classes: int = 4, batch: int = 6, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=generator, dtype=F64) * scale
    labels = torch.randint(0, max(classes, 2), (batch,), generator=generator)
    return logits, labels


def _value_and_gradient(fn, outputs: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = outputs.detach().requires_grad_(True)
    value = fn(outputs, *args)
    (gradient,) = torch.autograd.grad(value, outputs)
    return value.detach(), gradient


@pytest.mark.parametrize("classes", [2, 4, 10])
def test_cross_entropy_is_torch_cross_entropy_in_value_and_gradient(classes: int) -> None:
    """The baseline is PyTorch's own: mean over the batch, sum over the classes (not divided by C)."""
    logits, labels = _batch(classes=classes, batch=7)
    ours = _value_and_gradient(CrossEntropyLoss(), logits, labels)
    torch_ = _value_and_gradient(F.cross_entropy, logits, labels)
    torch.testing.assert_close(ours, torch_, rtol=1e-14, atol=1e-15)


def test_squared_error_is_torch_mse_in_value_and_gradient() -> None:
    outputs, targets = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(_value_and_gradient(SquaredErrorLoss(), outputs, targets),
                               _value_and_gradient(F.mse_loss, outputs, targets), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("task,classes", [("classification", 5), ("classification", 1), ("regression", 3)])
def test_task_loss_is_torch_and_task_gradient_is_its_derivative(task: str, classes: int) -> None:
    """One definition: task_loss equals torch.nn.functional, task_gradient equals autograd through it."""
    logits, labels = _batch(classes=classes, batch=9)
    targets = labels if task == "classification" else torch.randn(9, classes, dtype=F64)
    reference = {(True, False): F.cross_entropy, (True, True): lambda f, y: F.binary_cross_entropy_with_logits(
        f.squeeze(1), y.to(F64)), (False, False): F.mse_loss}[task == "classification", classes == 1]
    value, gradient = _value_and_gradient(task_loss, logits, targets, task)
    torch.testing.assert_close(value, reference(logits, targets), rtol=1e-14, atol=1e-15)
    encoded = encode_targets(targets, logits, task)
    torch.testing.assert_close(task_gradient(logits, encoded, task), gradient, rtol=1e-12, atol=1e-15)
    assert task_loss_module(task, classes).mean_over == ("batch" if task == "classification" else "elements")


def _closed_form_task_gradient(f: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(softmax(f) − y)/B, (sigmoid(f) − y)/B for one output, 2(f − y)/(B·C): written out, not derived."""
    batch = f.shape[0]
    if task == "regression":
        return 2 * (f - y) / f.numel()
    return ((torch.sigmoid(f) if f.shape[1] == 1 else torch.softmax(f, dim=1)) - y) / batch


@pytest.mark.parametrize("task,classes", [("classification", 5), ("classification", 1), ("regression", 3)])
def test_task_gradient_is_the_closed_form_on_every_path(task: str, classes: int) -> None:
    """task_gradient takes one autograd backward where its result cannot be differentiated, and torch.func.grad
    where it can (inside a transform, or from outputs that require a gradient): every way gives the closed form,
    and the differentiable ways give its derivative too (against central differences, float64)."""
    logits, labels = _batch(classes=classes, batch=9)
    targets = encode_targets(labels if task == "classification" else torch.randn(9, classes, dtype=F64), logits, task)
    expected = _closed_form_task_gradient(logits, targets, task)
    with torch.no_grad():
        torch.testing.assert_close(task_gradient(logits, targets, task), expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(task_gradient(logits, targets, task), expected, rtol=1e-12, atol=1e-15)
    inside = torch.func.vmap(lambda f, y: task_gradient(f[None], y[None], task)[0] / 9)(logits, targets)
    torch.testing.assert_close(inside, expected, rtol=1e-12, atol=1e-15)
    with torch.inference_mode():  # autograd refuses inference tensors; the result is the same
        inference = logits.clone(), targets.clone()
        torch.testing.assert_close(task_gradient(*inference, task), expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(task_gradient(*inference, task), expected, rtol=1e-12, atol=1e-15)

    direction = torch.randn_like(logits)
    leaf = logits.clone().requires_grad_()
    (derivative,) = torch.autograd.grad((task_gradient(leaf, targets, task) * direction).sum(), leaf)
    via_transform = torch.func.grad(lambda f: (task_gradient(f, targets, task) * direction).sum())(logits)
    eps = 1e-6
    for i in range(2):
        for j in range(classes):
            step = torch.zeros_like(logits)
            step[i, j] = eps
            central = ((_closed_form_task_gradient(logits + step, targets, task)
                        - _closed_form_task_gradient(logits - step, targets, task)) * direction).sum() / (2 * eps)
            torch.testing.assert_close(derivative[i, j], central, rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(via_transform[i, j], central, rtol=1e-6, atol=1e-9)


def test_cross_entropy_derived_gradient_matches_forward() -> None:
    """The meta-gradient's view of the loss (value and ∂/∂logits) uses the same batch-mean reduction."""
    from losses.derivatives import value_gradient_pullback
    logits, labels = _batch(classes=6)
    value, m, _ = value_gradient_pullback(CrossEntropyLoss(), {}, logits, labels)
    torch.testing.assert_close((value, m), _value_and_gradient(F.cross_entropy, logits, labels))


def test_cross_entropy_forward_equals_elementwise_definition() -> None:
    """Per sample, forward is the per-element ℓ summed over the classes (PyTorch's (B,) for "none")."""
    logits, labels = _batch(scale=10.0)
    loss = CrossEntropyLoss(reduction="none")
    y = encode_targets(labels, logits, "classification")
    expected = loss.elementwise(prediction_transform(logits, "classification"), y).sum(dim=1)
    torch.testing.assert_close(loss(logits, labels), expected, rtol=1e-12, atol=1e-12)


def test_binary_cross_entropy_matches_torch() -> None:
    logits, labels = _batch(classes=1)
    expected = F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.to(F64))
    torch.testing.assert_close(CrossEntropyLoss(binary=True)(logits, labels), expected)
    y = encode_targets(labels, logits, "classification")
    torch.testing.assert_close(CrossEntropyLoss(binary=True, reduction="none")(logits, labels),
                               CrossEntropyLoss(binary=True).elementwise(torch.sigmoid(logits), y).squeeze(1))


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


# Drop-in criteria: every reduction, target kind and smoothing against torch.nn, value and gradient.

REDUCTIONS = ("mean", "sum", "none")


def _probabilities(batch: int, classes: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(batch, classes, generator=generator, dtype=F64), dim=1)


def _value_and_vjp(fn, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The value (any shape) and the gradient of its weighted sum, so "none" is checked element by element."""
    outputs = outputs.detach().requires_grad_(True)
    value = fn(outputs, targets)
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=F64).reshape(value.shape)
    (gradient,) = torch.autograd.grad((value * weights).sum(), outputs)
    return value.detach(), gradient


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
@pytest.mark.parametrize("classes", [2, 5])
def test_cross_entropy_is_nn_cross_entropy_loss(classes: int, kind: str, reduction: str, smoothing: float) -> None:
    """Same value, shape ((B,) for "none") and gradient as nn.CrossEntropyLoss for each combination."""
    logits, labels = _batch(classes=classes, batch=7)
    targets = labels if kind == "indices" else _probabilities(7, classes)
    ours = _value_and_vjp(CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing), logits, targets)
    reference = _value_and_vjp(nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing), logits, targets)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert ours[0].shape == ((7,) if reduction == "none" else ())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["labels", "probabilities", "probability-column"])
def test_binary_cross_entropy_is_bce_with_logits_loss(kind: str, reduction: str) -> None:
    """One output: nn.BCEWithLogitsLoss on the squeezed logits (B,), for 0/1 labels or probabilities."""
    logits, labels = _batch(classes=1, batch=7)
    probabilities = _probabilities(7, 2)[:, 1]
    targets = {"labels": labels, "probabilities": probabilities, "probability-column": probabilities[:, None]}[kind]
    reference_targets = labels.to(F64) if kind == "labels" else probabilities
    ours = _value_and_vjp(CrossEntropyLoss(binary=True, reduction=reduction), logits, targets)
    bce = nn.BCEWithLogitsLoss(reduction=reduction)
    reference = _value_and_vjp(lambda f, y: bce(f.squeeze(1), y), logits, reference_targets)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.1, 0.35, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_label_smoothing_is_two_class_label_smoothing(reduction: str, smoothing: float) -> None:
    """A sigmoid output z is the two-class softmax of (0, z), and is smoothed as that: y' = (1 − ε)·y + ε/2."""
    logits, labels = _batch(classes=1, batch=7)
    ours = _value_and_vjp(CrossEntropyLoss(binary=True, reduction=reduction, label_smoothing=smoothing),
                          logits, labels)
    two_class = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    reference = _value_and_vjp(lambda f, y: two_class(torch.cat([torch.zeros_like(f), f], dim=1), y), logits, labels)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 3), (6, 1)])
def test_squared_error_is_nn_mse_loss(shape: tuple[int, int], reduction: str) -> None:
    """Same value, shape (the outputs' for "none") and gradient as nn.MSELoss; (B,) targets for one output."""
    generator = torch.Generator().manual_seed(5)
    outputs, targets = (torch.randn(shape, generator=generator, dtype=F64) for _ in range(2))
    reference = _value_and_vjp(nn.MSELoss(reduction=reduction), outputs, targets)
    loss = SquaredErrorLoss(reduction=reduction)
    torch.testing.assert_close(_value_and_vjp(loss, outputs, targets), reference, rtol=1e-12, atol=1e-12)
    if shape[1] == 1:
        torch.testing.assert_close(_value_and_vjp(loss, outputs, targets[:, 0]), reference, rtol=1e-12, atol=1e-12)
    assert reference[0].shape == (shape if reduction == "none" else ())


def test_label_smoothing_changes_the_targets_not_the_formula() -> None:
    """forward is the per-element -y·log(y_pred) at y' = (1 − ε)·y + ε/C; to_sympy stays -y·log(y_pred)."""
    logits, labels = _batch(classes=4, batch=6)
    loss = CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    assert loss.to_sympy() == CrossEntropyLoss().to_sympy() == -Y_TRUE * sympy.log(Y_PRED)
    smoothed = 0.8 * F.one_hot(labels, 4).to(F64) + 0.2 / 4
    torch.testing.assert_close(loss.smooth_targets(encode_targets(labels, logits, "classification")), smoothed)
    expected = loss.elementwise(torch.softmax(logits, dim=1), smoothed).sum(dim=1)
    torch.testing.assert_close(loss(logits, labels), expected, rtol=1e-12, atol=1e-12)
    formula = sympy.lambdify((Y_PRED, Y_TRUE), loss.to_sympy(), "math")
    p, y = torch.softmax(logits, dim=1), smoothed
    by_formula = torch.tensor([[formula(float(a), float(b)) for a, b in zip(r, s)] for r, s in zip(p, y)], dtype=F64)
    torch.testing.assert_close(by_formula.sum(dim=1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.1", True, None])
def test_label_smoothing_must_be_a_number_in_the_unit_interval(value) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        CrossEntropyLoss(label_smoothing=value)


def test_label_smoothing_is_for_classification() -> None:
    with pytest.raises(ValueError, match="label_smoothing=0 for regression"):
        CrossEntropyLoss(task="regression", label_smoothing=0.1)
    assert CrossEntropyLoss(task="regression").label_smoothing == 0.0


@pytest.mark.parametrize("targets, error, message", [
    (torch.full((4, 2), 0.5), ValueError, r"probability targets must have shape \(B, C\) = \(4, 3\).*got \(4, 2\)"),
    (torch.full((4, 3, 1), 0.5), ValueError, r"shape \(B, C\) = \(4, 3\)"),
    (torch.zeros(3, 3), ValueError, r"shape \(B, C\) = \(4, 3\)"),
    (torch.tensor([0.0, 1.0, 2.0, 1.0]), TypeError, r"integer class labels.*targets.long\(\)"),
    (torch.ones(4, 3, dtype=torch.long), ValueError, r"shape \(B,\) = \(4,\).*as floats.*argmax"),
    (torch.ones(4, 3, dtype=torch.bool), TypeError, "integer class labels"),
])
def test_probability_targets_are_checked(targets: torch.Tensor, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        CrossEntropyLoss()(torch.zeros(4, 3, dtype=F64), targets)


def test_probability_targets_take_the_outputs_dtype_and_one_hot_rows_equal_labels() -> None:
    logits, labels = _batch(classes=4, batch=6)
    one_hot = F.one_hot(labels, 4).to(torch.float32)
    assert encode_targets(one_hot, logits, "classification").dtype == F64
    torch.testing.assert_close(CrossEntropyLoss()(logits, one_hot), CrossEntropyLoss()(logits, labels),
                               rtol=1e-14, atol=1e-15)
