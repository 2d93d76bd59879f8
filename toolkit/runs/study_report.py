"""The report of a study: one row per (setting, method), paired tests against the baseline.

``report.json`` rows hold the setting, the method, the chosen value of each gridded
option under its plain name (``lr``), the selection (every grid point's validation
metric), and over the evaluation seeds ``n``, ``<metric>_mean``, ``<metric>_std``
(sample, n − 1), ``<metric>_worst`` (the largest), ``<metric>_best`` and the per-seed
values, where ``<metric>`` is ``test_error`` (classification) or ``test_mse``
(regression). Non-baseline rows add ``p_value`` (two-sided paired t-test against the
baseline, by seed), ``wilcoxon_p_value`` (n ≥ 6), ``mean_difference`` (method −
baseline) and ``wins`` (seeds on which the method is better). ``report.md`` is the same
table for people; ``test_error.png``/``.svg`` shows every seed.
"""
from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.analysis.statistics import MIN_WILCOXON_PAIRS, format_p, paired_tests, summarise_values
from toolkit.runs.study_spec import Study, selection_metric
from toolkit.runs.common import write_json

if TYPE_CHECKING:
    from toolkit.runs.study import GroupOutcome


def _metric(outcomes: list[GroupOutcome]) -> str:
    for outcome in outcomes:
        for run in outcome.runs.values():
            if run.results:
                return "test_mse" if run.results.get("task") == "regression" else "test_error"
    return "test_error"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def report_rows(study: Study, outcomes: list[GroupOutcome]) -> list[dict[str, Any]]:
    """The rows of report.json (see the module docstring)."""
    metric = _metric(outcomes)
    valid_metric = metric.replace("test_", "valid_")
    by_key = {(o.group.setting, o.group.method): o for o in outcomes}
    rows = []
    for outcome in outcomes:
        group = outcome.group
        chosen = group.points[outcome.chosen] if outcome.chosen is not None else None
        values = {s: r.results[metric] for s, r in sorted(outcome.runs.items())
                  if r.results and _finite(r.results.get(metric))}
        failed = {s: r.error or f"no finite {metric}" for s, r in sorted(outcome.runs.items()) if s not in values}
        row: dict[str, Any] = {"setting": group.setting, "method": group.method,
                               "loss": chosen.config.loss if chosen else None}
        if chosen is not None:
            row.update(chosen.values)
        row["grid"] = group.grid
        if group.tuned:
            row["selection"] = {
                "seed": study.selection_seed, "metric": valid_metric,
                "points": [{**p.values, valid_metric: _json_number(selection_metric(s.results if s else None)),
                            "run": s.path if s else None, **({"error": s.error} if s and s.error else {})}
                           for p, s in zip(group.points, outcome.selection)]}
        stats = summarise_values(list(values.values())) if values else dict.fromkeys(("mean", "std", "min", "max"))
        row.update({"n": len(values), "seeds": list(values), f"{metric}_values": {str(s): v for s, v in values.items()},
                    f"{metric}_mean": stats["mean"], f"{metric}_std": stats["std"],
                    f"{metric}_worst": stats["max"], f"{metric}_best": stats["min"]})
        valid = [r.results.get(valid_metric) for _, r in sorted(outcome.runs.items()) if r.results]
        valid = [v for v in valid if _finite(v)]
        row[f"{valid_metric}_mean"] = summarise_values(valid)["mean"] if valid else None
        if failed:
            row["failed"] = {str(s): reason for s, reason in failed.items()}
        if group.method != study.baseline:
            base = by_key[(group.setting, study.baseline)]
            base_values = {s: r.results[metric] for s, r in base.runs.items()
                           if r.results and _finite(r.results.get(metric))}
            tests = paired_tests(values, base_values)
            row.update(baseline=study.baseline, n_pairs=tests["n_pairs"], mean_difference=tests["mean_difference"],
                       p_value=tests["t_p_value"], wilcoxon_p_value=tests["wilcoxon_p_value"],
                       wins=sum(values[s] < base_values[s] for s in tests["pairs"]))
        row["runs"] = [r.path for _, r in sorted(outcome.runs.items())]
        row["run_time_s"] = sum(float(r.results.get("wall_time_s", 0.0)) for r in outcome.runs.values() if r.results)
        rows.append(row)
    return rows


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(study: Study, rows: list[dict[str, Any]], *, command: str | None = None) -> str:
    """report.md: one table per setting."""
    metric = next((k[:-5] for r in rows for k in r if k.endswith("_mean") and k.startswith("test_")), "test_error")
    lines = [f"# Study {study.path.name}", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"Evaluation seeds {', '.join(map(str, study.seeds))}; grids chosen on the validation split of seed "
              f"{study.selection_seed}; baseline `{study.baseline}`; p: two-sided paired t-test by seed"
              + (f" (Wilcoxon too, n ≥ {MIN_WILCOXON_PAIRS})." if len(study.seeds) >= MIN_WILCOXON_PAIRS else "."),
              ""]
    for setting in study.settings:
        lines += [f"## {setting}", "",
                  f"| method | chosen | {metric} mean ± std | worst | Δ vs baseline | p | wins |",
                  "|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if r["setting"] == setting):
            chosen = ", ".join(f"{k} {row[k]:g}" if isinstance(row.get(k), float) else f"{k} {row.get(k)}"
                               for k in row["grid"]) or "-"
            mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
            cell = "-" if mean is None else f"{mean:.4f} ± {std:.4f}"
            n_note = f" (n={row['n']}, {len(row['failed'])} failed)" if row.get("failed") else ""
            delta = "" if "baseline" not in row else f"{row['mean_difference']:+.4f}" \
                if row["mean_difference"] is not None else "-"
            wins = "" if "baseline" not in row else f"{row['wins']}/{row['n_pairs']}"
            lines.append(f"| {row['method']} | {chosen} | {cell}{n_note} | {_fmt(row.get(f'{metric}_worst'))} | "
                         f"{delta} | {format_p(row.get('p_value')) if 'baseline' in row else ''} | {wins} |")
        lines.append("")
    return "\n".join(lines)


def plot_study(study: Study, rows: list[dict[str, Any]]):
    """Per-seed test metric per method (dots, one colour per seed, lines joining a seed), one panel per setting.

    Each seed's dots sit slightly apart, so seeds with equal values stay visible; the legend goes
    below the panels, where it hides no data.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    metric = next((k[:-5] for r in rows for k in r if k.endswith("_mean") and k.startswith("test_")), "test_error")
    columns = min(len(study.settings), 2)
    rows_of_panels = -(-len(study.settings) // columns)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(max(4.0, 1.1 * len(study.methods) + 1.5) * columns, 4.0 * rows_of_panels),
                     layout="constrained")
        grid = fig.subplots(rows_of_panels, columns, squeeze=False)
        axes = [ax for row in grid for ax in row]
        for ax in axes[len(study.settings):]:
            ax.set_visible(False)
    colours = sns.color_palette("colorblind", len(study.seeds))
    offsets = np.linspace(-0.12, 0.12, len(study.seeds)) if len(study.seeds) > 1 else [0.0]
    for ax, setting in zip(axes, study.settings):
        setting_rows = [r for r in rows if r["setting"] == setting]
        for colour, seed, offset in zip(colours, study.seeds, offsets):
            xs = [i for i, r in enumerate(setting_rows) if str(seed) in r[f"{metric}_values"]]
            ys = [setting_rows[i][f"{metric}_values"][str(seed)] for i in xs]
            ax.plot([x + offset for x in xs], ys, "o-", color=colour, alpha=0.7, lw=0.8, ms=5, label=f"seed {seed}")
        means = [r.get(f"{metric}_mean") for r in setting_rows]
        ax.scatter([i for i, m in enumerate(means) if m is not None], [m for m in means if m is not None],
                   marker="_", s=600, color="black", zorder=3, label="mean over seeds")
        ax.set_xticks(range(len(setting_rows)), [r["method"] for r in setting_rows], rotation=30, ha="right")
        ax.set_title(setting)
        ax.set_ylabel("test error (fraction wrong)" if metric == "test_error" else "test MSE")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    fig.suptitle(f"{study.path.name}: {metric.replace('_', ' ')} per seed")
    return fig


def write_report(study: Study, outcomes: list[GroupOutcome], out_dir: str | Path, *, wall_time_s: float,
                 command: str | None = None) -> dict[str, Any]:
    """Write report.json, report.md and test_error.png/.svg into ``out_dir``; return the report."""
    import torch

    from toolkit.analysis.plots import save_figure

    out = Path(out_dir)
    rows = report_rows(study, outcomes)
    reused = sum(r.reused for o in outcomes for r in [*o.runs.values(), *filter(None, o.selection)])
    report = {"study": str(study.path), "seeds": list(study.seeds), "selection_seed": study.selection_seed,
              "baseline": study.baseline, "settings": list(study.settings), "methods": list(study.methods),
              "rows": rows, "wall_time_s": wall_time_s,
              "run_time_s": sum(r["run_time_s"] for r in rows), "reused_results": reused,
              "torch": torch.__version__, "python": platform.python_version()}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(format_markdown(study, rows, command=command))
    fig = plot_study(study, rows)
    save_figure(fig, out / "test_error")
    fig.clear()
    return report




def study_command(path: str | Path, out_dir: str | Path, *, jobs: int = 1, backend: str = "local",
                  address: str | None = None, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """``lfl study``: load the file, run or reuse every run (on ``backend``), write the report; return it."""
    import time

    from toolkit.runs.study import run_study
    from toolkit.runs.study_spec import StudyError, load_study

    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {jobs}")
    study = load_study(path)
    started = time.perf_counter()
    outcomes = run_study(study, out_dir, jobs=jobs, backend=backend, address=address, progress=progress)
    return write_report(study, outcomes, out_dir, wall_time_s=time.perf_counter() - started, command=command)


__all__ = ["report_rows", "format_markdown", "plot_study", "write_report", "study_command"]
