"""Datasets and their training augmentation: loaders for the standard files (downloaded where a network
exists), scikit-learn's bundled sets, CSV files; splits and normalisation; CIFAR/SVHN crops and flips;
a run's meta/selection parts of the validation split and its harder training regimes (label noise, imbalance).

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from toolkit._faces import lazy_names

_WHERE = {
    "DATASET_NAMES": "datasets",
    "DataError": "datasets",
    "Dataset": "datasets",
    "Split": "datasets",
    "dataset_status": "datasets",
    "load_dataset": "datasets",
    "Augmentation": "augment",
    "AugmentedBatches": "augment",
    "augment_batch": "augment",
    "augmentation_for": "augment",
    "NOISE_KINDS": "regimes",
    "apply_regime": "regimes",
    "noisy_labels": "regimes",
    "long_tail_counts": "regimes",
    "imbalanced_indices": "regimes",
    "split_for_selection": "selection",
    "selection_indices": "selection",
    "search_view": "selection",
    "prepare_run_data": "run_data",
    "load_run_data": "run_data",
    "load_search_data": "run_data",
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
