"""Python source text for a compiled formula: ``def loss(y_pred, y):`` with torch."""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Sequence

from losses.sympy_to_torch import (
    SOFTPLUS_THRESHOLD,
    Argument,
    ExpressionProgram,
    Literal,
    _add,
    _maximum,
    _minimum,
    _mul,
    _piecewise,
    sigmoid_of_negative,
    softplus,
)

_INFIX = {_add: " + ", _mul: " * ", operator.pow: " ** ", operator.lt: " < ", operator.le: " <= ",
          operator.gt: " > ", operator.ge: " >= ", operator.and_: " & ", operator.or_: " | "}
_SOURCE_NAMES = {softplus: "torch.nn.functional.softplus", sigmoid_of_negative: "torch.sigmoid",
                 operator.invert: "torch.logical_not", _maximum: "torch.maximum", _minimum: "torch.minimum"}


def python_source(program: ExpressionProgram, values: Sequence[float] | None = None) -> str:
    """Source text of ``def loss(y_pred, y):`` computing ``program`` with torch.

    Every step becomes one assignment; constants are written as float64 literals
    (``values`` if given, else ``program.constants``). Python numbers adapt to the
    tensors' dtype, so the function works in float32 and float64.
    """
    values = program.constants if values is None else [float(v) for v in values]
    names = ["y_pred", "y", *(_literal_source(v) for v in values)]
    modules = {"torch"}
    lines = []
    for k, (function, arguments) in enumerate(program.steps):
        args = [_literal_source(a.value) if isinstance(a, Literal) else names[a] for a in arguments]
        numbers = [a.value if isinstance(a, Literal) else values[a - 2] if 2 <= a < 2 + len(values) else None
                   for a in arguments]
        lines.append(f"    t{k} = {_call_source(function, args, numbers, modules)}")
        names.append(f"t{k}")
    out = _literal_source(program.output.value) if isinstance(program.output, Literal) else names[program.output]
    if not _depends_on_inputs(program, program.output):
        out = f"torch.broadcast_to(torch.as_tensor({out}, dtype=y_pred.dtype, device=y_pred.device), y_pred.shape)"
    header = [f"import {m}" for m in sorted(modules)]
    return "\n".join([*header, "", "", "def loss(y_pred, y):",
                      '    """Per-element loss; y_pred and y are tensors of one shape."""',
                      *lines, f"    return {out}", ""])


def _depends_on_inputs(program: ExpressionProgram, argument: Argument) -> bool:
    first_step = 2 + len(program.constants)
    depends = [False] * len(program.steps)
    for k, (_, arguments) in enumerate(program.steps):
        depends[k] = any(
            not isinstance(a, Literal) and (a < 2 or (a >= first_step and depends[a - first_step]))
            for a in arguments
        )
    if isinstance(argument, Literal):
        return False
    return argument < 2 or (argument >= first_step and depends[argument - first_step])


def _literal_source(value: float | int) -> str:
    text = repr(value)
    if text in ("inf", "-inf", "nan"):
        return f"float('{text}')"
    return f"({text})" if text.startswith("-") else text


def _call_source(function: Callable, args: list[str], numbers: list[float | None], modules: set[str]) -> str:
    """Source of one step; ``numbers[i]`` is the value of argument i when it is a number, else None."""
    if function in _INFIX:
        return "(" + _INFIX[function].join(args) + ")"
    if function is _piecewise:
        text = "float('nan')"
        for value, cond in reversed(list(zip(args[::2], args[1::2]))):
            text = value if cond == "True" else f"torch.where({cond}, {value}, {text})"
        return text
    # Torch functions take tensors: numbers become tensors like the inputs.
    args = [text if number is None else f"torch.as_tensor({text}, dtype=y_pred.dtype, device=y_pred.device)"
            for text, number in zip(args, numbers)]
    if function in (_maximum, _minimum):
        tensors = [text for text, number in zip(args, numbers) if number is None]
        bounds = [number for number in numbers if number is not None]
        text = functools.reduce(lambda x, y: f"{_SOURCE_NAMES[function]}({x}, {y})", tensors)
        if bounds:
            bound = max(bounds) if function is _maximum else min(bounds)
            text = f"torch.clamp({text}, {'min' if function is _maximum else 'max'}={_literal_source(bound)})"
        return text
    if function is softplus:
        return f"torch.nn.functional.softplus({args[0]}, beta=1.0, threshold={SOFTPLUS_THRESHOLD})"
    if function is sigmoid_of_negative:
        return f"torch.sigmoid(-{args[0]})"
    if function in _SOURCE_NAMES:
        return f"{_SOURCE_NAMES[function]}({', '.join(args)})"
    module, name = getattr(function, "__module__", None), getattr(function, "__name__", "")
    candidates = [m for m in ("torch", "torch.special", "torch.nn.functional", module) if m]
    for candidate in candidates:
        if getattr(importlib.import_module(candidate), name, None) is function:
            modules.add(candidate.split(".")[0] if candidate.startswith("torch") else candidate)
            return f"{candidate}.{name}({', '.join(args)})"
    raise ValueError(f"cannot write {function!r} as Python source; register a named module-level function")
