"""What the training loop (:mod:`toolkit.runs.run`) is made of: batches, evaluation, devices, progress, files.

Batches are a pure function of (seed, step) (:class:`BatchStream`), so a run resumed from a
checkpoint sees the same batches and reaches the same final numbers as an uninterrupted one.
Evaluation reads the host once per split. Result files are strict JSON, written atomically.
The options of a run (:class:`TrainConfig`) are declared in :mod:`toolkit.runs.config`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from losses import task_loss


from toolkit.errors import ConfigError
# The options are declared once, in toolkit.runs.config; these names are re-exported for callers of this module.
from toolkit.runs.config import (LOSS_CHOICES, LOSS_PARAMS, LOSS_SCALES, MAX_SEED, PRESETS,  # noqa: E402,F401
                                 TrainConfig, coerce_option, lr_at)
from toolkit.runtime import epoch_seed, resolve_device, seed_everything  # noqa: E402,F401 (re-exported)


def progress_bar(total: int, *, enabled: bool, desc: str, unit: str, initial: int = 0):
    """A tqdm bar on stderr, only when stderr is a terminal: redirected logs get no carriage-return floods."""
    import sys

    from tqdm import tqdm  # the plain bar: tqdm.auto warns in notebooks without ipywidgets

    on_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not (enabled and on_terminal), desc=desc, unit=unit,
                dynamic_ncols=True, mininterval=0.5)


class BatchStream:
    """Deterministic mini-batches: batch t is a pure function of (seed, t).

    Each epoch is a fresh permutation drawn from a generator seeded by
    (seed, epoch); the last incomplete batch of an epoch is dropped.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, seed: int) -> None:
        if len(x) == 0:
            raise ConfigError("a data split is empty: lower --batch-size or change --valid-fraction")
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.per_epoch = len(x) // self.batch_size
        self.seed = seed
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(len(self.x), generator=generator).to(self.x.device)
            self._epoch = epoch
        idx = self._perm[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[idx], self.y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, task: str, batch_size: int = 1000) -> dict[str, float]:
    """Error rate (classification) and task loss on a split, in eval mode. One host read."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    wrong = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        total_loss += task_loss(out, yb, task).double() * len(xb)
        if task == "classification":
            pred = (out.squeeze(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
            wrong += (pred != yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    result = {"loss": float(total_loss) / n}
    if task == "classification":
        result["error"] = float(wrong) / n
    else:
        result["mse"] = result["loss"]
    return result


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, tuples as lists and numpy scalars as numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return strict_json(value.item())
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """JSON text that any JSON reader accepts (no NaN or Infinity)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (non-finite numbers as null), written atomically."""
    atomic_write(path, lambda p: p.write_text(dumps_strict(data, indent=2) + "\n"))


__all__ = ["TrainConfig", "BatchStream", "evaluate", "lr_at", "resolve_device",
           "seed_everything", "progress_bar", "coerce_option", "MAX_SEED", "atomic_write", "write_json",
           "strict_json", "dumps_strict", "LOSS_CHOICES", "LOSS_PARAMS", "LOSS_SCALES",
           "PRESETS"]
