"""Compact closed forms for sampled functions: sparse basis selection and rational fits.

A fit approximates values ``f`` sampled on a grid of points ``(y_pred, y)`` by
``Σ_k c_k · b_k(y_pred, y)`` with few terms ``b_k`` from a dictionary (powers,
logarithms, hinges ``max(0, t - y_pred)`` …), or, for curves in ``y_pred`` alone,
by a rational function ``P_m(y_pred) / (1 + Σ_j b_j y_pred^j)``.

Sparse selection is forward stepwise (orthogonal matching pursuit: add the column
that removes most of the residual) followed by swap passes (replace one term by a
better one while any swap helps). The continuous parameters of the chosen terms
(log offsets, hinge knots) are then refined by variable projection: a
``scipy.optimize.least_squares`` search over those parameters with the linear
coefficients solved exactly at each point. A term count is the number of basis
functions with a coefficient (the constant counts as one); a rational fit counts
``m + 1 + n``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import sympy

from losses.symbols import Y_PRED, Y_TRUE


@dataclass(frozen=True)
class TermKind:
    """A family of basis functions ``b(y_pred, y; θ)`` in numpy and SymPy; ``free``: θ is refined."""

    numpy_fn: Callable[[np.ndarray, np.ndarray, object], np.ndarray]
    sympy_fn: Callable[[object], sympy.Expr]
    free: bool = False


def _pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


TERM_KINDS: dict[str, TermKind] = {
    "power": TermKind(lambda p, y, k: p ** k, lambda k: Y_PRED ** k),
    "log": TermKind(lambda p, y, e: np.log(p + e), lambda e: sympy.log(Y_PRED + e), free=True),
    "log_exact": TermKind(lambda p, y, _: np.log(p), lambda _: sympy.log(Y_PRED)),
    "log1m_exact": TermKind(lambda p, y, _: np.log(1 - p), lambda _: sympy.log(1 - Y_PRED)),
    "log1m": TermKind(lambda p, y, e: np.log(1 - p + e), lambda e: sympy.log(1 - Y_PRED + e), free=True),
    "hinge_below": TermKind(lambda p, y, t: _pos(t - p), lambda t: sympy.Max(0, t - Y_PRED), free=True),
    "hinge_above": TermKind(lambda p, y, t: _pos(p - t), lambda t: sympy.Max(0, Y_PRED - t), free=True),
    "monomial": TermKind(lambda p, y, ab: y ** ab[0] * p ** ab[1], lambda ab: Y_TRUE ** ab[0] * Y_PRED ** ab[1]),
    "abs_residual": TermKind(lambda p, y, _: np.abs(p - y), lambda _: sympy.Abs(Y_PRED - Y_TRUE)),
    "residual_below": TermKind(lambda p, y, t: _pos(t - (p - y)), lambda t: sympy.Max(0, t - Y_PRED + Y_TRUE),
                               free=True),
    "residual_above": TermKind(lambda p, y, t: _pos(p - y - t), lambda t: sympy.Max(0, Y_PRED - Y_TRUE - t),
                               free=True),
}
"""Basis families; ``log``/``log1m`` take an offset ε > 0 (``*_exact``: none), hinges a knot t."""


@dataclass(frozen=True)
class Term:
    kind: str
    param: object = None

    def values(self, p: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = TERM_KINDS[self.kind].numpy_fn(p, y, self.param)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), p.shape)

    def sympy(self, digits: int) -> sympy.Expr:
        param = _round(self.param, digits) if TERM_KINDS[self.kind].free else self.param
        return TERM_KINDS[self.kind].sympy_fn(param)


def curve_dictionary(lo: float, hi: float, *, max_power: int = 6) -> list[Term]:
    """Candidates for a curve in ``y_pred`` on [lo, hi]: powers, logs, hinges (knots dense near the ends)."""
    width = hi - lo
    terms = [Term("power", k) for k in range(max_power + 1)]
    if lo > 0:
        terms.append(Term("log_exact"))
    if hi < 1:
        terms.append(Term("log1m_exact"))
    for eps in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        if lo + eps > 0:
            terms.append(Term("log", eps))
        if 1 - hi + eps > 0:
            terms.append(Term("log1m", eps))
    edge = width * np.geomspace(1e-3, 0.2, 12)
    knots = np.unique(np.round(np.concatenate([np.linspace(lo, hi, 41)[1:-1], lo + edge, hi - edge]), 12))
    terms += [Term(kind, float(t)) for t in knots for kind in ("hinge_below", "hinge_above")]
    return terms


def surface_dictionary(lo: float, hi: float, *, max_degree: int = 4) -> list[Term]:
    """Candidates for a surface over (y, y_pred) ∈ [lo, hi]²: monomials, |y_pred - y|, residual hinges."""
    terms = [Term("monomial", (a, b)) for a in range(max_degree + 1) for b in range(max_degree + 1 - a)]
    terms.append(Term("abs_residual"))
    width = hi - lo
    terms += [Term(kind, float(t)) for t in np.linspace(-width, width, 41)[1:-1]
              for kind in ("residual_below", "residual_above")]
    return terms


@dataclass(frozen=True)
class Fit:
    """A closed form: ``terms`` with ``coefficients``, or a rational function (``numerator``, ``denominator``)."""

    terms: tuple[Term, ...] = ()
    coefficients: tuple[float, ...] = ()
    numerator: tuple[float, ...] = ()      # a_0 … a_m
    denominator: tuple[float, ...] = ()    # b_1 … b_n of 1 + Σ b_j p^j
    sse: float = float("inf")

    @property
    def n_terms(self) -> int:
        """Basis functions with a non-zero coefficient; ``m + 1 + n`` for a rational fit."""
        if self.terms:
            return sum(c != 0 for c in self.coefficients)
        return len(self.numerator) + len(self.denominator)

    def predict(self, p: np.ndarray, y: np.ndarray, digits: int | None = None) -> np.ndarray:
        """Values on points; with ``digits``, those of the rounded closed form ``expression(digits)``."""
        r = (lambda v: v) if digits is None else (lambda v: _round(v, digits))
        if self.terms:
            return sum(r(c) * replace(t, param=r(t.param) if TERM_KINDS[t.kind].free else t.param).values(p, y)
                       for c, t in zip(self.coefficients, self.terms))
        return np.polyval([r(a) for a in self.numerator][::-1], p) / _denominator(
            [r(b) for b in self.denominator], p)

    def expression(self, digits: int = 17) -> sympy.Expr:
        """The closed form in ``Y_PRED`` (and ``Y_TRUE``) with numbers rounded to ``digits`` significant digits."""
        number = lambda v: exact_float(_round(v, digits), digits)  # noqa: E731
        if self.terms:
            parts = [number(c) * t.sympy(digits) for c, t in zip(self.coefficients, self.terms)]
            return sympy.Add(*parts)
        num = sympy.Add(*[number(a) * Y_PRED ** i for i, a in enumerate(self.numerator)])
        den = 1 + sympy.Add(*[number(b) * Y_PRED ** (j + 1) for j, b in enumerate(self.denominator)])
        return num / den


def exact_float(value: float, digits: int = 17) -> sympy.Float:
    """``value`` as a SymPy Float holding exactly that double, printed with at most ``max(digits, 15)`` digits.

    (``sympy.Float(v, 3)`` would keep only ~12 bits: the formula would compute
    something other than what it prints.)
    """
    return sympy.Float(float(value), 15 if digits <= 15 else 17)


def _round(value, digits: int):
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and value != 0:
        return float(f"{float(value):.{digits}g}")
    return value


def _denominator(b, p: np.ndarray) -> np.ndarray:
    return 1 + sum(bj * p ** (j + 1) for j, bj in enumerate(b))


def _lstsq(a: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(a, f, rcond=None)
    resid = f - a @ coef
    return coef, float(resid @ resid)


def _gains(columns: np.ndarray, basis: np.ndarray | None, resid: np.ndarray) -> np.ndarray:
    """SSE removed by adding each column to an orthonormal ``basis`` (0 for dependent columns)."""
    perp = columns if basis is None else columns - basis @ (basis.T @ columns)
    norms = np.einsum("ij,ij->j", perp, perp)
    scale = np.einsum("ij,ij->j", columns, columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = (perp.T @ resid) ** 2 / norms
    gains[~(norms > 1e-20 * np.maximum(scale, 1e-300))] = 0.0
    return gains


def _orthonormal(columns: np.ndarray, chosen: list[int]) -> np.ndarray | None:
    return np.linalg.qr(columns[:, chosen])[0] if chosen else None


def _greedy_path(columns: np.ndarray, f: np.ndarray, max_terms: int, swap_passes: int = 3) -> list[list[int]]:
    """For each size k ≤ max_terms, a good subset of columns (forward selection, then swaps)."""
    chosen: list[int] = []
    path = []
    for _ in range(min(max_terms, columns.shape[1])):
        q = _orthonormal(columns, chosen)
        resid = f - (q @ (q.T @ f) if q is not None else 0)
        gains = _gains(columns, q, resid)
        gains[chosen] = -1
        if gains.max() <= 0:
            break
        chosen = chosen + [int(gains.argmax())]
        for _ in range(swap_passes):
            improved = False
            for i in range(len(chosen)):
                others = chosen[:i] + chosen[i + 1:]
                q = _orthonormal(columns, others)
                resid = f - (q @ (q.T @ f) if q is not None else 0)
                gains = _gains(columns, q, resid)
                gains[others] = -1
                best = int(gains.argmax())
                if best != chosen[i] and gains[best] > gains[chosen[i]] * (1 + 1e-9) + 1e-300:
                    chosen = others[:i] + [best] + others[i:]
                    improved = True
            if not improved:
                break
        path.append(list(chosen))
    return path


def _refine(terms: list[Term], p: np.ndarray, y: np.ndarray, f: np.ndarray) -> Fit:
    """Least squares in the free parameters (log offsets in log space, knots), coefficients solved exactly."""
    from scipy.optimize import least_squares

    free = [i for i, t in enumerate(terms) if TERM_KINDS[t.kind].free]

    def build(theta: np.ndarray) -> list[Term]:
        out = list(terms)
        for i, value in zip(free, theta):
            out[i] = replace(out[i], param=float(np.exp(value)) if out[i].kind.startswith("log") else float(value))
        return out

    def design(ts: list[Term]) -> np.ndarray:
        return np.stack([t.values(p, y) for t in ts], axis=1)

    def residual(theta: np.ndarray) -> np.ndarray:
        a = design(build(theta))
        if not np.all(np.isfinite(a)):
            return np.full_like(f, 1e150)
        return f - a @ _lstsq(a, f)[0]

    theta0 = np.array([np.log(terms[i].param) if terms[i].kind.startswith("log") else terms[i].param
                       for i in free], dtype=np.float64)
    start = _fit_terms(terms, p, y, f)
    if not free:
        return start
    lower, upper = np.array([_bounds(terms[i].kind, p, y) for i in free]).T
    theta0 = np.clip(theta0, lower, upper)
    try:
        result = least_squares(residual, theta0, bounds=(lower, upper), x_scale="jac", max_nfev=200 * len(free))
    except ValueError:  # non-finite residuals at the start point
        return start
    refined = _fit_terms(build(result.x), p, y, f)
    return refined if refined.sse < start.sse else start


def _bounds(kind: str, p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Where a free parameter may go: log offsets ε in [1e-12, 2] (as log ε; a larger ε makes the
    log almost linear, which powers say more plainly), knots inside the data (outside, a hinge
    is linear or zero)."""
    if kind.startswith("log"):
        return float(np.log(1e-12)), float(np.log(2.0))
    values = p - y if kind.startswith("residual") else p
    return float(values.min()), float(values.max())


def _fit_terms(terms: list[Term], p: np.ndarray, y: np.ndarray, f: np.ndarray) -> Fit:
    a = np.stack([t.values(p, y) for t in terms], axis=1)
    coef, sse = _lstsq(a, f)
    return Fit(terms=tuple(terms), coefficients=tuple(float(c) for c in coef), sse=sse)


def sparse_path(p: np.ndarray, y: np.ndarray, f: np.ndarray, dictionary: list[Term],
                max_terms: int) -> list[Callable[[], Fit]]:
    """For each number of terms 1 … max_terms (index k-1), a function returning the refined sparse fit.

    Selection is cheap; refinement is not, so it runs only for the sizes a caller asks for.
    """
    raw = np.stack([t.values(p, y) for t in dictionary], axis=1)
    keep = np.all(np.isfinite(raw), axis=0)
    dictionary = [t for t, k in zip(dictionary, keep) if k]
    columns = raw[:, keep]
    norms = np.linalg.norm(columns, axis=0)
    columns = columns / np.where(norms > 0, norms, 1.0)
    path = [functools.partial(_refine, [dictionary[i] for i in subset], p, y, f)
            for subset in _greedy_path(columns, f, max_terms)]
    return path or [lambda: Fit(terms=(Term("power", 0),), coefficients=(0.0,), sse=float(f @ f))]  # f is 0


def rational_fit(p: np.ndarray, f: np.ndarray, num_degree: int, den_degree: int) -> Fit | None:
    """``P(p)/Q(p)`` with Q = 1 + Σ b_j p^j: linearised least squares, then nonlinear refinement.

    Returns None when Q comes near zero on the grid (a pole in the domain).
    """
    from scipy.optimize import least_squares

    m = num_degree
    vp = np.vander(p, m + 1, increasing=True)
    vq = np.vander(p, den_degree + 1, increasing=True)[:, 1:]
    start, _ = _lstsq(np.hstack([vp, -f[:, None] * vq]), f)

    def parts(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = 1 + vq @ theta[m + 1:]
        return vp @ theta[:m + 1], np.where(np.abs(q) > 1e-12, q, 1e-12)

    def residual(theta: np.ndarray) -> np.ndarray:
        num, q = parts(theta)
        return f - num / q

    def jacobian(theta: np.ndarray) -> np.ndarray:
        num, q = parts(theta)
        return np.hstack([-vp / q[:, None], vq * (num / q ** 2)[:, None]])

    try:
        theta = least_squares(residual, start, jac=jacobian, x_scale="jac", max_nfev=50 * (m + den_degree + 1)).x
    except ValueError:
        return None
    q = 1 + vq @ theta[m + 1:]
    if not (np.all(q > 0) and q.min() > 1e-6 * q.max()):
        return None
    r = residual(theta)
    return Fit(numerator=tuple(map(float, theta[:m + 1])), denominator=tuple(map(float, theta[m + 1:])),
               sse=float(r @ r))


MAX_RATIONAL_DEGREES = (5, 3)
"""Largest numerator and denominator degrees tried by :func:`best_fits`."""


def best_fits(p: np.ndarray, y: np.ndarray, f: np.ndarray, dictionary: list[Term], max_terms: int, *,
              rational: bool = True, target_sse: float | None = None) -> dict[int, Fit]:
    """The lowest-error fit found for each term count 1, 2, … up to ``max_terms``.

    Candidates of k terms: the k-term sparse selections from the whole dictionary and
    from its powers alone (polynomials are then recovered exactly), refined, and
    (``rational``, curves only) every P_m/Q_n with m + 1 + n = k. With
    ``target_sse`` the search stops at the first k whose best fit reaches it.
    """
    polynomial = [t for t in dictionary if t.kind in ("power", "monomial")]
    paths = [sparse_path(p, y, f, dictionary, max_terms), sparse_path(p, y, f, polynomial, max_terms)]
    best: dict[int, Fit] = {}
    for k in range(1, max_terms + 1):
        candidates = [fit() for path in paths if len(path) >= k for fit in [path[k - 1]]]
        if rational:
            for n in range(1, min(k - 1, MAX_RATIONAL_DEGREES[1]) + 1):
                if k - 1 - n <= MAX_RATIONAL_DEGREES[0]:
                    candidates.append(rational_fit(p, f, k - 1 - n, n))
        candidates = [c for c in candidates if c is not None and c.n_terms <= k]
        if candidates:
            best[k] = min(candidates, key=lambda c: c.sse)
            if target_sse is not None and best[k].sse <= target_sse:
                break
    return best


def rounded_digits(fit: Fit, p: np.ndarray, y: np.ndarray, f: np.ndarray, *, slack: float = 0.0,
                   start: int = 3) -> int:
    """Fewest significant digits (≥ start) whose rounded form adds at most ``slack`` to the squared error
    (and at most 10% of the fit's own error)."""
    limit = max(fit.sse * 1.1, fit.sse + slack) + 1e-24 * max(float(f @ f), 1e-300)
    for digits in range(start, 18):
        r = f - fit.predict(p, y, digits)
        if float(r @ r) <= limit:
            return digits
    return 17


__all__ = ["Term", "TERM_KINDS", "Fit", "curve_dictionary", "surface_dictionary", "sparse_path", "rational_fit",
           "best_fits", "rounded_digits"]
