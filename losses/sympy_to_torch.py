"""SymPy expression → torch computation, through one table of functions.

``SYMPY_TO_TORCH`` maps SymPy classes to torch callables; extend it to support
more functions (``SYMPY_TO_TORCH[sympy.besselj] = my_besselj``). Expressions are
compiled into an ``ExpressionProgram``: one step per *distinct* subexpression,
so a network exported as a formula (a DAG with heavy sharing) is evaluated once
per hidden unit, not once per appearance. Numeric subexpressions without Floats
(``log(2)``, ``pi``, exponents) are folded to Python numbers; each distinct
Float value becomes one entry of the constants vector (learnable in
``SymbolicLoss``).

Two patterns are evaluated in a numerically stable form with the same value:
``log(1 + exp(u))`` as softplus(u) and ``(1 + exp(u))**-1`` as sigmoid(-u).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

from losses.symbols import Y_PRED, Y_TRUE, sympy_float

# Above this value of its argument softplus(u) is returned as u; the difference
# log1p(exp(-u)) < 4.3e-18 is below float64 resolution there.
SOFTPLUS_THRESHOLD = 40.0


class UnsupportedFunctionError(ValueError):
    """A SymPy function has no entry in ``SYMPY_TO_TORCH``."""


def _add(*args: Any) -> Any:
    return functools.reduce(operator.add, args)


def _mul(*args: Any) -> Any:
    return functools.reduce(operator.mul, args)


def _all(*args: Any) -> Any:
    """``And`` of any number of conditions (SymPy merges ``a & b & c`` into one ``And``)."""
    return functools.reduce(operator.and_, args)


def _any(*args: Any) -> Any:
    """``Or`` of any number of conditions."""
    return functools.reduce(operator.or_, args)


def _extreme(pair: Callable[[Tensor, Tensor], Tensor], clamp: str, pick: Callable, *args: Any) -> Tensor:
    tensors = [a for a in args if isinstance(a, Tensor)]
    numbers = [a for a in args if not isinstance(a, Tensor)]
    out = functools.reduce(pair, tensors)
    return torch.clamp(out, **{clamp: pick(numbers)}) if numbers else out


def _maximum(*args: Any) -> Tensor:
    return _extreme(torch.maximum, "min", max, *args)


def _minimum(*args: Any) -> Tensor:
    return _extreme(torch.minimum, "max", min, *args)


def _piecewise(*flat: Any) -> Any:
    """``Piecewise((e1, c1), (e2, c2), ...)`` given as ``e1, c1, e2, c2, ...``; NaN where no condition holds."""
    result: Any = float("nan")
    for value, condition in reversed(list(zip(flat[::2], flat[1::2]))):
        if condition is True:
            result = value
        elif condition is not False:
            result = torch.where(condition, value, result)
    return result


def softplus(u: Tensor) -> Tensor:
    """``log(1 + exp(u))``, stable for large |u|, with finite first and second derivatives."""
    return F.softplus(u, beta=1.0, threshold=SOFTPLUS_THRESHOLD)


def sigmoid_of_negative(u: Tensor) -> Tensor:
    """``1 / (1 + exp(u))``, stable for large |u|."""
    return torch.sigmoid(-u)


SYMPY_TO_TORCH: dict[type, Callable[..., Any]] = {
    sympy.Add: _add,
    sympy.Mul: _mul,
    sympy.Pow: operator.pow,
    sympy.exp: torch.exp,
    sympy.log: torch.log,
    sympy.Abs: torch.abs,
    sympy.sign: torch.sign,
    sympy.Max: _maximum,
    sympy.Min: _minimum,
    sympy.Piecewise: _piecewise,
    sympy.sin: torch.sin,
    sympy.cos: torch.cos,
    sympy.tan: torch.tan,
    sympy.asin: torch.asin,
    sympy.acos: torch.acos,
    sympy.atan: torch.atan,
    sympy.sinh: torch.sinh,
    sympy.cosh: torch.cosh,
    sympy.tanh: torch.tanh,
    sympy.asinh: torch.asinh,
    sympy.acosh: torch.acosh,
    sympy.atanh: torch.atanh,
    sympy.erf: torch.erf,
    sympy.erfc: torch.erfc,
    sympy.StrictLessThan: operator.lt,
    sympy.LessThan: operator.le,
    sympy.StrictGreaterThan: operator.gt,
    sympy.GreaterThan: operator.ge,
    sympy.And: _all,
    sympy.Or: _any,
    sympy.Not: operator.invert,
}
"""SymPy class → torch callable taking the evaluated arguments (tensors or numbers)."""


@dataclass(frozen=True)
class Literal:
    """A folded numeric constant (a Python int or float) used as an argument."""

    value: int | float


Argument = int | Literal  # An int refers to a slot: 0 y_pred, 1 y, then constants, then steps.


@dataclass
class ExpressionProgram:
    """A compiled expression: constants and a list of steps over numbered slots.

    Attributes:
        expression: The SymPy expression it was compiled from.
        constants: Float64 values of the distinct Floats, in first-use order.
        floats: For each constant, the Float atoms of ``expression`` carrying it.
        steps: ``(function, arguments)`` pairs; step k fills slot ``2 + len(constants) + k``.
        output: The argument holding the result.
    """

    expression: sympy.Expr
    constants: list[float] = field(default_factory=list)
    floats: list[list[sympy.Float]] = field(default_factory=list)
    steps: list[tuple[Callable[..., Any], tuple[Argument, ...]]] = field(default_factory=list)
    output: Argument = 0

    def evaluate(self, y_pred: Tensor, y_true: Tensor, constants: Tensor) -> Tensor:
        """Evaluate on tensors of one shape; ``constants`` is a 1-D tensor like ``self.constants``."""
        slots: list[Any] = [y_pred, y_true, *constants.unbind(0)]
        for function, arguments in self.steps:
            slots.append(function(*[a.value if isinstance(a, Literal) else slots[a] for a in arguments]))
        result = self.output.value if isinstance(self.output, Literal) else slots[self.output]
        if not isinstance(result, Tensor):
            return torch.full_like(y_pred, result)
        return result.expand(y_pred.shape) if result.shape != y_pred.shape else result

    def substituted(self, values: Sequence[float]) -> sympy.Expr:
        """The expression with constant k replaced by ``values[k]``, its structure unchanged.

        Nodes are rebuilt unevaluated: re-evaluating would distribute numbers
        over sums and re-run costly simplifications of ``exp`` and ``log``.
        """
        memo: dict[sympy.Basic, sympy.Basic] = {
            atom: sympy_float(v) for atoms, v in zip(self.floats, values) for atom in atoms
        }

        def rebuild(node: sympy.Basic) -> sympy.Basic:
            if node not in memo:
                args = [rebuild(a) for a in node.args]
                if all(new is old for new, old in zip(args, node.args)):
                    memo[node] = node
                else:
                    try:
                        memo[node] = node.func(*args, evaluate=False)
                    except TypeError:  # Classes without an evaluate flag, e.g. ExprCondPair.
                        memo[node] = node.func(*args)
            return memo[node]

        return rebuild(self.expression)


def _lookup(node: sympy.Basic) -> Callable[..., Any]:
    for cls in type(node).__mro__:
        if cls in SYMPY_TO_TORCH:
            return SYMPY_TO_TORCH[cls]
    name = getattr(node, "func", type(node)).__name__
    raise UnsupportedFunctionError(
        f"SymPy function '{name}' has no torch counterpart; add it to losses.symbolic.SYMPY_TO_TORCH"
    )


def _stable_pattern(node: sympy.Basic) -> tuple[Callable[..., Any], sympy.Basic] | None:
    """Recognise log(1 + exp(u)) and (1 + exp(u))**-1; return (function, u)."""
    if isinstance(node, sympy.log):
        inner = node.args[0]
    elif isinstance(node, sympy.Pow) and node.args[1] == -1:
        inner = node.args[0]
    else:
        return None
    if not (isinstance(inner, sympy.Add) and len(inner.args) == 2 and sympy.S.One in inner.args):
        return None
    other = inner.args[0] if inner.args[1] == 1 else inner.args[1]
    if not isinstance(other, sympy.exp):
        return None
    return (softplus if isinstance(node, sympy.log) else sigmoid_of_negative), other.args[0]


def compile_expression(expr: sympy.Basic | int | float) -> ExpressionProgram:
    """Compile a SymPy expression in ``Y_PRED`` and ``Y_TRUE`` into an ``ExpressionProgram``.

    A Python number becomes a SymPy number. Text is not taken here: read it with
    ``losses.parse_formula``, which never evaluates it (``sympy.sympify`` would run
    it as Python).

    Raises:
        TypeError: Neither a SymPy object nor a number.
        UnsupportedFunctionError: A function missing from ``SYMPY_TO_TORCH``.
        ValueError: Other free symbols, or a non-real constant.
    """
    expr = _as_expression(expr)
    program = ExpressionProgram(expression=expr)
    constant_index: dict[float, int] = {}
    # While compiling, constant k is 2 + k and step j is -(j + 1); renumbered at the end.
    memo: dict[sympy.Basic, Argument] = {}

    def visit(node: sympy.Basic) -> Argument:
        if node not in memo:
            memo[node] = _visit(node)
        return memo[node]

    def _visit(node: sympy.Basic) -> Argument:
        if isinstance(node, sympy.Symbol):
            if node.name in (Y_PRED.name, Y_TRUE.name):
                return 0 if node.name == Y_PRED.name else 1
            raise ValueError(f"free symbol '{node.name}': a loss formula may use only y_pred and y")
        if isinstance(node, sympy.Float):
            k = constant_index.setdefault(float(node), len(constant_index))
            if k == len(program.floats):
                program.floats.append([])
            program.floats[k].append(node)
            return 2 + k
        if node.is_Atom:
            return _fold(node)
        pattern = _stable_pattern(node)
        if pattern is not None:
            function, inner = pattern
            arguments: tuple[Argument, ...] = (visit(inner),)
        else:
            function = _lookup(node)
            children = node.args
            if isinstance(node, sympy.Piecewise):
                children = tuple(part for pair in node.args for part in pair.args)
            arguments = tuple(visit(child) for child in children)
        if all(isinstance(a, Literal) for a in arguments):
            return _fold(node)
        program.steps.append((function, arguments))
        return -len(program.steps)

    output = visit(expr)
    program.constants = list(constant_index)

    def slot(a: Argument) -> Argument:
        if isinstance(a, Literal) or a >= 0:
            return a
        return 2 + len(program.constants) + (-a - 1)

    program.steps = [(f, tuple(slot(a) for a in args)) for f, args in program.steps]
    program.output = slot(output)
    return program


def _as_expression(expr: sympy.Basic | int | float) -> sympy.Basic:
    if isinstance(expr, sympy.Basic):
        return expr
    if isinstance(expr, int) and not isinstance(expr, bool):
        return sympy.Integer(expr)
    if isinstance(expr, float):
        return sympy_float(expr)
    hint = " (read text with losses.parse_formula first)" if isinstance(expr, str) else ""
    raise TypeError(f"expected a SymPy expression or a number{hint}; got {type(expr).__name__}")


def _fold(node: sympy.Basic) -> Literal:
    if node.is_Integer and abs(int(node)) <= _INT64_MAX:  # Torch takes Python ints up to int64 only.
        return Literal(int(node))
    if isinstance(node, sympy.logic.boolalg.BooleanAtom):
        return Literal(bool(node))
    try:
        return Literal(float(node))
    except TypeError:
        raise ValueError(f"constant {_short(node)} is not a real number") from None
    except OverflowError:  # E.g. exp(exp(exp(exp(10)))): too large even to round to a float.
        raise ValueError(f"constant {_short(node)} is too large for float64") from None


_INT64_MAX = 2**63 - 1


def _short(node: sympy.Basic) -> str:
    """The node's text for a message, at most 60 characters."""
    text = str(node) if sympy.count_ops(node) < 30 else f"{type(node).__name__}(...)"
    return text if len(text) <= 60 else text[:57] + "..."
