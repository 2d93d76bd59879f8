"""Pure Adam for the loss parameters, in the optax style: ``init`` and ``update``.

The meta optimiser must be able to *skip* an update without a host round trip
(a non-finite meta-gradient must leave parameters and moments untouched), which
``torch.optim.Adam`` cannot do without reading the flag on the host. Here every
update takes an optional boolean tensor ``apply``; where it is False the new state
equals the old one, selected on the device with ``torch.where``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from toolkit.meta.rules import adam_arrays

TensorDict = dict[str, Tensor]


@dataclass(frozen=True)
class AdamState:
    """Adam's moments and step count (a tensor, so bias correction needs no host value)."""

    step: Tensor
    exp_avg: TensorDict
    exp_avg_sq: TensorDict

    def state_dict(self) -> dict:
        return {"step": self.step, "exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}

    @staticmethod
    def from_state_dict(state: Mapping) -> "AdamState":
        return AdamState(step=state["step"], exp_avg=dict(state["exp_avg"]), exp_avg_sq=dict(state["exp_avg_sq"]))


def adam_init(params: Mapping[str, Tensor]) -> AdamState:
    """Zero moments shaped like ``params``."""
    first = next(iter(params.values()))
    return AdamState(step=torch.zeros((), dtype=first.dtype, device=first.device),
                     exp_avg={k: torch.zeros_like(p) for k, p in params.items()},
                     exp_avg_sq={k: torch.zeros_like(p) for k, p in params.items()})


def adam_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: AdamState, *,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                apply: Tensor | None = None) -> tuple[TensorDict, AdamState]:
    """One Adam step (the semantics of ``torch.optim.Adam`` without weight decay).

    Args:
        params: φ; grads: dL/dφ (same names).
        state: moments from :func:`adam_init` or a previous update.
        lr, betas, eps: Adam's hyperparameters.
        apply: optional boolean scalar tensor; where False, params and state are unchanged.

    Returns:
        (new params, new state); inputs are not modified.
    """
    names = list(params)
    p = [params[k] for k in names]
    old_m = [state.exp_avg[k] for k in names]
    old_v = [state.exp_avg_sq[k] for k in names]
    new_p, m, v, step, _ = adam_arrays(p, [grads[k] for k in names], old_m, old_v, state.step, lr=lr, betas=betas,
                                       eps=eps)
    if apply is not None:
        keep = lambda new, old: [torch.where(apply, a, b) for a, b in zip(new, old)]  # noqa: E731
        new_p, m, v = keep(new_p, p), keep(m, old_m), keep(v, old_v)
        step = torch.where(apply, step, state.step)
    new_params, exp_avg, exp_avg_sq = dict(zip(names, new_p)), dict(zip(names, m)), dict(zip(names, v))
    return new_params, AdamState(step=step, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)


def apply_meta_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: AdamState, *,
                      lr: float, clip: float | None = None, apply: Tensor | None = None) -> AdamState:
    """Clip ``grads``, take an Adam step and write it into ``params`` in place; return the new state.

    ``params`` are the loss module's parameters themselves; where ``apply`` is False
    they and the state stay unchanged (selected on the device, no host sync).
    """
    new_params, state = adam_update(params, clip_by_global_norm(grads, clip), state, lr=lr, apply=apply)
    with torch.no_grad():
        torch._foreach_copy_(list(params.values()), [new_params[k] for k in params])
    return state


def clip_by_global_norm(grads: Mapping[str, Tensor], max_norm: float | None) -> TensorDict:
    """Scale ``grads`` so their joint L2 norm is at most ``max_norm`` (None: unchanged)."""
    if max_norm is None:
        return dict(grads)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = (max_norm / (norm + 1e-12)).clamp(max=1.0)
    return {k: g * scale for k, g in grads.items()}


def all_finite(tensors) -> Tensor:
    """A boolean scalar tensor: every element of every tensor is finite (no host sync).

    One fused (foreach) norm per tensor: a NaN or inf anywhere makes that norm non-finite. (The
    norms are not summed: a sum of large finite norms could overflow to inf.)
    """
    tensors = list(tensors)
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()
