"""Base optimisers as differentiable step rules: SGD (momentum, Nesterov, weight decay), Adam, AdamW.

A rule is pure (optax style): ``init(params)`` gives its state, ``update(params, grads, state)``
gives ``(θ', state')`` out of place, and every operation is differentiable, so the lookahead
can differentiate θ' with respect to the gradient (:func:`update_with_pullback`) and the
naive route can unroll it with ``create_graph=True``. Each rule equals its ``torch.optim``
counterpart step for step; :func:`rule_from_optimizer` reads a ``torch.optim`` instance's
hyperparameters and state so a user can hand in the optimiser they already have.

State is a flat dict of name → tensor dicts (and, for Adam, a 0-d ``step`` tensor), so a
checkpoint stores it as it is and ``torch.where`` can select between two states on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import Tensor, nn

TensorDict = dict[str, Tensor]
State = dict[str, Any]

OPTIMIZERS = ("sgd", "adam", "adamw")
"""The base optimisers by name (``lfl train --optimizer``)."""


class StepRule(Protocol):
    """What the online learner, the lookahead and the fixed-loss stepper need from a base optimiser."""

    lr: float

    def init(self, params: Mapping[str, Tensor]) -> State: ...

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: State) -> tuple[TensorDict, State]: ...

    def with_lr(self, lr: float) -> "StepRule": ...


def _check_common(lr: float, weight_decay: float) -> None:
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight decay must be >= 0, got {weight_decay}")


@dataclass(frozen=True)
class SGDRule:
    """``torch.optim.SGD`` (dampening 0): b' = μ b + g, θ' = θ − lr·(b' or g + μ b'), g = ∇ + wd·θ.

    The buffer starts at zero, which gives torch's first step exactly (b' = g).
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.lr, self.weight_decay)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0 (e.g. --momentum 0.9)")

    def with_lr(self, lr: float) -> "SGDRule":
        """The same rule at another learning rate (for schedules)."""
        return replace(self, lr=lr)

    def init(self, params: Mapping[str, Tensor]) -> State:
        if self.momentum == 0:
            return {}
        return {"momentum": {k: torch.zeros_like(p) for k, p in params.items()}}

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: State) -> tuple[TensorDict, State]:
        names = list(params)
        if not names:
            return {}, dict(state)
        # One fused (foreach) kernel per operation over all tensors; all differentiable.
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if self.weight_decay:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        new_state: State = {}
        if self.momentum > 0:
            b = torch._foreach_add(g, [state["momentum"][k] for k in names], alpha=self.momentum)
            new_state["momentum"] = dict(zip(names, b))
            g = torch._foreach_add(g, b, alpha=self.momentum) if self.nesterov else b
        return dict(zip(names, torch._foreach_add(p, g, alpha=-self.lr))), new_state


@dataclass(frozen=True)
class AdamRule:
    """``torch.optim.Adam`` (``decoupled=False``, L2 weight decay in the gradient) or
    ``torch.optim.AdamW`` (``decoupled=True``, θ scaled by 1 − lr·wd first); no AMSGrad.

    The step count is a device tensor, so bias correction needs no host value.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    def __post_init__(self) -> None:
        _check_common(self.lr, self.weight_decay)
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")

    def with_lr(self, lr: float) -> "AdamRule":
        return replace(self, lr=lr)

    def init(self, params: Mapping[str, Tensor]) -> State:
        first = next(iter(params.values()), None)
        step = torch.zeros((), dtype=first.dtype if first is not None else torch.get_default_dtype(),
                           device=first.device if first is not None else None)
        return {"step": step, "exp_avg": {k: torch.zeros_like(p) for k, p in params.items()},
                "exp_avg_sq": {k: torch.zeros_like(p) for k, p in params.items()}}

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: State) -> tuple[TensorDict, State]:
        names = list(params)
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if self.weight_decay and not self.decoupled:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        if self.weight_decay and self.decoupled:
            p = torch._foreach_mul(p, 1 - self.lr * self.weight_decay)
        new_p, m, v, step = adam_arrays(p, g, [state["exp_avg"][k] for k in names],
                                        [state["exp_avg_sq"][k] for k in names], state["step"],
                                        lr=self.lr, betas=self.betas, eps=self.eps)
        return dict(zip(names, new_p)), {"step": step, "exp_avg": dict(zip(names, m)),
                                         "exp_avg_sq": dict(zip(names, v))}


def _sqrt(t: Tensor) -> Tensor:
    """√t with derivative 0 where t = 0 (√ has an infinite slope there; t = g² makes |g| whose
    subgradient at 0 includes 0), so a lookahead through a zero gradient stays finite."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, torch.ones_like(t)).sqrt(), torch.zeros_like(t))


def adam_arrays(p: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor], step: Tensor, *,
                lr: float, betas: tuple[float, float], eps: float):
    """One Adam step on lists of tensors, in ``torch.optim.Adam``'s order of operations.

    Returns (θ', m', v', step'); differentiable (see :func:`_sqrt`). Serves the base rule and
    the meta optimiser (:mod:`toolkit.meta.adam`), so there is one Adam.
    """
    beta1, beta2 = betas
    step = step + 1
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step).sqrt()
    m = torch._foreach_lerp(m, g, 1 - beta1)
    v = torch._foreach_add(torch._foreach_mul(v, beta2), torch._foreach_mul(g, g), alpha=1 - beta2)
    denominator = [_sqrt(t) / bias2_sqrt + eps for t in v]
    step_size = lr / bias1
    new_p = [a - step_size * (b / d) for a, b, d in zip(p, m, denominator)]
    return new_p, m, v, step


def update_with_pullback(rule: StepRule, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                         state: State) -> tuple[TensorDict, State, Callable[[TensorDict], TensorDict]]:
    """θ', state' (detached) and ``pullback(v) = (∂θ'/∂g)ᵀ v``, derived by autograd from ``rule.update``.

    The lookahead's tangent direction: for SGD it is −lr·v (−lr(1 + μ)·v with Nesterov), for
    Adam an elementwise rescaling that depends on g and the moments; either way it comes from
    the rule's one definition. The graph kept in between covers only the update's elementwise
    operations.
    """
    names = list(params)
    theta = {k: p.detach() for k, p in params.items()}
    with torch.enable_grad():
        g = {k: grads[k].detach().requires_grad_(True) for k in names}
        new_params, new_state = rule.update(theta, g, state)

    def pullback(v: Mapping[str, Tensor]) -> TensorDict:
        out = torch.autograd.grad([new_params[k] for k in names], [g[k] for k in names], [v[k] for k in names],
                                  allow_unused=True)
        return {k: torch.zeros_like(theta[k]) if o is None else o for k, o in zip(names, out)}

    return ({k: p.detach() for k, p in new_params.items()}, detach_state(new_state), pullback)


def detach_state(state: State) -> State:
    """The state with every tensor detached."""
    return {k: v.detach() if isinstance(v, Tensor) else {n: t.detach() for n, t in v.items()}
            for k, v in state.items()}


def select_state(keep_new: Tensor, new: State, old: State) -> State:
    """``new`` where the boolean 0-d tensor ``keep_new`` holds, else ``old`` (on the device)."""
    out: State = {}
    for k, value in new.items():
        if k not in old:
            out[k] = value
        elif isinstance(value, Tensor):
            out[k] = torch.where(keep_new, value, old[k])
        else:
            out[k] = {n: torch.where(keep_new, t, old[k][n]) for n, t in value.items()}
    return out


def rule_from_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[StepRule, State | None]:
    """A rule and its state from a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` over ``model``'s parameters.

    Reads the hyperparameters of its single parameter group and, where it has stepped already,
    its per-parameter state (momentum buffers, Adam moments and step). Anything these rules
    cannot reproduce exactly raises ``TypeError`` or ``ValueError`` naming the option.

    Returns:
        (rule, state), state None when the optimiser holds none yet (start from ``rule.init``).
    """
    kinds = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    kind = kinds.get(type(optimizer))
    if kind is None:
        raise TypeError(f"the base optimiser must be an SGDRule, an AdamRule, or a torch.optim.SGD, Adam or AdamW; "
                        f"got {type(optimizer).__name__}")
    if len(optimizer.param_groups) != 1:
        raise ValueError("the base optimiser must have one parameter group (per-group options are not supported)")
    group = optimizer.param_groups[0]
    names = {id(p): k for k, p in model.named_parameters()}
    params = group["params"]
    missing = [p for p in params if id(p) not in names]
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    if missing or sorted(names[id(p)] for p in params) != sorted(trainable):
        raise ValueError("the optimiser must hold exactly the model's trainable parameters")
    lr = float(group["lr"])
    for option in ("maximize", "differentiable"):
        if group.get(option):
            raise ValueError(f"{type(optimizer).__name__}({option}=True) is not supported")
    if kind == "sgd":
        if group.get("dampening", 0):
            raise ValueError("SGD with dampening is not supported (use dampening=0)")
        rule: StepRule = SGDRule(lr=lr, momentum=float(group["momentum"]), nesterov=bool(group["nesterov"]),
                                 weight_decay=float(group["weight_decay"]))
    else:
        if group.get("amsgrad"):
            raise ValueError(f"{type(optimizer).__name__}(amsgrad=True) is not supported")
        rule = AdamRule(lr=lr, betas=tuple(float(b) for b in group["betas"]), eps=float(group["eps"]),
                        weight_decay=float(group["weight_decay"]), decoupled=kind == "adamw")
    states = [optimizer.state.get(p, {}) for p in params]
    if not any(states):
        return rule, None
    if kind == "sgd":
        if rule.momentum == 0:
            return rule, {}
        return rule, {"momentum": {names[id(p)]: s.get("momentum_buffer", torch.zeros_like(p)).detach().clone()
                                   for p, s in zip(params, states)}}
    steps = {float(s["step"]) for s in states if "step" in s}
    if len(steps) != 1 or not all(states):
        raise ValueError("the Adam optimiser's parameters have stepped different numbers of times")
    first = params[0]
    return rule, {"step": torch.tensor(steps.pop(), dtype=first.dtype, device=first.device),
                  "exp_avg": {names[id(p)]: s["exp_avg"].detach().clone() for p, s in zip(params, states)},
                  "exp_avg_sq": {names[id(p)]: s["exp_avg_sq"].detach().clone() for p, s in zip(params, states)}}


def make_rule(name: str, *, lr: float, momentum: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0) -> StepRule:
    """The rule for ``--optimizer NAME`` with the run's options (momentum/Nesterov are SGD's only)."""
    if name == "sgd":
        return SGDRule(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        if momentum or nesterov:
            raise ValueError(f"--momentum and --nesterov belong to SGD; {name} has betas (0.9, 0.999)")
        return AdamRule(lr=lr, weight_decay=weight_decay, decoupled=name == "adamw")
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def torch_optimizer(rule: StepRule, params) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser a rule reproduces (for the baselines' plain steps)."""
    if isinstance(rule, SGDRule):
        return torch.optim.SGD(params, lr=rule.lr, momentum=rule.momentum, nesterov=rule.nesterov,
                               weight_decay=rule.weight_decay)
    if isinstance(rule, AdamRule):
        cls = torch.optim.AdamW if rule.decoupled else torch.optim.Adam
        return cls(params, lr=rule.lr, betas=rule.betas, eps=rule.eps, weight_decay=rule.weight_decay)
    raise TypeError(f"no torch.optim counterpart for {type(rule).__name__}")


def as_rule(rule: Any, model: nn.Module) -> tuple[StepRule, State | None]:
    """Accept an SGDRule/AdamRule or a torch.optim SGD/Adam/AdamW instance (see :func:`rule_from_optimizer`)."""
    if isinstance(rule, (SGDRule, AdamRule)):
        return rule, None
    if isinstance(rule, torch.optim.Optimizer):
        return rule_from_optimizer(rule, model)
    raise TypeError(f"rule must be an SGDRule, an AdamRule, or a torch.optim.SGD, Adam or AdamW; "
                    f"got {type(rule).__name__}")


__all__ = ["SGDRule", "AdamRule", "StepRule", "OPTIMIZERS", "adam_arrays", "update_with_pullback",
           "detach_state", "select_state", "rule_from_optimizer", "make_rule", "torch_optimizer", "as_rule"]
