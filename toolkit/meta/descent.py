"""The descent guard: a learned loss's base step never goes uphill for the task loss.

A fresh or drifting learned loss can be anti-aligned with the task: its gradient with
respect to the model outputs, m_i = ∂M/∂f_i, points uphill for the task loss,
⟨m_i, r_i⟩ < 0 with r_i = ∂L_task/∂f_i, and SGD then trains the model backwards. The
guard reflects every such row across the hyperplane orthogonal to r_i,

    m_i ← m_i − 2 ⟨m_i, r̂_i⟩ r̂_i   where ⟨m_i, r_i⟩ < 0,   r̂_i = r_i / ‖r_i‖,

which keeps the row's length and turns its uphill component downhill, so that
⟨m_i, r_i⟩ ≥ 0 for every sample (descent for each sample's task loss, to first order in
the model's outputs). Samples share parameters, so that alone does not make the step
g = Jᵀm a descent direction of the batch: the same reflection is then applied once more
in parameter space, against the task loss's own gradient g_L = Jᵀr on the batch, where
⟨g, g_L⟩ < 0. The base step is then never an ascent direction of the batch's task loss.

Both hold to first order only: a finite step along a direction of high curvature can still
raise the loss (seen on a BatchNorm CNN at lr 0.1). So the step about to be taken is checked
too (:func:`toolkit.meta.online.accept_or_fall_back`, used by the online learner and by a frozen
learned loss's stepper): when the training batch's task loss at θ' is not below
its value at θ (one extra forward), it takes the task loss's own step instead (so a learned
loss that is flat where the model is, with a zero gradient, cannot stall training), and still
applies the meta-gradient of the rejected step, which teaches the loss not to take it again.

Each reflection H is linear and symmetric for a fixed choice of what reflects, so the
meta-gradient through the guarded step stays exact: the loss's pullback takes H u instead
of u, and the tangent direction is H v instead of v. What reflects is decided on detached
values, with no host synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losses import encode_targets
from losses.standard import task_gradient


@dataclass(frozen=True)
class Reflection:
    """t ↦ H t = t − 2 (t · d_i) d_i per row, d_i = r̂_i on reflected rows and 0 elsewhere.

    Attributes:
        direction: (B, C) unit task-gradient rows where the learned gradient points uphill, else 0.
        count: the number of reflected rows (a 0-d device tensor).
        task_gradient: r = ∂L_task/∂f on the batch (B, C), detached.
    """

    direction: Tensor
    count: Tensor
    task_gradient: Tensor

    def __call__(self, t: Tensor) -> Tensor:
        return t - 2.0 * (t * self.direction).sum(dim=1, keepdim=True) * self.direction


def descent_reflection(m: Tensor, outputs: Tensor, targets: Tensor, task: str) -> Reflection:
    """The reflection that makes the learned gradient ``m`` (B, C) a descent direction per sample.

    Args:
        m: ∂M/∂f on the batch (only its value is read).
        outputs: the model outputs f (B, C); targets: labels or regression targets.
        task: "classification" or "regression" (the task loss, ``losses.task_loss``).
    """
    with torch.no_grad():
        f = outputs.detach()
        r = task_gradient(f, encode_targets(targets, f, task), task)
        dot = (m.detach() * r).sum(dim=1, keepdim=True)
        norm = r.norm(dim=1, keepdim=True)
        uphill = (dot < 0) & (norm > 0)
        direction = torch.where(uphill, r / norm.clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(r))
        return Reflection(direction=direction, count=uphill.sum(), task_gradient=r)


@dataclass(frozen=True)
class ParameterReflection:
    """g ↦ H g = g − 2 (g · d) d over all parameters, d = ĝ_L when the batch step points uphill, else 0.

    ``g`` and ``d`` are name → tensor dicts; H is linear and symmetric for a fixed ``uphill``.

    Attributes:
        direction: the unit task-loss gradient ĝ_L (name → tensor), scaled by 0 or 1.
        uphill: whether the learned step pointed uphill for the batch task loss (0-d bool tensor).
    """

    direction: dict[str, Tensor]
    uphill: Tensor

    def __call__(self, g: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(self.direction)
        if not names:
            return dict(g)
        dot = torch.stack([(g[k] * self.direction[k]).sum() for k in names]).sum()
        return {k: g[k] - 2.0 * dot * self.direction[k] for k in names}


def parameter_reflection(grads: dict[str, Tensor], task_grads: dict[str, Tensor]) -> ParameterReflection:
    """The reflection that makes the learned parameter gradient a descent direction of the batch task loss.

    Args:
        grads: ∇θ M (the learned loss's gradient, after the per-sample guard); only values are read.
        task_grads: ∇θ L_task on the same batch and parameters.
    """
    with torch.no_grad():
        names = list(grads)
        if not names:
            return ParameterReflection(direction={}, uphill=torch.zeros((), dtype=torch.bool))
        dot = torch.stack([(grads[k].detach() * task_grads[k]).sum() for k in names]).sum()
        norm = torch.stack([task_grads[k].pow(2).sum() for k in names]).sum().sqrt()
        uphill = (dot < 0) & (norm > 0)
        scale = torch.where(uphill, 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
        return ParameterReflection(direction={k: task_grads[k] * scale for k in names}, uphill=uphill)


__all__ = ["Reflection", "descent_reflection", "ParameterReflection",
           "parameter_reflection"]
