"""The training loop behind ``lfl train``: batches, steps, evaluation, checkpoints, results.

A run is described by a frozen :class:`TrainConfig`. :func:`train` builds the data,
the model and a *stepper* (fixed loss, or an :class:`~toolkit.online.OnlineLossLearner`),
then steps. The hot loop reads nothing on the host: losses are accumulated on the
device and read every ``log_every`` steps. Batches are a pure function of
(seed, step), so a run resumed from a checkpoint sees the same batches and reaches
the same final numbers as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from losses import task_loss

from .rules import OPTIMIZERS, StepRule, make_rule

LOSS_CHOICES = ("ce", "mse", "adalfl", "ml3", "taylorglo")
LOSS_PARAMS = ("mlp", "taylor")
LOSS_SCALES = ("normalised", "free")

PRESETS: dict[str, dict[str, Any]] = {
    # This toolkit's defaults: the learned loss gives the gradient's direction, and its
    # size is the task loss's (--max-scale > 1 lets a bounded multiplier be meta-learned too);
    # online updates at Adam rate 1e-4 (--online-meta-lr), a tenth of the offline phase's.
    "default": {},
    # Algorithms 1-2 of the paper as published: the loss network's output is used as is,
    # so the offline phase is free to learn any gradient scale (see losses.scaled), Adam's
    # rate is 1e-3 online too, and no descent guard (toolkit.descent) corrects its steps.
    "paper": {"loss_scale": "free", "online_meta_lr": 1e-3, "descent_guard": False},
}
"""Named groups of option values: ``lfl train --preset paper``. Explicit options win."""


class ConfigError(ValueError):
    """A user-supplied option is invalid; the message names the fix."""


MAX_SEED = 2**31 - 1


def coerce_option(name: str, value: Any, declared: str) -> Any:
    """``value`` as the type an option declares (``"int"``, ``"float | None"``, ...); never truncates.

    Integers are accepted for floats; a float is never accepted for an integer, nor a bool
    for a number. Raises ConfigError naming the option.
    """
    base = declared.replace(" | None", "")
    if value is None and declared.endswith("| None"):
        return None
    flag = "--" + name.replace("_", "-")

    def bad(expected: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigError(f"{flag} must be {expected}; got {shown}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base == "int":
        if not is_int:
            raise bad("an integer")
        return value
    if base == "float":
        if not (is_int or isinstance(value, float)):
            raise bad("a number")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise bad("a list of integers")
        return tuple(value)
    if base == "dict":
        if not isinstance(value, dict):
            raise bad("a table of key = value")
        return dict(value)
    raise bad(declared)  # a field type this function does not know: fail loudly


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (all of it is written to results.json)."""

    dataset: str = "fashion-mnist"
    model: str = "lenet5"
    loss: str = "ce"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    target: str | None = None
    task: str | None = None
    valid_fraction: float = 0.1
    # The dataset's standard training augmentation (toolkit.augment): crops and flips for
    # CIFAR-10/100, crops for SVHN; a no-op for datasets without one.
    augment: bool = True
    eval_every: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    # learned losses
    loss_param: str = "mlp"
    init_steps: int = 2500
    meta_lr: float = 1e-3
    online_meta_lr: float | None = 1e-4
    meta_interval: int = 1
    meta_clip: float | None = None
    meta_gradient: str = "fast"
    meta_source: str = "valid"
    snapshot_every: int = 100
    loss_scale: str = "normalised"
    max_scale: float = 1.0
    descent_guard: bool = True
    sync_batchnorm: bool = False
    model_options: dict = field(default_factory=dict)
    # reuse of a learned loss, and the TaylorGLO search
    loss_from: str | None = None
    adapt: bool = False
    generations: int = 10
    population: int | None = None
    fitness_steps: int = 200
    search_jobs: int = 1
    invariant: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, coerce_option(f.name, getattr(self, f.name), str(f.type)))
        checks = [
            (0 <= self.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}], got {self.seed}"),
            (self.steps >= 0, f"--steps must be >= 0, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.optimizer in OPTIMIZERS,
             f"unknown --optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"),
            (self.optimizer == "sgd" or (self.momentum == 0 and not self.nesterov),
             f"--momentum and --nesterov belong to --optimizer sgd; {self.optimizer} uses betas (0.9, 0.999)"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (not self.nesterov or self.momentum > 0, "--nesterov needs --momentum > 0"),
            (self.gamma > 0, f"--gamma must be > 0, got {self.gamma}"),
            (all(m > 0 for m in self.milestones), "--milestones must be positive step numbers"),
            (self.loss in LOSS_CHOICES, f"unknown --loss {self.loss!r}: choose one of {', '.join(LOSS_CHOICES)}"),
            (self.loss_param in LOSS_PARAMS, f"unknown --loss-param {self.loss_param!r}: choose mlp or taylor"),
            (self.init_steps >= 0, f"--init-steps must be >= 0, got {self.init_steps}"),
            (self.meta_lr > 0, f"--meta-lr must be > 0, got {self.meta_lr}"),
            (self.online_meta_lr is None or self.online_meta_lr > 0,
             f"--online-meta-lr must be > 0, got {self.online_meta_lr}"),
            (self.meta_interval >= 1, f"--meta-interval must be >= 1, got {self.meta_interval}"),
            (self.loss_scale in LOSS_SCALES,
             f"unknown --loss-scale {self.loss_scale!r}: choose normalised or free"),
            (math.isfinite(self.max_scale) and self.max_scale >= 1, f"--max-scale must be >= 1, got {self.max_scale}"),
            (self.meta_source in ("valid", "train"), "--meta-source must be 'valid' or 'train'"),
            (self.meta_gradient in ("fast", "naive"), "--meta-gradient must be 'fast' or 'naive'"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"unknown --device {self.device!r}: use auto, cpu or cuda"),
            (0 <= self.valid_fraction < 1, "--valid-fraction must be in [0, 1)"),
            (self.log_every >= 1 and self.checkpoint_every >= 0 and self.eval_every >= 0,
             "--log-every must be >= 1; --checkpoint-every and --eval-every >= 0"),
            (not self.adapt or self.loss_from is not None,
             "--adapt needs --loss-from FILE (to learn a loss from scratch use --loss adalfl)"),
            (self.loss_from is None or self.loss in ("ce", "mse", "adalfl"),
             f"--loss-from replaces --loss {self.loss}: drop --loss, or add --adapt to keep learning online"),
            (self.generations >= 1 and self.fitness_steps >= 1 and self.search_jobs >= 1,
             "--generations, --fitness-steps and --jobs must be >= 1"),
            (self.population is None or self.population >= 2, "--population must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def online_lr(self) -> float:
        """Adam learning rate of the loss's online updates."""
        return self.meta_lr if self.online_meta_lr is None else self.online_meta_lr

    @property
    def learned(self) -> bool:
        """The loss has parameters worth recording (snapshots, loss.json)."""
        return self.loss in ("adalfl", "ml3", "taylorglo") or self.loss_from is not None

    @property
    def offline_phase(self) -> bool:
        """ML3-style offline initialisation before training (AdaLFL, ML3; not for a reused loss)."""
        return self.loss in ("adalfl", "ml3") and self.loss_from is None

    @property
    def online(self) -> bool:
        """The loss keeps adapting during training."""
        return self.loss == "adalfl" or self.adapt

    def rule(self) -> StepRule:
        """The base optimiser as a differentiable rule (:mod:`toolkit.rules`)."""
        return make_rule(self.optimizer, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                         weight_decay=self.weight_decay)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def lr_at(config: TrainConfig, step: int) -> float:
    """Multi-step schedule: lr · gamma^(number of milestones ≤ step)."""
    return config.lr * config.gamma ** sum(step >= m for m in config.milestones)


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available: use --device cpu")
    return device


def progress_bar(total: int, *, enabled: bool, desc: str, unit: str, initial: int = 0):
    """A tqdm bar on stderr, only when stderr is a terminal: redirected logs get no carriage-return floods."""
    import sys

    from tqdm import tqdm  # the plain bar: tqdm.auto warns in notebooks without ipywidgets

    on_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not (enabled and on_terminal), desc=desc, unit=unit,
                dynamic_ncols=True, mininterval=0.5)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
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


__all__ = ["TrainConfig", "ConfigError", "BatchStream", "evaluate", "lr_at", "resolve_device",
           "seed_everything", "progress_bar", "coerce_option", "MAX_SEED", "atomic_write", "write_json",
           "strict_json", "dumps_strict", "LOSS_CHOICES", "LOSS_PARAMS", "LOSS_SCALES",
           "PRESETS"]
