"""Data-parallel training on ``torch.distributed``: one run over several processes (``torchrun``).

Launched as ``torchrun --nproc-per-node N --no-python lfl train ...`` (or any launcher that
sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), every process builds the
same model from the same seed and draws the same global batch; each takes its own contiguous
share of the rows (:meth:`Replicas.shard`). The method then stays exact because the loss is
always evaluated on the *global* batch:

* the model's outputs on each share are gathered (a (B, C) tensor, cheap), so the learned loss,
  its output gradient m, a batch-global normalisation (``GradientScaledLoss``), the descent
  guard's per-sample reflection and the loss network's meta-gradient pullback all see the
  same global batch on every process;
* each process back-propagates its own rows of m through its share and the parameter
  gradients are summed across processes (all-reduce): the gradient of the global batch;
* the validation gradient v of the lookahead is summed the same way, and the tangent
  u = J_f w of each share is gathered, so the meta-gradient is computed once, identically,
  on every process.

Every process therefore holds identical model and loss parameters after every step. gloo
is used on CPU, NCCL on CUDA (one device per process, ``cuda:LOCAL_RANK``).

BatchNorm uses per-process batch statistics in training (each share is normalised by its
own statistics, as ``DistributedDataParallel`` does by default), and the running
statistics of process 0 are copied to the others after every step (DDP's
``broadcast_buffers``), so evaluation is identical everywhere. With ``--sync-batchnorm``
the batch statistics are computed over the global batch instead
(:class:`SyncBatchNorm`, exact with respect to the single-process run, differentiable in
forward and reverse mode). Dropout draws its masks per process, so a model with dropout
does not reproduce the single-process run bit for bit.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.runtime import process_device

TIMEOUT_S = 600
"""How long a collective waits for a missing process before failing (not hanging)."""


@dataclass(frozen=True)
class Replicas:
    """The processes of one data-parallel run: this one's ``rank`` among ``world_size``.

    ``world_size == 1`` is the single-process run; every method is then the identity.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's rows of a global batch of ``n`` rows (contiguous, equal shares)."""
        if n % self.world_size:
            raise ConfigError(f"the batch of {n} rows does not split evenly over {self.world_size} processes: "
                              f"use a --batch-size divisible by {self.world_size}")
        share = n // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def shard(self, t: Tensor) -> Tensor:
        """This process's rows of ``t`` (the whole tensor on one process)."""
        return t if not self.active else t[self.rows(len(t))]

    def gather(self, t: Tensor) -> Tensor:
        """Every process's ``t`` (equal shapes), concatenated along dim 0 in rank order; no gradient."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts)

    def sum_(self, tensors: list[Tensor]) -> list[Tensor]:
        """Sum each tensor over the processes, in place, in one collective (flattened together)."""
        if not self.active or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return tensors

    def sum_dict(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`sum_` over a name → tensor dict (the tensors are summed in place and returned)."""
        self.sum_(list(tensors.values()))
        return tensors

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Copy process 0's values of each tensor to every process, in place."""
        if not self.active:
            return
        with torch.no_grad():
            for t in tensors:
                torch.distributed.broadcast(t, src=0)


SINGLE = Replicas()
"""The single-process run."""


def from_environment() -> tuple[Replicas, int | None]:
    """The replicas ``torchrun`` describes in the environment: (replicas, local rank or None).

    No ``WORLD_SIZE`` (or 1) is the single-process run; nothing is initialised then.
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = os.environ.get("LOCAL_RANK")
    except ValueError:
        raise ConfigError("WORLD_SIZE and RANK must be integers (as torchrun sets them)") from None
    if world <= 1:
        return SINGLE, None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside [0, WORLD_SIZE={world})")
    return Replicas(rank=rank, world_size=world), int(local) if local is not None else None


def initialise(replicas: Replicas, device: torch.device, *, init_method: str | None = None,
               timeout_s: float = TIMEOUT_S) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) unless it is joined already.

    ``torch._dynamo`` is imported first, on purpose. ``torch.func`` imports it on its first call,
    and when that import happens while a process group exists it keeps references to the group
    that ``destroy_process_group`` cannot release: gloo's threads (``pt_gloo_runloop``,
    ``gloo_tcp_loop``) then outlive the group and abort the interpreter at exit ("terminate called
    without an active exception", SIGABRT) in a random share of runs. Imported before the group
    exists, it holds nothing of it. Prefer :func:`joined`, which also leaves the group cleanly.
    """
    if not replicas.active or torch.distributed.is_initialized():
        return
    importlib.import_module("torch._dynamo")  # see the docstring: before the group exists, never after

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=replicas.rank,
                                         world_size=replicas.world_size,
                                         timeout=datetime.timedelta(seconds=timeout_s))


def shutdown(replicas: Replicas, *, synchronise: bool = True) -> None:
    """Leave the process group (when one is joined): wait for every process, then destroy it.

    The barrier keeps one process from tearing down its connections while another still sends
    (its last collective would fail); ``synchronise=False`` skips it when this process is leaving
    because of an error, since the others may never arrive.
    """
    if not replicas.active or not torch.distributed.is_initialized():
        return
    if synchronise:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@contextlib.contextmanager
def joined(replicas: Replicas, device: torch.device, *, local_rank: int | None = None,
           init_method: str | None = None, timeout_s: float = TIMEOUT_S) -> Iterator[torch.device]:
    """The lifecycle of one data-parallel process: join, run the body, leave.

    Yields this process's device (:func:`toolkit.runtime.process_device` with its local rank). On a normal exit every process waits
    for the others and the group is destroyed, so no gloo thread survives it; on an error the
    group is destroyed without waiting (the failing process's peers then fail in their next
    collective instead of hanging). The single-process run (``world_size == 1``) joins nothing.
    """
    device = process_device(device, local_rank=local_rank or 0) if replicas.active else device
    initialise(replicas, device, init_method=init_method, timeout_s=timeout_s)
    try:
        yield device
    except BaseException:
        shutdown(replicas, synchronise=False)
        raise
    shutdown(replicas)


def collective_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (Linux ``/proc``; empty elsewhere).

    What :func:`joined` must leave behind it: nothing. Tests and diagnostics read it.
    """
    names = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return names
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if "gloo" in name:
            names.append(name)
    return sorted(names)


class _AllReduceSum(torch.autograd.Function):
    """Σ over processes, differentiable in reverse mode to any order (the cotangent is summed too) and in
    forward mode (the tangent is summed), including under ``torch.func`` transforms."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # The sum is its own adjoint; applied as this Function again, so that a backward with create_graph
        # is itself differentiable (the reverse-over-reverse tangent, toolkit.meta.reverse, differentiates it).
        return _AllReduceSum.apply(grad)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        out = tangent.clone()
        torch.distributed.all_reduce(out)
        return out


def all_reduce_sum(x: Tensor) -> Tensor:
    """Σ of ``x`` over the processes (identity without a process group), differentiable."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    return _AllReduceSum.apply(x)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    Sums and sums of squares are all-reduced (:func:`all_reduce_sum`, differentiable in both
    modes), so the lookahead's JVP and double backward stay exact; the running statistics
    follow ``nn.BatchNorm``'s update with the global mean and unbiased variance. In
    evaluation, or in one process, it is ``F.batch_norm`` itself.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()):
            return super().forward(x)  # nn.BatchNorm's own forward
        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        stats = all_reduce_sum(torch.cat([x.sum(dims), (x * x).sum(dims), count.reshape(1)]))
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = stats[channels:2 * channels] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
                self.num_batches_tracked.add_(1)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by :class:`SyncBatchNorm` with the same state."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, device=next(module.buffers(), torch.empty(0)).device,
                             dtype=next(module.buffers(), torch.empty(0)).dtype if module.running_mean is not None
                             else None)
        sync.load_state_dict(module.state_dict())
        return sync
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module


__all__ = ["Replicas", "SINGLE", "from_environment", "joined", "initialise", "shutdown",
           "collective_threads", "all_reduce_sum", "SyncBatchNorm", "convert_sync_batchnorm", "TIMEOUT_S"]
