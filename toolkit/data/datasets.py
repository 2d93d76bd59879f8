"""Datasets as ready-to-use, normalised tensors: ``load_dataset(name)``.

Known names (case-insensitive): mnist, fashion-mnist (also fashion_mnist, fmnist),
cifar10, cifar100, svhn, and scikit-learn's bundled digits, wine, breast_cancer
(classification) and diabetes (regression); ``csv:PATH`` loads your own CSV file.

Where files are looked for (first hit wins), see :func:`search_roots`: the
``data_dir`` argument, then ``$LFL_DATA`` (several folders may be joined with
``os.pathsep``), then the user cache ``$XDG_CACHE_HOME/onlinelfl`` (default
``~/.cache/onlinelfl``), then ``/usr/share/datasets``. Inside each root a dataset
lives in its own folder (``mnist/``, ``fashion-mnist/``, ``cifar-10-batches-py/`` or
``cifar10/cifar-10-batches-py/``, ``cifar-100-python/`` or
``cifar100/cifar-100-python/``, ``svhn/``); MNIST and Fashion-MNIST files are also
accepted directly in a root (both use the same file names, so keep them in their
folders when you have both). Missing files are downloaded into the cache, checked
against their published MD5 sums, unless ``download=False``.

Splits:
    * test: the official test set; digits, wine, breast_cancer, diabetes and CSV
      files have none, so 20% of the data (stratified for classification) is held
      out with a fixed seed that does not depend on ``seed``: every run of a
      dataset is scored on the same test set.
    * valid: ``valid_fraction`` (default 10%) of the remaining training data,
      stratified for classification, random for regression, drawn with ``seed``.
      ``valid_fraction=0`` gives an empty validation split (zero rows).

Normalisation uses statistics of the train split only: images are scaled to
[0, 1], then standardised per channel; tabular features are standardised per
column (constant columns are only centred); regression targets are standardised,
with ``target_mean`` / ``target_std`` recorded to convert predictions back
(``y * target_std + target_mean``).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from toolkit.data.formats import (
    IDX_NAMES, DataError, download_file, extract_folder, parse_numbers, read_cifar_folder, read_csv, read_idx_folder,
    read_svhn_folder,
)

__all__ = ["DATASET_NAMES", "DataError", "Dataset", "Split", "dataset_status", "load_dataset", "search_roots"]

DATASET_NAMES: tuple[str, ...] = (
    "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "digits", "wine", "breast_cancer", "diabetes",
)
CLASSIFICATION, REGRESSION = "classification", "regression"
SYSTEM_DATA_DIRS: tuple[pathlib.Path, ...] = (pathlib.Path("/usr/share/datasets"),)
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0
MAX_INFERRED_CLASSES = 20
SKLEARN_INSTALL = "install scikit-learn: pip install 'scikit-learn>=1.3'"

_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100",
    "breast-cancer": "breast_cancer",
}
_SKLEARN_TASKS = {"digits": CLASSIFICATION, "wine": CLASSIFICATION, "breast_cancer": CLASSIFICATION,
                  "diabetes": REGRESSION}


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
        x: float32 (N, *input_shape): images (N, C, H, W), tabular (N, F).
        y: classification: int64 (N,) class indices; regression: float32 (N, num_outputs).
    """

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """A dataset with normalised train / valid / test splits (see the module docstring).

    ``meta`` and ``regime`` are set by :func:`toolkit.data.run_data.prepare_run_data` for a
    training run: ``meta`` is the part of the validation split that meta-training may use, and
    ``valid`` is then only the other part, the selection split every method is measured on;
    ``regime`` records how the training split was made harder (label noise, imbalance). A
    loaded dataset has neither (None).
    """

    name: str
    task: str
    input_shape: tuple[int, ...]
    num_outputs: int
    train: Split
    valid: Split
    test: Split
    source: str
    target_mean: float | None = None
    target_std: float | None = None
    meta: Split | None = None
    regime: dict | None = None


@dataclass(frozen=True)
class _Raw:
    """A dataset before splitting: x images uint8 (N, C, H, W) or features float64 (N, F)."""

    task: str
    num_outputs: int
    x: np.ndarray
    y: np.ndarray
    source: str
    test: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class _Download:
    url: str
    filename: str
    md5: str


@dataclass(frozen=True)
class _FileSource:
    """Where a file-based dataset lives and how to read it.

    ``files`` lists the required files, each as alternative names (".gz" or raw);
    ``read`` returns ((x, y), (x_test, y_test)) with uint8 images (N, C, H, W);
    ``hint`` is formatted with ``files`` and ``dir`` (the first search root).
    """

    title: str
    num_classes: int
    folders: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]
    read: Callable[[pathlib.Path], tuple]
    downloads: tuple[_Download, ...]
    download_folder: str
    hint: str
    unpack: str | None = None


def _resolve(directory: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path | None:
    return next((directory / name for name in names if (directory / name).is_file()), None)


_IDX_FILES = tuple((f"{name}.gz", name) for name in IDX_NAMES)
_MNIST_MD5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")
_FASHION_MD5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"


def _idx_downloads(base_url: str, md5s: tuple[str, ...]) -> tuple[_Download, ...]:
    return tuple(_Download(f"{base_url}{name}.gz", f"{name}.gz", md5) for name, md5 in zip(IDX_NAMES, md5s))


_FILE_SOURCES: dict[str, _FileSource] = {
    "mnist": _FileSource(
        title="MNIST", num_classes=10, folders=("mnist", "MNIST/raw", ""), files=_IDX_FILES, read=read_idx_folder,
        downloads=_idx_downloads("https://ossci-datasets.s3.amazonaws.com/mnist/", _MNIST_MD5),
        download_folder="mnist",
        hint="allow download=True on a machine with network access, or put {files} into {dir}/mnist"),
    "fashion-mnist": _FileSource(
        title="Fashion-MNIST", num_classes=10, folders=("fashion-mnist", "FashionMNIST/raw", ""), files=_IDX_FILES,
        read=read_idx_folder,
        downloads=_idx_downloads("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _FASHION_MD5),
        download_folder="fashion-mnist",
        hint="install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
             "or put {files} into {dir}/fashion-mnist"),
    "cifar10": _FileSource(
        title="CIFAR-10", num_classes=10, folders=("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
        files=tuple((name,) for name in [*_CIFAR10_TRAIN, "test_batch"]),
        read=partial(read_cifar_folder, train=_CIFAR10_TRAIN, test="test_batch", label_key="labels", num_classes=10),
        downloads=(_Download(f"{_KRIZ}cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                             "c58f30108f718f92721af3b95e74349a"),),
        download_folder="", unpack="cifar-10-batches-py",
        hint=f"extract {_KRIZ}cifar-10-python.tar.gz (folder cifar-10-batches-py with {{files}}) into {{dir}}"),
    "cifar100": _FileSource(
        title="CIFAR-100", num_classes=100, folders=("cifar-100-python", "cifar100/cifar-100-python"),
        files=(("train",), ("test",)),
        read=partial(read_cifar_folder, train=["train"], test="test", label_key="fine_labels", num_classes=100),
        downloads=(_Download(f"{_KRIZ}cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                             "eb9058c3a382ffc7106e4002c42a8d85"),),
        download_folder="", unpack="cifar-100-python",
        hint=f"extract {_KRIZ}cifar-100-python.tar.gz (folder cifar-100-python with {{files}}) into {{dir}}"),
    "svhn": _FileSource(
        title="SVHN", num_classes=10, folders=("svhn",), files=(("train_32x32.mat",), ("test_32x32.mat",)),
        read=read_svhn_folder,
        downloads=(_Download(f"{_SVHN}train_32x32.mat", "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
                   _Download(f"{_SVHN}test_32x32.mat", "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")),
        download_folder="svhn", hint=f"put {{files}} (from {_SVHN}) into {{dir}}/svhn"),
}


def _cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "onlinelfl"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Folders searched for dataset files, first match wins.

    Args:
        data_dir: an explicit folder, searched first.

    Returns:
        ``data_dir``, the folders in ``$LFL_DATA``, the user cache
        (``$XDG_CACHE_HOME/onlinelfl`` or ``~/.cache/onlinelfl``) and
        ``/usr/share/datasets``, without duplicates; they need not exist.
    """
    candidates = [data_dir] if data_dir is not None else []
    candidates += [part for part in os.environ.get("LFL_DATA", "").split(os.pathsep) if part]
    candidates += [_cache_dir(), *SYSTEM_DATA_DIRS]
    roots: list[pathlib.Path] = []
    for candidate in candidates:
        root = pathlib.Path(candidate).expanduser()
        if root not in roots:
            roots.append(root)
    return roots


def _locate(source: _FileSource, roots: list[pathlib.Path]) -> pathlib.Path | None:
    """First folder under ``roots`` holding all of the source's files (no parsing)."""
    for root in roots:
        for folder in source.folders:
            directory = root / folder if folder else root
            if all(_resolve(directory, names) for names in source.files):
                return directory
    return None


def _hint(source: _FileSource, roots: list[pathlib.Path]) -> str:
    return source.hint.format(files=", ".join(names[0] for names in source.files), dir=roots[0])


def _download(source: _FileSource, cache: pathlib.Path) -> pathlib.Path:
    """Downloads and checks the source's files into ``cache``; returns their folder."""
    folder = cache / source.download_folder
    for item in source.downloads:
        if not (folder / item.filename).is_file():
            download_file(item.url, folder / item.filename, md5=item.md5)
        if source.unpack:
            extract_folder(folder / item.filename, folder, source.unpack)
            (folder / item.filename).unlink()
    found = _locate(source, [cache])
    if found is None:
        raise DataError(f"the download into {folder} did not yield the expected files")
    return found


def _load_files(name: str, *, data_dir, download: bool) -> _Raw:
    source = _FILE_SOURCES[name]
    roots = search_roots(data_dir)
    directory = _locate(source, roots)
    problem = ""
    if directory is None and download:
        try:
            directory = _download(source, _cache_dir())
        except DataError as error:
            problem = f" ({error})"
    if directory is None:
        searched = ", ".join(map(str, roots))
        raise DataError(f"{source.title} not found{problem}: {_hint(source, roots)} (searched: {searched})")
    (x, y), test = source.read(directory)
    return _Raw(CLASSIFICATION, source.num_classes, x, y, str(directory), test)


def _load_sklearn(name: str) -> _Raw:
    try:
        from sklearn import datasets as sklearn_datasets
    except ImportError:
        raise DataError(f"the {name} dataset comes with scikit-learn: {SKLEARN_INSTALL}") from None
    bunch = getattr(sklearn_datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float64)
    if _SKLEARN_TASKS[name] == REGRESSION:
        return _Raw(REGRESSION, 1, x, np.asarray(bunch.target, dtype=np.float64).reshape(-1, 1), "sklearn")
    y = np.asarray(bunch.target, dtype=np.int64)
    return _Raw(CLASSIFICATION, int(y.max()) + 1, x, y, "sklearn")


def _load_csv(path_text: str, *, target: str | None, task: str | None) -> _Raw:
    """Reads ``csv:PATH``; infers the task unless given (see :func:`load_dataset`)."""
    if not path_text:
        raise DataError("csv: needs a path, e.g. csv:data/houses.csv")
    path = pathlib.Path(path_text).expanduser()
    table = read_csv(path, target=target)
    numbers = parse_numbers(table.target)
    if np.any(table.target == "") or (numbers is not None and not np.all(np.isfinite(numbers))):
        raise DataError(f"{path}: target column {table.target_name!r} has missing or non-finite values")
    if task is None:
        categorical = numbers is None or (
            np.all(numbers == np.round(numbers)) and len(np.unique(numbers)) <= MAX_INFERRED_CLASSES)
        task = CLASSIFICATION if categorical else REGRESSION
    if task == REGRESSION:
        if numbers is None:
            raise DataError(f"{path}: target column {table.target_name!r} is not numeric, so it cannot be "
                            "a regression target (use task='classification')")
        return _Raw(REGRESSION, 1, table.features, numbers.reshape(-1, 1), str(path))
    classes, y = np.unique(table.target if numbers is None else numbers, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path}: target column {table.target_name!r} has a single class; classification needs two")
    return _Raw(CLASSIFICATION, len(classes), table.features, y.astype(np.int64).reshape(-1), str(path))


def _holdout(labels: np.ndarray | None, n: int, fraction: float,
             seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``range(n)`` into kept and held-out indices (both sorted); ``seed`` as ``np.random.default_rng`` takes it.

    With ``labels`` the split is stratified: each class gives floor or ceil of
    ``fraction`` times its size, and ``round(fraction * n)`` are held out in all.
    """
    rng = np.random.default_rng(seed)
    n_held = int(round(fraction * n))
    if n - n_held < 1:
        raise DataError(f"too few samples ({n}) to hold out a fraction {fraction} and keep some for training")
    if labels is None:
        order = rng.permutation(n)
        return np.sort(order[n_held:]), np.sort(order[:n_held])
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = fraction * counts
    take = np.floor(quotas).astype(np.int64)
    extra = n_held - int(take.sum())
    take[np.lexsort((rng.random(len(counts)), take - quotas))[:extra]] += 1  # largest remainders first
    held_mask = np.zeros(n, dtype=bool)
    for k, count in enumerate(take):
        held_mask[rng.permutation(np.flatnonzero(inverse == k))[:count]] = True
    return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)


def _standardise_images(images: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Scales uint8 images (N, C, H, W) to [0, 1] and standardises each channel with the train statistics."""
    tensors = {key: torch.from_numpy(value.astype(np.float32)).div_(255.0) for key, value in images.items()}
    var, mean = torch.var_mean(tensors["train"], dim=(0, 2, 3), keepdim=True, correction=0)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return {key: tensor.sub_(mean).div_(std) for key, tensor in tensors.items()}


def _scaled_statistics(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (scale, mean/scale, std/scale) of (N, F), with scale the largest |value| (1 for zeros).

    Computed on values divided by their scale, so that columns near float64's
    limit (1e308) neither overflow the variance nor become infinite.
    """
    scale = np.max(np.abs(train), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    scaled = train / scale
    return scale, scaled.mean(axis=0), scaled.std(axis=0)


def _standardise_features(features: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Standardises each column of (N, F) with the train statistics; constant columns are only centred."""
    scale, mean, std = _scaled_statistics(features["train"])
    std = np.where(std > 1e-12 * np.maximum(1.0 / scale, np.abs(mean)), std, 1.0)
    return {key: torch.from_numpy(((value / scale - mean) / std).astype(np.float32))
            for key, value in features.items()}


def _build(name: str, raw: _Raw, *, valid_fraction: float, seed: int) -> Dataset:
    """Splits (test if needed, then valid) and normalises with train statistics."""
    x, y = raw.x, raw.y
    strata = y if raw.task == CLASSIFICATION else None
    if raw.test is None:
        kept, held = _holdout(strata, len(y), TEST_FRACTION, TEST_SPLIT_SEED)
        (x_test, y_test), x, y = (x[held], y[held]), x[kept], y[kept]
        strata = y if raw.task == CLASSIFICATION else None
    else:
        x_test, y_test = raw.test
    kept, held = _holdout(strata, len(y), valid_fraction, seed)
    inputs = {"train": x[kept], "valid": x[held], "test": x_test}
    inputs = _standardise_images(inputs) if x.ndim == 4 else _standardise_features(inputs)
    targets = {"train": y[kept], "valid": y[held], "test": y_test}
    target_mean = target_std = None
    if raw.task == CLASSIFICATION:
        targets = {key: torch.tensor(value, dtype=torch.int64) for key, value in targets.items()}
    else:
        scale, mean, std = (float(v[0]) for v in _scaled_statistics(targets["train"].reshape(-1, 1)))
        std = std or 1.0 / scale
        target_mean, target_std = scale * mean, scale * std
        targets = {key: torch.tensor((value / scale - mean) / std, dtype=torch.float32)
                   for key, value in targets.items()}
    splits = {key: Split(inputs[key], targets[key]) for key in inputs}
    return Dataset(name, raw.task, tuple(x.shape[1:]), raw.num_outputs, **splits, source=raw.source,
                   target_mean=target_mean, target_std=target_std)


def _canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        known = ", ".join(DATASET_NAMES)
        raise DataError(f"unknown dataset {name!r}; known: {known}, or csv:PATH for your own CSV file")
    return key


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, valid_fraction: float = 0.1,
                 seed: int = 0, download: bool = True, target: str | None = None,
                 task: str | None = None) -> Dataset:
    """Loads a dataset as normalised train / valid / test tensors (see the module docstring).

    Args:
        name: one of ``DATASET_NAMES`` (case-insensitive, aliases fashion_mnist and
            fmnist), or ``csv:PATH`` for a CSV file with a header row.
        data_dir: folder searched before ``$LFL_DATA``, the cache and /usr/share/datasets.
        valid_fraction: share of the training data held out for validation, in [0, 1).
        seed: seed of the validation split.
        download: fetch missing files into the cache (checksum-verified).
        target: CSV only: name of the target column (default the last column).
        task: CSV only: "classification" or "regression"; inferred when None
            (a target of integers with at most 20 distinct values, or of
            non-numbers, means classification).

    Returns:
        The :class:`Dataset`; images have x (N, C, H, W), tabular data (N, F).

    Raises:
        DataError: unknown name, missing or corrupted files, bad options (one line).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    if task not in (None, CLASSIFICATION, REGRESSION):
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    if name.strip().lower().startswith("csv:"):
        path_text = name.strip()[4:]
        raw = _load_csv(path_text, target=target, task=task)
        return _build(f"csv:{path_text}", raw, valid_fraction=valid_fraction, seed=seed)
    key = _canonical_name(name)
    if target is not None:
        raise DataError(f"target= applies to csv:PATH datasets only, not to {key}")
    if task is not None and task != _dataset_task(key):
        raise DataError(f"{key} is a {_dataset_task(key)} dataset, not {task}")
    raw = _load_sklearn(key) if key in _SKLEARN_TASKS else _load_files(key, data_dir=data_dir, download=download)
    return _build(key, raw, valid_fraction=valid_fraction, seed=seed)


def _dataset_task(key: str) -> str:
    return _SKLEARN_TASKS.get(key, CLASSIFICATION)


def dataset_status(*, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Reports which datasets are available, without downloading or parsing anything.

    Returns:
        One dict per name in ``DATASET_NAMES``: ``name``, ``task``, ``found``
        (bool), ``where`` (folder, "sklearn", or None) and ``hint`` (how to get it).
    """
    roots = search_roots(data_dir)
    has_sklearn = importlib.util.find_spec("sklearn") is not None
    statuses = []
    for name in DATASET_NAMES:
        if name in _SKLEARN_TASKS:
            where = "sklearn" if has_sklearn else None
            hint = "bundled with scikit-learn" if has_sklearn else SKLEARN_INSTALL
        else:
            found = _locate(_FILE_SOURCES[name], roots)
            where, hint = (str(found) if found else None), _hint(_FILE_SOURCES[name], roots)
        statuses.append({"name": name, "task": _dataset_task(name), "found": where is not None,
                         "where": where, "hint": hint})
    return statuses
