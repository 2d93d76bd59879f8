"""The task losses are PyTorch's criteria: every shape, reduction and option against torch's functional, in float64.

Each case compares the value and the gradient (``torch.autograd.grad`` of a scalar, or of
⟨value, a fixed cotangent⟩ for ``reduction="none"``, which checks every entry's gradient) with
``F.cross_entropy``, ``F.binary_cross_entropy_with_logits`` or ``F.mse_loss``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losses import CrossEntropyLoss, MLPLoss, SquaredErrorLoss, TaylorLoss, loss_from_dict, loss_to_dict

F64 = torch.float64
REDUCTIONS = ("mean", "sum", "none")
CLASSES = 4
# Outputs' shapes: batched (B, C), unbatched (C,), K-dimensional (B, C, d1) and (B, C, d1, d2).
SHAPES = {"batched": (6, CLASSES), "unbatched": (CLASSES,), "1d": (3, CLASSES, 5), "2d": (2, CLASSES, 3, 2)}
WEIGHT = torch.tensor([0.5, 2.0, 1.0, 0.25], dtype=F64)
INDEX_OPTIONS = {
    "plain": {},
    "weight": {"weight": WEIGHT},
    "ignored": {"ignore_index": -100},
    "ignore-a-class": {"ignore_index": 1},
    "weight-ignored": {"weight": WEIGHT, "ignore_index": 2},
    "smoothing": {"label_smoothing": 0.2},
    "weight-smoothing": {"weight": WEIGHT, "label_smoothing": 0.3},
    "weight-ignored-smoothing": {"weight": WEIGHT, "ignore_index": -100, "label_smoothing": 0.15},
}
PROBABILITY_OPTIONS = {key: INDEX_OPTIONS[key] for key in ("plain", "weight", "smoothing", "weight-smoothing")}


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(shape: tuple[int, ...]) -> torch.Tensor:
    return 3 * torch.randn(shape, generator=_generator(1), dtype=F64)


def _labels(shape: tuple[int, ...], options: dict) -> torch.Tensor:
    """Class indices for outputs of ``shape``; about a third carry ``ignore_index`` where one is set."""
    index_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    labels = torch.randint(0, CLASSES, index_shape, generator=_generator(2))
    if "ignore_index" in options:
        hidden = torch.rand(index_shape, generator=_generator(3)) < 0.35
        labels = torch.where(hidden, torch.tensor(options["ignore_index"]), labels)
    return labels


def _probabilities(shape: tuple[int, ...]) -> torch.Tensor:
    class_dim = 0 if len(shape) == 1 else 1
    return torch.softmax(torch.randn(shape, generator=_generator(4), dtype=F64), dim=class_dim)


def _value_and_gradient(fn, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = outputs.detach().requires_grad_(True)
    value = fn(outputs, targets)
    cotangent = torch.linspace(0.5, 1.5, value.numel(), dtype=F64).reshape(value.shape) if value.dim() else None
    (gradient,) = torch.autograd.grad(value, outputs, cotangent)
    return value.detach(), gradient


def _assert_same(ours: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert ours[0].shape == reference[0].shape and ours[1].shape == reference[1].shape
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("option", INDEX_OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_with_class_indices_is_torch(shape: str, reduction: str, option: str) -> None:
    options = INDEX_OPTIONS[option]
    logits = _logits(SHAPES[shape])
    labels = _labels(SHAPES[shape], options)
    ours = _value_and_gradient(CrossEntropyLoss(reduction=reduction, **options), logits, labels)
    reference = _value_and_gradient(lambda f, y: F.cross_entropy(f, y, reduction=reduction, **options), logits, labels)
    _assert_same(ours, reference)


@pytest.mark.parametrize("option", PROBABILITY_OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_with_class_probabilities_is_torch(shape: str, reduction: str, option: str) -> None:
    options = PROBABILITY_OPTIONS[option]
    logits, probabilities = _logits(SHAPES[shape]), _probabilities(SHAPES[shape])
    ours = _value_and_gradient(CrossEntropyLoss(reduction=reduction, **options), logits, probabilities)
    reference = _value_and_gradient(lambda f, y: F.cross_entropy(f, y, reduction=reduction, **options),
                                    logits, probabilities)
    _assert_same(ours, reference)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_batch_whose_labels_are_all_ignored_has_torchs_mean(weighted: bool) -> None:
    """0/0: NaN, as in PyTorch (and its gradient NaN too); "sum" is 0 with a zero gradient."""
    logits, labels = _logits((3, CLASSES)), torch.full((3,), -100)
    options = {"weight": WEIGHT} if weighted else {}
    for reduction in REDUCTIONS:
        ours = _value_and_gradient(CrossEntropyLoss(reduction=reduction, **options), logits, labels)
        reference = _value_and_gradient(lambda f, y: F.cross_entropy(f, y, reduction=reduction, **options),
                                        logits, labels)
        _assert_same(ours, reference)


def test_derived_output_gradient_of_a_k_dimensional_weighted_loss_is_autograds() -> None:
    """``value_and_output_gradient`` (torch.func of the forward, what training reads) sees the new shapes too."""
    loss = CrossEntropyLoss(weight=WEIGHT, ignore_index=0, label_smoothing=0.1)
    logits, labels = _logits(SHAPES["2d"]), _labels(SHAPES["2d"], {"ignore_index": 0})
    value, gradient = loss.value_and_output_gradient(logits, labels)
    _assert_same((value, gradient), _value_and_gradient(loss, logits, labels))


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
@pytest.mark.parametrize("shape", [(7,), (7, 1)])
def test_binary_cross_entropy_is_torch_for_flat_and_column_logits(shape: tuple[int, ...], targets: str,
                                                                  reduction: str, smoothing: float) -> None:
    """(B,) logits with (B,) targets, and (B, 1) as before: BCE-with-logits of the logits, targets y′ = (1 − ε)y + ε/2."""
    logits = _logits(shape)
    labels = torch.randint(0, 2, (7,), generator=_generator(5))
    y = labels if targets == "labels" else torch.rand(7, generator=_generator(6), dtype=F64)
    ours = _value_and_gradient(CrossEntropyLoss(binary=True, reduction=reduction, label_smoothing=smoothing),
                               logits, y)
    smoothed = (1 - smoothing) * y.to(F64) + smoothing / 2

    def reference(f: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(f.reshape(7), smoothed, reduction=reduction)

    _assert_same(ours, _value_and_gradient(reference, logits, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(7,), (), (6, 3), (6, 1), (3, 2, 4), (2, 3, 2, 2)])
def test_squared_error_is_torch_mse_for_any_shape_of_equal_targets(shape: tuple[int, ...], reduction: str) -> None:
    outputs = torch.randn(shape, generator=_generator(7), dtype=F64)
    targets = torch.randn(shape, generator=_generator(8), dtype=F64)
    ours = _value_and_gradient(SquaredErrorLoss(reduction=reduction), outputs, targets)
    reference = _value_and_gradient(lambda f, y: F.mse_loss(f, y, reduction=reduction), outputs, targets)
    _assert_same(ours, reference)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("make", [lambda task, r: MLPLoss(task=task, hidden=(3,), reduction=r),
                                  lambda task, r: TaylorLoss(task=task, order=2, reduction=r)], ids=["mlp", "taylor"])
def test_learned_losses_take_flat_single_outputs_as_one_column(make, task: str, reduction: str) -> None:
    """(B,) outputs (a sigmoid logit, or a regression value) are the (B, 1) column; "none" comes back (B,)."""
    torch.manual_seed(0)
    loss = make(task, reduction).double()
    outputs = _logits((7,))
    targets = (torch.randint(0, 2, (7,), generator=_generator(9)) if task == "classification"
               else torch.randn(7, generator=_generator(9), dtype=F64))
    flat = _value_and_gradient(loss, outputs, targets)
    column = _value_and_gradient(loss, outputs[:, None], targets)
    expected = (column[0].reshape(7) if reduction == "none" else column[0], column[1].reshape(7))
    _assert_same(flat, expected)


@pytest.mark.parametrize("make, outputs, targets, error, message", [
    (lambda: CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long), ValueError,
     r"shape \(B,\) = \(4,\).*got \(4, 2\)"),
    (lambda: CrossEntropyLoss(), torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), ValueError,
     r"shape \(B, d1, \.\.\., dK\) = \(2, 5\).*got \(2, 4\)"),
    (lambda: CrossEntropyLoss(), torch.zeros(2, 3, 5), torch.zeros(2, 5, 3), ValueError,
     r"probability targets must have shape \(B, C, d1, \.\.\., dK\) = \(2, 3, 5\)"),
    (lambda: CrossEntropyLoss(), torch.zeros(3), torch.tensor([1]), ValueError, r"shape \(\) = \(\).*got \(1,\)"),
    (lambda: CrossEntropyLoss(), torch.zeros(2, 3, 5), torch.zeros(2, 5), TypeError, r"targets.long\(\)"),
    (lambda: CrossEntropyLoss(), torch.zeros(()), torch.tensor(0), ValueError, r"got a scalar"),
    (lambda: CrossEntropyLoss(weight=[1.0, 2.0]), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ValueError,
     r"weight has 2 entries but the outputs have C = 3 classes; pass one weight per class"),
    (lambda: CrossEntropyLoss(), torch.zeros(2, 3, 5), torch.full((2, 5), 3), ValueError,
     r"integers in 0\.\.2 \(or ignore_index=-100\); got label 3"),
    (lambda: CrossEntropyLoss(ignore_index=7), torch.zeros(4, 3), torch.tensor([0, 7, -100, 1]), ValueError,
     r"got label -100"),
    (lambda: CrossEntropyLoss(ignore_index=0), torch.zeros(4, 3), torch.full((4, 3), 1 / 3), ValueError,
     r"ignore_index is for class-index targets"),
    (lambda: CrossEntropyLoss(binary=True), torch.zeros(4), torch.zeros(4, 1), ValueError,
     r"targets must have shape \(B,\) = \(4,\); got \(4, 1\)"),
    (lambda: CrossEntropyLoss(binary=True), torch.zeros(4), torch.tensor([0, 1, 2, 1]), ValueError,
     r"0 or 1 for a single sigmoid output; got label 2"),
    (lambda: SquaredErrorLoss(), torch.zeros(2, 3, 4), torch.zeros(2, 3), ValueError,
     r"outputs' shape \(2, 3, 4\); got \(2, 3\)"),
    (lambda: SquaredErrorLoss(), torch.zeros(5), torch.zeros(5, 1), ValueError, r"shape \(B,\) = \(5,\)"),
    (lambda: MLPLoss(hidden=(3,)), torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.long), ValueError,
     r"movedim\(1, -1\)"),
])
def test_bad_inputs_get_one_line_errors_naming_the_fix(make, outputs, targets, error, message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        make()(outputs, targets)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": [[1.0, 2.0]]}, "1-D floating tensor"),
    ({"weight": torch.tensor([1, 2])}, "1-D floating tensor"),
    ({"weight": "heavy"}, "one number per class"),
    ({"ignore_index": 1.5}, "ignore_index must be an integer"),
    ({"binary": True, "weight": [1.0, 2.0]}, "binary=True"),
    ({"binary": True, "ignore_index": 0}, "binary=True"),
    ({"task": "regression", "weight": [1.0, 2.0]}, "weight=None for regression"),
])
def test_bad_options_are_refused_when_the_loss_is_built(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrossEntropyLoss(**kwargs)


def test_weight_is_a_buffer_that_follows_the_loss_and_survives_a_file() -> None:
    loss = CrossEntropyLoss(weight=[0.5, 2.0, 1.0, 0.25], ignore_index=3).double()
    assert loss.weight.dtype == F64 and dict(loss.named_buffers()).keys() == {"weight"}
    rebuilt = loss_from_dict(loss_to_dict(loss))
    assert rebuilt.config() == loss.config() and rebuilt.ignore_index == 3
    logits, labels = _logits((6, CLASSES)), torch.tensor([0, 1, 2, 3, 3, 1])
    torch.testing.assert_close(rebuilt(logits, labels), loss(logits, labels), rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"loss.to\(torch.float64\)"):
        CrossEntropyLoss(weight=[1.0, 1.0, 1.0, 1.0])(logits, labels)


def test_the_default_config_is_unchanged_so_saved_files_stay_the_same() -> None:
    assert CrossEntropyLoss().config() == {"task": "classification", "binary": False, "reduction": "mean",
                                           "label_smoothing": 0.0}
