"""A selection split of its own: the validation split divided into a meta part and a selection part.

Why: a study (``lfl study``) chooses each method's grid point on its validation error. A
learned loss that meta-trains on the validation split (AdaLFL's and ML3's meta-objective,
``--meta-source valid``; TaylorGLO's fitness) would then be selected on data it trained on,
while cross-entropy is selected on data it never saw. So the validation split is divided, by
a pure function of the seed and stratified for classification, into

* the *meta* part: the only validation data any method trains or meta-trains on (the
  meta-objective's batches offline and online, TaylorGLO's fitness), and
* the *selection* part, ``selection_fraction`` of the validation split: the data every
  method's reported ``valid_*`` metrics are measured on, and so what a study selects on.

The four index sets (train, meta, selection, test) are pairwise disjoint. Every method is
selected on the same held-out data, whatever it trains on; a learned loss meta-trains on
less data than when it used the whole validation split.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from toolkit.data.datasets import CLASSIFICATION, DataError, Dataset, Split, _holdout

__all__ = ["SELECTION_SEED_TAG", "search_view", "selection_indices", "split_for_selection"]

SELECTION_SEED_TAG = 5151
"""Mixed with the run's seed (``np.random.default_rng([seed, tag])``) so the selection split's draw is its own."""


def selection_indices(labels: np.ndarray | None, n: int, *, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``range(n)`` (the validation split's rows) in the meta and the selection part, both sorted.

    Args:
        labels: class labels (N,) to stratify by (each class gives floor or ceil of its share,
            ``round(fraction * n)`` in all), or None for a random split (regression).
        n: the validation split's size.
        fraction: the selection part's share, in (0, 1).
        seed: the run's seed; the split is a pure function of it.

    Raises:
        DataError: ``fraction`` outside (0, 1), or a part that would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--selection-fraction must lie in (0, 1), got {fraction}")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_selection = int(round(fraction * n))
    if not 1 <= n_selection < n:
        raise DataError(f"a validation split of {n} samples cannot give a selection part of {fraction:g} and keep a "
                        "meta part: raise --valid-fraction or move --selection-fraction towards 0.5")
    return _holdout(labels, n, fraction, [seed, SELECTION_SEED_TAG])


def split_for_selection(data: Dataset, *, fraction: float, seed: int) -> Dataset:
    """``data`` with ``valid`` the selection part and ``meta`` the meta part (see the module docstring).

    Train and test are the same tensors as in ``data``.
    """
    valid = data.valid
    labels = valid.y.cpu().numpy() if data.task == CLASSIFICATION else None
    meta, selection = selection_indices(labels, len(valid.y), fraction=fraction, seed=seed)
    meta_t, selection_t = (_index(valid, rows) for rows in (meta, selection))
    return dataclasses.replace(data, valid=selection_t, meta=meta_t)


def search_view(data: Dataset) -> Dataset:
    """The dataset a loss search trains its candidates on: its fitness (``valid``) is the meta part.

    A search (TaylorGLO) is meta-training: its fitness must not be measured on the selection part.
    """
    if data.meta is None:
        raise DataError("the dataset has no meta part: prepare it with toolkit.data.run_data.prepare_run_data")
    return dataclasses.replace(data, valid=data.meta)


def _index(split: Split, rows: np.ndarray) -> Split:
    index = torch.as_tensor(rows, dtype=torch.long, device=split.x.device)
    return Split(split.x[index], split.y[index])
