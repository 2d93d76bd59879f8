"""A backward pass that also gives the Jacobian-vector product, by reverse mode over reverse mode.

g(c) = Jᵀc is linear in the cotangent c, so its derivative in c along w is J w:

    J w = ∂⟨Jᵀc, w⟩/∂c.

Keeping the graph of the training backward (``create_graph``, with c a leaf) therefore gives the
lookahead's tangent u = J w by one more backward through that graph, without running the model
forward again as ``torch.func.jvp`` does. It is exact (autograd's own derivatives of every operator's
backward, nothing recognised about the model) and reads the very forward the step took, so dropout
masks and batch statistics are the step's own without replaying anything. Whether it is faster
depends on the operators: a linear layer's double backward is two matrix products, as its JVP is,
but a convolution's double backward on the CPU costs more than its JVP (``lfl bench --floor``
measures both on a model).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def backward_with_tangent(outputs: Tensor, leaves: Sequence[Tensor], cotangent: Tensor, *,
                          detach_copies: bool = False) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Tensor]]:
    """(Jᵀc, w ↦ J w) for outputs = f(leaves): one backward of c that keeps its graph, and its transpose.

    Args:
        outputs: f, with its graph to ``leaves``; the graph is kept until the transpose is called.
        cotangent: c, shaped like ``outputs`` (only its value is read).
        detach_copies: return copies of Jᵀc rather than detached views (for a caller that writes into
            them in place, e.g. a sum over processes, which must not touch the kept graph's tensors).

    Returns:
        The gradients (detached), one per leaf, and ``tangent(w)``: J w for w (one tensor per leaf, the
        leaves' shapes), shaped like ``outputs``. ``tangent`` may be called once; it frees the graph.
    """
    seed = cotangent.detach().requires_grad_(True)
    grads = torch.autograd.grad(outputs, list(leaves), seed, create_graph=True)
    values = [g.detach().clone() if detach_copies else g.detach() for g in grads]

    def tangent(w: Sequence[Tensor]) -> Tensor:
        with torch.enable_grad():
            (u,) = torch.autograd.grad(grads, seed, list(w))
        return u

    return values, tangent


def learned_backward(outputs: Tensor, leaves: Sequence[Tensor], cotangent: Tensor, *, linearise: bool = False,
                     create_graph: bool = False, retain_graph: bool = False, detach_copies: bool = False
                     ) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Tensor] | None]:
    """Jᵀc, and with ``linearise`` its transpose w ↦ J w (:func:`backward_with_tangent`), else None.

    The one backward of the learned loss's m through the model, guarded or not: without ``linearise`` a
    plain ``torch.autograd.grad`` (``create_graph``/``retain_graph`` as there); with it the graph is kept
    linear in a constant c, which excludes ``create_graph``, and retained until the tangent is read.
    """
    if linearise and create_graph:
        raise ValueError("linearise keeps the backward linear in a constant cotangent; it excludes create_graph")
    if linearise:
        return backward_with_tangent(outputs, leaves, cotangent, detach_copies=detach_copies)
    grads = torch.autograd.grad(outputs, list(leaves), cotangent, retain_graph=retain_graph,
                                create_graph=create_graph)
    return list(grads), None


__all__ = ["backward_with_tangent", "learned_backward"]
