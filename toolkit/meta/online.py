"""Online loss learning (AdaLFL, Algorithm 2): a thin stateful wrapper around the lookahead.

Usable from any training loop::

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # or any StepRule
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    learner = OnlineLossLearner(model, MLPLoss(), rule=optimizer)
    for (x, y), (x_v, y_v) in zip(train_batches, valid_batches):
        info = learner.step((x, y), (x_v, y_v))
        scheduler.step()

A ``torch.optim`` optimiser is read at every step (:mod:`toolkit.meta.optimizers`: its parameter
groups, so schedulers work, and its state, which the learner writes back) but never stepped.

Each ``step`` takes the real base step with the learned loss (θ_{t+1} is kept) and,
every ``meta_interval`` steps, the meta step on the loss parameters with Adam through
the one-step lookahead. The hot path never reads a value on the host: non-finite
losses or meta-gradients are detected on the device and the affected update is
selected away with ``torch.where``; the counters are read only by :meth:`check`
and :meth:`record`, which the caller runs every N steps. On the CPU, where a 0-d
tensor is host memory and reading it synchronises nothing, those verdicts are read
and only the chosen update is written (:func:`~toolkit.meta.guard.decided_on_host`).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from losses.base import require_scalar
from losses.derivatives import CompiledDerivatives, value_and_gradient

from toolkit.errors import UserError
from toolkit.meta.adam import all_finite, apply_meta_update, meta_optimizer, meta_state_from_checkpoint
from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.meta.combined import clipped
from toolkit.meta.guard import GuardCounts, GuardReport, check_step, decided_on_host
from toolkit.meta.lookahead import DATA_PARALLEL_ROUTES, batch_gradients, get_meta_gradient
from toolkit.meta.model_io import PLAIN, ModelIO, with_model_precision
from toolkit.meta.optimizers import OptimizerLink, as_rule
from toolkit.meta.rules import State, StepRule, detach_state, load_state, select_state, state_to_dict


def has_trainable_parameters(module: nn.Module) -> bool:
    """Whether ``module`` has a non-empty parameter that requires grad (something to learn)."""
    return any(p.requires_grad and p.numel() for p in module.parameters())


ONLINE_META_LR = 1e-4
"""The default Adam rate of the online updates: a tenth of the offline phase's 1e-3 (the paper uses 1e-3 for both)."""


class NonFiniteError(UserError, RuntimeError):
    """Too many consecutive non-finite updates: the run cannot continue."""


@dataclass
class LossHistory:
    """Snapshots of the loss parameters and diagnostics, recorded every N steps.

    ``snapshots``: list of {"step": int, "params": {name: CPU tensor}}.
    ``records``: list of dicts of host numbers (step, task_loss, learned_loss, meta_loss, grad_ratio, skips).
    """

    snapshots: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


class OnlineLossLearner:
    """Adapts a learned loss online while it trains a base model.

    Args:
        model: the base model; its parameters are updated in place.
        loss: the learned loss (any ``nn.Module`` called as ``loss(outputs, targets)``), returning a
            scalar: a learned loss's default ``reduction="mean"`` is the paper's; ``"sum"`` trains
            exactly too (with steps B·C times larger at the same lr); ``"none"`` is refused.
        rule: the base optimiser: a ``torch.optim.SGD``/``Adam``/``AdamW``/``RMSprop`` over the model's
            trainable parameters, any number of parameter groups (its ``param_groups`` are read at every
            step, so ``lr_scheduler`` schedulers work; its state is read and written back every step;
            it is never stepped), or any :class:`~toolkit.meta.rules.StepRule` (``SGDRule``, ``AdamRule``,
            ``RMSpropRule``, your own).
        online_meta_lr: Adam learning rate of the loss parameters' online updates (the paper: 1e-3;
            this toolkit's default, :data:`ONLINE_META_LR`, is a tenth of that; ``lfl train --online-meta-lr``).
        meta_interval: take a meta step every k base steps (1: every step).
        meta_clip: clip the meta-gradient to this global L2 norm (None: no clipping).
        meta_gradient: "fast" (JVP route, default), "reverse" (the JVP read off the training backward),
            "fd" (finite-difference tangent, approximate) or "naive" (unrolled reference).
        task: "classification" or "regression" (the meta-objective).
        snapshot_every: copy the loss parameters into ``history`` every N steps.
        max_nonfinite: raise :class:`NonFiniteError` from :meth:`check` after this many
            consecutive skipped steps.
        descent_guard: reflect each sample's learned gradient that points uphill for the task
            loss, so no base step trains a sample backwards (:mod:`toolkit.meta.guard`); the
            meta-gradient goes through it. ``False`` is the paper's method.
        max_grad_norm: clip the base gradient to this global L2 norm before the step, as
            ``torch.nn.utils.clip_grad_norm_`` does (None: no clipping); the lookahead differentiates
            through the clipping.
        input_fn, output_fn: adapt the model's inputs and outputs (:class:`~toolkit.meta.model_io.ModelIO`):
            ``input_fn(x)`` gives the model's arguments (a dict: keywords), ``output_fn(out)`` the outputs
            tensor from a tuple or dict. Under ``torch.autocast`` the model runs in the autocast dtype
            and the loss, its derivatives and the meta-gradient in float32.
        compile: capture with ``torch.compile`` what it can of the step: the loss's derivatives
            (:class:`~losses.derivatives.CompiledDerivatives`; not on the unrolled ``"naive"`` route) and,
            off the CPU, the guard's step check (:func:`compiled`; on the CPU the eager check skips the
            step it does not keep, which a graph cannot). The lookahead's passes through the model stay
            eager (docs/performance.md). Each new batch shape compiles once.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, *, rule: StepRule | torch.optim.Optimizer,
                 online_meta_lr: float = ONLINE_META_LR,
                 meta_interval: int = 1, meta_clip: float | None = None, meta_gradient: str = "fast",
                 task: str = "classification", snapshot_every: int = 100, max_nonfinite: int = 50,
                 descent_guard: bool = True, replicas: Replicas = SINGLE, max_grad_norm: float | None = None,
                 input_fn=None, output_fn=None, compile: bool = False) -> None:
        if meta_interval < 1:
            raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
        if online_meta_lr <= 0:
            raise ValueError(f"online_meta_lr must be positive, got {online_meta_lr}")
        if not has_trainable_parameters(loss):
            raise ValueError(f"{type(loss).__name__} has no trainable parameters: there is nothing to learn online")
        require_scalar(loss)
        self.model, self.loss = model, loss
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive (or None), got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        if isinstance(rule, torch.optim.Optimizer):
            self.optimizer: OptimizerLink | None = OptimizerLink(rule, model)
            self._rule, state = None, self.optimizer.read_state()
        else:
            self.optimizer = None
            self._rule, state = as_rule(rule, model)
        self.io = ModelIO(input_fn=input_fn, output_fn=output_fn)
        self.online_meta_lr, self.meta_interval, self.meta_clip = online_meta_lr, meta_interval, meta_clip
        self._meta_gradient = get_meta_gradient(meta_gradient)
        if compile and meta_gradient != "naive":  # the unrolled reference stays as written
            self._meta_gradient = functools.partial(self._meta_gradient, derivatives=CompiledDerivatives(loss))
        self.task, self.snapshot_every, self.max_nonfinite = task, snapshot_every, max_nonfinite
        meta_optimizer(lr=online_meta_lr, clip=meta_clip)  # checks meta_clip now, not at the first meta step
        self.adam: State = self.meta_rule.init({k: p.detach() for k, p in loss.named_parameters()})
        self.state: State = state if state is not None else self.rule.init(self._params())
        self.steps = 0
        device = next(model.parameters()).device
        # [skipped base updates, skipped meta updates, consecutive skips], on the device.
        self.skips = torch.zeros(3, dtype=torch.long, device=device)
        self.history = LossHistory()
        self.last: dict[str, Tensor] = {}
        self.descent_guard = descent_guard
        if replicas.active and meta_gradient not in DATA_PARALLEL_ROUTES:
            raise ValueError("a data-parallel run takes the exact meta-gradient routes: meta_gradient='fast' "
                             "(the default) or 'reverse'")
        self.replicas = replicas
        self.guard_counts = GuardCounts(device)
        self.compile = compile
        # On the CPU the eager check reads its verdict and computes only the step it keeps; a compiled graph
        # computes both and selects (it cannot branch on a value), which cost more there (docs/performance.md).
        self._check_step = compiled(check_step) if compile and device.type != "cpu" else check_step

    @property
    def meta_rule(self) -> StepRule:
        """The meta optimiser of the loss parameters: Adam at ``online_meta_lr``, clipped to ``meta_clip``."""
        return meta_optimizer(lr=self.online_meta_lr, clip=self.meta_clip)

    @property
    def rule(self) -> StepRule:
        """The base step the next ``step`` takes: the optimiser's ``param_groups`` as they are now (or the
        rule given), clipped to ``max_grad_norm``."""
        rule = self._rule if self.optimizer is None else self.optimizer.rule()
        return clipped(rule, self.max_grad_norm)

    # ------------------------------------------------------------------ hot path
    def step(self, train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor] | None = None, *,
             lr: float | None = None, diagnostics: bool = False) -> dict[str, Tensor]:
        """One base step with the learned loss and, when due, one meta step.

        Args:
            train: (x, y) batch for the base step.
            valid: (x_v, y_v) batch for the meta-objective (needed when a meta step is due).
            lr: the base learning rate of this step for every parameter group (default: the rule's,
                or the optimiser's ``param_groups`` as a scheduler left them); >= 0.
            diagnostics: also compute the gradient-scale ratio ‖∂M/∂f‖ / ‖∂L_task/∂f‖.

        Returns:
            Device scalars: "learned_loss" (M on the training batch at the current θ), "task_loss"
            (cross-entropy or squared error on the same batch and θ, from the same outputs), and on
            meta steps "meta_loss" (and "grad_ratio").
        """
        rule = self.rule
        if lr is not None:
            if not hasattr(rule, "with_lr"):
                raise ValueError(f"step(lr=...) needs a rule with with_lr(lr); {type(rule).__name__} has none")
            rule = rule.with_lr(lr)
        if self.optimizer is not None:  # the optimiser's state as it is now (a user may have loaded it)
            state = self.optimizer.read_state()
            self.state = state if state is not None else rule.init(self._params())
        if self.snapshot_every and self.steps % self.snapshot_every == 0:
            self.snapshot()
        if self.steps % self.meta_interval == 0:
            if valid is None:
                raise ValueError("a meta step is due: pass a validation batch to step(train, valid)")
            info = self._lookahead_step(train, valid, rule, diagnostics)
        else:
            info = self._plain_step(train, rule)
        self.steps += 1
        self.last = info
        return info

    def _params(self) -> dict[str, Tensor]:
        return {k: p for k, p in self.model.named_parameters() if p.requires_grad}

    def _lookahead_step(self, train, valid, rule: StepRule, diagnostics: bool) -> dict[str, Tensor]:
        params = self._params()
        loss_params = dict(self.loss.named_parameters())
        result = self._meta_gradient(self.model, params, dict(self.model.named_buffers()), self.loss,
                                     loss_params, train, valid, rule, self.state, task=self.task,
                                     diagnostics=diagnostics, descent_guard=self.descent_guard, io=self.io,
                                     replicas=self.replicas)
        new_params, new_state = result.params, result.state
        if result.guard is not None:
            new_params, new_state, rejected = self._check_step(
                self.model, train, params, result.params, result.state, result.guard.task_grads,
                result.train_task_loss, self.state, rule, self.task, replicas=self.replicas, io=self.io)
            if self._check_step is not check_step:  # a CUDA-graph replay's output: the next replay overwrites it
                rejected = rejected.clone()
            self.guard_counts.add(result.guard.report(rejected))
        base_ok = all_finite([result.train_loss, *new_params.values()])
        meta_ok = base_ok & all_finite([result.meta_loss, *result.meta_grads.values()])
        self._commit_base(params, new_params, new_state, base_ok)
        self.adam = apply_meta_update(loss_params, result.meta_grads, self.adam, self.meta_rule, apply=meta_ok)
        self._count(base_ok, meta_ok)
        info = {"learned_loss": result.train_loss, "task_loss": result.train_task_loss.detach(),
                "meta_loss": result.meta_loss}
        if result.grad_ratio is not None:
            info["grad_ratio"] = result.grad_ratio
        return info

    def _plain_step(self, train, rule: StepRule) -> dict[str, Tensor]:
        params = self._params()
        step = guarded_step(self.model, self.loss, train, params, self.state, rule, self.task,
                            replicas=self.replicas, descent_guard=self.descent_guard, io=self.io)
        train_loss, new_params, new_state = step.value, step.params, step.state
        if step.guard is not None:
            self.guard_counts.add(step.guard)
        ok = all_finite([train_loss, *new_params.values()])
        self._commit_base(params, new_params, new_state, ok)
        self._count(ok, torch.ones_like(ok))
        return {"learned_loss": train_loss.detach(), "task_loss": step.task_loss.detach()}

    def _commit_base(self, params, new_params, new_state: State, ok: Tensor) -> None:
        verdict = decided_on_host(ok)
        with torch.no_grad():
            if verdict is None:
                for k, p in params.items():
                    torch.where(ok, new_params[k], p, out=p)
                self.state = select_state(ok, detach_state(new_state), self.state)
            elif verdict:  # on the CPU: a copy instead of a select over both (the same values)
                torch._foreach_copy_(list(params.values()), [new_params[k] for k in params])
                self.state = detach_state(new_state)
        if self.optimizer is not None:
            self.optimizer.write_state(self.state)

    def _count(self, base_ok: Tensor, meta_ok: Tensor) -> None:
        bad = (~base_ok).long()
        meta_bad = (~meta_ok).long()
        consecutive = (self.skips[2] + 1) * (bad | meta_bad)
        self.skips = torch.stack([self.skips[0] + bad, self.skips[1] + meta_bad * (1 - bad), consecutive])

    # ------------------------------------------------------------- every N steps
    def snapshot(self) -> None:
        """Copy the current loss parameters to the host history (a host sync)."""
        params = {k: p.detach().cpu().clone() for k, p in self.loss.named_parameters()}
        self.history.snapshots.append({"step": self.steps, "params": params})

    def check(self) -> dict[str, int]:
        """Read the skip counters (a host sync); raise after too many consecutive skips."""
        base, meta, consecutive = (int(v) for v in self.skips.tolist())
        if consecutive >= self.max_nonfinite:
            raise NonFiniteError(
                f"{consecutive} consecutive steps gave a non-finite learned loss or meta-gradient "
                f"(step {self.steps}); lower --lr or --meta-lr, or set --meta-clip")
        return {"skipped_base": base, "skipped_meta": meta}

    def guard_record(self) -> dict[str, float]:
        """What the descent guard reflected since the last call (a host sync): ``guarded``, the share
        of samples, and ``guarded_steps``, the share of base steps reflected in parameter space."""
        return self.guard_counts.read() if self.descent_guard else {}

    def diagnostics(self) -> dict:
        """The diagnostics since the last call (a host sync): skipped updates, the guard's shares, and the
        gradient-scale ratio when the latest step computed it. Part of the training loop's stepper
        interface (:mod:`toolkit.runs.steppers`), which the learner implements itself."""
        rec = {**self.check(), **self.guard_record()}
        if "grad_ratio" in self.last:
            rec["grad_ratio"] = float(self.last["grad_ratio"])
        return rec

    def summary(self) -> dict:
        """The whole run's diagnostics (results.json): skipped updates and the guard's shares over every step."""
        return {**self.check(), **(self.guard_counts.totals() if self.descent_guard else {})}

    def record(self) -> dict:
        """A host record of the latest diagnostics and losses (call every N steps), kept in ``history``."""
        rec = {"step": self.steps, **self.diagnostics()}
        rec.update({k: float(v) for k, v in self.last.items()})
        self.history.records.append(rec)
        return rec

    # ------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Plain data and tensors (``torch.load(..., weights_only=True)`` reads it): the optimiser states as
        :func:`~toolkit.meta.rules.state_to_dict` writes them."""
        return {"steps": self.steps, "loss": self.loss.state_dict(), "adam": state_to_dict(self.adam),
                "rule_state": state_to_dict(self.state), "skips": self.skips, "guard_counts": self.guard_counts.counts,
                "history": {"snapshots": self.history.snapshots, "records": self.history.records}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.loss.load_state_dict(state["loss"])
        self.adam = meta_state_from_checkpoint(state["adam"])
        if "rule_state" in state:  # tagged (state_to_dict) or an older flat dict: load_state reads both
            self.state = load_state(state["rule_state"])
        elif state.get("momentum") is not None:  # checkpoints written before the rules took state dicts
            self.state = load_state({"momentum": state["momentum"]})
        if self.optimizer is not None:
            self.optimizer.write_state(self.state)
        self.skips = state["skips"]
        self.guard_counts.load(state.get("guard_counts"))
        self.history = LossHistory(snapshots=list(state["history"]["snapshots"]),
                                   records=list(state["history"]["records"]))


@with_model_precision
def fixed_loss_gradients(model: nn.Module, loss: nn.Module, train, params: dict[str, Tensor], task: str | None, *,
                         replicas: Replicas = SINGLE, descent_guard: bool = False, io: ModelIO = PLAIN):
    """The base gradient of a fixed loss on the (global) batch, through the model's own forward.

    The loss and its output gradient are taken on the global batch (every process's outputs
    gathered), each process back-propagates its rows, and the parameter gradients are summed
    (:mod:`toolkit.meta.distributed`; one process: the ordinary gradient). Returns
    :class:`~toolkit.meta.lookahead.BatchGradients` (with the guard's reflections when asked).
    """
    x, y = train
    with torch.enable_grad():
        local_outputs = io.call(model, replicas.shard(x))
        outputs = replicas.gather(local_outputs.detach())
        value, m = (t.detach() for t in value_and_gradient(loss, outputs, y))  # a fixed loss: no graph to φ
        return batch_gradients(local_outputs, params, m, outputs, y, task, replicas=replicas,
                               descent_guard=descent_guard, value=value)


class FixedStep(NamedTuple):
    """One step of :func:`guarded_step`: M on the batch at θ, θ', the state', the guard's report (None
    unguarded) and L_task on the batch at θ."""

    value: Tensor
    params: dict[str, Tensor]
    state: State
    guard: GuardReport | None
    task_loss: Tensor


@with_model_precision
def guarded_step(model: nn.Module, loss: nn.Module, train, params: dict[str, Tensor], state: State,
                 rule: StepRule, task: str, *, replicas: Replicas = SINGLE, descent_guard: bool = True,
                 io: ModelIO = PLAIN) -> FixedStep:
    """One step on a fixed loss, out of place (a :class:`FixedStep`).

    The gradient is :func:`fixed_loss_gradients`'s. With ``descent_guard``: the two reflections of
    :mod:`toolkit.meta.guard`, the rule's update (equal to its ``torch.optim`` counterpart), then
    :func:`~toolkit.meta.guard.check_step`, whose :class:`~toolkit.meta.guard.GuardReport` goes to
    :meth:`GuardCounts.add`. Serves the online learner's plain steps and a frozen learned loss.
    """
    step = fixed_loss_gradients(model, loss, train, params, task, replicas=replicas, descent_guard=descent_guard,
                                io=io)
    value = step.value
    theta = {k: p.detach() for k, p in params.items()}
    with torch.no_grad():
        new_params, new_state = rule.update(theta, step.grads, state)
    if not descent_guard:
        return FixedStep(value, new_params, new_state, None, step.train_task_loss)
    new_params, new_state, rejected = check_step(model, train, params, new_params, new_state, step.guard.task_grads,
                                                 step.train_task_loss, state, rule, task, replicas=replicas, io=io)
    return FixedStep(value, new_params, new_state, step.guard.report(rejected), step.train_task_loss)


def compiled(fn):
    """``fn`` under ``torch.compile``: mode "reduce-overhead" (CUDA graphs) where CUDA is present, else the
    default mode; ``dynamic=False``, so each shape is captured once."""
    mode = "reduce-overhead" if torch.cuda.is_available() else "default"
    return torch.compile(fn, mode=mode, dynamic=False)


def frozen_copy(loss: nn.Module) -> nn.Module:
    """A copy of a learned loss with its parameters frozen (for fixed-loss training)."""
    fixed = copy.deepcopy(loss)
    for p in fixed.parameters():
        p.requires_grad_(False)
    return fixed


__all__ = ["compiled", "OnlineLossLearner", "LossHistory", "NonFiniteError", "frozen_copy", "has_trainable_parameters",
           "FixedStep", "guarded_step", "fixed_loss_gradients"]
