"""lfl export / plot / compare on small run directories made here; bad input exits 2 with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
from helpers import run_in_process, run_lfl
import losses
from toolkit.runs.run import train
from toolkit.runs.common import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def lfl(*args: str) -> subprocess.CompletedProcess:
    """In process, with click's CliRunner (the console script itself is smoke-tested in test_cli.py)."""
    return run_lfl(*args, cwd=ROOT)


def lfl_in_process(capsys, *args: str) -> tuple[int, str, str]:
    return run_in_process([*map(str, args)], capsys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    common = dict(dataset="digits", model="mlp", batch_size=64, lr=0.1, device="cpu", steps=40, eval_every=20,
                  log_every=10, checkpoint_every=0, model_options={"hidden": (16,)})
    train(TrainConfig(loss="adalfl", init_steps=10, snapshot_every=20, **common), out_dir=root / "adalfl",
          progress=False)
    train(TrainConfig(loss="ce", **common), out_dir=root / "ce", progress=False)
    return root


def test_help_of_the_new_commands(capsys):
    for command in ("export", "plot", "compare"):
        code, out, _ = lfl_in_process(capsys, command, "--help")
        assert code == 0 and "Usage" in out


def test_export_approx_end_to_end(runs):
    result = lfl("export", runs / "adalfl", "--approx")
    assert result.returncode == 0, result.stderr
    expression = losses.SymbolicLoss(result.stdout.strip()).to_sympy()
    assert expression.free_symbols <= {losses.Y_PRED, losses.Y_TRUE}
    assert "terms, R²" in result.stderr and "[0, 1]" in result.stderr


@pytest.mark.slow
def test_export_formats(runs, capsys, tmp_path):
    code, out, _ = lfl_in_process(capsys, "export", runs / "ce")
    assert code == 0 and out.strip() == "-y*log(y_pred)"
    code, out, _ = lfl_in_process(capsys, "export", runs / "adalfl", "--step", 20, "--format", "python")
    assert code == 0
    namespace: dict = {}
    exec(out, namespace)
    snapshot = [loss for step, loss in _snapshots(runs / "adalfl") if step == 20][0]
    p, y = torch.rand(7, dtype=torch.float64), torch.tensor([1.0, 0, 0, 1, 0, 1, 0], dtype=torch.float64)
    np.testing.assert_allclose(namespace["loss"](p, y).numpy(), snapshot.double().elementwise(p, y).detach().numpy(),
                               rtol=1e-6)
    target = tmp_path / "approx.json"
    code, _, err = lfl_in_process(capsys, "export", runs / "adalfl", "--approx", "--format", "json", "-o", target)
    assert code == 0 and "R²" in err
    saved = json.loads(target.read_text())
    assert saved["approximation"]["r2"] > 0.99 and saved["approximation"]["n_terms"] <= 12
    approx = losses.load_loss(target)  # trainable again, normalised as the run's loss
    assert isinstance(approx, losses.GradientScaledLoss) and isinstance(approx.shape, losses.SymbolicLoss)
    code, out, err = lfl_in_process(capsys, "export", runs / "adalfl", "--taylor", 2, "--format", "latex")
    assert code == 0 and "y_{pred}" in out and "order 2" in err
    code, out, _ = lfl_in_process(capsys, "export", runs / "ce" / "loss.json", "--format", "json")
    assert code == 0 and json.loads(out)["kind"] == "cross_entropy"
    # The default learned loss is gradient-normalised: the formula is its shape, the note gives its scale.
    final = losses.load_loss(runs / "adalfl" / "loss.json")
    assert isinstance(final, losses.GradientScaledLoss)
    code, out, err = lfl_in_process(capsys, "export", runs / "adalfl")
    from losses.printing import formula_string
    header, formula = out.strip().split("\n")
    assert code == 0 and formula == formula_string(final.shape.to_sympy()).strip()
    assert header.startswith("# normalised:") and "--loss-scale normalised" in header
    assert f"at {float(final.scale.detach()):.4g}x the task loss's gradient norm" in err


def _snapshots(path: Path):
    from toolkit.analysis.rundir import read_run
    return read_run(path).snapshots()


def test_plot_end_to_end(runs, tmp_path):
    result = lfl("plot", runs, "--out", tmp_path / "figures", "--format", "png")
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert {p.name for p in written} >= {"learning_curves.png", "final_test_error.png",
                                         "loss_evolution_adalfl.png", "loss_surface_adalfl.png"}
    assert all(p.stat().st_size > 0 for p in written)


def test_compare_end_to_end(runs, capsys):
    result = lfl("compare", runs / "ce", runs / "adalfl", "--format", "markdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| dataset | model | method") and len(lines) == 4
    assert "| digits | mlp | ce | 1 |" in lines[2] and "adalfl-mlp" in lines[3]
    code, out, _ = lfl_in_process(capsys, "compare", runs, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("dataset,model,method,n,test_error_mean")


def test_bad_input_end_to_end(tmp_path):
    result = lfl("export", tmp_path / "missing")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"Error: run directory {tmp_path / 'missing'} does not exist"]


@pytest.mark.parametrize("args, fragment", [
    (["export"], "RUN_OR_LOSS"),
    (["export", "{runs}/adalfl", "--format", "yaml"], "yaml"),
    (["export", "{runs}/adalfl", "--step", "7"], "no loss snapshot at step 7"),
    (["export", "{runs}/ce", "--step", "0"], "no loss snapshots"),
    (["export", "{runs}/adalfl", "--approx", "--taylor", "2"], "--approx and --taylor"),
    (["export", "{runs}/adalfl", "--approx", "--domain", "0,x"], "LO,HI"),
    (["export", "{runs}/adalfl/results.json"], "results.json"),
    (["export", "{runs}", "--format", "sympy"], "not a run directory"),
    (["plot", "{runs}", "--out", "{tmp}/f", "--format", "gif"], "gif"),
    (["plot", "--out", "{tmp}/f"], "RUN..."),
    (["compare", "{tmp}/nothing"], "does not exist"),
    (["compare", "{runs}", "--baseline", "huber"], "huber"),
    (["compare", "{runs}", "--format", "html"], "html"),
])
def test_bad_input_exits_2_with_one_line(runs, tmp_path, capsys, args, fragment):
    args = [a.format(runs=runs, tmp=tmp_path) for a in args]
    code, out, err = lfl_in_process(capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
