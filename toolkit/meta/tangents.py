"""The tangent u = J w of the lookahead: the outputs' directional derivative along a parameter direction.

Two of the lookahead's ways to compute it run the model again at θ
(:func:`toolkit.meta.lookahead.meta_gradient_with_tangent`): forward-mode AD (:func:`jacobian_vector_product`,
exact, the default) and a one-sided finite difference
(:func:`finite_difference_tangent`, one forward, opt-in). Both must see what the training forward saw: the same
buffers, copied so that BatchNorm's running statistics are not updated twice (:func:`cloned`), and the same
random numbers, so dropout draws the same masks (:func:`replayed_rng`). The third way reads J w off the kept
training backward and runs no model (:mod:`toolkit.meta.reverse`).
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch
from torch import Tensor, nn
from torch.func import jvp

from toolkit.meta.model_io import PLAIN, ModelIO
from toolkit.meta.trees import tree_norm
from toolkit.runtime import set_rng_state

TensorDict = dict[str, Tensor]


@contextlib.contextmanager
def replayed_rng(state: dict[str, Tensor], device: torch.device):
    """Run a block with the RNG as :func:`toolkit.runtime.rng_state` captured it (so dropout draws the same
    masks), then restore."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        set_rng_state(state, device)
        yield


def cloned(buffers: Mapping[str, Tensor]) -> TensorDict:
    """Copies of the buffers, so a functional forward's running-stat updates are discarded."""
    return {k: b.clone() for k, b in buffers.items()}


def jacobian_vector_product(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                            x: Tensor, tangents: Mapping[str, Tensor], *, io: ModelIO = PLAIN) -> Tensor:
    """u = J_f v: the directional derivative of the outputs f_θ(x) along v, by ``torch.func.jvp``.

    The buffers are copied inside the transformed function, so BatchNorm's in-place running-stat
    update touches neither the caller's buffers nor a tensor captured from outside the transform.

    Args:
        params: θ; tangents: v, same names and shapes; x: the input batch.
        io: how the model is called and its outputs read (:mod:`toolkit.meta.model_io`).

    Returns:
        u, shaped like the model's outputs.
    """
    names = list(params)

    def outputs(*theta: Tensor) -> Tensor:
        return io.functional(model, dict(zip(names, theta)), cloned(buffers), x)

    _, u = jvp(outputs, tuple(params[k].detach() for k in names), tuple(tangents[k] for k in names))
    return u


FD_EPSILON = 3e-5
"""The finite-difference tangent's default relative step ε (:func:`finite_difference_tangent`)."""


def finite_difference_tangent(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                              x: Tensor, tangents: Mapping[str, Tensor], outputs: Tensor, *,
                              epsilon: float = FD_EPSILON, io: ModelIO = PLAIN) -> Tensor:
    """u ≈ J_f w by a one-sided finite difference: (f(θ + h·w) − f(θ)) / h, one forward.

    An approximation (error O(h) plus rounding O(eps/h)), opt-in as ``meta_gradient="fd"``; the
    default route's :func:`jacobian_vector_product` is exact. The step is relative to the sizes of
    θ and w, h = ε·max(‖θ‖, 1)/‖w‖ (global L2 norms), so the perturbation's norm is ε·max(‖θ‖, 1)
    whatever the scale of w (which carries the learning rate); w = 0 gives u = 0.

    Args:
        params: θ; tangents: w, same names and shapes; x: the input batch.
        outputs: f_θ(x) from the training forward (detached), reused as the base point; the caller
            replays the same random numbers (dropout masks) for the perturbed forward.
        epsilon: the relative step ε.
    """
    names = list(params)
    theta = [params[k].detach() for k in names]
    w = [tangents[k] for k in names]
    theta_norm = tree_norm(theta)
    w_norm = tree_norm(w)
    moving = w_norm > 0
    h = torch.where(moving, epsilon * theta_norm.clamp_min(1.0) / torch.where(moving, w_norm, 1.0),
                    torch.ones_like(w_norm))
    shifted = dict(zip(names, torch._foreach_add(theta, torch._foreach_mul(w, h))))
    with torch.no_grad():
        perturbed = io.functional(model, shifted, cloned(buffers), x)
    return (perturbed - outputs) / h.to(outputs.dtype)


__all__ = ["replayed_rng", "cloned", "jacobian_vector_product", "finite_difference_tangent", "FD_EPSILON"]
