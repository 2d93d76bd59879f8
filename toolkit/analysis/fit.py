"""Reading a learned loss: exact formula, compact approximate closed form, Taylor expansion.

Three views of a loss ``ℓ(y_pred, y)``, each a SymPy expression in ``losses.Y_PRED``
and ``losses.Y_TRUE`` that ``losses.SymbolicLoss`` can train with:

* :func:`exact_formula`: the network written out (``loss.to_sympy()``); exact but long.
* :func:`approximate_loss`: a short formula fitted to the loss on its domain. For
  classification only one-hot targets occur, so the loss is the pair of curves
  ``ℓ1(p) = ℓ(p, 1)`` and ``ℓ0(p) = ℓ(p, 0)`` on p ∈ [0, 1], and the formula is
  ``y·ℓ1(y_pred) + (1 − y)·ℓ0(y_pred)``; for regression it is the surface over
  (y, y_pred) on a square (targets are standardised, so [−3, 3] by default).
  Each part is fitted by sparse selection from a dictionary and by rational
  functions (:mod:`toolkit.analysis.closed_form`), the fewest terms that reach
  ``target_r2`` win, and the numbers are rounded to the fewest digits that keep
  the fit. Its fidelity (R², max abs error) is measured on a dense grid by
  evaluating the final rounded formula with ``SymbolicLoss``.
* :func:`taylor_expansion`: the polynomial of a given order around a point, its
  derivatives computed by torch autograd in float64 (SymPy calculus on a 40×40
  network formula takes minutes).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
from sympy.core.parameters import distribute

import losses
from losses import Y_PRED, Y_TRUE

from toolkit.analysis.closed_form import best_fits, curve_dictionary, exact_float, rounded_digits, surface_dictionary
from toolkit.analysis.rundir import AnalysisError

CLASSIFICATION_DOMAIN = (0.0, 1.0)
REGRESSION_DOMAIN = (-3.0, 3.0)


def exact_formula(loss: losses.LearnedLoss) -> sympy.Expr:
    """The exact per-element loss ``ℓ(y_pred, y)`` with the current parameters."""
    return loss.to_sympy()


def loss_values(loss: losses.LearnedLoss, y_pred, y_true) -> np.ndarray:
    """``loss.elementwise`` in float64 on arrays of one shape (a float64 copy; the loss is unchanged)."""
    p = torch.as_tensor(np.asarray(y_pred, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_true, dtype=np.float64)).expand_as(p)
    with torch.no_grad():
        return _float64(loss).elementwise(p, y.contiguous()).numpy()


def prediction_gradient(loss: losses.LearnedLoss, y_pred, y_true) -> np.ndarray:
    """``∂ℓ/∂y_pred`` in float64 on arrays of one shape (autograd)."""
    p = torch.tensor(np.asarray(y_pred, dtype=np.float64), requires_grad=True)
    y = torch.as_tensor(np.asarray(y_true, dtype=np.float64)).expand_as(p).contiguous()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_float64(loss).elementwise(p, y).sum(), p)
    return grad.numpy()


def _float64(loss: losses.LearnedLoss) -> losses.LearnedLoss:
    if all(t.dtype == torch.float64 for t in [*loss.parameters(), *loss.buffers()] if t.is_floating_point()):
        return loss
    return copy.deepcopy(loss).double()


def domain_grid(task: str, domain: tuple[float, float] | None = None, *,
                points: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The evaluation points of each part: ``{"y=1": (p, y), "y=0": (p, y)}`` or ``{"surface": (p, y)}``."""
    lo, hi = domain or (CLASSIFICATION_DOMAIN if task == "classification" else REGRESSION_DOMAIN)
    if not hi > lo:
        raise AnalysisError(f"the domain must be an interval lo < hi; got ({lo}, {hi})")
    if task == "classification":
        p = np.linspace(lo, hi, points or 2001)
        return {"y=1": (p, np.ones_like(p)), "y=0": (p, np.zeros_like(p))}
    axis = np.linspace(lo, hi, points or 101)
    p, y = np.meshgrid(axis, axis)
    return {"surface": (p.ravel(), y.ravel())}


@dataclass(frozen=True)
class Approximation:
    """A compact closed form of a loss and how faithful it is on the domain.

    Attributes:
        expression: ``y·ℓ1(y_pred) + (1 − y)·ℓ0(y_pred)`` (classification) or the surface formula.
        parts: the fitted parts, ``{"y=1": ℓ1, "y=0": ℓ0}`` or ``{"surface": …}``.
        n_terms: basis functions with a coefficient, summed over the parts.
        r2: coefficient of determination against the loss over all grid points of all parts.
        max_abs_error: largest absolute difference on the grid.
        r2_by_part, max_abs_error_by_part: the same per part.
        domain: the interval of y_pred (and y for regression) the grid covers.
        target_r2: what each part had to reach; ``meets_target`` says whether all did.
    """

    expression: sympy.Expr
    task: str
    parts: dict[str, sympy.Expr]
    n_terms: int
    r2: float
    max_abs_error: float
    domain: tuple[float, float]
    target_r2: float
    meets_target: bool
    r2_by_part: dict[str, float] = field(default_factory=dict)
    max_abs_error_by_part: dict[str, float] = field(default_factory=dict)

    def to_loss(self, *, trainable: bool = True) -> losses.SymbolicLoss:
        """The formula as a trainable ``SymbolicLoss``."""
        return losses.SymbolicLoss(self.expression, task=self.task, trainable=trainable)

    def summary(self) -> dict:
        """JSON-ready description: formula text, fidelity, term count, domain."""
        return {"formula": str(self.expression), "parts": {k: str(v) for k, v in self.parts.items()},
                "n_terms": self.n_terms, "r2": self.r2, "max_abs_error": self.max_abs_error,
                "r2_by_part": self.r2_by_part, "max_abs_error_by_part": self.max_abs_error_by_part,
                "domain": list(self.domain), "target_r2": self.target_r2, "meets_target": self.meets_target}


def approximate_loss(loss: losses.LearnedLoss, *, max_terms: int = 12, target_r2: float = 0.9995,
                     domain: tuple[float, float] | None = None, points: int | None = None,
                     rational: bool = True) -> Approximation:
    """Fit a compact closed form to ``loss`` on its domain (see the module docstring).

    Args:
        loss: any ``LearnedLoss`` (its task decides the domain and the form).
        max_terms: most basis functions in the whole formula (both parts together).
        target_r2: R² each part must reach; the fewest terms that reach it are kept,
            else the most faithful formula of at most ``max_terms`` terms.
        domain: interval of y_pred (classification, default [0, 1]) or of both
            y and y_pred (regression, default [−3, 3]).
        points: grid points per part (classification, default 2001) or per axis
            (regression, default 101).
        rational: also try rational functions P/Q for classification curves.

    Raises:
        AnalysisError: the loss is not finite on the domain, or max_terms < number of parts.
    """
    task = loss.task
    grid = domain_grid(task, domain, points=points)
    lo, hi = domain or (CLASSIFICATION_DOMAIN if task == "classification" else REGRESSION_DOMAIN)
    if max_terms < len(grid):
        raise AnalysisError(f"max_terms must be at least {len(grid)} (one per part); got {max_terms}")
    values = {name: loss_values(loss, p, y) for name, (p, y) in grid.items()}
    bad = [name for name, f in values.items() if not np.all(np.isfinite(f))]
    if bad:
        raise AnalysisError(f"the loss is not finite on the domain [{lo}, {hi}] ({', '.join(bad)}): "
                            "choose a narrower domain")
    budget = max_terms - len(grid) + 1  # each part keeps at least one term
    dictionary = curve_dictionary(lo, hi) if task == "classification" else surface_dictionary(lo, hi)
    fits = lambda name, stop: best_fits(*grid[name], values[name], dictionary, budget,  # noqa: E731
                                        rational=task == "classification", target_sse=stop)
    paths = {name: fits(name, _target_sse(values[name], target_r2)) for name in grid}
    reached = {name: min(k for k, fit in path.items() if _r2(fit.sse, values[name]) >= target_r2)
               for name, path in paths.items() if any(_r2(f.sse, values[name]) >= target_r2 for f in path.values())}
    if len(reached) == len(grid) and sum(reached.values()) <= max_terms:
        choice = {name: paths[name][k] for name, k in reached.items()}
    else:  # the target is out of reach: the most faithful formula within max_terms
        paths = {name: fits(name, None) for name in grid}
        choice = _most_faithful(paths, values, max_terms)
    parts = {}
    for name, fit in choice.items():
        p, y = grid[name]
        # Rounding may spend 1% of the error the target allows: more digits only where they matter.
        slack = 0.01 * _target_sse(values[name], target_r2)
        parts[name] = fit.expression(rounded_digits(fit, p, y, values[name], slack=slack))
    if task == "classification":
        with distribute(False):  # keep y*(…) + (1 - y)*(…) as written
            expression = Y_TRUE * parts["y=1"] + (1 - Y_TRUE) * parts["y=0"]
    else:
        expression = parts["surface"]
    quality = fidelity(expression, loss, domain=(lo, hi), points=points)
    by_part_ok = all(r >= target_r2 for r in quality["r2_by_part"].values())
    return Approximation(expression=expression, task=task, parts=parts,
                         n_terms=sum(fit.n_terms for fit in choice.values()), r2=quality["r2"],
                         max_abs_error=quality["max_abs_error"], domain=(lo, hi), target_r2=target_r2,
                         meets_target=by_part_ok, r2_by_part=quality["r2_by_part"],
                         max_abs_error_by_part=quality["max_abs_error_by_part"])


def _most_faithful(paths: dict[str, dict], values: dict[str, np.ndarray], max_terms: int) -> dict:
    """One fit per part, at most ``max_terms`` in all, maximising the worst part's R² (then the pooled error)."""
    options = [{}]
    for name, path in paths.items():
        options = [{**o, name: fit} for o in options for fit in path.values()]
    options = [o for o in options if sum(f.n_terms for f in o.values()) <= max_terms]
    return max(options, key=lambda o: (min(_r2(f.sse, values[n]) for n, f in o.items()),
                                       -sum(f.sse for f in o.values())))


def _floor(truth: np.ndarray) -> float:
    """Squared error at the level of float64 rounding of ``truth``."""
    return 1e-20 * float(truth @ truth) + 1e-300


def _r2(sse: float, truth: np.ndarray) -> float:
    """1 − SSE/SST; a part without variation scores 1 when matched to rounding level, else 0."""
    sst = float(((truth - truth.mean()) ** 2).sum())
    if sst <= _floor(truth):
        return 1.0 if sse <= _floor(truth) else 0.0
    return 1.0 - sse / sst


def _target_sse(truth: np.ndarray, target_r2: float) -> float:
    sst = float(((truth - truth.mean()) ** 2).sum())
    return max((1 - target_r2) * sst, _floor(truth))


def fidelity(expression: sympy.Expr, loss: losses.LearnedLoss, *, domain: tuple[float, float] | None = None,
             points: int | None = None) -> dict:
    """R² and max abs error of ``expression`` against ``loss`` on the domain grid (per part and pooled).

    The expression is evaluated through ``SymbolicLoss`` in float64, as training would use it.
    """
    formula = losses.SymbolicLoss(expression, task=loss.task, trainable=False, dtype=torch.float64)
    grid = domain_grid(loss.task, domain, points=points)
    truth, approx = {}, {}
    for name, (p, y) in grid.items():
        truth[name] = loss_values(loss, p, y)
        approx[name] = loss_values(formula, p, y)
    result = {"r2_by_part": {}, "max_abs_error_by_part": {}}
    for name in grid:
        err = approx[name] - truth[name]
        result["r2_by_part"][name] = _r2(float(err @ err), truth[name])
        result["max_abs_error_by_part"][name] = float(np.max(np.abs(err)))
    t, a = np.concatenate(list(truth.values())), np.concatenate(list(approx.values()))
    result["r2"] = _r2(float((a - t) @ (a - t)), t)
    result["max_abs_error"] = float(np.max(np.abs(a - t)))
    return result


def taylor_expansion(loss: losses.LearnedLoss, *, y_pred: float, y_true: float | None = None, order: int = 3,
                     digits: int | None = 6) -> sympy.Expr:
    """Taylor polynomial of ``loss`` around a point, with derivatives from torch autograd (float64).

    Args:
        loss: any ``LearnedLoss``.
        y_pred: the expansion point in y_pred.
        y_true: the expansion point in y: a bivariate expansion in (y, y_pred). None
            (classification only): expand ``ℓ(·, 1)`` and ``ℓ(·, 0)`` in y_pred and
            return ``y·T1 + (1 − y)·T0``, exact for one-hot targets.
        order: total degree, >= 1.
        digits: significant digits of the coefficients (None: all 17).

    Returns:
        ``Σ ∂^{a+b}ℓ/∂y^a∂y_pred^b / (a! b!) · (y − y0)^a · (y_pred − p0)^b``.
    """
    if not isinstance(order, int) or order < 1:
        raise AnalysisError(f"the Taylor order must be an integer >= 1; got {order!r}")
    with distribute(False):  # keep c·(y_pred − p0) as written
        return _taylor_polynomial(_float64(loss), y_pred, y_true, order, digits)


def _taylor_polynomial(net: losses.LearnedLoss, y_pred: float, y_true: float | None, order: int,
                       digits: int | None) -> sympy.Expr:
    number = (lambda v: exact_float(v)) if digits is None else (lambda v: exact_float(float(f"{v:.{digits}g}"), digits))
    if y_true is None:
        if net.task != "classification":
            raise AnalysisError("a regression loss needs the expansion point in y too: pass y_true "
                                "(lfl export --around-y)")
        branches = {}
        for label in (1.0, 0.0):
            derivatives = _derivatives(net, y_pred, label, order, bivariate=False)
            branches[label] = sympy.Add(*[number(d / math.factorial(b)) * (Y_PRED - number(y_pred)) ** b
                                          for (_, b), d in derivatives.items() if d != 0])
        return Y_TRUE * branches[1.0] + (1 - Y_TRUE) * branches[0.0]
    derivatives = _derivatives(net, y_pred, y_true, order, bivariate=True)
    return sympy.Add(*[number(d / (math.factorial(a) * math.factorial(b)))
                       * (Y_TRUE - number(y_true)) ** a * (Y_PRED - number(y_pred)) ** b
                       for (a, b), d in derivatives.items() if d != 0])


def _derivatives(loss: losses.LearnedLoss, p0: float, y0: float, order: int, *,
                 bivariate: bool) -> dict[tuple[int, int], float]:
    """All partial derivatives ∂^{a+b}ℓ/∂y^a∂p^b at (p0, y0) with a + b ≤ order (a = 0 unless bivariate)."""
    p = torch.tensor([float(p0)], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([float(y0)], dtype=torch.float64, requires_grad=bivariate)
    with torch.enable_grad():
        tensors = {(0, 0): loss.elementwise(p, y)[0]}
        for degree in range(1, order + 1):
            for a in range(degree + 1 if bivariate else 1):
                b = degree - a
                parent, wrt = ((a, b - 1), p) if b > 0 else ((a - 1, b), y)
                source = tensors.get(parent)
                grad = None
                if source is not None and source.requires_grad:
                    (grad,) = torch.autograd.grad(source, wrt, create_graph=degree < order, retain_graph=True,
                                                  allow_unused=True)
                tensors[(a, b)] = grad[0] if grad is not None else None
    return {key: float(t.detach()) if t is not None else 0.0 for key, t in tensors.items()}


__all__ = ["exact_formula", "approximate_loss", "Approximation", "taylor_expansion", "fidelity", "loss_values",
           "prediction_gradient", "domain_grid", "AnalysisError", "CLASSIFICATION_DOMAIN", "REGRESSION_DOMAIN"]
