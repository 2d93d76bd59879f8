"""The statistics every comparison reports, computed once: a summary over seeds and the paired tests.

Used by ``lfl train --seeds`` (summary.json), ``lfl compare`` (:mod:`toolkit.analysis.compare`)
and ``lfl study`` (report.json), so the three agree to the last bit on the same numbers.

- :func:`summarise_values`: mean, sample standard deviation (n − 1; 0 for one value), min and
  max (the worst seed, for an error or a loss).
- :func:`median`: the median (a run's cost: robust to one slow run on a busy machine).
- :func:`paired_tests`: the two-sided paired t-test (``scipy.stats.ttest_rel``, n ≥ 2) and the
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, n ≥ :data:`MIN_WILCOXON_PAIRS`: with fewer
  pairs no two-sided p-value can fall below 0.05), over the keys (seeds) both sides have.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

MIN_WILCOXON_PAIRS = 6


def summarise_values(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max"}`` of one or more numbers (std: sample, ddof=1; 0.0 for one value)."""
    if not len(values):
        raise ValueError("summarise_values needs at least one value")
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def median(values: Sequence[float]) -> float | None:
    """The median of the values (the mean of the middle two for an even count); None for none."""
    return float(np.median(np.asarray(values, dtype=np.float64))) if len(values) else None


def paired_tests(method: Mapping, base: Mapping) -> dict:
    """Paired two-sided tests of ``method`` against ``base``, each a mapping seed → value.

    Returns ``{"n_pairs", "pairs", "mean_difference", "t_p_value", "wilcoxon_p_value"}``: the seeds
    both have (sorted), mean(method − base) over them, and each p-value or None where it is not
    defined (too few pairs, constant differences).
    """
    from scipy import stats

    seeds = sorted(set(method) & set(base), key=str)
    result = {"n_pairs": len(seeds), "pairs": seeds, "mean_difference": None, "t_p_value": None,
              "wilcoxon_p_value": None}
    if not seeds:
        return result
    a = np.array([method[s] for s in seeds], dtype=np.float64)
    b = np.array([base[s] for s in seeds], dtype=np.float64)
    result["mean_difference"] = float(np.mean(a - b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant differences: scipy warns and returns nan
        if len(seeds) >= 2:
            result["t_p_value"] = _finite(stats.ttest_rel(a, b).pvalue)
        if len(seeds) >= MIN_WILCOXON_PAIRS and np.any(a != b):
            result["wilcoxon_p_value"] = _finite(stats.wilcoxon(a, b).pvalue)
    return result


def format_p(value: float | None) -> str:
    """A p-value for a table: three significant digits, scientific below 1e-3, ``-`` for none."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


__all__ = ["MIN_WILCOXON_PAIRS", "summarise_values", "median", "paired_tests", "format_p"]
