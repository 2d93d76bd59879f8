"""A run's checkpoint: what it holds, how it is written, read, migrated from older versions and validated.

A checkpoint (``checkpoint.pt``, :data:`toolkit.layout.CHECKPOINT`) is a ``torch.save`` of plain data and
tensors only (read with ``weights_only=True``): the config, the phase and step, the model's, loss's and
stepper's state dicts, the loss window's sums, the RNG state (:func:`toolkit.runtime.rng_state`), the wall
time so far, a description of the model and a fingerprint of the training data.

``--resume`` validates all of it against the run being resumed *before* anything is written or trained
(:func:`validate`, :func:`restore`): a damaged, crafted or foreign checkpoint is refused with a one-line
ConfigError naming the file and the fix, and every file of the run is left as it was.

Older versions are migrated one version at a time (:data:`MIGRATIONS`, one function per old version).
"""
from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from toolkit.data.augment import augmentation_for
from toolkit.layout import CHECKPOINT
from toolkit.errors import ConfigError
from toolkit.meta.rules import state_from_legacy_dict, state_to_dict
from toolkit.runs.common import TrainConfig, atomic_write
from toolkit.runs.reporting import LOSS_NAMES
from toolkit.runs.user_model import check_same_model, describe_model
from toolkit.runtime import rng_state, set_rng_state

CHECKPOINT_VERSION = 3
"""2: ``data_fingerprint`` added; the stepper's state always under ``rule_state``; the loss window as
``loss_sums``; every option in the config. 3: the optimiser states (``rule_state``, the meta optimiser's
``adam``) as tagged plain dicts of their NamedTuples' fields (:func:`toolkit.meta.rules.state_to_dict`);
the fixed-loss stepper holds ``optimizer.state_dict()`` only."""
KEYS = ("config", "phase", "step", "model", "loss", "stepper", "loss_sums", "rng", "wall_time_s")
"""What every checkpoint holds (after migration)."""
PHASES = ("init", "train")
"""The phases a checkpoint may be in (``init``: the offline phase or search runs again from its start)."""


def data_fingerprint(splits: list[tuple[Tensor, Tensor]]) -> str:
    """SHA-256 over the dtype, shape and bytes of each split's inputs and targets (on the CPU, computed once)."""
    digest = hashlib.sha256()
    for tensors in splits:
        for t in tensors:
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: Path, *, config: TrainConfig, phase: str, step: int, model: nn.Module, loss: nn.Module,
                    stepper, device: torch.device, loss_sums: Tensor | None, wall_time_s: float,
                    fingerprint: str | None) -> None:
    """Write the checkpoint atomically (a crash leaves the previous one)."""
    state = {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "phase": phase, "step": step,
             "model": model.state_dict(), "loss": loss.state_dict(),
             "stepper": stepper.state_dict() if stepper is not None else None,
             "loss_sums": loss_sums if loss_sums is not None else torch.zeros(len(LOSS_NAMES), dtype=torch.float64),
             "rng": rng_state(device), "wall_time_s": wall_time_s, "model_description": describe_model(model),
             "data_fingerprint": fingerprint}
    atomic_write(path, lambda p: torch.save(state, p))


def read_checkpoint(path: Path, current: dict | None = None) -> dict:
    """The checkpoint at ``path``, migrated to :data:`CHECKPOINT_VERSION`; ConfigError when it is not one.

    ``current``: the config being resumed (options added after a checkpoint was written that change
    nothing for its run take their current value); None when only the checkpoint's options are wanted.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except pickle.UnpicklingError:
        raise ConfigError(f"refusing checkpoint {path}: it holds objects other than tensors and plain data, and "
                          "loading those could run code; delete it to start afresh") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read checkpoint {path} ({reason}); delete it to start afresh") from None
    version = state.get("version") if isinstance(state, dict) else None
    if type(version) is not int or not 1 <= version <= CHECKPOINT_VERSION or not isinstance(state.get("config"), dict):
        raise ConfigError(f"{path} is not a checkpoint of this toolkit version; delete it to start afresh")
    try:
        for old in range(version, CHECKPOINT_VERSION):
            state = MIGRATIONS[old](state, current)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _damaged(path, f"its version-{version} contents do not migrate ({str(exc)[:200]})") from None
    return state


def _from_v1(state: dict, current: dict | None) -> dict:
    """Version 1 → 2: options added since take the values those runs trained with; the older spellings of
    the stepper's state (``momentum``) and of the loss window (``loss_sum``) take their new names."""
    state = dict(state)
    saved = dict(state["config"])
    for key, old_default in (("optimizer", "sgd"), ("sync_batchnorm", False)):
        saved.setdefault(key, old_default)
    if (saved.get("loss_from") is not None and saved.get("loss_scale") == "normalised" and current is not None
            and current.get("loss_scale") is None):
        saved["loss_scale"] = None  # written when --loss-from ignored --loss-scale: the loss as it said, as now
    if "augment" not in saved:  # written before --augment: those runs trained without augmentation
        no_augmentation = augmentation_for(saved.get("dataset", "")) is None
        saved["augment"] = (current or {}).get("augment", True) if no_augmentation else False
    state["config"] = saved
    stepper = state.get("stepper")
    if isinstance(stepper, dict) and "rule_state" not in stepper:
        stepper = dict(stepper)
        momentum = stepper.pop("momentum", None)
        stepper["rule_state"] = {"momentum": momentum} if momentum is not None else {}
        state["stepper"] = stepper
    if isinstance(stepper, dict) and isinstance(stepper.get("guard_counts"), Tensor) and stepper["guard_counts"].ndim == 1:
        counts = stepper["guard_counts"]  # written before the totals were kept: the window counts as both rows
        state["stepper"] = {**stepper, "guard_counts": torch.stack([counts, counts])}
    if state.get("loss_sums") is None and isinstance(state.get("loss_sum"), Tensor):
        sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
        learned = state["config"].get("loss") not in ("ce", "mse") or state["config"].get("loss_from") is not None
        sums[LOSS_NAMES.index("learned_loss" if learned else "task_loss")] = state["loss_sum"].double().reshape(())
        state["loss_sums"] = sums
    state.setdefault("data_fingerprint", None)  # unknown: not checked
    state["version"] = 2
    return state


def _from_v2(state: dict, current: dict | None) -> dict:
    """Version 2 → 3: the stepper's flat optimiser-state dicts (``rule_state``, and the online learner's
    ``adam``) become the tagged plain dicts of their NamedTuples (:func:`toolkit.meta.rules.state_to_dict`).

    A fixed-loss stepper's ``rule_state`` is kept (converted) for :meth:`FixedLossStepper.load_state_dict`,
    which writes a guarded run's state into its optimiser, the one state from version 3 on.
    """
    state = dict(state)
    stepper = state.get("stepper")
    if isinstance(stepper, dict):
        stepper = dict(stepper)
        for key in ("rule_state", "adam"):
            saved = stepper.get(key)
            if isinstance(saved, dict) and "kind" not in saved:
                stepper[key] = state_to_dict(state_from_legacy_dict(saved))
        state["stepper"] = stepper
    state["version"] = 3
    return state


MIGRATIONS: dict[int, Callable[[dict, dict | None], dict]] = {1: _from_v1, 2: _from_v2}
"""``MIGRATIONS[v]`` turns a version-``v`` checkpoint into version ``v + 1``."""


def checkpoint_options(out_dir: str | Path) -> dict | None:
    """The options of the run whose checkpoint is in ``out_dir`` (None when there is none), as ``--resume``
    alone reads them: every option but ``device``, which may differ between machines."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    saved = read_checkpoint(path)["config"]
    known = set(TrainConfig.__dataclass_fields__)
    return {k: v for k, v in saved.items() if k in known and k != "device"}


def validate(state: dict, path: Path, config: TrainConfig, *, model: nn.Module, fingerprint: str | None) -> None:
    """Refuse a checkpoint that cannot resume this run: other options, another model or data, a step or phase
    out of range. Checks only; nothing is loaded."""
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise _damaged(path, f"it lacks {', '.join(missing)}")
    current = config.to_dict()
    saved = state["config"]
    differing = sorted(k for k in current if k not in ("device", "steps") and saved.get(k) != current[k])
    if differing:
        raise ConfigError(f"--resume with different options than the checkpoint in {path.parent}: "
                          f"{', '.join(differing)}; use the same options or another --out")
    check_same_model(state.get("model_description"), model, str(path.parent))
    if state.get("phase") not in PHASES:
        raise _damaged(path, f"its phase {_shown(state.get('phase'))} is none of {', '.join(PHASES)}")
    step, saved_steps = state.get("step"), saved.get("steps")
    if type(step) is not int or type(saved_steps) is not int or not 0 <= step <= saved_steps:
        raise _damaged(path, f"its step {_shown(step)} is not a whole number in [0, {_shown(saved_steps)}]")
    if step > config.steps:
        raise ConfigError(f"--steps {config.steps} is fewer than the {step} steps the checkpoint in {path.parent} "
                          f"has trained; give --steps {step} or more, or another --out")
    wall = state.get("wall_time_s")
    if not isinstance(wall, (int, float)) or isinstance(wall, bool) or not math.isfinite(wall) or wall < 0:
        raise _damaged(path, f"its wall_time_s {_shown(wall)} is not a time")
    if state.get("data_fingerprint") is not None and fingerprint is not None and state["data_fingerprint"] != fingerprint:
        raise ConfigError(f"--resume on other data than the checkpoint in {path.parent} trained on (the dataset's "
                          "files or splits changed); restore the data, or start afresh with another --out")


def restore(state: dict, path: Path, *, model: nn.Module, loss: nn.Module, stepper, device: torch.device) -> Tensor:
    """Load a validated ``train``-phase checkpoint into the run's model, loss, stepper and RNG; returns the loss
    window's sums. Every tensor is checked against the freshly built state first (names, shapes, dtypes),
    so a damaged checkpoint is refused before any of it is loaded."""
    _same_layout(model.state_dict(), state.get("model"), path, "model")
    _same_layout(loss.state_dict(), state.get("loss"), path, "loss")
    if state.get("stepper") is not None:
        _same_layout(stepper.state_dict(), state["stepper"], path, "stepper")
    _same_layout(torch.zeros(len(LOSS_NAMES), dtype=torch.float64), state.get("loss_sums"), path, "loss_sums")
    _same_layout({"cpu": torch.get_rng_state()}, state.get("rng"), path, "rng")  # CUDA's: only where resumed on one
    try:
        model.load_state_dict(state["model"])
        loss.load_state_dict(state["loss"])
        if state["stepper"] is not None:
            stepper.load_state_dict(state["stepper"])
            _check_optimizer_state(getattr(stepper, "optimizer", None), path)
        set_rng_state(state["rng"], device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _damaged(path, f"it does not load ({reason})") from None
    return state["loss_sums"]


def _same_layout(fresh: Any, saved: Any, path: Path, where: str) -> None:
    """``saved`` has every key ``fresh`` has, each tensor of the same shape and dtype, each number of the same
    kind (lazily filled containers, empty when fresh, are not compared)."""
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor) or saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            got = f"{saved.dtype} {tuple(saved.shape)}" if isinstance(saved, Tensor) else type(saved).__name__
            raise _damaged(path, f"{where} is {got} where this run has {fresh.dtype} {tuple(fresh.shape)}")
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise _damaged(path, f"{where} is {type(saved).__name__}, not a dictionary")
        for key, value in fresh.items():
            if key not in saved:
                raise _damaged(path, f"{where} lacks {key!r}")
            _same_layout(value, saved[key], path, f"{where}.{key}")
    elif isinstance(fresh, (list, tuple)) and fresh:
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            raise _damaged(path, f"{where} does not hold {len(fresh)} entries")
        for i, (a, b) in enumerate(zip(fresh, saved)):
            _same_layout(a, b, path, f"{where}[{i}]")
    elif isinstance(fresh, (bool, int, float)) and type(saved) is not type(fresh):
        raise _damaged(path, f"{where} is {_shown(saved)}, not a {type(fresh).__name__}")


def _check_optimizer_state(optimizer: torch.optim.Optimizer | None, path: Path) -> None:
    """torch.optim's per-parameter buffers have their parameter's shape (it checks only the group sizes)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor) and value.ndim and (value.shape != p.shape or value.dtype != p.dtype):
                    raise _damaged(path, f"the optimiser's {name} is {value.dtype} {tuple(value.shape)} for a "
                                         f"parameter of {p.dtype} {tuple(p.shape)}")


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, Tensor) else f"a tensor {tuple(value.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def _damaged(path: Path, what: str) -> ConfigError:
    return ConfigError(f"cannot resume from checkpoint {path}: {what}; delete it to start afresh, or use "
                       "another --out")


__all__ = ["CHECKPOINT_VERSION", "PHASES", "MIGRATIONS", "data_fingerprint", "save_checkpoint", "read_checkpoint",
           "checkpoint_options", "validate", "restore"]
