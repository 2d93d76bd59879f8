"""The data one training run sees: its dataset split for selection and, if asked, made harder.

``lfl train`` and the Python API's ``train`` load a dataset (:func:`~toolkit.data.load_dataset`),
then :func:`prepare_run_data` divides its validation split into a meta and a selection part
(:mod:`toolkit.data.selection`) and corrupts its training split as the config asks
(:mod:`toolkit.data.regimes`). Both are pure functions of the config's seed. The config is any
object with the :class:`~toolkit.runs.config.TrainConfig` fields read here (no import of it, so
this package stays below toolkit.runs).
"""
from __future__ import annotations

import dataclasses

from toolkit.data.datasets import Dataset, load_dataset
from toolkit.data.regimes import apply_regime
from toolkit.data.selection import search_view, split_for_selection

__all__ = ["load_run_data", "load_search_data", "prepare_run_data"]


def prepare_run_data(data: Dataset, config) -> Dataset:
    """``data`` as a run with ``config`` uses it: a meta part split off, the training split corrupted.

    A dataset already prepared (``regime`` set) is returned as it is, so a prepared dataset may be
    handed to ``train(dataset=...)`` again (TaylorGLO's candidates); a dataset with its own ``meta``
    part keeps it.
    """
    if data.regime is not None:
        return data
    if data.meta is None:
        data = split_for_selection(data, fraction=config.selection_fraction, seed=config.seed)
    data = apply_regime(data, label_noise=config.label_noise, label_noise_kind=config.label_noise_kind,
                        imbalance=config.imbalance, seed=config.seed)
    sizes = {"meta_samples": len(data.meta.y), "selection_samples": len(data.valid.y)}
    return dataclasses.replace(data, regime={**data.regime, **sizes})


def load_run_data(config) -> Dataset:
    """The dataset a config names, loaded (its seed picks the validation split) and prepared for the run."""
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                        valid_fraction=config.valid_fraction, target=config.target, task=config.task)
    return prepare_run_data(data, config)


def load_search_data(config) -> Dataset:
    """The run's data as a loss search sees it: candidates' fitness is measured on the meta part only."""
    return search_view(load_run_data(config))
