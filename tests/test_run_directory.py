"""Run directories: one writer, no silent replacement, strict JSON, honest status, safe checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toolkit.meta.online import NonFiniteError
from toolkit.runs.run import train
from toolkit.runs.run_directory import RunDirectory
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig


def small(**options) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", model_options={"hidden": (16,)}, steps=20, batch_size=32, lr=0.1,
                log_every=10, checkpoint_every=10, device="cpu")
    return TrainConfig(**{**base, **options})


def strict_load(path: Path):
    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_locked_directory_is_refused_naming_the_holder(tmp_path) -> None:
    with RunDirectory(tmp_path / "run"):
        with pytest.raises(ConfigError, match=r"in use by another run \(pid \d+"):
            train(small(), out_dir=tmp_path / "run", progress=False)
    train(small(), out_dir=tmp_path / "run", progress=False)  # released


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path) -> None:
    out = tmp_path / "run"
    first = train(small(), out_dir=out, progress=False)
    with pytest.raises(ConfigError, match="already holds a run .*--resume.*--overwrite"):
        train(small(lr=0.05), out_dir=out, progress=False)
    assert strict_load(out / "results.json")["test_error"] == first["test_error"]  # nothing lost
    (out / "checkpoint.pt").unlink()
    replaced = train(small(lr=0.05, checkpoint_every=0), out_dir=out, overwrite=True, progress=False)
    assert strict_load(out / "results.json")["config"]["lr"] == 0.05 == replaced["config"]["lr"]
    assert not (out / "checkpoint.pt").exists()


def test_a_diverged_run_raises_and_says_so_in_strict_json(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="diverged by step 10.*lower --lr"):
        train(small(lr=1e9), out_dir=out, progress=False)
    results = strict_load(out / "results.json")
    assert results["status"] == "diverged" and "NonFiniteError" in results["error"]
    for line in (out / "history.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"history holds {c}"))


def test_finished_runs_say_so(tmp_path) -> None:
    train(small(), out_dir=tmp_path / "run", progress=False)
    assert strict_load(tmp_path / "run" / "results.json")["status"] == "finished"


def test_resume_drops_a_torn_line_and_never_duplicates_the_final_record(tmp_path) -> None:
    out = tmp_path / "run"
    train(small(), out_dir=out, progress=False)
    with (out / "history.jsonl").open("a") as f:
        f.write('{"phase": "train", "st')  # killed mid-write
    train(small(), out_dir=out, resume=True, progress=False)
    train(small(), out_dir=out, resume=True, progress=False)
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "eval"] == [20]
    assert [r["step"] for r in records if r["phase"] == "train"] == [10, 20]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_never_runs_code(tmp_path) -> None:
    out, marker = tmp_path / "run", tmp_path / "marker"
    train(small(), out_dir=out, progress=False)
    torch.save({"version": 1, "payload": _Payload(marker)}, out / "checkpoint.pt")
    with pytest.raises(ConfigError, match="refusing checkpoint .*could run code"):
        train(small(), out_dir=out, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("rows,fraction,split", [(2, 0.1, "validation"), (400, 0.0, "validation"),
                                                 (40, 0.7, "test")])
def test_splits_too_small_to_measure_are_refused_with_their_sizes(tmp_path, rows, fraction, split) -> None:
    csv = tmp_path / "data.csv"
    lines = ["a,b,label"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(rows)]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"the {split} split is too small .*train \d+, validation \d+, test \d+"):
        train(small(dataset=f"csv:{csv}", valid_fraction=fraction), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # a refused run leaves no empty directory


def test_out_that_is_a_file_or_under_one(tmp_path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(small(), out_dir=afile, progress=False)
    with pytest.raises(ConfigError, match="lies under a file"):
        train(small(), out_dir=afile / "run", progress=False)


@pytest.mark.parametrize("options,fragment", [
    (dict(seed=-1), "--seed must be in"), (dict(seed=2**40), "--seed must be in"),
    (dict(steps=5.7), "--steps must be an integer"), (dict(nesterov=1), "--nesterov must be true or false"),
    (dict(lr="0.1"), "--lr must be a number"), (dict(milestones=[1.5]), "--milestones must be a list of integers"),
])
def test_options_are_checked_never_truncated(options, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        small(**options)
    assert small(lr=1).lr == 1.0 and isinstance(small(lr=1).lr, float)
