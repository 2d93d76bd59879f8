"""The descent guard: a learned loss's base step never raises the task loss of a sample.

A fresh or drifting learned loss can be anti-aligned with the task: its gradient with
respect to the model outputs, m_i = ∂M/∂f_i, points uphill for the task loss,
⟨m_i, r_i⟩ < 0 with r_i = ∂L_task/∂f_i, and SGD then trains the model backwards. The
guard reflects every such row across the hyperplane orthogonal to r_i,

    m_i ← m_i − 2 ⟨m_i, r̂_i⟩ r̂_i   where ⟨m_i, r_i⟩ < 0,   r̂_i = r_i / ‖r_i‖,

which keeps the row's length and turns its uphill component downhill, so that
⟨m_i, r_i⟩ ≥ 0 for every sample: the step is a descent direction of each sample's task
loss to first order in the model's outputs. The reflection H is linear and symmetric for
a fixed set of reflected rows, so the meta-gradient through the guarded step stays exact:
the loss's pullback takes H u instead of u. Which rows reflect is decided on detached
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
    """

    direction: Tensor
    count: Tensor

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
        return Reflection(direction=direction, count=uphill.sum())


def guarded_output_gradient(value: Tensor, outputs: Tensor, targets: Tensor, task: str, *,
                            create_graph: bool = False) -> tuple[Tensor, Reflection]:
    """(H m, H) for m = ∂value/∂outputs by autograd: what a guarded step backpropagates into the model."""
    (m,) = torch.autograd.grad(value, outputs, create_graph=create_graph, retain_graph=True)
    reflect = descent_reflection(m, outputs, targets, task)
    return reflect(m), reflect


__all__ = ["Reflection", "descent_reflection", "guarded_output_gradient"]
