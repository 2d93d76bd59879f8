"""The two task losses with closed forms: cross-entropy and squared error.

They are PyTorch's: ``CrossEntropyLoss()`` equals ``torch.nn.functional.cross_entropy``
(sum over classes, mean over the batch; ``binary_cross_entropy_with_logits`` for one
output) and ``SquaredErrorLoss()`` equals ``torch.nn.functional.mse_loss``, in value and
gradient. :func:`task_loss_module`, :func:`task_loss` and :func:`task_gradient` are the one
definition of the *task* loss that everything else reads: the fixed baseline, the
meta-objective, the gradient normalisation of ``GradientScaledLoss``, evaluation and the
logged losses.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import LearnedLoss
from losses.symbols import Y_PRED, Y_TRUE


def _log_clamped(p: Tensor) -> Tensor:
    """``log(max(p, tiny))`` with tiny the smallest normal number of p's dtype."""
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class CrossEntropyLoss(LearnedLoss):
    """Cross-entropy, per element ``ℓ(y_pred, y) = -y·log(y_pred)``; a drop-in ``nn.CrossEntropyLoss``.

    ``forward(outputs, targets)`` is ``torch.nn.CrossEntropyLoss(reduction=reduction,
    label_smoothing=label_smoothing)(outputs, targets)`` in value and gradient, for class
    indices (B,) and class probabilities (B, C) alike: the loss of a sample sums ℓ over
    the C outputs; ``"mean"`` averages samples, ``"sum"`` adds them, ``"none"`` returns one
    value per sample, shape (B,). So it is a baseline at the learning rate a PyTorch user
    would choose. (A learned loss averages over batch *and* outputs instead, as in the
    paper; see ``LearnedLoss.mean_over``.) With ``binary`` it is
    ``torch.nn.BCEWithLogitsLoss(reduction=reduction)`` on the squeezed logits (B,).

    Label smoothing ε is a change of targets, not of the formula: ``forward`` evaluates
    the same per-element ``-y·log(y_pred)`` at ``y' = (1 - ε)·y + ε/C`` (C = 2 for
    ``binary``, so binary smoothing equals two-class smoothing: ``y' = (1 - ε)·y + ε/2``).
    ``elementwise``, ``to_sympy`` and ``to_python`` stay the unsmoothed ℓ.

    ``elementwise`` clamps the probability at ``tiny = torch.finfo(dtype).tiny``
    (1.2e-38 in float32, 2.2e-308 in float64) so that it is finite on all of
    [0, 1]; ``to_sympy()`` gives the unclamped ``-y*log(y_pred)``, which agrees
    wherever ``y_pred >= tiny`` (at ``y_pred = 0`` it is NaN or infinite).
    ``forward`` uses ``log_softmax`` (``logsigmoid`` for ``binary``): it equals
    ``elementwise(softmax(outputs), y)`` wherever the probabilities are
    ``>= tiny`` and beyond that keeps the exact, finite log-probability and its
    gradient instead of saturating.

    Args:
        task: ``"classification"`` (default) or ``"regression"``.
        binary: Binary cross-entropy ``-y·log(y_pred) - (1-y)·log(1-y_pred)`` for a
            single sigmoid output (C == 1). Plain cross-entropy with C == 1 would
            only see the positive class, so ``forward`` refuses it.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, as in ``nn.CrossEntropyLoss``.
        label_smoothing: ε in [0, 1]; 0 (default) is no smoothing. Classification only.
    """

    kind = "cross_entropy"
    mean_over = "batch"

    def __init__(self, *, task: str = "classification", binary: bool = False, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__(task=task, reduction=reduction)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1] (0: none, e.g. 0.1); got {label_smoothing!r}")
        if label_smoothing and task != "classification":
            raise ValueError("label_smoothing smooths class targets; use label_smoothing=0 for regression")
        self.binary = bool(binary)
        self.label_smoothing = float(label_smoothing)

    def smooth_targets(self, y_true: Tensor) -> Tensor:
        """``(1 - ε)·y + ε/C`` of encoded targets (B, C), C = 2 for ``binary``; y itself when ε = 0."""
        if not self.label_smoothing:
            return y_true
        classes = 2 if self.binary else y_true.shape[1]
        return (1 - self.label_smoothing) * y_true + self.label_smoothing / classes

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        loss = -y_true * _log_clamped(y_pred)
        if self.binary:
            loss = loss - (1 - y_true) * _log_clamped(1 - y_pred)
        return loss

    def _elementwise_from_outputs(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        if self.task != "classification":
            return super()._elementwise_from_outputs(outputs, y_true)
        num_outputs = outputs.shape[1]
        if self.binary != (num_outputs == 1):
            raise ValueError(
                "CrossEntropyLoss(binary=True) needs a single output (C == 1)" if self.binary else
                "CrossEntropyLoss with a single output (C == 1) would only see the positive class; "
                "use CrossEntropyLoss(binary=True), or two outputs with softmax"
            )
        y_true = self.smooth_targets(y_true)
        if self.binary:
            return -y_true * F.logsigmoid(outputs) - (1 - y_true) * F.logsigmoid(-outputs)
        return -y_true * torch.log_softmax(outputs, dim=1)

    def to_sympy(self) -> sympy.Expr:
        """``-y*log(y_pred)`` (binary: ``-y*log(y_pred) - (1 - y)*log(1 - y_pred)``), unclamped."""
        expr = -Y_TRUE * sympy.log(Y_PRED)
        if self.binary:
            expr = expr - (1 - Y_TRUE) * sympy.log(1 - Y_PRED)
        return expr

    def to_python(self) -> str:
        """Source of ``def loss(y_pred, y):`` including the clamp, so it equals ``elementwise`` on [0, 1]."""
        body = "-y * _log(y_pred)"
        if self.binary:
            body += " - (1 - y) * _log(1 - y_pred)"
        return (
            "import torch\n\n\n"
            "def _log(p):\n"
            "    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))\n\n\n"
            "def loss(y_pred, y):\n"
            '    """Per-element cross-entropy; y_pred and y are tensors of one shape."""\n'
            f"    return {body}\n"
        )

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "binary": self.binary, "reduction": self.reduction,
                "label_smoothing": self.label_smoothing}


class SquaredErrorLoss(LearnedLoss):
    """Squared error, per element ``ℓ(y_pred, y) = (y_pred - y)**2``; a drop-in ``nn.MSELoss``.

    For regression ``forward`` equals ``torch.nn.MSELoss(reduction=reduction)`` in value and
    gradient: ``"mean"`` over batch and outputs, ``"sum"``, or ``"none"`` with the outputs'
    shape (B, C). For classification it is the Brier score per element (probabilities
    against one-hot targets), reduced the same way.

    Args:
        task: ``"regression"`` (default) or ``"classification"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    kind = "squared_error"

    def __init__(self, *, task: str = "regression", reduction: str = "mean") -> None:
        super().__init__(task=task, reduction=reduction)

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return (y_pred - y_true) ** 2

    def to_sympy(self) -> sympy.Expr:
        return (Y_PRED - Y_TRUE) ** 2

    def config(self) -> dict[str, Any]:
        return {"task": self.task, "reduction": self.reduction}


def task_loss_module(task: str, num_outputs: int) -> CrossEntropyLoss | SquaredErrorLoss:
    """The task loss of a problem: cross-entropy (binary for one output) or squared error.

    Args:
        task: ``"classification"`` or ``"regression"``.
        num_outputs: C, the number of model outputs (C == 1 classification is binary).
    """
    if task == "classification":
        return CrossEntropyLoss(binary=num_outputs == 1)
    if task == "regression":
        return SquaredErrorLoss()
    raise ValueError(f"unknown task {task!r}: use 'classification' or 'regression'")


def task_loss(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """The task loss (mean reduction) of raw outputs (B, C) against labels or targets.

    Equal to ``F.cross_entropy(outputs, labels)`` (``F.binary_cross_entropy_with_logits``
    for C == 1) or ``F.mse_loss(outputs, targets)``; the meta-objective and evaluation.
    """
    return task_loss_module(task, outputs.shape[1])(outputs, targets)


def task_gradient(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """∂ task_loss / ∂outputs in closed form, for already encoded targets.

    Cross-entropy: (softmax(f) − y)/B (sigmoid for one output); squared error:
    2(f − y)/(B·C). Tests compare it with autograd through :func:`task_loss`.

    Args:
        outputs: raw model outputs (B, C); targets: encoded (B, C), same dtype (class
            probabilities must sum to 1 per row, as one-hot labels do).
        task: "classification" or "regression".
    """
    batch = outputs.shape[0]
    if task == "classification":
        if outputs.shape[1] == 1:
            return (torch.sigmoid(outputs) - targets) / batch
        return (torch.softmax(outputs, dim=1) - targets) / batch
    return 2.0 * (outputs - targets) / outputs.numel()
