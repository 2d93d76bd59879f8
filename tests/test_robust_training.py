"""``lfl train --loss gce|focal``: fixed robust losses trained as cross-entropy is, and the harder regimes' CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from helpers import run_lfl
from toolkit.data.run_data import load_run_data
from toolkit.runs.common import BatchStream
from toolkit.runs.config import TrainConfig
from toolkit.runs.run import train


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_lfl_train_loss_gce_trains_on_digits_and_records_it(tmp_path):
    out = tmp_path / "gce"
    result = run_lfl("train", "--dataset", "digits", "--model", "mlp", "--loss", "gce", "--steps", "5",
                     "--batch-size", "32", "--device", "cpu", "--label-noise", "0.2", "--label-noise-kind",
                     "pairflip", "--imbalance", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["loss"] == "gce" and results["status"] == "finished" and results["steps"] == 5
    assert json.loads((out / "loss.json").read_text())["kind"] == "generalized_cross_entropy"
    regime = results["data_regime"]
    assert regime["label_noise_kind"] == "pairflip" and 0 < regime["label_noise_realised"] < 0.4
    assert regime["train_class_counts"][0] / regime["train_class_counts"][-1] == pytest.approx(4, rel=0.1)
    assert results["config"]["imbalance"] == 4 and results["config"]["selection_fraction"] == 0.5


@pytest.mark.parametrize("name", ["gce", "focal"])
def test_a_robust_loss_step_is_sgd_on_the_published_formula(name):
    """One SGD step equals the step on the paper's per-sample loss written here (GCE q=0.7; focal γ=2)."""
    config = TrainConfig(dataset="digits", model="mlp", loss=name, steps=1, batch_size=32, lr=0.5, device="cpu",
                         checkpoint_every=0)
    data = load_run_data(config)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    start = copy.deepcopy(model)
    train(config, dataset=data, model=model, progress=False)
    x, y = BatchStream(data.train.x, data.train.y, 32, seed=config.seed)(0)
    p_true = torch.softmax(start(x).double(), dim=-1).gather(1, y[:, None]).squeeze(1)
    per_sample = (1 - p_true ** 0.7) / 0.7 if name == "gce" else -(1 - p_true) ** 2 * torch.log(p_true)
    grads = torch.autograd.grad(per_sample.mean(), list(start.parameters()))
    for after, before, grad in zip(model.parameters(), start.parameters(), grads):
        torch.testing.assert_close(after.double(), before.double() - 0.5 * grad, rtol=1e-5, atol=1e-6)


def test_robust_losses_and_harder_regimes_refuse_regression_in_one_line(tmp_path):
    _one_line_error(run_lfl("train", "--dataset", "diabetes", "--model", "mlp", "--loss", "focal", "--steps", "1",
                            "--device", "cpu", "--out", tmp_path / "a"), "--loss focal", "classification")
    _one_line_error(run_lfl("train", "--dataset", "diabetes", "--model", "mlp", "--loss", "mse", "--steps", "1",
                            "--label-noise", "0.1", "--device", "cpu", "--out", tmp_path / "b"), "diabetes")
    _one_line_error(run_lfl("train", "--dataset", "digits", "--imbalance", "0.5", "--out", tmp_path / "c"),
                    "--imbalance")
    _one_line_error(run_lfl("train", "--dataset", "digits", "--label-noise", "1", "--out", tmp_path / "d"),
                    "--label-noise")
    assert not any((tmp_path / name).exists() for name in "abcd")
