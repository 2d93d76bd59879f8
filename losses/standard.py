"""The two task losses with closed forms: cross-entropy and squared error.

They are PyTorch's: ``CrossEntropyLoss()`` equals ``torch.nn.functional.cross_entropy``
(sum over classes, mean over the batch; ``binary_cross_entropy_with_logits`` for one
output) and ``SquaredErrorLoss()`` equals ``torch.nn.functional.mse_loss``, in value and
gradient. :func:`task_loss_module` and :func:`task_loss` are the one definition of the *task* loss that
everything else reads (:func:`task_gradient` is derived from it): the fixed baseline, the
meta-objective, the gradient normalisation of ``GradientScaledLoss``, evaluation and the
logged losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import TASKS, LearnedLoss, check_choice, reduce_loss
from losses.criteria import IGNORE_INDEX, ClassCriterion
from losses.symbols import Y_PRED, Y_TRUE


def _log_clamped(p: Tensor) -> Tensor:
    """``log(max(p, tiny))`` with tiny the smallest normal number of p's dtype."""
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class CrossEntropyLoss(ClassCriterion):
    """Cross-entropy, per element ``ℓ(y_pred, y) = -y·log(y_pred)``; a drop-in ``nn.CrossEntropyLoss``.

    ``forward(outputs, targets)`` is ``torch.nn.CrossEntropyLoss(weight=weight,
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)(outputs,
    targets)`` in value and gradient, for outputs (B, C), unbatched (C,) or K-dimensional
    (B, C, d1, ..., dK), and class indices or class probabilities alike (the rules of
    :mod:`losses.criteria`): the loss of a sample sums ℓ over the C outputs; ``"mean"``
    averages samples (weighted by ``weight`` of their labels for class indices), ``"sum"`` adds
    them, ``"none"`` returns one value per sample. So it is a baseline at the learning rate a
    PyTorch user would choose. (A learned loss averages over batch *and* outputs instead, as in
    the paper; see ``LearnedLoss.mean_over``.) With ``binary`` it is
    ``torch.nn.BCEWithLogitsLoss(reduction=reduction)`` on the logits (B,) or the squeezed (B, 1).

    Label smoothing ε is a change of targets, not of the formula: ``forward`` evaluates
    the same per-element ``-y·log(y_pred)`` at ``y' = (1 - ε)·y + ε/C`` (C = 2 for
    ``binary``, so binary smoothing equals two-class smoothing: ``y' = (1 - ε)·y + ε/2``).
    ``elementwise``, ``to_sympy`` and ``to_python`` stay the unsmoothed, unweighted ℓ.

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
            single sigmoid output, logits (B,) or (B, 1). Plain cross-entropy with C == 1
            would only see the positive class, so ``forward`` refuses it.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, as in ``nn.CrossEntropyLoss``.
        label_smoothing: ε in [0, 1]; 0 (default) is no smoothing. Classification only.
        weight: a weight per class, shape (C,), or None; not with ``binary``.
        ignore_index: samples labelled so are left out (default -100, as in PyTorch); class
            indices only, not with ``binary``.
    """

    kind = "cross_entropy"

    def __init__(self, *, task: str = "classification", binary: bool = False, reduction: str = "mean",
                 label_smoothing: float = 0.0, weight: Tensor | Sequence[float] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(task=task, reduction=reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)
        if binary and (weight is not None or ignore_index != IGNORE_INDEX):
            raise ValueError("weight and ignore_index are for C >= 2 classes; CrossEntropyLoss(binary=True) "
                             "takes neither (weight the samples of a reduction='none' loss instead)")
        self.binary = bool(binary)

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

    def _per_class(self, log_probs: Tensor, y_true: Tensor) -> Tensor:
        return -y_true * log_probs

    def _check_classes(self, classes: int) -> None:
        if self.binary != (classes == 1):
            raise ValueError(
                "CrossEntropyLoss(binary=True) needs a single output (C == 1)" if self.binary else
                "CrossEntropyLoss with a single output (C == 1) would only see the positive class; "
                "use CrossEntropyLoss(binary=True), or two outputs with softmax"
            )
        if not self.binary:
            super()._check_classes(classes)

    def _elementwise_from_outputs(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        if self.task != "classification" or not self.binary:
            return super()._elementwise_from_outputs(outputs, y_true)
        self._check_classes(outputs.shape[1])
        y_true = self.smooth_targets(y_true)
        return -y_true * F.logsigmoid(outputs) - (1 - y_true) * F.logsigmoid(-outputs)

    def _class_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """PyTorch's own kernel, ``F.cross_entropy``, on rows (N, C) after the criterion's checks: the baseline is
        PyTorch's cross-entropy itself, not a formula that equals it (``elementwise`` and the exports keep ℓ)."""
        targets = self._checked_targets(outputs, targets)
        weight = None if self.weight is None else self.weight.to(outputs.dtype)
        return F.cross_entropy(outputs, targets, weight=weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of raw outputs against labels or probabilities, reduced (see the class docstring).

        Returns:
            A scalar for ``"mean"`` and ``"sum"``; for ``"none"`` one value per sample: (B,), () for
            unbatched (C,) outputs, (B, d1, ..., dK) for K-dimensional ones, (B,) for ``binary``.
        """
        if self.binary or self.task != "classification":
            return LearnedLoss.forward(self, outputs, targets)
        return super().forward(outputs, targets)

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
                "label_smoothing": self.label_smoothing, **self._criterion_config()}


class SquaredErrorLoss(LearnedLoss):
    """Squared error, per element ``ℓ(y_pred, y) = (y_pred - y)**2``; a drop-in ``nn.MSELoss``.

    For regression ``forward`` equals ``torch.nn.MSELoss(reduction=reduction)`` in value and
    gradient: ``"mean"`` over all elements, ``"sum"``, or ``"none"`` with the outputs' shape.
    Outputs (B, C) take targets (B, C), or (B,) when C == 1 (as a learned loss does); any
    other shape ((B,), a scalar, (B, C, d1, ...)) takes targets of the same shape, as
    ``F.mse_loss`` does without broadcasting. For classification it is the Brier score per
    element (probabilities against one-hot targets) of outputs (B, C) or (B,) (one sigmoid
    output), reduced the same way.

    Args:
        task: ``"regression"`` (default) or ``"classification"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """

    kind = "squared_error"

    def __init__(self, *, task: str = "regression", reduction: str = "mean") -> None:
        super().__init__(task=task, reduction=reduction)

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return (y_pred - y_true) ** 2

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Squared error of outputs against targets, reduced; any shape of equal outputs and targets for regression."""
        if self.task != "regression" or not isinstance(outputs, Tensor) or outputs.dim() in (1, 2):
            return super().forward(outputs, targets)
        if not isinstance(targets, Tensor) or not outputs.is_floating_point() or not targets.is_floating_point():
            raise TypeError("regression outputs and targets must be floating-point torch.Tensors; "
                            "use .to(torch.float32) or the outputs' dtype")
        if targets.shape != outputs.shape:
            raise ValueError(f"regression targets must have the outputs' shape {tuple(outputs.shape)}; got "
                             f"{tuple(targets.shape)}. Reshape them (e.g. targets.view_as(outputs))")
        if targets.device != outputs.device:
            raise ValueError(f"targets are on {targets.device} but outputs on {outputs.device}; move them together")
        per_element = (outputs - targets.to(outputs.dtype)) ** 2
        return per_element if self.reduction == "none" else reduce_loss(per_element.reshape(1, -1), self.reduction)

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
    check_choice("task", task, TASKS)
    return CrossEntropyLoss(binary=num_outputs == 1) if task == "classification" else SquaredErrorLoss()


def task_loss(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """The task loss (mean reduction) of raw outputs (B, C) against labels or targets.

    Equal to ``F.cross_entropy(outputs, labels)`` (``F.binary_cross_entropy_with_logits``
    for C == 1) or ``F.mse_loss(outputs, targets)``: :func:`task_loss_module`'s criterion,
    the meta-objective and evaluation. The criteria keep no state, so one of each is reused.
    """
    check_choice("task", task, TASKS)
    single = isinstance(outputs, Tensor) and outputs.dim() > 1 and outputs.shape[1] == 1
    return _TASK_CRITERIA[task][single](outputs, targets)


_TASK_CRITERIA = {task: {single: task_loss_module(task, 1 if single else 2) for single in (False, True)}
                  for task in TASKS}
"""One stateless criterion per task and output count, built once (and seen as constants by ``torch.compile``)."""


def task_gradient(outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    """∂ task_loss / ∂outputs, derived by ``torch.func.grad`` from :func:`task_loss` (its one definition).

    Cross-entropy's is (softmax(f) − y)/B (sigmoid for one output), squared error's 2(f − y)/(B·C);
    tests compare it with autograd through :func:`task_loss`. Works inside other ``torch.func``
    transforms and under ``torch.no_grad``.

    Where no derivative of the result can be asked for (no ``torch.func`` transform running, not
    compiling, and nothing requiring a gradient, e.g. the guard's detached outputs), the same derivative
    is taken by one ``torch.autograd.grad`` through :func:`task_loss` on a detached copy: ``torch.func.grad``
    costs its transform's set-up on every call, which on a small model was a large part of the guard's
    work. Both ways read :func:`task_loss` alone and give the same numbers.

    Args:
        outputs: raw model outputs (B, C); targets: encoded (B, C), same dtype (class
            probabilities, as one-hot labels are).
        task: "classification" or "regression".
    """
    if _plain_values(outputs, targets):
        with torch.enable_grad():
            leaf = outputs.detach().requires_grad_()
            return torch.autograd.grad(task_loss(leaf, targets, task), leaf)[0]
    return torch.func.grad(task_loss)(outputs, targets, task)


def _plain_values(*tensors: Tensor) -> bool:
    """Whether a result computed from ``tensors`` can never be differentiated and autograd may compute it: plain
    tensors, outside every ``torch.func`` transform and ``torch.compile`` trace and outside inference mode (whose
    tensors autograd refuses; ``torch.func.grad`` takes them), with no gradient asked of any of them."""
    if torch._C._functorch.peek_interpreter_stack() is not None or torch.compiler.is_compiling():
        return False
    if torch.is_inference_mode_enabled() or not all(isinstance(t, Tensor) and not t.is_inference() for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
