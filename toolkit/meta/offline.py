"""Offline loss initialisation (AdaLFL Algorithm 1; on its own, the ML3 baseline).

Each meta step draws a fresh random initialisation θ of the base model, takes one
differentiable SGD step on the learned loss from it, evaluates the task loss on a
validation batch at θ', and updates the loss parameters φ with Adam. The base
model passed in is never modified: the resets happen on a private copy.

References:
    Bechtle et al. Meta Learning via Learned Loss (ML3). arXiv 1906.05374.
    Raymond et al. Online Loss Function Learning. arXiv 2301.13247, Algorithm 1.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from losses.base import require_scalar

from toolkit.meta.adam import all_finite, apply_meta_update, meta_optimizer
from toolkit.meta.lookahead import get_meta_gradient
from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.meta.combined import clipped
from toolkit.meta.model_io import ModelIO
from toolkit.meta.optimizers import as_rule
from toolkit.meta.rules import StepRule

Batch = tuple[Tensor, Tensor]


def reinitialise(model: nn.Module) -> None:
    """Draw fresh parameters: the outermost modules defining ``reset_parameters`` reset themselves.

    A module with its own ``reset_parameters`` (e.g. LeNet-5's Glorot initialisation)
    is trusted to reset its whole subtree; its children are not reset again after it.
    Models that initialise in ``__init__`` only should be given a ``reset`` callable
    that rebuilds them (``toolkit.runs.run`` does this with the model builder).
    """
    reset = getattr(model, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for child in model.children():
        reinitialise(child)


def offline_initialise(model: nn.Module, loss: nn.Module, batches: Callable[[int], tuple[Batch, Batch]], *,
                       steps: int = 2500, rule: StepRule | torch.optim.Optimizer, meta_lr: float = 1e-3, meta_clip: float | None = None,
                       meta_gradient: str = "fast", task: str = "classification", record_every: int = 50,
                       progress: Callable[[int, dict], None] | None = None,
                       reset: Callable[[nn.Module], None] = reinitialise, descent_guard: bool = True,
                       replicas: Replicas = SINGLE, max_grad_norm: float | None = None,
                       input_fn=None, output_fn=None) -> list[dict]:
    """Meta-train ``loss`` in place from one-step lookaheads at random initialisations.

    Args:
        model: the base model architecture (copied; the original is untouched).
        loss: the learned loss, returning a scalar (``reduction`` "mean", the default, or "sum");
            its parameters are updated in place.
        batches: ``batches(s)`` gives the (train, valid) batches of meta step s.
        steps: number of meta steps S_init (paper: 2500).
        rule: the base optimiser in the lookahead: any StepRule, or a torch.optim SGD/Adam/AdamW/RMSprop
            over ``model``'s parameters (its parameter groups read once; the state starts fresh each step).
        meta_lr: Adam learning rate; meta_clip: optional global-norm clipping.
        meta_gradient: "fast" or "naive".
        task: "classification" or "regression".
        record_every: read the meta-objective on the host every N steps.
        progress: called as ``progress(s, record)`` after each recorded step.
        reset: draws a fresh initialisation of the (copied) model in place.
        descent_guard: the lookahead's base step never goes uphill for a sample (:mod:`toolkit.meta.guard`).
        replicas: the processes of a data-parallel run (:mod:`toolkit.meta.distributed`); every process
            draws the same initialisations and gets the same meta-gradient.
        max_grad_norm, input_fn, output_fn: as for :class:`~toolkit.meta.online.OnlineLossLearner`.

    Returns:
        Records {"step", "meta_loss", "skipped"} every ``record_every`` steps.
    """
    if steps < 0:
        raise ValueError(f"offline steps must be >= 0, got {steps}")
    require_scalar(loss)
    rule = clipped(as_rule(rule, model)[0], max_grad_norm)
    io = ModelIO(input_fn=input_fn, output_fn=output_fn)
    scratch = copy.deepcopy(model)
    meta_gradient_fn = get_meta_gradient(meta_gradient)
    loss_params = dict(loss.named_parameters())
    meta_rule = meta_optimizer(lr=meta_lr, clip=meta_clip)
    adam = meta_rule.init({k: p.detach() for k, p in loss_params.items()})
    skipped = torch.zeros((), dtype=torch.long, device=next(model.parameters()).device)
    records: list[dict] = []
    meta_loss_sum = torch.zeros_like(skipped, dtype=torch.float64)
    for s in range(steps):
        with torch.no_grad():
            reset(scratch)
        train, valid = batches(s)
        params = {k: p for k, p in scratch.named_parameters() if p.requires_grad}
        result = meta_gradient_fn(scratch, params, dict(scratch.named_buffers()), loss, loss_params,
                                  train, valid, rule, None, task=task, descent_guard=descent_guard, io=io,
                                  replicas=replicas)
        ok = all_finite([result.meta_loss, *result.meta_grads.values()])
        adam = apply_meta_update(loss_params, result.meta_grads, adam, meta_rule, apply=ok)
        skipped = skipped + (~ok).long()
        meta_loss_sum = meta_loss_sum + torch.where(ok, result.meta_loss.double(), 0.0)
        if (s + 1) % record_every == 0 or s + 1 == steps:
            count = record_every if (s + 1) % record_every == 0 else (s + 1) % record_every
            record = {"step": s + 1, "meta_loss": float(meta_loss_sum) / count, "skipped": int(skipped)}
            meta_loss_sum = torch.zeros_like(meta_loss_sum)
            records.append(record)
            if progress is not None:
                progress(s + 1, record)
    return records

