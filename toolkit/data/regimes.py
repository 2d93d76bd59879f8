"""Harder training regimes: noisy labels and long-tailed classes, on the training split only.

Learned and robust losses are known to matter most with noisy labels and imbalanced classes.
These are pure functions of the seed, applied after the train/valid split to the training split
alone: validation (meta and selection parts) and test keep their clean labels and their class
balance, so a method is always measured against the truth.

* Label noise (``--label-noise RATE``): each training label is flipped with probability RATE.
  ``symmetric``: to a class drawn uniformly from the C - 1 *other* classes; ``pairflip``: to
  class (c + 1) mod C (Han et al., "Co-teaching", NeurIPS 2018). The realised rate (the share
  of labels actually changed) is recorded.
* Imbalance (``--imbalance RATIO``): an exponential long-tailed profile as in CIFAR-10-LT
  (Cao et al., LDAM, NeurIPS 2019): class c keeps ``floor(n_max · (1/RATIO)^(c/(C−1)))``
  samples (at least 1), where n_max is the *smallest* class count of the clean training split,
  so every class can supply its quota; the largest/smallest count ratio is RATIO up to that
  floor. Which samples a class keeps is drawn with the seed. Features keep the normalisation
  of the full training split.

Imbalance is applied first (on the clean labels), then label noise on the samples kept.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from toolkit.data.datasets import CLASSIFICATION, DataError, Dataset, Split

__all__ = ["NOISE_KINDS", "apply_regime", "imbalanced_indices", "long_tail_counts", "noisy_labels"]

NOISE_KINDS = ("symmetric", "pairflip")
NOISE_SEED_TAG, IMBALANCE_SEED_TAG = 7717, 8837
"""Mixed with the run's seed (``np.random.default_rng([seed, tag])``): each corruption has its own draw."""


def noisy_labels(labels: np.ndarray, *, rate: float, kind: str, num_classes: int, seed: int) -> np.ndarray:
    """Labels (N,) with each flipped with probability ``rate`` (see the module docstring); a new array.

    The random draws do not depend on the labels, so a seed corrupts the same positions of any
    label vector of the same length.
    """
    if not 0.0 <= rate < 1.0:
        raise DataError(f"--label-noise must lie in [0, 1), got {rate}")
    if kind not in NOISE_KINDS:
        raise DataError(f"unknown --label-noise-kind {kind!r}: choose one of {', '.join(NOISE_KINDS)}")
    if num_classes < 2:
        raise DataError("label noise needs at least 2 classes")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, NOISE_SEED_TAG])
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, num_classes, size=len(labels)) if kind == "symmetric" else np.ones(len(labels), np.int64)
    return np.where(flip, (labels + shift) % num_classes, labels)


def long_tail_counts(n_max: int, *, ratio: float, num_classes: int) -> list[int]:
    """Per-class counts ``floor(n_max · (1/ratio)^(c/(C−1)))``, at least 1, for c = 0 .. C−1."""
    if not (math.isfinite(ratio) and ratio >= 1.0):
        raise DataError(f"--imbalance must be a ratio >= 1, got {ratio}")
    if num_classes < 2:
        return [n_max] * num_classes
    return [max(1, int(n_max * (1.0 / ratio) ** (c / (num_classes - 1.0)))) for c in range(num_classes)]


def imbalanced_indices(labels: np.ndarray, *, ratio: float, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of the samples a long-tailed subset keeps (counts from :func:`long_tail_counts`)."""
    labels = np.asarray(labels, dtype=np.int64)
    present = np.bincount(labels, minlength=num_classes)
    if present.min() == 0:
        raise DataError(f"--imbalance needs every class in the training split; class {int(present.argmin())} "
                        "has no sample")
    counts = long_tail_counts(int(present.min()), ratio=ratio, num_classes=num_classes)
    rng = np.random.default_rng([seed, IMBALANCE_SEED_TAG])
    kept = [rng.permutation(np.flatnonzero(labels == c))[:count] for c, count in enumerate(counts)]
    return np.sort(np.concatenate(kept))


def apply_regime(data: Dataset, *, label_noise: float = 0.0, label_noise_kind: str = "symmetric",
                 imbalance: float = 1.0, seed: int = 0) -> Dataset:
    """``data`` with its training split made harder; valid, meta and test are the same tensors.

    Returns the dataset with ``regime`` recording the options, ``label_noise_realised`` (the
    share of training labels changed) and ``train_class_counts`` (the training split's counts of
    true classes after imbalance). With no corruption asked for, the training split is unchanged.

    Raises:
        DataError: a regression dataset with noise or imbalance asked for, or a bad option (one line).
    """
    harder = label_noise != 0.0 or imbalance != 1.0
    if data.task != CLASSIFICATION:
        if harder:
            raise DataError(f"--label-noise and --imbalance apply to classification datasets; {data.name} is a "
                            f"{data.task} dataset")
        return dataclasses.replace(data, regime={})
    clean = data.train.y.cpu().numpy()
    num_classes = data.num_outputs if data.num_outputs > 1 else 2
    kept = (imbalanced_indices(clean, ratio=imbalance, num_classes=num_classes, seed=seed) if imbalance != 1.0
            else np.arange(len(clean)))
    clean = clean[kept]
    labels = noisy_labels(clean, rate=label_noise, kind=label_noise_kind, num_classes=num_classes, seed=seed)
    regime = {"label_noise": label_noise, "label_noise_kind": label_noise_kind, "imbalance": imbalance,
              "label_noise_realised": float(np.mean(labels != clean)) if len(clean) else 0.0,
              "train_class_counts": np.bincount(clean, minlength=num_classes).tolist()}
    if not harder:
        return dataclasses.replace(data, regime=regime)
    index = torch.as_tensor(kept, dtype=torch.long, device=data.train.x.device)
    train = Split(data.train.x[index], torch.as_tensor(labels, dtype=torch.int64, device=data.train.y.device))
    return dataclasses.replace(data, train=train, regime=regime)
