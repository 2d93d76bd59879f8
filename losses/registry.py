"""Losses by name: the short names users type, and the kinds saved files record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from losses.base import LearnedLoss
from losses.mlp import MLPLoss
from losses.robust import FocalLoss, GeneralizedCrossEntropyLoss
from losses.scaled import GradientScaledLoss
from losses.standard import CrossEntropyLoss, SquaredErrorLoss
from losses.symbolic import SymbolicLoss
from losses.taylor import TaylorLoss

_BUILDERS: dict[str, Callable[..., LearnedLoss]] = {
    "ce": CrossEntropyLoss,
    "mse": SquaredErrorLoss,
    "mlp": MLPLoss,
    "ml3": MLPLoss.ml3,
    "taylor": TaylorLoss,
    "taylorglo": TaylorLoss.taylorglo,
    "symbolic": SymbolicLoss,
    "gce": GeneralizedCrossEntropyLoss,
    "focal": FocalLoss,
}
LOSS_NAMES: tuple[str, ...] = tuple(_BUILDERS)

LOSS_KINDS: dict[str, type[LearnedLoss]] = {
    cls.kind: cls for cls in (CrossEntropyLoss, SquaredErrorLoss, MLPLoss, TaylorLoss, SymbolicLoss, GradientScaledLoss,
                              GeneralizedCrossEntropyLoss, FocalLoss)
}
"""Class of each ``kind`` recorded in saved files."""


def build_loss(name: str, **options: Any) -> LearnedLoss:
    """Build a loss by short name.

    Args:
        name: One of ``LOSS_NAMES``: ``"ce"`` (CrossEntropyLoss), ``"mse"``
            (SquaredErrorLoss), ``"mlp"``, ``"ml3"`` (``MLPLoss.ml3``), ``"taylor"``,
            ``"taylorglo"`` (``TaylorLoss.taylorglo``), ``"symbolic"`` (needs
            ``expression=``, a SymPy expression or a string in ``y_pred`` and ``y``), ``"gce"``
            (GeneralizedCrossEntropyLoss, ``q=``), ``"focal"`` (FocalLoss, ``gamma=``).
        **options: Keyword arguments of that constructor, e.g. ``task="regression"``.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    if name == "symbolic":
        if "expression" not in options:
            raise ValueError('build_loss("symbolic") needs expression=..., e.g. expression="(y_pred - y)**2"')
        return SymbolicLoss(options.pop("expression"), **options)
    return _BUILDERS[name](**options)
