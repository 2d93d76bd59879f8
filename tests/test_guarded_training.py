"""Training with the descent guard on real data: the README's own-loop recipe on a BatchNorm/residual
CNN trains on every seed, and learned losses on regression stay finite and near squared error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from losses import GradientScaledLoss, MLPLoss, task_loss
from toolkit.data import load_dataset
from toolkit.lookahead import SGDRule
from toolkit.online import OnlineLossLearner
from toolkit.run import train
from toolkit.train import BatchStream, TrainConfig, evaluate


class SmallResidualCNN(nn.Module):
    """A user's CNN: BatchNorm, max pooling and a residual block (no chain of known layers)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, classes))

    def forward(self, x):
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("seed", [0, 1, 4, 5])  # 0, 1, 4, 5: fresh MLPLoss() anti-aligned without the guard
def test_own_loop_recipe_trains_a_batchnorm_residual_cnn(digits, seed) -> None:
    torch.manual_seed(seed)
    model = SmallResidualCNN()
    loss = GradientScaledLoss(MLPLoss())
    learner = OnlineLossLearner(model, loss, rule=SGDRule(lr=0.1, momentum=0.9))
    x, y = digits.train.x.reshape(-1, 1, 8, 8), digits.train.y
    xv, yv = digits.valid.x.reshape(-1, 1, 8, 8), digits.valid.y
    train_batches, valid_batches = BatchStream(x, y, 64, seed=seed), BatchStream(xv, yv, 64, seed=seed + 1)
    for step in range(120):
        learner.step(train_batches(step), valid_batches(step))
    error = evaluate(model, digits.test.x.reshape(-1, 1, 8, 8), digits.test.y, task="classification")["error"]
    assert error < 0.25, error  # chance is 0.9


def test_the_guard_is_what_rescues_an_anti_aligned_loss(digits) -> None:
    """Seed 0's fresh loss trains backwards unguarded and forwards guarded (same everything else)."""
    errors = {}
    for guard in (False, True):
        torch.manual_seed(0)
        model = SmallResidualCNN()
        learner = OnlineLossLearner(model, GradientScaledLoss(MLPLoss()), rule=SGDRule(lr=0.1, momentum=0.9),
                                    meta_lr=1e-4, descent_guard=guard)
        x, y = digits.train.x.reshape(-1, 1, 8, 8), digits.train.y
        batches = BatchStream(x, y, 64, seed=0)
        for step in range(60):
            learner.step(batches(step), batches(step + 1000))
        with torch.no_grad():
            errors[guard] = evaluate(model, digits.test.x.reshape(-1, 1, 8, 8), digits.test.y,
                                     task="classification")["error"]
    assert errors[True] < 0.3 < errors[False], errors


@pytest.mark.parametrize("init_steps", [0, 60])
@pytest.mark.parametrize("loss_param", ["mlp", "taylor"])
def test_learned_losses_on_regression_stay_finite_and_near_squared_error(init_steps, loss_param) -> None:
    data = load_dataset("diabetes", seed=0)
    common = dict(dataset="diabetes", model="mlp", steps=300, lr=0.01, batch_size=64, device="cpu",
                  checkpoint_every=0)
    mse = train(TrainConfig(loss="mse", **common), progress=False, dataset=data)["test_mse"]
    learned = train(TrainConfig(loss="adalfl", loss_param=loss_param, init_steps=init_steps, **common),
                    progress=False, dataset=data)["test_mse"]
    assert learned < 1.5 * mse, (learned, mse)
    ml3 = train(TrainConfig(loss="ml3", loss_param=loss_param, init_steps=max(init_steps, 20), **common),
                progress=False, dataset=data)["test_mse"]
    assert ml3 < 1.5 * mse, (ml3, mse)
