"""The loop's steppers: one base step, its history diagnostics, its results summary and its checkpoint state.

Two kinds fit :class:`Stepper`: :class:`FixedLossStepper` trains on a fixed loss (cross-entropy, squared
error, a frozen learned loss, with the descent guard when asked), and
:class:`~toolkit.meta.online.OnlineLossLearner` (AdaLFL, ``--adapt``) implements the interface itself.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

import losses

from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.meta.guard import GuardCounts
from toolkit.meta.online import fixed_loss_gradients, guarded_step
from toolkit.meta.optimizers import OptimizerLink
from toolkit.meta.rules import load_state, torch_optimizer
from toolkit.runs.common import TrainConfig


class Stepper(Protocol):
    """What the training loop asks of a base step (:mod:`toolkit.runs.run`)."""

    def step(self, train, valid=None, *, lr: float, diagnostics: bool = False) -> dict[str, Tensor]:
        """One base step (and a meta step where the stepper learns); device scalars, no host sync."""

    def diagnostics(self) -> dict:
        """The history's diagnostics since the last call (a host read, every ``--log-every`` steps)."""

    def summary(self) -> dict:
        """The whole run's diagnostics, for results.json."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class FixedLossStepper:
    """The base optimiser on a fixed loss: cross-entropy, squared error, or a frozen learned loss.

    Unguarded, the step is ``torch.optim``'s own (SGD, Adam or AdamW). With ``guard_task`` (a frozen
    learned loss and ``config.descent_guard``) it is the same rule written functionally
    (:mod:`toolkit.meta.rules`, equal to ``torch.optim``) around the descent guard (:mod:`toolkit.meta.guard`):
    the two reflections, then the step check that falls back to the task loss's own step. Either way the
    one optimiser state is the ``torch.optim`` optimiser's: the guarded step reads and writes it through
    :class:`~toolkit.meta.optimizers.OptimizerLink`, as the online learner does, so a checkpoint holds
    ``optimizer.state_dict()`` only.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, config: TrainConfig, *, task: str | None = None,
                 learned: bool = False, guard_task: str | None = None, replicas: Replicas = SINGLE) -> None:
        self.model, self.loss, self.guard_task, self.replicas = model, loss, guard_task, replicas
        self.task, self.learned = task or guard_task or "classification", learned or guard_task is not None
        rule = config.rule()
        if guard_task is None:
            self.optimizer = torch_optimizer(rule, model.parameters())
            self.link: OptimizerLink | None = None
        else:  # the link reads the trainable parameters' groups and state (it refuses any other parameter)
            self.optimizer = torch_optimizer(rule, [p for p in model.parameters() if p.requires_grad])
            self.link = OptimizerLink(self.optimizer, model)
        self.guard_counts = GuardCounts(next(model.parameters()).device)

    def step(self, train, valid=None, *, lr: float, diagnostics: bool = False) -> dict[str, Tensor]:
        """One base step; returns device scalars ``task_loss`` (L_task on the batch at θ, from the step's own
        outputs) and, for a learned loss, ``learned_loss`` (its value there)."""
        if self.guard_task is not None:
            return self._guarded_step(train, lr)
        x, y = train
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if not self.replicas.active:
            outputs = self.model(x)
            value = self.loss(outputs, y)
            value.backward()
            task_value = losses.task_loss(outputs.detach(), y, self.task)
        else:  # the global batch's loss and gradient (toolkit.meta.distributed), then torch.optim's own step
            params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
            step = fixed_loss_gradients(self.model, self.loss, train, params, self.task, replicas=self.replicas)
            value, task_value = step.value, step.train_task_loss
            for k, p in params.items():
                p.grad = step.grads[k]
        self.optimizer.step()
        return self._info(value, task_value)

    def _info(self, value: Tensor, task_value: Tensor) -> dict[str, Tensor]:
        info = {"task_loss": task_value.detach()}
        if self.learned:
            info["learned_loss"] = value.detach()
        return info

    def _guarded_step(self, train, lr: float) -> dict[str, Tensor]:
        params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rule = self.link.rule()
        state = self.link.read_state()
        state = state if state is not None else rule.init({k: p.detach() for k, p in params.items()})
        step = guarded_step(self.model, self.loss, train, params, state, rule, self.guard_task, replicas=self.replicas)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(step.params[k])
        self.link.write_state(step.state)
        self.guard_counts.add(step.guard)
        return self._info(step.value, step.task_loss)

    def diagnostics(self) -> dict:
        """The history's diagnostics since the last record (the guard's shares; a host read)."""
        return {} if self.guard_task is None else self.guard_counts.read()

    def summary(self) -> dict:
        """The run's diagnostics for results.json (the guard's shares over every step)."""
        return {} if self.guard_task is None else self.guard_counts.totals()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "guard_counts": self.guard_counts.counts}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (older checkpoints are migrated first: :mod:`toolkit.runs.checkpoints`).

        Checkpoints before version 3 kept the guarded step's state beside an optimiser that was never stepped
        (``rule_state``); for a guarded run it is written into the optimiser here, where the model's parameter
        names are known. Unguarded, the optimiser's own state was the live one and ``rule_state`` is ignored.
        """
        self.optimizer.load_state_dict(state["optimizer"])
        self.guard_counts.load(state.get("guard_counts"))
        if self.link is not None and state.get("rule_state") is not None and not self.optimizer.state:
            self.link.write_state(load_state(state["rule_state"]))


__all__ = ["Stepper", "FixedLossStepper"]
