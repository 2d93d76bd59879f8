"""Several seeds of one configuration: a run directory per seed and a summary.

``lfl train --seeds 0,1,2 --out DIR`` writes ``DIR/seed-0``, ``DIR/seed-1``, … (each a
complete run directory) and ``DIR/summary.json`` with the mean, standard deviation,
minimum and maximum of the final metrics across seeds. Seeds may run in parallel
processes; each process then gets an equal share of the CPU threads.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig, write_json
from toolkit.runs.run_directory import claim_summary

SUMMARY_KEYS = ("test_error", "test_loss", "valid_error", "valid_loss", "test_mse", "valid_mse", "wall_time_s")


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` parallel runs: an equal share of the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` fresh interpreters (spawn: no state forked from the parent, CUDA-safe)."""
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def run_one(config: TrainConfig, out_dir: str, resume: bool, overwrite: bool, progress: bool,
            threads: int | None, *, tensorboard: bool = False) -> dict:
    """Worker (picklable): train one run with ``threads`` CPU threads (None: leave torch's setting)."""
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    from toolkit.runs.run import train
    return train(config, out_dir=out_dir, resume=resume, overwrite=overwrite, progress=progress,
                 tensorboard=tensorboard)


def summarise(results: list[dict]) -> dict:
    """Mean, std (sample, n−1), min and max of each final metric across runs."""
    summary: dict = {"seeds": [r["seed"] for r in results], "n": len(results)}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
        if len(values) == len(results) and values:
            summary[key] = {"mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values), "values": values}
    return summary


def run_seeds(config: TrainConfig, seeds: list[int], *, out_dir: str | Path, jobs: int = 1,
              resume: bool = False, overwrite: bool = False, progress: bool = True,
              tensorboard: bool = False) -> dict:
    """Train ``config`` once per seed; return (and write) the summary.

    Args:
        config: the run; its ``seed`` is replaced by each of ``seeds``.
        seeds: distinct seeds.
        out_dir: parent directory; each seed gets ``seed-N`` below it.
        jobs: parallel processes (1: in this process, one after another).
        resume: resume each seed's run from its checkpoint where one exists.
        overwrite: replace runs already in the seed directories.
        progress: progress bars (only when running in this process).
        tensorboard: each run also writes TensorBoard event files (:mod:`toolkit.runs.log`).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds needs distinct seeds, e.g. --seeds 0,1,2,3,4")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if tensorboard:
        from toolkit.runs.log import summary_writer_class
        summary_writer_class()  # a missing package is reported once, before any run starts
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claim_summary(out, resume=resume, overwrite=overwrite)
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    dirs = [str(out / f"seed-{s}") for s in seeds]
    if jobs == 1:
        results = [run_one(c, d, resume, overwrite, progress, None, tensorboard=tensorboard)
                   for c, d in zip(configs, dirs)]
    else:
        threads = threads_per_job(jobs)
        with process_pool(jobs) as pool:
            futures = [pool.submit(run_one, c, d, resume, overwrite, False, threads, tensorboard=tensorboard)
                       for c, d in zip(configs, dirs)]
            results = [f.result() for f in futures]
    summary = {"config": {**config.to_dict(), "seed": None}, "runs": dirs, **summarise(results)}
    write_json(out / "summary.json", summary)
    return summary
