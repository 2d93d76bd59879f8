"""The descent guard: a learned loss's base step never goes uphill for the task loss.

A fresh or drifting learned loss can be anti-aligned with the task: its gradient with
respect to the model outputs, m_i = ∂M/∂f_i, points uphill for the task loss,
⟨m_i, r_i⟩ < 0 with r_i = ∂L_task/∂f_i, and SGD then trains the model backwards. The
guard reflects every such row across the hyperplane orthogonal to r_i,

    m_i ← m_i − 2 ⟨m_i, r̂_i⟩ r̂_i   where ⟨m_i, r_i⟩ < 0,   r̂_i = r_i / ‖r_i‖,

which keeps the row's length and turns its uphill component downhill (:func:`descent_reflection`).
Samples share parameters, so that alone does not make the step g = Jᵀm a descent direction of
the batch: the same reflection is then applied once more in parameter space, against the task
loss's own gradient g_L = Jᵀr on the batch, where ⟨g, g_L⟩ < 0 (:func:`parameter_reflection`).
Both hold to first order only, so the step about to be taken is checked too
(:func:`check_step`): when the training batch's task loss at θ' is not below its value at θ
(one extra forward), the task loss's own step is taken instead, so a learned loss that is flat
where the model is cannot stall training.

This module is the guard's one owner: the lookahead (:mod:`toolkit.meta.lookahead`) calls
:func:`guarded_gradients` and carries the :class:`Guard` it returns, the online learner and a
frozen learned loss's stepper call :func:`check_step`, and both count :class:`GuardReport` s in
:class:`GuardCounts`. Each reflection H is linear and symmetric for a fixed choice of what
reflects (decided on detached values, with no host synchronisation), so the meta-gradient through
the guarded step stays exact: the loss's pullback takes H_f u instead of u, and the tangent
direction is H_θ w instead of w.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from losses import encode_targets
from losses.standard import task_gradient, task_loss

from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.meta.model_io import PLAIN, ModelIO, with_model_precision
from toolkit.meta.reverse import learned_backward
from toolkit.meta.rules import State, StepRule, select_state
from toolkit.meta.trees import tree_dot, tree_norm

TensorDict = dict[str, Tensor]


@dataclass(frozen=True)
class Reflection:
    """t ↦ H t = t − 2 (t · d_i) d_i per row, d_i = r̂_i on reflected rows and 0 elsewhere.

    Attributes:
        direction: (B, C) unit task-gradient rows where the learned gradient points uphill, else 0.
        count: the number of reflected rows (a 0-d device tensor).
        task_gradient: r = ∂L_task/∂f on the batch (B, C), detached.
    """

    direction: Tensor
    count: Tensor
    task_gradient: Tensor

    def __call__(self, t: Tensor) -> Tensor:
        return t - 2.0 * (t * self.direction).sum(dim=1, keepdim=True) * self.direction


def descent_reflection(m: Tensor, outputs: Tensor, targets: Tensor, task: str) -> Reflection:
    """The reflection that makes the learned gradient ``m`` (B, C) a descent direction per sample.

    Args:
        m: ∂M/∂f on the batch (only its value is read).
        outputs: the model outputs f (B, C); targets: labels or regression targets.
        task: "classification" or "regression" (the task loss, ``losses.task_loss``).
    """
    with torch.no_grad():
        f = outputs.detach()
        r = task_gradient(f, encode_targets(targets, f, task), task)
        dot = (m.detach() * r).sum(dim=1, keepdim=True)
        norm = r.norm(dim=1, keepdim=True)
        uphill = (dot < 0) & (norm > 0)
        direction = torch.where(uphill, r / norm.clamp_min(torch.finfo(r.dtype).tiny), torch.zeros_like(r))
        return Reflection(direction=direction, count=uphill.sum(), task_gradient=r)


def decided_on_host(flag: Tensor) -> bool | None:
    """A decision's value where reading it is free, so that a branch can skip the work it voids; else None.

    On the CPU a 0-d tensor is host memory: reading it costs no synchronisation, and a reflection that is
    not taken or a fallback step that is not chosen need not be computed and then selected away (each is
    a pass or two over every parameter). On an accelerator, and while ``torch.compile`` traces, this is
    None and the caller selects on the device (``torch.where``), with no host sync. Both ways give the same
    values: the identity where a reflection is not taken, the chosen candidate where a step is checked.
    """
    if flag.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return bool(flag)


@dataclass(frozen=True)
class ParameterReflection:
    """g ↦ H g = g − 2 (g · d) d over all parameters, d = ĝ_L when the batch step points uphill, else 0.

    ``g`` is a name → tensor dict; H is linear and symmetric for a fixed ``uphill``. The unit direction
    is kept as ĝ_L = g_L · ``inverse_norm`` without being written out: H g = g − 2 s² (g · g_L) g_L with
    s = ``inverse_norm``: one :func:`tree_dot` and one ``torch._foreach_addcmul``, with no copy of g or g_L.

    Attributes:
        task_grads: g_L = ∇θ L_task on the batch (name → tensor).
        inverse_norm: 1/‖g_L‖ when the step is reflected, else 0 (0-d tensor).
        uphill: whether the learned step pointed uphill for the batch task loss (0-d bool tensor).
        dot: g · g_L for the gradient g the decision was taken on (detached; None when built without it).
    """

    task_grads: TensorDict
    inverse_norm: Tensor
    uphill: Tensor
    dot: Tensor | None = None

    @property
    def direction(self) -> TensorDict:
        """d = ĝ_L (or 0), name → tensor, written out (for inspection; the map itself never builds it)."""
        return dict(zip(self.task_grads, torch._foreach_mul(list(self.task_grads.values()), self.inverse_norm)))

    def __call__(self, g: Mapping[str, Tensor], dot: Tensor | None = None) -> TensorDict:
        """H g; ``dot``, when the caller already has g · g_L (a constant: it carries no gradient to g), spares
        reading both again."""
        names = list(self.task_grads)
        if not names or decided_on_host(self.uphill) is False:
            return dict(g)
        tensors = [g[k] for k in names]
        task = list(self.task_grads.values())
        coefficient = -2.0 * self.inverse_norm.square() * (tree_dot(tensors, task) if dot is None else dot)
        return dict(zip(names, torch._foreach_addcmul(tensors, task, [coefficient] * len(names))))


def parameter_reflection(grads: Mapping[str, Tensor], task_grads: Mapping[str, Tensor]) -> ParameterReflection:
    """The reflection that makes the learned parameter gradient a descent direction of the batch task loss.

    Args:
        grads: ∇θ M (the learned loss's gradient, after the per-sample guard); only values are read.
        task_grads: ∇θ L_task on the same batch and parameters.
    """
    with torch.no_grad():
        names = list(grads)
        if not names:
            return ParameterReflection(task_grads={}, inverse_norm=torch.zeros(()),
                                       uphill=torch.zeros((), dtype=torch.bool))
        task = {k: task_grads[k] for k in names}
        dot = tree_dot([grads[k].detach() for k in names], list(task.values()))
        if decided_on_host(dot < 0) is False:  # not uphill whatever the norm: spare reading g_L again
            return ParameterReflection(task_grads=task, inverse_norm=torch.zeros_like(dot),
                                       uphill=torch.zeros((), dtype=torch.bool, device=dot.device), dot=dot)
        norm = tree_norm(task.values())
        uphill = (dot < 0) & (norm > 0)
        inverse = torch.where(uphill, norm.clamp_min(torch.finfo(norm.dtype).tiny).reciprocal(),
                              torch.zeros_like(norm))
        return ParameterReflection(task_grads=task, inverse_norm=inverse, uphill=uphill, dot=dot)


class GuardReport(NamedTuple):
    """What the guard did on one step, as named 0-d device tensors (read on the host only by :class:`GuardCounts`).

    Attributes:
        rows_reflected: how many samples' learned gradients were reflected (long).
        rows: how many samples the batch had (long).
        step_reflected: whether the batch step was reflected in parameter space (bool).
        step_rejected: whether the step check replaced the step by the task loss's own (bool).
    """

    rows_reflected: Tensor
    rows: Tensor
    step_reflected: Tensor
    step_rejected: Tensor


@dataclass(frozen=True)
class Guard:
    """The guard's decisions on one batch: the two reflections and the task loss's own gradient.

    Attributes:
        rows: the per-sample reflection H_f of m (:func:`descent_reflection`).
        step: the parameter-space reflection H_θ of Jᵀ H_f m (:func:`parameter_reflection`).
        task_grads: ∇θ L_task on the batch at θ (the fallback step's gradient).
    """

    rows: Reflection
    step: ParameterReflection
    task_grads: TensorDict

    def report(self, rejected: Tensor) -> GuardReport:
        """The :class:`GuardReport` of this batch, given the step check's verdict."""
        count = self.rows.count
        return GuardReport(rows_reflected=count, rows=torch.full_like(count, self.rows.direction.shape[0]),
                           step_reflected=self.step.uphill, step_rejected=rejected)


def guarded_gradients(local_outputs: Tensor, leaves: Mapping[str, Tensor], m: Tensor, outputs: Tensor,
                      targets: Tensor, task: str, *, replicas: Replicas = SINGLE, create_graph: bool = False,
                      linearise: bool = False) -> tuple[TensorDict, Guard, Callable[[Sequence[Tensor]], Tensor] | None]:
    """H_θ Jᵀ H_f m and the :class:`Guard` that made it, for the global batch of a data-parallel run.

    One backward of the reflected m and one of the task gradient r (for ∇θ L_task), each process
    through its own rows, summed over processes; every decision is taken on global quantities, so
    every process decides alike.

    Args:
        local_outputs: the model's outputs on this process's rows, with their graph to ``leaves``.
        m: ∂M/∂f on the global batch (B, C); outputs: the global outputs (detached); targets: global.
        task: the task loss's task.
        create_graph: keep the graph of the gradient (through m) for a route that differentiates it.
        linearise: keep the learned backward's graph for w ↦ J w on this process's rows
            (:func:`toolkit.meta.reverse.learned_backward`); returned third, else None.
    """
    names = list(leaves)
    tensors = [leaves[k] for k in names]
    rows = descent_reflection(m, outputs, targets, task)
    learned, tangent = learned_backward(local_outputs, tensors, replicas.shard(rows(m)), linearise=linearise,
                                        create_graph=create_graph, retain_graph=True, detach_copies=replicas.active)
    grads = dict(zip(names, learned))
    task_grads = dict(zip(names, torch.autograd.grad(local_outputs, tensors, replicas.shard(rows.task_gradient),
                                                     retain_graph=create_graph)))
    replicas.sum_([*grads.values(), *task_grads.values()])
    step = parameter_reflection(grads, task_grads)
    # Without a graph through g, the dot product the decision read is the one H g needs: reuse it.
    guard = Guard(rows=rows, step=step, task_grads=task_grads)
    return step(grads, dot=None if create_graph else step.dot), guard, tangent


@with_model_precision
def check_step(model: nn.Module, train, params: Mapping[str, Tensor], new_params: Mapping[str, Tensor],
               new_state: State, task_grads: Mapping[str, Tensor], before: Tensor, state: State, rule: StepRule,
               task: str, *, replicas: Replicas = SINGLE, io: ModelIO = PLAIN) -> tuple[TensorDict, State, Tensor]:
    """θ' if it lowers the training batch's task loss, else the task loss's own step.

    One extra forward at θ' on the training batch (buffers copied, so running statistics are
    untouched); the choice is a device-side ``where``, with no host sync, except on the CPU, where the
    verdict is read and only the chosen step is computed (:func:`decided_on_host`).

    Args:
        params: θ; new_params, new_state: the candidate step; task_grads: ∇θ L_task at θ (the
            :class:`Guard`'s, for the fallback step); before: L_task on the (global) batch at θ;
            state: the optimiser state of the current step.
        replicas: in a data-parallel run the loss at θ' is the global batch's (each process's
            share, summed), so every process decides alike.

    Returns:
        (θ chosen, optimiser state chosen, rejected: a 0-d bool tensor, for :meth:`Guard.report`).
    """
    x, y = train
    with torch.no_grad():
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        after = task_loss(io.functional(model, dict(new_params), buffers, replicas.shard(x)), replicas.shard(y),
                          task) / replicas.world_size
        after = replicas.sum_([after])[0]
        # Only a step that lowers the batch task loss is kept: an ascent, a non-finite loss and a step that
        # does not move (a learned loss flat where the model is, e.g. saturated far from the targets) all fall back.
        rejected = ~(after < before)
        verdict = decided_on_host(rejected)
        if verdict is False:
            return dict(new_params), new_state, rejected
        theta = {k: p.detach() for k, p in params.items()}
        fallback, fallback_state = rule.update(theta, dict(task_grads), state)
        if verdict:
            return fallback, fallback_state, rejected
        # One where per tensor: a where over flattened copies writes three fresh parameter-sized buffers,
        # which costs more than the launches it saves on a CPU (torch has no foreach where).
        chosen = {k: torch.where(rejected, fallback[k], new_params[k]) for k in new_params}
        chosen_state = select_state(rejected, fallback_state, new_state)
    return chosen, chosen_state, rejected


COUNTED = ("rows_reflected", "rows", "step_reflected", "steps", "step_rejected")
"""The columns of :attr:`GuardCounts.counts`: the :class:`GuardReport` fields summed, and the steps counted."""


class GuardCounts:
    """:class:`GuardReport` s summed on the device (no host sync per step).

    ``counts`` is two rows of :data:`COUNTED`: row 0 since the last :meth:`read` (the history's
    window), row 1 since the run began (:meth:`totals`, for results.json). A step's report is kept as
    it is, with no operator, and the reports are summed together every :data:`FOLD_EVERY` steps and
    whenever ``counts`` is read, instead of a dozen operators per step (on a GPU, kernel launches the
    step would wait for). A report's tensors must therefore not be overwritten later: a caller whose
    report comes out of a CUDA-graph replay (``torch.compile``'s "reduce-overhead") clones it.
    """

    FOLD_EVERY = 64
    """How many reports are kept before they are summed into ``counts`` (bounds what is kept)."""

    def __init__(self, device: torch.device | str) -> None:
        self._counts = torch.zeros(2, len(COUNTED), dtype=torch.long, device=device)
        self._pending: list[GuardReport] = []

    @property
    def counts(self) -> Tensor:
        """The (2, len(COUNTED)) counts, every report added so far included."""
        self._fold()
        return self._counts

    @counts.setter
    def counts(self, counts: Tensor) -> None:
        self._pending = []
        self._counts = counts

    def add(self, report: GuardReport) -> None:
        """Count one step's report."""
        self._pending.append(report)
        if len(self._pending) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        reports, self._pending = self._pending, []
        summed = {k: torch.stack(column).sum(dtype=torch.long) for k, column in zip(GuardReport._fields, zip(*reports))}
        summed["steps"] = torch.full_like(summed["rows"], len(reports))
        self._counts = self._counts + torch.stack([summed[k] for k in COUNTED])

    def read(self) -> dict[str, float]:
        """Shares since the last read of samples reflected (``guarded``), of steps reflected in parameter space
        (``guarded_steps``) and of steps replaced by the task loss's step (``rejected_steps``); one host read.
        Starts the window afresh; the run's totals keep counting."""
        counts = self.counts
        window = counts[0].tolist()
        self._counts = counts * torch.tensor([[0], [1]], dtype=torch.long, device=counts.device)
        return _shares(window)

    def totals(self) -> dict[str, float]:
        """The same shares over the whole run (every step since the counts began); one host read."""
        return _shares(self.counts[1].tolist())

    def load(self, counts: Tensor | None) -> None:
        """Restore ``counts`` from a checkpoint (ignored when absent or of another layout).

        A checkpoint written before the totals were kept holds the window only: it counts as both rows.
        """
        if counts is None:
            return
        if counts.shape == (len(COUNTED),):
            counts = torch.stack([counts, counts])
        if counts.shape == self._counts.shape:
            self.counts = counts.to(self._counts.device)


def _shares(counts: list[int]) -> dict[str, float]:
    n = dict(zip(COUNTED, (int(v) for v in counts)))
    return {"guarded": n["rows_reflected"] / n["rows"] if n["rows"] else 0.0,
            "guarded_steps": n["step_reflected"] / n["steps"] if n["steps"] else 0.0,
            "rejected_steps": n["step_rejected"] / n["steps"] if n["steps"] else 0.0}


__all__ = ["decided_on_host", "Reflection", "descent_reflection", "ParameterReflection", "parameter_reflection", "Guard",
           "GuardReport", "GuardCounts", "COUNTED", "guarded_gradients", "check_step"]
