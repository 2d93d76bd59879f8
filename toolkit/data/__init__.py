"""Datasets and their training augmentation: loaders for the standard files (downloaded where a network
exists), scikit-learn's bundled sets, CSV files; splits and normalisation; CIFAR/SVHN crops and flips.

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from importlib import import_module

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
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
