"""How the lookahead calls the base model: its inputs, its outputs, and mixed precision.

:class:`ModelIO` is the one place every forward of the base model goes through (the training
forward, the validation pass, the JVP, the descent guard's check and the plain steps), so an
adapter written once holds on all of them:

* ``input_fn(x)`` turns the batch into the model's arguments: a dict is passed as keywords
  (``model(**kwargs)``), a tuple as positional arguments, anything else as the one argument.
* ``output_fn(out)`` picks the tensor the loss sees from what the model returns (a tuple, a dict,
  a ``ModelOutput``); without it a non-tensor output is refused with an error naming ``output_fn``.
* Under ``torch.autocast`` the model runs in the autocast dtype and everything else (the loss, its
  derivatives, the base update and the meta-gradient) in float32: outputs in float16/bfloat16
  are cast to float32 before the loss, as ``F.cross_entropy`` does under autocast.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ModelIO:
    """The adapters between a batch, the model and the loss (see the module docstring).

    Attributes:
        input_fn: batch → the model's arguments (None: the batch itself).
        output_fn: the model's return value → the outputs tensor (None: it must be a tensor).
        autocast: (device type, dtype) of the caller's autocast, captured by :func:`model_precision`.
    """

    input_fn: Callable[[Any], Any] | None = None
    output_fn: Callable[[Any], Tensor] | None = None
    autocast: tuple[str, torch.dtype] | None = None

    def call(self, model: nn.Module, x: Any) -> Tensor:
        """The outputs of the module as it is: ``model(*args, **kwargs)``."""
        return self._run(lambda args, kwargs: model(*args, **kwargs), x)

    def functional(self, model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                   x: Any) -> Tensor:
        """The outputs at ``params``/``buffers`` (``torch.func.functional_call``)."""
        return self._run(lambda args, kwargs: functional_call(model, (dict(params), dict(buffers)), args, kwargs), x)

    def _run(self, forward: Callable[[tuple, dict], Any], x: Any) -> Tensor:
        inputs = x if self.input_fn is None else self.input_fn(x)
        if isinstance(inputs, Mapping):
            args, kwargs = (), dict(inputs)
        else:
            args, kwargs = (inputs if isinstance(inputs, tuple) else (inputs,)), {}
        amp = (torch.autocast(self.autocast[0], dtype=self.autocast[1]) if self.autocast is not None
               else contextlib.nullcontext())
        with amp:
            out = forward(args, kwargs)
        if self.output_fn is not None:
            out = self.output_fn(out)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model returned a {type(out).__name__}, not a tensor: pass output_fn to pick the "
                            f"outputs the loss sees (e.g. output_fn=lambda out: out[0] or out['logits'])")
        return out.float() if out.dtype in LOW_PRECISION else out


PLAIN = ModelIO()
"""A model called with the batch, returning the outputs tensor."""


def _autocast_of(device_type: str) -> tuple[str, torch.dtype] | None:
    if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


@contextlib.contextmanager
def model_precision(io: ModelIO, device: torch.device) -> Iterator[ModelIO]:
    """Capture the caller's autocast for the model's forwards and switch it off for everything else.

    Yields the ``io`` to call the model with; inside the block autocast is off, so the loss, its
    derivatives and the updates run in the parameters' dtype (float32 under mixed precision).
    """
    captured = _autocast_of(device.type)
    if captured is None:
        yield io
        return
    with torch.autocast(device.type, enabled=False):
        yield replace(io, autocast=captured)




def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def with_model_precision(fn: Callable) -> Callable:
    """Run ``fn(model, ..., io=...)`` under :func:`model_precision` for ``model``'s device."""
    @functools.wraps(fn)
    def wrapped(model: nn.Module, *args, io: ModelIO = PLAIN, **kwargs):
        with model_precision(io, _device(model)) as captured:
            return fn(model, *args, io=captured, **kwargs)
    return wrapped


__all__ = ["ModelIO", "PLAIN", "model_precision", "with_model_precision", "LOW_PRECISION"]
