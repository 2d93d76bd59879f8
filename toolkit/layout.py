"""The run directory's layout: every file name ``lfl train --out DIR`` writes, and how JSON lines are read.

The writers (:mod:`toolkit.runs`) and the readers (:mod:`toolkit.analysis`, studies, sweeps) take the names
from here, so the two sides cannot drift apart. Standard library only: any toolkit package may import it.

    results.json          final metrics and the full config (strict JSON)
    loss.json             the loss that trained the model (kind, config, parameters, formula)
    history.jsonl         one JSON object per line: train, eval, init and search records
    metrics.csv           the history's numbers, one ``phase,step,name,value`` row each
    tensorboard/          the same numbers as TensorBoard scalars (``--tensorboard`` only)
    loss_snapshots.jsonl  the learned loss every ``--snapshot-every`` steps
    checkpoint.pt         the latest checkpoint (written atomically)
    .lock                 held while a run writes the directory
    summary.json          a sweep's or study's summary (in the parent of its runs)

One policy for JSON lines, used by every reader (:func:`read_jsonl`): a torn last line, the one a killed
run was writing, is skipped; any other line that is not a JSON object is an error naming the file and line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

RESULTS = "results.json"
LOSS = "loss.json"
HISTORY = "history.jsonl"
METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
SNAPSHOTS = "loss_snapshots.jsonl"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
SUMMARY = "summary.json"

RUN_OUTPUTS = (RESULTS, LOSS, HISTORY, METRICS, TENSORBOARD, SNAPSHOTS, CHECKPOINT)
"""Everything a run writes (an existing one is refused; ``--overwrite`` removes these and nothing else)."""


class JsonLinesError(ValueError):
    """A JSON-lines file with a damaged line that is not its last (the message names file and line)."""


def jsonl_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(line number, line text, record)`` for each record of ``path`` (nothing when there is no file).

    Streams the file (one line of look-ahead). Blank lines are skipped. A last line that is not a JSON
    object is a torn write (a killed run's) and is skipped; such a line anywhere else raises
    :class:`JsonLinesError`.
    """
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        pending: tuple[int, str] | None = None
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if pending is not None:
                yield pending[0], pending[1], _record(path, *pending)
            pending = (number, line.rstrip("\n"))
    if pending is not None:
        try:
            yield pending[0], pending[1], _record(path, *pending)
        except JsonLinesError:
            return  # the last line: a write cut short


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise JsonLinesError(f"{path} line {number} is not a JSON object; the file is damaged (delete that line, "
                             "or the run directory)")
    return record


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file under the one policy (:func:`jsonl_lines`)."""
    return [record for _, _, record in jsonl_lines(path)]


__all__ = ["RESULTS", "LOSS", "HISTORY", "METRICS", "TENSORBOARD", "SNAPSHOTS", "CHECKPOINT", "LOCK", "SUMMARY",
           "RUN_OUTPUTS", "JsonLinesError", "jsonl_lines", "read_jsonl"]
