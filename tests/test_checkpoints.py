"""Checkpoints (toolkit.runs.checkpoints): a damaged or crafted one is refused before anything is written,
older versions migrate, the data is fingerprinted, and --steps on a finished run is honest."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_lfl
from toolkit.layout import CHECKPOINT, HISTORY, RESULTS
from toolkit.models.zoo import build_model
from toolkit.runs.checkpoints import CHECKPOINT_VERSION, MIGRATIONS, data_fingerprint, read_checkpoint
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig
from toolkit.runs.run import train

ARGS = ["--dataset", "digits", "--model", "mlp", "--loss", "ce", "--steps", "20", "--batch-size", "32", "--lr", "0.1",
        "--checkpoint-every", "10", "--log-every", "10", "--device", "cpu", "--quiet"]


def small(**options) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", loss="ce", steps=20, batch_size=32, lr=0.1, log_every=10,
                checkpoint_every=10, device="cpu")
    return TrainConfig(**{**base, **options})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_lfl("train", *ARGS, "--out", out).returncode == 0
    return out


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _first_weight(state: dict) -> str:
    return next(k for k, v in state["model"].items() if v.is_floating_point() and v.ndim == 2)


def _set(key: str, value):
    def damage(state: dict) -> None:
        state[key] = value
    return damage


def _model(change):
    def damage(state: dict) -> None:
        name = _first_weight(state)
        state["model"][name] = change(state["model"][name])
    return damage


def _drop_model_key(state: dict) -> None:
    del state["model"][_first_weight(state)]


def _another_runs_weights(state: dict) -> None:
    other = build_model("mlp", input_shape=(64,), num_outputs=10, hidden=(7,))
    state["model"] = other.state_dict()


DAMAGES = {
    "wrong shape": _model(lambda t: torch.zeros(t.shape[0], t.shape[1] + 1)),
    "missing model key": _drop_model_key,
    "int64 weights": _model(lambda t: (t * 1000).long()),
    "another run's weights": _another_runs_weights,
    "step a float": _set("step", 10.0),
    "step a tensor": _set("step", torch.tensor(10)),
    "step negative": _set("step", -300),
    "step past the run": _set("step", 100000),
    "unknown phase": _set("phase", "warmup"),
    "no stepper key": lambda state: state.pop("stepper"),
    "rng of another shape": _set("rng", {"cpu": torch.zeros(7, dtype=torch.uint8)}),
    "loss sums of another shape": _set("loss_sums", torch.zeros(5, dtype=torch.float64)),
    "wall time text": _set("wall_time_s", "yesterday"),
    "optimiser buffer of another shape": lambda state: state["stepper"]["optimizer"]["state"].update(
        {0: {"momentum_buffer": torch.zeros(3)}}),
    "other data": _set("data_fingerprint", "0" * 64),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_checkpoint_is_refused_in_one_line_and_every_file_stays(tmp_path, finished, damage):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    DAMAGES[damage](state)
    torch.save(state, out / CHECKPOINT)
    before = _files(out)
    result = run_lfl("train", *ARGS, "--out", out, "--resume")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in result.stderr
    assert _files(out) == before  # results.json byte-identical, nothing else touched either


def test_a_smaller_steps_on_a_finished_run_is_refused_and_nothing_changes(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _files(out)
    result = run_lfl("train", *[a if a != "20" else "12" for a in ARGS], "--out", out, "--resume")
    assert result.returncode == 2 and "--steps 12 is fewer than the 20 steps" in result.stderr
    assert _files(out) == before


def test_a_larger_steps_continues_to_the_new_count_as_a_straight_run_does(tmp_path):
    train(small(), out_dir=tmp_path / "resumed", progress=False)
    resumed = train(small(steps=30), out_dir=tmp_path / "resumed", resume=True, progress=False)
    straight = train(small(steps=30), out_dir=tmp_path / "straight", progress=False)
    assert resumed["steps"] == 30 and resumed["test_loss"] == straight["test_loss"]
    records = [json.loads(line) for line in (tmp_path / "resumed" / HISTORY).read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "train"] == [10, 20, 30]
    assert json.loads((tmp_path / "resumed" / RESULTS).read_text())["steps"] == 30


def test_changed_data_under_resume_is_refused(tmp_path):
    csv = tmp_path / "data.csv"
    rows = ["a,b,label"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(200)]
    csv.write_text("\n".join(rows) + "\n")
    config = small(dataset=f"csv:{csv}", valid_fraction=0.2, batch_size=16)
    train(config, out_dir=tmp_path / "run", progress=False)
    before = _files(tmp_path / "run")
    csv.write_text("\n".join(rows[:-1] + ["3,3,0"]) + "\n")  # one row changed, same size
    with pytest.raises(ConfigError, match="other data than the checkpoint"):
        train(config, out_dir=tmp_path / "run", resume=True, progress=False)
    assert _files(tmp_path / "run") == before


def test_the_fingerprint_sees_one_changed_element_and_the_dtype():
    x, y = torch.arange(12.0).reshape(4, 3), torch.tensor([0, 1, 0, 1])
    base = data_fingerprint([(x, y)])
    assert data_fingerprint([(x.clone(), y.clone())]) == base
    changed = x.clone()
    changed[2, 1] += 1
    assert data_fingerprint([(changed, y)]) != base
    assert data_fingerprint([(x.double(), y)]) != base
    assert data_fingerprint([(x.reshape(3, 4), y)]) != base


def test_a_version_1_checkpoint_migrates_to_the_current_one(tmp_path):
    """Version 1 wrote the momentum and the loss window under older names, and configs without later options."""
    train(small(), out_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / CHECKPOINT
    state = torch.load(path, weights_only=True)
    stepper = {k: v for k, v in state["stepper"].items() if k != "rule_state"}
    old = {**state, "version": 1, "loss_sum": torch.tensor(3.0, dtype=torch.float64),
           "stepper": {**stepper, "momentum": None},  # plain SGD wrote no momentum
           "config": {k: v for k, v in state["config"].items() if k not in ("optimizer", "sync_batchnorm")}}
    del old["loss_sums"], old["data_fingerprint"]
    migrated = MIGRATIONS[1](old, None)
    assert migrated["version"] == 2
    assert migrated["stepper"]["rule_state"] == {} and "momentum" not in migrated["stepper"]
    with_momentum = MIGRATIONS[1]({**old, "stepper": {**stepper, "momentum": {"w": torch.ones(2)}}}, None)
    assert torch.equal(with_momentum["stepper"]["rule_state"]["momentum"]["w"], torch.ones(2))
    assert migrated["loss_sums"].tolist() == [3.0, 0.0]  # cross-entropy's sum: the task loss
    assert migrated["config"]["optimizer"] == "sgd" and migrated["config"]["sync_batchnorm"] is False
    assert migrated["data_fingerprint"] is None
    torch.save(old, path)
    assert read_checkpoint(path)["version"] == CHECKPOINT_VERSION
    assert train(small(), out_dir=tmp_path / "run", resume=True, progress=False)["status"] == "finished"


def _flat(saved: dict) -> dict:
    """A tagged optimiser state (version 3) in the flat form version 2 wrote."""
    return {k: v for k, v in saved.items() if k != "kind" and v is not None}


def test_a_version_2_checkpoint_of_the_online_learner_migrates_and_resumes_identically(tmp_path):
    """Version 2 kept the base and meta optimiser states as flat dicts; version 3 as tagged NamedTuple fields.
    Resuming the migrated checkpoint must train on exactly as resuming the current one does."""
    config = small(loss="adalfl", init_steps=2, momentum=0.9, steps=20)
    train(small(loss="adalfl", init_steps=2, momentum=0.9, steps=10), out_dir=tmp_path / "new", progress=False)
    state = torch.load(tmp_path / "new" / CHECKPOINT, weights_only=True)
    assert state["stepper"]["rule_state"]["kind"] == "sgd" and state["stepper"]["adam"]["kind"] == "adam"
    old = {**state, "version": 2, "stepper": {**state["stepper"], "rule_state": _flat(state["stepper"]["rule_state"]),
                                              "adam": _flat(state["stepper"]["adam"])}}
    (tmp_path / "old").mkdir()
    for f in (tmp_path / "new").iterdir():
        (tmp_path / "old" / f.name).write_bytes(f.read_bytes())
    torch.save(old, tmp_path / "old" / CHECKPOINT)
    migrated = read_checkpoint(tmp_path / "old" / CHECKPOINT)
    for key in ("rule_state", "adam"):
        assert migrated["stepper"][key].keys() == state["stepper"][key].keys()
    results = [train(config, out_dir=tmp_path / name, resume=True, progress=False) for name in ("new", "old")]
    assert results[0]["test_loss"] == results[1]["test_loss"] and results[0]["status"] == "finished"


def test_a_checkpoint_of_a_future_version_is_refused(tmp_path):
    train(small(), out_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / CHECKPOINT
    state = torch.load(path, weights_only=True)
    torch.save({**state, "version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(ConfigError, match="not a checkpoint of this toolkit version"):
        read_checkpoint(path)
