"""The loss a run starts from: the one ``--loss`` names (:func:`make_loss`), or one ``--loss-from`` reuses
(a loss.json, a run directory, a formula file or a formula string; :func:`reused_loss`) with the
normalisation ``--loss-scale`` asks for (:func:`scaled_as_asked`)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import losses
from losses.derivatives import value_and_gradient

from toolkit.layout import LOSS
from toolkit.meta.online import has_trainable_parameters
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig


FORMULA_FILE_LIMIT = 1_000_000
"""Bytes read from a formula file at most (a formula, not a data set)."""


def reused_loss(source: str, task: str) -> nn.Module:
    """A loss to reuse: a loss.json, a run directory, a file holding a formula, or a formula string.

    Formulas are per-element losses in ``y_pred`` and ``y`` (e.g. ``"-y*log(y_pred)"``), read
    by ``losses.parse_formula``, which parses a whitelist grammar and never evaluates text;
    their numeric constants become trainable parameters of a ``losses.SymbolicLoss``. Text
    that is no formula but looks like a path is reported as a missing file. The loss comes
    back as the source says it trained: a saved ``GradientScaledLoss`` whole, and a formula
    under the header line ``lfl export`` writes for one (:mod:`losses.scale_header`) inside
    that normalisation; ``#`` lines are comments.
    """
    from losses.scale_header import split_header
    from losses.symbolic import parse_formula

    path = Path(source)
    if _is(path, "dir"):
        if not _is(path / LOSS, "file"):
            raise ConfigError(f"--loss-from {source}: the directory holds no loss.json (give a run directory)")
        path = path / LOSS
    if path.suffix == ".json":
        if not _is(path, "file"):
            raise ConfigError(f"--loss-from {source}: no such file")
        loss = losses.load_loss(path)
    else:
        if _is(path, "file"):
            with path.open("rb") as f:
                text = f.read(FORMULA_FILE_LIMIT + 1).decode("utf-8", errors="replace")
            if len(text) > FORMULA_FILE_LIMIT:
                raise ConfigError(f"--loss-from {source}: more than {FORMULA_FILE_LIMIT} bytes; a formula file holds "
                                  "one formula in y_pred and y (lfl export --format sympy)")
            where = f"--loss-from {source}"
        else:
            text, where = source, "--loss-from"
        try:
            text, normalisation = split_header(text)
        except losses.LossFileError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            expression = parse_formula(text, max_length=FORMULA_FILE_LIMIT)
        except (ValueError, TypeError) as exc:
            if not _is(path, "file") and _looks_like_path(source):
                raise ConfigError(f"--loss-from {source}: no such file") from None
            raise ConfigError(f"{where}: {exc}") from None
        try:
            loss = losses.SymbolicLoss(expression, task=task, dtype=torch.float64)  # exact; the run casts it
        except (ValueError, TypeError) as exc:  # e.g. a function the SymPy-to-torch table lacks
            raise ConfigError(f"{where}: {exc}") from None
        if normalisation is not None:
            loss = normalisation.wrap(loss)
    inner = loss.shape if isinstance(loss, losses.GradientScaledLoss) else loss
    if isinstance(inner, losses.SymbolicLoss) and losses.Y_PRED not in inner.expression.free_symbols:
        raise ConfigError(f"--loss-from {_clipped(source)}: the loss does not depend on y_pred, so its gradient is "
                          "zero and it cannot train a model")
    if loss.task != task:
        raise ConfigError(f"--loss-from {source}: a {loss.task} loss cannot train a {task} dataset")
    if loss.reduction == "none":
        raise ConfigError(f"--loss-from {source}: the loss has reduction 'none' (per-element values) but training "
                          'needs a scalar; set "reduction": "mean" in its config')
    return loss


def scaled_as_asked(loss: nn.Module, config: TrainConfig) -> nn.Module:
    """A reused loss with the normalisation ``--loss-scale`` asks for; options it would ignore are refused.

    Unset (None): as the source says. ``normalised``: a loss saved normalised stays so, any
    other is wrapped in ``GradientScaledLoss(max_scale=--max-scale)`` (scale 1: cross-entropy's
    gradient norm). ``free``: a normalised loss is unwrapped to its shape, trained raw.
    ``--max-scale`` bounds only a normalisation made here.
    """
    source = f"--loss-from {config.loss_from}"
    wrapped = isinstance(loss, losses.GradientScaledLoss)
    if config.loss_scale == "normalised" and not wrapped:
        try:
            loss = losses.GradientScaledLoss(loss, max_scale=config.max_scale)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source} with --loss-scale normalised: {exc}") from None
        if config.adapt and config.max_scale == 1 and not has_trainable_parameters(loss.shape):
            raise ConfigError(f"the loss to adapt has no trainable parameters ({type(loss.shape).__name__}; "
                              "--max-scale 1 fixes its scale): give a formula with numeric constants, or drop --adapt")
        return loss
    if config.max_scale != 1:
        if wrapped and config.loss_scale != "free":
            held = f"carries its own normalisation (max_scale {loss.max_scale:g}); drop --max-scale"
        elif config.loss_scale == "free":
            held = "is trained raw (--loss-scale free); drop --max-scale"
        else:
            held = "is not normalised; drop --max-scale, or add --loss-scale normalised to normalise it"
        raise ConfigError(f"--max-scale {config.max_scale:g} would be ignored: {source} {held}")
    return loss.shape if wrapped and config.loss_scale == "free" else loss


def _is(path: Path, kind: str) -> bool:
    """``path.is_file()`` / ``is_dir()``, False for text no file system takes as a name (e.g. a long formula)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


def _clipped(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_like_path(text: str) -> bool:
    """Text a user meant as a file: a path separator or a file suffix, no formula operator but '/',
    and some word that no formula may use (``y_pred/2`` is a formula, ``runs/x/seed-0`` a path)."""
    import re

    from losses.formula import formula_functions

    name = text.strip()
    if any(c in name for c in "*+()<>,") or " " in name:
        return False
    known = {"y_pred", "y", "pi", "E", *formula_functions()}
    if all(word in known for word in re.findall(r"[A-Za-z_]\w*", name)):
        return False
    return "/" in name or "\\" in name or Path(name).suffix.lower() in (
        ".json", ".txt", ".sympy", ".formula", ".tex", ".py", ".toml", ".yaml")


def make_loss(config: TrainConfig, task: str, num_outputs: int = 2) -> nn.Module:
    """The loss module a config asks for, before any learning.

    ``--loss ce`` is PyTorch's cross-entropy (binary with logits for one output), the same
    definition as the meta-objective and evaluation (``losses.task_loss``).
    """
    if config.loss_from is not None:
        return scaled_as_asked(reused_loss(config.loss_from, task), config)
    if config.loss == "ce":
        if task != "classification":
            raise ConfigError("--loss ce needs a classification dataset: use --loss mse for regression")
        return losses.task_loss_module(task, num_outputs)
    if config.loss == "mse":
        return losses.SquaredErrorLoss(task=task)
    if config.loss in ("gce", "focal"):  # fixed robust losses, trained as --loss ce is
        if task != "classification" or num_outputs < 2:
            raise ConfigError(f"--loss {config.loss} needs a classification dataset with 2 or more outputs: "
                              "use --loss mse for regression")
        return losses.build_loss(config.loss)
    if config.loss == "taylorglo":
        return losses.TaylorLoss.taylorglo(task=task)
    shape = losses.TaylorLoss.taylorglo(task=task) if config.loss_param == "taylor" else losses.MLPLoss(task=task)
    if config.loss_scale == "normalised":
        return losses.GradientScaledLoss(shape, max_scale=config.max_scale)
    return shape


def check_finite_at_start(loss: nn.Module, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *,
                          where: str) -> None:
    """Refuse a loss whose value or output gradient is not finite on the first training batch.

    Such a loss (a NaN or infinite parameter, ``y_pred*1e308*1e308``) cannot give one useful step: unguarded
    it would diverge at once, and with the descent guard every step would silently be the task loss's, so
    the run would look finished with cross-entropy's numbers. The model runs in eval mode without a graph
    and the global random state is restored, so the run itself is not changed by the check.
    """
    from toolkit.runtime import rng_state, set_rng_state

    x, y = batch
    device = x.device
    state, training = rng_state(device), model.training
    try:
        model.eval()
        with torch.no_grad():
            outputs = model(x)
        value, gradient = value_and_gradient(loss, outputs, y)  # the pair the training step itself derives
    finally:
        model.train(training)
        set_rng_state(state, device)
    finite = bool(torch.isfinite(value).all()) and bool(torch.isfinite(gradient).all())
    if not finite:
        what = "value" if not bool(torch.isfinite(value).all()) else "gradient"
        raise ConfigError(f"{where}: the loss's {what} is not finite on the first training batch (a NaN or "
                          "infinite constant, or a formula that overflows): it cannot train a model; check the "
                          "loss (lfl export) or give another")


__all__ = ["make_loss", "reused_loss", "scaled_as_asked", "check_finite_at_start", "FORMULA_FILE_LIMIT"]
