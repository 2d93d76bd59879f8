"""PyTorch's criterion conventions for losses over C classes: shapes, ``weight``, ``ignore_index``.

``torch.nn.CrossEntropyLoss`` takes raw outputs of shape (B, C), unbatched (C,) or
K-dimensional (B, C, d1, ..., dK) (the class dimension is always the one after the batch),
with class-index targets of the outputs' shape less the class dimension ((B,), (), (B, d1, ...,
dK)) or class-probability targets of the outputs' own shape. :class:`ClassCriterion` gives
every loss written as a per-element function of log-probabilities and targets those same
shapes and options, so cross-entropy and the robust losses (:mod:`losses.robust`) share them:

- Probability targets: the loss of a sample is ``Σ_c w_c·ℓ(log p_c, y'_c)`` with the smoothed
  targets ``y' = (1 - ε)·y + ε/C``; ``"mean"`` divides the sum by the number of samples N.
- Class-index targets: the same, with y the one-hot label. A sample whose label equals
  ``ignore_index`` contributes 0, and ``"mean"`` divides by ``Σ_i w_{y_i}`` over the samples
  not ignored (their count without ``weight``): PyTorch's weighted mean, label smoothing
  included (``F.cross_entropy`` adds ``ε/C·Σ_c w_c·(-log p_c)`` to each sample and divides
  both parts by that same sum).

``"none"`` returns one value per sample, shaped like the class-index targets.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import Tensor

from losses.base import LearnedLoss, check_label_range, reduce_loss

IGNORE_INDEX = -100
"""PyTorch's default ``ignore_index``: no valid class has it, so nothing is ignored unless labels carry it."""


def check_label_smoothing(label_smoothing: object) -> float:
    """ε as a float, or ValueError unless it is a number in [0, 1]."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be a number in [0, 1] (0: none, e.g. 0.1); got {label_smoothing!r}")
    return float(label_smoothing)


def class_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    """``weight`` as a 1-D floating tensor (a copy), None as None; ValueError for anything else."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        try:
            weight = torch.tensor(weight, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"weight must be one number per class, e.g. [1.0, 2.0, 0.5]; got {weight!r}") from None
    if weight.dim() != 1 or weight.numel() == 0 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 1-D floating tensor of C class weights (torch.tensor([1.0, 2.0, 0.5])); "
                         f"got {weight.dtype} of shape {tuple(weight.shape)}")
    return weight.detach().clone()


def _shape_name(dims: int, *, classes: bool) -> str:
    """``(B, C)``, ``(C,)``, ``(B, C, d1, ..., dK)`` and the matching class-index shapes."""
    if dims == 1:
        return "(C,)" if classes else "()"
    middle = "C, " if classes else ""
    return f"(B, {middle}d1, ..., dK)" if dims > 2 else ("(B, C)" if classes else "(B,)")


def check_class_shapes(outputs: object, targets: object) -> tuple[int, ...]:
    """Check outputs and targets against PyTorch's cross-entropy shapes; return the class-index shape.

    Raises:
        TypeError: not tensors, integer outputs, float targets shaped like class indices, boolean labels.
        ValueError: a scalar output, targets of neither accepted shape, targets on another device.
    """
    if not isinstance(outputs, Tensor) or not isinstance(targets, Tensor):
        wrong = outputs if not isinstance(outputs, Tensor) else targets
        raise TypeError(f"outputs and targets must be torch.Tensors; got {type(wrong).__name__}")
    if not outputs.is_floating_point():
        raise TypeError(f"outputs must be floating point (raw model outputs); got {outputs.dtype}. "
                        "Pass the model's logits, e.g. outputs.float()")
    if outputs.dim() == 0:
        raise ValueError("outputs must have shape (B, C), (C,) unbatched or (B, C, d1, ..., dK); got a scalar. "
                         "Pass one logit per class")
    if targets.device != outputs.device:
        raise ValueError(f"targets are on {targets.device} but outputs on {outputs.device}; move them together")
    if targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"classification targets must be integer class labels (torch.long) or float class "
                        f"probabilities; got {targets.dtype}. Use targets.long()")
    index_shape = () if outputs.dim() == 1 else (outputs.shape[0], *outputs.shape[2:])
    index_name = f"{_shape_name(outputs.dim(), classes=False)} = {index_shape}"
    output_name = f"{_shape_name(outputs.dim(), classes=True)} = {tuple(outputs.shape)}"
    if targets.is_floating_point():
        if targets.shape == outputs.shape:
            return index_shape
        if targets.shape == index_shape:
            raise TypeError(f"classification targets must be integer class labels (torch.long) of shape {index_name}, "
                            f"or class probabilities of shape {output_name}; got {targets.dtype} of shape "
                            f"{tuple(targets.shape)}. Use targets.long() for float labels")
        raise ValueError(f"class-probability targets must have shape {output_name} like the outputs; got "
                         f"{tuple(targets.shape)}. Pass C probabilities per sample, or integer labels of shape "
                         f"{index_name}")
    if targets.shape != index_shape:
        raise ValueError(f"classification targets must have shape {index_name} to match outputs "
                         f"{tuple(outputs.shape)}; got {tuple(targets.shape)}. Pass one-hot or probability rows "
                         "as floats, or targets.argmax(dim=1)")
    return index_shape


def flatten_classes(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs as (N, C) rows and targets as (N,) labels or (N, C) probabilities, for checked shapes.

    (B, C) stays as it is; (C,) becomes one row; (B, C, d1, ..., dK) moves the classes last
    and puts the N = B·d1·…·dK positions in rows.
    """
    if outputs.dim() == 1:
        return outputs.unsqueeze(0), targets.unsqueeze(0)
    if outputs.dim() == 2:
        return outputs, targets
    classes = outputs.shape[1]
    rows = outputs.movedim(1, -1).reshape(-1, classes)
    if targets.is_floating_point():
        return rows, targets.movedim(1, -1).reshape(-1, classes)
    return rows, targets.reshape(-1)


class ClassCriterion(LearnedLoss):
    """A loss over C classes with ``torch.nn.CrossEntropyLoss``'s shapes and options (module docstring).

    Subclasses give ``_per_class(log_probs, y)``, the per-element loss from log-probabilities
    and (smoothed) targets, both (N, C); the forward, ``weight``, ``ignore_index``, label
    smoothing and the reductions are shared.

    Args:
        task: ``"classification"``; ``"regression"`` only where a subclass allows it.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        weight: a weight per class, shape (C,) (a tensor or a list), or None (all 1); a buffer,
            so ``loss.to(...)`` moves it.
        ignore_index: a label whose samples are left out (default -100, as in PyTorch).
        label_smoothing: ε in [0, 1]; the targets become ``(1 - ε)·y + ε/C``.
    """

    mean_over = "batch"

    def __init__(self, *, task: str = "classification", reduction: str = "mean",
                 weight: Tensor | Sequence[float] | None = None, ignore_index: int = IGNORE_INDEX,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(task=task, reduction=reduction)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer label (default -100: none); got {ignore_index!r}")
        if task != "classification" and self.label_smoothing:
            raise ValueError("label_smoothing smooths class targets; use label_smoothing=0 for regression")
        if task != "classification" and weight is not None:
            raise ValueError("weight rescales classes; use weight=None for regression")
        self.ignore_index = ignore_index
        self.register_buffer("weight", class_weight(weight))

    @abc.abstractmethod
    def _per_class(self, log_probs: Tensor, y_true: Tensor) -> Tensor:
        """Per-element loss (N, C) from log-probabilities and targets (N, C), before ``weight``."""

    def smooth_targets(self, y_true: Tensor) -> Tensor:
        """``(1 - ε)·y + ε/C`` of encoded targets (N, C); y itself when ε = 0."""
        if not self.label_smoothing:
            return y_true
        return (1 - self.label_smoothing) * y_true + self.label_smoothing / y_true.shape[1]

    def _elementwise_from_outputs(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        """``w_c·ℓ(log p, y')`` per element (N, C) of raw outputs and encoded targets (probability-target rules)."""
        if self.task != "classification":
            return super()._elementwise_from_outputs(outputs, y_true)
        self._check_classes(outputs.shape[1])
        loss = self._per_class(torch.log_softmax(outputs, dim=1), self.smooth_targets(y_true))
        return loss if self.weight is None else loss * self.weight

    def _check_classes(self, classes: int) -> None:
        if classes == 1:
            raise ValueError(f"{type(self).__name__} over a single output (C == 1) would only see one class; "
                             "use two outputs with softmax")
        if self.weight is not None and self.weight.shape != (classes,):
            raise ValueError(f"weight has {self.weight.numel()} entries but the outputs have C = {classes} classes; "
                             "pass one weight per class")

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of raw outputs (B, C), (C,) or (B, C, d1, ..., dK) against labels or probabilities.

        Returns:
            A scalar for ``"mean"`` and ``"sum"``; for ``"none"`` one value per sample, shaped like
            class-index targets ((B,), () or (B, d1, ..., dK)).
        """
        if self.task != "classification":
            return super().forward(outputs, targets)
        shape = check_class_shapes(outputs, targets)
        self._check_dtype(outputs.dtype)
        rows, targets = flatten_classes(outputs, targets)
        loss = self._class_loss(rows, targets)
        return loss.reshape(shape) if self.reduction == "none" else loss

    def _checked_targets(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Targets of rows (N, C) after the checks every class criterion makes: probabilities in the outputs'
        dtype, labels in range (or ``ignore_index``)."""
        self._check_classes(outputs.shape[1])
        if targets.is_floating_point():
            if self.ignore_index >= 0:
                raise ValueError("ignore_index is for class-index targets; with class probabilities leave it at -100")
            return targets.to(outputs.dtype)
        check_label_range(targets, outputs.shape[1], ignore_index=self.ignore_index)
        return targets

    def _class_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The reduced loss of rows (N, C) against labels (N,) or probabilities (N, C)."""
        targets = self._checked_targets(outputs, targets)
        if targets.is_floating_point():
            per_element = self._elementwise_from_outputs(outputs, targets)
            return reduce_loss(per_element, self.reduction, mean_over="batch")
        classes = outputs.shape[1]
        kept = targets != self.ignore_index
        labels = torch.where(kept, targets, 0)
        one_hot = (labels.unsqueeze(1) == torch.arange(classes, device=targets.device)).to(outputs.dtype)
        per_element = torch.where(kept.unsqueeze(1), self._elementwise_from_outputs(outputs, one_hot), 0)
        if self.reduction == "none":
            return per_element.sum(dim=1)
        if self.reduction == "sum":
            return per_element.sum()
        counted = kept.to(outputs.dtype) if self.weight is None else torch.where(kept, self.weight[labels], 0)
        return per_element.sum() / counted.sum()

    def _criterion_config(self) -> dict[str, object]:
        """``weight`` and ``ignore_index`` for ``config()``, only where they differ from the defaults."""
        extra: dict[str, object] = {}
        if self.weight is not None:
            extra["weight"] = self.weight.detach().cpu().double().tolist()
        if self.ignore_index != IGNORE_INDEX:
            extra["ignore_index"] = self.ignore_index
        return extra


__all__ = ["ClassCriterion", "IGNORE_INDEX", "check_class_shapes", "flatten_classes"]
