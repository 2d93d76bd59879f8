"""Loss formulas read from text: parsed with Python's ``ast``, never evaluated.

``sympy.parse_expr`` and ``sympy.sympify`` call ``eval``: a "formula" such as
``__import__('os').system(...)`` runs. Formulas reach us from command lines,
config files and loss files, so ``parse_formula`` parses the text into a syntax
tree and builds the SymPy expression itself, node by node, from a whitelist:

- numbers (int, float), ``y_pred``, ``y``, ``pi`` and ``E``;
- ``+ - * / **``, unary ``+ -``, one comparison ``< <= > >=``, and ``& | ~``
  on conditions (SymPy prints ``And``/``Or``/``Not`` that way);
- calls, by name and with positional arguments, of the functions of
  ``SYMPY_TO_TORCH`` (``exp``, ``log``, ``Abs``, ``Max``, ``Piecewise``, ...)
  plus ``sqrt`` and ``abs``; tuples only as the pairs of ``Piecewise``.

Anything else is a ``FormulaError`` whose one-line message names the construct.
SymPy computes numbers exactly, so powers whose value leaves float64's range
(``9**9**9**9``) are refused before SymPy is asked to compute them. Sums and
products are built in one SymPy call each, ``Max``/``Min`` take at most
``MAX_EXTREMUM_ARGUMENTS`` and are built without SymPy's pairwise comparisons,
so the time to parse grows about linearly with the text (SymPy itself needs a
few milliseconds per function call).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import mpmath
import sympy
from sympy.core.function import Application
from sympy.core.parameters import distribute
from sympy.core.sorting import default_sort_key
from sympy.logic.boolalg import Boolean, BooleanFunction

from losses.errors import UserError
from losses.symbols import Y_PRED, Y_TRUE
from losses.sympy_to_torch import SYMPY_TO_TORCH

__all__ = ["FormulaError", "formula_functions", "parse_formula"]

MAX_DEPTH = 200
"""Deepest nesting of calls and operators; a chain ``a + b - c`` counts once (parentheses: 200, by Python)."""
MAX_NUMBER_DIGITS = 100
"""Most digits of a number literal: exports print 17, SymPy's exact arithmetic slows on more."""
MAX_EXTREMUM_ARGUMENTS = 16
"""Most arguments of one Max or Min, nested ones flattened: SymPy compares every pair, slowly."""
FLOAT64_DECADES = math.log10(1.7976931348623157e308)
"""Decimal exponent of the largest float64: powers beyond it (or below its inverse) are refused."""
_FLOAT64_BITS = 1024  # Integers of more bits (numerators, denominators) are beyond float64's range.
_QUOTED = 60  # Most characters of the user's text that a message repeats.

NAMES: dict[str, sympy.Basic] = {Y_PRED.name: Y_PRED, Y_TRUE.name: Y_TRUE, "pi": sympy.pi, "E": sympy.E}


def _square_root(x: sympy.Expr) -> sympy.Expr:
    """``x**(1/2)``; unlike ``sympy.sqrt`` it takes no second (``evaluate``) argument."""
    return sympy.sqrt(x)


ALIASES: dict[str, Callable[..., sympy.Basic]] = {"sqrt": _square_root, "abs": sympy.Abs}
_LOGIC = {"and": sympy.And, "or": sympy.Or}
_COMPARISONS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_CHAINS = {ast.Add: "sum", ast.Sub: "sum", ast.Mult: "product", ast.Div: "product",
           ast.BitAnd: "and", ast.BitOr: "or"}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.BitAnd: "&",
            ast.BitOr: "|", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<",
            ast.RShift: ">>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
_REFUSED = {
    ast.Attribute: "attribute access (a.b)", ast.Subscript: "indexing (a[i])", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.JoinedStr: "f-strings", ast.FormattedValue: "f-strings",
    ast.NamedExpr: "assignment (:=)", ast.Starred: "starred arguments (*args)", ast.List: "lists",
    ast.Set: "sets", ast.Dict: "dicts", ast.Slice: "slices", ast.Await: "await", ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Tuple: "tuples (only Piecewise takes them, as (value, condition) pairs)",
    ast.IfExp: "conditional expressions (a if c else b); write Piecewise((a, c), (b, True))",
    ast.BoolOp: "and / or; combine conditions with & and |",
}


class FormulaError(UserError, ValueError):
    """A formula text that is not a loss formula; the one-line message says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def parse_formula(text: str, *, max_length: int = 100_000) -> sympy.Expr:
    """Parse a per-element loss formula in ``y_pred`` and ``y``, e.g. ``str(loss.to_sympy())``.

    Safe for untrusted text: no Python is evaluated (see the module docstring
    for the grammar). The result is the tree ``sympy.parse_expr`` builds from
    such text with distribution off: floats keep every digit written, and
    products of a number and a sum stay as written, so an unexpanded export
    keeps its shape. Function calls evaluate with distribution on, so that
    ``sin(-y - 1)``, on which SymPy otherwise recurses without end, parses.

    Args:
        text: The formula.
        max_length: Longest text accepted, in characters.

    Raises:
        TypeError: ``text`` is not a string.
        FormulaError: Anything outside the grammar, nesting deeper than
            ``MAX_DEPTH``, numbers too large for float64, or a formula that is
            undefined or infinite (``y_pred/0``, ``log(0)``).
    """
    if not isinstance(text, str):
        raise TypeError(f"formula must be a string; got {type(text).__name__}")
    if len(text) > max_length:
        raise FormulaError(f"the formula has {len(text):,} characters, more than the limit of {max_length:,}")
    source = text.strip().replace("\r\n", "\n").replace("\r", "\n")
    tree = _syntax_tree(source)
    try:
        with distribute(False):
            expr = _Builder(source).build(tree.body)
    except (RecursionError, MemoryError):
        raise FormulaError(f"the formula is nested too deeply; at most {MAX_DEPTH} levels are allowed") from None
    return _checked(expr)


def formula_functions() -> dict[str, Callable[..., sympy.Basic]]:
    """Function names a formula may call: the functions of ``SYMPY_TO_TORCH`` (as extended) and the aliases."""
    functions: dict[str, Callable[..., sympy.Basic]] = {
        cls.__name__: cls
        for cls in SYMPY_TO_TORCH
        if isinstance(cls, type) and issubclass(cls, Application) and not issubclass(cls, BooleanFunction)
    }
    return {**functions, **ALIASES}


def _clip(text: object) -> str:
    """``text`` for a message: one line, at most ``_QUOTED`` characters of it."""
    text = " ".join(str(text).split())
    return text if len(text) <= _QUOTED else text[: _QUOTED - 3] + "..."


def _quote(text: object) -> str:
    return repr(_clip(text))


def _syntax_tree(source: str) -> ast.Expression:
    if not source:
        raise FormulaError("the formula is empty; write one in y_pred and y, e.g. (y_pred - y)**2")
    try:
        return ast.parse(source, mode="eval")
    except SyntaxError as error:
        where = f" (column {error.offset})" if error.offset else ""
        where = f" (line {error.lineno}, column {error.offset})" if (error.lineno or 1) > 1 and where else where
        raise FormulaError(f"not a valid formula: {_clip(error.msg)}{where}") from None
    except (RecursionError, MemoryError):
        raise FormulaError(
            f"the formula is nested too deeply or chains too many terms to parse; at most {MAX_DEPTH} levels"
        ) from None
    except ValueError as error:  # E.g. a null byte.
        raise FormulaError(f"not a valid formula: {_clip(error)}") from None


def _checked(value: sympy.Basic) -> sympy.Expr:
    """The parsed value, if it is a finite real expression in ``y_pred`` and ``y``."""
    if not isinstance(value, sympy.Expr):
        raise FormulaError(
            "the formula is a condition, not a number; give it values with Piecewise((1, y_pred > 0.5), (0, True))"
        )
    if not value.free_symbols <= {Y_PRED, Y_TRUE}:
        raise FormulaError("a formula may use only the symbols y_pred and y")
    if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise FormulaError("the formula is undefined or infinite (e.g. a division by zero or log(0))")
    if value.has(sympy.I):
        raise FormulaError("the formula has an imaginary number (e.g. sqrt(-1) or log(-1)); a loss must be real")
    if any(max(number.p.bit_length(), number.q.bit_length()) > _FLOAT64_BITS for number in value.atoms(sympy.Rational)):
        raise FormulaError("a number in the formula (after multiplying out numbers) is beyond float64's range "
                           "(about 1e±308); use smaller numbers")
    return value


class _Builder:
    """Builds the SymPy value of each whitelisted syntax node; refuses every other node."""

    def __init__(self, source: str) -> None:
        self.lines = [line.encode("utf-8") for line in source.split("\n")]  # As ast numbers lines and columns.
        self.functions = formula_functions()
        self.depth = 0
        self.sizes: dict[sympy.Basic, float] = {}  # Node counts, for ordering the arguments of Max and Min.

    def build(self, node: ast.AST) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise FormulaError(f"the formula is nested too deeply; at most {MAX_DEPTH} levels are allowed")
            handler = _HANDLERS.get(type(node))
            if handler is None:
                raise FormulaError(f"not allowed in a formula: {_describe(node)}")
            return handler(self, node)
        finally:
            self.depth -= 1

    def literal_text(self, node: ast.expr) -> str:
        """The literal's source text (what ``ast.get_source_segment`` gives, without re-splitting the text)."""
        line = self.lines[node.lineno - 1]
        return line[node.col_offset : node.end_col_offset].decode("utf-8")

    def constant(self, node: ast.Constant) -> sympy.Basic:
        value = node.value
        if isinstance(value, bool):
            return sympy.true if value else sympy.false
        if isinstance(value, int):
            if abs(value) >= 10**MAX_NUMBER_DIGITS:
                raise FormulaError(f"an integer has more than {MAX_NUMBER_DIGITS} digits; write it as a float")
            return sympy.Integer(value)
        if isinstance(value, float):
            return _float(self.literal_text(node), value)
        kinds = {str: "strings", bytes: "bytes", complex: "imaginary numbers"}
        raise FormulaError(f"not allowed in a formula: {kinds.get(type(value), repr(value)[:20])}")

    def name(self, node: ast.Name) -> sympy.Basic:
        if node.id in NAMES:
            return NAMES[node.id]
        if node.id in self.functions:
            raise FormulaError(f"{node.id} is a function; call it, e.g. {node.id}(y_pred)")
        raise FormulaError(
            f"unknown name {_quote(node.id)}: a formula may use y_pred, y, numbers, pi, E and the functions "
            f"{', '.join(self.functions)}"
        )

    def binary(self, node: ast.BinOp) -> sympy.Basic:
        operators, operands = _chain(node)
        _check_operator(operators[0])
        values = [self.build(operand) for operand in operands]
        group = _CHAINS.get(operators[0])
        if group == "sum":
            return _sum(operators, values)
        if group == "product":
            return _product(operators, values)
        if group in _LOGIC:
            symbol = _SYMBOLS[operators[0]]
            return _call(symbol, _LOGIC[group], *[_condition(value, symbol) for value in values])
        left, right = _number(values[0], "**"), _number(values[1], "**")
        _check_power(left, right)
        return _call("**", operator.pow, left, right)

    def unary(self, node: ast.UnaryOp) -> sympy.Basic:
        if isinstance(node.op, ast.Not):
            raise FormulaError("not allowed in a formula: not; negate a condition with ~, e.g. ~(y_pred > 0.5)")
        operand = self.build(node.operand)
        if isinstance(node.op, ast.Invert):
            return _call("~", operator.invert, _condition(operand, "~"))
        symbol = "-" if isinstance(node.op, ast.USub) else "+"
        return _call(symbol, operator.neg if symbol == "-" else operator.pos, _number(operand, symbol))

    def compare(self, node: ast.Compare) -> sympy.Basic:
        if len(node.ops) > 1:
            raise FormulaError("chained comparisons are not allowed; write (1 < y_pred) & (y_pred < 2)")
        op = type(node.ops[0])
        if op not in _COMPARISONS:
            raise FormulaError(f"the comparison {_SYMBOLS.get(op, op.__name__)} is not allowed; use < <= > >=")
        symbol = _SYMBOLS[op]
        left, right = _number(self.build(node.left), symbol), _number(self.build(node.comparators[0]), symbol)
        return _call(symbol, _COMPARISONS[op], left, right)

    def call(self, node: ast.Call) -> sympy.Basic:
        if not isinstance(node.func, ast.Name):
            what = "the result of another call" if isinstance(node.func, ast.Call) else _describe(node.func)
            raise FormulaError(f"only functions called by name are allowed, e.g. exp(y_pred); not {what}")
        name = node.func.id
        if name not in self.functions:
            raise FormulaError(f"unknown function {_quote(name)}; known functions: {', '.join(self.functions)}")
        if node.keywords:
            raise FormulaError(f"keyword arguments are not allowed; pass the arguments of {name} by position")
        function = self.functions[name]
        if function is sympy.Piecewise:
            arguments = [self.piece(argument) for argument in node.args]
        else:
            arguments = [self.build(argument) for argument in node.args]
        if function is sympy.exp and arguments:
            _check_exponential(arguments[0])
        if function in (sympy.Max, sympy.Min):
            _check_extremum(name, function, arguments)
            return _call(f"{name}(...)", _extremum, function, self.sizes, *arguments)
        # Functions evaluate with distribution on: with it off, SymPy negates -(y + 1) into an
        # unevaluated product and sin(-y - 1), tanh, erf, Abs, ... recurse without end.
        with distribute(True):
            return _call(f"{name}(...)", function, *arguments)

    def piece(self, node: ast.expr) -> tuple[sympy.Basic, sympy.Basic]:
        if not (isinstance(node, ast.Tuple) and len(node.elts) == 2):
            raise FormulaError("Piecewise takes (value, condition) pairs, e.g. Piecewise((y, y_pred > 0.5), (0, True))")
        return self.build(node.elts[0]), self.build(node.elts[1])


_HANDLERS: dict[type, Callable[[_Builder, Any], sympy.Basic]] = {
    ast.Constant: _Builder.constant, ast.Name: _Builder.name, ast.BinOp: _Builder.binary,
    ast.UnaryOp: _Builder.unary, ast.Compare: _Builder.compare, ast.Call: _Builder.call,
}


def _describe(node: ast.AST) -> str:
    return _REFUSED.get(type(node), f"{type(node).__name__} expressions")


def _chain(node: ast.BinOp) -> tuple[list[type], list[ast.expr]]:
    """``a - b + c`` as operators ``[Sub, Add]`` and operands ``[a, b, c]``: a chain is one nesting level."""
    group = _CHAINS.get(type(node.op))
    operators: list[type] = []
    operands: list[ast.expr] = []
    current: ast.expr = node
    while isinstance(current, ast.BinOp) and (current is node or (group and _CHAINS.get(type(current.op)) == group)):
        operators.append(type(current.op))
        operands.append(current.right)
        current = current.left
    operands.append(current)
    return operators[::-1], operands[::-1]


def _check_operator(op: type) -> None:
    if op is ast.BitXor:
        raise FormulaError("use ** for powers: ^ is not allowed in a formula")
    if op not in _CHAINS and op is not ast.Pow:
        raise FormulaError(f"the operator {_SYMBOLS.get(op, op.__name__)} is not allowed; use + - * / **")


def _sum(operators: list[type], values: list[Any]) -> sympy.Expr:
    """``a - b + c`` as ``Add(a, -b, c)``: the tree Python's operators build, in one call.

    One operator at a time re-sorts the growing sum each time, which takes
    seconds for a few thousand terms.
    """
    terms = [_number(values[0], _SYMBOLS[operators[0]])]
    for op, value in zip(operators, values[1:]):
        value = _number(value, _SYMBOLS[op])
        terms.append(value if op is ast.Add else _call("-", operator.neg, value))
    return _call("+", sympy.Add, *terms)


def _product(operators: list[type], values: list[Any]) -> sympy.Expr:
    """``a * b / c`` as ``Mul(a, b, c**-1)``, in one call as ``_sum`` does.

    Leading numbers are combined one operator at a time, as Python does:
    ``0.3/3`` is one rounding, ``0.3*(1/3)`` two. After a symbol, ``x/c`` is
    ``Mul(x, c**-1)`` for Python's operators too.
    """
    result = _number(values[0], _SYMBOLS[operators[0]])
    factors: list[sympy.Expr] = []
    for op, value in zip(operators, values[1:]):
        symbol = _SYMBOLS[op]
        value = _number(value, symbol)
        if not factors and isinstance(result, sympy.Number) and isinstance(value, sympy.Number):
            result = _call(symbol, operator.mul if op is ast.Mult else operator.truediv, result, value)
        else:
            factors.append(value if op is ast.Mult else _call("/", sympy.Pow, value, sympy.S.NegativeOne))
    return _call("*", sympy.Mul, result, *factors) if factors else result


def _call(what: str, function: Callable[..., Any], *arguments: Any) -> Any:
    """``function(*arguments)``, with SymPy's errors turned into a ``FormulaError``."""
    try:
        return function(*arguments)
    except FormulaError:
        raise
    except RecursionError:
        raise FormulaError(f"the formula is nested too deeply; at most {MAX_DEPTH} levels are allowed") from None
    except Exception as error:  # noqa: BLE001 - SymPy raises many kinds; all mean "not a valid formula".
        reason = f"{type(error).__name__}: {_clip(error)}"
        raise FormulaError(f"{what} cannot take these arguments ({reason})") from None


def _number(value: Any, symbol: str) -> sympy.Expr:
    if not isinstance(value, sympy.Expr):
        raise FormulaError(
            f"{symbol} needs numbers, not a condition; turn a condition into numbers with "
            "Piecewise((1, y_pred > 0.5), (0, True))"
        )
    return value


def _condition(value: Any, symbol: str) -> sympy.Basic:
    if not isinstance(value, Boolean) or isinstance(value, sympy.Expr):
        raise FormulaError(f"{symbol} combines conditions such as (y_pred > 0.5); use + - * / ** for numbers")
    return value


def _float(text: str, value: float) -> sympy.Float:
    """A float literal as SymPy reads its text: every digit written is kept."""
    text = text.replace("_", "")
    if not math.isfinite(value):
        raise FormulaError(f"the number {_quote(text)} overflows float64 (largest about 1.8e308)")
    if sum(c.isdigit() for c in text.lower().partition("e")[0]) > MAX_NUMBER_DIGITS:
        raise FormulaError(f"a number has more than {MAX_NUMBER_DIGITS} digits; float64 keeps 17")
    return sympy.Float(text)


def _check_power(base: sympy.Expr, exponent: sympy.Expr) -> None:
    """Refuse ``base**exponent`` if SymPy would compute a number beyond float64's range.

    SymPy computes powers of numbers exactly (``9**9**9**9`` would never end),
    also inside products (``(2*y)**n`` becomes ``2**n*y**n``) and after
    ``E**(n*log(2))`` becomes ``2**n``. The size of ``b**e`` is estimated as
    ``|e|·log10|b|`` decades, before anything is computed.
    """
    if base is sympy.E:
        _check_exponential(exponent)
    if not isinstance(exponent, (sympy.Rational, sympy.Float)) or exponent.is_zero:
        return
    exponent_decades = _log10_abs(exponent)
    for number in _numbers_raised(base):
        decades = abs(_log10_abs(number))
        if 0 < decades < math.inf and exponent_decades + math.log10(decades) > math.log10(FLOAT64_DECADES):
            raise FormulaError(
                "a power of numbers is beyond float64's range (about 1e±308); use smaller numbers or exponents"
            )


def _check_extremum(name: str, function: type, arguments: list[Any]) -> None:
    """Refuse a Max or Min of more than ``MAX_EXTREMUM_ARGUMENTS`` (SymPy merges nested ones into it)."""
    count = sum(len(a.args) if isinstance(a, function) else 1 for a in arguments)
    if count > MAX_EXTREMUM_ARGUMENTS:
        raise FormulaError(
            f"{name} of {count} arguments (nested {name} included); at most {MAX_EXTREMUM_ARGUMENTS} are allowed"
        )


def _extremum(function: type, sizes: dict[sympy.Basic, float], *arguments: sympy.Expr) -> sympy.Expr:
    """``Max`` or ``Min`` of ``arguments``, the tree SymPy builds, without its pairwise comparisons.

    SymPy compares every pair of arguments symbolically (``factor_terms`` of
    their difference), and sorts them by a node count it computes afresh, so a
    nested ``Min`` inside a ``Max`` is traversed again at every level: nested
    extrema took time growing with the cube of their depth. Here only what is
    cheap is done: nested ones of the same kind are merged and checked as SymPy
    does, repeated arguments dropped, the numbers among the arguments reduced to
    their extreme, and the arguments put in SymPy's canonical order (node count,
    then sort key) with node counts remembered in ``sizes`` across the formula.
    """
    values = list(dict.fromkeys(function._new_args_filter(arguments)))
    numbers = [value for value in values if isinstance(value, sympy.Number)]
    if len(numbers) > 1:
        extreme = (max if function is sympy.Max else min)(numbers)
        values = [value for value in values if not isinstance(value, sympy.Number)] + [extreme]
    if len(values) == 1:
        return values[0]
    values.sort(key=lambda value: (_node_count(value, sizes), default_sort_key(value)))
    result = sympy.Expr.__new__(function, *values)
    result._argset = frozenset(values)
    return result


def _node_count(node: sympy.Basic, sizes: dict[sympy.Basic, float]) -> float:
    """SymPy's ``_node_count`` (a Float counts one half), remembered in ``sizes``."""
    if node not in sizes:
        sizes[node] = 0.5 if node.is_Float else 1 + sum(_node_count(child, sizes) for child in node.args)
    return sizes[node]


def _check_exponential(argument: sympy.Expr) -> None:
    """``exp(c*log(b))`` becomes ``b**c`` in SymPy: check that power."""
    for term in sympy.Add.make_args(argument):
        coefficient, rest = term.as_coeff_Mul()
        for factor in sympy.Mul.make_args(rest):
            if isinstance(factor, sympy.log):
                _check_power(factor.args[0], coefficient)


def _numbers_raised(base: sympy.Expr) -> Iterable[sympy.Rational | sympy.Float]:
    """The numbers SymPy may raise to the power when it builds ``base**exponent``."""
    if not base.free_symbols:
        parts = [base]
    elif isinstance(base, sympy.Mul):
        parts = [factor for factor in base.args if not factor.free_symbols]
    else:
        return []
    return [number for part in parts for number in part.atoms(sympy.Rational, sympy.Float)]


def _log10_abs(number: sympy.Rational | sympy.Float) -> float:
    """``log10|number|`` for a finite SymPy number of any size (``-inf`` for zero)."""
    if number.is_zero:
        return -math.inf
    if isinstance(number, sympy.Float):
        value = abs(mpmath.mpf(number))
    else:
        value = abs(mpmath.mpf(number.p)) / mpmath.mpf(number.q)
    return float(mpmath.log10(value))
