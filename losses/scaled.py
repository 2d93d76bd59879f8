"""A learned loss whose shape is learned and whose scale is an explicit, bounded multiplier.

Why: a one-step lookahead rewards whatever makes the next step larger, so a learned
loss trained that way (ML3's offline phase, AdaLFL's Algorithm 1) tends to learn a
hidden learning-rate multiplier: its gradient grows to many times the task loss's
(the short-horizon bias of greedy meta-objectives). From a fresh initialisation
that can saturate the base model at once. ``GradientScaledLoss`` separates the two:
the inner loss ℓ_φ gives only the *direction* of the gradient with respect to the
model outputs f; its *size* is the task loss's gradient size on the same batch
times a learned scale ``s`` bounded to [1/max_scale, max_scale]:

    ∂M/∂f = s · ‖∂L_task/∂f‖ / ‖∂ℓ̄_φ/∂f‖ · ∂ℓ̄_φ/∂f,     s = max_scale ** tanh(ρ),

with norms over the whole batch, ℓ̄_φ the mean inner loss and L_task the task loss
(``losses.standard.task_loss``: PyTorch's cross-entropy or mean squared error), as in
the meta-objective, the baseline and evaluation. The factor
k = s·‖∂L_task/∂f‖/‖∂ℓ̄_φ/∂f‖ is computed on detached outputs, so it is a constant
of the base step (the gradient with respect to f is exactly k·∂ℓ̄_φ/∂f) while it
still depends on φ and ρ, so meta-gradients see how the shape and the scale move
the step. The per-element formula (``elementwise``, ``to_sympy``) is the inner
loss's shape; ``scale`` reports s.

``reduction`` reduces the per-element values k·ℓ_φ as the inner loss would (``mean_over``):
``"mean"`` (default) is M above, ``"sum"`` adds them up (its gradient is the mean's times
the number of terms), ``"none"`` returns them. The inner loss's own reduction must stay
the default: only its mean enters k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import sympy
import torch
from torch import Tensor, nn

from losses.base import LOSS_CLASSES, LearnedLoss, encode_targets, reduce_loss, require_scalar
from losses.standard import task_gradient


class GradientScaledLoss(LearnedLoss):
    """Wraps a learned loss: its gradient's direction, the task loss's gradient size times ``scale``.

    Args:
        shape: the inner learned loss ℓ_φ (e.g. ``MLPLoss()``); its task is used.
        max_scale: bound B >= 1 on the learned multiplier: s ∈ [1/B, B]; s starts at 1
            (B = 1 fixes s = 1: the learned loss sets the direction only).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` of the per-element k·ℓ_φ
            (see the module docstring).

    Attributes:
        scale_logit: ρ, the unconstrained scalar behind s = B ** tanh(ρ).
    """

    kind = "gradient_scaled"

    def __init__(self, shape: LearnedLoss | Mapping[str, Any] | None = None, *, max_scale: float = 1.0,
                 task: str | None = None, reduction: str = "mean") -> None:
        shape = self._build_shape(shape, task)
        super().__init__(task=shape.task, reduction=reduction)
        if task is not None and task != shape.task:
            raise ValueError(f"task {task!r} differs from the inner loss's task {shape.task!r}")
        if shape.reduction != "mean":
            raise ValueError(
                f"the inner loss's reduction={shape.reduction!r} would be ignored (only its mean sets the "
                f"direction); build the inner loss with the default and pass reduction={shape.reduction!r} "
                "to GradientScaledLoss"
            )
        self.mean_over = shape.mean_over  # reduce k·ℓ_φ as the inner loss reduces ℓ_φ
        if not (isinstance(max_scale, (int, float)) and math.isfinite(max_scale) and max_scale >= 1):
            raise ValueError(f"max_scale must be a finite number >= 1 (e.g. 2.0; 1 fixes the scale); "
                             f"got {max_scale!r}")
        self.shape = shape
        self.max_scale = float(max_scale)
        dtype = next((p.dtype for p in shape.parameters() if p.is_floating_point()), torch.get_default_dtype())
        self.scale_logit = nn.Parameter(torch.zeros((), dtype=dtype))

    @staticmethod
    def _build_shape(shape: LearnedLoss | Mapping[str, Any] | None, task: str | None) -> LearnedLoss:

        if shape is None:
            from losses.mlp import MLPLoss
            return MLPLoss(task=task or "classification")
        if isinstance(shape, LearnedLoss):
            if isinstance(shape, GradientScaledLoss):
                raise ValueError("the inner loss is already a GradientScaledLoss; wrap its .shape instead")
            return shape
        if isinstance(shape, Mapping) and set(shape) == {"kind", "config"}:
            cls = LOSS_CLASSES.get(shape["kind"])
            if cls is None or cls is GradientScaledLoss:
                raise ValueError(f"unknown inner loss kind {shape['kind']!r}; known kinds: {', '.join(LOSS_CLASSES)}")
            return cls.from_config(shape["config"])
        raise TypeError(f"shape must be a LearnedLoss or {{'kind': ..., 'config': ...}}; got {type(shape).__name__}")

    @property
    def scale(self) -> Tensor:
        """s = max_scale ** tanh(ρ), in [1/max_scale, max_scale] (a 0-d tensor, differentiable)."""
        return torch.exp(math.log(self.max_scale) * torch.tanh(self.scale_logit))

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return self.shape._elementwise(y_pred, y_true)

    def _elementwise_from_outputs(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        return self.shape._elementwise_from_outputs(outputs, y_true)

    def factor(self, outputs: Tensor, y_true: Tensor) -> Tensor:
        """k = s·‖∂L_task/∂f‖ / ‖∂ℓ̄_φ/∂f‖ on this batch: no gradient to ``outputs``, gradients to φ and ρ.

        Args:
            outputs: raw outputs (B, C); y_true: encoded targets (B, C).
        """
        return self._normalised(outputs, y_true)[0]

    def _normalised(self, outputs: Tensor, y_true: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(k, ℓ̄_φ, ∂ℓ̄_φ/∂f) on detached outputs; k and the gradient stay differentiable in φ and ρ."""
        f = outputs.detach()
        inner, direction = self.shape.mean_and_output_gradient(f, y_true)
        return self._factor_of(f, y_true, direction)[0], inner, direction

    def _factor_of(self, f: Tensor, y_true: Tensor, direction: Tensor) -> tuple[Tensor, Tensor, float]:
        """(k, ‖d‖, tiny): k = s·‖r‖ / max(‖d‖, tiny) for the inner loss's gradient d, r the task loss's."""
        tiny = torch.finfo(f.dtype).eps ** 2
        norm = direction.norm()
        return self.scale * task_gradient(f, y_true, self.task).norm() / norm.clamp_min(tiny), norm, tiny

    def value_and_output_gradient(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(k·ℓ̄_φ, k·∂ℓ̄_φ/∂f)``: the forward and its output gradient from one derived inner gradient.

        The same numbers as ``torch.func.grad`` of :meth:`forward` (k is a constant of f), which
        would differentiate the inner loss twice: once inside k and once for the gradient. For
        ``"sum"`` both are the mean's times the number of terms the mean averages.
        """
        require_scalar(self)
        y_true = encode_targets(targets, outputs, self.task)
        self._check_dtype(outputs.dtype)
        k, inner, direction = self._normalised(outputs, y_true)
        if self.reduction == "sum":
            k = k * (outputs.shape[0] if self.mean_over == "batch" else outputs.numel())
        return k * inner, k * direction

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """k · ℓ_φ on a batch, reduced; with ``"mean"`` ∂/∂outputs has the task loss's norm times ``scale``."""
        y_true = encode_targets(targets, outputs, self.task)
        self._check_dtype(outputs.dtype)
        per_element = self._elementwise_from_outputs(outputs, y_true)
        return self.factor(outputs, y_true) * reduce_loss(per_element, self.reduction, mean_over=self.mean_over)

    def to_sympy(self) -> sympy.Expr:
        """The inner loss's per-element shape (the scale is set per batch; see the class docstring)."""
        return self.shape.to_sympy()

    def config(self) -> dict[str, Any]:
        return {"shape": {"kind": self.shape.kind, "config": self.shape.config()}, "max_scale": self.max_scale,
                "task": self.task, "reduction": self.reduction}

    def extra_repr(self) -> str:
        return f"max_scale={self.max_scale!r}, reduction={self.reduction!r}"


__all__ = ["GradientScaledLoss", "task_gradient"]
