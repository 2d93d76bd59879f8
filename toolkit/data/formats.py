"""Readers for the dataset file formats, and a checksum-verified downloader.

Every reader checks what it reads and raises :class:`DataError` naming the file
when the file is corrupted, truncated or not what it claims to be, so that a
broken download never turns into a silently wrong dataset.

Formats:
    * IDX (MNIST, Fashion-MNIST), gzipped or raw; gzip is recognised by its
      magic bytes, not by the file name.
    * CIFAR-10 / CIFAR-100 python pickles, loaded with an unpickler that only
      accepts NumPy arrays and plain containers (no arbitrary code).
    * SVHN ``*_32x32.mat`` (MATLAB, via ``scipy.io.loadmat``).
    * CSV with a header row (or none, when every field of the first row is a
      number).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import UserError

DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds a download may wait on the network at a time (offline machines fail fast)."""

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The MNIST / Fashion-MNIST files, each stored gzipped (name + ".gz") or raw."""

MAX_IDX_BYTES = 1 << 30
"""Most data bytes an IDX header may declare (MNIST's training images take 47 MB)."""
MAX_CSV_BYTES = 100 << 20
"""Largest CSV file read (its rows become Python strings, several times the file's size)."""

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(UserError):
    """A problem with the user's data files or options; ``str(error)`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """Returns ``labels`` as int64 after checking they lie in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels must lie in 0..{num_classes - 1}, "
            f"found {labels.min()}..{labels.max()} (corrupted file?)"
        )
    return labels.astype(np.int64)


def _open_regular(path: Path):
    """Opens ``path`` for binary reading if it is a regular file (not a device, pipe or folder)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        file.close()
        raise DataError(f"{path} is not a regular file")
    return file


def _read_exactly(stream, size: int, path: Path) -> bytes:
    """Reads ``size`` bytes and checks that the stream ends there (a bounded read, never ``read()``)."""
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) != size or stream.read(1):
        raise DataError(f"{path}: the header says {size} bytes of data but the file holds "
                        f"{'fewer' if len(data) != size else 'more'} (truncated or corrupted)")
    return data


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Reads an IDX array (the MNIST format).

    The header is read and checked first: the size it declares must be at most
    ``MAX_IDX_BYTES`` and match the (decompressed) data exactly, which is read
    with a bounded read, so a small hostile file never expands into memory.

    Args:
        path: ``*-idx?-ubyte`` file, gzipped or raw.
        ndim: expected number of dimensions (3 for images, 1 for labels).

    Returns:
        Read-only array of the shape and dtype the header gives, e.g. uint8 (N, 28, 28).
    """
    with _open_regular(path) as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            data = _read_idx_stream(stream, path, ndim)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"cannot read {path}: {error} (truncated or corrupted; delete it and fetch it again)") \
                from None
    return data


def _read_idx_stream(stream, path: Path, ndim: int) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number 0x{magic.hex() or 'empty'})")
    if magic[3] != ndim:
        raise DataError(f"{path}: expected an IDX array with {ndim} dimensions, the header says {magic[3]}")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes)")
    shape = tuple(int.from_bytes(dims[4 * k : 4 * k + 4], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_IDX_BYTES:
        raise DataError(f"{path}: the header declares shape {shape} ({size:,} bytes), more than the limit of "
                        f"{MAX_IDX_BYTES:,} (toolkit.data.formats.MAX_IDX_BYTES)")
    return np.frombuffer(_read_exactly(stream, size, path), dtype=dtype).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path, *, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads matching IDX image and label files.

    Returns:
        Images uint8 (N, 1, H, W) and labels int64 (N,).
    """
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected unsigned-byte images, found {images.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images[:, None], check_labels(labels, num_classes, labels_path)


def read_idx_folder(directory: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads the four MNIST-style IDX files of a folder (each gzipped or raw; gzipped preferred).

    Returns:
        (train images uint8 (N, 1, H, W), labels int64 (N,)), and the same for test.
    """
    paths = [next((p for p in (directory / f"{name}.gz", directory / name) if p.is_file()), directory / name)
             for name in IDX_NAMES]
    train = read_idx_pair(paths[0], paths[1], num_classes=10)
    test = read_idx_pair(paths[2], paths[3], num_classes=10)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(f"{paths[0]} holds images of shape {train[0].shape[1:]} but {paths[2]} of {test[0].shape[1:]}")
    return train, test


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only NumPy arrays and builtin containers (CIFAR batches need no more)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        legacy = module.replace("numpy._core", "numpy.core", 1)
        if (legacy, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if legacy.startswith("numpy.core") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = legacy.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def read_cifar_batch(path: Path, *, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python batch (``data_batch_1``, ``test_batch``, ``train``, ...).

    Args:
        path: the pickle file.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).
        num_classes: 10 or 100, for the range check.

    Returns:
        Images uint8 (N, 3, 32, 32) and labels int64 (N,).
    """
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except Exception as error:  # a corrupted pickle can raise nearly anything
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict in the CIFAR pickle, found {type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: the CIFAR pickle lacks 'data' or '{label_key}' (keys: {sorted(map(str, batch))})")
    data = batch["data"]  # Checked before any conversion: a pickle can share one row many times.
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected a uint8 array of shape (N, 3072) as 'data', found {found}")
    labels = _integer_labels(batch[label_key], len(data), label_key, path)
    return data.reshape(-1, 3, 32, 32), check_labels(labels, num_classes, path)


def _integer_labels(labels: object, count: int, key: str, path: Path) -> np.ndarray:
    """``count`` integer labels (a list of ints or an integer array) as int64; anything else is refused."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{path}: '{key}' must be {count} integers, found an array {labels.dtype} {labels.shape}")
    elif not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{path}: '{key}' must be a list of integer class labels (found a non-integer)")
    if len(labels) != count:
        raise DataError(f"{path} holds {count} images but {len(labels)} labels")
    try:
        return np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{path}: '{key}' holds an integer beyond int64 (corrupted file?)") from None


def read_cifar_folder(directory: Path, *, train: list[str], test: str, label_key: str,
                      num_classes: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads the CIFAR training batches (concatenated in order) and the test batch of a folder.

    Returns:
        (train images uint8 (N, 3, 32, 32), labels int64 (N,)), and the same for test.
    """
    batches = [read_cifar_batch(directory / name, label_key=label_key, num_classes=num_classes) for name in train]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    return (x, y), read_cifar_batch(directory / test, label_key=label_key, num_classes=num_classes)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads an SVHN cropped-digits file (``train_32x32.mat`` or ``test_32x32.mat``).

    The file holds ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) with labels 1..10,
    where 10 stands for the digit 0.

    Returns:
        Images uint8 (N, 3, 32, 32) and digit labels int64 (N,) in 0..9.
    """
    from scipy import io as scipy_io

    try:
        mat = scipy_io.loadmat(path)
    except Exception as error:  # scipy raises many types on corrupted input
        raise DataError(f"{path} is not a readable .mat file ({type(error).__name__}: {error})") from None
    if "X" not in mat or "y" not in mat:
        names = sorted(key for key in mat if not key.startswith("__"))
        raise DataError(f"{path}: expected the variables X and y, found {names}")
    images, raw_labels = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X uint8 of shape (32, 32, 3, N), found {images.dtype} {images.shape}")
    if images.shape[3] != len(raw_labels):
        raise DataError(f"{path} holds {images.shape[3]} images but {len(raw_labels)} labels")
    labels = raw_labels.astype(np.int64)
    if np.any(labels != raw_labels) or (labels.size and (labels.min() < 1 or labels.max() > 10)):
        raise DataError(f"{path}: SVHN labels must be integers 1..10 (corrupted file?)")
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels % 10


def read_svhn_folder(directory: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads ``train_32x32.mat`` and ``test_32x32.mat`` (``extra_32x32.mat`` is not used)."""
    return read_svhn_mat(directory / "train_32x32.mat"), read_svhn_mat(directory / "test_32x32.mat")


@dataclass(frozen=True)
class CsvTable:
    """A numeric feature table with one target column, as read from a CSV file.

    Attributes:
        features: float64 (N, F).
        feature_names: F column names.
        target: the target column as strings, (N,).
        target_name: name of the target column.
    """

    features: np.ndarray
    feature_names: tuple[str, ...]
    target: np.ndarray
    target_name: str


def parse_numbers(values: np.ndarray | list[str]) -> np.ndarray | None:
    """Returns the values as float64, or None when any of them is not a number."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        return None


def _first_bad_value(values: tuple[str, ...]) -> int:
    """Index of the first value that is not a finite number."""
    for index, value in enumerate(values):
        try:
            if np.isfinite(float(value)):
                continue
        except ValueError:
            pass
        return index
    return -1


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV rows with their line numbers."""
    if not Path(path).exists():
        raise DataError(f"CSV file not found: {path}")
    try:
        with _open_regular(path) as file:
            data = file.read(MAX_CSV_BYTES + 1)
        if len(data) > MAX_CSV_BYTES:
            raise DataError(f"CSV file {path} is larger than the limit of {MAX_CSV_BYTES:,} bytes "
                            "(toolkit.data.formats.MAX_CSV_BYTES)")
        reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        return [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV file {path}: {error}") from None


_COLUMN_NAME = re.compile(r"[A-Za-z0-9_. -]{1,40}")


def _column_list(header: list[str]) -> str:
    """``; columns: a, b, c`` when the header looks like one (at most 30 names, each a short plain word), else
    only their number: a message may end up in a shared report, and must not carry a line of an arbitrary
    file that was not a CSV table at all."""
    if len(header) <= 30 and all(_COLUMN_NAME.fullmatch(name) for name in header):
        return f"; columns: {', '.join(header)}"
    return f" (the header has {len(header)} fields that do not look like column names: is this a CSV table?)"


def read_csv(path: Path, *, target: str | None = None) -> CsvTable:
    """Reads a numeric CSV table with one target column.

    Args:
        path: comma-separated file. The first row is the header unless all its
            fields are numbers; then the columns are named "0", "1", ...
        target: name of the target column; default the last column.

    Returns:
        The features (all other columns, which must be finite numbers) and the
        raw target column.
    """
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"CSV file {path} is empty")
    first = rows[0][1]
    has_header = parse_numbers([field.strip() for field in first]) is None
    header = [field.strip() for field in first] if has_header else [str(i) for i in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body or len(header) < 2:
        raise DataError(f"CSV file {path} needs at least one data row and two columns (features and a target)")
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields but the header has {len(header)}")
    if len(set(header)) != len(header):
        raise DataError(f"{path}: the header repeats a column name{_column_list(header)}")
    target_name = header[-1] if target is None else target
    if target_name not in header:
        raise DataError(f"{path} has no column {target_name!r}{_column_list(header)}")
    columns = dict(zip(header, zip(*(row for _, row in body))))
    features = []
    for name in header:
        if name == target_name:
            continue
        values = parse_numbers(columns[name])
        if values is None or not np.all(np.isfinite(values)):
            bad = _first_bad_value(columns[name])
            raise DataError(
                f"{path}: column {name!r} must hold finite numbers but line {body[bad][0]} has "
                f"{columns[name][bad]!r} (drop or encode the column, or choose it as target=)"
            )
        features.append(values)
    names = tuple(name for name in header if name != target_name)
    target_values = np.asarray([value.strip() for value in columns[target_name]])
    return CsvTable(np.stack(features, axis=1), names, target_values, target_name)


def _hasher(kind: str):
    return hashlib.md5(usedforsecurity=False) if kind == "md5" else hashlib.new(kind)


def download_file(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Downloads ``url`` to ``dest`` atomically, verifying its checksums.

    The bytes go to a temporary file next to ``dest``, which is renamed only
    after the checksums match; on any failure it is removed.

    Raises:
        DataError: the download failed or a checksum did not match (one line).
    """
    expected = {kind: value.lower() for kind, value in (("md5", md5), ("sha256", sha256)) if value}
    hashers = {kind: _hasher(kind) for kind in expected}
    temp_path = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part",
                                         delete=False) as out:
            temp_path = Path(out.name)
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)
        for kind, hasher in hashers.items():
            if hasher.hexdigest() != expected[kind]:
                raise DataError(f"checksum mismatch for {url}: {kind} {hasher.hexdigest()}, expected {expected[kind]}")
        temp_path.replace(dest)
    except DataError:
        _remove(temp_path)
        raise
    except Exception as error:  # network errors come in many types
        _remove(temp_path)
        raise DataError(f"download of {url} failed ({type(error).__name__}: {error})") from None
    return dest


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _extract_safely(tar: tarfile.TarFile, dest: str) -> None:
    """Extracts regular files and folders only, never outside ``dest``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        unsafe = member.name.startswith(("/", "\\")) or ".." in Path(member.name).parts
        if unsafe or not (member.isfile() or member.isdir()):
            raise DataError(f"{tar.name}: refusing to extract {member.name!r}")
    tar.extractall(dest)


def extract_folder(archive: Path, dest_root: Path, folder: str) -> Path:
    """Extracts ``folder`` from a tar archive into ``dest_root``, atomically.

    Extraction happens in a temporary directory inside ``dest_root``; the folder
    is moved into place only when complete, replacing an incomplete old copy.

    Returns:
        ``dest_root / folder``.
    """
    target = dest_root / folder
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=".extract-") as temp:
        try:
            with tarfile.open(archive) as tar:
                _extract_safely(tar, temp)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DataError(f"cannot extract {archive}: {error}") from None
        extracted = Path(temp) / folder
        if not extracted.is_dir():
            raise DataError(f"{archive} does not contain the folder {folder}")
        if target.exists():
            shutil.rmtree(target)
        extracted.replace(target)
    return target
