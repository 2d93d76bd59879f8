"""Exact, JSON-friendly serialisation of a SymPy expression as a node table.

Text (``str`` + parsing) re-evaluates an expression on the way back, which can
reorder or merge terms; this table rebuilds exactly the same tree, shares
repeated subexpressions (an exported network stays small) and never evaluates
Python code. Only classes in ``SYMPY_TO_TORCH`` (plus plain numbers, symbols and
SymPy's named constants) can appear, exactly those ``SymbolicLoss`` can run.

Format: a list of nodes, children before parents, the last one the root; a node
is ``[class name, *arguments]`` where the arguments of a compound node are
indices of earlier nodes, and of an atom its value as text: ``["Symbol", "y"]``,
``["Integer", "2"]``, ``["Rational", "1", "3"]``, ``["Float", "0.25"]`` (float64
``repr``), ``["S", "Pi"]``.

A table is untrusted input: a node may use an earlier node any number of times,
so 100 nodes can describe a tree of 2**100 nodes, which printing (``str``,
``loss.json``'s ``formula``) would try to write out in full. Before any SymPy
object is built, ``graph_to_expression`` counts, in one pass over the table,
the size of the tree the root expands to and its depth, and refuses a table
beyond ``MAX_TREE_NODES`` or ``MAX_DEPTH``.
"""

from __future__ import annotations

from typing import Any

import sympy

from losses.symbols import sympy_float
from losses.sympy_to_torch import SYMPY_TO_TORCH

MAX_TREE_NODES = 10_000_000
"""Most nodes the written-out tree may have (a 100×100 ``MLPLoss`` exports about 540,000)."""
MAX_DEPTH = 200
"""Deepest nesting of compound nodes (as ``losses.formula.MAX_DEPTH``; printing recurses once per level)."""
_ATOMS = ("Symbol", "Float", "Integer", "Rational", "S")


def expression_to_graph(expr: sympy.Basic) -> list[list[Any]]:
    """Node table of ``expr`` (see the module docstring)."""
    nodes: list[list[Any]] = []
    index: dict[sympy.Basic, int] = {}

    def visit(node: sympy.Basic) -> int:
        if node not in index:
            nodes.append(_encode(node, [visit(child) for child in node.args]))
            index[node] = len(nodes) - 1
        return index[node]

    visit(expr)
    return nodes


def _encode(node: sympy.Basic, children: list[int]) -> list[Any]:
    if isinstance(node, sympy.Symbol):
        return ["Symbol", node.name]
    if isinstance(node, sympy.Float):
        return ["Float", repr(float(node))]
    if node.is_Integer:
        return ["Integer", str(int(node))]
    if node.is_Rational:
        return ["Rational", str(node.p), str(node.q)]
    name = type(node).__name__
    if node.is_Atom:
        if getattr(sympy.S, name, None) is not node:
            raise ValueError(f"cannot serialise the atom {node!r} ({name})")
        return ["S", name]
    return [name, *children]


def graph_to_expression(nodes: Any) -> sympy.Expr:
    """Rebuild the expression of ``expression_to_graph`` exactly (no re-evaluation).

    Raises:
        ValueError: A malformed table or a class missing from ``SYMPY_TO_TORCH``.
    """
    if not isinstance(nodes, list) or not nodes:
        raise ValueError("an expression graph must be a non-empty list of nodes")
    _check_size(nodes)
    classes = {cls.__name__: cls for cls in SYMPY_TO_TORCH}
    classes["ExprCondPair"] = sympy.functions.elementary.piecewise.ExprCondPair
    built: list[sympy.Basic] = []
    for position, node in enumerate(nodes):
        try:
            built.append(_decode(node, built, classes))
        except (TypeError, ValueError, IndexError, AttributeError) as error:
            text = repr(node) if len(repr(node)) <= 60 else repr(node)[:57] + "..."
            raise ValueError(f"expression graph node {position} {text} is invalid: {error}") from None
    return built[-1]


def _check_size(nodes: list[Any]) -> None:
    """Refuse a table whose tree has more than ``MAX_TREE_NODES`` nodes or ``MAX_DEPTH`` levels.

    Sizes and depths are computed per node from those of its children (already
    known: children come first), so the cost is linear in the table, however
    large the tree it describes. Malformed nodes are left to ``_decode``.
    """
    sizes: list[int] = []
    depths: list[int] = []
    for position, node in enumerate(nodes):
        children = node[1:] if isinstance(node, list) and node and node[0] not in _ATOMS else []
        if not all(type(a) is int and 0 <= a < position for a in children):
            children = []
        size = 1 + sum(sizes[a] for a in children)
        depth = 1 + max((depths[a] for a in children), default=0) if children else 0
        if size > MAX_TREE_NODES:
            raise ValueError(f"expression graph node {position} expands to a tree of more than {MAX_TREE_NODES:,} "
                             "nodes (losses.graph.MAX_TREE_NODES); a shared file may not describe a larger formula")
        if depth > MAX_DEPTH:
            raise ValueError(f"expression graph node {position} is nested more than {MAX_DEPTH} levels deep "
                             "(losses.graph.MAX_DEPTH)")
        sizes.append(size)
        depths.append(depth)


def _decode(node: Any, built: list[sympy.Basic], classes: dict[str, type]) -> sympy.Basic:
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("a node must be a list [class name, *arguments]")
    name, arguments = node[0], node[1:]
    atoms = {
        "Symbol": lambda text: sympy.Symbol(text),
        "Float": _float,
        "Integer": lambda text: sympy.Integer(int(text)),
        "Rational": lambda p, q: sympy.Rational(int(p), int(q)),
        "S": _singleton,
    }
    if name in atoms:
        if not all(isinstance(a, str) for a in arguments):
            raise ValueError("atom values must be strings")
        return atoms[name](*arguments)
    if name not in classes:
        raise ValueError(f"unknown class {name!r}; it must be a key of losses.symbolic.SYMPY_TO_TORCH")
    if not all(isinstance(a, int) and 0 <= a < len(built) for a in arguments):
        raise ValueError("arguments must be indices of earlier nodes")
    children = [built[a] for a in arguments]
    try:
        return classes[name](*children, evaluate=False)
    except TypeError:  # Classes without an evaluate flag, e.g. ExprCondPair.
        return classes[name](*children)


def _float(text: str) -> sympy.Float:
    value = float(text)
    if value != value or abs(value) == float("inf"):
        raise ValueError("a Float must be finite")
    return sympy_float(value)


def _singleton(name: str) -> sympy.Basic:
    value = None if name.startswith("_") else getattr(sympy.S, name, None)
    if not (isinstance(value, sympy.Basic) and value.is_Atom):
        raise ValueError(f"{name!r} is not a SymPy named constant")
    return value
