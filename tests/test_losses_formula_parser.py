"""parse_formula: reads what SymPy prints exactly as sympy.parse_expr does, and never runs the text as Python."""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch
from sympy.core.parameters import distribute
from test_losses_cases import CASE_IDS, make_loss

import losses
from losses import (
    SYMPY_TO_TORCH,
    Y_PRED,
    Y_TRUE,
    CrossEntropyLoss,
    FormulaError,
    LossFileError,
    MLPLoss,
    SymbolicLoss,
    TaylorLoss,
    parse_formula,
)
from losses.formula import formula_functions
from losses.printing import formula_string
from losses.sympy_to_torch import compile_expression

F64 = torch.float64
MESSAGE_LIMIT = 400  # Longest message: the list of known functions is the longest part.

HAND_WRITTEN = [
    "0.7*(y_pred - y)**2 + 0.1*log(1 + exp(2.5*y_pred)) - 0.3*tanh(y*y_pred) + 0.05*Abs(y_pred)**1.5",
    "0.5*y_pred**2 + 0.5*y",
    "exp(-y_pred) + sqrt(y_pred) + Abs(y - 0.5)",
    "Max(y_pred, y, 0.3) - Min(y_pred, 0.6)",
    "tanh(y_pred) * sin(y) + cos(y_pred) - atan(y) + erf(y_pred)",
    "Piecewise((y_pred, y_pred > 0.5), (y**2, True))",
    "Piecewise((y, (y_pred > 0.5) & (y < 1)), (0, (y_pred <= 0.1) | (y >= 2)), (1, True))",
    "Piecewise((y, ~(y_pred > 0.5)), (-y_pred, True))",
    "pi * y_pred + E",
    "-y*log(y_pred)",
    "2*(y_pred - y) + 3*(y + 1)/7 - y**(3/2) + y_pred**(-1) + 1e-5*y + 1.5e+300*y_pred",
    "sign(y_pred - y)*abs(y)**0.5 + erfc(y) + asinh(y) + acosh(1 + y**2) + atanh(y/2) + sinh(y) + cosh(y)",
    "tan(y) + asin(y/2) + acos(y/2) + log(y_pred, 2) + 0.12345678901234567*y + 1_000*y + 0x10*y_pred",
    "+y - -y_pred + 1. + .5",
    "0.3/3*y + 2/3*y_pred - 1.5*2/7 + y/3.0 - 2*(y + 1)*3/y_pred/7",
    "sin(-y - 1) + tanh(-y - y_pred) + Abs(-y - 1) + erf(-2*(y + 1))",  # parse_expr recurses without end.
]


def _exported() -> list[tuple[str, sympy.Expr]]:
    torch.manual_seed(0)
    modules = [make_loss(case) for case in CASE_IDS]
    modules += [MLPLoss(hidden=(3,), dtype=F64), TaylorLoss.taylorglo(dtype=F64), CrossEntropyLoss(binary=True)]
    return [(formula_string(expr), expr) for expr in (module.to_sympy() for module in modules)]


ROUND_TRIPS = [(text, None) for text in HAND_WRITTEN] + _exported()


_SYMBOLS = {Y_PRED.name: Y_PRED, Y_TRUE.name: Y_TRUE}


def _reference(text: str) -> sympy.Basic | None:
    """SymPy's own parser: evaluates Python, so only ever given the trusted texts above.

    None where it fails: with distribution off (as parse_formula used it) it
    recurses without end on odd functions of negated sums, e.g. ``sin(-y - 1)``.
    """
    try:
        with distribute(False):
            return sympy.parse_expr(text, local_dict=_SYMBOLS)
    except RecursionError:
        return None


def _agree_numerically(ours: sympy.Expr, reference: sympy.Expr) -> None:
    generator = np.random.default_rng(0)
    y_pred, y = generator.uniform(0.05, 0.95, 50), generator.uniform(0.05, 0.95, 50)
    with np.errstate(all="ignore"):
        values = [np.broadcast_to(sympy.lambdify((Y_PRED, Y_TRUE), e)(y_pred, y), y.shape) for e in (ours, reference)]
    np.testing.assert_allclose(*values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("text, exported", ROUND_TRIPS, ids=[f"{k}:{t[:30]}" for k, (t, _) in enumerate(ROUND_TRIPS)])
def test_parse_equals_sympy_parse_expr(text: str, exported: sympy.Expr | None) -> None:
    ours, reference = parse_formula(text), _reference(text)
    if reference is not None and sympy.srepr(ours) == sympy.srepr(reference):
        return  # The same tree, Float precisions included.
    if reference is None:  # The exported expression, or SymPy's parse with distribution on.
        reference = exported if exported is not None else sympy.parse_expr(text, local_dict=_SYMBOLS)
    _agree_numerically(ours, reference)


def test_floats_keep_their_written_digits_and_products_stay_unexpanded() -> None:
    assert sympy.srepr(parse_formula("0.12345678901234567")) == "Float('0.12345678901234567', precision=60)"
    expr = parse_formula("2*(y_pred - y)")
    assert isinstance(expr, sympy.Mul) and expr.args[0] == 2 and isinstance(expr.args[1], sympy.Add)
    assert parse_formula("y**(3/2)") == Y_TRUE ** sympy.Rational(3, 2)


def test_functions_follow_the_table_and_its_extensions() -> None:
    names = set(formula_functions())
    assert {"exp", "log", "Abs", "sign", "Max", "Min", "Piecewise", "sin", "tanh", "erf", "erfc"} <= names
    assert {"sqrt", "abs"} <= names and not names & {"Add", "Mul", "Pow", "And", "Or", "Not", "LessThan"}
    my_square = sympy.Function("my_square")
    SYMPY_TO_TORCH[my_square] = lambda x: x * x
    try:
        assert parse_formula("my_square(y_pred) + y") == my_square(Y_PRED) + Y_TRUE
    finally:
        del SYMPY_TO_TORCH[my_square]
    with pytest.raises(FormulaError, match="unknown function 'my_square'; known functions: exp, log"):
        parse_formula("my_square(y_pred)")


def _hostile(marker: Path) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f"(lambda: {touch})()*0+(y_pred-y)**2",
        touch,
        f"exec(\"open('{marker}', 'w')\")",
        f"eval(\"open('{marker}', 'w')\")",
        f"open('{marker}', 'w').close()",
        "open('/etc/passwd').read()",
        "().__class__.__bases__[0].__subclasses__()",
        "().__class__",
        "y.__class__",
        "y_pred.func",
        "[x for x in ()]",
        "lambda: 1",
        "globals()",
        "getattr(y, 'func')",
        "Symbol('x')",
        "sympify('1')",
        "Function('f')(y)",
        "'abc'",
        "b'x'",
        "f'{y}'",
        f"f'{{__import__(\"os\").system(\"touch {marker}\")}}'",
        "y_pred[0]",
        "log(y_pred, base=2)",
        "*args",
        "exp(*y)",
        "(x := 1)",
        "y_pred ^ 2",
        "1 < y_pred < 2",
        "9**9**9**9",
        "10**10**10",
        "(2*y_pred)**(10**50)",
        "exp(10**50*log(2))",
        "(" * 10000 + "y" + ")" * 10000,
        "-" * 1000 + "y",
        "y_pred+" * 14000 + "y",
        "y_pred + " * 25000 + "y",
        "y_pred/0",
        "0/0",
        "log(0)",
        "zoo", "oo", "nan", "I",
        "gamma(y)",
        "Heaviside(y_pred)",
        "x",
        "1e400*y",
        "y if y_pred else 0",
        "y and y_pred",
        "not y",
        "y_pred == y",
        "y_pred % 2",
        "{'a': 1}",
        "[y]",
        "(y, y_pred)",
        "1j*y",
        "None",
        "...",
        "y_pred > 0.5",
        "y & y_pred",
        "(y > 0) + 1",
        "sqrt(-1)*y",
        "1" * 150 + "*y",
        "0." + "1" * 150,
        "",
        "   ",
        "y\x00",
        "y_pred\n+ __import__('os')",
    ]


def _check_message(error: Exception, payload: str) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) <= MESSAGE_LIMIT, message
    if len(payload) <= 5000:  # The message repeats at most ~60 characters of the text.
        assert not any(payload[i : i + 64] in message for i in range(len(payload) - 63)), message


@pytest.fixture
def no_eval(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every call of eval and exec made while the test runs."""
    calls: list[str] = []
    for name in ("eval", "exec"):
        original = getattr(builtins, name)

        def spy(*args: object, _name: str = name, _original: Callable = original, **kwargs: object) -> object:
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(builtins, name, spy)
    return calls


def test_hostile_formulas_raise_one_line_formula_errors(tmp_path: Path, no_eval: list[str]) -> None:
    marker = tmp_path / "MARKER"
    payloads = _hostile(marker) + ["x" * 200_000]
    assert len(payloads) >= 25
    for payload in payloads:
        with pytest.raises(FormulaError) as caught:
            parse_formula(payload)
        _check_message(caught.value, payload)
        assert not marker.exists(), payload
    assert no_eval == []


@pytest.mark.parametrize("text, message", [
    ("y_pred ^ 2", "use ** for powers"),
    ("__import__('os')", "unknown function '__import__'; known functions: exp, log, Abs"),
    ("z + y", "unknown name 'z': a formula may use y_pred, y, numbers, pi, E and the functions exp"),
    ("y.func", "attribute access (a.b)"),
    ("y_pred/0", "undefined or infinite (e.g. a division by zero"),
    ("9**9**9**9", "beyond float64's range"),
    ("1e400", "overflows float64"),
    ("1 < y_pred < 2", "chained comparisons"),
    ("log(y_pred, base=2)", "keyword arguments"),
    ("-" * 300 + "y", "nested too deeply"),
    ("x" * 100_001, "more than the limit of 100,000"),
    ("Max(" + ", ".join(f"{k}*y" for k in range(20)) + ")", "Max of 20 arguments (nested Max included); at most 16"),
])
def test_messages_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(FormulaError, match=re.escape(message)):
        parse_formula(text)


def test_long_sums_and_products_build_in_one_call() -> None:
    terms = [Y_TRUE**k for k in range(1, 2000)]  # One operator at a time would take seconds.
    assert parse_formula(" + ".join(f"y**{k}" for k in range(1, 2000))) == sympy.Add(*terms)
    factors = [Y_TRUE + k for k in range(1, 2000)]
    assert parse_formula("*".join(f"(y + {k})" for k in range(1, 2000))) == sympy.Mul(*factors)


def test_nesting_within_the_limit_parses() -> None:
    assert parse_formula("-" * 150 + "y") == Y_TRUE
    assert parse_formula("(" * 150 + "y" + ")" * 150) == Y_TRUE
    assert parse_formula(" + ".join(f"{k}*y**{k}" for k in range(1, 500))).free_symbols == {Y_TRUE}
    assert parse_formula("2**1000*y") == 2**1000 * Y_TRUE  # Still inside float64's range.


def _loss_dict(expression: str, constants: list[float] | None = None) -> dict:
    config = {"expression": expression, "task": "regression", "trainable": True}
    parameters = {"constants": constants or []}
    return {"format_version": 1, "kind": "symbolic", "config": config, "dtype": None, "parameters": parameters}


WAYS_IN: dict[str, Callable[[str], object]] = {
    "SymbolicLoss": SymbolicLoss,
    "from_config": lambda text: SymbolicLoss.from_config({"expression": text}),
    "build_loss": lambda text: losses.build_loss("symbolic", expression=text),
    "loss_from_dict": lambda text: losses.loss_from_dict(_loss_dict(text)),
}
"""Every way text reaches a formula (compile_expression takes no text at all)."""


@pytest.mark.parametrize("way", list(WAYS_IN))
def test_every_way_in_refuses_hostile_formulas(way: str, tmp_path: Path, no_eval: list[str]) -> None:
    marker = tmp_path / "MARKER"
    for payload in _hostile(marker)[:12] + ["gamma(y)", "y_pred/0", "9**9**9**9"]:
        expected = LossFileError if way == "loss_from_dict" else FormulaError
        with pytest.raises(expected) as caught:
            WAYS_IN[way](payload)
        _check_message(caught.value, payload)
        assert not marker.exists(), payload
    assert no_eval == []


def test_loss_files_with_a_bad_expression_give_a_one_line_loss_file_error(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "loss.json"
    path.write_text(json.dumps(_loss_dict(f"__import__('os').system('touch {marker}')")))
    expected = f"{path}: invalid config for SymbolicLoss: only functions called by name are allowed"
    with pytest.raises(LossFileError, match=re.escape(expected)):
        losses.load_loss(path)
    assert not marker.exists()
    loss = losses.loss_from_dict(_loss_dict("0.5*(y_pred - y)**2", [0.5]))
    assert isinstance(loss, SymbolicLoss) and str(loss.to_sympy()) == "0.5*(-y + y_pred)**2"


def test_compile_expression_takes_sympy_objects_and_numbers_never_text() -> None:
    y_pred = torch.tensor([0.5, 2.0], dtype=F64)
    for given in (Y_PRED**2, parse_formula("y_pred**2")):
        program = compile_expression(given)
        torch.testing.assert_close(program.evaluate(y_pred, y_pred, torch.zeros(0, dtype=F64)), y_pred**2)
    assert compile_expression(3).output.value == 3 and compile_expression(0.25).constants == [0.25]
    for wrong in (True, None, object(), [Y_PRED]):
        with pytest.raises(TypeError, match="expected a SymPy expression or a number"):
            compile_expression(wrong)
    with pytest.raises(TypeError, match="parse_formula"):
        compile_expression("y_pred**2")
