"""A run directory from your own training loop, in the format ``lfl train --out`` writes.

``lfl plot``, ``lfl export`` and ``lfl compare`` read what :class:`RunWriter` leaves::

    learner = OnlineLossLearner(model, MLPLoss(), rule=SGDRule(lr=0.01))
    with RunWriter("runs/mine", dataset="digits", model="my-mlp", loss="adalfl", seed=0) as run:
        for step, (train, valid) in enumerate(batches, 1):
            learner.step(train, valid)
            if step % 10 == 0:
                run.log_learner(learner)                  # history.jsonl and metrics.csv
                run.snapshot(step, learner.loss)          # loss_snapshots.jsonl (for the loss's evolution)
        run.evaluate(step, valid_error=..., valid_loss=...)
        run.finish(learner.loss, steps=step, test_error=..., test_loss=...)   # results.json, loss.json

The directory is claimed as ``lfl train`` claims it (a lock; an existing run is refused unless
``overwrite``). A loop that raises (or is interrupted) leaves ``"status": "failed"`` (``"interrupted"``)
in results.json instead of a finished run's numbers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import losses

from toolkit.layout import LOSS, RESULTS, SNAPSHOTS
from toolkit.runs.common import write_json
from toolkit.runs.log import History, RunLog
from toolkit.runs.reporting import GuardWarning
from toolkit.runs.run_directory import RunDirectory

LEARNER_KEYS = ("task_loss", "learned_loss", "meta_loss", "grad_ratio", "skipped_base", "skipped_meta", "guarded",
                "guarded_steps", "rejected_steps")
"""What :meth:`RunWriter.log_learner` takes from ``OnlineLossLearner.record()``."""


class RunWriter:
    """Writes results.json, loss.json, history.jsonl, metrics.csv and loss_snapshots.jsonl for an own loop.

    Args:
        out_dir: the run directory (created).
        dataset, model, loss: what results.json names (``loss`` is the method: "adalfl", "ce", your own label).
        seed: the run's seed (``lfl compare`` pairs methods by it).
        task: "classification" or "regression".
        config: the settings to record (``lfl compare`` tells runs of one method apart by them).
        overwrite: replace a run already in ``out_dir``.
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, out_dir: str | Path, *, dataset: str, model: str, loss: str, seed: int = 0,
                 task: str = "classification", config: dict[str, Any] | None = None, overwrite: bool = False,
                 tensorboard: bool = False) -> None:
        self.path = Path(out_dir)
        self.meta = {"dataset": dataset, "model": model, "seed": seed, "loss": loss, "loss_from": None, "task": task}
        self.config = dict(config or {})
        self._claim = RunDirectory(self.path, overwrite=overwrite)
        self._tensorboard = tensorboard
        self.log: RunLog | None = None
        self.snapshots = History(self.path / SNAPSHOTS)
        self.guard_warning = GuardWarning()
        self.finished = False
        self._guard_totals: dict[str, float] | None = None
        self._started = time.perf_counter()

    def __enter__(self) -> "RunWriter":
        self._claim.__enter__()
        try:
            self.log = RunLog(self.path, tensorboard=self._tensorboard)
            self.log.start(resume=False)
        except BaseException:
            self._claim.__exit__(None, None, None)
            raise
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        try:
            if kind is not None and not self.finished:
                status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
                write_json(self.path / RESULTS, {"status": status, "error": f"{kind.__name__}: {exc}",
                                                        **self.meta, "config": self.config})
        finally:
            if self.log is not None:
                self.log.close()
            self._claim.__exit__(kind, exc, traceback)

    def _require_open(self) -> RunLog:
        if self.log is None:
            raise RuntimeError("use RunWriter as a context manager: with RunWriter(...) as run: ...")
        return self.log

    def log_train(self, step: int, **metrics: float) -> None:
        """A training record at ``step``: numbers such as ``task_loss`` and ``learned_loss``."""
        self._require_open().append({"phase": "train", "step": int(step), **_numbers(metrics)})
        self.guard_warning.check_summary(metrics, int(step))

    def log_learner(self, learner, **metrics: float) -> dict:
        """A training record from an ``OnlineLossLearner`` (its ``record()``: the latest step's losses, not an
        average over the steps since the last record; skipped updates; the descent guard's shares since the
        last record), plus ``metrics``; returns the record's numbers."""
        record = learner.record()
        values = {k: record[k] for k in LEARNER_KEYS if k in record}
        self.log_train(record["step"], **values, **metrics)
        self._guard_totals = learner.guard_counts.totals() if learner.descent_guard else None
        return values

    def evaluate(self, step: int, **metrics: float) -> None:
        """An evaluation record, e.g. ``valid_error`` (classification) or ``valid_mse`` (regression)."""
        self._require_open().append({"phase": "eval", "step": int(step), **_numbers(metrics)})

    def snapshot(self, step: int, loss: nn.Module) -> None:
        """The learned loss after ``step`` steps, for ``plot_loss_evolution`` and ``lfl export --step``."""
        self._require_open()
        self.snapshots.append({"phase": "train", "step": int(step), "loss": losses.loss_to_dict(loss, formula=False)})

    def finish(self, loss: nn.Module | None, *, steps: int, test_error: float, test_loss: float,
               **metrics: Any) -> dict:
        """Write loss.json (when ``loss`` is given) and results.json; returns the results.

        ``metrics`` adds numbers such as ``valid_error``; a learner's run totals of the descent guard
        (``guarded`` and the others) are added when :meth:`log_learner` saw one.
        """
        self._require_open()
        if loss is not None:
            losses.save_loss(loss, self.path / LOSS)
        guard = self._guard_totals or {}
        if guard:
            self.guard_warning.check_summary(guard, int(steps))
        results = {"status": "finished", **self.meta, "steps": int(steps), "test_error": float(test_error),
                   "test_loss": float(test_loss), "wall_time_s": time.perf_counter() - self._started,
                   "torch": torch.__version__, **guard, **_numbers(metrics), "warnings": self.guard_warning.messages,
                   "config": {"loss": self.meta["loss"], "model": self.meta["model"], "steps": int(steps),
                              "seed": self.meta["seed"], **self.config}}
        write_json(self.path / RESULTS, results)
        self.finished = True
        return results


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """Host numbers: a 0-d tensor becomes a float (one read, where the caller logs: not per step)."""
    return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


__all__ = ["RunWriter", "LEARNER_KEYS"]
