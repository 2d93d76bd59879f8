"""The run's records as CSV and TensorBoard scalars (toolkit.runs.log): the same numbers as history.jsonl."""
from __future__ import annotations

import csv
import json
import math

import pytest

from toolkit.data.datasets import load_dataset
from toolkit.runs.run import train
from toolkit.runs.log import RunLog, read_metrics_csv
from toolkit.runs.common import TrainConfig


class Interrupted(Exception):
    pass


def interrupt_at(stop: int):
    """An ``on_step`` that kills the run after step ``stop``."""
    def on_step(step: int) -> None:
        if step == stop:
            raise Interrupted
    return on_step


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", steps=40, batch_size=64, lr=0.1, seed=0, device="cpu",
                log_every=10, eval_every=20, checkpoint_every=0, init_steps=5, snapshot_every=0,
                model_options={"hidden": (16,)})
    return TrainConfig(**{**base, **kw})


def history_rows(run_dir) -> list[tuple]:
    """(phase, step, name, value) for every number in history.jsonl, read with json alone."""
    rows = []
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("phase", "step"):
                rows.append((record["phase"], record["step"], name, None if value is None else float(value)))
    return rows


def csv_rows(run_dir) -> list[tuple]:
    """metrics.csv read with the csv module alone."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["phase", "step", "name", "value"]
        return [(r["phase"], int(r["step"]), r["name"], float(r["value"]) if r["value"] else None) for r in reader]


def test_the_csv_holds_exactly_the_history_numbers(tmp_path, digits):
    train(small(loss="adalfl"), out_dir=tmp_path, progress=False, dataset=digits)
    rows = csv_rows(tmp_path)
    assert rows == history_rows(tmp_path)
    assert rows == read_metrics_csv(tmp_path / "metrics.csv")
    names = {(phase, name) for phase, _, name, _ in rows}
    assert {("init", "meta_loss"), ("train", "task_loss"), ("train", "learned_loss"), ("train", "grad_ratio"),
            ("eval", "valid_error")} <= names  # keys that appear only in some records still get their rows


@pytest.mark.slow
def test_resume_drops_the_csv_rows_after_the_checkpoint_as_the_history_does(tmp_path, digits):
    config = small(loss="adalfl", checkpoint_every=12)
    train(config, out_dir=tmp_path / "straight", progress=False, dataset=digits)
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(config, out_dir=resumed, progress=False, dataset=digits, on_step=interrupt_at(35))
    assert max(step for phase, step, _, _ in csv_rows(resumed) if phase == "train") == 30  # checkpoint: 24
    with (resumed / "metrics.csv").open("a") as f:
        f.write("train,3")  # the torn last row of a killed run
    train(config, out_dir=resumed, resume=True, progress=False, dataset=digits)
    assert csv_rows(resumed) == history_rows(resumed)
    assert (resumed / "metrics.csv").read_text() == (tmp_path / "straight" / "metrics.csv").read_text()


def test_a_run_from_before_metrics_csv_gets_one_on_resume(tmp_path, digits):
    config = small(checkpoint_every=20)
    with pytest.raises(Interrupted):
        train(config, out_dir=tmp_path, progress=False, dataset=digits, on_step=interrupt_at(25))
    (tmp_path / "metrics.csv").unlink()
    train(config, out_dir=tmp_path, resume=True, progress=False, dataset=digits)
    assert csv_rows(tmp_path) == history_rows(tmp_path)
    assert [s for p, s, n, _ in csv_rows(tmp_path) if n == "task_loss"] == [10, 20, 30, 40]


def test_truncation_rewrites_the_csv_as_history_truncate_after_keeps_lines(tmp_path):
    records = [{"phase": "init", "step": 50, "meta_loss": 1.5},
               {"phase": "train", "step": 10, "train_loss": 0.1, "skipped": True},
               {"phase": "eval", "step": 10, "valid_error": float("nan")},
               {"phase": "train", "step": 20, "train_loss": 1e-300, "note": "text is no metric"},
               {"phase": "eval", "step": 20, "valid_error": 0.25}]
    with RunLog(tmp_path) as log:
        log.start(resume=False)
        for record in records:
            log.append(record)
        assert read_metrics_csv(tmp_path / "metrics.csv") == [
            ("init", 50, "meta_loss", 1.5), ("train", 10, "train_loss", 0.1), ("train", 10, "skipped", 1.0),
            ("eval", 10, "valid_error", None), ("train", 20, "train_loss", 1e-300), ("eval", 20, "valid_error", 0.25)]
        log.truncate_after(10, ("train", "eval"))
    kept = read_metrics_csv(tmp_path / "metrics.csv")
    assert [(p, s) for p, s, _, _ in kept] == [("init", 50), ("train", 10), ("train", 10), ("eval", 10)]
    assert kept == csv_rows(tmp_path) and len(history_rows(tmp_path)) == len(kept)


def scalar_events(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_events_hold_the_history_scalars(tmp_path, digits):
    pytest.importorskip("tensorboard")
    config = small(loss="adalfl", checkpoint_every=12)
    train(config, out_dir=tmp_path / "straight", progress=False, dataset=digits, tensorboard=True)
    expected: dict[str, list[tuple[int, float]]] = {}
    for phase, step, name, value in history_rows(tmp_path / "straight"):
        if value is not None:
            expected.setdefault(f"{phase}/{name}", []).append((step, value))
    events = scalar_events(tmp_path / "straight")
    assert events.keys() == expected.keys() and "train/task_loss" in events
    for tag, points in expected.items():  # event files store float32
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(events[tag], points)), tag

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(config, out_dir=resumed, progress=False, dataset=digits, tensorboard=True, on_step=interrupt_at(35))
    assert max(step for step, _ in scalar_events(resumed)["train/task_loss"]) == 30  # checkpoint: 24
    train(config, out_dir=resumed, resume=True, progress=False, dataset=digits, tensorboard=True)
    assert scalar_events(resumed) == events  # steps after the checkpoint once, not twice
