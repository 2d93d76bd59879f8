"""Reading run directories written by ``lfl train --out DIR`` (layout in :mod:`toolkit.layout`).

Everything here is read-only: analysis, plots and comparisons never change a run.
A directory counts as a run when it holds at least one of ``results.json``,
``history.jsonl`` and ``loss_snapshots.jsonl`` (a run still in progress has no
``results.json`` yet). Problems a user can fix (a missing directory, a step that
was never snapshotted) raise :class:`AnalysisError` with a one-line message.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import losses

from toolkit.errors import UserError
from toolkit.layout import HISTORY, LOSS, RESULTS, SNAPSHOTS, JsonLinesError, jsonl_lines

RUN_FILES = (RESULTS, HISTORY, SNAPSHOTS)
_STEP = re.compile(r'^\{(?:"phase": "(?P<phase>\w+)", )?"step": (?P<step>\d+)')


class AnalysisError(UserError, ValueError):
    """Bad input to an analysis, plot or comparison: the message says what to change."""


@dataclass
class Run:
    """One run directory, its small files read eagerly; snapshots are read on demand.

    Attributes:
        path: the directory.
        results: ``results.json`` (empty for a run still in progress).
        history: the records of ``history.jsonl``, in file order.
    """

    path: Path
    results: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return self.results.get("config", {})

    @property
    def method(self) -> str:
        """What trained the model, from results.json.

        ``ce``, ``mse``, ``taylorglo``; a learned loss with its parameterisation
        (``adalfl-mlp``, ``ml3-taylor``); a reused loss with its source
        (``reused:approx.json``, ``reused-adapt:loss.json``); ``unknown`` for a run in progress.
        """
        loss = self.results.get("loss")
        if loss is None:
            return "unknown"
        if loss in ("adalfl", "ml3"):
            return f"{loss}-{self.config.get('loss_param', 'mlp')}"
        source = self.results.get("loss_from")
        if source:
            is_path = source.endswith(".json") or (len(source) < 200 and Path(source).exists())
            name = Path(source).name if is_path else source
            return f"{loss}:{name if len(name) <= 40 else name[:37] + '...'}"
        return str(loss)

    @property
    def seed(self) -> int | None:
        return self.results.get("seed")

    @property
    def task(self) -> str:
        return self.results.get("task", "classification")

    def records(self, phase: str) -> list[dict[str, Any]]:
        """History records of one phase: ``"train"``, ``"eval"`` or ``"init"``."""
        return [r for r in self.history if r.get("phase", "train") == phase]

    @property
    def snapshot_path(self) -> Path:
        return self.path / SNAPSHOTS

    def snapshots(self) -> Iterator[tuple[int, losses.LearnedLoss]]:
        """``(step, loss)`` for every training-phase snapshot, in file order."""
        for number, record in enumerate(_jsonl(self.snapshot_path), 1):
            if not isinstance(record, dict):
                raise AnalysisError(f"{self.snapshot_path} record {number} is not a loss snapshot")
            if record.get("phase", "train") != "train":
                continue
            try:
                step, loss = int(record["step"]), losses.loss_from_dict(record["loss"])
            except losses.LossFileError as exc:
                raise AnalysisError(f"{self.snapshot_path} record {number}: {exc}") from None
            except (KeyError, TypeError, ValueError):
                raise AnalysisError(f"{self.snapshot_path} record {number} is not a loss snapshot") from None
            yield step, loss

    def snapshot_steps(self) -> list[int]:
        """Steps of the training-phase snapshots, read from the start of each line (fast for big files)."""
        steps = []
        for line in _lines(self.snapshot_path):
            match = _STEP.search(line[:200])  # "phase" and "step" come first in every record
            if line.endswith("\n") and match and match["phase"] in (None, "train"):
                steps.append(int(match["step"]))
        return steps

    def loss_at(self, step: int | None = None) -> losses.LearnedLoss:
        """The final loss (``loss.json``), or the snapshot taken after ``step`` training steps."""
        if step is None:
            path = self.path / LOSS
            if not path.exists():
                steps = self.snapshot_steps()
                hint = f"; pick a snapshot with --step (one of {_short_list(steps)})" if steps else ""
                raise AnalysisError(f"{self.path} has no loss.json (is the run finished?){hint}")
            return losses.load_loss(path)
        for at, loss in self.snapshots():
            if at == step:
                return loss
        steps = self.snapshot_steps()
        if not steps:
            raise AnalysisError(f"{self.path} has no loss snapshots (only learned losses are snapshotted)")
        raise AnalysisError(f"no loss snapshot at step {step} in {self.path}; steps: {_short_list(steps)}")


GUARD_KEYS = ("guarded", "guarded_steps", "rejected_steps")


def guard_shares(run: Run) -> dict[str, float] | None:
    """What the descent guard did over the whole run: shares of samples reflected (``guarded``), of steps
    reflected in parameter space and of steps rejected; None for a run without the guard.

    From results.json; runs written before results.json held the run's totals (no ``warnings`` key
    there; their shares read 0) get them from the history's records, each weighted by its steps.
    """
    if "warnings" in run.results and all(k in run.results for k in GUARD_KEYS):
        return {k: float(run.results[k]) for k in GUARD_KEYS}
    records = [r for r in run.records("train") if all(isinstance(r.get(k), (int, float)) for k in GUARD_KEYS)]
    if not records:
        return None
    steps = [r["step"] - previous for r, previous in zip(records, [0, *(r["step"] for r in records)])]
    total = sum(steps) or 1
    return {k: sum(r[k] * n for r, n in zip(records, steps)) / total for k in GUARD_KEYS}


def guard_note(run: Run) -> str | None:
    """One line on the descent guard's work in a run (for ``lfl export``), or None without the guard."""
    shares = guard_shares(run)
    if shares is None:
        return None
    return (f"descent guard: reflected {shares['guarded']:.1%} of the training samples' learned-loss gradients; "
            f"{shares['guarded_steps']:.1%} of the steps reflected in parameter space, {shares['rejected_steps']:.1%} "
            "replaced by the task loss's step")


def read_run(path: str | Path) -> Run:
    """Read a run directory; raise :class:`AnalysisError` if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"run directory {path} does not exist" if not path.exists()
                            else f"{path} is a file, not a run directory")
    if not any((path / name).exists() for name in RUN_FILES):
        raise AnalysisError(f"{path} is not a run directory: none of {', '.join(RUN_FILES)} in it")
    results = _json(path / RESULTS) if (path / RESULTS).exists() else {}
    return Run(path=path, results=results, history=renamed_losses(list(_jsonl(path / HISTORY)), results))


LEARNED_METHODS = ("adalfl", "ml3", "taylorglo", "reused", "reused-adapt")


def renamed_losses(history: list[dict[str, Any]], results: dict[str, Any]) -> list[dict[str, Any]]:
    """History written before ``task_loss`` and ``learned_loss`` existed, in those names.

    Such runs logged one ``train_loss``: the task loss for fixed cross-entropy (and squared error on
    regression), the learned loss's own value for a learned or reused loss. Where results.json does not
    say which (a run in progress: a meta-objective in the records marks a learned loss) or neither
    (squared error on a classification task), ``train_loss`` stays as it was.
    """
    if not any("train_loss" in r and "task_loss" not in r and "learned_loss" not in r for r in history):
        return history
    loss, task = results.get("loss"), results.get("task", "classification")
    if loss == "ce" or (loss == "mse" and task == "regression"):
        name = "task_loss"
    elif loss in LEARNED_METHODS or results.get("loss_from") or (
            not results and any(r.get("meta_loss") is not None for r in history)):
        name = "learned_loss"
    else:
        return history
    return [{(name if k == "train_loss" else k): v for k, v in r.items()}
            if "train_loss" in r and name not in r else r for r in history]


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs named by ``paths``; a directory that is not a run itself stands for the runs below it."""
    if not paths:
        raise AnalysisError("give at least one run directory")
    runs = []
    for path in map(Path, paths):
        if path.is_dir() and not any((path / name).exists() for name in RUN_FILES):
            below = sorted({p.parent for name in RUN_FILES for p in path.rglob(name)})
            if not below:
                raise AnalysisError(f"no run directories in {path}")
            runs.extend(read_run(p) for p in below)
        else:
            runs.append(read_run(path))
    return runs


def load_loss_source(source: str | Path, *, step: int | None = None) -> tuple[losses.LearnedLoss, str]:
    """A loss from a run directory (final or ``step`` snapshot) or a loss JSON file; also its task."""
    path = Path(source)
    if path.is_file():
        if step is not None:
            raise AnalysisError(f"--step needs a run directory, but {path} is a loss file")
        loss = losses.load_loss(path)  # raises losses.LossFileError for a file that is not a loss
        return loss, loss.task
    run = read_run(path)
    loss = run.loss_at(step)
    return loss, loss.task


NOT_SETTINGS = frozenset({"seed", "device", "data_dir", "log_every", "checkpoint_every", "snapshot_every",
                          "eval_every", "search_jobs"})
"""Config keys that do not change what a run measures: runs differing only in these are the same method."""
BUDGET_KEYS = ("steps", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay", "milestones", "gamma",
               "valid_fraction")
"""The settings a fair comparison holds equal (or tunes on validation), reported by ``lfl compare``."""


def _value_text(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 30 else text[:27] + "..."


def method_labels(runs: list[Run]) -> list[str]:
    """Each run's method; where runs of one method differ in settings, the differing ones are added.

    ``lfl compare`` and ``lfl plot`` group by these labels, so runs at lr 0.1 and 0.01 are
    never pooled as one method: they become ``ce [lr=0.01]`` and ``ce [lr=0.1]``.
    """
    labels = [r.method for r in runs]
    by_method: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        by_method.setdefault(run.method, []).append(index)
    for method, indices in by_method.items():
        configs = [{k: v for k, v in runs[i].config.items() if k not in NOT_SETTINGS} for i in indices]
        keys = sorted({k for c in configs for k in c})
        differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        if differing:
            for i, config in zip(indices, configs):
                labels[i] = f"{method} [" + ", ".join(f"{k}={_value_text(config.get(k))}" for k in differing) + "]"
    return labels


def check_one_dataset(runs: list[Run]) -> tuple[str, str]:
    """The (dataset, task) all finished runs share; AnalysisError naming them if they differ."""
    kinds = sorted({(str(r.results.get("dataset")), str(r.task)) for r in runs if r.results})
    if len(kinds) > 1:
        raise AnalysisError("the runs come from different datasets or tasks ("
                            + ", ".join(f"{d} ({t})" for d, t in kinds) + "): give the runs of one dataset at a time")
    return kinds[0] if kinds else ("?", "?")


def budget_note(runs: list[Run]) -> str:
    """One line: the budget settings every run shares, and those that differ between methods."""
    labels = method_labels(runs)
    same, differ = [], []
    for key in BUDGET_KEYS:
        values = {label: json.dumps(r.config.get(key)) for label, r in zip(labels, runs) if key in r.config}
        if not values:
            continue
        if len(set(values.values())) == 1:
            same.append(f"{key} {_value_text(runs[0].config.get(key))}")
        else:
            by_value = {}
            for label, value in values.items():
                by_value.setdefault(value, []).append(label)
            differ.append(f"{key} (" + "; ".join(f"{', '.join(ls)}: {_value_text(json.loads(v))}"
                                                for v, ls in by_value.items()) + ")")
    note = "same for every run: " + (", ".join(same) or "-")
    return note + ("; differs: " + ", ".join(differ) if differ else "")


def run_labels(runs: list[Run]) -> list[str]:
    """Short unique names: the directory name, or the path below the common parent when names repeat."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    parts = [r.path.resolve().parts for r in runs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["_".join(p[common:]) for p in parts]


def _short_list(steps: list[int], limit: int = 8) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:limit // 2])) + ", ..., " + ", ".join(map(str, steps[-limit // 2:]))


def _lines(path: Path) -> Iterator[str]:
    """Raw non-blank lines, for the fast step scan (which never parses a record)."""
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            if line.strip():
                yield line


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file under the run directory's one policy (:func:`toolkit.layout.jsonl_lines`)."""
    try:
        for _, _, record in jsonl_lines(path):
            yield record
    except JsonLinesError as exc:
        raise AnalysisError(str(exc)) from None


def _json(path: Path) -> dict[str, Any]:
    """A run's JSON file, which must hold an object (a list or a number is no run's results)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise AnalysisError(f"{path} is nested too deeply to be a run's file") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{path} holds a JSON {type(data).__name__}, not the object a run writes: "
                            "is this a run directory of lfl train?")
    return data


__all__ = ["AnalysisError", "Run", "read_run", "renamed_losses", "guard_shares", "guard_note", "find_runs", "load_loss_source", "run_labels", "RUN_FILES",
           "method_labels", "check_one_dataset", "budget_note", "BUDGET_KEYS", "NOT_SETTINGS"]
