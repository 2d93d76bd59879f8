"""A user's own ``nn.Module`` in :func:`toolkit.runs.run.train` (``train(config, model=net)``).

The run trains the module in place instead of a zoo model. Its checkpoint records the model's class
and the shapes of its parameters and buffers (:func:`describe_model`, for every run), so ``--resume``
refuses, in one line, to continue with another model: ``lfl train --resume`` on a run that trained a
user model says to resume it from Python with the same class.
"""
from __future__ import annotations

import torch
from torch import nn

from toolkit.errors import ConfigError


def model_class(model: nn.Module) -> str:
    """``module.QualifiedName`` of the model's class."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_user_model(description: dict) -> bool:
    """Whether a described model came from outside the toolkit's zoo."""
    return not description["class"].startswith("toolkit.")


def describe_model(model: nn.Module) -> dict:
    """The model's class and the shape of each parameter and buffer (plain data, for a checkpoint)."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"class": model_class(model), "shapes": shapes}


def check_same_model(saved: dict | None, model: nn.Module, where: str) -> None:
    """Refuse to resume the checkpoint in ``where`` with a model of another class or shape (one line)."""
    if saved is None:  # written before checkpoints described their model
        return
    current = describe_model(model)
    if saved == current:
        return
    if is_user_model(saved) and not is_user_model(current):
        raise ConfigError(f"the run in {where} trained a user model ({saved['class']}): resume it from Python with "
                          f"train(config, model=<a {saved['class'].rsplit('.', 1)[-1]}>, out_dir=..., resume=True)")
    differing = sorted(k for k in {*saved["shapes"], *current["shapes"]}
                       if saved["shapes"].get(k) != current["shapes"].get(k))
    what = (f"class {current['class']}, not {saved['class']}" if saved["class"] != current["class"]
            else f"other shapes ({', '.join(differing[:3])}{', ...' if len(differing) > 3 else ''})")
    raise ConfigError(f"--resume with a different model than the checkpoint in {where}: {what}; give the same "
                      "model class and shapes, or another --out")


def check_outputs(model: nn.Module, x: torch.Tensor, num_outputs: int) -> None:
    """Refuse a model whose outputs on ``x`` are not (batch, num_outputs); its buffers are left as they were."""
    from torch.func import functional_call

    params = dict(model.named_parameters())
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    try:
        with torch.no_grad():
            outputs = functional_call(model, (params, buffers), (x,))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is the same user-facing problem
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"model={model_class(model)} fails on this dataset's inputs of shape "
                          f"{tuple(x.shape[1:])}: {reason}") from None
    if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (len(x), num_outputs):
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ConfigError(f"model={model_class(model)} gives outputs of shape {shape}; this dataset needs "
                          f"(batch, {num_outputs})")


def reinitialise(model: nn.Module) -> None:
    """A fresh draw of the model's parameters: ``reset_parameters()`` of every submodule that has one, as
    PyTorch's layers initialise themselves (the offline phase resets θ this way for a user model)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


__all__ = ["describe_model", "check_same_model", "check_outputs", "reinitialise", "model_class", "is_user_model"]
