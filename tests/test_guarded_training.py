"""Training with the descent guard on real data: learned losses on regression stay finite and near
squared error, for any offline phase (unguarded, the default AdaLFL reached test MSE 1.9e9 on diabetes)."""
from __future__ import annotations

import pytest

from toolkit.data import load_dataset
from toolkit.run import train
from toolkit.train import TrainConfig


@pytest.mark.parametrize("init_steps,loss_param", [(0, "mlp"), (60, "taylor")])
def test_learned_losses_on_regression_stay_finite_and_near_squared_error(init_steps, loss_param) -> None:
    data = load_dataset("diabetes", seed=0)
    common = dict(dataset="diabetes", model="mlp", steps=200, lr=0.01, batch_size=64, device="cpu",
                  checkpoint_every=0)
    mse = train(TrainConfig(loss="mse", **common), progress=False, dataset=data)["test_mse"]
    learned = train(TrainConfig(loss="adalfl", loss_param=loss_param, init_steps=init_steps, **common),
                    progress=False, dataset=data)["test_mse"]
    assert learned < 1.5 * mse, (learned, mse)
    ml3 = train(TrainConfig(loss="ml3", loss_param=loss_param, init_steps=max(init_steps, 20), **common),
                progress=False, dataset=data)["test_mse"]
    assert ml3 < 1.5 * mse, (ml3, mse)
