"""Fast printing of large formulas: SymPy's printers, memoised on shared subtrees.

An exported network is a DAG in which each hidden unit appears many times;
SymPy's printers walk it as a tree and re-print every copy. These subclasses
cache the text of each subexpression, so the output is the same text as
``str(expr)`` / ``sympy.latex(expr)``, computed once per distinct node.
"""

from __future__ import annotations

from typing import Any

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter


class _MemoMixin:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._memo: dict[tuple[sympy.Basic, tuple[tuple[str, Any], ...]], str] = {}

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if not isinstance(expr, sympy.Basic) or expr.is_Atom:
            return super()._print(expr, **kwargs)
        key = (expr, tuple(sorted(kwargs.items())))
        try:
            text = self._memo.get(key)
        except TypeError:  # Unhashable printer arguments: print without the cache.
            return super()._print(expr, **kwargs)
        if text is None:
            text = super()._print(expr, **kwargs)
            self._memo[key] = text
        return text


class _MemoStrPrinter(_MemoMixin, StrPrinter):
    pass


class _MemoLatexPrinter(_MemoMixin, LatexPrinter):
    pass


def formula_string(expr: sympy.Basic) -> str:
    """Return ``str(expr)``, fast for large expressions with shared subexpressions."""
    return _MemoStrPrinter().doprint(expr)


def latex_string(expr: sympy.Basic) -> str:
    """Return ``sympy.latex(expr)``, fast for large expressions with shared subexpressions."""
    return _MemoLatexPrinter().doprint(expr)
