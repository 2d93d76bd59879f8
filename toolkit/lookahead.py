"""The one-step lookahead: the base SGD update and its exact meta-gradient.

Pure functions over explicit parameter dictionaries (``torch.func`` style): they
never mutate a module's parameters, so the stateful wrappers in
:mod:`toolkit.online` and :mod:`toolkit.offline` decide what to keep.

Notation (DESIGN.md): θ' = θ − lr·d(g), g = ∇θ M_φ(y, f_θ(x)) + wd·θ, where the
momentum buffer b is a constant of the step, b' = μ b + g and d = b' (heavy ball)
or d = g + μ b' (Nesterov). Hence ∂θ'/∂(∇θ M) = −α·I with α = lr (heavy ball,
plain SGD) or α = lr·(1 + μ) (Nesterov), and the meta-gradient of the task loss
L(θ') with respect to the loss parameters φ is

    dL/dφ = −α ∂/∂φ [ u · m(φ) ],   u = J_f v,   v = ∇θ' L,   m = ∂M_φ/∂f,

where f are the base model's outputs on the training batch and J_f = ∂f/∂θ.
``meta_gradient_fast`` evaluates exactly this: one backward on the validation
batch for v, one Jacobian-vector product through the base model for u (from the
training forward's activations when the model is a chain of known layers, see
:mod:`toolkit.tangents`; forward-mode AD otherwise), and second derivatives of the
small loss network only: the loss's pullback u ↦ ∂/∂φ[u · m(φ)]
(``losses.LearnedLoss.mean_gradient_pullback``), written out for ``MLPLoss`` and
``GradientScaledLoss`` and autograd's double backward for other losses. For a chain whose
first layer takes the input itself, the two base gradients (the training one at θ and v at
θ') come from :mod:`toolkit.chain_passes` (the recorded activations, and a forward of the
chain at θ'), without autograd; other models use autograd for both. ``meta_gradient_naive``
differentiates through the whole unrolled step (``create_graph=True``) and is the
reference the tests compare against.

References:
    Raymond, Chen, Xue, Zhang. Online Loss Function Learning. arXiv 2301.13247.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call

from losses import encode_targets
from losses.base import autograd_pullback, fill_missing_gradients
from losses.standard import task_gradient, task_loss

from .chain_passes import chain_forward, chain_vjp, supports_passes
from .descent import descent_reflection, guarded_gradients, parameter_reflection
from .tangents import as_chain, chain_jvp, record_chain

TensorDict = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class SGDRule:
    """The base optimiser's step rule (the semantics of ``torch.optim.SGD``).

    Attributes:
        lr: learning rate.
        momentum: heavy-ball coefficient μ (0 disables the buffer).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 coefficient added to the gradient.
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0 (e.g. --momentum 0.9)")

    def with_lr(self, lr: float) -> "SGDRule":
        """The same rule at another learning rate (for schedules)."""
        return SGDRule(lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                       weight_decay=self.weight_decay)

    @property
    def alpha(self) -> float:
        """The step's sensitivity to the loss gradient: θ' = … − α ∇θ M."""
        return self.lr * (1.0 + self.momentum) if self.nesterov else self.lr


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               momentum: Mapping[str, Tensor] | None, rule: SGDRule) -> tuple[TensorDict, TensorDict | None]:
    """One SGD step, out of place and differentiable, matching ``torch.optim.SGD``.

    Args:
        params: θ, name → tensor.
        grads: ∇θ M (without weight decay), same names and shapes.
        momentum: the momentum buffers b (None on the first step, as in torch).
        rule: the step rule.

    Returns:
        (θ', b'), b' being None when ``rule.momentum == 0``.
    """
    names = list(params)
    if not names:
        return {}, ({} if rule.momentum > 0 else None)
    # One fused (foreach) kernel per operation over all tensors, differentiable for the naive route.
    p = [params[k] for k in names]
    g = [grads[k] for k in names]
    if rule.weight_decay:
        g = torch._foreach_add(g, p, alpha=rule.weight_decay)
    new_momentum: TensorDict | None = None
    if rule.momentum > 0:
        b = g if momentum is None else torch._foreach_add(g, [momentum[k] for k in names], alpha=rule.momentum)
        new_momentum = dict(zip(names, b))
        g = torch._foreach_add(g, b, alpha=rule.momentum) if rule.nesterov else b
    return dict(zip(names, torch._foreach_add(p, g, alpha=-rule.lr))), new_momentum


@dataclass(frozen=True)
class Lookahead:
    """What one lookahead computes.

    Attributes:
        params: θ', the next base iterate (detached).
        momentum: b', the next momentum buffers (None without momentum).
        meta_grads: dL(θ')/dφ, name → tensor, for the loss parameters.
        train_loss: M_φ on the training batch at θ (detached scalar).
        meta_loss: L_task on the validation batch at θ' (detached scalar).
        grad_ratio: ‖∂M/∂f‖ / ‖∂L_task/∂f‖ on the training batch (detached scalar):
            how much larger a step the learned loss takes than the task loss would;
            None unless asked for with ``diagnostics=True``.
        guarded: how many training samples the descent guard reflected (0-d device tensor;
            None when the guard is off; :mod:`toolkit.descent`).
        guarded_step: whether it reflected the batch step in parameter space (0-d bool tensor, or None).
        task_grads: ∇θ L_task on the training batch at θ (with the guard only; for a fallback step).
        train_task_loss: L_task on the training batch at θ (detached; with the guard only).
    """

    params: TensorDict
    momentum: TensorDict | None
    meta_grads: TensorDict
    train_loss: Tensor
    meta_loss: Tensor
    grad_ratio: Tensor | None
    guarded: Tensor | None = None
    guarded_step: Tensor | None = None
    task_grads: TensorDict | None = None
    train_task_loss: Tensor | None = None


PHASES = ("train_forward", "loss_gradient", "train_backward", "sgd_update", "valid_pass", "tangent",
          "meta_backward")
"""The parts of :func:`meta_gradient_fast`, labelled ``lookahead.<phase>`` for ``torch.profiler``
(``lfl bench --breakdown`` reads them); the labels cost nothing measurable when no profiler runs."""


def _phase(name: str) -> torch.profiler.record_function:
    return torch.profiler.record_function(f"lookahead.{name}")


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state: tuple, device: torch.device):
    """Run a block with the RNG as it was (so dropout draws the same masks), then restore."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _cloned(buffers: Mapping[str, Tensor]) -> TensorDict:
    """Copies of the buffers, so a functional forward's running-stat updates are discarded."""
    return {k: b.clone() for k, b in buffers.items()}


def _is_own_state(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor]) -> bool:
    """Whether ``params`` are leaf parameters of ``model`` that require grad, under their own names, and
    ``buffers`` are all of the model's buffers: then calling the module equals the functional call."""
    own = dict(model.named_parameters())
    if not all(own.get(k) is p and p.requires_grad for k, p in params.items()):
        return False
    own_buffers = dict(model.named_buffers())
    return len(own_buffers) == len(buffers) and all(own_buffers.get(k) is b for k, b in buffers.items())


def _grad_ratio(m: Tensor, outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    f = outputs.detach()
    reference = task_gradient(f, encode_targets(targets, f, task), task)
    return m.detach().norm() / reference.norm().clamp_min(torch.finfo(m.dtype).tiny)


def _value_gradient_pullback(loss: nn.Module, loss_params: Mapping[str, Tensor], outputs: Tensor,
                             targets: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], TensorDict]]:
    """M_φ, m = ∂M_φ/∂f (both detached) and ``pullback(u) = {name: ∂/∂φ Σ u ⊙ m}``.

    Learned losses (``provides_output_gradient``) give all three themselves, in closed form
    where they can (``losses.MLPLoss``: no autograd graph at all); any other loss module goes
    through autograd's double backward.
    """
    f = outputs.detach()
    if getattr(loss, "provides_output_gradient", False):
        return functional_call(loss, dict(loss_params), (f, targets), {"output_gradient": "pullback"})
    with torch.enable_grad():
        f = f.requires_grad_(True)
        value = functional_call(loss, dict(loss_params), (f, targets))
        (m,) = torch.autograd.grad(value, f, create_graph=True)
    return value.detach(), m.detach(), autograd_pullback(m, loss_params)


def jacobian_vector_product(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                            x: Tensor, tangents: Mapping[str, Tensor]) -> Tensor:
    """u = J_f v: the directional derivative of the outputs f_θ(x) along v, in forward mode.

    Uses ``torch.autograd.forward_ad`` dual tensors, so modules that update buffers
    in place (BatchNorm) work; pass copies of the buffers to keep the originals.

    Args:
        params: θ; tangents: v, same names and shapes; x: the input batch.

    Returns:
        u, shaped like the model's outputs (B, C).
    """
    with fwAD.dual_level():
        duals = {k: fwAD.make_dual(p, tangents[k]) for k, p in params.items()}
        outputs = functional_call(model, (duals, dict(buffers)), (x,))
        return fwAD.unpack_dual(outputs).tangent


def meta_gradient_fast(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                       loss: nn.Module, loss_params: Mapping[str, Tensor], train: Batch, valid: Batch,
                       rule: SGDRule, momentum: Mapping[str, Tensor] | None = None, *,
                       task: str = "classification", update_buffers: bool = True,
                       diagnostics: bool = False, jvp: str = "auto", descent_guard: bool = False) -> Lookahead:
    """The base update and the exact meta-gradient, through a JVP (the default route).

    Cost: a training step, a forward/backward on the validation batch, one
    forward-mode JVP through the base model on the training batch, and second
    derivatives of the loss network on (B, C) values. Nothing of the graph survives.

    Args:
        model: the base model (only its structure is used; ``params``/``buffers`` are its state).
        params: θ, name → tensor (e.g. ``dict(model.named_parameters())``).
        buffers: the model's buffers; with ``update_buffers`` the training forward
            updates them in place (BatchNorm running statistics), exactly once.
        loss: the learned loss module, called as ``loss(outputs, targets)``.
        loss_params: φ, name → tensor (e.g. ``dict(loss.named_parameters())``).
        train: (x, y) training batch; valid: (x_v, y_v) meta-objective batch.
        rule: the base step rule; momentum: the buffers b of the current step.
        task: "classification" or "regression" (selects the task loss).
        update_buffers: False evaluates the training forward on copies of the buffers.
        diagnostics: also compute the gradient-scale ratio (one extra tiny backward).
        jvp: "auto" reuses the training forward's activations when the model is a
            verifiable chain of known layers (:mod:`toolkit.tangents`), else forward-mode
            AD; "forward" always uses forward-mode AD.
        descent_guard: reflect each sample's learned gradient that points uphill for the task
            loss (:mod:`toolkit.descent`); the meta-gradient goes through the reflection.

    Returns:
        A :class:`Lookahead`.
    """
    if jvp not in ("auto", "forward"):
        raise ValueError(f"jvp must be 'auto' or 'forward', got {jvp!r}")
    x, y = train
    device = x.device
    rng = _rng_state(device)
    with torch.enable_grad():
        own = update_buffers and _is_own_state(model, params, buffers)
        theta_leaf = dict(params) if own else {k: p.detach().requires_grad_(True) for k, p in params.items()}
        with _phase("train_forward"), record_chain(model) if jvp == "auto" else contextlib.nullcontext() as recording:
            if own:  # the module's own state: run it as it is (functional_call would swap the same tensors in)
                outputs = model(x)
            else:
                outputs = functional_call(model, (theta_leaf, buffers if update_buffers else _cloned(buffers)), (x,))
        chain = as_chain(recording, outputs, set(theta_leaf))
        # A chain whose layers all have written-out passes, and whose first layer takes the input
        # itself (no transformation in forward before it), needs no autograd for either gradient.
        passes = chain is not None and recording.first_input is x and supports_passes(chain)
        with _phase("loss_gradient"):
            train_loss, m, pullback = _value_gradient_pullback(loss, loss_params, outputs, y)
            guarded = guarded_step = step_reflect = task_grads = train_task_loss = None
            if descent_guard:  # m' = H m; the pullback of u · H m(φ) is the loss's pullback of H u (H = Hᵀ)
                train_task_loss = task_loss(outputs.detach(), y, task)
                reflect = descent_reflection(m, outputs, y, task)
                m, guarded, unguarded = reflect(m), reflect.count, pullback
                pullback = lambda u: unguarded(reflect(u))  # noqa: E731
        with _phase("train_backward"):
            if passes:
                outputs = outputs.detach()  # the forward's graph is not needed: drop it now
                grads = chain_vjp(chain, theta_leaf, m)
                if descent_guard:
                    task_grads = chain_vjp(chain, theta_leaf, reflect.task_gradient)
            else:
                grads = dict(zip(theta_leaf, torch.autograd.grad(outputs, list(theta_leaf.values()), m,
                                                                 retain_graph=descent_guard)))
                if descent_guard:
                    task_grads = dict(zip(theta_leaf, torch.autograd.grad(outputs, list(theta_leaf.values()),
                                                                          reflect.task_gradient)))
            if descent_guard:  # θ' = θ − α H_θ Jᵀ m': the tangent direction becomes H_θ v (H_θ = H_θᵀ)
                step_reflect = parameter_reflection(grads, task_grads)
                grads, guarded_step = step_reflect(grads), step_reflect.uphill
    with _phase("sgd_update"), torch.no_grad():  # no_grad: θ' and b' carry no graph, whatever θ is
        new_params, new_momentum = sgd_update(params, grads, momentum, rule)

    x_v, y_v = valid
    with _phase("valid_pass"):
        if passes:
            outputs_v, links = chain_forward(chain, new_params, x_v)
            meta_loss = task_loss(outputs_v, y_v, task)
            v = chain_vjp(links, new_params, task_gradient(outputs_v, encode_targets(y_v, outputs_v, task), task))
        else:
            with torch.enable_grad():
                probe = {k: p.detach().requires_grad_(True) for k, p in new_params.items()}
                meta_loss = task_loss(functional_call(model, (probe, _cloned(buffers)), (x_v,)), y_v, task)
                v = dict(zip(probe, torch.autograd.grad(meta_loss, list(probe.values()))))

    with _phase("tangent"):
        if step_reflect is not None:
            v = step_reflect(v)
        if chain is not None:  # the training forward's activations give u without a second forward
            u = chain_jvp(chain, params, v)
        else:
            theta = {k: p.detach() for k, p in params.items()}
            with _replayed_rng(rng, device):
                u = jacobian_vector_product(model, theta, _cloned(buffers), x, v)

    with _phase("meta_backward"):
        # The pullback is linear in u: −α goes onto the (B, C) tangent, not onto every meta-gradient.
        meta = pullback(u * -rule.alpha)
        meta_grads = {k: meta[k] for k in loss_params}
    return Lookahead(params=new_params, momentum=new_momentum, meta_grads=meta_grads, train_loss=train_loss.detach(),
                     meta_loss=meta_loss.detach(), grad_ratio=_grad_ratio(m, outputs, y, task) if diagnostics else None,
                     guarded=guarded, guarded_step=guarded_step, task_grads=task_grads,
                     train_task_loss=train_task_loss)


def meta_gradient_naive(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                        loss: nn.Module, loss_params: Mapping[str, Tensor], train: Batch, valid: Batch,
                        rule: SGDRule, momentum: Mapping[str, Tensor] | None = None, *,
                        task: str = "classification", update_buffers: bool = True,
                        diagnostics: bool = False, descent_guard: bool = False) -> Lookahead:
    """The reference route: autograd through the unrolled step (``create_graph=True``).

    Same arguments and result as :func:`meta_gradient_fast`; holds the whole
    second-order graph of the base model while it runs.
    """
    x, y = train
    x_v, y_v = valid
    theta = {k: p.detach() for k, p in params.items()}
    mom = None if momentum is None else {k: b.detach() for k, b in momentum.items()}
    with torch.enable_grad():
        theta_leaf = {k: p.detach().requires_grad_(True) for k, p in theta.items()}
        outputs = functional_call(model, (theta_leaf, buffers if update_buffers else _cloned(buffers)), (x,))
        train_loss = functional_call(loss, dict(loss_params), (outputs, y))
        guarded = guarded_step = task_grads = train_task_loss = None
        if descent_guard:  # θ' = θ − α H_θ Jᵀ H_f m(φ), differentiated as written
            grads, guarded, guarded_step, task_grads = guarded_gradients(train_loss, outputs, theta_leaf, y, task,
                                                                         create_graph=True)
            train_task_loss = task_loss(outputs.detach(), y, task)
        else:
            grads = dict(zip(theta_leaf, torch.autograd.grad(train_loss, list(theta_leaf.values()),
                                                             create_graph=True)))
        new_params, new_momentum = sgd_update(theta, grads, mom, rule)
        meta_loss = task_loss(functional_call(model, (new_params, _cloned(buffers)), (x_v,)), y_v, task)
        names = [k for k, p in loss_params.items() if p.requires_grad]
        meta = torch.autograd.grad(meta_loss, [loss_params[k] for k in names], allow_unused=True) if names else []
        ratio = None
        if diagnostics:
            out_leaf = outputs.detach().requires_grad_(True)
            m = torch.autograd.grad(functional_call(loss, dict(loss_params), (out_leaf, y)), out_leaf)[0]
            ratio = _grad_ratio(m, outputs, y, task)
    meta_grads = fill_missing_gradients(loss_params, dict(zip(names, meta)))
    return Lookahead(params={k: p.detach() for k, p in new_params.items()},
                     momentum=None if new_momentum is None else {k: b.detach() for k, b in new_momentum.items()},
                     meta_grads=meta_grads, train_loss=train_loss.detach(), meta_loss=meta_loss.detach(),
                     grad_ratio=ratio, guarded=guarded, guarded_step=guarded_step,
                     task_grads=None if task_grads is None else {k: g.detach() for k, g in task_grads.items()},
                     train_task_loss=train_task_loss)


def meta_gradient_fast_forward_ad(*args, **kwargs) -> Lookahead:
    """:func:`meta_gradient_fast` with forward-mode AD for every model (for benchmarks)."""
    return meta_gradient_fast(*args, jvp="forward", **kwargs)


META_GRADIENTS: dict[str, Callable[..., Lookahead]] = {
    "fast": meta_gradient_fast,
    "naive": meta_gradient_naive,
    "fast-forward-ad": meta_gradient_fast_forward_ad,
}


def get_meta_gradient(name: str) -> Callable[..., Lookahead]:
    """The meta-gradient route by name ("fast" or "naive")."""
    try:
        return META_GRADIENTS[name]
    except KeyError:
        raise ValueError(f"unknown meta-gradient {name!r}: choose one of {sorted(META_GRADIENTS)}") from None
