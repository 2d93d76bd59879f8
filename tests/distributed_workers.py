"""Functions the data-parallel tests run in 2 gloo processes (importable, so spawn can pickle them)."""
from __future__ import annotations

import copy
import os

import torch
from torch import nn

import losses
from helpers import STRUCTURES, batch, tiny_mlp
from toolkit.meta import distributed
from toolkit.meta.distributed import Replicas, convert_sync_batchnorm
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import AdamRule, SGDRule


def joined(rank: int, world: int, init_file: str):
    """The product's process lifecycle (toolkit.meta.distributed.joined), over a file rendezvous."""
    torch.set_num_threads(1)
    return distributed.joined(Replicas(rank=rank, world_size=world), torch.device("cpu"),
                              init_method=f"file://{init_file}", timeout_s=60)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return tiny_mlp()
    if name == "bn":
        return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    model = STRUCTURES[name][0]()
    for module in model.modules():  # dropout masks are drawn per process: off for an exact comparison
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _loss() -> nn.Module:
    torch.manual_seed(1)
    loss = losses.GradientScaledLoss(losses.MLPLoss(hidden=(6, 6)), max_scale=3.0).double()
    with torch.no_grad():
        loss.scale_logit.fill_(0.4)
    return loss


RULES = {"nesterov": SGDRule(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
         "adamw": AdamRule(lr=0.01, weight_decay=0.05, decoupled=True)}


def lookahead_steps(model_name: str, rule_name: str, guard: bool, sync_bn: bool, route: str = "fast", *, world: int,
                    replicas: Replicas | None) -> dict:
    """Three online steps of the learner (meta-gradient ``route``); returns the model, loss and optimiser state
    as CPU tensors."""
    model = _model(model_name)
    if sync_bn:
        model = convert_sync_batchnorm(model)
    shape = (5,) if model_name in ("mlp", "bn") else STRUCTURES[model_name][1][1:]
    learner = OnlineLossLearner(model, _loss(), rule=RULES[rule_name], descent_guard=guard, snapshot_every=0,
                                meta_gradient=route, **({"replicas": replicas} if replicas is not None else {}))
    for step in range(3):
        train, valid = batch(8, shape, 3, seed=step), batch(6, shape, 3, seed=step + 50)
        learner.step(train, valid, diagnostics=True)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"loss.{k}": v.detach().clone() for k, v in learner.loss.state_dict().items()})
    state.update({f"guard.{i}": c for i, c in enumerate(learner.guard_counts.counts.clone())})
    state["meta_loss"] = learner.last["meta_loss"].detach().clone()
    state["grad_ratio"] = learner.last["grad_ratio"].detach().clone()
    return state


def run_lookahead_worker(rank: int, world: int, init_file: str, out_dir: str, case: tuple) -> None:
    """Three steps in the group; then records which gloo threads are still alive after leaving it."""
    with joined(rank, world, init_file):
        state = lookahead_steps(*case, world=world, replicas=Replicas(rank=rank, world_size=world))
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    threads = distributed.collective_threads()
    with open(os.path.join(out_dir, f"rank{rank}.threads"), "w") as f:
        f.write("\n".join(threads))


def run_failing_worker(rank: int, world: int, init_file: str, out_dir: str, case: tuple) -> None:
    """Process 1 fails at once; process 0 waits in a collective and must fail too, not hang."""
    with joined(rank, world, init_file):
        if rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        Replicas(rank=rank, world_size=world).sum_([torch.ones(3)])


__all__ = ["lookahead_steps", "run_lookahead_worker", "run_failing_worker", "copy"]
