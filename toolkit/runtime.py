"""Where a run executes and how it draws randomness: the device, the RNG state, named seed streams, and how
the process's allocator keeps freed memory.

One owner for each, so the command line, the training loop, the benchmarks and data-parallel runs resolve
a device the same way, a checkpoint captures the generators in one shape, and every derived seed has a name
instead of a magic offset. Depends on torch only (any toolkit package may import it).
"""
from __future__ import annotations

import ctypes
import os
import random
import sys

import numpy as np
import torch
from torch import Tensor

from toolkit.errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available: use --device cpu")
    return device


def process_device(device: torch.device, *, local_rank: int | None = None) -> torch.device:
    """The device this process computes on (the one rule for it).

    With ``local_rank`` (a data-parallel process joining its group): ``cuda:LOCAL_RANK`` for a CUDA run
    without an index (one GPU per process), else ``device``. Without it: the current CUDA device once one
    is selected (a process that joined its group on ``cuda:LOCAL_RANK``), else ``device`` as resolved.
    """
    if local_rank is not None:
        return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device
    if device.type == "cuda" and torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model initialisation draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global generators' state: ``{"cpu": ...}`` plus ``"cuda"`` for a CUDA device (a checkpoint's shape)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured (the CUDA part only on a CUDA device that was captured)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


SEED_STREAMS = {"train_batches": 0, "meta_batches": 7919}
"""Offsets of the batch streams a run draws from its seed (prime, so the two never meet for small seeds)."""
EPOCH_MULTIPLIER = 1_000_003
"""A stream's epoch ``e`` permutes with generator seed ``stream * EPOCH_MULTIPLIER + e`` (a prime > any epoch)."""


def seed_stream(seed: int, name: str, epoch: int | None = None) -> int:
    """The seed of the named stream of a run with ``seed``; with ``epoch``, the seed of that epoch's permutation.

    ``seed_stream(s, "train_batches")`` is ``s``, ``seed_stream(s, "meta_batches")`` is ``s + 7919``, and
    ``seed_stream(s, "train_batches", e)`` is ``s * 1_000_003 + e``: the numbers every run so far used.
    """
    if name not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {name!r}: one of {', '.join(SEED_STREAMS)}")
    base = seed + SEED_STREAMS[name]
    return base if epoch is None else epoch_seed(base, epoch)


def epoch_seed(stream_seed: int, epoch: int) -> int:
    """The permutation seed of ``epoch`` in a stream whose seed is ``stream_seed``."""
    return stream_seed * EPOCH_MULTIPLIER + epoch


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (malloc.h)."""

MMAP_THRESHOLD = 32 * 2**20
"""Blocks up to this size come from the heap, not from a fresh ``mmap`` (glibc's largest allowed threshold)."""

MALLOC_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
"""Variables by which a user sets glibc's allocator; where any is set, :func:`keep_freed_memory` leaves it alone."""


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory for reuse instead of returning it to the system (Linux only).

    A CPU training step allocates and frees buffers the size of the parameters and activations several times.
    By default glibc serves large blocks from fresh ``mmap`` s and trims the top of its heap after frees, so
    each step page-faults its buffers in again, and the kernel zeroes every page. On the default MLP (1.8 M
    parameters) that was about a fifth of an AdaLFL step (docs/performance.md). This sets the mmap threshold
    to 32 MB and stops trimming, as PyTorch's CUDA caching allocator keeps GPU memory: the process then holds
    on to its peak memory. ``lfl`` calls it in every process it starts; a program of one's own can call it,
    or set ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4000000000`` in the environment.

    Returns whether the settings took: False off Linux or glibc, and when the environment already sets the
    allocator (:data:`MALLOC_ENVIRONMENT`), which wins.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: another libc's mallopt reads these numbers differently
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["resolve_device", "process_device", "seed_everything", "rng_state", "set_rng_state", "seed_stream",
           "epoch_seed", "SEED_STREAMS", "EPOCH_MULTIPLIER", "keep_freed_memory"]
