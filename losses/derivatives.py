"""What the meta-gradient needs from a loss, derived from its one forward with ``torch.func``.

For a loss M_φ(y, f) on a batch of outputs f, the exact one-step meta-gradient reads the
value, the output gradient m = ∂M/∂f and the pullback u ↦ ∂/∂φ Σ u ⊙ m(φ) (second
derivatives of the small loss network only). None of it is written out by hand: the
gradient is ``torch.func.grad`` of the forward in f, the pullback ``torch.func.vjp`` of that
in φ, so any loss module (learned, symbolic, a user's own) gets the same exact treatment.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vjp

from losses.base import LearnedLoss, Pullback


class _ValueAndOutputGradient(nn.Module):
    """Calls ``loss.value_and_output_gradient`` as a forward, so ``functional_call`` can swap φ in."""

    def __init__(self, loss: LearnedLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss.value_and_output_gradient(outputs, targets)


def value_gradient_pullback(loss: nn.Module, params: Mapping[str, Tensor], outputs: Tensor,
                            targets: Tensor) -> tuple[Tensor, Tensor, Pullback]:
    """``(M_φ, m = ∂M_φ/∂f, pullback)`` at ``outputs`` f, with φ = ``params``.

    Args:
        loss: any module called as ``loss(outputs, targets)`` returning a scalar.
        params: φ, name → tensor (e.g. ``dict(loss.named_parameters())``); values are read, not
            the module's own.
        outputs: f (B, C), taken as a constant; targets: as the loss takes them.

    Returns:
        The value and m (detached), and ``pullback(u) = {name: ∂/∂φ Σ u ⊙ m}`` for every name in
        ``params`` (zeros for those that do not require grad, as autograd treats them).
    """
    f = outputs.detach()
    phi = {k: p.detach() for k, p in params.items()}
    frozen = [k for k, p in params.items() if not p.requires_grad]

    if isinstance(loss, LearnedLoss):  # its own derived (value, gradient), sharing work where it can
        adapter = _ValueAndOutputGradient(loss)
        phi = {f"loss.{k}": p for k, p in phi.items()}

        def gradient(phi: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            value, m = functional_call(adapter, phi, (f, targets))
            return m, value
    else:
        def gradient(phi: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            return grad_and_value(lambda out: functional_call(loss, phi, (out, targets)))(f)

    m, pull, value = vjp(gradient, phi, has_aux=True)

    def pullback(u: Tensor) -> dict[str, Tensor]:
        (grads,) = pull(u.detach())
        grads = {k.removeprefix("loss."): g for k, g in grads.items()}
        for k in frozen:
            grads[k] = torch.zeros_like(grads[k])
        return grads

    return value.detach(), m.detach(), pullback


__all__ = ["value_gradient_pullback"]
