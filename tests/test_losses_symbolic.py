"""SymbolicLoss: the function table, trainable constants, stable patterns, exact graph serialisation."""

from __future__ import annotations

import re

import pytest
import sympy
import torch

from losses import SYMPY_TO_TORCH, Y_PRED, Y_TRUE, SymbolicLoss, UnsupportedFunctionError
from losses.graph import expression_to_graph, graph_to_expression

F64 = torch.float64


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(20, generator=generator, dtype=F64), torch.rand(20, generator=generator, dtype=F64)


def test_floats_become_parameters_and_integers_stay_fixed() -> None:
    expr = sympy.Float(0.5) * (Y_PRED - Y_TRUE) ** 2 + sympy.Float(0.25) * Y_PRED**3 + sympy.log(2) * Y_TRUE
    loss = SymbolicLoss(expr, dtype=F64)
    assert isinstance(loss.constants, torch.nn.Parameter)
    assert sorted(loss.constants.tolist()) == [0.25, 0.5]  # Exponents 2, 3 and log(2) are not trainable.
    frozen = SymbolicLoss(expr, trainable=False, dtype=F64)
    assert list(frozen.parameters()) == [] and frozen.constants.shape == (2,)


def test_equal_floats_share_one_constant_and_to_sympy_tracks_training() -> None:
    loss = SymbolicLoss("0.5*y_pred**2 + 0.5*y", dtype=F64)
    assert loss.constants.tolist() == [0.5]
    with torch.no_grad():
        loss.constants.fill_(2.0)
    y_pred, y = _inputs()
    torch.testing.assert_close(loss.elementwise(y_pred, y), 2 * y_pred**2 + 2 * y)
    assert sympy.expand(loss.to_sympy() - (2 * Y_PRED**2 + 2 * Y_TRUE)) == 0


@pytest.mark.parametrize("text, reference", [
    ("exp(-y_pred) + sqrt(y_pred) + Abs(y - 0.5)", lambda p, y: torch.exp(-p) + p.sqrt() + (y - 0.5).abs()),
    ("Max(y_pred, y, 0.3) - Min(y_pred, 0.6)", lambda p, y: torch.maximum(p, y).clamp_min(0.3) - p.clamp_max(0.6)),
    ("tanh(y_pred) * sin(y) + cos(y_pred) - atan(y) + erf(y_pred)",
     lambda p, y: p.tanh() * y.sin() + p.cos() - y.atan() + torch.erf(p)),
    ("Piecewise((y_pred, y_pred > 0.5), (y**2, True))", lambda p, y: torch.where(p > 0.5, p, y**2)),
    ("pi * y_pred + E", lambda p, y: torch.pi * p + torch.e),
])
def test_table_functions_evaluate_like_torch(text: str, reference) -> None:
    y_pred, y = _inputs()
    loss = SymbolicLoss(text, dtype=F64)
    torch.testing.assert_close(loss.elementwise(y_pred, y), reference(y_pred, y))
    namespace: dict = {}
    exec(loss.to_python(), namespace)  # noqa: S102 - our own generated code.
    torch.testing.assert_close(namespace["loss"](y_pred, y), reference(y_pred, y))


def test_softplus_and_sigmoid_forms_are_stable_for_large_arguments() -> None:
    loss = SymbolicLoss(sympy.log(1 + sympy.exp(Y_PRED)) + 1 / (1 + sympy.exp(-Y_TRUE)), dtype=F64)
    y_pred = torch.tensor([1e3, -1e3, 0.0], dtype=F64, requires_grad=True)
    y = torch.tensor([-1e3, 1e3, 0.0], dtype=F64, requires_grad=True)
    value = loss.elementwise(y_pred, y)
    torch.testing.assert_close(value.detach(), torch.tensor([1e3, 1.0, 0.6931471805599453 + 0.5],
                                                            dtype=F64))
    gradients = torch.autograd.grad(value.sum(), (y_pred, y), create_graph=True)
    second = torch.autograd.grad(sum(g.sum() for g in gradients), (y_pred, y))
    assert all(torch.isfinite(g).all() for g in (*gradients, *second))


def test_unsupported_function_names_itself_and_the_table() -> None:
    with pytest.raises(UnsupportedFunctionError, match=r"SymPy function 'besselj' has no torch counterpart; "
                                                       r"add it to losses.symbolic.SYMPY_TO_TORCH"):
        SymbolicLoss(sympy.besselj(1, Y_PRED))
    assert issubclass(UnsupportedFunctionError, ValueError)


def test_users_can_extend_the_table() -> None:
    my_function = sympy.Function("my_square")
    SYMPY_TO_TORCH[my_function] = lambda x: x * x
    try:
        loss = SymbolicLoss(my_function(Y_PRED) + Y_TRUE, dtype=F64)
        y_pred, y = _inputs()
        torch.testing.assert_close(loss.elementwise(y_pred, y), y_pred**2 + y)
    finally:
        del SYMPY_TO_TORCH[my_function]


def test_other_free_symbols_are_rejected() -> None:
    with pytest.raises(ValueError, match="free symbol 'z'"):
        SymbolicLoss(sympy.Symbol("z") * Y_PRED)


def test_constant_expression_broadcasts_to_the_input_shape() -> None:
    loss = SymbolicLoss(sympy.Float(1.5) + 0 * Y_PRED, dtype=F64)
    y_pred, y = _inputs()
    torch.testing.assert_close(loss.elementwise(y_pred, y), torch.full_like(y_pred, 1.5))


def test_graph_serialisation_rebuilds_the_identical_tree() -> None:
    with sympy.core.parameters.distribute(False):
        expr = sympy.Float(0.25) * (Y_PRED - Y_TRUE) + sympy.Piecewise((Y_PRED, Y_PRED > 0.5), (sympy.pi, True))
    graph = expression_to_graph(expr)
    rebuilt = graph_to_expression(graph)

    def tree(e: sympy.Basic) -> str:  # srepr without the Floats' binary precision (17 digits on rebuild).
        return re.sub(r", precision=\d+", "", sympy.srepr(e))

    assert tree(rebuilt) == tree(expr)  # Same tree: 0.25*(y_pred - y) stays unexpanded.
    with pytest.raises(ValueError, match="unknown class 'besselj'"):
        graph_to_expression([["Symbol", "y_pred"], ["Integer", "1"], ["besselj", 1, 0]])
    with pytest.raises(ValueError, match="not a SymPy named constant"):
        graph_to_expression([["S", "__class__"]])
