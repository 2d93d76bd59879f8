"""Base optimisers as differentiable step rules: SGD (momentum, dampening, Nesterov, weight decay),
Adam and AdamW (AMSGrad), RMSprop (momentum, centred).

A rule is pure (optax style): ``init(params)`` gives its state, ``update(params, grads, state)``
gives ``(θ', state')`` out of place, and every operation is differentiable, so the lookahead
can differentiate θ' with respect to the gradient (:func:`update_with_pullback`) and the
naive route can unroll it with ``create_graph=True``. Each rule equals its ``torch.optim``
counterpart step for step; :mod:`toolkit.meta.optimizers` reads a ``torch.optim`` instance's
parameter groups and state (at every step, so schedulers work) so a user can hand in the optimiser
they already have, and :mod:`toolkit.meta.combined` applies rules per parameter group and clips.

Each rule's state is a NamedTuple of its own (:class:`SGDState`, :class:`AdamState`,
:class:`RMSpropState`) whose fields are 0-d tensors, name → tensor dicts, or None for what an option
switches off. NamedTuples of dicts of tensors are pytrees (``torch.utils._pytree``), so ``torch.func``
differentiates through ``update`` with the state as it is, :func:`detach_state` and :func:`select_state`
map over any state (a :class:`~toolkit.meta.combined.GroupedRule`'s tuple of them included), and
:func:`state_to_dict` / :func:`state_from_dict` give a checkpoint plain data (``torch.load(...,
weights_only=True)`` cannot rebuild a NamedTuple).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

TensorDict = dict[str, Tensor]
State = Any
"""A rule's state: one of the NamedTuples below, or a tuple of them (one per parameter group)."""


class SGDState(NamedTuple):
    """:class:`SGDRule`'s state: the momentum buffers (None without momentum) and, with dampening, a 0-d
    ``started`` flag (0 before the first step; None otherwise)."""

    momentum: TensorDict | None = None
    started: Tensor | None = None


class AdamState(NamedTuple):
    """:class:`AdamRule`'s state: the 0-d step count, the first and second moments, and AMSGrad's running
    maximum of the second moment (None without ``amsgrad``)."""

    step: Tensor
    exp_avg: TensorDict
    exp_avg_sq: TensorDict
    max_exp_avg_sq: TensorDict | None = None


class RMSpropState(NamedTuple):
    """:class:`RMSpropRule`'s state: the 0-d step count, the running square average, the momentum buffers
    (None without momentum) and the running gradient average (None unless centred)."""

    step: Tensor
    square_avg: TensorDict
    momentum: TensorDict | None = None
    grad_avg: TensorDict | None = None

OPTIMIZERS = ("sgd", "adam", "adamw")
"""The base optimisers by name (``lfl train --optimizer``)."""


@runtime_checkable
class StepRule(Protocol):
    """What the online learner, the lookahead and the fixed-loss stepper need from a base optimiser.

    ``update`` must be out of place and differentiable in ``grads`` (the lookahead differentiates
    through it). The state is a pytree of tensors (a NamedTuple of 0-d tensors and name → tensor
    dicts, as the rules here keep it), so it can be detached and selected on the device. A rule that also has
    ``with_lr(lr)`` can take a per-call learning rate (``OnlineLossLearner.step(..., lr=)``).
    """

    def init(self, params: Mapping[str, Tensor]) -> State: ...

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: State) -> tuple[TensorDict, State]: ...


def _check_common(lr: float, weight_decay: float) -> None:
    if not lr >= 0:  # 0 is a valid no-op step (a schedule that ends at 0); torch.optim allows it too
        raise ValueError(f"learning rate must be >= 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight decay must be >= 0, got {weight_decay}")


@dataclass(frozen=True)
class SGDRule:
    """``torch.optim.SGD``: b' = μ b + (1 − d) g, θ' = θ − lr·(b' or g + μ b'), g = ∇ + wd·θ.

    The buffer starts at zero, which gives torch's first step exactly (b' = g) without dampening.
    With dampening d the state also holds ``started`` (a 0-d tensor, 0 before the first step),
    because torch's first step takes b' = g undamped (:class:`SGDState`).
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    dampening: float = 0.0

    STATE = SGDState
    TORCH_STATE = {"momentum": "momentum_buffer"}
    """:class:`SGDState`'s fields under ``torch.optim.SGD``'s per-parameter state names."""

    def __post_init__(self) -> None:
        _check_common(self.lr, self.weight_decay)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum (--nesterov) needs momentum > 0 (e.g. --momentum 0.9)")
        if not 0 <= self.dampening <= 1:
            raise ValueError(f"dampening must be in [0, 1], got {self.dampening}")
        if self.nesterov and self.dampening:
            raise ValueError("Nesterov momentum needs dampening=0 (as in torch.optim.SGD)")

    def with_lr(self, lr: float) -> "SGDRule":
        """The same rule at another learning rate (for schedules)."""
        return replace(self, lr=lr)

    def init(self, params: Mapping[str, Tensor]) -> SGDState:
        if self.momentum == 0:
            return SGDState()
        return SGDState(momentum={k: torch.zeros_like(p) for k, p in params.items()},
                        started=_zero(params) if self.dampening else None)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: SGDState) -> tuple[TensorDict, SGDState]:
        names = list(params)
        if not names:
            return {}, state
        # One fused (foreach) kernel per operation over all tensors; all differentiable.
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if self.weight_decay:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        new_state = SGDState()
        if self.momentum > 0:
            old = torch._foreach_mul([state.momentum[k] for k in names], self.momentum)
            started = None
            if self.dampening:  # torch: b' = g on the first step, μ b + (1 − d) g after
                b = torch._foreach_add(old, torch._foreach_mul(g, 1 - self.dampening * state.started))
                started = torch.ones_like(state.started)
            else:
                b = torch._foreach_add(old, g)
            new_state = SGDState(momentum=dict(zip(names, b)), started=started)
            g = torch._foreach_add(g, b, alpha=self.momentum) if self.nesterov else b
        return dict(zip(names, torch._foreach_add(p, g, alpha=-self.lr))), new_state


@dataclass(frozen=True)
class AdamRule:
    """``torch.optim.Adam`` (``decoupled=False``, L2 weight decay in the gradient) or
    ``torch.optim.AdamW`` (``decoupled=True``, θ scaled by 1 − lr·wd first); ``amsgrad`` normalises by
    the running maximum of the second moment (state ``max_exp_avg_sq``), as torch's option does.

    The step count is a device tensor, so bias correction needs no host value.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    amsgrad: bool = False

    STATE = AdamState
    TORCH_STATE = {"step": "step", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
                   "max_exp_avg_sq": "max_exp_avg_sq"}
    """:class:`AdamState`'s fields under ``torch.optim.Adam``'s per-parameter state names."""

    def __post_init__(self) -> None:
        _check_common(self.lr, self.weight_decay)
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")

    def with_lr(self, lr: float) -> "AdamRule":
        return replace(self, lr=lr)

    def init(self, params: Mapping[str, Tensor]) -> AdamState:
        def zeros() -> TensorDict:
            return {k: torch.zeros_like(p) for k, p in params.items()}
        return AdamState(step=_zero(params), exp_avg=zeros(), exp_avg_sq=zeros(),
                         max_exp_avg_sq=zeros() if self.amsgrad else None)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: AdamState) -> tuple[TensorDict, AdamState]:
        names = list(params)
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if self.weight_decay and not self.decoupled:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        if self.weight_decay and self.decoupled:
            p = torch._foreach_mul(p, 1 - self.lr * self.weight_decay)
        max_v = [state.max_exp_avg_sq[k] for k in names] if self.amsgrad else None
        new_p, m, v, step, max_v = adam_arrays(p, g, [state.exp_avg[k] for k in names],
                                               [state.exp_avg_sq[k] for k in names], state.step,
                                               lr=self.lr, betas=self.betas, eps=self.eps, max_v=max_v)
        new_state = AdamState(step=step, exp_avg=dict(zip(names, m)), exp_avg_sq=dict(zip(names, v)),
                              max_exp_avg_sq=dict(zip(names, max_v)) if self.amsgrad else None)
        return dict(zip(names, new_p)), new_state


@dataclass(frozen=True)
class RMSpropRule:
    """``torch.optim.RMSprop``: s' = α s + (1 − α) g², a' = √(s' − ḡ'²) + eps (centred) or √s' + eps,
    b' = μ b + g / a' and θ' = θ − lr·b' (or θ − lr·g / a' without momentum), g = ∇ + wd·θ.

    All state starts at zero, as torch's; ``step`` only counts (torch keeps it too).
    """

    lr: float = 1e-2
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False

    STATE = RMSpropState
    TORCH_STATE = {"step": "step", "square_avg": "square_avg", "momentum": "momentum_buffer",
                   "grad_avg": "grad_avg"}
    """:class:`RMSpropState`'s fields under ``torch.optim.RMSprop``'s per-parameter state names."""

    def __post_init__(self) -> None:
        _check_common(self.lr, self.weight_decay)
        if not 0 <= self.alpha < 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"alpha and momentum must be in [0, 1), got {self.alpha}, {self.momentum}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")

    def with_lr(self, lr: float) -> "RMSpropRule":
        return replace(self, lr=lr)

    def init(self, params: Mapping[str, Tensor]) -> RMSpropState:
        def zeros() -> TensorDict:
            return {k: torch.zeros_like(p) for k, p in params.items()}
        return RMSpropState(step=_zero(params), square_avg=zeros(), momentum=zeros() if self.momentum else None,
                            grad_avg=zeros() if self.centered else None)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: RMSpropState) -> tuple[TensorDict, RMSpropState]:
        names = list(params)
        p = [params[k] for k in names]
        g = [grads[k] for k in names]
        if self.weight_decay:
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        s = torch._foreach_add(torch._foreach_mul([state.square_avg[k] for k in names], self.alpha),
                               torch._foreach_mul(g, g), alpha=1 - self.alpha)
        new_state = RMSpropState(step=state.step + 1, square_avg=dict(zip(names, s)))
        if self.centered:
            mean = torch._foreach_lerp([state.grad_avg[k] for k in names], g, 1 - self.alpha)
            new_state = new_state._replace(grad_avg=dict(zip(names, mean)))
            s = torch._foreach_sub(s, torch._foreach_mul(mean, mean))
        step = torch._foreach_div(g, torch._foreach_add(_sqrt_all(s), self.eps))
        if self.momentum:
            step = torch._foreach_add(torch._foreach_mul([state.momentum[k] for k in names], self.momentum), step)
            new_state = new_state._replace(momentum=dict(zip(names, step)))
        return dict(zip(names, torch._foreach_add(p, step, alpha=-self.lr))), new_state


def _zero(params: Mapping[str, Tensor]) -> Tensor:
    """A 0-d zero on the parameters' device and in their dtype (a step count or flag)."""
    first = next(iter(params.values()), None)
    return torch.zeros((), dtype=first.dtype if first is not None else torch.get_default_dtype(),
                       device=first.device if first is not None else None)


def _sqrt_all(tensors: list[Tensor]) -> list[Tensor]:
    """√t for every t of a list, with derivative 0 where t is below the dtype's smallest normal number
    (√ has an infinite slope at 0; t = g² makes |g|, whose subgradient at 0 includes 0), so a lookahead
    through a zero gradient stays finite. Two foreach operations: √max(t, tiny). Where t = 0 this gives
    √tiny (1e-19 in float32) instead of 0, which vanishes next to any eps a rule adds to it."""
    if not tensors:
        return []
    return torch._foreach_sqrt(torch._foreach_maximum(tensors, torch.finfo(tensors[0].dtype).tiny))


def adam_arrays(p: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor], step: Tensor, *,
                lr: float, betas: tuple[float, float], eps: float, max_v: list[Tensor] | None = None):
    """One Adam step on lists of tensors, in ``torch.optim.Adam``'s order of operations.

    Returns (θ', m', v', step', max_v'); differentiable (see :func:`_sqrt_all`). With ``max_v`` (AMSGrad's
    running maximum of v) the denominator uses max(max_v, v'); else max_v' is None. Serves the base
    rule and, through :class:`AdamRule`, the meta optimiser (:mod:`toolkit.meta.adam`), so there is one Adam.
    """
    beta1, beta2 = betas
    step = step + 1
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step).sqrt()
    m = torch._foreach_lerp(m, g, 1 - beta1)
    v = torch._foreach_add(torch._foreach_mul(v, beta2), torch._foreach_mul(g, g), alpha=1 - beta2)
    if max_v is not None:
        max_v = torch._foreach_maximum(max_v, v)
    denominator = torch._foreach_add(torch._foreach_div(_sqrt_all(v if max_v is None else max_v), bias2_sqrt), eps)
    step_size = lr / bias1
    new_p = torch._foreach_sub(p, torch._foreach_mul(torch._foreach_div(m, denominator), step_size))
    return new_p, m, v, step, max_v


def update_with_pullback(rule: StepRule, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                         state: State) -> tuple[TensorDict, State, Callable[[TensorDict], TensorDict]]:
    """θ', state' (detached) and ``pullback(v) = (∂θ'/∂g)ᵀ v``: reverse mode through ``rule.update`` in g.

    The lookahead's tangent direction: for SGD it is −lr·v (−lr(1 + μ)·v with Nesterov), for
    Adam an elementwise rescaling that depends on g and the moments; either way it comes from
    the rule's one definition. The update runs once on gradient leaves and the pullback is one
    ``torch.autograd.grad`` of its graph (which it keeps, so the pullback may be called again):
    ``torch.func.vjp`` gave the same numbers but its tensor wrapping cost more than the update's own
    pass over the parameters on every step.
    """
    theta = {k: p.detach() for k, p in params.items()}
    with torch.enable_grad():
        leaves = {k: g.detach().requires_grad_(True) for k, g in grads.items()}
        new_params, new_state = rule.update(theta, leaves, state)
    names = list(leaves)
    # A rule may leave a parameter as it is (no graph to g): its share of the pullback is zero.
    moved = [k for k in new_params if new_params[k].requires_grad]

    def pullback(v: Mapping[str, Tensor]) -> TensorDict:
        if not moved:
            return {k: torch.zeros_like(leaves[k]) for k in names}
        tangent = torch.autograd.grad([new_params[k] for k in moved], [leaves[k] for k in names],
                                      [v[k] for k in moved], retain_graph=True, materialize_grads=True)
        return dict(zip(names, tangent))

    return {k: t.detach() for k, t in new_params.items()}, detach_state(new_state), pullback


def detach_state(state: State) -> State:
    """The state with every tensor detached (same structure)."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def clone_state(state: State) -> State:
    """A copy of the state whose tensors share no memory with it (a snapshot)."""
    return tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, state)


def select_state(keep_new: Tensor, new: State, old: State) -> State:
    """``new`` where the boolean 0-d tensor ``keep_new`` holds, else ``old`` (on the device); both of one
    structure (the same rule's states)."""
    return tree_map(lambda a, b: a if a is None else torch.where(keep_new, a, b), new, old)


STATE_KINDS: dict[str, type] = {"sgd": SGDState, "adam": AdamState, "rmsprop": RMSpropState}
"""The state types by the kind tag a checkpoint stores (:func:`state_to_dict`)."""


def state_to_dict(state: State) -> dict:
    """The state as plain data for ``torch.save`` (read back with ``weights_only=True``): a rule's NamedTuple
    as ``{"kind": ..., **its fields}``, a tuple of group states as ``{"kind": "grouped", "groups": [...]}``."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return {"kind": "grouped", "groups": [state_to_dict(part) for part in state]}
    for kind, cls in STATE_KINDS.items():
        if type(state) is cls:
            return {"kind": kind, **{k: dict(v) if isinstance(v, dict) else v for k, v in state._asdict().items()}}
    raise TypeError(f"no checkpoint form for a state of type {type(state).__name__}: "
                    f"one of {', '.join(c.__name__ for c in STATE_KINDS.values())} or a tuple of them")


def state_from_dict(saved: Mapping) -> State:
    """Rebuild what :func:`state_to_dict` wrote; a ValueError naming what is wrong otherwise."""
    if not isinstance(saved, Mapping) or saved.get("kind") not in (*STATE_KINDS, "grouped"):
        kind = saved.get("kind") if isinstance(saved, Mapping) else type(saved).__name__
        raise ValueError(f"not an optimiser state of this toolkit (kind {kind!r})")
    if saved["kind"] == "grouped":
        return tuple(state_from_dict(part) for part in saved["groups"])
    cls = STATE_KINDS[saved["kind"]]
    missing = [f for f in cls._fields if f not in saved and f not in cls._field_defaults]
    if missing:
        raise ValueError(f"the saved {saved['kind']} state lacks {missing}")
    return cls(**{f: dict(saved[f]) if isinstance(saved.get(f), Mapping) else saved.get(f, cls._field_defaults.get(f))
                  for f in cls._fields})


def state_from_legacy_dict(saved: Mapping) -> State:
    """A state as checkpoints before version 3 wrote it (a flat dict: ``{}`` or ``{"momentum"[,
    "momentum_started"]}`` for SGD, ``{"step", "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"]}`` for Adam,
    ``{"step", "square_avg", ...}`` for RMSprop, group i's entries under ``"group{i}/<key>"``) as its NamedTuple."""
    saved = dict(saved)
    if any(k.startswith("group") and "/" in k for k in saved):
        count = 1 + max(int(k.split("/", 1)[0].removeprefix("group")) for k in saved if "/" in k)
        return tuple(state_from_legacy_dict({k.split("/", 1)[1]: v for k, v in saved.items()
                                             if k.startswith(f"group{i}/")}) for i in range(count))
    dicts = {k: dict(v) if isinstance(v, Mapping) else v for k, v in saved.items()}
    for marker, needed in (("exp_avg", ("step", "exp_avg", "exp_avg_sq")), ("square_avg", ("step", "square_avg"))):
        missing = [k for k in needed if marker in dicts and k not in dicts]
        if missing:
            raise ValueError(f"the saved optimiser state lacks {missing}")
    if "exp_avg" in dicts:
        return AdamState(step=dicts["step"], exp_avg=dicts["exp_avg"], exp_avg_sq=dicts["exp_avg_sq"],
                         max_exp_avg_sq=dicts.get("max_exp_avg_sq"))
    if "square_avg" in dicts:
        return RMSpropState(step=dicts["step"], square_avg=dicts["square_avg"], momentum=dicts.get("momentum"),
                            grad_avg=dicts.get("grad_avg"))
    if set(dicts) <= {"momentum", "momentum_started"}:
        return SGDState(momentum=dicts.get("momentum"), started=dicts.get("momentum_started"))
    raise ValueError(f"not an optimiser state of this toolkit (keys {sorted(dicts)})")


def load_state(saved: Any) -> State:
    """A state from a checkpoint: :func:`state_from_dict`'s tagged form, or a pre-version-3 flat dict
    (:func:`state_from_legacy_dict`); a state already rebuilt passes through."""
    if isinstance(saved, tuple):
        return saved
    if isinstance(saved, Mapping) and "kind" in saved:
        return state_from_dict(saved)
    return state_from_legacy_dict(saved)


def make_rule(name: str, *, lr: float, momentum: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0) -> StepRule:
    """The rule for ``--optimizer NAME`` with the run's options (momentum/Nesterov are SGD's only)."""
    if name == "sgd":
        return SGDRule(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        if momentum or nesterov:
            raise ValueError(f"--momentum and --nesterov belong to --optimizer sgd; {name} uses betas (0.9, 0.999)")
        return AdamRule(lr=lr, weight_decay=weight_decay, decoupled=name == "adamw")
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def torch_optimizer(rule: StepRule, params) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimiser a rule reproduces (for the baselines' plain steps)."""
    if isinstance(rule, SGDRule):
        return torch.optim.SGD(params, lr=rule.lr, momentum=rule.momentum, nesterov=rule.nesterov,
                               weight_decay=rule.weight_decay, dampening=rule.dampening)
    if isinstance(rule, AdamRule):
        cls = torch.optim.AdamW if rule.decoupled else torch.optim.Adam
        return cls(params, lr=rule.lr, betas=rule.betas, eps=rule.eps, weight_decay=rule.weight_decay,
                   amsgrad=rule.amsgrad)
    if isinstance(rule, RMSpropRule):
        return torch.optim.RMSprop(params, lr=rule.lr, alpha=rule.alpha, eps=rule.eps, weight_decay=rule.weight_decay,
                                   momentum=rule.momentum, centered=rule.centered)
    raise TypeError(f"no torch.optim counterpart for {type(rule).__name__}")


__all__ = ["SGDRule", "AdamRule", "RMSpropRule", "StepRule", "OPTIMIZERS", "SGDState", "AdamState", "RMSpropState",
           "STATE_KINDS", "adam_arrays", "update_with_pullback", "detach_state", "clone_state", "select_state",
           "state_to_dict", "state_from_dict", "state_from_legacy_dict", "load_state", "make_rule", "torch_optimizer"]
