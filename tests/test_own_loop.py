"""An own training loop around OnlineLossLearner.step writes, with RunWriter, a run directory that lfl plot,
lfl export and lfl compare read (toolkit.runs.writer), and plots the learner's loss directly."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import losses
from helpers import run_lfl
from toolkit.analysis.plots import plot_diagnostics, plot_loss_evolution
from toolkit.analysis.rundir import AnalysisError, read_run
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule
from toolkit.runs.writer import RunWriter

STEPS = 20


def _problem(seed: int):
    """Three Gaussian blobs in 5 dimensions: a tiny synthetic classification task."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 5, generator=g) * 2
    y = torch.randint(0, 3, (240,), generator=g)
    return centres[y] + torch.randn(240, 5, generator=g), y


def _own_loop(out, *, seed: int) -> tuple[OnlineLossLearner, dict]:
    torch.manual_seed(seed)
    x, y = _problem(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    learner = OnlineLossLearner(model, losses.MLPLoss(hidden=(8, 8)), rule=SGDRule(lr=0.05), snapshot_every=5)
    with RunWriter(out, dataset="blobs", model="mlp-16", loss="adalfl", seed=seed, config={"lr": 0.05}) as run:
        for step in range(1, STEPS + 1):
            rows = torch.randint(0, 160, (32,))
            valid_rows = torch.randint(160, 200, (32,))
            learner.step((x[rows], y[rows]), (x[valid_rows], y[valid_rows]))
            if step % 5 == 0:
                run.log_learner(learner)
                run.snapshot(step, learner.loss)
        with torch.no_grad():
            valid, test = model(x[160:200]), model(x[200:])
        run.evaluate(STEPS, valid_error=(valid.argmax(1) != y[160:200]).float().mean().item())
        results = run.finish(learner.loss, steps=STEPS, test_error=(test.argmax(1) != y[200:]).float().mean().item(),
                             test_loss=F.cross_entropy(test, y[200:]).item())
    return learner, results


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    learners = {seed: _own_loop(root / f"seed-{seed}", seed=seed) for seed in (0, 1)}
    return root, learners


def test_the_directory_holds_what_lfl_train_writes(own_runs):
    root, learners = own_runs
    run = read_run(root / "seed-0")
    learner, results = learners[0]
    for name in ("results.json", "loss.json", "history.jsonl", "metrics.csv", "loss_snapshots.jsonl"):
        assert (root / "seed-0" / name).is_file(), name
    assert {"test_error", "test_loss", "steps", "seed", "loss", "model", "dataset", "wall_time_s"} <= results.keys()
    records = run.records("train")
    assert [r["step"] for r in records] == [5, 10, 15, 20] and all("task_loss" in r and "learned_loss" in r
                                                                   for r in records)
    assert records[-1]["learned_loss"] == pytest.approx(float(learner.last["learned_loss"]))
    assert results["guarded"] == learner.guard_counts.totals()["guarded"]  # the run's share, not the last window's
    assert json.loads((root / "seed-0" / "results.json").read_text())["status"] == "finished"
    assert [step for step, _ in run.snapshots()] == [5, 10, 15, 20]


def _ce_loop(out, *, seed: int) -> None:
    """The baseline, an own loop on cross-entropy: RunWriter with no learned loss."""
    torch.manual_seed(seed)
    x, y = _problem(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with RunWriter(out, dataset="blobs", model="mlp-16", loss="ce", seed=seed, config={"lr": 0.05}) as run:
        for step in range(1, STEPS + 1):
            rows = torch.randint(0, 160, (32,))
            optimizer.zero_grad()
            value = F.cross_entropy(model(x[rows]), y[rows])
            value.backward()
            optimizer.step()
            if step % 5 == 0:
                run.log_train(step, task_loss=value.detach())
        with torch.no_grad():
            test = model(x[200:])
        run.finish(None, steps=STEPS, test_error=(test.argmax(1) != y[200:]).float().mean().item(),
                   test_loss=F.cross_entropy(test, y[200:]).item())


def test_lfl_export_and_compare_read_it(own_runs, tmp_path):
    root, _ = own_runs
    exported = run_lfl("export", root / "seed-0")
    assert exported.returncode == 0 and "y_pred" in exported.stdout and "descent guard" in exported.stderr
    for seed in (0, 1):
        _ce_loop(tmp_path / "ce" / f"seed-{seed}", seed=seed)
    compared = run_lfl("compare", root, tmp_path / "ce")
    assert compared.returncode == 0, compared.stderr
    rows = {line.split()[0] for line in compared.stdout.splitlines() if line.strip()}
    assert {"adalfl-mlp", "ce"} <= rows, compared.stdout


@pytest.mark.slow
def test_lfl_plot_reads_it(own_runs, tmp_path):
    root, _ = own_runs
    plotted = run_lfl("plot", root / "seed-0", root / "seed-1", "--out", tmp_path, "--format", "png")
    assert plotted.returncode == 0, plotted.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"learning_curves.png", "final_test_error.png", "diagnostics_seed-0.png"} <= names


def test_plots_take_the_learner_and_name_that_call_for_its_history(own_runs):
    learner, _ = own_runs[1][0]
    fig = plot_loss_evolution(learner)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["step 0", "step 5", "step 10", "step 15"]
    with pytest.raises(AnalysisError, match=r"plot_loss_evolution\(learner\)"):
        plot_loss_evolution(learner.history)
    diagnostics = plot_diagnostics(read_run(own_runs[0] / "seed-0"))
    assert "descent guard (share per logging window)" in [ax.get_title() for ax in diagnostics.axes]


def test_a_loop_that_fails_leaves_a_failed_status(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunWriter(tmp_path, dataset="blobs", model="m", loss="ce") as run:
            run.log_train(1, task_loss=1.0)
            1 / 0
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    assert (tmp_path / ".lock").read_text() == ""
