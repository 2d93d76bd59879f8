"""Where a study's runs execute: in this process, in a local process pool, or as Ray tasks.

The three backends share one small interface, so the study's scheduling loop
(:func:`toolkit.runs.study.run_study`) is written once:

- ``submit(fn, *args, gpu=False) -> concurrent.futures.Future``: run ``fn(*args)``
  somewhere; ``gpu`` says the run would use a GPU where one exists (its device is not
  ``cpu``). A worker that dies sets the future's exception instead of its result.
- ``threads``: the torch threads each run should use (None: leave torch's setting),
  known once the backend is entered.
- a context manager that starts the workers on entry and stops them on exit.

Ray is an optional extra (``pip install "ray[default]>=2.9"``) and is imported only by
:class:`RayTasks`, so ``import toolkit`` works and stays fast without it.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from toolkit.errors import StudyError
from toolkit.runtime import keep_freed_memory

BACKENDS = ("local", "ray")
RAY_INSTALL_HINT = 'pip install "ray[default]>=2.9"'


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` parallel runs: an equal share of the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` fresh interpreters (spawn: no state forked from the parent, CUDA-safe), each keeping
    freed memory for reuse (:func:`toolkit.runtime.keep_freed_memory`) as ``lfl`` does."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=keep_freed_memory)


def _in_worker(fn: Callable, *args):
    """``fn(*args)`` in a Ray worker, after the process setting ``lfl`` makes (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    return fn(*args)


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

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit)):
            stop_workers(self.pool)
        self.pool.shutdown(wait=True, cancel_futures=True)


INTERRUPT_GRACE_S = 10.0
"""How long interrupted workers get to keep their checkpoint and release their run before they are killed."""


def stop_workers(pool) -> None:
    """Interrupt a process pool's workers (SIGINT: each run keeps its checkpoint and releases its lock), then
    kill any still alive after :data:`INTERRUPT_GRACE_S`, so none outlives the study that started it.

    ``concurrent.futures`` has no public way to reach its workers before Python 3.14; the pool's process
    table is read where it exists, and the pool is left to its own shutdown where it does not.
    """
    import signal
    import time

    processes = [p for p in getattr(pool, "_processes", {}).values() if p.is_alive()]
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGINT)
        except OSError:
            pass
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


class RayTasks:
    """Each job is a Ray task asking for ``threads`` CPUs and, for a GPU run where the cluster has GPUs, one GPU.

    Each run gets cpu_count // jobs threads (of this machine), at most as many as the
    largest Ray node has CPUs: a task asking for more would wait for ever.

    Args:
        jobs: runs at once on a Ray instance started here (it gets ``jobs * threads`` CPUs).
        address: a running Ray cluster (``ray start --head`` prints it; ``auto`` finds a
            local one); None starts a private instance on this machine, stopped on exit.
            An instance this process already joined (``ray.init`` before) is used as it is.

    Raises:
        StudyError: Ray is not installed, or the cluster cannot be reached.
    """

    def __init__(self, *, jobs: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise StudyError(f"--backend ray needs Ray: {RAY_INSTALL_HINT}") from None
        self.ray, self.jobs, self.threads, self.address = ray, jobs, threads_per_job(jobs), address
        self.started_here = False
        self.has_gpus = False
        self._task = None  # the one Ray task, wrapping each job (_in_worker)
        self._refs: list = []

    def __enter__(self) -> "RayTasks":
        ray = self.ray
        if not ray.is_initialized():
            try:
                if self.address is None:
                    ray.init(num_cpus=self.jobs * self.threads, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=self.address, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - any failure to start or connect is one user-facing line
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StudyError(f"cannot start or reach {where} ({message}): check --address "
                                 "(ray start --head prints it) or drop it to run on this machine") from None
            self.started_here = True
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        largest = max((int(resources.get("CPU", 0)) for resources in nodes), default=0)
        if largest > 0:  # an autoscaling cluster may have no worker node yet: then ask as computed
            self.threads = min(self.threads, largest)
        # A run whose device is cpu never asks for a GPU; one on cuda or auto asks where the cluster has GPUs
        # (without any, it runs as on the local backend: auto falls back to the CPU, cuda fails with its message).
        self.has_gpus = any(resources.get("GPU", 0) > 0 for resources in nodes)
        return self

    def submit(self, fn: Callable, *args, gpu: bool = False) -> Future:
        if self._task is None:
            # Ray's own retries stay off: the study retries a failed run once on every backend.
            self._task = self.ray.remote(num_cpus=self.threads, max_retries=0)(_in_worker)
        remote = self._task.options(num_gpus=1 if gpu and self.has_gpus else 0)
        ref = remote.remote(fn, *args)
        self._refs.append(ref)
        return ref.future()

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit)):
            for ref in self._refs:  # on a shared cluster too: the study's tasks stop with the study
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task already finished cannot be cancelled
                    pass
        if self.started_here:
            self.ray.shutdown()


def make_backend(backend: str, *, jobs: int, address: str | None = None):
    """The backend named ``backend`` (``local`` or ``ray``) for ``jobs`` runs at once.

    Raises:
        StudyError: an unknown name, ``--address`` without ``--backend ray``, or Ray missing.
    """
    if backend not in BACKENDS:
        raise StudyError(f"unknown --backend {backend!r}: use {' or '.join(BACKENDS)}")
    if backend == "ray":
        return RayTasks(jobs=jobs, address=address)
    if address is not None:
        raise StudyError("--address names a Ray cluster: add --backend ray, or drop --address")
    return ProcessPool(jobs) if jobs > 1 else InProcess()


__all__ = ["BACKENDS", "RAY_INSTALL_HINT", "threads_per_job", "process_pool", "InProcess", "ProcessPool", "RayTasks", "make_backend", "stop_workers"]
