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
    beta1, beta2 = betas
    step = state.step + 1
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step).sqrt()
    new_params, exp_avg, exp_avg_sq = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        m = state.exp_avg[name].lerp(g, 1 - beta1)
        v = state.exp_avg_sq[name] * beta2 + (1 - beta2) * g * g
        new_params[name] = p - lr / bias1 * m / (v.sqrt() / bias2_sqrt + eps)
        exp_avg[name], exp_avg_sq[name] = m, v
    if apply is not None:
        keep = lambda new, old: torch.where(apply, new, old)  # noqa: E731
        new_params = {k: keep(v, params[k]) for k, v in new_params.items()}
        exp_avg = {k: keep(v, state.exp_avg[k]) for k, v in exp_avg.items()}
        exp_avg_sq = {k: keep(v, state.exp_avg_sq[k]) for k, v in exp_avg_sq.items()}
        step = keep(step, state.step)
    return new_params, AdamState(step=step, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)


def apply_meta_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: AdamState, *,
                      lr: float, clip: float | None = None, apply: Tensor | None = None) -> AdamState:
    """Clip ``grads``, take an Adam step and write it into ``params`` in place; return the new state.

    ``params`` are the loss module's parameters themselves; where ``apply`` is False
    they and the state stay unchanged (selected on the device, no host sync).
    """
    new_params, state = adam_update(params, clip_by_global_norm(grads, clip), state, lr=lr, apply=apply)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(new_params[name])
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

    One fused (foreach) norm over all tensors: a NaN or inf anywhere makes it non-finite.
    """
    from torch.nn.utils import get_total_norm
    return torch.isfinite(get_total_norm(list(tensors), foreach=True))
