"""The lfl command line: contract files, config files, and one-line errors with exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lfl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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


def test_paper_preset_is_a_named_group_of_defaults(tmp_path):
    common = ("train", "--dataset", "digits", "--model", "logreg", "--loss", "ml3", "--init-steps", "2",
              "--steps", "2", "--quiet", "--checkpoint-every", "0")
    config = tmp_path / "paper.toml"
    config.write_text('preset = "paper"\n')
    cases = {"preset": ["--preset", "paper"], "explicit-wins": ["--preset", "paper", "--loss-scale", "normalised"],
             "file": ["--config", str(config)], "default": []}
    expected = {"preset": ("free", "mlp"), "explicit-wins": ("normalised", "gradient_scaled"),
                "file": ("free", "mlp"), "default": ("normalised", "gradient_scaled")}
    for name, extra in cases.items():
        out = tmp_path / name
        result = lfl(*common, *extra, "--out", str(out))
        assert result.returncode == 0, result.stderr
        saved = json.loads((out / "loss.json").read_text())
        assert (json.loads((out / "results.json").read_text())["config"]["loss_scale"], saved["kind"]) \
            == expected[name], name
    assert_one_line_error(lfl(*common, "--preset", "fancy"), "fancy")


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


def test_seeds_in_parallel_processes(tmp_path):
    result = lfl(*TRAIN, "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and "±" in result.stdout
    seeds = [json.loads((tmp_path / "sweep" / f"seed-{s}" / "results.json").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
