"""Saving and loading losses as one JSON file (or a plain dict inside checkpoints).

The dict / file holds ``format_version``, ``kind`` (which class), ``config``
(its keyword arguments), ``dtype`` and ``parameters`` (the state dict as nested
lists of float64 numbers, exact for float32 and float64 values) and ``formula``
(``str(loss.to_sympy())``, for people; it is not read back).

A gradient-normalised loss is saved whole: ``kind`` ``"gradient_scaled"``, its config
holds the inner loss (``shape``: its kind and config) and ``max_scale``, its parameters
the inner loss's (``shape.*``) and ``scale_logit`` (the scale is
``max_scale ** tanh(scale_logit)``; a non-finite value is refused). Reading it back
gives the same normalisation around the same shape, so it trains as the run did.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from losses.errors import UserError
from losses.base import LearnedLoss
from losses.printing import formula_string
from losses.registry import LOSS_KINDS
from losses.scaled import GradientScaledLoss

FORMAT_VERSION = 1
_KEYS = ("format_version", "kind", "config", "dtype", "parameters")


class LossFileError(UserError, ValueError):
    """A saved loss (file or dict) is malformed or of an unsupported version."""


def loss_to_dict(loss: LearnedLoss, *, formula: bool = True) -> dict[str, Any]:
    """JSON-serialisable description of ``loss``; ``loss_from_dict`` rebuilds it exactly.

    Args:
        loss: Any ``LearnedLoss``.
        formula: Include ``formula`` (``str(loss.to_sympy())``). Printing takes
            3–4 s for a 40×40 ``MLPLoss``; pass False for frequent checkpoints.
    """
    if not isinstance(loss, LearnedLoss):
        raise TypeError(f"expected a losses.LearnedLoss; got {type(loss).__name__}")
    state = loss.state_dict()
    dtypes = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point() and t.numel()}
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": loss.kind,
        "config": loss.config(),
        "dtype": dtypes.pop() if len(dtypes) == 1 else None,
        "parameters": {name: t.detach().cpu().double().tolist() for name, t in state.items()},
    }
    if formula:
        data["formula"] = formula_string(loss.to_sympy())
    return data


def loss_from_dict(data: Mapping[str, Any]) -> LearnedLoss:
    """Rebuild a loss from ``loss_to_dict`` output: same class, config, dtype and values.

    Raises:
        LossFileError: Missing keys, wrong ``format_version``, unknown kind, a
            config the class rejects, or parameters of the wrong names or shapes.
    """
    if not isinstance(data, Mapping):
        raise LossFileError(f"expected a JSON object with keys {list(_KEYS)}; got {type(data).__name__}")
    missing = [key for key in _KEYS if key not in data]
    if missing:
        raise LossFileError(f"missing keys {missing}; write the loss with losses.save_loss / loss_to_dict")
    if data["format_version"] != FORMAT_VERSION:
        raise LossFileError(
            f"format_version {data['format_version']!r} is not supported (this version of losses reads "
            f"{FORMAT_VERSION}); re-save the loss with this version or upgrade the package"
        )
    cls = LOSS_KINDS.get(data["kind"]) if isinstance(data["kind"], str) else None
    if cls is None:
        raise LossFileError(f"unknown kind {data['kind']!r}; known kinds: {', '.join(LOSS_KINDS)}")
    try:
        loss = cls.from_config(data["config"])
    except (TypeError, ValueError) as error:
        raise LossFileError(f"invalid config for {cls.__name__}: {error}") from None
    if data["dtype"] is not None:
        dtype = getattr(torch, str(data["dtype"]), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise LossFileError(f"dtype {data['dtype']!r} is not a torch floating-point dtype")
        loss = loss.to(dtype)
    _load_state(loss, data["parameters"])
    if isinstance(loss, GradientScaledLoss) and not bool(torch.isfinite(loss.scale_logit.detach())):
        raise LossFileError(f"scale_logit {float(loss.scale_logit.detach())!r} is not finite: the scale of a "
                            "gradient_scaled loss is max_scale ** tanh(scale_logit), a finite positive number")
    return loss


def _load_state(loss: LearnedLoss, parameters: Any) -> None:
    if not isinstance(parameters, Mapping):
        raise LossFileError(f"parameters must be an object of name → nested lists; got {type(parameters).__name__}")
    state = loss.state_dict()
    if set(parameters) != set(state):
        raise LossFileError(
            f"parameters {sorted(parameters)} do not match {type(loss).__name__}'s {sorted(state)}; "
            "the config and parameters come from different losses"
        )
    new_state = {}
    for name, current in state.items():
        try:
            value = torch.tensor(parameters[name], dtype=torch.float64)
        except (TypeError, ValueError) as error:
            raise LossFileError(f"parameter {name!r} is not a nested list of numbers ({error})") from None
        if value.shape != current.shape:
            raise LossFileError(f"parameter {name!r} has shape {tuple(value.shape)}, expected {tuple(current.shape)}")
        new_state[name] = value.to(current.dtype)
    loss.load_state_dict(new_state)


def save_loss(loss: LearnedLoss, path: str | os.PathLike[str]) -> Path:
    """Write ``loss_to_dict(loss)`` as JSON to ``path``, atomically (a partial file never replaces a good one)."""
    path = Path(path)
    text = json.dumps(loss_to_dict(loss), indent=1)
    handle, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_loss(path: str | os.PathLike[str]) -> LearnedLoss:
    """Read a loss written by ``save_loss``.

    Raises:
        FileNotFoundError: No file at ``path``.
        LossFileError: Not JSON, or not a valid saved loss; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise LossFileError(f"{path}: JSON nested too deeply for a loss file; write it again with losses.save_loss") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LossFileError(
            f"{path}: not valid JSON ({error}); the file may be truncated or not a loss file. "
            "Write it again with losses.save_loss"
        ) from None
    try:
        return loss_from_dict(data)
    except LossFileError as error:
        raise LossFileError(f"{path}: {error}") from None
