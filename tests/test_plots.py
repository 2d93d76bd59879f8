"""Figures (toolkit.analysis.plots): titles, axis labels, readable scales and ticks, non-empty PNG/SVG files, on small
synthetic runs shaped like real ones (a learned loss in the thousands beside cross-entropy below 1)."""
from __future__ import annotations

import copy

import json

import pytest

from helpers import write_run
import torch

import losses
from toolkit.analysis.plots import (plot_diagnostics, plot_final_errors, plot_gradient_magnitude, plot_learning_curves, plot_loss_evolution,
                           plot_loss_surface, plot_runs, save_figure)
from toolkit.analysis.rundir import AnalysisError, find_runs


def _write_run(path, *, loss: str, seed: int, error: float, learned: bool, grad_ratios=(1.5, 1.5, 1.5),
               config: dict | None = None) -> None:
    scale = 1000.0 if learned else 1.0  # AdaLFL's learned loss M runs in the thousands, cross-entropy below 1
    history = [{"phase": "train", "step": s, "lr": 0.1, "train_loss": scale * (2.0 / s + 0.01 * seed), "grad_ratio": g}
               for s, g in zip((10, 20, 30), grad_ratios)]
    if learned:
        history = [{"phase": "init", "step": s, "meta_loss": 3.0 - s / 50, "skipped": 0} for s in (25, 50)] + [
            {**r, "meta_loss": 1.0 / r["step"], "skipped_base": 0, "skipped_meta": int(r["step"] == 30)}
            for r in history]
    history += [{"phase": "eval", "step": s, "valid_error": error + 0.1 / s, "valid_loss": 1.0} for s in (10, 30)]
    snapshots, loss_module = [], None
    if learned:
        torch.manual_seed(seed)
        loss_module = losses.MLPLoss(hidden=(4,))
        if seed == 1:  # the default normalised parameterisation, as lfl train writes it
            loss_module = losses.GradientScaledLoss(loss_module)
        for step in (0, 10, 20, 30):
            snapshots.append((step, copy.deepcopy(loss_module)))
            with torch.no_grad():
                for p in loss_module.parameters():
                    p.mul_(1.2)
    write_run(path, loss=loss, seed=seed, error=error, steps=30, config=config, history=history,
              snapshots=snapshots, final_loss=loss_module)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        _write_run(root / "adalfl" / f"seed-{seed}", loss="adalfl", seed=seed, error=0.1 + 0.01 * seed, learned=True)
        _write_run(root / "ce" / f"seed-{seed}", loss="ce", seed=seed, error=0.12 + 0.01 * seed, learned=False)
    return find_runs([root])


def _labels(ax) -> tuple[str, str, str]:
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel()


def test_loss_evolution(runs):
    run = next(r for r in runs if r.method == "adalfl-mlp")
    fig = plot_loss_evolution(run, checkpoints=3)
    assert fig.get_suptitle() == "Learned loss during training: adalfl/seed-0"  # seed-N alone names no method
    (ax1, ax0) = fig.axes
    assert _labels(ax1) == ("target class (y = 1)", "predicted probability ŷ", "loss ℓ(ŷ | y = 1)")
    assert _labels(ax0)[0] == "other classes (y = 0)"
    assert [line.get_label() for line in ax0.get_lines()] == ["step 0", "step 20", "step 30"]
    with pytest.raises(AnalysisError, match="no loss snapshots"):
        plot_loss_evolution(next(r for r in runs if r.method == "ce"))


def test_loss_surface_and_regression_curves():
    torch.manual_seed(0)
    fig = plot_loss_surface(losses.TaylorLoss(task="regression", order=2), points=21)
    assert _labels(fig.axes[0]) == ("Learned loss surface ℓ(y, ŷ)", "prediction ŷ", "target y")
    assert fig.axes[1].get_ylabel() == "loss ℓ(y, ŷ)"  # the colour bar
    evolution = plot_loss_evolution([(0, losses.SquaredErrorLoss()), (5, losses.MLPLoss(task="regression"))])
    assert _labels(evolution.axes[0]) == ("target y = 0", "prediction ŷ", "loss ℓ(ŷ | y = 0)")


def test_learning_curves_gradient_and_final_errors(runs):
    curves = plot_learning_curves(runs)
    valid, train_ce, train_learned = curves.axes
    assert curves.get_suptitle() == "Learning curves (mean ± std over seeds)"
    assert _labels(valid) == ("validation error (◆ final test error)", "step", "validation error (fraction wrong)")
    # runs written before task_loss/learned_loss: their train_loss reads as the task loss for ce, M for adalfl
    assert _labels(train_ce) == ("task loss on training batches: cross-entropy", "step",
                                 "cross-entropy (training batch)")
    assert _labels(train_learned) == ("learned loss M: adalfl-mlp", "step", "learned loss M (its own scale)")
    assert sorted(t.get_text() for t in curves.legends[0].get_texts()) == ["adalfl-mlp", "ce"]
    assert all(len(ax.collections) >= 1 for ax in (train_ce, train_learned))  # a ±1 std band per method
    run = next(r for r in runs if r.method == "adalfl-mlp")
    gradient = plot_gradient_magnitude(run)
    assert [ax.get_ylabel() for ax in gradient.axes] == ["mean |∂ℓ/∂ŷ| (log scale)",
                                                         "‖∂M/∂f‖ / ‖∂L_task/∂f‖ (log scale)"]
    assert gradient.axes[0].get_yscale() == "log"
    diagnostics = plot_diagnostics(run)
    assert [ax.get_title() for ax in diagnostics.axes] == [
        "meta-objective L_task(θ')", "training batch: M and the task loss", "‖∂M/∂f‖ / ‖∂L_task/∂f‖",
        "skipped non-finite updates (total)"]
    assert [line.get_label() for line in diagnostics.axes[0].get_lines()] == ["offline phase", "online"]
    assert list(diagnostics.axes[3].get_lines()[1].get_ydata()) == [0, 0, 1]
    with pytest.raises(AnalysisError, match="not a learned-loss run"):
        plot_diagnostics(next(r for r in runs if r.method == "ce"))
    final = plot_final_errors(runs)
    assert _labels(final.axes[0]) == ("Final test error per method", "test error (bar: mean ± std over seeds; "
                                      "dots: seeds)", "")
    assert [t.get_text() for t in final.axes[0].get_yticklabels()] == ["adalfl-mlp", "ce"]  # long labels fit


def test_each_training_loss_fills_its_own_axis(runs):
    """A learned loss in the thousands and cross-entropy below 1 never share a linear axis (a flat line)."""
    curves = plot_learning_curves(runs)
    checked = 0
    for ax in (ax for ax in curves.axes if ax.get_title().startswith(("task loss", "learned loss"))):
        low, high = ax.get_ylim()
        for line in ax.get_lines():
            values = line.get_ydata()
            assert (values.max() - values.min()) / (high - low) > 0.3, (ax.get_title(), line.get_label())
            checked += 1
    assert checked == 2  # one mean curve per method


def test_long_method_labels_neither_overlap_nor_cover_the_curves(tmp_path):
    """Runs of one method with other settings get labels like 'adalfl-mlp [descent_guard=false, ...]'."""
    for i, (guard, scale) in enumerate([(False, "free"), (True, "normalised")]):
        _write_run(tmp_path / f"adalfl-{i}", loss="adalfl", seed=0, error=0.1, learned=True,
                   config={"descent_guard": guard, "loss_scale": scale, "online_meta_lr": 10.0 ** -(3 + i)})
    _write_run(tmp_path / "ce", loss="ce", seed=0, error=0.12, learned=False)
    runs = find_runs([tmp_path])
    final = plot_final_errors(runs)
    final.draw_without_rendering()
    boxes = [t.get_window_extent() for t in final.axes[0].get_yticklabels()]
    assert len(boxes) == 3 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    curves = plot_learning_curves(runs)
    curves.draw_without_rendering()
    legend = curves.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in curves.axes if ax.get_visible())


def _visible_tick_texts(ax) -> tuple[list[str], list[str]]:
    """The labels of the y ticks inside the view, major and minor, as drawn."""
    ax.figure.draw_without_rendering()
    low, high = ax.get_ylim()
    texts = []
    for minor in (False, True):
        ticks = ax.yaxis.get_minor_ticks() if minor else ax.yaxis.get_major_ticks()
        texts.append([t.label1.get_text() for t in ticks if low <= t.get_loc() <= high and t.label1.get_visible()])
    return texts[0], texts[1]


@pytest.mark.parametrize("ratios", [(1.0, 1.0, 1.0), (1.0, 0.9999999, 1.0), (0.8, 1.1, 1.4), (1e-3, 0.02, 30.0)],
                         ids=["constant", "barely-moving", "within-a-decade", "five-decades"])
def test_log_axes_have_distinct_readable_tick_labels(tmp_path, ratios):
    """A gradient ratio held at 1 once printed "1×10⁰" five times and "10×10⁻¹" on its log axis."""
    _write_run(tmp_path / "adalfl", loss="adalfl", seed=0, error=0.1, learned=True, grad_ratios=ratios)
    (run,) = find_runs([tmp_path])
    for ax in (plot_gradient_magnitude(run).axes[1], plot_diagnostics(run).axes[2]):
        major, minor = _visible_tick_texts(ax)
        assert len(major) >= 2 and len(set(major)) == len(major) and all(major), major
        assert not any(minor), minor
        assert not any("×10^{0}" in t or "10\\times" in t for t in major), major


def test_save_and_plot_runs_write_non_empty_png_and_svg(runs, tmp_path):
    paths = save_figure(plot_final_errors(runs), tmp_path / "final")
    assert [p.name for p in paths] == ["final.png", "final.svg"]
    assert paths[0].read_bytes().startswith(b"\x89PNG") and b"<svg" in paths[1].read_bytes()[:500]
    written = plot_runs(runs, tmp_path / "all", formats=["png"])
    names = sorted(p.name for p in written)
    assert names == sorted(["learning_curves.png", "final_test_error.png"]
                           + [f"{kind}_adalfl_seed-{s}.png" for kind in ("loss_evolution", "loss_gradient",
                                                                        "loss_surface", "diagnostics")
                              for s in (0, 1)])
    assert all(p.stat().st_size > 1000 for p in written)
    with pytest.raises(AnalysisError, match="unknown image format 'gif'"):
        plot_runs(runs, tmp_path / "bad", formats=["gif"])
    assert not (tmp_path / "bad").exists()


def test_import_toolkit_plots_stays_light():
    import subprocess
    import sys
    code = "import sys, toolkit.analysis.plots, toolkit.analysis.fit, toolkit.analysis.compare; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loss_shapes_scale_each_curve_to_its_range(tmp_path):
    """Cross-entropy, GCE and a learned loss on one figure: each curve spans [0, 1] where the loss varies,
    lies at 0 where it is flat (cross-entropy and GCE for y = 0), and the figure saves as PNG and SVG."""
    import numpy as np

    import losses
    from toolkit.analysis.plots import plot_loss_shapes, save_figure

    torch.manual_seed(0)
    fig = plot_loss_shapes({"ce": losses.CrossEntropyLoss(), "gce": losses.GeneralizedCrossEntropyLoss(),
                            "learned": losses.MLPLoss(hidden=(4,))})
    target, other = fig.axes[0], fig.axes[1]
    for line in target.get_lines():
        y = np.asarray(line.get_ydata())
        assert y.min() == pytest.approx(0.0) and y.max() == pytest.approx(1.0)
    p = np.asarray(target.get_lines()[0].get_xdata())
    ce = -np.log(p)
    np.testing.assert_allclose(target.get_lines()[0].get_ydata(), (ce - ce.min()) / (ce.max() - ce.min()), rtol=1e-9)
    assert np.all(np.asarray(other.get_lines()[0].get_ydata()) == 0)  # cross-entropy ignores y = 0
    assert all(path.exists() for path in save_figure(fig, tmp_path / "shapes"))


def test_cost_quality_places_each_row_at_its_cost_and_error(tmp_path):
    from toolkit.analysis.plots import plot_cost_quality, save_figure

    rows = [{"method": "ce", "cost_vs_baseline": 1.0, "test_error_mean": 0.13, "test_error_std": 0.01},
            {"method": "adalfl-k4", "cost_vs_baseline": 4.4, "test_error_mean": 0.134, "test_error_std": 0.005},
            {"method": "no-cost", "cost_vs_baseline": None, "test_error_mean": 0.2, "test_error_std": 0.0}]
    fig = plot_cost_quality(rows)
    ax = fig.axes[0]
    points = [tuple(float(v) for v in container.lines[0].get_xydata()[0]) for container in ax.containers]
    assert points == [(1.0, 0.13), (4.4, 0.134)] and ax.get_xscale() == "log"  # a row without a cost is left out
    assert all(path.exists() for path in save_figure(fig, tmp_path / "cost"))
