"""A ``torch.optim`` optimiser as the online learner's base step, read at every step.

:class:`OptimizerLink` turns an optimiser's ``param_groups`` into a step rule each time it is
asked (so ``torch.optim.lr_scheduler`` schedulers, which write ``group["lr"]``, work unchanged,
and a learning rate of 0 is a no-op step), reads the optimiser's per-parameter state into the
rule's state, and writes the rule's new state back, so ``optimizer.state`` and
``optimizer.state_dict()`` stay what ``optimizer.step()`` would have left. The optimiser itself
is never stepped: the learner's step is the rule's (:mod:`toolkit.meta.rules`), which equals it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from toolkit.meta.combined import GroupedRule
from toolkit.meta.rules import AdamRule, RMSpropRule, SGDRule, State, StepRule, clone_state

SUPPORTED = "torch.optim.SGD, Adam, AdamW or RMSprop"


def _sgd(group: dict) -> StepRule:
    return SGDRule(lr=float(group["lr"]), momentum=float(group["momentum"]), nesterov=bool(group["nesterov"]),
                   weight_decay=float(group["weight_decay"]), dampening=float(group.get("dampening", 0.0)))


def _adam(decoupled: bool):
    def build(group: dict) -> StepRule:
        return AdamRule(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]), eps=float(group["eps"]),
                        weight_decay=float(group["weight_decay"]),
                        decoupled=bool(group.get("decoupled_weight_decay", decoupled)),
                        amsgrad=bool(group.get("amsgrad", False)))
    return build


def _rmsprop(group: dict) -> StepRule:
    return RMSpropRule(lr=float(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                       weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                       centered=bool(group["centered"]))


BUILDERS = {torch.optim.SGD: _sgd, torch.optim.Adam: _adam(False), torch.optim.AdamW: _adam(True),
            torch.optim.RMSprop: _rmsprop}


def group_rule(optimizer: torch.optim.Optimizer, group: dict) -> StepRule:
    """The rule of one parameter group; anything it cannot reproduce exactly raises naming the option."""
    build = BUILDERS.get(type(optimizer))
    if build is None:
        raise TypeError(f"the base optimiser must be a {SUPPORTED}, or a StepRule (init and update); "
                        f"got {type(optimizer).__name__}")
    if group.get("maximize"):
        raise ValueError(f"{type(optimizer).__name__}(maximize=True) is not supported")
    return build(group)


class OptimizerLink:
    """The rule and state of a ``torch.optim`` optimiser over ``model``'s trainable parameters.

    Args:
        optimizer: a ``torch.optim.SGD``, ``Adam``, ``AdamW`` or ``RMSprop``, any number of parameter
            groups (one group gives the plain rule, several a :class:`~toolkit.meta.combined.GroupedRule`).
        model: the module whose trainable parameters the groups must hold, all and only them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.optimizer = optimizer
        self._names = {id(p): k for k, p in model.named_parameters()}
        self._params = dict(model.named_parameters())
        self._trainable = sorted(k for k, p in model.named_parameters() if p.requires_grad)
        self._cache: tuple[Any, StepRule, tuple] | None = None
        self.rule()
        self._check_steps()

    def _layout(self) -> tuple[tuple[str, ...], ...]:
        try:
            layout = tuple(tuple(self._names[id(p)] for p in g["params"]) for g in self.optimizer.param_groups)
        except KeyError:
            layout = ()
        if sorted(k for names in layout for k in names) != self._trainable:
            raise ValueError("the optimiser must hold exactly the model's trainable parameters")
        return layout

    def rule(self) -> StepRule:
        """The rule of the optimiser's ``param_groups`` as they are now (cached while they do not change)."""
        groups = self.optimizer.param_groups
        key = tuple(tuple((k, id(v) if isinstance(v, (list, Tensor)) else v) for k, v in g.items())
                    for g in groups)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        layout = self._layout()
        rules = tuple(group_rule(self.optimizer, g) for g in groups)
        rule = rules[0] if len(rules) == 1 else GroupedRule(tuple(zip(layout, rules)))
        self._cache = (key, rule, tuple(zip(layout, rules)))
        return rule

    def _groups(self) -> tuple:
        self.rule()
        return self._cache[2]

    def _check_steps(self) -> None:
        """Adam's and RMSprop's state keeps one step count per parameter; a group must agree (read once)."""
        for names, _ in self._groups():
            steps = {float(s["step"]) for s in (self.optimizer.state.get(self._params[k], {}) for k in names)
                     if "step" in s}
            if len(steps) > 1:
                raise ValueError("the optimiser's parameters have stepped different numbers of times")

    def read_state(self) -> State | None:
        """The rule's state from ``optimizer.state`` (the same tensors, not copies); None before any step."""
        groups = self._groups()
        parts = [self._read_group(names, rule) for names, rule in groups]
        if all(part is None for part in parts):
            return None
        parts = [part if part is not None else rule.init({k: self._params[k].detach() for k in names})
                 for part, (names, rule) in zip(parts, groups)]
        return parts[0] if len(parts) == 1 else tuple(parts)

    def _read_group(self, names: tuple[str, ...], rule: StepRule) -> State | None:
        """The rule's state NamedTuple with each field read from torch's name (``rule.TORCH_STATE``); a field
        the rule's options switch off (None in ``rule.init``) stays None; what torch has not created yet
        (a buffer before the first step) is the rule's initial zeros."""
        params = [self._params[k] for k in names]
        states = [self.optimizer.state.get(p) or {} for p in params]
        if not any(states):
            return None
        first = params[0].detach()
        layout = rule.init({})  # which fields the rule's options use: a 0-d tensor, a dict, or None
        fields = {}
        for field, kind in layout._asdict().items():
            torch_key = rule.TORCH_STATE.get(field)
            if isinstance(kind, Tensor) and torch_key is not None:  # a step count, one per parameter in torch
                found = states[0].get(torch_key)
                fields[field] = (torch.zeros((), dtype=first.dtype, device=first.device) if found is None
                                 else found.to(dtype=first.dtype, device=first.device))
            elif isinstance(kind, dict) and torch_key is not None:
                fields[field] = {k: s[torch_key] if s.get(torch_key) is not None else torch.zeros_like(p.detach())
                                 for k, s, p in zip(names, states, params)}
            else:
                fields[field] = None
        if getattr(layout, "started", None) is not None:  # SGD with dampening: torch's buffer exists once it stepped
            stepped = states[0].get("momentum_buffer") is not None
            fields["started"] = torch.full((), float(stepped), dtype=first.dtype, device=first.device)
        return type(layout)(**fields)

    def write_state(self, state: State) -> None:
        """Put the rule's state into ``optimizer.state`` under torch's names (what ``step()`` would leave)."""
        groups = self._groups()
        # The optimiser's step has been taken (by the learner): tell lr_scheduler, which otherwise warns that
        # scheduler.step() came before optimizer.step() (it reads this flag that its wrapper of step() sets).
        self.optimizer._opt_called = True
        parts = (state,) if len(groups) == 1 else state
        for (names, rule), part in zip(groups, parts):
            for key, torch_key in rule.TORCH_STATE.items():
                value = getattr(part, key, None)
                if value is None:
                    continue
                if isinstance(value, Tensor):  # one count per parameter, as torch keeps it (distinct tensors)
                    per_param = value.detach().expand(len(names)).clone().unbind(0)
                    for k, count in zip(names, per_param):
                        self.optimizer.state[self._params[k]][torch_key] = count
                else:
                    for k in names:
                        self.optimizer.state[self._params[k]][torch_key] = value[k].detach()


def rule_from_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[StepRule, State | None]:
    """A rule and its state from a ``torch.optim`` optimiser over ``model``'s parameters, read now.

    Returns:
        (rule, state), state None when the optimiser holds none yet (start from ``rule.init``).
    """
    link = OptimizerLink(optimizer, model)
    state = link.read_state()
    if state is not None:  # a snapshot: copies, so later torch steps do not change it
        state = clone_state(state)
    return link.rule(), state


def as_rule(rule: Any, model: nn.Module) -> tuple[StepRule, State | None]:
    """Accept any :class:`~toolkit.meta.rules.StepRule` or a torch.optim optimiser (:func:`rule_from_optimizer`)."""
    if isinstance(rule, torch.optim.Optimizer):
        return rule_from_optimizer(rule, model)
    if isinstance(rule, StepRule):
        return rule, None
    raise TypeError(f"rule must be a {SUPPORTED}, or a StepRule (an object with init(params) and "
                    f"update(params, grads, state)); got {type(rule).__name__}")


__all__ = ["OptimizerLink", "rule_from_optimizer", "as_rule", "group_rule", "SUPPORTED"]
