"""Comparing methods across seeds: mean ± std of a final metric and paired significance tests.

Runs are grouped by (dataset, model); within a group, by method (``Run.method``:
``ce``, ``mse``, ``adalfl-mlp``, ``ml3-taylor`` …), and runs of one method that differ in
settings are never pooled: they get labels such as ``ce [lr=0.1]``
(:func:`toolkit.analysis.rundir.method_labels`). Each method is compared with the
baseline method of its group on the seeds both have (runs of one method and seed
are averaged first): the paired t-test (``scipy.stats.ttest_rel``, n ≥ 2) and the
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, n ≥ 6: with fewer pairs no
two-sided p-value can fall below 0.05). Both are two-sided.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from toolkit.analysis.rundir import AnalysisError, Run, method_labels
from toolkit.analysis.statistics import MIN_WILCOXON_PAIRS, format_p, paired_tests, summarise_values

FORMATS = ("text", "markdown", "csv")


@dataclass(frozen=True)
class MethodResult:
    """One method in one (dataset, model) group, with its test against the group's baseline."""

    dataset: str
    model: str
    method: str
    n: int
    mean: float
    std: float            # sample standard deviation (ddof=1); 0 for one run
    seeds: tuple
    baseline: str | None = None
    n_pairs: int = 0
    mean_difference: float | None = None   # method − baseline, over the paired seeds
    t_p_value: float | None = None
    wilcoxon_p_value: float | None = None


def compare_runs(runs: list[Run], *, baseline: str | None = "ce", metric: str = "test_error") -> list[MethodResult]:
    """Summarise ``metric`` from results.json per method and test each against ``baseline``.

    Args:
        runs: finished runs (a run without ``metric`` in results.json is an error).
        baseline: the method the others are tested against; None: no tests. The
            default ``"ce"`` falls back to ``"mse"`` in groups without ``ce`` runs.
        metric: a key of results.json (``test_error``; for regression it holds the test MSE).

    Raises:
        AnalysisError: no runs, a run without the metric, or a baseline no group has.
    """
    if not runs:
        raise AnalysisError("give at least one run directory")
    missing = [str(r.path) for r in runs if not isinstance(r.results.get(metric), (int, float))]
    if missing:
        raise AnalysisError(f"no {metric} in results.json of {', '.join(missing[:3])}"
                            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                            + " (unfinished runs?)")
    groups: dict[tuple[str, str], dict[str, dict]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run, label in zip(runs, method_labels(runs)):
        key = (str(run.results.get("dataset", "?")), str(run.results.get("model", "?")))
        groups[key][label][run.seed].append(float(run.results[metric]))
    methods = {m for g in groups.values() for m in g}
    if baseline is not None and baseline not in methods:
        split = sorted(m for m in methods if m.startswith(f"{baseline} ["))
        if split:
            raise AnalysisError(f"the baseline {baseline!r} has runs with different settings ({', '.join(split)}): "
                                "pass one of them as --baseline, or compare runs of one setting")
        if baseline != "ce":
            raise AnalysisError(f"baseline {baseline!r} has no runs; methods: {', '.join(sorted(methods))}")
        if "mse" not in methods:
            baseline = None  # the default baseline is simply absent: report without tests
    rows = []
    for (dataset, model), by_method in sorted(groups.items()):
        base = baseline
        if base == "ce" and "ce" not in by_method and "mse" in by_method:
            base = "mse"
        base_seeds = {s: np.mean(v) for s, v in by_method.get(base, {}).items()}
        order = sorted(by_method, key=lambda m: (m != base, m))
        for method in order:
            by_seed = by_method[method]
            values = [v for vs in by_seed.values() for v in vs]
            stats = summarise_values(values)
            row = dict(dataset=dataset, model=model, method=method, n=len(values), mean=stats["mean"],
                       std=stats["std"], seeds=tuple(sorted(by_seed, key=str)))
            if base in by_method and method != base:
                tests = paired_tests({s: np.mean(v) for s, v in by_seed.items()}, base_seeds)
                row.update({k: tests[k] for k in ("n_pairs", "mean_difference", "t_p_value", "wilcoxon_p_value")},
                           baseline=base)
            rows.append(MethodResult(**row))
    return rows


def format_comparison(rows: list[MethodResult], fmt: str = "text", *, metric: str = "test_error") -> str:
    """The comparison as an aligned text table per group, one Markdown table, or CSV."""
    if fmt not in FORMATS:
        raise AnalysisError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["dataset", "model", "method", "n", f"{metric}_mean", f"{metric}_std", "baseline",
                         "n_pairs", "mean_difference", "t_p_value", "wilcoxon_p_value"])
        for r in rows:
            writer.writerow([r.dataset, r.model, r.method, r.n, r.mean, r.std, r.baseline or "", r.n_pairs,
                             "" if r.mean_difference is None else r.mean_difference,
                             "" if r.t_p_value is None else r.t_p_value,
                             "" if r.wilcoxon_p_value is None else r.wilcoxon_p_value])
        return buffer.getvalue()
    header = ["method", "n", f"{metric} (mean ± std)", "Δ vs baseline", "t-test p", "wilcoxon p"]
    table = [[r.dataset, r.model, r.method, str(r.n), f"{r.mean:.4f} ± {r.std:.4f}",
              "" if r.mean_difference is None else f"{r.mean_difference:+.4f} (n={r.n_pairs})",
              format_p(r.t_p_value) if r.baseline else "", format_p(r.wilcoxon_p_value) if r.baseline else ""]
             for r in rows]
    if fmt == "markdown":
        lines = ["| dataset | model | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 2)]
        lines += ["| " + " | ".join(cells) + " |" for cells in table]
        return "\n".join(lines) + "\n"
    lines = []
    for key in dict.fromkeys((r.dataset, r.model) for r in rows):
        group = [cells[2:] for cells in table if tuple(cells[:2]) == key]
        base = next((r.baseline for r in rows if (r.dataset, r.model) == key and r.baseline), None)
        lines.append(f"{key[0]} / {key[1]}" + (f"  (baseline {base}, two-sided tests paired by seed)"
                                                  if base else ""))
        widths = [max(len(c) for c in column) for column in zip(header, *group)]
        for cells in [header, *group]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        lines.append("")
    return "\n".join(lines)


__all__ = ["compare_runs", "format_comparison", "MethodResult", "FORMATS", "MIN_WILCOXON_PAIRS"]
