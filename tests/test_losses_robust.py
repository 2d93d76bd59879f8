"""Generalised cross-entropy and focal loss against their published formulas, written out here, in float64."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F

from losses import (Y_PRED, Y_TRUE, FocalLoss, GeneralizedCrossEntropyLoss, build_loss, loss_from_dict,
                    loss_to_dict)

F64 = torch.float64
REDUCTIONS = ("mean", "sum", "none")
CLASSES = 5
SHAPES = {"batched": (7, CLASSES), "unbatched": (CLASSES,), "k-dimensional": (2, CLASSES, 3, 2)}
WEIGHT = torch.tensor([0.5, 2.0, 1.0, 0.25, 1.5], dtype=F64)


def _gce(p: torch.Tensor, q: float) -> torch.Tensor:
    return (1 - p ** q) / q


def _focal(p: torch.Tensor, gamma: float) -> torch.Tensor:
    return -(1 - p) ** gamma * torch.log(p)


def _reference(formula, logits: torch.Tensor, labels: torch.Tensor, reduction: str, weight: torch.Tensor | None,
               ignore_index: int) -> torch.Tensor:
    """The per-sample formula at p_y = softmax(logits)[label], weighted by w_y; ignored samples count 0."""
    class_dim = 0 if logits.dim() == 1 else 1
    p = torch.softmax(logits, dim=class_dim)
    kept = labels != ignore_index
    safe = torch.where(kept, labels, 0)
    p_y = p.gather(class_dim, safe.unsqueeze(class_dim)).squeeze(class_dim)
    w = torch.ones_like(p_y) if weight is None else weight[safe]
    w = torch.where(kept, w, 0)
    per_sample = torch.where(kept, w * formula(p_y), 0)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.sum() / w.sum()


def _value_and_gradient(fn, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().requires_grad_(True)
    value = fn(logits)
    cotangent = torch.linspace(0.5, 1.5, value.numel(), dtype=F64).reshape(value.shape) if value.dim() else None
    (gradient,) = torch.autograd.grad(value, logits, cotangent)
    return value.detach(), gradient


LOSSES = {
    "gce-0.7": (lambda **kw: GeneralizedCrossEntropyLoss(**kw), lambda p: _gce(p, 0.7)),
    "gce-0.3": (lambda **kw: GeneralizedCrossEntropyLoss(q=0.3, **kw), lambda p: _gce(p, 0.3)),
    "focal-2": (lambda **kw: FocalLoss(**kw), lambda p: _focal(p, 2.0)),
    "focal-0.5": (lambda **kw: FocalLoss(gamma=0.5, **kw), lambda p: _focal(p, 0.5)),
}


@pytest.mark.parametrize("options", [{}, {"weight": WEIGHT}, {"weight": WEIGHT, "ignore_index": 3}],
                         ids=["plain", "weight", "weight-ignore"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", LOSSES)
def test_class_index_loss_is_the_published_formula(name: str, shape: str, reduction: str, options: dict) -> None:
    make, formula = LOSSES[name]
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(SHAPES[shape], generator=generator, dtype=F64)
    index_shape = () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])
    labels = torch.randint(0, CLASSES, index_shape, generator=generator)
    loss = make(reduction=reduction, **options)
    ours = _value_and_gradient(lambda f: loss(f, labels), logits)
    expected = _value_and_gradient(lambda f: _reference(formula, f, labels, reduction, options.get("weight"),
                                                        options.get("ignore_index", -100)), logits)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert ours[0].shape == (index_shape if reduction == "none" else ())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_probability_targets_weigh_each_class_by_its_probability(name: str, reduction: str) -> None:
    """Σ_c w_c·y_c·ℓ(p_c) per sample, "mean" over samples; one-hot rows give the class-index loss."""
    make, formula = LOSSES[name]
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, CLASSES, generator=generator, dtype=F64)
    targets = torch.softmax(torch.randn(6, CLASSES, generator=generator, dtype=F64), dim=1)
    loss = make(reduction=reduction, weight=WEIGHT)

    def reference(f: torch.Tensor) -> torch.Tensor:
        per_sample = (WEIGHT * targets * formula(torch.softmax(f, dim=1))).sum(dim=1)
        return {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]

    torch.testing.assert_close(_value_and_gradient(lambda f: loss(f, targets), logits),
                               _value_and_gradient(reference, logits), rtol=1e-12, atol=1e-12)


def test_limits_are_cross_entropy_and_mean_absolute_error() -> None:
    """γ = 0 is cross-entropy exactly; q = 1 is 1 − p_y (MAE); q → 0 tends to cross-entropy."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(8, CLASSES, generator=generator, dtype=F64)
    labels = torch.randint(0, CLASSES, (8,), generator=generator)
    cross_entropy = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(FocalLoss(gamma=0, reduction="none")(logits, labels), cross_entropy,
                               rtol=1e-14, atol=1e-14)
    p_y = torch.softmax(logits, dim=1)[torch.arange(8), labels]
    torch.testing.assert_close(GeneralizedCrossEntropyLoss(q=1, reduction="none")(logits, labels), 1 - p_y,
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(GeneralizedCrossEntropyLoss(q=1e-7, reduction="none")(logits, labels), cross_entropy,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [GeneralizedCrossEntropyLoss(), GeneralizedCrossEntropyLoss(q=0.25), FocalLoss(),
                                  FocalLoss(gamma=1.5)], ids=["gce", "gce-0.25", "focal", "focal-1.5"])
def test_sympy_export_summed_over_classes_is_the_loss_of_each_sample(loss) -> None:
    """``lambdify(to_sympy())`` at (softmax, one-hot), summed over the classes, equals forward's "none"."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, CLASSES, generator=generator, dtype=F64)
    labels = torch.randint(0, CLASSES, (6,), generator=generator)
    function = sympy.lambdify((Y_PRED, Y_TRUE), loss.to_sympy(), modules="math")
    p, one_hot = torch.softmax(logits, dim=1), F.one_hot(labels, CLASSES).to(F64)
    exported = torch.tensor([[function(float(p[i, c]), float(one_hot[i, c])) for c in range(CLASSES)]
                             for i in range(6)], dtype=F64)
    loss.reduction = "none"
    torch.testing.assert_close(exported.sum(dim=1), loss(logits, labels), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(exported, loss.elementwise(p, one_hot), rtol=1e-13, atol=1e-14)


def test_formulas_read_as_the_papers_write_them() -> None:
    assert FocalLoss().to_sympy() == -Y_TRUE * (1 - Y_PRED) ** 2 * sympy.log(Y_PRED)
    assert FocalLoss(gamma=0.5).to_sympy().subs({Y_PRED: 0.75, Y_TRUE: 1}) == pytest.approx(0.5 * math.log(4 / 3))
    assert GeneralizedCrossEntropyLoss(q=0.5).to_sympy().subs({Y_PRED: 0.36, Y_TRUE: 1}) == pytest.approx(0.8)
    assert GeneralizedCrossEntropyLoss().to_sympy().subs({Y_PRED: 0.5, Y_TRUE: 0}) == 0


def test_extreme_logits_give_finite_values_and_gradients() -> None:
    """log_softmax and expm1: a p_y that underflows in float64 still has a finite loss and gradient."""
    logits = torch.tensor([[800.0, 0.0, -800.0], [0.0, 0.0, 0.0]], dtype=F64)
    labels = torch.tensor([2, 0])
    for loss in (GeneralizedCrossEntropyLoss(), FocalLoss(), FocalLoss(gamma=0.5), FocalLoss(gamma=0)):
        for label in range(3):
            value, gradient = _value_and_gradient(lambda f: loss(f, labels.clone().fill_(label)), logits)
            assert torch.isfinite(value) and torch.isfinite(gradient).all()
    torch.testing.assert_close(FocalLoss(reduction="none")(logits, labels.fill_(2))[0], torch.tensor(1600.0, dtype=F64))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_where_a_class_is_certain_is_the_limit_of_the_formula(gamma: float) -> None:
    """At p = 1 the factor (1 − p)**γ is 0, and so is the derivative of (1 − p)**γ·log p (γ > 0): no NaN."""
    loss = FocalLoss(gamma=gamma, reduction="sum")
    y_pred = torch.tensor([1.0, 0.999999, 0.5], dtype=F64, requires_grad=True)
    (gradient,) = torch.autograd.grad(loss.elementwise(y_pred, torch.ones(3, dtype=F64)).sum(), y_pred)
    p = y_pred.detach()
    expected = gamma * (1 - p) ** (gamma - 1) * torch.log(p) - (1 - p) ** gamma / p if gamma else -1 / p
    expected[0] = -1.0 if gamma == 0 else 0.0
    torch.testing.assert_close(gradient, expected, rtol=1e-9, atol=1e-12)


def test_registered_by_name_and_kind_and_saved_files_round_trip() -> None:
    assert build_loss("gce", q=0.5).q == 0.5 and build_loss("focal", gamma=1.0).gamma == 1.0
    for loss in (GeneralizedCrossEntropyLoss(q=0.4, weight=[1.0, 2.0, 3.0]), FocalLoss(gamma=3, ignore_index=1)):
        rebuilt = loss_from_dict(loss_to_dict(loss))
        assert type(rebuilt) is type(loss) and rebuilt.config() == loss.config()


@pytest.mark.parametrize("make, message", [
    (lambda: GeneralizedCrossEntropyLoss(q=0), r"q must be a number in \(0, 1\]"),
    (lambda: GeneralizedCrossEntropyLoss(q=1.5), r"q must be a number in \(0, 1\]"),
    (lambda: FocalLoss(gamma=-1), "gamma must be a number >= 0"),
    (lambda: FocalLoss(gamma=math.nan), "gamma must be a number >= 0"),
    (lambda: FocalLoss(gamma=True), "gamma must be a number"),
    (lambda: FocalLoss(task="regression"), "classification loss"),
])
def test_bad_hyper_parameters_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_single_output_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="single output.*two outputs with softmax"):
        FocalLoss()(torch.zeros(4, 1, dtype=F64), torch.zeros(4, dtype=torch.long))
