"""``reduction`` in every loss's constructor: what it means, its checks, and its round trip through files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_losses_cases import CASE_IDS, F64, make_loss

from losses import (CrossEntropyLoss, GradientScaledLoss, LearnedLoss, MLPLoss, SquaredErrorLoss, SymbolicLoss,
                    TaylorLoss, build_loss, encode_targets, load_loss, loss_from_dict, loss_to_dict,
                    prediction_transform, save_loss, task_gradient)
from losses.derivatives import value_gradient_pullback

REDUCTIONS = ("mean", "sum", "none")
ELEMENT_MEAN_CASES = [case for case in CASE_IDS if make_loss(case).mean_over == "elements"]

CONSTRUCTORS: dict[str, Callable[[str], LearnedLoss]] = {
    "CrossEntropyLoss": lambda r: CrossEntropyLoss(reduction=r),
    "SquaredErrorLoss": lambda r: SquaredErrorLoss(reduction=r),
    "MLPLoss": lambda r: MLPLoss(hidden=(3,), reduction=r),
    "MLPLoss.ml3": lambda r: MLPLoss.ml3(hidden=(3,), reduction=r),
    "TaylorLoss": lambda r: TaylorLoss(order=2, reduction=r),
    "TaylorLoss.taylorglo": lambda r: TaylorLoss.taylorglo(reduction=r),
    "SymbolicLoss": lambda r: SymbolicLoss("0.5*(y_pred - y)**2", reduction=r),
    "GradientScaledLoss": lambda r: GradientScaledLoss(MLPLoss(hidden=(3,)), reduction=r),
}


def _batch(task: str, batch: int = 7, outputs: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    f = 2 * torch.randn(batch, outputs, generator=generator, dtype=F64)
    if task == "classification":
        return f, torch.randint(0, outputs, (batch,), generator=generator)
    return f, torch.randn(batch, outputs, generator=generator, dtype=F64)


def _with_reduction(loss: LearnedLoss, reduction: str) -> LearnedLoss:
    """The same loss, with the same values, rebuilt from its JSON config with another reduction."""
    other = type(loss).from_config(json.loads(json.dumps({**loss.config(), "reduction": reduction}))).double()
    other.load_state_dict(loss.state_dict())
    return other


@pytest.mark.parametrize("case", ELEMENT_MEAN_CASES)
def test_learned_reductions_are_the_per_element_values_their_sum_and_their_mean(case: str) -> None:
    """"none": ℓ(y_pred, y) of each of the B·C elements; "sum": their sum; "mean" (default): sum / (B·C)."""
    loss = make_loss(case)
    outputs, targets = _batch(loss.task)
    per_element = _with_reduction(loss, "none")(outputs, targets)
    assert per_element.shape == outputs.shape
    expected = loss.elementwise(prediction_transform(outputs, loss.task), encode_targets(targets, outputs, loss.task))
    torch.testing.assert_close(per_element, expected, rtol=1e-12, atol=1e-12)
    total = _with_reduction(loss, "sum")(outputs, targets)
    torch.testing.assert_close(total, per_element.sum(), rtol=1e-12, atol=1e-12)
    assert loss.reduction == "mean"
    torch.testing.assert_close(loss(outputs, targets), total / outputs.numel(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_every_loss_takes_reduction_in_its_constructor_and_rejects_others(name: str) -> None:
    build = CONSTRUCTORS[name]
    for reduction in REDUCTIONS:
        loss = build(reduction)
        assert loss.reduction == reduction and loss.config()["reduction"] == reduction
    assert build("mean").reduction == "mean"
    with pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum', 'none'; got 'avg'"):
        build("avg")


def test_forward_takes_no_reduction_keyword() -> None:
    """One place to choose it, as in torch.nn: the constructor."""
    outputs, targets = _batch("classification")
    with pytest.raises(TypeError, match="reduction"):
        MLPLoss(hidden=(3,), dtype=F64)(outputs, targets, reduction="sum")


def test_registry_names_pass_reduction_on() -> None:
    assert build_loss("taylorglo", reduction="sum").reduction == "sum"
    assert build_loss("ml3", reduction="none").reduction == "none"
    assert build_loss("symbolic", expression="(y_pred - y)**2", reduction="sum").reduction == "sum"


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_reduction_round_trips_through_config_and_files(name: str, reduction: str, tmp_path: Path) -> None:
    loss = CONSTRUCTORS[name](reduction)
    rebuilt = type(loss).from_config(json.loads(json.dumps(loss.config())))
    assert rebuilt.reduction == reduction and rebuilt.config() == loss.config()
    loaded = load_loss(save_loss(loss, tmp_path / "loss.json"))
    assert type(loaded) is type(loss) and loaded.reduction == reduction and loaded.config() == loss.config()


def test_label_smoothing_round_trips_through_files(tmp_path: Path) -> None:
    loss = CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    loaded = load_loss(save_loss(loss, tmp_path / "loss.json"))
    assert (loaded.reduction, loaded.label_smoothing) == ("sum", 0.1)


@pytest.mark.parametrize("case", CASE_IDS)
def test_files_written_without_reduction_load_with_the_mean(case: str) -> None:
    """Losses saved before reduction was a constructor option still load, and compute what they did."""
    loss = make_loss(case)
    data = json.loads(json.dumps(loss_to_dict(loss, formula=False)))
    del data["config"]["reduction"]
    loaded = loss_from_dict(data)
    assert loaded.reduction == "mean" and loaded.config() == loss.config()
    outputs, targets = _batch(loss.task, outputs=1 if case == "ce-binary" else 4)
    assert torch.equal(loaded(outputs, targets), loss(outputs, targets))


def test_an_old_cross_entropy_file_loads_without_smoothing() -> None:
    old = {"format_version": 1, "kind": "cross_entropy", "config": {"task": "classification", "binary": False},
           "dtype": None, "parameters": {}, "formula": "-y*log(y_pred)"}
    assert loss_from_dict(old).config() == CrossEntropyLoss().config()
    assert CrossEntropyLoss().config() == {"task": "classification", "binary": False, "reduction": "mean",
                                           "label_smoothing": 0.0}


OLD_GRADIENT_SCALED_FILE = {  # written by the version before this change: no "reduction" anywhere
    "format_version": 1,
    "kind": "gradient_scaled",
    "config": {"shape": {"kind": "mlp", "config": {
        "task": "classification", "hidden": [2], "activation": "smooth_leaky_relu", "output": "softplus",
        "beta": 2.0, "gamma": 0.25, "bias": False}}, "max_scale": 1.0, "task": "classification"},
    "dtype": "float64",
    "parameters": {"scale_logit": 0.0, "shape.layers.0.weight": [[0.5, -0.25], [0.125, 0.75]],
                   "shape.layers.1.weight": [[0.3, -0.6]]},
    "formula": "(not read back)",
}


def test_an_old_gradient_scaled_file_loads_with_the_mean_inside_and_out(tmp_path: Path) -> None:
    path = tmp_path / "loss.json"
    path.write_text(json.dumps(OLD_GRADIENT_SCALED_FILE))
    loaded = load_loss(path)
    assert loaded.reduction == "mean" and loaded.shape.reduction == "mean"
    assert loaded.shape.layers[1].weight.tolist() == [[0.3, -0.6]]


def _scaled(reduction: str, inner: LearnedLoss | None = None) -> GradientScaledLoss:
    torch.manual_seed(2)
    loss = GradientScaledLoss(inner or MLPLoss(hidden=(4,)), max_scale=2.0, reduction=reduction).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.3)
    return loss


def _autograd_value_and_gradient(loss: LearnedLoss, outputs: torch.Tensor, targets: torch.Tensor):
    f = outputs.clone().requires_grad_(True)
    value = loss(f, targets)
    return value.detach(), torch.autograd.grad(value, f)[0]


def test_gradient_scaled_reductions_and_their_derived_gradients() -> None:
    """k·ℓ_φ per element; "sum" = "mean"·B·C; (value, ∂/∂f) derived for "sum" equals autograd through forward."""
    outputs, targets = _batch("classification")
    mean, total, none = (_scaled(reduction) for reduction in REDUCTIONS)
    per_element = none(outputs, targets)
    assert per_element.shape == outputs.shape
    torch.testing.assert_close(total(outputs, targets), per_element.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean(outputs, targets), per_element.mean(), rtol=1e-12, atol=1e-12)
    for loss in (mean, total):
        torch.testing.assert_close(loss.value_and_output_gradient(outputs, targets),
                                   _autograd_value_and_gradient(loss, outputs, targets), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"reduction='none'.*reduction='mean' \(the default\) or 'sum'"):
        none.value_and_output_gradient(outputs, targets)


def test_gradient_scaled_cross_entropy_reduces_as_cross_entropy() -> None:
    """Wrapping the cross-entropy keeps its per-sample convention, so forward and the derived gradient agree."""
    outputs, targets = _batch("classification")
    loss = GradientScaledLoss(CrossEntropyLoss(), max_scale=1.0).double()
    value, gradient = _autograd_value_and_gradient(loss, outputs, targets)
    torch.testing.assert_close(loss.value_and_output_gradient(outputs, targets), (value, gradient),
                               rtol=1e-12, atol=1e-14)
    reference = task_gradient(outputs, encode_targets(targets, outputs, "classification"), "classification")
    torch.testing.assert_close(gradient.norm(), reference.norm(), rtol=1e-12, atol=0)
    assert GradientScaledLoss(CrossEntropyLoss(), reduction="none").double()(outputs, targets).shape == (7,)


def test_gradient_scaled_refuses_an_inner_reduction_it_would_ignore() -> None:
    with pytest.raises(ValueError, match=r"build the inner loss with the default and pass reduction='sum'"):
        GradientScaledLoss(MLPLoss(hidden=(3,), reduction="sum"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_meta_gradients_view_differentiates_the_loss_as_reduced(reduction: str) -> None:
    """value_gradient_pullback reads the loss's own scalar: for "sum" the mean's value and gradient times B·C."""
    torch.manual_seed(4)
    mean = MLPLoss(hidden=(3,), dtype=F64)
    loss = _with_reduction(mean, reduction)
    outputs, targets = _batch("classification")
    value, m, _ = value_gradient_pullback(loss, dict(loss.named_parameters()), outputs, targets)
    mean_value, mean_m, _ = value_gradient_pullback(mean, dict(mean.named_parameters()), outputs, targets)
    count = 1 if reduction == "mean" else outputs.numel()
    torch.testing.assert_close((value, m), (count * mean_value, count * mean_m), rtol=1e-12, atol=1e-14)


def test_the_meta_gradients_view_refuses_per_element_values() -> None:
    loss = MLPLoss(hidden=(3,), dtype=F64, reduction="none")
    outputs, targets = _batch("classification")
    with pytest.raises(ValueError, match=r"MLPLoss\(reduction='none'\) returns per-element values"):
        value_gradient_pullback(loss, dict(loss.named_parameters()), outputs, targets)
