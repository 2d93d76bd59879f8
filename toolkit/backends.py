"""Where a study's runs execute: in this process or in a local process pool.

The backends share one small interface, so the study's scheduling loop
(:func:`toolkit.study.run_study`) is written once:

- ``submit(fn, *args, gpu=False) -> concurrent.futures.Future``: run ``fn(*args)``
  somewhere; ``gpu`` says the run would use a GPU where one exists (its device is not
  ``cpu``). A worker that dies sets the future's exception instead of its result.
- ``threads``: the torch threads each run should use (None: leave torch's setting),
  known once the backend is entered.
- a context manager that starts the workers on entry and stops them on exit.
"""
from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from .study_spec import StudyError
from .sweep import process_pool, threads_per_job

BACKENDS = ("local",)


class InProcess:
    """Each job runs in this process at submission (``--jobs 1`` on the local backend)."""

    threads: int | None = None

    def submit(self, fn: Callable, *args, gpu: bool = False) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - like a pool: the caller reads it from the future
            future.set_exception(exc)
        return future

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None


class ProcessPool:
    """``jobs`` local worker processes; a pool broken by a dead worker is replaced, so a retry can run."""

    def __init__(self, jobs: int) -> None:
        self.jobs, self.threads = jobs, threads_per_job(jobs)

    def submit(self, fn: Callable, *args, gpu: bool = False) -> Future:
        try:
            return self.pool.submit(fn, *args)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = process_pool(self.jobs)
            return self.pool.submit(fn, *args)

    def __enter__(self) -> "ProcessPool":
        self.pool = process_pool(self.jobs)
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_backend(backend: str, *, jobs: int):
    """The backend named ``backend`` (``local``) for ``jobs`` runs at once.

    Raises:
        StudyError: an unknown name.
    """
    if backend not in BACKENDS:
        raise StudyError(f"unknown --backend {backend!r}: use {' or '.join(BACKENDS)}")
    return ProcessPool(jobs) if jobs > 1 else InProcess()


__all__ = ["BACKENDS", "InProcess", "ProcessPool", "make_backend"]
