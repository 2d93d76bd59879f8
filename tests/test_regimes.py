"""Harder training regimes (toolkit.data.regimes): label noise and long-tailed classes on the training split only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toolkit.data.datasets import DataError, load_dataset
from toolkit.data.regimes import apply_regime, imbalanced_indices, long_tail_counts, noisy_labels
from toolkit.data.run_data import load_run_data
from toolkit.errors import ConfigError
from toolkit.runs.config import TrainConfig

N, C = 200_000, 10


def _labels(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, C, size=N)


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45])
def test_realised_noise_rate_is_within_binomial_tolerance(kind, rate):
    clean = _labels()
    noisy = noisy_labels(clean, rate=rate, kind=kind, num_classes=C, seed=0)
    realised = np.mean(noisy != clean)
    assert abs(realised - rate) <= 5 * math.sqrt(rate * (1 - rate) / N) + 1e-12
    assert noisy.min() >= 0 and noisy.max() < C


def test_pairflip_maps_every_flipped_label_to_the_next_class():
    clean = _labels()
    noisy = noisy_labels(clean, rate=0.4, kind="pairflip", num_classes=C, seed=1)
    flipped = noisy != clean
    assert flipped.any()
    np.testing.assert_array_equal(noisy[flipped], (clean[flipped] + 1) % C)


def test_symmetric_noise_goes_uniformly_to_the_other_classes():
    clean = np.zeros(N, dtype=np.int64)
    noisy = noisy_labels(clean, rate=0.5, kind="symmetric", num_classes=C, seed=2)
    to = noisy[noisy != clean]
    counts = np.bincount(to, minlength=C)
    assert counts[0] == 0  # never to the class itself
    expected = len(to) / (C - 1)
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 35.0  # chi-square with 8 degrees of freedom: P(> 35) < 1e-4


def test_same_seed_same_corruption_other_seed_other():
    clean = _labels()
    first = noisy_labels(clean, rate=0.3, kind="symmetric", num_classes=C, seed=5)
    np.testing.assert_array_equal(first, noisy_labels(clean, rate=0.3, kind="symmetric", num_classes=C, seed=5))
    assert (first != noisy_labels(clean, rate=0.3, kind="symmetric", num_classes=C, seed=6)).any()
    kept = imbalanced_indices(clean, ratio=20, num_classes=C, seed=5)
    np.testing.assert_array_equal(kept, imbalanced_indices(clean, ratio=20, num_classes=C, seed=5))
    assert not np.array_equal(kept, imbalanced_indices(clean, ratio=20, num_classes=C, seed=6))


def test_long_tail_counts_are_the_published_cifar10_lt_counts():
    """Cao et al. (LDAM-DRW) CIFAR-10-LT class sizes from 5000 images per class (totals 12406 and 20431)."""
    assert long_tail_counts(5000, ratio=100, num_classes=10) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts(5000, ratio=10, num_classes=10) == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834,
                                                                645, 500]
    assert long_tail_counts(7, ratio=1, num_classes=3) == [7, 7, 7]
    assert long_tail_counts(3, ratio=1000, num_classes=2) == [3, 1]  # at least one sample per class


def test_imbalanced_indices_follow_the_profile_exactly():
    clean = _labels()
    kept = imbalanced_indices(clean, ratio=50, num_classes=C, seed=0)
    counts = np.bincount(clean[kept], minlength=C)
    n_max = np.bincount(clean, minlength=C).min()
    reference = [math.floor(n_max * 50.0 ** (-c / (C - 1)) + 1e-9) for c in range(C)]  # the formula, written again
    np.testing.assert_array_equal(counts, reference)
    assert abs(counts[0] / counts[-1] - 50) < 50 * 2 / counts[-1]  # the ratio, up to the floor
    assert len(np.unique(kept)) == len(kept)


def test_apply_regime_corrupts_only_the_training_split_of_digits():
    clean = load_dataset("digits", seed=4)
    harder = apply_regime(clean, label_noise=0.3, label_noise_kind="pairflip", imbalance=5, seed=4)
    for split in ("valid", "test"):
        assert getattr(harder, split) is getattr(clean, split)
    regime = harder.regime
    counts = np.bincount(clean.train.y.numpy(), minlength=10)
    assert regime["train_class_counts"] == long_tail_counts(int(counts.min()), ratio=5, num_classes=10)
    assert len(harder.train.y) == sum(regime["train_class_counts"])
    # every kept row is a clean training row; its true label gives the recorded counts and the realised rate
    rows = {x.tobytes(): int(y) for x, y in zip(clean.train.x.numpy(), clean.train.y.numpy())}
    true = np.array([rows[x.tobytes()] for x in harder.train.x.numpy()])
    noisy = harder.train.y.numpy()
    assert np.bincount(true, minlength=10).tolist() == regime["train_class_counts"]
    assert regime["label_noise_realised"] == pytest.approx(np.mean(noisy != true))
    np.testing.assert_array_equal(noisy[noisy != true], (true[noisy != true] + 1) % 10)


def test_corruption_comes_after_the_split_and_never_reaches_validation_or_test():
    """Same train/valid/test rows as the clean dataset of the seed; only training labels differ."""
    config = TrainConfig(dataset="digits", seed=2, label_noise=0.4)
    clean = load_dataset("digits", seed=2)
    run = load_run_data(config)
    torch.testing.assert_close(run.train.x, clean.train.x, rtol=0, atol=0)
    assert (run.train.y != clean.train.y).float().mean() == pytest.approx(run.regime["label_noise_realised"])
    assert run.regime["label_noise_realised"] > 0.3
    torch.testing.assert_close(run.test.x, clean.test.x, rtol=0, atol=0)
    torch.testing.assert_close(run.test.y, clean.test.y, rtol=0, atol=0)
    validation = sorted(zip(map(tuple, torch.cat([run.meta.x, run.valid.x]).tolist()),
                            torch.cat([run.meta.y, run.valid.y]).tolist()))
    assert validation == sorted(zip(map(tuple, clean.valid.x.tolist()), clean.valid.y.tolist()))


def test_regression_and_bad_values_are_refused_in_one_line():
    with pytest.raises(DataError, match="classification datasets; diabetes"):
        load_run_data(TrainConfig(dataset="diabetes", label_noise=0.1))
    with pytest.raises(DataError, match="classification datasets"):
        load_run_data(TrainConfig(dataset="diabetes", imbalance=2))
    assert load_run_data(TrainConfig(dataset="diabetes")).regime["meta_samples"] > 0  # clean regression is fine
    for options, fragment in (({"label_noise": 1.0}, "--label-noise"), ({"label_noise": -0.1}, "--label-noise"),
                              ({"imbalance": 0.5}, "--imbalance"), ({"imbalance": math.inf}, "--imbalance"),
                              ({"label_noise_kind": "uniform"}, "--label-noise-kind")):
        with pytest.raises(ConfigError, match=fragment) as caught:
            TrainConfig(**options)
        assert "\n" not in str(caught.value)
