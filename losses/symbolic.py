"""A loss module built from a SymPy formula, its numbers trainable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy
import torch
from torch import Tensor, nn

from losses.base import LearnedLoss
from losses.formula import FormulaError, parse_formula
from losses.graph import expression_to_graph, graph_to_expression
from losses.printing import formula_string
from losses.python_source import python_source
from losses.sympy_to_torch import SYMPY_TO_TORCH, UnsupportedFunctionError, compile_expression

__all__ = ["SYMPY_TO_TORCH", "FormulaError", "SymbolicLoss", "UnsupportedFunctionError", "parse_formula"]


class SymbolicLoss(LearnedLoss):
    """Per-element loss given by a SymPy expression in ``Y_PRED`` and ``Y_TRUE``.

    Functions are translated through ``SYMPY_TO_TORCH`` (extend it for more);
    a missing one raises ``UnsupportedFunctionError`` naming it. Each distinct
    Float value in the expression becomes one entry of ``constants`` (equal
    values share an entry); integers, rationals and symbolic numbers (``pi``,
    ``log(2)``) stay fixed, so integer exponents never become trainable.
    ``log(1 + exp(u))`` and ``1/(1 + exp(u))`` are evaluated in stable forms.
    Compiling shares repeated subexpressions: a 40×40 ``MLPLoss`` export
    compiles in well under a second.

    Args:
        expression: SymPy expression, or a formula string, parsed (never
            evaluated) by ``parse_formula``; bad text raises ``FormulaError``.
        task: ``"classification"`` (default) or ``"regression"``.
        trainable: Make ``constants`` an ``nn.Parameter``; otherwise a buffer.
        dtype: dtype of ``constants`` (default: torch's default dtype). Pass
            ``torch.float64`` to keep float64 values exactly; ``loss.double()``
            after construction only casts values already rounded to float32.
        reduction: What ``forward`` returns: ``"mean"`` (default) over batch and outputs;
            ``"sum"``; ``"none"``, the per-element (B, C) values.

    Attributes:
        expression: The expression as given (its Floats are the initial values).
        program: The compiled ``ExpressionProgram``; ``program.constants`` holds
            the initial values in float64.
        constants: 1-D tensor of the current values, in ``program.constants`` order.
    """

    kind = "symbolic"

    def __init__(
        self,
        expression: sympy.Expr | str,
        *,
        task: str = "classification",
        trainable: bool = True,
        dtype: torch.dtype | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(task=task, reduction=reduction)
        if isinstance(expression, str):
            expression = parse_formula(expression)
        if not isinstance(expression, sympy.Expr):
            raise TypeError(f"expression must be a SymPy expression or a string; got {type(expression).__name__}")
        self.expression = expression
        self.trainable = bool(trainable)
        self.program = compile_expression(expression)
        initial = torch.tensor(self.program.constants, dtype=dtype or torch.get_default_dtype())
        if self.trainable:
            self.constants = nn.Parameter(initial)
        else:
            self.register_buffer("constants", initial)

    def _elementwise(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return self.program.evaluate(y_pred, y_true, self.constants)

    def to_sympy(self) -> sympy.Expr:
        """The expression with the current values of ``constants`` as 17-digit Floats."""
        return self.program.substituted(self.constants.detach().double().cpu().tolist())

    def to_python(self) -> str:
        return python_source(self.program, self.constants.detach().double().cpu().tolist())

    def config(self) -> dict[str, Any]:
        """Task, trainable, reduction, and ``graph``: the initial expression as an exact node table."""
        return {"graph": expression_to_graph(self.expression), "task": self.task, "trainable": self.trainable,
                "reduction": self.reduction}

    def extra_repr(self) -> str:
        steps = len(self.program.steps)
        text = formula_string(self.expression) if steps <= 100 else f"<formula of {steps} steps>"
        text = text if len(text) <= 80 else text[:77] + "..."
        return (f"{text!r}, task={self.task!r}, trainable={self.trainable}, reduction={self.reduction!r}, "
                f"constants={len(self.program.constants)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SymbolicLoss:
        """Build from ``config()`` output, or from ``{"expression": text, ...}`` written by hand."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping; got {type(config).__name__}")
        options = dict(config)
        if ("graph" in options) == ("expression" in options):
            raise ValueError('a SymbolicLoss config needs exactly one of "graph" (exact) and "expression" (text)')
        if "graph" in options:
            options["expression"] = graph_to_expression(options.pop("graph"))
        return super().from_config(options)
