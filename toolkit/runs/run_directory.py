"""Claiming a run directory: one writer at a time, no silent replacement, strict JSON.

``lfl train --out DIR`` holds an exclusive lock on ``DIR/.lock`` (``fcntl.flock``)
for the whole run, so a second run into the same directory stops at once and names
the holder instead of interleaving its history with the first. A directory that
already holds a run is refused unless the caller resumes it or asks to overwrite it;
overwriting removes the run's own files only.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from toolkit.runs.common import ConfigError

# What a run writes: an existing one is refused, and --overwrite removes these (and nothing else).
RUN_OUTPUTS = ("results.json", "loss.json", "history.jsonl", "metrics.csv", "tensorboard", "loss_snapshots.jsonl",
               "checkpoint.pt")
LOCK_NAME = ".lock"


class RunDirectory:
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
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self._fd: int | None = None

    def __enter__(self) -> "RunDirectory":
        self._create()
        self._lock()
        try:
            existing = [name for name in RUN_OUTPUTS if (self.path / name).exists()]
            if existing and not (self.resume or self.overwrite):
                raise ConfigError(f"{self.path} already holds a run ({', '.join(existing)}): add --resume to "
                                  "continue it, --overwrite to replace it, or choose another --out")
            if self.overwrite and not self.resume:
                for name in existing:
                    target = self.path / name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)  # tensorboard/: event files only this toolkit writes
                    else:
                        target.unlink()
        except BaseException:
            self._unlock()
            raise
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
                raise ConfigError(f"{self.path} is in use by another run ({holder}): wait for it to finish "
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


__all__ = ["RunDirectory", "RUN_OUTPUTS"]
