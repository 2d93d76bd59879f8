"""A run's metric records, as JSON lines and as the files other tools read: CSV and TensorBoard.

``history.jsonl`` is the record of truth: one strict JSON object per line, each with a
``phase`` (init, train, eval, search) and a ``step``. :class:`RunLog` writes every record
there and, in the same call, to

* ``metrics.csv``: long format, header ``phase,step,name,value``, one row per number of a
  record (a null, i.e. a non-finite value, is an empty cell). Records gain keys as a run goes
  on (``grad_ratio`` only once diagnostics are read, ``valid_*`` only in eval records), and a
  long table takes new names without rewriting a header, so it is only ever appended to.
* ``tensorboard/`` (with ``tensorboard=True``): one scalar per number, tagged ``phase/name``,
  at global step ``step``, via ``torch.utils.tensorboard.SummaryWriter``.

Records are written only when the run logs (every ``--log-every`` steps), never per step.
When ``--resume`` drops the records after the checkpoint from the history
(:meth:`History.truncate_after`), the CSV and the event files are rebuilt from what the
history kept, so both always hold exactly the history's numbers.
"""
from __future__ import annotations

import csv
import io
import numbers
from pathlib import Path

from toolkit.layout import HISTORY, METRICS, TENSORBOARD, JsonLinesError, jsonl_lines
from toolkit.errors import ConfigError
from toolkit.runs.common import atomic_write, dumps_strict, strict_json
from toolkit.runs.run_directory import remove_ours

HISTORY_FILE = HISTORY
METRICS_FILE = METRICS
TENSORBOARD_DIR = TENSORBOARD
CSV_COLUMNS = ("phase", "step", "name", "value")


class History:
    """Appends strict JSON lines; on resume, drops what came after the checkpoint.

    Lines are read under the run directory's one policy (:func:`toolkit.layout.jsonl_lines`): the torn
    last line of a killed run is dropped, a damaged line before it is a ConfigError naming file and line.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _lines(self) -> list[tuple[str, dict]]:
        if self.path is None:
            return []
        try:
            return [(line, record) for _, line, record in jsonl_lines(self.path)]
        except JsonLinesError as exc:
            raise ConfigError(str(exc)) from None

    def records(self) -> list[dict]:
        """Every record, in order (none when there is no file)."""
        return [record for _, record in self._lines()]

    def check(self) -> None:
        """Raise the ConfigError a damaged file gives, before anything is written (resume reads it later)."""
        self._lines()

    def truncate_after(self, step: int, phases: str | tuple[str, ...]) -> bool:
        """Drop the records of ``phases`` after ``step`` (and a torn last line); True if a line went."""
        if self.path is None or not self.path.exists():
            return False
        phases = (phases,) if isinstance(phases, str) else phases
        total = len(self.path.read_text().splitlines())
        kept = [line for line, rec in self._lines()
                if rec.get("phase", "train") not in phases or rec.get("step", 0) <= step]
        atomic_write(self.path, lambda p: p.write_text("".join(k + "\n" for k in kept)))
        return len(kept) != total

    def append(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(dumps_strict(record) + "\n")


def scalars(record: dict) -> list[tuple[str, int, str, float | int | None]]:
    """The rows of ``record`` in metrics.csv: ``(phase, step, name, value)`` for each number (None for null).

    The record is taken as history.jsonl holds it (non-finite numbers as None, booleans as 0/1);
    text and nested values are no metrics and give no row.
    """
    record = strict_json(record)
    phase, step = record.get("phase", "train"), record.get("step", 0)
    rows = []
    for name, value in record.items():
        if name in ("phase", "step"):
            continue
        if isinstance(value, bool):
            value = int(value)
        if value is None or isinstance(value, numbers.Real):
            rows.append((phase, step, name, value))
    return rows


def read_metrics_csv(path: str | Path) -> list[tuple[str, int, str, float | None]]:
    """metrics.csv as ``(phase, step, name, value)`` rows; an empty cell reads as None."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != list(CSV_COLUMNS):
            raise ValueError(f"{path} is not a metrics.csv (header {header})")
        return [(phase, int(step), name, float(value) if value != "" else None)
                for phase, step, name, value in reader]


def _csv_text(rows: list[tuple], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    # repr: the shortest text that reads back as the same float, as in the JSON lines
    writer.writerows((p, s, n, "" if v is None else repr(v)) for p, s, n, v in rows)
    return buffer.getvalue()


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; ConfigError naming the install when tensorboard is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class RunLog:
    """The records of one run, in history.jsonl, metrics.csv and (optionally) TensorBoard event files.

    Args:
        out: the run directory (None: nothing is written, as on processes other than 0).
        tensorboard: also write event files under ``out/tensorboard`` (needs the tensorboard package).

    Use it as a context manager, so the event files are closed when the run ends or fails.
    """

    def __init__(self, out: Path | None, *, tensorboard: bool = False) -> None:
        self.out = out
        self.history = History(out / HISTORY_FILE if out is not None else None)
        self.csv_path = out / METRICS_FILE if out is not None else None
        self.tensorboard_dir = out / TENSORBOARD_DIR if out is not None and tensorboard else None
        self._writer_class = summary_writer_class() if self.tensorboard_dir is not None else None
        self._writer = None
        self._resumed = False  # the derived files may lag the history until the first truncation

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, *, resume: bool) -> None:
        """Begin a fresh log (remove any earlier records) or, resuming, keep it for :meth:`truncate_after`."""
        if self.out is None:
            return
        self._resumed = resume
        if not resume:
            self.history.path.unlink(missing_ok=True)
            self.csv_path.unlink(missing_ok=True)
            self._remove_tensorboard()

    def append(self, record: dict) -> None:
        """Write ``record`` to every destination (history first: it is the one the others are rebuilt from)."""
        if self.out is None:
            return
        self.history.append(record)
        rows = scalars(record)
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            f.write(_csv_text(rows, header=new))
        if self.tensorboard_dir is not None:
            self._add_scalars(rows)

    def truncate_after(self, step: int, phases: str | tuple[str, ...]) -> None:
        """:meth:`History.truncate_after`, then the CSV and event files rebuilt to match when anything changed.

        The first call after resuming always rebuilds them: a run killed between writing a history line
        and its CSV rows, or one started before metrics.csv existed, gets them back in step with its history.
        """
        changed = self.history.truncate_after(step, phases)
        if self.out is not None and (changed or self._resumed):
            self._resumed = False
            self._rebuild()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _rebuild(self) -> None:
        rows = [row for record in self.history.records() for row in scalars(record)]
        atomic_write(self.csv_path, lambda p: p.write_text(_csv_text(rows, header=True)))
        if self.tensorboard_dir is not None:
            self._remove_tensorboard()
            self._add_scalars(rows)

    def _add_scalars(self, rows: list[tuple]) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.tensorboard_dir))
        for phase, step, name, value in rows:
            if value is not None:
                self._writer.add_scalar(f"{phase}/{name}", value, global_step=step)
        self._writer.flush()

    def _remove_tensorboard(self) -> None:
        """Remove the run's event files to rebuild them (refused if the folder holds anything else)."""
        self.close()
        if self.out is not None:
            remove_ours(self.out, [TENSORBOARD_DIR])


__all__ = ["History", "RunLog", "scalars", "read_metrics_csv", "summary_writer_class", "HISTORY_FILE",
           "METRICS_FILE", "TENSORBOARD_DIR", "CSV_COLUMNS"]
