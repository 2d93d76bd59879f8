"""``lfl export``: a learned loss as text (SymPy, LaTeX, Python source or JSON).

Three forms of the loss (see :mod:`toolkit.analysis.fit`): the exact network formula,
a compact approximation (``approx``) or a Taylor polynomial (``taylor_order``).
The JSON of an approximation or a Taylor polynomial is a saved ``SymbolicLoss``
(``losses.load_loss`` reads it back and can train with it) with the fidelity
report added under ``"approximation"`` / ``"taylor"``.
"""
from __future__ import annotations

import json

import sympy
import torch

import losses
from losses.printing import formula_string, latex_string

from toolkit.analysis.fit import approximate_loss, taylor_expansion
from toolkit.analysis.rundir import AnalysisError, load_loss_source

FORMATS = ("sympy", "latex", "python", "json")


def export_loss(source: str, *, fmt: str = "sympy", step: int | None = None, approx: bool = False,
                max_terms: int = 12, target_r2: float = 0.9995, domain: tuple[float, float] | None = None,
                taylor_order: int | None = None, around: float = 0.5,
                around_y: float | None = None) -> tuple[str, str | None]:
    """The text of the loss in ``source`` (run directory or loss file) and a note for people (or None).

    The note (fidelity of an approximation, the expansion point of a Taylor
    polynomial) goes to stderr in ``lfl export``, so stdout holds only the formula.
    """
    if fmt not in FORMATS:
        raise AnalysisError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    loss, task = load_loss_source(source, step=step)
    text, note = _export(loss, task, fmt=fmt, approx=approx, max_terms=max_terms, target_r2=target_r2, domain=domain,
                         taylor_order=taylor_order, around=around, around_y=around_y)
    if isinstance(loss, losses.GradientScaledLoss):
        scale = (f"gradient-normalised loss: the formula is its shape; each step takes its gradient direction at "
                 f"{float(loss.scale.detach()):.4g}x the task loss's gradient norm")
        note = f"{note}\n{scale}" if note else scale
    return text, note


def _export(loss: losses.LearnedLoss, task: str, *, fmt: str, approx: bool, max_terms: int, target_r2: float,
            domain: tuple[float, float] | None, taylor_order: int | None, around: float,
            around_y: float | None) -> tuple[str, str | None]:
    if approx:
        result = approximate_loss(loss, max_terms=max_terms, target_r2=target_r2, domain=domain)
        parts = ", ".join(f"{k}: {v:.6f}" for k, v in result.r2_by_part.items())
        note = (f"{result.n_terms} terms, R² {result.r2:.6f} ({parts}), max abs error "
                f"{result.max_abs_error:.3g} on [{result.domain[0]:g}, {result.domain[1]:g}]")
        if not result.meets_target:
            note += f"; below the target R² {target_r2} within {max_terms} terms"
        return _render(result.expression, task, fmt, extra={"approximation": result.summary()}), note
    if taylor_order is not None:
        expression = taylor_expansion(loss, y_pred=around, y_true=around_y, order=taylor_order)
        point = f"y_pred = {around:g}" + (f", y = {around_y:g}" if around_y is not None else " (y = 0 and y = 1)")
        extra = {"taylor": {"order": taylor_order, "y_pred": around, "y": around_y}}
        return _render(expression, task, fmt, extra=extra), f"Taylor polynomial of order {taylor_order} at {point}"
    if fmt == "json":
        return json.dumps(losses.loss_to_dict(loss), indent=1), None
    if fmt == "python":
        return loss.to_python(), None
    expression = loss.to_sympy()
    return (latex_string(expression) if fmt == "latex" else formula_string(expression)), None


def _render(expression: sympy.Expr, task: str, fmt: str, *, extra: dict) -> str:
    if fmt == "sympy":
        return formula_string(expression)
    if fmt == "latex":
        return latex_string(expression)
    symbolic = losses.SymbolicLoss(expression, task=task, dtype=torch.float64)
    if fmt == "python":
        return symbolic.to_python()
    return json.dumps({**losses.loss_to_dict(symbolic), **extra}, indent=1)


__all__ = ["export_loss", "FORMATS"]
