"""Claiming a run directory: one writer at a time, no silent replacement, strict JSON.

``lfl train --out DIR`` holds an exclusive lock on ``DIR/.lock`` (``fcntl.flock``)
for the whole run, so a second run into the same directory stops at once and names
the holder instead of interleaving its history with the first. A directory that
already holds a run is refused unless the caller resumes it or asks to overwrite it.

Overwriting removes this toolkit's files only, by name, and only after checking that each one is
what its name claims (:func:`written_by_us`: a JSON object with a run's keys, a CSV with the run's
header, a checkpoint archive, a folder of TensorBoard event files). A directory that holds other
files besides a run, or a run file that fails its check, is refused with the list, and nothing is
removed: a user's files are never deleted.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from toolkit.layout import CHECKPOINT, LOCK, LOSS, METRICS, RESULTS, RUN_OUTPUTS, SUMMARY, TENSORBOARD  # noqa: F401
from toolkit.errors import ConfigError

# What a run writes: an existing one is refused, and --overwrite removes these (and nothing else).
LOCK_NAME = LOCK
TENSORBOARD_EVENTS = "events.out.tfevents."
CHECK_BYTES = 1 << 20
"""How much of a file the ownership checks read at most (a header line, a JSON object's keys)."""
JSON_CHECK_LIMIT = 256 << 20
"""A results/loss/summary JSON file larger than this is not one this toolkit wrote."""
_JSON_KEYS = {RESULTS: ("config", "status"), LOSS: ("kind",), SUMMARY: ("runs", "config")}
_CSV_HEADER = "phase,step,name,value"
_ZIP_MAGIC = b"PK\x03\x04"


def _first_line(path: Path) -> str | None:
    with path.open("rb") as f:
        line = f.readline(CHECK_BYTES)
    try:
        return line.decode().strip()
    except UnicodeDecodeError:
        return None


def _json_object_with(path: Path, keys: tuple[str, ...]) -> bool:
    if path.stat().st_size > JSON_CHECK_LIMIT:
        return False
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and any(k in data for k in keys)


def _jsonl(path: Path) -> bool:
    line = _first_line(path)
    if line is None:
        return False
    if not line:
        return path.stat().st_size == 0 or not path.read_bytes()[:CHECK_BYTES].strip()
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _tensorboard(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    return all(entry.is_file() and not entry.is_symlink() and entry.name.startswith(TENSORBOARD_EVENTS)
               for entry in path.iterdir())


def written_by_us(path: Path) -> bool:
    """Whether ``path`` (named as one of :data:`RUN_OUTPUTS`, ``summary.json`` or the lock) is what this
    toolkit writes under that name. Reads at most a header, or a JSON file of bounded size."""
    name = path.name
    if name == TENSORBOARD:
        return _tensorboard(path)
    if path.is_symlink() or not path.is_file():
        return False
    if name in _JSON_KEYS:
        return _json_object_with(path, _JSON_KEYS[name])
    if name.endswith(".jsonl"):
        return _jsonl(path)
    if name == METRICS:
        return _first_line(path) in (_CSV_HEADER, "")
    if name == CHECKPOINT:
        with path.open("rb") as f:
            return f.read(4) == _ZIP_MAGIC
    return name == LOCK_NAME


def remove_ours(path: Path, names: tuple[str, ...] | list[str]) -> None:
    """Remove the named outputs under ``path`` after checking every one of them (:func:`written_by_us`).

    Raises:
        ConfigError: one of them is not what this toolkit writes; nothing was removed.
    """
    present = [path / n for n in names if (path / n).exists() or (path / n).is_symlink()]
    foreign = [p.name for p in present if not written_by_us(p)]
    if foreign:
        raise ConfigError(f"{path} holds {', '.join(foreign)} that this toolkit did not write (not a file of "
                          "a run, or not in a run's format): move it away or choose another --out; nothing was "
                          "removed")
    for target in present:
        if target.is_dir():
            for event_file in target.iterdir():
                event_file.unlink()
            target.rmdir()
        else:
            target.unlink()


def claim_summary(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that ``out/summary.json`` (a seed sweep's) may be written: absent, or ours and replaceable.

    The same rule as a run: an existing summary is refused unless the caller resumes or overwrites, and
    it is replaced only when it is one this toolkit wrote.
    """
    path = out / SUMMARY
    if not (path.exists() or path.is_symlink()):
        return
    if not (resume or overwrite):
        raise ConfigError(f"{path} already exists: add --resume to continue the sweep, --overwrite to replace "
                          "it, or choose another --out")
    if not written_by_us(path):
        raise ConfigError(f"{path} is not a summary this toolkit wrote: move it away or choose another --out; "
                          "nothing was removed")


class DirectoryLock:
    """An exclusive lock on ``path/.lock`` (``fcntl.flock``), as a context manager: one writer at a time.

    The directory is created with its parents. A second holder stops at once with a message naming the
    first (its pid, host and start time are written into the lock file while held). The kernel releases
    the lock when the holder dies, so a killed writer never leaves a stale lock.

    Args:
        path: the directory.
        what: what holds it, for messages ("run", "study").

    Raises:
        ConfigError: the path is a file, lies under a file, cannot be written or is locked.
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "run") -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None
        self._created_lock = False

    def __enter__(self) -> "DirectoryLock":
        self._create()
        self._lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._unlock()

    def _create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"--out {self.path} is a file, not a directory: choose another --out") from None
        except NotADirectoryError:
            raise ConfigError(f"--out {self.path} lies under a file: choose another --out") from None
        except PermissionError:
            raise ConfigError(f"--out {self.path} cannot be created (permission denied): choose a writable "
                              "directory") from None
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be created ({exc.strerror}): choose another --out") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {self.path} is not writable: choose a writable directory")

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_NAME
        self._created_lock = not lock_path.exists()
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create {lock_path} ({exc.strerror}): choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ConfigError(f"{self.path} is in use by another {self.what} ({holder}): wait for it to finish "
                                  "or choose another --out") from None
            raise ConfigError(f"cannot lock {lock_path} ({exc.strerror})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunDirectory(DirectoryLock):
    """An exclusive claim on a run directory, as a context manager.

    Args:
        path: the directory (created with its parents).
        resume: the caller continues the run there (its files are kept).
        overwrite: the caller replaces the run there (its files are removed first).

    Raises:
        ConfigError: the path is a file, lies under a file, cannot be written, is locked by
            another run, or already holds a run and neither ``resume`` nor ``overwrite`` is set.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
        super().__init__(path, what="run")
        self.resume, self.overwrite = resume, overwrite

    def __enter__(self) -> "RunDirectory":
        self._create()
        self._lock()
        try:
            existing = [name for name in RUN_OUTPUTS
                        if (self.path / name).exists() or (self.path / name).is_symlink()]
            if existing and not (self.resume or self.overwrite):
                raise ConfigError(f"{self.path} already holds a run ({', '.join(existing)}): add --resume to "
                                  "continue it, --overwrite to replace it, or choose another --out")
            if self.overwrite and not self.resume and existing:
                others = sorted(p.name for p in self.path.iterdir() if p.name not in (*RUN_OUTPUTS, LOCK_NAME))
                if others:
                    shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                    raise ConfigError(f"{self.path} holds files besides a run ({shown}): --overwrite replaces "
                                      "a run only in a directory of its own; choose another --out")
                remove_ours(self.path, existing)
        except BaseException:
            self._unlock()
            if self._created_lock:  # a refused claim leaves the directory as it found it
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            raise
        return self


__all__ = ["DirectoryLock", "RunDirectory", "RUN_OUTPUTS", "written_by_us", "remove_ours", "claim_summary"]
