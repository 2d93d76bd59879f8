"""Several seeds of one configuration: a run directory per seed and a summary.

``lfl train --seeds 0,1,2 --out DIR`` writes ``DIR/seed-0``, ``DIR/seed-1``, … (each a
complete run directory) and ``DIR/summary.json`` with the mean, standard deviation,
minimum and maximum of the final metrics across seeds (:mod:`toolkit.analysis.statistics`). The
seeds run as a degenerate study, on the study's local backend (:mod:`toolkit.runs.backends`): in
this process, or in parallel processes that each get an equal share of the CPU threads.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from toolkit.analysis.statistics import summarise_values
from toolkit.errors import ConfigError
from toolkit.layout import SUMMARY
from toolkit.runs.backends import make_backend
from toolkit.runs.common import TrainConfig, write_json
from toolkit.runs.run_directory import claim_summary

SUMMARY_KEYS = ("test_error", "test_loss", "valid_error", "valid_loss", "test_mse", "valid_mse", "wall_time_s")


def run_one(config: TrainConfig, out_dir: str, resume: bool, overwrite: bool, progress: bool,
            threads: int | None, tensorboard: bool = False) -> dict:
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
            summary[key] = {**summarise_values(values), "values": values}
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
    # A degenerate study: one job per seed on the study's local backend (this process for one job, else a
    # process pool with an equal share of the threads each), and the first failure is raised.
    with make_backend("local", jobs=jobs) as executor:
        futures = []
        for c, d in zip(configs, dirs):
            futures.append(executor.submit(run_one, c, d, resume, overwrite, progress and jobs == 1,
                                           executor.threads, tensorboard))
            if futures[-1].done() and futures[-1].exception() is not None:
                break  # in this process, as a plain loop would: no further seed starts after a failure
        results = [f.result() for f in futures]
    summary = {"config": {**config.to_dict(), "seed": None}, "runs": dirs, **summarise(results)}
    write_json(out / SUMMARY, summary)
    return summary
