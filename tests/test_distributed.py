"""Data-parallel training on torch.distributed (gloo, 2 CPU processes) against the single-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distributed_workers import lookahead_steps, run_failing_worker, run_lookahead_worker
from toolkit.meta.distributed import SINGLE, Replicas
from toolkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _spawn(fn, tmp_path: Path, case: tuple, world: int = 2) -> None:
    mp.start_processes(fn, args=(world, str(tmp_path / "init"), str(tmp_path), case), nprocs=world,
                       start_method="spawn", join=True)


CASES = {
    "mlp-nesterov-guarded": ("mlp", "nesterov", True, False),
    "mlp-adamw-unguarded": ("mlp", "adamw", False, False),
    "residual-bn-sync": ("residual-bn-maxpool-dropout", "nesterov", True, True),
    "in-place-adamw": ("in-place", "adamw", True, False),
    "residual-bn-sync-reverse": ("residual-bn-maxpool-dropout", "nesterov", True, True, "reverse"),
    "mlp-adamw-reverse-unguarded": ("mlp", "adamw", False, False, "reverse"),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.slow
def test_two_processes_take_the_single_process_steps(tmp_path, name):
    """Three AdaLFL steps (lookahead, guard, Adam/SGD) on 2 gloo processes, each holding half of every
    global batch, give the model, loss parameters, guard counts and meta-loss of one process on the
    whole batch, in float64, on both processes (BatchNorm synchronised where the model has it; the
    residual model's dropout is off in this comparison: masks are drawn per process)."""
    _spawn(run_lookahead_worker, tmp_path, CASES[name])
    single = lookahead_steps(*CASES[name], world=1, replicas=None)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert state.keys() == single.keys()
        for k, value in single.items():
            torch.testing.assert_close(state[k], value, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"rank {rank}: {k}: {m}")
        # Leaving the group ends gloo's threads; one that survives aborts the interpreter at exit.
        assert (tmp_path / f"rank{rank}.threads").read_text() == "", f"rank {rank}: gloo threads outlived the group"


@pytest.mark.slow
def test_a_failing_process_stops_the_other_instead_of_hanging(tmp_path):
    """Process 1 raises inside the group; leaving it without a barrier closes its connections, so
    process 0's pending collective fails at once (gloo words it "closed" or "reset" by peer). Either failure
    may be the one reported first; neither may be an abort."""
    with pytest.raises(Exception, match="failed on purpose|Connection (closed|reset) by peer") as failure:
        _spawn(run_failing_worker, tmp_path, ())
    assert "SIGABRT" not in str(failure.value)


def test_a_batch_that_does_not_split_evenly_is_refused():
    replicas = Replicas(rank=1, world_size=3)
    with pytest.raises(ConfigError, match="divisible by 3"):
        replicas.rows(64)
    assert replicas.shard(torch.arange(6)).tolist() == [2, 3]
    assert SINGLE.shard(torch.arange(6)).tolist() == list(range(6))


TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[32]", "--loss", "adalfl",
         "--init-steps", "10", "--steps", "30", "--batch-size", "64", "--lr", "0.1", "--quiet", "--device", "cpu"]


def _lfl(*args: str, torchrun: bool = False, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "cli.py"), *args]
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "--no-python", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_matches_the_single_process_run_and_resumes(tmp_path):
    """lfl train under torchrun (2 processes): results match one process; only rank 0 writes; --resume
    continues a run that a checkpoint stopped half-way."""
    single = _lfl(*TRAIN, "--out", "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    parallel = _lfl(*TRAIN, "--out", "dp", torchrun=True, cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count("test_error") == 1  # rank 0 reports, rank 1 stays quiet
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("single", "dp"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert b["test_error"] == pytest.approx(a["test_error"], abs=1e-9)
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    half = _lfl(*[t if t != "30" else "15" for t in TRAIN], "--checkpoint-every", "5", "--out", "resumed",
                torchrun=True, cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    resumed = _lfl(*TRAIN, "--checkpoint-every", "5", "--out", "resumed", "--resume", torchrun=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    c = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert c["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5) and c["world_size"] == 2


@pytest.mark.slow
def test_torchrun_with_a_bad_option_fails_with_one_line_per_rank(tmp_path):
    result = _lfl(*[t if t != "64" else "63" for t in TRAIN], "--out", "bad", torchrun=True, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: rank")]
    assert {line.split(":")[1].strip() for line in errors} == {"rank 0", "rank 1"}, result.stderr
    assert all("divisible by 2" in line for line in errors)
