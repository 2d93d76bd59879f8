"""The report of a study: one row per (setting, method), paired tests against the baseline.

``report.json`` rows hold the setting, the method, the chosen value of each gridded
option under its plain name (``lr``), the selection (every grid point's validation
metric), and over the evaluation seeds ``n``, ``<metric>_mean``, ``<metric>_std``
(sample, n − 1), ``<metric>_worst`` (the largest), ``<metric>_best`` and the per-seed
values, where ``<metric>`` is ``test_error`` (classification) or ``test_mse``
(regression). Non-baseline rows add ``p_value`` (two-sided paired t-test against the
baseline, by seed), ``wilcoxon_p_value`` (n ≥ 6), ``mean_difference`` (method −
baseline) and ``wins`` (seeds on which the method is better). Every row has its cost
(``budget``: "equal steps" or "equal time", ``steps``, ``train_time_s_median`` and
``cost_vs_baseline``; ``matched_steps`` for ``steps = "match:..."``), the descent guard's
run totals (``guarded_mean``, ``rejected_steps_mean``; None without a guard), ``edges``
(the chosen values at an end of their grid), ``extensions`` (how ``extend_edges`` grew a grid) and, for a reused
loss, ``loss_source``. ``report.md`` is the same
table for people; ``test_error.png``/``.svg`` shows every seed.
"""
from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.analysis.statistics import MIN_WILCOXON_PAIRS, format_p, median, paired_tests, summarise_values
from toolkit.runs.study_edges import grid_edges
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
        chosen = outcome.points[outcome.chosen] if outcome.chosen is not None else None
        values = {s: r.results[metric] for s, r in sorted(outcome.runs.items())
                  if r.results and _finite(r.results.get(metric))}
        failed = {s: r.error or f"no finite {metric}" for s, r in sorted(outcome.runs.items()) if s not in values}
        row: dict[str, Any] = {"setting": group.setting, "method": group.method,
                               "loss": chosen.config.loss if chosen else None}
        if chosen is not None:
            row.update(chosen.values)
        row["grid"] = outcome.grid
        if chosen is not None:
            row["edges"] = grid_edges(outcome.grid, chosen.values)
        if outcome.extensions:
            row["declared_grid"] = group.grid
            row["extensions"] = _extension_notes(outcome, row.get("edges", []))
        if len(outcome.points) > 1:
            row["selection"] = {
                "seed": study.selection_seed, "metric": valid_metric,
                "points": [{**p.values, valid_metric: _json_number(selection_metric(s.results if s else None)),
                            "run": s.path if s else None, **({"error": s.error} if s and s.error else {})}
                           for p, s in zip(outcome.points, outcome.selection)]}
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
        row.update(_cost_and_guard(outcome))
        if outcome.error:
            row["error"] = outcome.error
        rows.append(row)
    for row in rows:
        base = next(r for r in rows if r["setting"] == row["setting"] and r["method"] == study.baseline)
        ratio = _ratio(row["train_time_s_median"], base["train_time_s_median"])
        row["cost_vs_baseline"] = ratio
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _cost_and_guard(outcome: GroupOutcome) -> dict[str, Any]:
    """A row's cost (median training time, steps, the budget it had) and the descent guard's run totals."""
    results = [r.results for _, r in sorted(outcome.runs.items()) if r.results]
    times = [float(x["wall_time_s"]) for x in results if _finite(x.get("wall_time_s"))]
    steps = sorted({x.get("steps") for x in results})
    row: dict[str, Any] = {"train_time_s_median": median(times), "steps": steps[0] if len(steps) == 1 else steps,
                           "budget": "equal time" if outcome.group.links.steps_match else "equal steps"}
    if outcome.matched is not None:
        row["matched_steps"] = outcome.matched
    for key in ("guarded", "rejected_steps"):
        shares = [float(x[key]) for x in results if _finite(x.get(key))]
        row[f"{key}_mean"] = float(np.mean(shares)) if shares else None
    source = outcome.group.links.loss_source
    if source is not None:
        row["loss_source"] = {"from": source.text(), "method": source.method, "setting": source.setting
                              or outcome.group.setting, "approx": source.approx, "file": outcome.loss_file}
    return row


def _extension_notes(outcome: GroupOutcome, edges: list[dict]) -> list[dict]:
    """How each edge was extended and why the extension stopped."""
    at_edge = {(e["option"], e["end"]) for e in edges}
    notes = []
    for key, note in outcome.extensions.items():
        stopped = note["stopped"] or (f"max_extensions reached ({outcome.rounds} rounds)" if key in at_edge
                                      else "the choice is interior")
        notes.append({**note, "stopped": stopped})
    return notes


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
    lines += [f"Evaluation seeds {', '.join(map(str, study.seeds))}; grids chosen on the selection part of the validation "
              f"split of seed {study.selection_seed} (no method trains or meta-trains on it); baseline `{study.baseline}`; p: two-sided paired t-test by seed"
              + (f" (Wilcoxon too, n ≥ {MIN_WILCOXON_PAIRS})." if len(study.seeds) >= MIN_WILCOXON_PAIRS else "."),
              ""]
    for setting in study.settings:
        lines += [f"## {setting}", "",
                  f"| method | chosen | {metric} mean ± std | worst | Δ vs baseline | p | wins | budget | steps | "
                  "train time (median) | × baseline | guarded | rejected steps |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
                         f"{delta} | {format_p(row.get('p_value')) if 'baseline' in row else ''} | {wins} | "
                         + _cost_cells(row))
        lines += ["", *_notes([r for r in rows if r["setting"] == setting])]
    lines += [f"Train time: {TRAIN_TIME_NOTE} guarded: mean share of per-sample gradients the descent guard "
              "reflected; rejected steps: mean share of steps it rejected (— : no guard in these runs).", ""]
    return "\n".join(lines)


TRAIN_TIME_NOTE = ("each run's wall_time_s (results.json): from after data loading to the end of training, the "
                   "offline phase, periodic validation and checkpoints included, the final evaluation excluded; "
                   "median over the seeds.")


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _cost_cells(row: dict[str, Any]) -> str:
    ratio = row.get("cost_vs_baseline")
    time = row.get("train_time_s_median")
    return (f"{row['budget']} | {row['steps']} | {'-' if time is None else f'{time:.3g} s'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}×'} | {_share(row.get('guarded_mean'))} | "
            f"{_share(row.get('rejected_steps_mean'))} |")


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """Lines under a setting's table: choices at a grid's edge, extensions, matched steps, reused losses."""
    lines = []
    for row in rows:
        name = row["method"]
        for edge in row.get("edges", []):
            lines.append(f"- `{name}`: chose {edge['option']} {edge['value']:g}, the {edge['end']} end of its grid "
                         f"{row['grid'][edge['option']]}" + ("" if row.get("extensions") else
                                                            "; the best value may lie outside it (extend_edges)"))
        for note in row.get("extensions", []):
            added = ", ".join(f"{v:g}" for v in note["added"]) or "nothing"
            lines.append(f"- `{name}`: {note['option']} extended at its {note['end']} end by {added}; "
                         f"stopped: {note['stopped']}")
        matched = row.get("matched_steps")
        if matched:
            lines.append(f"- `{name}`: equal time with `{matched['method']}`: {matched['steps']} steps = floor("
                         f"{matched['target_time_s']:.3g} s / ({matched['own_time_s']:.3g} s / "
                         f"{matched['own_steps']} steps)), both measured on the selection seed")
        source = row.get("loss_source")
        if source:
            lines.append(f"- `{name}`: the loss learned by `{source['method']}` in `{source['setting']}` on the "
                         f"selection seed{' (its --approx closed form)' if source['approx'] else ''}, trained fixed")
        if row.get("error"):
            lines.append(f"- `{name}`: not run: {row['error']}")
    return [*lines, ""] if lines else []


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
              "rows": rows, "wall_time_s": wall_time_s, "train_time_note": TRAIN_TIME_NOTE,
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
