"""The training loop: batches, schedules, determinism, resume, output files."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import losses
from toolkit.data.datasets import load_dataset
from toolkit.runs.run import train
from toolkit.errors import ConfigError
from toolkit.runs.common import BatchStream, TrainConfig, lr_at


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", steps=60, batch_size=64, lr=0.1, seed=0, device="cpu",
                log_every=10, checkpoint_every=0, model_options={"hidden": (32,)})
    base.update(kw)
    return TrainConfig(**base)


class Interrupted(Exception):
    pass


def test_batch_stream_is_a_pure_function_of_seed_and_step():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    a, b = BatchStream(x, y, 3, seed=1), BatchStream(x, y, 3, seed=1)
    seen = torch.cat([a(t)[1] for t in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # one epoch: no repeats
    assert a(7)[1].equal(b(7)[1]) and a(2)[1].equal(b(2)[1])     # random access, same answers
    assert not BatchStream(x, y, 3, seed=2)(0)[1].equal(a(0)[1])


def test_multistep_schedule():
    config = TrainConfig(lr=0.1, milestones=(10, 20), gamma=0.5)
    assert [lr_at(config, s) for s in (0, 9, 10, 19, 20)] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_training_on_digits_beats_chance_and_writes_the_contract(tmp_path, digits):
    results = train(small(steps=300, lr=0.05, momentum=0.9), out_dir=tmp_path, progress=False, dataset=digits)
    assert results["test_error"] < 0.15  # chance is 0.9
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_error", "test_loss", "steps", "seed", "loss", "model", "dataset", "wall_time_s"):
        assert key in on_disk
    loss = json.loads((tmp_path / "loss.json").read_text())
    assert loss["kind"] and "formula" in loss and "parameters" in loss
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["phase"] == "train"]
    assert steps == list(range(10, 301, 10))


def test_same_seed_gives_identical_numbers(digits):
    a = train(small(), progress=False, dataset=digits)
    b = train(small(), progress=False, dataset=digits)
    c = train(small(seed=1), progress=False, dataset=digits)
    assert a["test_loss"] == b["test_loss"] and a["valid_loss"] == b["valid_loss"]
    assert c["test_loss"] != a["test_loss"]


@pytest.mark.parametrize("loss", ["ce", "adalfl"])
@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, digits, loss):
    kw = dict(loss=loss, momentum=0.9, checkpoint_every=7, init_steps=5, snapshot_every=10,
              model_options={"hidden": (16,), "dropout": 0.2})
    straight = train(small(**kw), out_dir=tmp_path / "straight", progress=False, dataset=digits)

    def interrupt(step):
        if step == 25:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(small(**kw), out_dir=tmp_path / "resumed", progress=False, dataset=digits, on_step=interrupt)
    resumed = train(small(**kw), out_dir=tmp_path / "resumed", resume=True, progress=False, dataset=digits)
    for key in ("test_loss", "test_error", "valid_loss"):
        assert resumed[key] == straight[key]
    history = lambda d: [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rs]  # noqa: E731
    assert strip(history(tmp_path / "resumed")) == strip(history(tmp_path / "straight"))
    if loss == "adalfl":
        a = json.loads((tmp_path / "straight" / "loss.json").read_text())["parameters"]
        b = json.loads((tmp_path / "resumed" / "loss.json").read_text())["parameters"]
        assert a == b


def test_resume_with_other_options_is_refused(tmp_path, digits):
    train(small(checkpoint_every=30), out_dir=tmp_path, progress=False, dataset=digits)
    with pytest.raises(ConfigError, match="lr"):
        train(small(checkpoint_every=30, lr=0.2), out_dir=tmp_path, resume=True, progress=False, dataset=digits)


def test_adalfl_run_records_diagnostics_and_snapshots(tmp_path, digits):
    train(small(loss="adalfl", init_steps=10, steps=40, snapshot_every=20), out_dir=tmp_path,
          progress=False, dataset=digits)
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    init = [r for r in lines if r["phase"] == "init"]
    online = [r for r in lines if r["phase"] == "train"]
    assert init and init[-1]["step"] == 10
    assert all({"meta_loss", "grad_ratio", "skipped_base", "skipped_meta"} <= r.keys() for r in online)
    snaps = [json.loads(x) for x in (tmp_path / "loss_snapshots.jsonl").read_text().splitlines()]
    assert [s["step"] for s in snaps] == [0, 20, 40]


def test_learned_losses_are_gradient_normalised_unless_the_paper_preset_asks_otherwise():
    from toolkit.runs.loss_sources import make_loss
    from toolkit.runs.common import PRESETS
    default = make_loss(small(loss="adalfl"), "classification")
    assert isinstance(default, losses.GradientScaledLoss) and isinstance(default.shape, losses.MLPLoss)
    assert default.max_scale == 1.0
    taylor = make_loss(small(loss="ml3", loss_param="taylor", max_scale=3.0), "classification")
    assert isinstance(taylor.shape, losses.TaylorLoss) and taylor.max_scale == 3.0
    paper = make_loss(small(loss="adalfl", **PRESETS["paper"]), "classification")
    assert type(paper) is losses.MLPLoss
    assert type(make_loss(small(loss="taylorglo"), "classification")) is losses.TaylorLoss


@pytest.mark.parametrize("max_scale", [1.0, 2.0])
def test_normalised_run_logs_its_learned_scale_as_the_gradient_ratio(tmp_path, digits, max_scale):
    train(small(loss="adalfl", init_steps=5, steps=20, log_every=10, max_scale=max_scale), out_dir=tmp_path,
          progress=False, dataset=digits)
    loss = losses.load_loss(tmp_path / "loss.json")
    online = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    ratios = [r["grad_ratio"] for r in online if r["phase"] == "train"]
    assert all(1 / max_scale - 1e-5 <= r <= max_scale + 1e-5 for r in ratios)
    # The ratio is logged before the step's meta update; the scale changes by at most ~meta_lr per step.
    assert ratios[-1] == pytest.approx(float(loss.scale.detach()), rel=0.01)
    if max_scale == 1.0:  # the default: the learned loss sets the direction, cross-entropy the size
        assert all(abs(r - 1) < 1e-5 for r in ratios)


@pytest.mark.parametrize("kw, match", [
    (dict(loss_scale="huge"), "--loss-scale"), (dict(max_scale=0.5), "--max-scale"),
    (dict(steps=-1), "--steps"), (dict(lr=0), "--lr"), (dict(loss="huber"), "--loss"),
    (dict(nesterov=True), "--nesterov"), (dict(device="tpu"), "--device"),
])
def test_bad_options_name_the_fix(kw, match):
    with pytest.raises(ConfigError, match=match):
        small(**kw)


def test_seeds_write_one_run_per_seed_and_a_summary(tmp_path):
    from toolkit.runs.sweep import run_seeds
    summary = run_seeds(small(steps=20), [0, 1], out_dir=tmp_path, progress=False)
    one = json.loads((tmp_path / "seed-1" / "results.json").read_text())
    assert one["seed"] == 1
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    errors = on_disk["test_error"]["values"]
    assert on_disk["seeds"] == [0, 1] and summary["n"] == 2
    assert abs(on_disk["test_error"]["mean"] - sum(errors) / 2) < 1e-12
    with pytest.raises(ConfigError, match="distinct"):
        run_seeds(small(steps=5), [1, 1], out_dir=tmp_path)


def test_taylorglo_run_searches_then_trains_with_the_best_loss(tmp_path, digits):
    results = train(small(loss="taylorglo", generations=2, population=6, fitness_steps=60, steps=100, lr=1.0),
                    out_dir=tmp_path, progress=False, dataset=digits)
    searched = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in searched if r["phase"] == "search"] == [1, 2]
    saved = json.loads((tmp_path / "loss.json").read_text())
    assert saved["kind"] == "taylor" and results["test_error"] < 0.5


@pytest.mark.parametrize("adapt", [False, True])
@pytest.mark.slow
def test_reuse_a_loss_json_and_a_formula(tmp_path, digits, adapt):
    first = tmp_path / "first"
    train(small(loss="ml3", init_steps=5), out_dir=first, progress=False, dataset=digits)
    reused = train(small(loss_from=str(first / "loss.json"), adapt=adapt), out_dir=tmp_path / "json",
                   progress=False, dataset=digits)
    assert reused["loss"] == ("reused-adapt" if adapt else "reused")
    before = json.loads((first / "loss.json").read_text())["parameters"]
    after = json.loads((tmp_path / "json" / "loss.json").read_text())["parameters"]
    assert (before != after) == adapt  # fixed unless adapting online
    formula_file = tmp_path / "formula.txt"
    formula = "10.0*y*(1 - y_pred)**2 + 10.0*(1 - y)*y_pred**2"
    formula_file.write_text(formula)
    for source in (str(formula_file), formula):
        result = train(small(loss_from=source, adapt=adapt, steps=100), progress=False, dataset=digits)
        assert result["test_error"] < 0.5


@pytest.mark.parametrize("source, adapt, match", [
    ("y_pred +* y", False, "not a valid formula"), ("z * y_pred", False, "unknown name .z.: a formula may use y_pred, y"),
    ("missing.json", False, "no such file"), ("(y - y_pred)**2", True, "no trainable parameters"),
])
def test_bad_loss_sources_name_the_problem(source, adapt, match, digits):
    with pytest.raises(ConfigError, match=match):
        train(small(loss_from=source, adapt=adapt), progress=False, dataset=digits)


def test_a_reused_loss_without_a_scalar_reduction_is_refused(tmp_path, digits):
    path = losses.save_loss(losses.MLPLoss(hidden=(3,), reduction="none"), tmp_path / "loss.json")
    with pytest.raises(ConfigError, match=r"reduction 'none'.*\"reduction\": \"mean\""):
        train(small(loss_from=str(path)), progress=False, dataset=digits)


def test_adalfl_on_regression_reports_test_mse(tmp_path):
    data = load_dataset("diabetes", seed=0)
    results = train(small(dataset="diabetes", loss="adalfl", init_steps=10, steps=30, lr=0.01),
                    out_dir=tmp_path, progress=False, dataset=data)
    assert results["task"] == "regression" and results["test_mse"] > 0
    assert results["test_mse_original_units"] == pytest.approx(results["test_mse"] * data.target_std ** 2)
    saved = json.loads((tmp_path / "loss.json").read_text())
    assert saved["config"]["task"] == "regression"


@pytest.mark.parametrize("online_meta_lr", [1e-4, 3e-3])
@pytest.mark.slow
def test_online_updates_use_the_online_meta_learning_rate(tmp_path, digits, online_meta_lr):
    """Adam's first step moves every parameter with a non-zero gradient by the learning rate itself."""
    start = small(loss="adalfl", init_steps=0, steps=0, meta_lr=0.5, online_meta_lr=online_meta_lr)
    train(start, out_dir=tmp_path / "start", progress=False, dataset=digits)
    train(dataclasses.replace(start, steps=1), out_dir=tmp_path / "one", progress=False, dataset=digits)
    before, after = (losses.load_loss(tmp_path / name / "loss.json") for name in ("start", "one"))
    moves = torch.cat([(a - b).detach().abs().flatten() for a, b in zip(after.parameters(), before.parameters())])
    moved = moves[moves > 0]
    assert moved.numel() > 0
    assert float(moved.max()) == pytest.approx(online_meta_lr, rel=1e-3)


def test_online_meta_learning_rate_defaults_and_falls_back_to_the_offline_one():
    from toolkit.runs.common import PRESETS
    assert TrainConfig().online_meta_lr == 1e-4 and TrainConfig().meta_lr == 1e-3
    assert TrainConfig(**PRESETS["paper"]).online_meta_lr == 1e-3  # the paper: one Adam rate, 1e-3, for both phases
    with pytest.raises(ConfigError, match="--online-meta-lr"):
        TrainConfig(online_meta_lr=0.0)
