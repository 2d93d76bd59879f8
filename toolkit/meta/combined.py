"""Step rules built from step rules: one rule per parameter group, and clipping by global norm.

Both are pure rules themselves (:class:`~toolkit.meta.rules.StepRule`), so the lookahead
differentiates through them exactly as through a plain rule: the meta-gradient of a clipped
step goes through the norm, and each group's learning rate, momentum and weight decay act on
its own parameters in the differentiated update as in the real one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from torch import Tensor

from toolkit.meta.rules import State, StepRule, TensorDict
from toolkit.meta.trees import tree_norm

CLIP_EPS = 1e-6
"""``torch.nn.utils.clip_grad_norm_``'s guard: the coefficient is max_norm / (‖g‖ + 1e-6)."""


@dataclass(frozen=True)
class GroupedRule:
    """A rule per group of parameters (``torch.optim``'s ``param_groups``).

    Attributes:
        groups: ((parameter names, rule), ...); every parameter the rule sees is in exactly one group.

    The state is a tuple of the groups' states, in the groups' order (a pytree, as each of them is).
    """

    groups: tuple[tuple[tuple[str, ...], StepRule], ...]

    @property
    def lr(self) -> float:
        """The first group's learning rate (each group keeps its own)."""
        return self.groups[0][1].lr

    def with_lr(self, lr: float) -> "GroupedRule":
        """Every group at learning rate ``lr``."""
        return replace(self, groups=tuple((names, rule.with_lr(lr)) for names, rule in self.groups))

    def init(self, params: Mapping[str, Tensor]) -> tuple[State, ...]:
        return tuple(rule.init({n: params[n] for n in names}) for names, rule in self.groups)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: tuple[State, ...]) -> tuple[TensorDict, tuple[State, ...]]:
        new_params: TensorDict = {}
        new_state = []
        for (names, rule), part in zip(self.groups, state):
            p, s = rule.update({n: params[n] for n in names}, {n: grads[n] for n in names}, part)
            new_params.update(p)
            new_state.append(s)
        return {k: new_params[k] for k in params}, tuple(new_state)


@dataclass(frozen=True)
class ClippedRule:
    """``rule`` after scaling the gradient to global L2 norm at most ``max_norm``.

    Exactly ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` before ``optimizer.step()``: the
    coefficient min(1, max_norm / (‖g‖ + eps)), eps 1e-6, over all parameters together. Differentiable, so the
    lookahead's meta-gradient goes through the clipping (the norm is a function of g).
    """

    rule: StepRule
    max_norm: float
    eps: float = CLIP_EPS

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_norm}")

    @property
    def lr(self) -> float:
        return self.rule.lr

    def with_lr(self, lr: float) -> "ClippedRule":
        return replace(self, rule=self.rule.with_lr(lr))

    def init(self, params: Mapping[str, Tensor]) -> State:
        """The inner rule's state (clipping keeps none)."""
        return self.rule.init(params)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
               state: State) -> tuple[TensorDict, State]:
        names = list(grads)
        if not names:
            return self.rule.update(params, grads, state)
        g = [grads[k] for k in names]
        total = tree_norm(g)
        coefficient = (self.max_norm / (total + self.eps)).clamp(max=1.0)
        return self.rule.update(params, {k: t * coefficient for k, t in zip(names, g)}, state)


def clipped(rule: StepRule, max_norm: float | None, *, eps: float = CLIP_EPS) -> StepRule:
    """``rule`` clipped to ``max_norm`` (unchanged when None); ``eps`` guards the coefficient's division."""
    return rule if max_norm is None else ClippedRule(rule, max_norm, eps)


__all__ = ["GroupedRule", "ClippedRule", "clipped", "CLIP_EPS"]
