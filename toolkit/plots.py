"""Figures of learned losses and runs (seaborn on matplotlib, no pyplot state).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so it
works the same in scripts, under ``lfl plot`` (no display needed) and in notebooks
(where the figure shows as the cell's value); :func:`save_figure` writes PNG and
SVG. matplotlib and seaborn are imported inside the functions: ``import toolkit``
stays light.

* :func:`plot_loss_evolution`: the learned loss at several training checkpoints.
* :func:`plot_loss_surface`: the loss over (y_pred, y).
* :func:`plot_learning_curves`: training loss and validation error over steps,
  mean and ±1 std band over seeds per method, final test error as a marker.
* :func:`plot_gradient_magnitude`: mean |∂ℓ/∂y_pred| over training (the learned
  loss's implicit learning-rate schedule) and the logged gradient-scale ratio.
* :func:`plot_final_errors`: final test error per method, mean ± std over seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

import losses

from .analysis import domain_grid, loss_values, prediction_gradient
from .rundir import AnalysisError, Run, check_one_dataset, method_labels, run_labels

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


def plot_loss_evolution(snapshots: Run | list[tuple[int, losses.LearnedLoss]], *, checkpoints: int = 6,
                        domain: tuple[float, float] | None = None, title: str | None = None):
    """The learned loss at up to ``checkpoints`` training steps, one line per step.

    Classification: one panel per target value, ℓ(y_pred | y=1) and ℓ(y_pred | y=0).
    Regression: ℓ(y_pred | y=0) over y_pred.

    Args:
        snapshots: a run (its ``loss_snapshots.jsonl``) or ``(step, loss)`` pairs.
        checkpoints: how many snapshots to draw, spread evenly (first and last always).
        domain: y_pred interval (default [0, 1] for classification, [−3, 3] for regression).
        title: figure title (default names the run).
    """
    pairs = list(snapshots.snapshots()) if isinstance(snapshots, Run) else list(snapshots)
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
    name = f": {snapshots.name}" if isinstance(snapshots, Run) else ""
    fig.suptitle(title or f"Learned loss during training{name}")
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


def plot_learning_curves(runs: list[Run], *, title: str | None = None):
    """Training loss and validation error over steps; mean and ±1 std band over the runs of each method.

    The final test error of each method is drawn at the last step (mean ± std).
    """
    import pandas as pd
    import seaborn as sns

    if not runs:
        raise AnalysisError("give at least one run")
    check_one_dataset(runs)
    metric = _metric_name(runs, "valid")
    labels = method_labels(runs)
    train = pd.DataFrame([{"method": m, "seed": r.seed, "step": rec["step"], "value": rec["train_loss"]}
                          for r, m in zip(runs, labels) for rec in r.records("train")
                          if rec.get("train_loss") is not None])
    valid = pd.DataFrame([{"method": m, "seed": r.seed, "step": rec["step"], "value": rec[metric]}
                          for r, m in zip(runs, labels) for rec in r.records("eval") if rec.get(metric) is not None])
    if train.empty and valid.empty:
        raise AnalysisError("the runs have no history records (history.jsonl) to draw")
    methods = sorted(set(labels))
    colours = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    fig, (ax_train, ax_valid) = _figure(2)
    for ax, data in ((ax_train, train), (ax_valid, valid)):
        if not data.empty:
            sns.lineplot(data=data, x="step", y="value", hue="method", hue_order=methods, palette=colours,
                         errorbar="sd", ax=ax)
    test_metric = _metric_name(runs, "test")
    for method in methods:
        finals = [r.results.get(test_metric) for r, m in zip(runs, labels) if m == method]
        finals = [v for v in finals if v is not None]
        last = max((r.results.get("steps", 0) for r, m in zip(runs, labels) if m == method), default=0)
        if finals:
            ax_valid.errorbar([last], [np.mean(finals)], yerr=[np.std(finals)], fmt="D", color=colours[method],
                              capsize=4, markersize=6)
    ax_train.set_title("training loss (the loss being minimised)")
    ax_train.set_xlabel("step")
    ax_train.set_ylabel("training loss")
    ax_valid.set_title("validation error (◆ final test error)")
    ax_valid.set_xlabel("step")
    ax_valid.set_ylabel(metric.replace("_", " "))
    fig.suptitle(title or "Learning curves (mean ± std over seeds)")
    return fig


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
        for name in (k for k in rows[0] if k != "step"):
            ax.plot([r["step"] for r in rows], [r[name] for r in rows], marker="o", markersize=3,
                    label=PART_TITLES.get(name, name))
        ax.set_yscale("log")
        ax.set_title("mean |∂ℓ/∂ŷ| over the domain")
        ax.set_xlabel("step")
        ax.set_ylabel("mean |∂ℓ/∂ŷ|")
        ax.legend(fontsize="small")
    if ratios:
        ax = axes[-1]
        ax.plot(*zip(*ratios), marker="o", markersize=3, color="tab:red")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title("gradient scale vs the task loss")
        ax.set_xlabel("step")
        ax.set_ylabel("‖∂M/∂f‖ / ‖∂L_task/∂f‖")
    fig.suptitle(title or f"Learned-loss gradient over training: {run.name}")
    return fig


def plot_diagnostics(run: Run, *, title: str | None = None):
    """A learned-loss run's health over steps: meta-objective, training loss, gradient scale, skipped updates.

    Reads the ``train`` records of ``history.jsonl`` (every ``--log-every`` steps), and the offline
    phase's meta-objective when there was one.
    """
    records = [r for r in run.records("train") if r.get("meta_loss") is not None]
    init = [r for r in run.records("init") if r.get("meta_loss") is not None]
    if not records and not init:
        raise AnalysisError(f"{run.path} has no meta-objective records: it is not a learned-loss run")
    fig, axes = _figure(4, width=4.2)
    ax = axes[0]
    if init:
        ax.plot([r["step"] - init[-1]["step"] for r in init], [r["meta_loss"] for r in init],
                color="tab:grey", label="offline phase")
    ax.plot([r["step"] for r in records], [r["meta_loss"] for r in records], color="tab:blue", label="online")
    ax.set_title("meta-objective L_task(θ')")
    ax.set_xlabel("step (offline phase before 0)")
    ax.legend(fontsize="small")
    panels = (("train_loss", "training loss M (learned)", "tab:green", False),
              ("grad_ratio", "‖∂M/∂f‖ / ‖∂L_task/∂f‖", "tab:red", True))
    for ax, (key, label, colour, log) in zip(axes[1:3], panels):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), color=colour)
        if log:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("step")
    ax = axes[3]
    for key, colour in (("skipped_base", "tab:orange"), ("skipped_meta", "tab:purple")):
        ax.step([r["step"] for r in records], [r.get(key, 0) for r in records], where="post", color=colour,
                label=key.replace("_", " "))
    ax.set_title("skipped non-finite updates (total)")
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
    fig.suptitle(title or f"Learned-loss diagnostics: {run.name}")
    return fig


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
    fig, (ax,) = _figure(1, width=max(4.0, 1.2 * len(order) + 2))
    sns.barplot(data=data, x="method", y="value", order=order, errorbar="sd", capsize=0.2, alpha=0.6, ax=ax,
                hue="method", hue_order=order, palette="colorblind", legend=False)
    sns.stripplot(data=data, x="method", y="value", order=order, color="black", size=4, ax=ax)
    ax.set_xlabel("method")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or "Final test error per method (mean ± std over seeds)")
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
        written += _save(plot_loss_evolution(snapshots, title=f"Learned loss during training: {run.name}"),
                         out / f"loss_evolution_{label}", formats)
        written += _save(plot_gradient_magnitude(run, snapshots=snapshots), out / f"loss_gradient_{label}", formats)
        if any(r.get("meta_loss") is not None for r in run.records("train")):
            written += _save(plot_diagnostics(run), out / f"diagnostics_{label}", formats)
        final = run.loss_at() if (run.path / "loss.json").exists() else snapshots[-1][1]
        written += _save(plot_loss_surface(final, title=f"Learned loss surface ℓ(y, ŷ): {run.name}"),
                         out / f"loss_surface_{label}", formats)
    return written


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = save_figure(fig, stem, formats)
    fig.clear()
    return paths


__all__ = ["plot_loss_evolution", "plot_loss_surface", "plot_learning_curves", "plot_gradient_magnitude",
           "plot_final_errors", "plot_runs", "save_figure", "gradient_magnitudes", "pick_evenly", "FORMATS"]
