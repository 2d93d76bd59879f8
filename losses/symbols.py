"""The two SymPy symbols every exported loss formula is written in.

``Y_PRED`` is the prediction as the loss sees it (a probability for
classification, a raw value for regression); ``Y_TRUE`` is the target (a one-hot
entry for classification, a raw value for regression). Both are plain symbols
without assumptions, so ``Y_TRUE == sympy.Symbol("y")``.
"""

from __future__ import annotations

import sympy

Y_PRED = sympy.Symbol("y_pred")
Y_TRUE = sympy.Symbol("y")


def sympy_float(value: float) -> sympy.Float:
    """Return ``value`` as a SymPy Float that keeps every bit of its float64 value.

    Seventeen significant digits are enough for ``float(str(result)) == value``.
    """
    return sympy.Float(float(value), 17)
