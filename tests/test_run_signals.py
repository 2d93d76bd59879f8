"""A cluster's SIGTERM stops `lfl train` as Ctrl-C does: checkpoint kept, status interrupted, lock released."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigterm_mid_run_leaves_an_interrupted_run_that_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "cli.py"), "train", "--dataset", "digits", "--model", "mlp", "--steps",
               "1000000", "--batch-size", "32", "--checkpoint-every", "20", "--log-every", "20", "--device", "cpu",
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert (out / "checkpoint.pt").exists(), process.stderr.read() if process.poll() is not None else "no checkpoint"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr  # as Ctrl-C: click's "Aborted." and exit status 130
    assert "train step 20/1000000  task_loss" in stderr  # plain progress lines: stderr is a pipe, not a terminal
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["step"] >= 20
    assert (out / ".lock").read_text() == ""  # released: no stale lock naming a dead process
    resumed = subprocess.run([*command[:2], "train", "--out", str(out), "--resume", "--steps", "60", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "results.json").read_text())["status"] == "finished"
