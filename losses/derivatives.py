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
from torch.func import functional_call, grad, grad_and_value, vjp

from losses.base import LearnedLoss, Pullback


def value_and_gradient(loss: nn.Module, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(M, m = ∂M/∂f)`` at ``outputs`` f taken as constants, both differentiable in the loss's parameters.

    A LearnedLoss gives its own derived pair (``value_and_output_gradient``, which may share work
    between the two); any other module gets ``torch.func.grad_and_value`` of its forward.
    """
    f = outputs.detach()
    if isinstance(loss, LearnedLoss):
        return loss.value_and_output_gradient(f, targets)
    gradient, value = grad_and_value(lambda out: loss(out, targets))(f)
    return value, gradient


class _ValueAndGradient(nn.Module):
    """Calls :func:`value_and_gradient` as a forward, so ``functional_call`` can swap φ in."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return value_and_gradient(self.loss, outputs, targets)


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
    phi = _adapter_params(params)
    adapter = _ValueAndGradient(loss)

    def gradient(phi: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        value, m = functional_call(adapter, phi, (f, targets))
        return m, value

    m, pull, value = vjp(gradient, phi, has_aux=True)
    return value.detach(), m.detach(), lambda u: _loss_grads(pull(u.detach())[0], params)


def _adapter_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """φ detached, under the names :class:`_ValueAndGradient` gives the loss's parameters."""
    return {f"loss.{k}": p.detach() for k, p in params.items()}


def _loss_grads(grads: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The pullback's gradients under the loss's own names, zeros for parameters that do not require grad
    (as autograd treats them; ``torch.func`` differentiates every input)."""
    named = {k.removeprefix("loss."): g for k, g in grads.items()}
    return {k: g if params[k].requires_grad else torch.zeros_like(g) for k, g in named.items()}


class CompiledDerivatives:
    """:func:`value_gradient_pullback` for one loss module, its two halves under ``torch.compile``.

    A learned loss's derivatives are a few hundred small operators on (B, C) values, which cost
    more in dispatch than in arithmetic on a CPU; compiled, each half is one generated kernel
    program. The first half gives (M, m); the second, called with the cotangent u, recomputes m
    inside its own graph and differentiates Σ u ⊙ m in φ (the eager route keeps the first half's
    graph instead; a fused recomputation costs less than replaying it). Same values as the eager
    function up to rounding; each new shape of the outputs compiles once (``dynamic=False``).

    Args:
        loss: the loss module (its structure is captured; φ is passed at each call).
        mode: ``torch.compile``'s mode.
    """

    def __init__(self, loss: nn.Module, *, mode: str | None = None) -> None:
        self.loss = loss
        adapter = _ValueAndGradient(loss)

        def value_and_m(phi: dict[str, Tensor], f: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
            return functional_call(adapter, phi, (f, targets))

        def pull(phi: dict[str, Tensor], f: Tensor, targets: Tensor, u: Tensor) -> dict[str, Tensor]:
            return grad(lambda p: (functional_call(adapter, p, (f, targets))[1] * u).sum())(phi)

        self._value_and_m = torch.compile(value_and_m, mode=mode, dynamic=False)
        self._pull = torch.compile(pull, mode=mode, dynamic=False)

    def __call__(self, loss: nn.Module, params: Mapping[str, Tensor], outputs: Tensor,
                 targets: Tensor) -> tuple[Tensor, Tensor, Pullback]:
        """:func:`value_gradient_pullback`'s signature and result (``loss`` must be the module compiled)."""
        if loss is not self.loss:
            raise ValueError("CompiledDerivatives was built for another loss module; build one per loss")
        f = outputs.detach()
        phi = _adapter_params(params)
        value, m = self._value_and_m(phi, f, targets)
        return value.detach(), m.detach(), lambda u: _loss_grads(self._pull(phi, f, targets, u.detach()), params)


__all__ = ["value_and_gradient", "value_gradient_pullback", "CompiledDerivatives"]
