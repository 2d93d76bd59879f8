"""Shared files and formulas are untrusted: no code runs, each bad input is one line with exit 2.

The parser itself has its corpus in test_losses_formula_parser.py; here every way a formula
reaches the toolkit (command line, formula file, config file, loss.json, a run's snapshots)
is driven through ``lfl`` in this process, and the export → --loss-from round trip is checked
for every format.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_in_process

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "5",
         "--batch-size", "32", "--quiet", "--device", "cpu"]


def payloads(marker: Path) -> list[str]:
    command = f"__import__('os').system('touch {marker}')"
    return [
        f"(lambda: {command})()*0+(y_pred-y)**2",
        command,
        f"exec(\"{command}\")",
        "().__class__.__bases__[0].__subclasses__()",
        f"y_pred + getattr(__builtins__, 'eval')(\"{command}\")",
        f"Symbol('x') + {command}",
        "open('/etc/passwd').read()",
        "y_pred.func(y)",
    ]


def assert_one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert len(lines[0]) < 500
    return lines[0]


@pytest.mark.parametrize("index", range(8))
def test_hostile_formulas_never_run_from_any_way_in(tmp_path, monkeypatch, capsys, index) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    payload = payloads(marker)[index]
    formula_file = tmp_path / "formula.txt"
    formula_file.write_text(payload)
    config = tmp_path / "run.toml"
    config.write_text(f"loss_from = {json.dumps(payload)}\n")
    loss_file = tmp_path / "loss.json"
    loss_file.write_text(json.dumps({"format_version": 1, "kind": "symbolic", "dtype": "float32",
                                     "config": {"expression": payload, "task": "classification"},
                                     "parameters": {"constants": []}}))
    for args in ([*TRAIN, "--loss-from", payload], [*TRAIN, "--loss-from", str(formula_file)],
                 ["train", "--config", str(config), "--dataset", "digits", "--model", "mlp", "--steps", "5", "--quiet"],
                 [*TRAIN, "--loss-from", str(loss_file)], ["export", str(loss_file)]):
        line = assert_one_line_error(*run_in_process(args, capsys)[::2])
        assert "allowed" in line or "unknown" in line or "formula" in line, line  # refused by the parser
    assert not marker.exists()


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory) -> Path:
    from toolkit.runs.run import train
    from toolkit.runs.common import TrainConfig

    out = tmp_path_factory.mktemp("untrusted") / "run"
    train(TrainConfig(dataset="digits", model="mlp", model_options={"hidden": (16,)}, loss="adalfl", init_steps=3,
                      steps=6, batch_size=32, snapshot_every=3, checkpoint_every=0, device="cpu"),
          out_dir=out, progress=False)
    return out


def test_a_hostile_snapshot_record_is_one_line_for_export_and_plot(learned_run, tmp_path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(learned_run, run)
    marker = tmp_path / "PWNED"
    record = {"phase": "train", "step": 3, "loss": {"format_version": 1, "kind": "symbolic", "dtype": "float32",
                                                   "parameters": {"constants": []},
                                                   "config": {"expression": payloads(marker)[0]}}}
    (run / "loss_snapshots.jsonl").write_text(json.dumps(record) + "\n")
    for args in (["export", str(run), "--step", "3"], ["plot", str(run), "--out", str(tmp_path / "fig")]):
        line = assert_one_line_error(*run_in_process(args, capsys)[::2])
        assert "record 1" in line
    (run / "loss_snapshots.jsonl").write_text('{"phase": "train"}\n')
    assert "not a loss snapshot" in assert_one_line_error(*run_in_process(["export", str(run), "--step", "3"],
                                                                          capsys)[::2])
    assert not marker.exists()


SUFFIXES = {"sympy": "txt", "json": "json", "latex": "tex", "python": "py"}
# The exact network as sympy text (hundreds of thousands of characters) is not in the matrix: it
# round-trips as json, and as sympy through --approx or --taylor.
ROUND_TRIPS = [(fmt, options) for fmt in SUFFIXES for options in (["--approx"], ["--taylor", "2"], [])
               if (fmt, options) != ("sympy", [])]


@pytest.mark.parametrize("fmt,options", ROUND_TRIPS)
@pytest.mark.slow
def test_export_then_loss_from_round_trip(learned_run, tmp_path, capsys, fmt, options) -> None:
    """What `lfl export` writes in a readable format trains again; LaTeX and Python are refused in one line."""
    path = tmp_path / f"loss.{SUFFIXES[fmt]}"
    code, _, err = run_in_process(["export", str(learned_run), "--format", fmt, *options, "-o", str(path)], capsys)
    assert code == 0, err
    code, out, err = run_in_process([*TRAIN, "--loss-from", str(path), "--out", str(tmp_path / "again")], capsys)
    if fmt in ("sympy", "json"):
        assert code == 0, err
        results = json.loads((tmp_path / "again" / "results.json").read_text())
        assert results["status"] == "finished" and results["loss"] == "reused"
    else:
        assert_one_line_error(code, err)
        assert not (tmp_path / "again").exists()
