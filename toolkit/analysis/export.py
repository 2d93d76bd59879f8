"""``lfl export``: a learned loss as text (SymPy, LaTeX, Python source or JSON).

Three forms of the loss (see :mod:`toolkit.analysis.fit`): the exact network formula,
a compact approximation (``approx``) or a Taylor polynomial (``taylor_order``).
The JSON of an approximation or a Taylor polynomial is a saved ``SymbolicLoss``
(``losses.load_loss`` reads it back and can train with it; see below for a normalised loss) with the fidelity
report added under ``"approximation"`` / ``"taylor"``.

Every form carries what training needs. The formula of a gradient-normalised loss
(``losses.GradientScaledLoss``, the default of ``lfl train --loss adalfl|ml3``) is its
shape, a gradient direction: its JSON (exact, approximation or Taylor polynomial) is
saved inside the same ``GradientScaledLoss`` (bound, learned scale), and the text
formats start with the header line of :mod:`losses.scale_header` ("train with
--loss-scale normalised", with the numbers ``lfl train --loss-from`` reads back).
"""
from __future__ import annotations

import json

import sympy
import torch

import losses
from losses.printing import formula_string, latex_string
from losses.scale_header import Normalisation

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
                 f"{float(loss.scale.detach()):.4g}x the task loss's gradient norm (lfl train --loss-from reads "
                 "this from the JSON or the header line; a formula typed without it needs --loss-scale normalised)")
        note = f"{note}\n{scale}" if note else scale
    return text, note


def _export(loss: losses.LearnedLoss, task: str, *, fmt: str, approx: bool, max_terms: int, target_r2: float,
            domain: tuple[float, float] | None, taylor_order: int | None, around: float,
            around_y: float | None) -> tuple[str, str | None]:
    normalisation = Normalisation.of(loss)
    if approx:
        result = approximate_loss(loss, max_terms=max_terms, target_r2=target_r2, domain=domain)
        parts = ", ".join(f"{k}: {v:.6f}" for k, v in result.r2_by_part.items())
        note = (f"{result.n_terms} terms, R² {result.r2:.6f} ({parts}), max abs error "
                f"{result.max_abs_error:.3g} on [{result.domain[0]:g}, {result.domain[1]:g}]")
        if not result.meets_target:
            note += f"; below the target R² {target_r2} within {max_terms} terms"
        return _render(result.expression, task, fmt, normalisation, extra={"approximation": result.summary()}), note
    if taylor_order is not None:
        expression = taylor_expansion(loss, y_pred=around, y_true=around_y, order=taylor_order)
        point = f"y_pred = {around:g}" + (f", y = {around_y:g}" if around_y is not None else " (y = 0 and y = 1)")
        extra = {"taylor": {"order": taylor_order, "y_pred": around, "y": around_y}}
        note = f"Taylor polynomial of order {taylor_order} at {point}"
        return _render(expression, task, fmt, normalisation, extra=extra), note
    if fmt == "json":  # the loss itself, a GradientScaledLoss with its normalisation included
        return json.dumps(losses.loss_to_dict(loss), indent=1), None
    if fmt == "python":
        return _with_header(loss.to_python(), normalisation, "#"), None
    expression = loss.to_sympy()
    if fmt == "latex":
        return _with_header(latex_string(expression), normalisation, "%"), None
    return _with_header(formula_string(expression), normalisation, "#"), None


def _render(expression: sympy.Expr, task: str, fmt: str, normalisation: Normalisation | None, *,
            extra: dict) -> str:
    if fmt == "sympy":
        return _with_header(formula_string(expression), normalisation, "#")
    if fmt == "latex":
        return _with_header(latex_string(expression), normalisation, "%")
    symbolic = losses.SymbolicLoss(expression, task=task, dtype=torch.float64)
    if fmt == "python":
        return _with_header(symbolic.to_python(), normalisation, "#")
    saved = symbolic if normalisation is None else normalisation.wrap(symbolic)
    return json.dumps({**losses.loss_to_dict(saved), **extra}, indent=1)


def _with_header(text: str, normalisation: Normalisation | None, comment: str) -> str:
    """``text`` below the normalisation's header line (unchanged for a loss used as is)."""
    return text if normalisation is None else f"{normalisation.header(comment=comment)}\n{text}"


__all__ = ["export_loss", "FORMATS"]
