"""The meta optimiser: Adam on the loss parameters, as the same rule the base step uses.

The loss parameters φ are updated by :class:`~toolkit.meta.rules.AdamRule` (``torch.optim.Adam``
without weight decay), clipped by global norm when asked (:class:`~toolkit.meta.combined.ClippedRule`),
so there is one Adam and one state shape: :class:`~toolkit.meta.rules.AdamState`.
The meta optimiser must be able to *skip* an update without a host round trip (a non-finite
meta-gradient must leave parameters and moments untouched), which ``torch.optim.Adam`` cannot do
without reading the flag on the host: :func:`apply_meta_update` selects between the new and the
old parameters and state on the device with ``torch.where`` (:func:`~toolkit.meta.rules.select_state`).

Why there is no ``apply_if_finite`` wrapper (optax's): it decides from the gradients its own rule is given.
The learner's decision is not a function of those alone: a meta update is skipped when the *base* step's
learned loss or θ' is non-finite, when the meta-loss is, or when the meta-gradients are, and the base step
is skipped on the first condition only, with the two kinds of skip counted apart. A wrapper of the meta rule
would need the base step's and the meta-loss's flags passed in beside the gradients, so it would be this
module's ``apply`` argument under another name; a wrapper that looked only at the meta-gradients would change
what the learner does (it would take a meta step after a non-finite base step).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from toolkit.meta.combined import clipped
from toolkit.meta.rules import AdamRule, AdamState, State, StepRule, load_state, select_state

TensorDict = dict[str, Tensor]

META_CLIP_EPS = 1e-12
"""The meta-gradient clip's guard: the coefficient is max_norm / (‖g‖ + 1e-12)."""

def meta_optimizer(*, lr: float, clip: float | None = None) -> StepRule:
    """Adam at ``lr`` on the loss parameters, after clipping the meta-gradient to global L2 norm ``clip``.

    Args:
        lr: Adam's learning rate (betas (0.9, 0.999), eps 1e-8, as ``torch.optim.Adam``).
        clip: the largest global norm of the meta-gradient (None: no clipping); > 0.
    """
    if clip is not None and not clip > 0:
        raise ValueError(f"meta_clip must be positive (or None), got {clip}")
    return clipped(AdamRule(lr=lr), clip, eps=META_CLIP_EPS)


def apply_meta_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: State, rule: StepRule, *,
                      apply: Tensor | None = None) -> State:
    """Take ``rule``'s step and write it into ``params`` in place; return the new state.

    ``params`` are the loss module's parameters themselves; where the boolean 0-d ``apply`` is False
    they and the state stay unchanged (selected on the device, no host sync).
    """
    old = {k: p.detach() for k, p in params.items()}
    new_params, new_state = rule.update(old, grads, state)
    if apply is not None:
        new_params = {k: torch.where(apply, new_params[k], old[k]) for k in old}
        new_state = select_state(apply, new_state, state)
    with torch.no_grad():
        torch._foreach_copy_(list(params.values()), [new_params[k] for k in params])
    return new_state


def meta_state_from_checkpoint(saved) -> AdamState:
    """The meta optimiser's :class:`~toolkit.meta.rules.AdamState` from a checkpoint: the tagged plain dict of
    :func:`~toolkit.meta.rules.state_to_dict`, or the flat ``{"step", "exp_avg", "exp_avg_sq"}`` of older
    versions; a clear error otherwise."""
    try:
        state = load_state(saved)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the checkpoint's meta-optimiser state is not one this toolkit writes ({exc})") from None
    if not isinstance(state, AdamState):
        raise ValueError(f"the checkpoint's meta-optimiser state is a {type(state).__name__}, not an AdamState")
    return state


def all_finite(tensors) -> Tensor:
    """A boolean scalar tensor: every element of every tensor is finite (no host sync).

    One fused (foreach) norm per tensor: a NaN or inf anywhere makes that norm non-finite. (The
    norms are not summed: a sum of large finite norms could overflow to inf.)
    """
    tensors = list(tensors)
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()


__all__ = ["meta_optimizer", "apply_meta_update", "meta_state_from_checkpoint", "all_finite", "META_CLIP_EPS"]
