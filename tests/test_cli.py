"""The lfl command line: contract files, config files, and one-line errors with exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_in_process, run_lfl

ROOT = Path(__file__).resolve().parents[1]


def lfl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """In process, with click's CliRunner (helpers.run_lfl); the smoke test below runs the real script."""
    return run_lfl(*args, cwd=cwd)


def lfl_subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_console_script_runs_and_fails_with_one_line():
    """The one subprocess smoke test: the real entry point, its help, and a user error's one line."""
    assert lfl_subprocess("--version").stdout.startswith("lfl, version")
    assert_one_line_error(lfl_subprocess("train", "--dataset", "imagenet"), "imagenet")


def test_version_and_help():
    assert lfl("--version").stdout.startswith("lfl, version")
    for command in ("train", "datasets", "bench"):
        result = lfl(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[32]", "--steps", "40",
         "--batch-size", "64", "--lr", "0.1", "--quiet", "--device", "cpu"]


def test_train_writes_results_loss_and_history(tmp_path):
    result = lfl(*TRAIN, "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "test_error" in result.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 40 and results["dataset"] == "digits" and results["model"] == "mlp"
    assert (tmp_path / "run" / "loss.json").exists() and (tmp_path / "run" / "history.jsonl").exists()


def test_config_file_sets_options_and_command_line_overrides(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('dataset = "digits"\nmodel = "mlp"\nmodel-option = ["hidden=[16]"]\nsteps = 20\n'
                      'batch_size = 32\nseed = 3\nlr = 0.2\n')
    result = lfl("train", "--config", str(config), "--seed", "4", "--quiet", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["seed"] == 4 and results["steps"] == 20 and results["config"]["batch_size"] == 32
    assert results["config"]["model_options"] == {"hidden": [16]}
    yaml_config = tmp_path / "run.yaml"
    yaml_config.write_text("dataset: digits\nmodel: mlp\nsteps: 10\nbogus: 1\n")
    assert_one_line_error(lfl("train", "--config", str(yaml_config)), "bogus")


def test_presets_sit_below_config_files_and_explicit_options(tmp_path, capsys):
    """Precedence on resolve_config itself (what lfl train calls with what was typed), in milliseconds:
    defaults < --preset < --config file (and the file's own preset) < explicit options. How a resolved
    loss_scale builds the loss is tested on make_loss (tests/test_train.py)."""
    from toolkit.runs.config import PRESETS, resolve_config

    paper = tmp_path / "paper.toml"
    paper.write_text('preset = "paper"\n')
    normalised = tmp_path / "normalised.toml"
    normalised.write_text('loss_scale = "normalised"\n')
    cases = {"default": ({}, {}), "preset": ({}, dict(preset="paper")),
             "explicit-wins": ({"loss_scale": "normalised"}, dict(preset="paper")),
             "file": ({}, dict(config_file=paper)), "file-over-preset": ({}, dict(preset="paper", config_file=normalised)),
             "explicit-over-file": ({"descent_guard": True}, dict(config_file=paper))}
    expected = {"default": ("normalised", 1e-4, True), "preset": ("free", 1e-3, False),
                "explicit-wins": ("normalised", 1e-3, False), "file": ("free", 1e-3, False),
                "file-over-preset": ("normalised", 1e-3, False), "explicit-over-file": ("free", 1e-3, True)}
    for name, (explicit, layers) in cases.items():
        config = resolve_config(explicit, **layers)
        assert (config.loss_scale, config.online_meta_lr, config.descent_guard) == expected[name], name
    assert PRESETS["paper"] == {"loss_scale": "free", "online_meta_lr": 1e-3, "descent_guard": False}
    code, _, err = run_in_process(["train", "--preset", "fancy"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "fancy" in err


@pytest.mark.parametrize("args, fragments", [
    (["train", "--dataset", "imagenet"], ["imagenet"]),
    (["train", "--dataset", "csv:/nonexistent/data.csv"], ["/nonexistent/data.csv"]),
    (["train", "--dataset", "digits", "--steps", "-5"], ["--steps"]),
    (["train", "--no-such-option"], ["--no-such-option"]),
    (["train", "--dataset", "digits", "--model", "transformer"], ["transformer"]),
    (["train", "--dataset", "digits", "--loss", "huber"], ["huber"]),
    (["train", "--dataset", "diabetes", "--model", "mlp", "--loss", "ce", "--steps", "1"], ["--loss mse"]),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], ["MNIST"]),
    (["train", "--resume"], ["--out"]),
    (["export"], ["export"]),
])
def test_bad_input_exits_2_with_one_line(args, fragments):
    env_free = lfl(*args)
    assert_one_line_error(env_free, *fragments)


def test_datasets_lists_where_files_are():
    result = lfl("datasets", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"mnist", "fashion-mnist", "cifar10", "digits", "diabetes"} <= rows.keys()
    assert rows["digits"]["found"]


@pytest.mark.slow
def test_seeds_in_parallel_processes(tmp_path):
    result = lfl(*TRAIN, "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and "±" in result.stdout
    seeds = [json.loads((tmp_path / "sweep" / f"seed-{s}" / "results.json").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]


@pytest.mark.parametrize("files, args, fragments", [
    ({"c.toml": "steps = 5.7\n"}, ["train", "--config", "c.toml"], ["--steps must be an integer", "5.7"]),
    ({"c.toml": "steps = {a = 1}\n"}, ["train", "--config", "c.toml"], ["'steps'", "not a table"]),
    ({"c.toml": "nesterov = 1\n"}, ["train", "--config", "c.toml"], ["--nesterov must be true or false"]),
    ({}, ["train", "--seeds", "", "--out", "o"], ["--seeds needs at least one seed"]),
    ({}, ["train", "--seed", "-1"], ["--seed must be in"]),
    ({}, ["train", "--seed", "99999999999999999999"], ["--seed must be in"]),
    ({}, ["train", "--resume", "--overwrite", "--out", "o"], ["choose one of --resume and --overwrite"]),
    ({"f": "x"}, ["train", "--dataset", "digits", "--out", "f/run"], ["lies under a file"]),
    ({}, ["train", "--dataset", "digits", "--valid-fraction", "0"], ["validation split is too small"]),
    ({}, ["bench", "--batch-size", "-5"], ["--batch-size must be >= 1"]),
    ({}, ["bench", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    ({}, ["train", "--optimizer", "adam", "--momentum", "0.9"], ["--momentum and --nesterov belong to --optimizer sgd"]),
    ({}, ["train", "--optimizer", "lion"], ["--optimizer", "lion"]),
    ({}, ["train", "--dataset", "digits", "--tensorboard"], ["--tensorboard writes under --out"]),
    ({"c.toml": 'optimizer = "rmsprop"\n'}, ["train", "--config", "c.toml"], ["--optimizer", "rmsprop"]),
])
def test_user_errors_in_process_are_one_line(tmp_path, monkeypatch, capsys, files, args, fragments):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code, _, err = run_in_process(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_second_run_into_the_same_out_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_in_process([*TRAIN, "--steps", "5", "--out", out], capsys)[0] == 0
    code, _, err = run_in_process([*TRAIN, "--steps", "5", "--out", out], capsys)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert run_in_process([*TRAIN, "--steps", "6", "--out", out, "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 6


def test_tensorboard_without_the_package_exits_2_and_loses_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_in_process([*TRAIN, "--steps", "5", "--out", str(out)], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    for extra in ([], ["--seeds", "0,1"]):
        code, _, err = run_in_process([*TRAIN, "--steps", "6", "--out", str(out), "--overwrite", "--tensorboard",
                                       *extra], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "pip install tensorboard" in lines[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_replaces_metrics_csv_and_tensorboard_events(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    run = [*TRAIN, "--log-every", "10", "--out", str(out)]
    assert run_in_process([*run, "--steps", "20", "--tensorboard"], capsys)[0] == 0
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert run_in_process([*run, "--steps", "10", "--overwrite"], capsys)[0] == 0
    assert not (out / "tensorboard").exists()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "phase,step,name,value" and {r.split(",")[1] for r in rows[1:]} == {"10"}


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.slow
def test_adam_base_optimisers_train_every_kind_of_loss(tmp_path, capsys, optimizer):
    """--optimizer reaches the CE baseline (torch.optim's own), AdaLFL's lookahead and the record."""
    for loss in ("ce", "adalfl"):
        out = tmp_path / f"{loss}"
        code, _, err = run_in_process([*TRAIN, "--loss", loss, "--init-steps", "2", "--steps", "6", "--lr", "0.003",
                                       "--optimizer", optimizer, "--weight-decay", "0.01", "--out", str(out)], capsys)
        assert code == 0, err
        results = json.loads((out / "results.json").read_text())
        assert results["config"]["optimizer"] == optimizer and results["status"] == "finished"
