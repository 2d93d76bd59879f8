"""lfl study holds its --out alone, reuses only consistent results, and stops its workers on a signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_lfl
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig
from toolkit.runs.run_directory import DirectoryLock
from toolkit.runs.study import finished_results
from toolkit.runs.study_spec import load_study
from toolkit.runs.study import run_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = """
[study]
dataset = "digits"
model = "mlp"
model_options = { hidden = [8] }
seeds = [0]
steps = %d
batch_size = 32
log_every = 10
checkpoint_every = 0
device = "cpu"

[[method]]
name = "ce"
loss = "ce"
lr = [0.01, 0.1]
"""


def test_a_second_study_on_the_same_out_is_refused_at_once(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY % 4)
    with DirectoryLock(tmp_path / "out", what="study"):
        with pytest.raises(ConfigError, match=r"in use by another study \(pid \d+"):
            run_study(load_study(path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "runs").exists()  # refused before any run was scheduled


def _finished(tmp_path: Path) -> tuple[Path, TrainConfig, dict]:
    config = TrainConfig(dataset="digits", model="mlp", model_options={"hidden": (8,)}, steps=4, batch_size=32,
                         log_every=2, checkpoint_every=0, device="cpu")
    from toolkit.runs.run import train

    train(config, out_dir=tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    return tmp_path / "run", config, results


@pytest.mark.parametrize("edit", [
    {"test_error": "0.01"},            # a string
    {"test_error": -0.5},              # out of range
    {"valid_error": None},             # missing its number
    {"test_loss": float("inf")},       # json.dumps writes Infinity
    {"steps": 600},                    # another step count than the config's
    {"seed": 7},
])
def test_a_tampered_finished_run_is_not_reused(tmp_path, edit):
    run, config, results = _finished(tmp_path)
    assert finished_results(run, config) == results
    (run / "results.json").write_text(json.dumps({**results, **edit}))
    assert finished_results(run, config) is None


def test_ctrl_c_prints_the_resume_hint_not_aborted(tmp_path, capsys, monkeypatch):
    """click turns KeyboardInterrupt into Abort; the user still gets the resume hint."""
    from cli import main
    import toolkit.runs.run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "digits", "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert "Interrupted; the last checkpoint is kept: rerun lfl train with --resume" in err and "Aborted" not in err


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sigterm_to_a_study_stops_its_workers(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(STUDY % 100000)  # far longer than the test waits
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    study = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "study", str(path), "--out", str(tmp_path / "out"),
                              "--jobs", "2", "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_children(study.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = _children(study.pid)
        assert len(workers) >= 2, "the study did not start its workers"
        while not list((tmp_path / "out" / "runs").glob("*/seed-*/.lock")) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        study.send_signal(signal.SIGTERM)
        _, err = study.communicate(timeout=60)
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 130, err
    assert "Interrupted" in err
    time.sleep(1)
    alive = {pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "Z" not in (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]}
    assert not alive, f"workers {alive} outlived the study"
    assert run_lfl("study", path, "--out", tmp_path / "out", "--dry-run").returncode == 0
