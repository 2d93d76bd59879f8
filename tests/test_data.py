"""Tests for toolkit.data.datasets on small files written here in the real formats."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.data import datasets as data, formats as datasets_formats
from toolkit.data.datasets import DATASET_NAMES, DataError, dataset_status, load_dataset, search_roots

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- writers of the real formats

def labels_for(n: int, classes: int, seed: int = 0) -> np.ndarray:
    """Balanced labels 0..classes-1 in random order, (n,)."""
    return np.random.default_rng(seed).permutation(np.arange(n) % classes).astype(np.uint8)


def images_for(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 ndim, big-endian dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, *, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    """Writes the four MNIST IDX files; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        IDX_NAMES[0]: images_for(n_train, (28, 28), seed), IDX_NAMES[1]: labels_for(n_train, 10, seed),
        IDX_NAMES[2]: images_for(n_test, (28, 28), seed + 1), IDX_NAMES[3]: labels_for(n_test, 10, seed + 1),
    }
    for name, array in arrays.items():
        payload = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return arrays


def cifar_batch(n: int, classes: int, label_key: bytes, seed: int) -> dict:
    return {b"batch_label": b"testing batch", b"data": images_for(n, (3072,), seed),
            label_key: [int(v) for v in labels_for(n, classes, seed)], b"filenames": [b"x.png"] * n}


def write_cifar10(folder: Path, *, n: int = 20) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(n, 10, b"labels", i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n, 10, b"labels", 9)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # the real files are protocol 2
    return batches


def write_cifar100(folder: Path, *, n_train: int = 300, n_test: int = 100) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {"train": cifar_batch(n_train, 100, b"fine_labels", 1),
               "test": cifar_batch(n_test, 100, b"fine_labels", 2)}
    for name, batch in batches.items():
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        (folder / name).write_bytes(pickle.dumps(batch))  # newest protocol: arrays via _frombuffer
    return batches


def write_svhn(folder: Path, *, n_train: int = 40, n_test: int = 20) -> dict:
    from scipy import io as scipy_io

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n, seed in (("train_32x32.mat", n_train, 1), ("test_32x32.mat", n_test, 2)):
        x = images_for(n, (32, 32, 3), seed).transpose(1, 2, 3, 0)  # (32, 32, 3, N) as in the real files
        y = (labels_for(n, 10, seed).astype(np.uint8) + 1).reshape(-1, 1)  # 1..10, 10 is the digit 0
        scipy_io.savemat(folder / name, {"X": x, "y": y})
        written[name] = (x, y)
    return written


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_affine_per_channel(x: torch.Tensor, raw: np.ndarray) -> None:
    """x (N, C, H, W) must be a positive affine map of raw uint8 (N, C, H, W), channel by channel."""
    assert tuple(x.shape) == raw.shape
    for channel in range(raw.shape[1]):
        source = raw[:, channel].reshape(-1).astype(np.float64)
        target = x[:, channel].reshape(-1).double().numpy()
        slope, intercept = np.polyfit(source, target, 1)
        assert slope > 0
        np.testing.assert_allclose(target, slope * source + intercept, atol=1e-5)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- isolation: no real roots, no network

@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Points the cache and system roots into tmp_path and makes any download fail at once."""
    monkeypatch.delenv("LFL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (tmp_path / "system",))

    def no_network(url, timeout=None):
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(datasets_formats.urllib.request, "urlopen", no_network)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "xdg" / "onlinelfl"


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_mnist_idx_loads_shapes_labels_and_layout(tmp_path, gz):
    arrays = write_mnist(tmp_path / "d" / "mnist", gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path / "d", download=False)
    assert (ds.name, ds.task, ds.input_shape, ds.num_outputs) == ("mnist", "classification", (1, 28, 28), 10)
    assert (len(ds.train.y), len(ds.valid.y), len(ds.test.y)) == (54, 6, 20)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.source == str(tmp_path / "d" / "mnist")
    np.testing.assert_array_equal(ds.test.y.numpy(), arrays[IDX_NAMES[3]])
    assert_affine_per_channel(ds.test.x, arrays[IDX_NAMES[2]][:, None])
    all_train = np.sort(np.concatenate([ds.train.y.numpy(), ds.valid.y.numpy()]))
    np.testing.assert_array_equal(all_train, np.sort(arrays[IDX_NAMES[1]]))
    assert ds.target_mean is None and ds.target_std is None


def test_mnist_files_directly_in_root_and_aliases(tmp_path):
    write_mnist(tmp_path / "flat")
    ds = load_dataset("mnist", data_dir=tmp_path / "flat", download=False)
    assert ds.source == str(tmp_path / "flat")
    for alias in ("Fashion-MNIST", "fashion_mnist", "FMNIST", " fmnist "):
        assert load_dataset(alias, data_dir=tmp_path / "flat", download=False).name == "fashion-mnist"


def _corrupt_bad_magic(folder: Path) -> Path:
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + gzip.decompress(path.read_bytes())[4:]))
    return path


def _corrupt_truncated_payload(folder: Path) -> Path:
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    return path


def _corrupt_truncated_gzip(folder: Path) -> Path:
    path = folder / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _corrupt_label_range(folder: Path) -> Path:
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.full(60, 10, dtype=np.uint8))))
    return path


def _corrupt_count_mismatch(folder: Path) -> Path:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(19, dtype=np.uint8))))
    return path


@pytest.mark.parametrize("corrupt", [_corrupt_bad_magic, _corrupt_truncated_payload, _corrupt_truncated_gzip,
                                     _corrupt_label_range, _corrupt_count_mismatch],
                         ids=["bad-magic", "truncated-payload", "truncated-gzip", "label-range", "count-mismatch"])
def test_corrupted_idx_raises_data_error_naming_the_file(tmp_path, corrupt):
    write_mnist(tmp_path / "mnist")
    bad = corrupt(tmp_path / "mnist")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(bad) in one_line_error(excinfo)


# ----------------------------------------------------------------------------- CIFAR-10 / CIFAR-100 (pickles)

@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
def test_cifar10_loads_in_both_layouts_with_channel_order(tmp_path, layout):
    batches = write_cifar10(tmp_path / layout)
    ds = load_dataset("CIFAR10", data_dir=tmp_path, download=False)
    assert (ds.input_shape, ds.num_outputs, ds.source) == ((3, 32, 32), 10, str(tmp_path / layout))
    assert (len(ds.train.y) + len(ds.valid.y), len(ds.valid.y), len(ds.test.y)) == (100, 10, 20)
    test = batches["test_batch"]
    np.testing.assert_array_equal(ds.test.y.numpy(), test[b"labels"])
    assert_affine_per_channel(ds.test.x, test[b"data"].reshape(-1, 3, 32, 32))


def test_cifar100_uses_fine_labels(tmp_path):
    batches = write_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    ds = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert (ds.num_outputs, len(ds.train.y), len(ds.valid.y), len(ds.test.y)) == (100, 270, 30, 100)
    np.testing.assert_array_equal(ds.test.y.numpy(), batches["test"][b"fine_labels"])
    assert int(torch.bincount(ds.valid.y, minlength=100).max()) == 1  # 3 per class: 0.3 each rounds to 0 or 1


def test_image_normalisation_uses_train_statistics_per_channel(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    x = ds.train.x.double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert abs(float(ds.test.x.mean())) > 1e-7  # test is not standardised with its own statistics


@pytest.mark.parametrize("payload", [b"\x80\x02}q\x00(X\x04\x00\x00\x00data", b"not a pickle at all",
                                     b"cos\nsystem\n(S'echo pwned'\ntR."], ids=["truncated", "garbage", "code"])
def test_broken_or_unsafe_cifar_pickle_raises_naming_the_file(tmp_path, payload):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(payload)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert str(bad) in one_line_error(excinfo)


def test_cifar_wrong_contents_raise(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = cifar_batch(20, 10, b"labels", 3)
    batch[b"labels"] = batch[b"labels"][:-1]
    bad.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="20 images but 19 labels") as excinfo:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert str(bad) in one_line_error(excinfo)


# ----------------------------------------------------------------------------- SVHN (.mat)

def test_svhn_maps_label_10_to_digit_0_and_transposes(tmp_path):
    written = write_svhn(tmp_path / "svhn")
    ds = load_dataset("svhn", data_dir=tmp_path, download=False)
    x, y = written["test_32x32.mat"]
    assert (ds.input_shape, ds.num_outputs, len(ds.test.y)) == ((3, 32, 32), 10, 20)
    np.testing.assert_array_equal(ds.test.y.numpy(), y.reshape(-1) % 10)
    assert int(ds.test.y.min()) == 0 and int(ds.test.y.max()) == 9
    assert_affine_per_channel(ds.test.x, x.transpose(3, 2, 0, 1))


@pytest.mark.parametrize("contents, message", [
    ({"images": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}, "expected the variables X and y"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)}, "1..10"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1), np.uint8)}, "2 images but 3 labels"),
], ids=["no-X", "label-range", "count-mismatch"])
def test_svhn_bad_mat_raises(tmp_path, contents, message):
    from scipy import io as scipy_io

    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "test_32x32.mat"
    scipy_io.savemat(bad, contents)
    with pytest.raises(DataError, match=message) as excinfo:
        load_dataset("svhn", data_dir=tmp_path, download=False)
    assert str(bad) in one_line_error(excinfo)


def test_svhn_truncated_mat_raises(tmp_path):
    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "train_32x32.mat"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError) as excinfo:
        load_dataset("svhn", data_dir=tmp_path, download=False)
    assert str(bad) in one_line_error(excinfo)


# ----------------------------------------------------------------------------- search order, hints, downloads

def test_search_roots_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LFL_DATA", str(tmp_path / "env"))
    assert search_roots(tmp_path / "explicit") == [
        tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg" / "onlinelfl", tmp_path / "system"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_roots()[1] == tmp_path / "home" / ".cache" / "onlinelfl"


def test_data_dir_before_env_before_cache_before_system(tmp_path, monkeypatch, cache):
    for folder in (tmp_path / "explicit", tmp_path / "env", cache, tmp_path / "system"):
        write_mnist(folder / "mnist")
    monkeypatch.setenv("LFL_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", data_dir=tmp_path / "explicit", download=False).source == str(
        tmp_path / "explicit" / "mnist")
    assert load_dataset("mnist", download=False).source == str(tmp_path / "env" / "mnist")
    monkeypatch.delenv("LFL_DATA")
    assert load_dataset("mnist", download=False).source == str(cache / "mnist")
    (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # incomplete folders are skipped
    assert load_dataset("mnist", download=False).source == str(tmp_path / "system" / "mnist")


@pytest.mark.parametrize("name, expected", [
    ("fashion-mnist", "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist "
                      "(apt-get install dataset-fashion-mnist) or put train-images-idx3-ubyte.gz, "
                      "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz into {dir}/"
                      "fashion-mnist (searched: {dir}, {cache}, {system})"),
    ("mnist", "MNIST not found: "),
    ("cifar10", "cifar-10-python.tar.gz (folder cifar-10-batches-py with data_batch_1, "),
    ("cifar100", "cifar-100-python.tar.gz (folder cifar-100-python with train, test) into {dir}"),
    ("svhn", "put train_32x32.mat, test_32x32.mat (from http://ufldl.stanford.edu/housenumbers/) into {dir}/svhn"),
])
def test_missing_files_give_one_line_hint(tmp_path, cache, name, expected):
    with pytest.raises(DataError) as excinfo:
        load_dataset(name, data_dir=tmp_path / "mine", download=False)
    expected = expected.format(dir=tmp_path / "mine", cache=cache, system=tmp_path / "system")
    assert expected in one_line_error(excinfo)


def test_failed_download_is_reported_in_the_hint_and_leaves_no_files(tmp_path, cache):
    with pytest.raises(DataError) as excinfo:
        load_dataset("svhn", download=True)
    message = one_line_error(excinfo)
    assert message.startswith("SVHN not found (download of http://ufldl.stanford.edu/housenumbers/train_32x32.mat")
    assert "network disabled in tests" in message and "into " + str(cache / "svhn") in message
    assert not (cache / "svhn").exists() or not any((cache / "svhn").iterdir())


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Makes urlopen answer the given URLs with the given bytes; returns the URLs requested."""
    requested = []

    def fake_urlopen(url, timeout=None):
        assert timeout is not None and timeout <= 30
        requested.append(url)
        return io.BytesIO(files[url])

    monkeypatch.setattr(datasets_formats.urllib.request, "urlopen", fake_urlopen)
    return requested


def test_download_file_is_atomic_and_checks_md5(tmp_path, monkeypatch):
    serve(monkeypatch, {"http://x/f": b"hello"})
    dest = tmp_path / "dl" / "f"
    datasets_formats.download_file("http://x/f", dest, md5=hashlib.md5(b"hello").hexdigest(),
                                   sha256=hashlib.sha256(b"hello").hexdigest())
    assert dest.read_bytes() == b"hello" and sorted(p.name for p in dest.parent.iterdir()) == ["f"]
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets_formats.download_file("http://x/f", tmp_path / "dl" / "g", md5="0" * 32)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f"]


def with_downloads(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """Replaces the dataset's download list by fake URLs whose md5 matches the given bytes."""
    source = data._FILE_SOURCES[name]
    downloads = tuple(data._Download(f"http://fake/{filename}", filename, hashlib.md5(content).hexdigest())
                      for filename, content in files.items())
    monkeypatch.setitem(data._FILE_SOURCES, name, dataclasses.replace(source, downloads=downloads))
    serve(monkeypatch, {f"http://fake/{filename}": content for filename, content in files.items()})


def test_download_mnist_into_cache(tmp_path, monkeypatch, cache):
    arrays = write_mnist(tmp_path / "origin")
    with_downloads(monkeypatch, "mnist", {f"{n}.gz": (tmp_path / "origin" / f"{n}.gz").read_bytes() for n in arrays})
    ds = load_dataset("mnist")
    assert ds.source == str(cache / "mnist") and len(ds.test.y) == 20
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)


def test_download_cifar10_tarball_is_extracted(tmp_path, monkeypatch, cache):
    write_cifar10(tmp_path / "origin" / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "origin" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with_downloads(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": buffer.getvalue()})
    ds = load_dataset("cifar10")
    assert ds.source == str(cache / "cifar-10-batches-py") and len(ds.test.y) == 20
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]


# ----------------------------------------------------------------------------- splits

def test_valid_split_is_stratified_and_seeded():
    first = load_dataset("digits", seed=0)
    counts_train = torch.bincount(first.train.y, minlength=10).double()
    counts_valid = torch.bincount(first.valid.y, minlength=10).double()
    assert len(first.valid.y) == round(0.1 * (len(first.train.y) + len(first.valid.y)))
    assert torch.all((counts_valid - 0.1 * (counts_train + counts_valid)).abs() < 1)
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(first.valid.x, again.valid.x) and torch.equal(first.valid.y, again.valid.y)
    assert not torch.equal(first.valid.x, other.valid.x)
    assert torch.equal(first.test.y, other.test.y)  # the held-out test split does not depend on seed


def test_valid_fraction_options(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=100)
    ds = load_dataset("mnist", data_dir=tmp_path, valid_fraction=0.0, download=False)
    assert tuple(ds.valid.x.shape) == (0, 1, 28, 28) and len(ds.train.y) == 100
    ds = load_dataset("mnist", data_dir=tmp_path, valid_fraction=0.25, download=False)
    assert sorted(torch.bincount(ds.valid.y, minlength=10).tolist()) == [2] * 5 + [3] * 5  # 2.5 per class
    for bad in (1.0, -0.1):
        with pytest.raises(DataError, match="valid_fraction"):
            load_dataset("mnist", data_dir=tmp_path, valid_fraction=bad, download=False)


# ----------------------------------------------------------------------------- scikit-learn sets

@pytest.mark.parametrize("name, features, classes, total", [
    ("digits", 64, 10, 1797), ("wine", 13, 3, 178), ("breast_cancer", 30, 2, 569)])
def test_sklearn_classification_sets(name, features, classes, total):
    ds = load_dataset(name)
    assert (ds.task, ds.input_shape, ds.num_outputs, ds.source) == ("classification", (features,), classes, "sklearn")
    sizes = len(ds.train.y), len(ds.valid.y), len(ds.test.y)
    assert sum(sizes) == total and sizes[2] == round(0.2 * total)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert float(ds.train.x.mean(0).abs().max()) < 1e-5


def test_diabetes_regression_targets_are_standardised_and_recoverable():
    from sklearn.datasets import load_diabetes

    ds = load_dataset("diabetes")
    assert (ds.task, ds.input_shape, ds.num_outputs) == ("regression", (10,), 1)
    assert ds.train.y.dtype == torch.float32 and tuple(ds.train.y.shape) == (len(ds.train.x), 1)
    assert abs(float(ds.train.y.mean())) < 1e-5 and abs(float(ds.train.y.std(correction=0)) - 1) < 1e-5
    restored = torch.cat([ds.train.y, ds.valid.y, ds.test.y]).double() * ds.target_std + ds.target_mean
    np.testing.assert_allclose(np.sort(restored.numpy().ravel()), np.sort(load_diabetes().target), atol=1e-3)
    features = ds.train.x.double()
    assert float(features.mean(0).abs().max()) < 1e-5 and float((features.std(0, correction=0) - 1).abs().max()) < 1e-5


def test_missing_sklearn_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DataError, match=r"install scikit-learn: pip install 'scikit-learn>=1.3'"):
        load_dataset("wine")
    status = {entry["name"]: entry for entry in dataset_status()}
    assert status["wine"]["found"] is False and "pip install" in status["wine"]["hint"]


# ----------------------------------------------------------------------------- CSV

def test_csv_infers_classification_and_default_target(tmp_path):
    rows = [[i, i * 0.5, i % 3] for i in range(60)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label"], rows)
    ds = load_dataset(f"csv:{path}")
    assert (ds.name, ds.task, ds.input_shape, ds.num_outputs, ds.source) == (
        f"csv:{path}", "classification", (2,), 3, str(path))
    assert (len(ds.train.y), len(ds.valid.y), len(ds.test.y)) == (43, 5, 12)


def test_csv_target_column_regression_and_task_override(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[round(float(v), 4), int(k), round(float(w), 4)] for v, k, w in
            zip(rng.normal(size=50), rng.integers(0, 2, 50), rng.normal(size=50))]
    path = write_csv(tmp_path / "r.csv", ["x1", "price", "x2"], [[r[0], r[2] * 10 + 3, r[2]] for r in rows])
    ds = load_dataset(f"CSV:{path}", target="price")
    assert ds.name == f"csv:{path}"
    assert (ds.task, ds.input_shape, ds.num_outputs) == ("regression", (2,), 1)
    assert ds.target_mean is not None and ds.target_std > 0
    path = write_csv(tmp_path / "k.csv", ["x1", "group", "x2"], rows)
    assert load_dataset(f"csv:{path}", target="group").task == "classification"
    forced = load_dataset(f"csv:{path}", target="group", task="regression")
    assert forced.task == "regression" and forced.train.y.dtype == torch.float32


def test_csv_string_target_and_headerless_file(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["w", "species"], [[i, ["setosa", "virginica"][i % 2]] for i in range(20)])
    ds = load_dataset(f"csv:{path}")
    assert ds.task == "classification" and ds.num_outputs == 2
    path = write_csv(tmp_path / "n.csv", None, [[i, i % 2] for i in range(20)])
    ds = load_dataset(f"csv:{path}")
    assert ds.num_outputs == 2 and sum(map(len, (ds.train.y, ds.valid.y, ds.test.y))) == 20


@pytest.mark.parametrize("setup, message", [
    (lambda p: write_csv(p, ["a", "colour", "y"], [[1, "red", 0], [2, "blue", 1]] * 5), "column 'colour'"),
    (lambda p: write_csv(p, ["a", "b", "y"], [[1, "", 0], [2, 3, 1]] * 5), "column 'b'"),
    (lambda p: write_csv(p, ["a", "b", "y"], [[1, 2, 0], [2, 3]] * 5), "line 3 has 2 fields"),
    (lambda p: write_csv(p, ["a", "y"], [[1, 0], [2, ""], [3, 1]] * 5), "target column 'y' has missing"),
    (lambda p: p, "CSV file not found"),
], ids=["non-numeric", "missing-value", "ragged", "missing-target", "missing-file"])
def test_csv_errors_name_file_and_column(tmp_path, setup, message):
    path = setup(tmp_path / "bad.csv")
    with pytest.raises(DataError, match=message) as excinfo:
        load_dataset(f"csv:{path}")
    assert str(path) in one_line_error(excinfo)


def test_csv_unknown_target_and_bad_options(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [[i, i % 2] for i in range(20)])
    with pytest.raises(DataError, match="no column 'z'; columns: a, y"):
        load_dataset(f"csv:{path}", target="z")
    with pytest.raises(DataError, match="task must be"):
        load_dataset(f"csv:{path}", task="ranking")
    with pytest.raises(DataError, match="csv:PATH datasets only"):
        load_dataset("wine", target="y")
    with pytest.raises(DataError, match="wine is a classification dataset"):
        load_dataset("wine", task="regression")


# ----------------------------------------------------------------------------- names and status

def test_unknown_name_lists_known_names():
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet")
    message = one_line_error(excinfo)
    assert all(name in message for name in DATASET_NAMES) and "csv:PATH" in message


def test_dataset_status_checks_presence_without_parsing(tmp_path):
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"corrupt, but present")
    status = dataset_status(data_dir=tmp_path)
    assert [entry["name"] for entry in status] == list(DATASET_NAMES)
    assert all(set(entry) == {"name", "task", "found", "where", "hint"} for entry in status)
    by_name = {entry["name"]: entry for entry in status}
    assert by_name["mnist"]["found"] and by_name["mnist"]["where"] == str(tmp_path / "mnist")
    assert not by_name["cifar10"]["found"] and by_name["cifar10"]["where"] is None
    assert "cifar-10-batches-py" in by_name["cifar10"]["hint"]
    assert by_name["diabetes"] == {"name": "diabetes", "task": "regression", "found": True, "where": "sklearn",
                                   "hint": "bundled with scikit-learn"}


# ----------------------------------------------------------------------------- the real Fashion-MNIST files

def test_real_fashion_mnist():
    if not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        message = f"no Fashion-MNIST in {REAL_FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    ds = load_dataset("fashion-mnist", data_dir=REAL_FASHION_MNIST, download=False)
    assert (ds.input_shape, ds.num_outputs, ds.task) == ((1, 28, 28), 10, "classification")
    assert (len(ds.train.y), len(ds.valid.y), len(ds.test.y)) == (54000, 6000, 10000)
    assert torch.bincount(ds.valid.y).tolist() == [600] * 10
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert abs(float(ds.train.x.mean())) < 1e-4 and abs(float(ds.train.x.std()) - 1) < 1e-3
