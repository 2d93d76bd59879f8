"""Figures of learned losses and runs (seaborn on matplotlib, no pyplot state).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so it
works the same in scripts, under ``lfl plot`` (no display needed) and in notebooks
(where the figure shows as the cell's value); :func:`save_figure` writes PNG and
SVG. matplotlib and seaborn are imported inside the functions: ``import toolkit``
stays light.

* :func:`plot_loss_evolution`: the learned loss at several training checkpoints.
* :func:`plot_loss_surface`: the loss over (y_pred, y).
* :func:`plot_learning_curves`: validation error over steps (final test error as a
  marker) and training loss, one panel per loss scale; mean and ±1 std band over seeds.
* :func:`plot_gradient_magnitude`: mean |∂ℓ/∂y_pred| over training (the learned
  loss's implicit learning-rate schedule) and the logged gradient-scale ratio.
* :func:`plot_final_errors`: final test error per method, mean ± std over seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

import losses

from toolkit.layout import LOSS
from toolkit.analysis.fit import domain_grid, loss_values, prediction_gradient
from toolkit.analysis.rundir import AnalysisError, Run, check_one_dataset, method_labels, run_labels

FORMATS = ("png", "svg")
PART_TITLES = {"y=1": "target class (y = 1)", "y=0": "other classes (y = 0)"}


def _figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.8):
    import seaborn as sns
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _palette(n: int) -> list:
    import seaborn as sns
    return sns.color_palette("viridis", n)


def _wrap(text: str, width: int = 36) -> str:
    """``text`` broken at spaces into lines of about ``width`` characters (long method labels in titles and legends)."""
    import textwrap
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def _markers(points: list) -> dict:
    """Dots on a line of few points: a phase with a single record is otherwise invisible."""
    return dict(marker="o", markersize=3) if len(points) <= 30 else {}


def _run_name(run: Run) -> str:
    """``parent/name`` of a run directory: runs are often named seed-N, so the parent says which method it is."""
    return f"{run.path.parent.name}/{run.name}" if run.path.parent.name else run.name


def _tick_text(value: float, _position=None) -> str:
    """A log-axis tick as a plain number (0.002, 0.5, 20, 5000), or as m×10ⁿ far from 1."""
    if value <= 0 or not np.isfinite(value):
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0 ** exponent, 6)
    return f"$10^{{{exponent}}}$" if mantissa == 1 else f"${mantissa:g}\\times10^{{{exponent}}}$"


MIN_LOG_SPAN = 10.0
"""A log axis spans at least this factor, so it always has two or more labelled ticks."""


def _log_axis(ax, values: Iterable[float], *, include: Iterable[float] = ()) -> None:
    """Log-scale y axis whose tick labels are distinct and readable.

    matplotlib's default labels the minor ticks of an axis spanning less than a decade with
    rounded mantissas, which repeat ("1×10⁰, 1×10⁰", "10×10⁻¹") when the data barely move (a
    gradient ratio held at 1). Here the axis spans at least :data:`MIN_LOG_SPAN` around the data
    (and ``include``, e.g. a reference line at 1), major ticks sit at 1, 2 and 5 per decade (only
    at powers of ten over more than three decades) and only they are labelled.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    positive = [float(v) for v in (*values, *include) if v is not None and np.isfinite(v) and v > 0]
    if positive:
        lo, hi = min(positive), max(positive)
        if hi / lo < MIN_LOG_SPAN:
            centre, half = np.sqrt(lo * hi), np.sqrt(MIN_LOG_SPAN)
            lo, hi = centre / half, centre * half
        else:
            lo, hi = lo / 1.3, hi * 1.3
        ax.set_ylim(lo, hi)
    lo, hi = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if np.log10(hi / lo) <= 3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
    ax.yaxis.set_minor_formatter(NullFormatter())


LOG_LOSS_SPAN = 30.0
"""A loss axis turns logarithmic when its positive values span more than this factor."""


def _loss_axis(ax, values: Iterable[float], label: str) -> None:
    """Label a loss axis; log scale when one early spike (a first step 1,000× the rest) would flatten the curve."""
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > LOG_LOSS_SPAN:
        _log_axis(ax, values)
        label += " (log scale)"
    ax.set_ylabel(label)


def save_figure(fig, stem: str | Path, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.png`` / ``stem.svg`` (150 dpi); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise AnalysisError(f"unknown image format {fmt!r}: choose from {', '.join(FORMATS)}")
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, dpi=150, format=fmt)
        paths.append(path)
    return paths


def pick_evenly(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items``, always including the first and the last."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, count).round().astype(int)))]


def learner_snapshots(learner) -> list[tuple[int, losses.LearnedLoss]]:
    """``(step, loss)`` pairs from an ``OnlineLossLearner``'s snapshots (``learner.history`` holds the
    parameters; the loss module they belong to is the learner's own), as CPU copies."""
    import copy

    import torch

    pairs = []
    for snapshot in learner.history.snapshots:
        loss = copy.deepcopy(learner.loss).cpu()
        with torch.no_grad():
            for name, parameter in loss.named_parameters():
                parameter.copy_(snapshot["params"][name])
        pairs.append((int(snapshot["step"]), loss))
    return pairs


def _snapshot_pairs(snapshots) -> list[tuple[int, losses.LearnedLoss]]:
    from toolkit.meta.online import LossHistory, OnlineLossLearner

    if isinstance(snapshots, Run):
        return list(snapshots.snapshots())
    if isinstance(snapshots, OnlineLossLearner):
        return learner_snapshots(snapshots)
    if isinstance(snapshots, LossHistory):
        raise AnalysisError("learner.history holds the loss's parameters, not the loss: pass the learner itself, "
                            "plot_loss_evolution(learner)")
    return list(snapshots)


def plot_loss_evolution(snapshots: Run | list[tuple[int, losses.LearnedLoss]], *, checkpoints: int = 6,
                        domain: tuple[float, float] | None = None, title: str | None = None):
    """The learned loss at up to ``checkpoints`` training steps, one line per step.

    Classification: one panel per target value, ℓ(y_pred | y=1) and ℓ(y_pred | y=0).
    Regression: ℓ(y_pred | y=0) over y_pred.

    Args:
        snapshots: a run (its ``loss_snapshots.jsonl``), an ``OnlineLossLearner`` of your own loop (its
            snapshots, every ``snapshot_every`` steps), or ``(step, loss)`` pairs.
        checkpoints: how many snapshots to draw, spread evenly (first and last always).
        domain: y_pred interval (default [0, 1] for classification, [−3, 3] for regression).
        title: figure title (default names the run).
    """
    pairs = _snapshot_pairs(snapshots)
    if not pairs:
        where = f" in {snapshots.path}" if isinstance(snapshots, Run) else ""
        raise AnalysisError(f"no loss snapshots{where}: only learned losses (adalfl, ml3) are snapshotted")
    chosen = pick_evenly(pairs, checkpoints)
    task = chosen[0][1].task
    grid = domain_grid(task, domain, points=401 if task == "classification" else 81)
    if task == "regression":
        p = np.unique(grid["surface"][0])
        grid = {"y=0": (p, np.zeros_like(p))}
    fig, axes = _figure(len(grid))
    colours = _palette(len(chosen))
    for ax, (name, (p, y)) in zip(axes, grid.items()):
        for colour, (step, loss) in zip(colours, chosen):
            ax.plot(p, loss_values(loss, p, y), color=colour, label=f"step {step}")
        ax.set_title(PART_TITLES[name] if task == "classification" else "target y = 0")
        ax.set_xlabel("predicted probability ŷ" if task == "classification" else "prediction ŷ")
        ax.set_ylabel(f"loss ℓ(ŷ | {name.replace('=', ' = ')})")
    axes[-1].legend(title="training step", fontsize="small")
    name = f": {_run_name(snapshots)}" if isinstance(snapshots, Run) else ""
    fig.suptitle(title or f"Learned loss during training{name}")
    return fig


SHAPE_DOMAIN = (0.02, 1.0)
"""ŷ of :func:`plot_loss_shapes`: cross-entropy's −log ŷ is unbounded at 0, and would flatten every other curve."""


def plot_loss_shapes(named: dict[str, object], *, domain: tuple[float, float] = SHAPE_DOMAIN,
                     title: str | None = None):
    """Several classification losses side by side, each scaled to [0, 1] on each panel: ℓ(ŷ | y=1) and
    ℓ(ŷ | y=0) over the predicted probability ŷ.

    A gradient-normalised learned loss is a direction whose size comes from elsewhere, so only its shape
    can be compared with cross-entropy's or GCE's: each curve is (ℓ − min) / (max − min) over the panel's
    ŷ (a loss that is flat on a panel, as cross-entropy is for y = 0, is drawn at 0).

    Args:
        named: label → loss (anything with ``elementwise(y_pred, y_true)``: learned losses, and the
            standard and robust criteria of :mod:`losses`).
        domain: ŷ interval (default :data:`SHAPE_DOMAIN`).
    """
    grid = domain_grid("classification", domain, points=401)
    fig, axes = _figure(len(grid))
    colours = _palette(len(named))
    for ax, (part, (p, y)) in zip(axes, grid.items()):
        for colour, (label, loss) in zip(colours, named.items()):
            values = loss_values(loss, p, y)
            span = float(np.max(values) - np.min(values))
            shape = (values - np.min(values)) / span if span > 1e-12 * max(1.0, float(np.max(np.abs(values)))) \
                else np.zeros_like(values)
            ax.plot(p, shape, color=colour, label=label)
        ax.set_title(PART_TITLES[part])
        ax.set_xlabel("predicted probability ŷ")
        ax.set_ylabel(f"ℓ(ŷ | {part.replace('=', ' = ')}), scaled to [0, 1]")
    axes[-1].legend(fontsize="small")
    fig.suptitle(title or "Loss shapes")
    return fig


def plot_cost_quality(rows: list[dict], *, metric: str = "test_error", title: str | None = None):
    """What each method buys for what it costs: one point per study report row (``lfl study``'s
    report.json ``rows``), its training time over the baseline's on a log axis against its mean test
    metric, with the standard deviation over seeds as an error bar."""
    fig, (ax,) = _figure(1, width=6.0, height=4.2)
    colours = _palette(len(rows))
    several_settings = len({r.get("setting") for r in rows}) > 1
    for colour, row in zip(colours, rows):
        cost, mean, std = row.get("cost_vs_baseline"), row.get(f"{metric}_mean"), row.get(f"{metric}_std")
        if cost is None or mean is None:
            continue
        ax.errorbar([cost], [mean], yerr=[std or 0.0], fmt="o", color=colour, capsize=3,
                    label=f"{row['method']} ({row.get('setting', '')})" if several_settings else row["method"])
    ax.set_xscale("log")
    ax.set_xlabel("training time / baseline's (median over seeds)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (mean ± std over seeds)")
    ax.legend(fontsize="small")
    ax.set_title(title or "Cost and quality")
    return fig


def plot_loss_surface(loss: losses.LearnedLoss, *, domain: tuple[float, float] | None = None,
                      title: str | None = None, points: int = 101):
    """Filled contours of ℓ(y_pred, y) over the domain square (classification: [0, 1]², y one-hot at 0 and 1)."""
    lo, hi = domain or ((0.0, 1.0) if loss.task == "classification" else (-3.0, 3.0))
    axis = np.linspace(lo, hi, points)
    p, y = np.meshgrid(axis, axis)
    values = loss_values(loss, p, y)
    fig, (ax,) = _figure(1, width=5.5, height=4.5)
    contour = ax.contourf(p, y, values, levels=20, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="loss ℓ(y, ŷ)")
    ax.set_xlabel("prediction ŷ")
    ax.set_ylabel("target y")
    ax.set_title(title or "Learned loss surface ℓ(y, ŷ)")
    return fig


def _metric_name(runs: list[Run], prefix: str) -> str:
    regression = all(r.task == "regression" for r in runs)
    return f"{prefix}_mse" if regression else f"{prefix}_error"


DASHES = [(1, 0), (5, 2), (1.5, 1.5), (6, 2, 1.5, 2), (3, 1)]


def _training_losses(runs: list[Run], labels: list[str]):
    """The history's training losses as rows (method, seed, step, value, name), name task_loss or learned_loss."""
    import pandas as pd

    return pd.DataFrame([{"method": m, "seed": r.seed, "step": rec["step"], "value": rec[name], "name": name}
                         for r, m in zip(runs, labels) for rec in r.records("train")
                         for name in ("task_loss", "learned_loss") if rec.get(name) is not None],
                        columns=["method", "seed", "step", "value", "name"])


def _training_loss_panels(train, task_name: str) -> dict[str, tuple[str, list[str]]]:
    """Panel title → (loss name, method labels drawn there).

    The task loss on the training batches (logged for every method) shares one panel, so every
    method's values compare; a learned loss M has a scale of its own (often 1,000× cross-entropy's),
    so each method's learned loss gets a panel of its own.
    """
    panels: dict[str, tuple[str, list[str]]] = {}
    task_methods = sorted(set(train.loc[train["name"] == "task_loss", "method"]))
    if task_methods:
        panels[f"task loss on training batches: {task_name}"] = ("task_loss", task_methods)
    for method in sorted(set(train.loc[train["name"] == "learned_loss", "method"])):
        panels[f"learned loss M: {method}"] = ("learned_loss", [method])
    return panels


def plot_learning_curves(runs: list[Run], *, title: str | None = None):
    """Validation error and training loss over steps; mean and ±1 std band over the runs of each method.

    Validation error (one shared axis: every method is measured the same way) comes first, with each
    method's final test error at the last step (mean ± std). Then the task loss on the training batches,
    every method on one axis, and each learned loss's own value on a panel of its own
    (:func:`_training_loss_panels`), so that a learned loss in the thousands flattens no other curve.
    One legend below the panels names the methods by colour.
    """
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not runs:
        raise AnalysisError("give at least one run")
    check_one_dataset(runs)
    metric = _metric_name(runs, "valid")
    labels = method_labels(runs)
    train = _training_losses(runs, labels)
    valid = pd.DataFrame([{"method": m, "seed": r.seed, "step": rec["step"], "value": rec[metric]}
                          for r, m in zip(runs, labels) for rec in r.records("eval") if rec.get(metric) is not None])
    if train.empty and valid.empty:
        raise AnalysisError("the runs have no history records (history.jsonl) to draw")
    methods = sorted(set(labels))
    colours = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    dashes = dict(zip(methods, DASHES * len(methods)))  # colour and line style: neighbours in hue still differ
    task_name = "squared error" if metric.endswith("mse") else "cross-entropy"
    panels = _training_loss_panels(train, task_name)
    count = 1 + len(panels)
    columns = min(count, 3)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.0 * columns, 3.8 * -(-count // columns) + 0.3 * len(methods)), layout="constrained")
        axes = list(fig.subplots(-(-count // columns), columns, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    ax_valid = axes[0]
    if not valid.empty:
        sns.lineplot(data=valid, x="step", y="value", hue="method", hue_order=methods, palette=colours,
                     style="method", style_order=methods, dashes=dashes, errorbar="sd", ax=ax_valid, legend=False)
    _final_test_markers(ax_valid, runs, labels, methods, colours)
    ax_valid.set_title("validation error (◆ final test error)" if metric.endswith("error")
                       else "validation MSE (◆ final test MSE)")
    ax_valid.set_xlabel("step")
    ax_valid.set_ylabel("validation error (fraction wrong)" if metric.endswith("error") else "validation MSE")
    for ax, (panel_title, (name, members)) in zip(axes[1:], panels.items()):
        data = train[(train["name"] == name) & train["method"].isin(members)]
        sns.lineplot(data=data, x="step", y="value", hue="method", hue_order=members, palette=colours,
                     style="method", style_order=members, dashes=dashes, errorbar="sd", ax=ax, legend=False)
        ax.set_title(_wrap(panel_title, 44))
        ax.set_xlabel("step")
        _loss_axis(ax, data["value"], f"{task_name} (training batch)" if name == "task_loss"
                   else "learned loss M (its own scale)")
    handles = [Line2D([], [], color=colours[m], linewidth=2, dashes=dashes[m]) for m in methods]
    fig.legend(handles, [_wrap(m, 60) for m in methods], loc="outside lower center", title="method",
               ncols=min(len(methods), 2 if max(len(m) for m in methods) > 30 else 4), fontsize="small")
    fig.suptitle(title or "Learning curves (mean ± std over seeds)")
    return fig


def _final_test_markers(ax, runs: list[Run], labels: list[str], methods: list[str], colours: dict) -> None:
    """Each method's final test metric (mean ± std) just right of its last step, side by side, not on top."""
    test_metric = _metric_name(runs, "test")
    longest = max((r.results.get("steps", 0) for r in runs), default=0)
    offsets = np.linspace(-0.5, 0.5, len(methods)) * 0.04 * longest if len(methods) > 1 else [0.0]
    for offset, method in zip(offsets, methods):
        finals = [r.results.get(test_metric) for r, m in zip(runs, labels) if m == method]
        finals = [v for v in finals if v is not None]
        last = max((r.results.get("steps", 0) for r, m in zip(runs, labels) if m == method), default=0)
        if finals:
            ax.errorbar([last + 0.02 * longest + offset], [np.mean(finals)], yerr=[np.std(finals)], fmt="D",
                        color=colours[method], capsize=4, markersize=6)


def gradient_magnitudes(snapshots: Iterable[tuple[int, losses.LearnedLoss]], *, points: int = 401) -> list[dict]:
    """Per snapshot: step and mean |∂ℓ/∂y_pred| over the domain grid of each part."""
    rows = []
    for step, loss in snapshots:
        grid = domain_grid(loss.task, points=points if loss.task == "classification" else 41)
        row = {"step": step}
        for name, (p, y) in grid.items():
            row[name] = float(np.mean(np.abs(prediction_gradient(loss, p, y))))
        rows.append(row)
    return rows


def plot_gradient_magnitude(run: Run, *, snapshots: list[tuple[int, losses.LearnedLoss]] | None = None,
                            title: str | None = None):
    """Mean |∂ℓ/∂y_pred| of each snapshot, and the logged ratio ‖∂M/∂f‖ / ‖∂L_task/∂f‖, over steps (log scale).

    ``snapshots`` saves reading them again when the caller has them.
    """
    rows = gradient_magnitudes(run.snapshots() if snapshots is None else snapshots)
    ratios = [(r["step"], r["grad_ratio"]) for r in run.records("train") if r.get("grad_ratio") is not None]
    if not rows and not ratios:
        raise AnalysisError(f"{run.path} has neither loss snapshots nor logged gradient ratios")
    fig, axes = _figure(2 if rows and ratios else 1)
    if rows:
        ax = axes[0]
        parts = [k for k in rows[0] if k != "step"]
        for name in parts:
            ax.plot([r["step"] for r in rows], [r[name] for r in rows], marker="o", markersize=3,
                    label=PART_TITLES.get(name, name))
        _log_axis(ax, [r[name] for r in rows for name in parts])
        ax.set_title("mean |∂ℓ/∂ŷ| over the domain")
        ax.set_xlabel("step")
        ax.set_ylabel("mean |∂ℓ/∂ŷ| (log scale)")
        if len(parts) > 1:
            ax.legend(fontsize="small", loc="best")
    if ratios:
        ax = axes[-1]
        ax.plot(*zip(*ratios), marker="o", markersize=3, color="tab:red")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        _log_axis(ax, [v for _, v in ratios], include=(1.0,))
        ax.set_title("gradient scale vs the task loss (1 = equal)")
        ax.set_xlabel("step")
        ax.set_ylabel("‖∂M/∂f‖ / ‖∂L_task/∂f‖ (log scale)")
    fig.suptitle(title or f"Learned-loss gradient over training: {_run_name(run)}")
    return fig


def plot_diagnostics(run: Run, *, title: str | None = None):
    """A learned-loss run's health over steps, one panel per kind of record it has.

    The meta-objective (with the offline phase before step 0), the learned loss M beside the task loss
    on the training batches, the gradient scale, skipped non-finite updates, and the descent guard's
    shares per logging window: samples reflected, steps reflected in parameter space, steps rejected.
    Reads the ``train`` (and ``init``) records of ``history.jsonl``, written every ``--log-every`` steps.
    """
    records = run.records("train")
    init = [r for r in run.records("init") if r.get("meta_loss") is not None]
    has = lambda key: any(r.get(key) is not None for r in records)  # noqa: E731
    panels = [draw for draw, present in ((_meta_panel, has("meta_loss") or bool(init)),
                                         (_learned_loss_panel, has("learned_loss")),
                                         (_ratio_panel, has("grad_ratio")),
                                         (_skips_panel, has("skipped_base")),
                                         (_guard_panel, has("guarded"))) if present]
    if not {_meta_panel, _learned_loss_panel, _guard_panel} & set(panels):
        raise AnalysisError(f"{run.path} has no meta-objective, learned-loss or descent-guard records: "
                            "it is not a learned-loss run")
    fig, axes = _figure(len(panels), width=4.2)
    for ax, draw in zip(axes, panels):
        draw(ax, records, init, run.task)
        ax.set_xlabel("step")
    fig.suptitle(title or f"Learned-loss diagnostics: {_run_name(run)}")
    return fig


def _points(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


def _meta_panel(ax, records, init, task) -> None:
    online = _points(records, "meta_loss")
    if init:
        ax.plot([r["step"] - init[-1]["step"] for r in init], [r["meta_loss"] for r in init],
                color="tab:grey", label="offline phase", **_markers(init))
    if online:
        ax.plot(*zip(*online), color="tab:blue", label="online", **_markers(online))
    ax.set_title("meta-objective L_task(θ')")
    _loss_axis(ax, [r["meta_loss"] for r in init] + [v for _, v in online],
               f"{'squared error' if task == 'regression' else 'cross-entropy'} after the step")
    ax.legend(fontsize="small")
    ax.set_xlabel("step (offline phase before 0)")


def _learned_loss_panel(ax, records, init, task) -> None:
    learned, task_loss = _points(records, "learned_loss"), _points(records, "task_loss")
    ax.plot(*zip(*learned), color="tab:green", label="learned loss M", **_markers(learned))
    _loss_axis(ax, [v for _, v in learned], "learned loss M (its own scale)")
    ax.set_title("training batch: M and the task loss")
    if task_loss:
        twin = ax.twinx()
        twin.plot(*zip(*task_loss), color="tab:brown", linestyle="--", label="task loss", **_markers(task_loss))
        _loss_axis(twin, [v for _, v in task_loss], "squared error" if task == "regression" else "cross-entropy")
        twin.grid(False)
        ax.legend([*ax.get_lines(), *twin.get_lines()], ["learned loss M (left)", "task loss (right)"],
                  fontsize="small")


def _ratio_panel(ax, records, init, task) -> None:
    points = _points(records, "grad_ratio")
    ax.plot(*zip(*points), color="tab:red", **_markers(points))
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    _log_axis(ax, [v for _, v in points], include=(1.0,))
    ax.set_title("‖∂M/∂f‖ / ‖∂L_task/∂f‖")
    ax.set_ylabel("gradient-norm ratio (log scale, 1 = equal)")


def _skips_panel(ax, records, init, task) -> None:
    from matplotlib.ticker import MaxNLocator

    counts = [r.get(k, 0) for r in records for k in ("skipped_base", "skipped_meta")]
    for key, colour, style in (("skipped_base", "tab:orange", "-"), ("skipped_meta", "tab:purple", "--")):
        ax.step([r["step"] for r in records], [r.get(key, 0) for r in records], where="post", color=colour,
                linestyle=style, label=key.replace("_", " "))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.05 * max(counts + [1]), 1.1 * max(counts + [1]))  # counts: no negative or fractional ticks
    ax.set_title("skipped non-finite updates (total)")
    ax.set_ylabel("updates skipped so far")
    ax.legend(fontsize="small")


GUARD_SERIES = (("guarded", "samples reflected", "tab:red", "-"),
                ("guarded_steps", "steps reflected (parameter space)", "tab:blue", "--"),
                ("rejected_steps", "steps rejected (task loss's step taken)", "tab:grey", ":"))


def _guard_panel(ax, records, init, task) -> None:
    for key, label, colour, style in GUARD_SERIES:
        points = _points(records, key)
        if points:
            ax.plot(*zip(*points), color=colour, linestyle=style, label=label, **_markers(points))
    ax.axhline(0.5, color="black", linewidth=0.8, alpha=0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("descent guard (share per logging window)")
    ax.set_ylabel("share (0.5: the run warns above it)")
    ax.legend(fontsize="small")


def plot_final_errors(runs: list[Run], *, title: str | None = None):
    """Final test error per method: mean ± std over seeds (bars) and each run (dots)."""
    import pandas as pd
    import seaborn as sns

    check_one_dataset(runs)
    metric = _metric_name(runs, "test")
    data = pd.DataFrame([{"method": m, "value": r.results[metric]} for r, m in zip(runs, method_labels(runs))
                         if r.results.get(metric) is not None])
    if data.empty:
        raise AnalysisError(f"no finished runs with {metric} in results.json")
    order = sorted(data["method"].unique())
    data["method"] = data["method"].map(lambda m: _wrap(m, 30))  # method labels grow with differing settings
    order = [_wrap(m, 30) for m in order]
    lines = sum(m.count("\n") + 1 for m in order)
    fig, (ax,) = _figure(1, width=7.0, height=1.6 + 0.28 * lines + 0.25 * len(order))
    sns.barplot(data=data, y="method", x="value", order=order, errorbar="sd", capsize=0.2, alpha=0.6, ax=ax,
                hue="method", hue_order=order, palette="colorblind", legend=False, orient="h")
    sns.stripplot(data=data, y="method", x="value", order=order, color="black", size=4, ax=ax, orient="h")
    ax.set_ylabel("")
    ax.set_xlabel(f"{metric.replace('_', ' ')} (bar: mean ± std over seeds; dots: seeds)")
    ax.set_title(title or ("Final test error per method" if metric.endswith("error") else "Final test MSE per method"))
    return fig


def plot_runs(runs: list[Run], out_dir: str | Path, *, formats: Iterable[str] = FORMATS) -> list[Path]:
    """All figures for a set of runs into ``out_dir``: comparisons across runs, then per learned-loss run."""
    out = Path(out_dir)
    written: list[Path] = []
    formats = tuple(formats)
    check_one_dataset(runs)
    unknown = [f for f in formats if f not in FORMATS] or ([] if formats else ["(none)"])
    if unknown:
        raise AnalysisError(f"unknown image format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
    if any(r.history for r in runs):
        written += _save(plot_learning_curves(runs), out / "learning_curves", formats)
    if any(r.results for r in runs):
        written += _save(plot_final_errors([r for r in runs if r.results]), out / "final_test_error", formats)
    for run, label in zip(runs, run_labels(runs)):
        if not run.snapshot_path.exists():
            continue
        snapshots = list(run.snapshots())
        if not snapshots:
            continue
        written += _save(plot_loss_evolution(snapshots, title=f"Learned loss during training: {_run_name(run)}"),
                         out / f"loss_evolution_{label}", formats)
        written += _save(plot_gradient_magnitude(run, snapshots=snapshots), out / f"loss_gradient_{label}", formats)
        if any(r.get(k) is not None for r in run.records("train") for k in ("meta_loss", "learned_loss", "guarded")):
            written += _save(plot_diagnostics(run), out / f"diagnostics_{label}", formats)
        final = run.loss_at() if (run.path / LOSS).exists() else snapshots[-1][1]
        written += _save(plot_loss_surface(final, title=f"Learned loss surface ℓ(y, ŷ): {_run_name(run)}"),
                         out / f"loss_surface_{label}", formats)
    return written


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = save_figure(fig, stem, formats)
    fig.clear()
    return paths


__all__ = ["plot_loss_evolution", "plot_loss_surface", "plot_learning_curves", "plot_gradient_magnitude",
           "plot_final_errors", "plot_runs", "save_figure", "learner_snapshots", "plot_diagnostics",
           "gradient_magnitudes", "pick_evenly", "FORMATS"]
