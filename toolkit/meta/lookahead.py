"""The one-step lookahead: the base step and its exact meta-gradient, for any model and base optimiser.

Pure functions over explicit parameter dictionaries (``torch.func`` style): they never
mutate a module's parameters, so the stateful wrappers in :mod:`toolkit.meta.online` and
:mod:`toolkit.meta.offline` decide what to keep.

Notation: g = ∇θ M_φ(y, f_θ(x)) on the training batch, θ' = U(θ, g, s) the base
optimiser's step (:mod:`toolkit.meta.rules`: SGD with momentum, Nesterov and weight decay, Adam,
AdamW; s its state, a constant of the step), and L(θ') the task loss on the validation
batch. With v = ∇θ' L, w = (∂U/∂g)ᵀ v, u = J_f w (J_f = ∂f/∂θ on the training batch) and
m(φ) = ∂M_φ/∂f, the meta-gradient is

    dL/dφ = ∂/∂φ [ u · m(φ) ].

:func:`meta_gradient` evaluates exactly this, with nothing that depends on the model's
structure: the training forward and backward by autograd over ``functional_call``, w by
autograd through the rule's own update (:func:`toolkit.meta.rules.update_with_pullback`; −lr·v
for plain SGD), u by forward-mode AD (``torch.func.jvp``) through the model with the same
buffers and the same random numbers (dropout masks; :mod:`toolkit.meta.tangents`), and m and its pullback derived from
the loss's forward (:func:`losses.derivatives.value_gradient_pullback`). In-place
operations, hooks, BatchNorm, residual blocks and dropout are all handled by autograd and
forward-mode AD themselves. :func:`meta_gradient_naive` differentiates through the whole
unrolled step (``create_graph=True``) and is the reference the tests compare against.

References:
    Raymond, Chen, Xue, Zhang. Online Loss Function Learning. arXiv 2301.13247.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from losses import encode_targets
from losses.base import Pullback, fill_missing_gradients, require_scalar
from losses.derivatives import value_gradient_pullback
from losses.standard import task_gradient, task_loss

from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.meta.guard import Guard, ParameterReflection, Reflection, guarded_gradients
from toolkit.meta.model_io import PLAIN, ModelIO, with_model_precision
from toolkit.meta.reverse import learned_backward
from toolkit.meta.rules import AdamRule, SGDRule, State, StepRule, detach_state, update_with_pullback
from toolkit.meta.tangents import FD_EPSILON, cloned, finite_difference_tangent, jacobian_vector_product, replayed_rng
from toolkit.runtime import rng_state

TensorDict = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]
Derivatives = Callable[..., tuple[Tensor, Tensor, Pullback]]
"""``(loss, φ, f, targets) → (M, m, pullback)``: :func:`losses.derivatives.value_gradient_pullback`'s signature."""


@dataclass(frozen=True)
class Lookahead:
    """What one lookahead computes.

    Attributes:
        params: θ', the next base iterate (detached).
        state: the base optimiser's next state (momentum buffers, Adam moments; detached).
        meta_grads: dL(θ')/dφ, name → tensor, for the loss parameters.
        train_loss: M_φ on the training batch at θ (detached scalar).
        meta_loss: L_task on the validation batch at θ' (detached scalar).
        grad_ratio: ‖∂M/∂f‖ / ‖∂L_task/∂f‖ on the training batch (detached scalar):
            how much larger a step the learned loss takes than the task loss would;
            None unless asked for with ``diagnostics=True``.
        train_task_loss: L_task on the training batch at θ (detached), from the outputs the step computed.
        guard: what the descent guard decided (its reflections and ∇θ L_task for a fallback step;
            :mod:`toolkit.meta.guard`), None when the guard is off.
    """

    params: TensorDict
    state: State
    meta_grads: TensorDict
    train_loss: Tensor
    meta_loss: Tensor
    grad_ratio: Tensor | None
    train_task_loss: Tensor
    guard: Guard | None = None


PHASES = ("train_forward", "loss_gradient", "train_backward", "update", "valid_pass", "tangent", "meta_backward")
"""The parts of :func:`meta_gradient`, labelled ``lookahead.<phase>`` for ``torch.profiler``
(``lfl bench --breakdown`` reads them); the labels cost nothing measurable when no profiler runs."""


def _phase(name: str) -> torch.profiler.record_function:
    return torch.profiler.record_function(f"lookahead.{name}")


def _is_own_state(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor]) -> bool:
    """Whether ``params`` are leaf parameters of ``model`` that require grad, under their own names, and
    ``buffers`` are all of the model's buffers: then calling the module equals the functional call."""
    own = dict(model.named_parameters())
    if not all(own.get(k) is p and p.requires_grad for k, p in params.items()):
        return False
    own_buffers = dict(model.named_buffers())
    return len(own_buffers) == len(buffers) and all(own_buffers.get(k) is b for k, b in buffers.items())


@dataclass(frozen=True)
class BatchGradients:
    """The base gradient of one batch, for the global batch of a data-parallel run.

    Attributes:
        value: M on the (global) batch; outputs: the model's outputs on it (detached).
        grads: ∇θ M, after the descent guard's reflections when it is on.
        train_task_loss: L_task on the batch, from the outputs already computed (whenever ``task`` is given).
        guard: the descent guard's decisions (:class:`~toolkit.meta.guard.Guard`), None when it is off.
        tangent: w ↦ J w on this process's rows, read off the kept backward graph (asked for with ``linearise``;
            :mod:`toolkit.meta.reverse`), w one tensor per leaf in ``grads``' order; else None.
    """

    value: Tensor
    outputs: Tensor
    grads: TensorDict
    train_task_loss: Tensor | None = None
    guard: Guard | None = None
    tangent: Callable[[list[Tensor]], Tensor] | None = None


def batch_gradients(local_outputs: Tensor, leaves: Mapping[str, Tensor], m: Tensor, outputs: Tensor, targets: Tensor,
                    task: str | None, *, replicas: Replicas = SINGLE, descent_guard: bool = False,
                    value: Tensor | None = None, create_graph: bool = False, linearise: bool = False) -> BatchGradients:
    """Jᵀm for the global batch: this process's rows of m back through its share, summed over processes.

    Args:
        local_outputs: the model's outputs on this process's rows, with their graph to ``leaves``.
        m: ∂M/∂f on the global batch (B, C); outputs: the global outputs (detached); targets: global.
        task: the task loss's task, for the guard and for L_task on the batch (None: neither).
        descent_guard: reflect m per sample, then the parameter gradient in parameter space
            (:func:`toolkit.meta.guard.guarded_gradients`), all on global quantities, so every process
            decides alike.
        create_graph: keep the graph of the gradient (through m and the reflections), for a caller that
            differentiates it; the task gradient and what reflects stay constants.
        linearise: keep the backward's graph for ``tangent`` (w ↦ J w; not with ``create_graph``).
    """
    train_task_loss = None if task is None else task_loss(outputs, targets, task)
    if descent_guard:
        grads, guard, tangent = guarded_gradients(local_outputs, leaves, m, outputs, targets, task, replicas=replicas,
                                                  create_graph=create_graph, linearise=linearise)
        return BatchGradients(value=value, outputs=outputs, grads=grads, train_task_loss=train_task_loss, guard=guard,
                              tangent=tangent)
    names = list(leaves)
    grads, tangent = learned_backward(local_outputs, [leaves[k] for k in names], replicas.shard(m),
                                      linearise=linearise, create_graph=create_graph, detach_copies=replicas.active)
    return BatchGradients(value=value, outputs=outputs, grads=replicas.sum_dict(dict(zip(names, grads))),
                          train_task_loss=train_task_loss, tangent=tangent)


def _grad_ratio(m: Tensor, outputs: Tensor, targets: Tensor, task: str) -> Tensor:
    f = outputs.detach()
    reference = task_gradient(f, encode_targets(targets, f, task), task)
    return m.detach().norm() / reference.norm().clamp_min(torch.finfo(m.dtype).tiny)


TANGENTS = ("jvp", "reverse", "fd")
"""How :func:`meta_gradient_with_tangent` computes u = J w: forward mode, reverse over reverse, finite difference."""


@with_model_precision
def meta_gradient_with_tangent(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                               loss: nn.Module, loss_params: Mapping[str, Tensor], train: Batch, valid: Batch,
                               rule: StepRule, state: State | None = None, *, task: str = "classification",
                               update_buffers: bool = True, diagnostics: bool = False, descent_guard: bool = False,
                               replicas: Replicas = SINGLE, io: ModelIO = PLAIN, tangent: str = "jvp",
                               fd_epsilon: float = FD_EPSILON,
                               derivatives: Derivatives = value_gradient_pullback
                               ) -> Lookahead:
    """The base update and the exact meta-gradient (the default route).

    Cost: a training step, a forward/backward on the validation batch, one forward-mode
    JVP through the base model on the training batch, and second derivatives of the loss
    network on (B, C) values. Nothing of the graph survives the call.

    Args:
        model: the base model (only its structure is used; ``params``/``buffers`` are its state).
        params: θ, name → tensor (e.g. ``dict(model.named_parameters())``).
        buffers: the model's buffers; with ``update_buffers`` the training forward
            updates them in place (BatchNorm running statistics), exactly once.
        loss: the learned loss module, called as ``loss(outputs, targets)``; a scalar (``reduction``
            "mean", the paper's, or "sum": its own forward is differentiated; "none" is refused).
        loss_params: φ, name → tensor (e.g. ``dict(loss.named_parameters())``).
        train: (x, y) training batch; valid: (x_v, y_v) meta-objective batch (global batches in a
            data-parallel run: each process takes its rows, :mod:`toolkit.meta.distributed`).
        rule: the base optimiser's rule (:mod:`toolkit.meta.rules`); state: its state (None: fresh).
        task: "classification" or "regression" (selects the task loss).
        update_buffers: False evaluates the training forward on copies of the buffers.
        diagnostics: also compute the gradient-scale ratio.
        descent_guard: reflect each sample's learned gradient that points uphill for the task
            loss, and the batch step if it still does (:mod:`toolkit.meta.guard`); the meta-gradient
            goes through both reflections.
        replicas: the processes of a data-parallel run (default: this one alone).
        io: how the model is called and its outputs read (``input_fn``/``output_fn``); under
            ``torch.autocast`` the model runs in the autocast dtype, the rest in float32
            (:mod:`toolkit.meta.model_io`).
        tangent: "jvp" (exact, forward-mode AD: one forward with its tangent), "reverse" (exact: the
            derivative of the kept training backward in its cotangent, :mod:`toolkit.meta.reverse`; no
            forward, more memory until the tangent is read) or "fd"
            (:func:`toolkit.meta.tangents.finite_difference_tangent`, one forward, approximate, with relative
            step ``fd_epsilon``).
        derivatives: how the loss's value, m and pullback are taken: :func:`losses.derivatives.value_gradient_pullback`
            (eager) or a :class:`losses.derivatives.CompiledDerivatives` of ``loss`` (``compile=True``).

    Returns:
        A :class:`Lookahead`, identical on every process of a data-parallel run.
    """
    require_scalar(loss)
    if tangent not in TANGENTS:
        raise ValueError(f"tangent must be one of {', '.join(TANGENTS)}; got {tangent!r}")
    x_all, y = train
    x = replicas.shard(x_all)
    state = rule.init(params) if state is None else state
    rng = None if tangent == "reverse" else rng_state(x.device)  # the reverse tangent runs no forward to replay
    with torch.enable_grad():
        own = update_buffers and _is_own_state(model, params, buffers)
        theta_leaf = dict(params) if own else {k: p.detach().requires_grad_(True) for k, p in params.items()}
        with _phase("train_forward"):
            if own:  # the module's own state: run it as it is (functional_call would swap the same tensors in)
                local_outputs = io.call(model, x)
            else:
                local_outputs = io.functional(model, theta_leaf, buffers if update_buffers else cloned(buffers), x)
            local_f = local_outputs.detach()
            outputs = replicas.gather(local_f)
        with _phase("loss_gradient"):
            train_loss, m, pullback = derivatives(loss, loss_params, outputs, y)
        with _phase("train_backward"):
            step = batch_gradients(local_outputs, theta_leaf, m, outputs, y, task, replicas=replicas,
                                   descent_guard=descent_guard, value=train_loss, linearise=tangent == "reverse")
        del local_outputs
    if step.guard is not None:  # m' = H m; the pullback of u · H m(φ) is the loss's pullback of H u (H = Hᵀ)
        unguarded, reflect = pullback, step.guard.rows
        pullback = lambda u: unguarded(reflect(u))  # noqa: E731
    with _phase("update"):
        new_params, new_state, update_pullback = update_with_pullback(rule, params, step.grads, state)

    x_v, y_v = valid
    with _phase("valid_pass"), torch.enable_grad():
        probe = {k: p.requires_grad_(True) for k, p in new_params.items()}
        # The mean over the global batch is the sum over processes of each share's mean / world size.
        meta_loss = task_loss(io.functional(model, probe, cloned(buffers), replicas.shard(x_v)),
                              replicas.shard(y_v), task) / replicas.world_size
        v = replicas.sum_dict(dict(zip(probe, torch.autograd.grad(meta_loss, list(probe.values())))))
        meta_loss = replicas.sum_([meta_loss.detach()])[0]
        new_params = {k: p.detach() for k, p in probe.items()}

    with _phase("tangent"):
        w = update_pullback(v)
        if step.guard is not None:  # θ' = U(H_θ Jᵀ m'): the tangent direction becomes H_θ w
            w = step.guard.step(w)
        if tangent == "reverse":  # J w off the kept training backward: no forward, nothing to replay
            local_u = step.tangent([w[k] for k in theta_leaf])
        else:
            with replayed_rng(rng, x.device):
                local_u = (finite_difference_tangent(model, params, buffers, x, w, local_f, epsilon=fd_epsilon, io=io)
                           if tangent == "fd" else jacobian_vector_product(model, params, buffers, x, w, io=io))
        u = replicas.gather(local_u)

    with _phase("meta_backward"):
        meta = pullback(u)
        meta_grads = {k: meta[k] for k in loss_params}
    return Lookahead(params=new_params, state=new_state, meta_grads=meta_grads, train_loss=train_loss,
                     meta_loss=meta_loss, grad_ratio=_grad_ratio(m, outputs, y, task) if diagnostics else None,
                     train_task_loss=step.train_task_loss, guard=step.guard)


@with_model_precision
def meta_gradient_naive(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                        loss: nn.Module, loss_params: Mapping[str, Tensor], train: Batch, valid: Batch,
                        rule: StepRule, state: State | None = None, *, task: str = "classification",
                        update_buffers: bool = True, diagnostics: bool = False, descent_guard: bool = False,
                        replicas: Replicas = SINGLE, io: ModelIO = PLAIN,
                        derivatives: Derivatives = value_gradient_pullback) -> Lookahead:
    """The reference route: autograd through the unrolled step (``create_graph=True``).

    Same arguments and result as :func:`meta_gradient`; holds the whole second-order graph of
    the base model while it runs. The descent guard's reflections are written here again from
    their definition (:func:`_reflected_naively`), so that comparing the routes checks them too.
    It runs in one process (``replicas`` is accepted so both routes share one signature, and ``derivatives``
    likewise: the reference differentiates the loss's forward as written, never a derived or compiled copy).
    """
    if replicas.active:
        raise ValueError("the unrolled reference runs in one process: use meta_gradient='fast' with replicas")
    require_scalar(loss)
    x, y = train
    x_v, y_v = valid
    theta = {k: p.detach() for k, p in params.items()}
    state = detach_state(rule.init(params) if state is None else state)
    with torch.enable_grad():
        theta_leaf = {k: p.detach().requires_grad_(True) for k, p in theta.items()}
        outputs = io.functional(model, theta_leaf, buffers if update_buffers else cloned(buffers), x)
        train_loss = functional_call(loss, dict(loss_params), (outputs, y))
        # θ' = U(H_θ Jᵀ H_f m(φ)) (without the guard, U(Jᵀ m(φ))), differentiated as written.
        (m,) = torch.autograd.grad(train_loss, outputs, create_graph=True)
        if descent_guard:
            grads, guard = _reflected_naively(outputs, theta_leaf, m, y, task)
        else:
            names = list(theta_leaf)
            grads = dict(zip(names, torch.autograd.grad(outputs, [theta_leaf[k] for k in names], m,
                                                        create_graph=True)))
            guard = None
        new_params, new_state = rule.update(theta, grads, state)
        meta_loss = task_loss(io.functional(model, new_params, cloned(buffers), x_v), y_v, task)
        names = [k for k, p in loss_params.items() if p.requires_grad]
        meta = torch.autograd.grad(meta_loss, [loss_params[k] for k in names], allow_unused=True) if names else []
    meta_grads = fill_missing_gradients(loss_params, dict(zip(names, meta)))
    return Lookahead(params={k: p.detach() for k, p in new_params.items()}, state=detach_state(new_state),
                     meta_grads=meta_grads, train_loss=train_loss.detach(), meta_loss=meta_loss.detach(),
                     grad_ratio=_grad_ratio(m, outputs, y, task) if diagnostics else None,
                     train_task_loss=task_loss(outputs.detach(), y, task), guard=guard)


def _reflected_naively(outputs: Tensor, theta: Mapping[str, Tensor], m: Tensor, targets: Tensor,
                       task: str) -> tuple[TensorDict, Guard]:
    """The guarded gradient H_θ Jᵀ H_f m, written from the definition (the reference for the guard).

    Every mirror image is the explicit formula t − 2 (t·r)/(r·r) r, with r = ∂L_task/∂f per sample and
    r = ∇θ L_task for the step, both by autograd through ``task_loss`` itself; what reflects is decided
    on detached values and r is a constant, so the result is differentiable in m (and so in φ). Returns
    the gradient (with its graph) and a :class:`~toolkit.meta.guard.Guard` recording the decisions
    (for the learner's step check and counts; its own maps are not used here).
    """
    names = list(theta)
    leaves = [theta[k] for k in names]
    f = outputs.detach().requires_grad_(True)
    (r,) = torch.autograd.grad(task_loss(f, targets, task), f)
    rr = (r * r).sum(dim=1, keepdim=True)
    rows_uphill = ((m.detach() * r).sum(dim=1, keepdim=True) < 0) & (rr > 0)
    coefficient = torch.where(rows_uphill, 2.0 * (m * r).sum(dim=1, keepdim=True) / torch.where(rows_uphill, rr, 1.0),
                              torch.zeros_like(rr))
    grads = torch.autograd.grad(outputs, leaves, m - coefficient * r, create_graph=True, retain_graph=True)
    task_grads = torch.autograd.grad(task_loss(outputs, targets, task), leaves, retain_graph=True)
    gg = sum((g * g).sum() for g in task_grads)
    step_uphill = (sum((a.detach() * g).sum() for a, g in zip(grads, task_grads)) < 0) & (gg > 0)
    scale = torch.where(step_uphill, 2.0 * sum((a * g).sum() for a, g in zip(grads, task_grads))
                        / torch.where(step_uphill, gg, 1.0), torch.zeros_like(gg))
    reflected = {k: a - scale * g for k, a, g in zip(names, grads, task_grads)}
    unit_rows = torch.where(rows_uphill, r / torch.where(rows_uphill, rr, 1.0).sqrt(), torch.zeros_like(r))
    unit_step = torch.where(step_uphill, gg.rsqrt(), torch.zeros_like(gg))
    guard = Guard(rows=Reflection(direction=unit_rows, count=rows_uphill.sum(), task_gradient=r),
                  step=ParameterReflection(task_grads=dict(zip(names, task_grads)), inverse_norm=unit_step,
                                           uphill=step_uphill),
                  task_grads=dict(zip(names, task_grads)))
    return reflected, guard


def _route(tangent: str, name: str, doc: str) -> Callable[..., Lookahead]:
    """A named route: :func:`meta_gradient_with_tangent` with ``tangent`` fixed, under the routes' one signature
    (shared with :func:`meta_gradient_naive`, so the learner and the offline phase call any route the same way)."""

    def route(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
              loss: nn.Module, loss_params: Mapping[str, Tensor], train: Batch, valid: Batch,
              rule: StepRule, state: State | None = None, *, task: str = "classification",
              update_buffers: bool = True, diagnostics: bool = False, descent_guard: bool = False,
              replicas: Replicas = SINGLE, io: ModelIO = PLAIN,
              derivatives: Derivatives = value_gradient_pullback) -> Lookahead:
        return meta_gradient_with_tangent(model, params, buffers, loss, loss_params, train, valid, rule, state,
                                          task=task, update_buffers=update_buffers, diagnostics=diagnostics,
                                          descent_guard=descent_guard, replicas=replicas, io=io, tangent=tangent,
                                          derivatives=derivatives)

    route.__name__ = route.__qualname__ = name
    route.__doc__ = doc
    return route


meta_gradient = _route("jvp", "meta_gradient", """The default route: :func:`meta_gradient_with_tangent` with the
exact tangent (``torch.func.jvp``).""")

meta_gradient_fd = _route("fd", "meta_gradient_fd", """The default route with the finite-difference tangent (one
forward instead of the JVP, relative step :data:`FD_EPSILON`): approximate, opt-in as ``--meta-gradient fd``
(docs/performance.md measures its error).""")

meta_gradient_reverse = _route("reverse", "meta_gradient_reverse", """The default route with the tangent read off
the training backward (reverse over reverse, :mod:`toolkit.meta.reverse`): exact, no forward for the tangent, the
backward's graph held until it is read. Faster than the JVP where the model's operators have cheap double
backwards (linear layers); ``lfl bench --floor`` measures both on a model. Opt-in as ``--meta-gradient reverse``.""")


META_GRADIENTS: dict[str, Callable[..., Lookahead]] = {
    "fast": meta_gradient,
    "reverse": meta_gradient_reverse,
    "naive": meta_gradient_naive,
    "fd": meta_gradient_fd,
}
"""The routes by name: "fast" is :func:`meta_gradient` (JVP), "reverse" the same with the tangent by reverse
over reverse (:func:`meta_gradient_reverse`), "naive" the unrolled reference, "fd" the finite-difference
tangent (:func:`meta_gradient_fd`)."""

DATA_PARALLEL_ROUTES = ("fast", "reverse")
"""The routes a data-parallel run takes: the exact ones written for :class:`~toolkit.meta.distributed.Replicas`
(the unrolled reference runs in one process; the finite-difference route is not tested across processes)."""


def get_meta_gradient(name: str) -> Callable[..., Lookahead]:
    """The meta-gradient route by name ("fast", "reverse", "naive" or "fd")."""
    try:
        return META_GRADIENTS[name]
    except KeyError:
        raise ValueError(f"unknown meta-gradient {name!r}: choose one of {sorted(META_GRADIENTS)}") from None


__all__ = ["SGDRule", "AdamRule", "Lookahead", "PHASES", "meta_gradient", "BatchGradients", "batch_gradients",
           "meta_gradient_naive", "meta_gradient_fd", "meta_gradient_reverse", "meta_gradient_with_tangent",
           "TANGENTS", "META_GRADIENTS", "DATA_PARALLEL_ROUTES", "get_meta_gradient"]
