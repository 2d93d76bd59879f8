"""Running a study (``lfl study FILE --out DIR``): selection on validation, then every seed.

For each (setting, method) group with a grid, every grid point trains once on the
study's selection seed; the point with the lowest validation error (validation MSE for
regression) is then trained on every evaluation seed and tested. Groups without a grid
go straight to their seeds. Runs live in ``DIR/runs/<key>/seed-<N>``, the key naming
the full config without its seed, so a run shared by two methods (cross-entropy at
lr 0.01 in a fixed and a tuned method) trains once, a finished run is reused by the
next invocation, and a killed one resumes from its checkpoint.

Runs execute on a backend (:mod:`toolkit.runs.backends`): this process, a local process pool
or Ray tasks; the scheduling here is the same for all. A failed run is tried once more
(resuming from its checkpoint) and, failing again, is reported as failed while the study
goes on; a diverged run is final at once, as a second attempt would diverge again.

Writes ``DIR/report.json``, ``DIR/report.md`` and ``DIR/test_error.png/.svg``
(:mod:`toolkit.runs.study_report`).
"""
from __future__ import annotations

import json
import math
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from toolkit.layout import RESULTS
from toolkit.runs.backends import make_backend
from toolkit.runs.run_directory import DirectoryLock
from toolkit.errors import StudyError
from toolkit.layout import LOSS
from toolkit.runs.study_edges import grid_edges, extend_grid
from toolkit.runs.study_links import matched_steps, write_source_loss
from toolkit.runs.study_spec import GridPoint, Group, Study, run_key, selection_metric
from toolkit.runs.sweep import run_one
from toolkit.runs.common import TrainConfig, progress_bar


MAX_ATTEMPTS = 2  # a failed run is tried once more before it is reported as failed


@dataclass
class RunOutcome:
    """What one run left: its results.json, or the reason it failed."""

    path: str
    seed: int
    results: dict[str, Any] | None = None
    error: str | None = None
    reused: bool = False


@dataclass
class GroupOutcome:
    """A group's selection runs (one per grid point), the chosen point and the seed runs.

    ``points`` and ``grid`` start as the group's own and grow when an edge is extended (``extensions``
    says how); a reused loss sets each point's ``loss_from`` (``loss_file``); ``matched`` says how a
    ``steps = "match:..."`` step count was computed; ``error`` why a linked group could not run.
    """

    group: Group
    selection: list[RunOutcome | None] = field(default_factory=list)
    chosen: int | None = None
    runs: dict[int, RunOutcome] = field(default_factory=dict)
    points: list[GridPoint] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    extensions: dict[tuple[str, str], dict] = field(default_factory=dict)
    rounds: int = 0
    matched: dict[str, Any] | None = None
    loss_file: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.points = self.points or list(self.group.points)
        self.grid = self.grid or {k: list(v) for k, v in self.group.grid.items()}
        self.selection = self.selection or [None] * len(self.points)


def finished_results(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """results.json of a run with exactly this config that is over, else None.

    Over means finished, or diverged (training is deterministic: it would diverge again). A
    run that failed for another reason (a killed worker, a full disk) is run again.
    """
    path = run_dir / RESULTS
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    expected = json.loads(json.dumps(config.to_dict()))
    if not isinstance(results, dict) or results.get("config") != expected:
        return None
    status = results.get("status", "finished")
    if status == "diverged":
        return results
    return results if status == "finished" and _consistent(results, config) else None


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _consistent(results: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a finished run's results.json holds what a finished run of ``config`` writes: its seed and
    step count, and finite metrics in range. A file edited by hand or half-written is not reused (the run
    resumes from its checkpoint and writes it again); this catches inconsistency, not a forger."""
    if results.get("seed") != config.seed or results.get("steps") != config.steps:
        return False
    if results.get("task") == "regression":
        return all(_number(results.get(k), 0.0) for k in ("test_mse", "valid_mse"))
    return (all(_number(results.get(k), 0.0, 1.0) for k in ("test_error", "valid_error"))
            and _number(results.get("test_loss")))


def _train_one(config: TrainConfig, out_dir: str, threads: int | None) -> dict[str, Any]:
    """Worker: train (resuming a killed or failed attempt); a failure comes back as a message, not an exception.

    A divergence is marked final: training is a deterministic function of the config and
    seed, so a second attempt would diverge again.
    """
    from toolkit.meta.online import NonFiniteError

    try:
        return {"results": run_one(config, out_dir, True, False, False, threads)}
    except NonFiniteError as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "final": True}
    except Exception as exc:  # noqa: BLE001 - one run's failure is reported, the study goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _reply(future: Future) -> dict[str, Any]:
    """A finished job's reply; a worker that died (killed, out of memory, node lost) becomes a failure message."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the study goes on without this run
        if isinstance(getattr(exc, "cause", None), BaseException):
            exc = exc.cause  # Ray wraps the task's own exception, with a banner as its first line
        lines = str(exc).strip().splitlines()
        return {"error": f"{type(exc).__name__}: {lines[0] if lines else 'the worker stopped'}"}


@dataclass
class _Job:
    """A run being trained: where, with what, which attempt, and who waits for it."""

    run_dir: Path
    config: TrainConfig
    attempt: int
    waiting: list[Callable[[RunOutcome], None]]


class _StudyProgress:
    """A bar over the study's runs on a terminal; elsewhere (a log file) one line per finished run."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        import sys
        import time

        self.total, self.done, self.enabled = total, 0, enabled
        self.on_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = progress_bar(total, enabled=enabled, desc="study", unit="run")
        self.started = time.perf_counter()

    def update(self, outcome: RunOutcome) -> None:
        import sys
        import time

        self.done += 1
        self.bar.update(1)
        if self.enabled and not self.on_terminal:
            state = "reused" if outcome.reused else ("failed: " + outcome.error if outcome.error else "done")
            print(f"study: {self.done}/{self.total} after {time.perf_counter() - self.started:.0f} s: "
                  f"{outcome.path} {state}", file=sys.stderr, flush=True)

    def grow(self, runs: int) -> None:
        """More (or, negative, fewer) runs than counted at the start: a grid extended, a group that cannot run."""
        self.total += runs
        self.bar.total = self.total
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def count_runs(study: Study) -> int:
    """How many runs the study asks for: each grid (or linked group) on the selection seed, every group's seeds.

    Runs that two groups share count for each (the progress bar moves for each). Grid extensions add more
    as they are decided.
    """
    return sum((len(g.points) if study.needs_selection(g) else 0) + len(study.seeds) for g in study.groups)


def run_study(study: Study, out_dir: str | Path, *, jobs: int = 1, backend: str = "local",
              address: str | None = None, progress: bool = True) -> list[GroupOutcome]:
    """Run (or reuse) every run of the study; return each group's outcome.

    Args:
        study: from :func:`toolkit.runs.study_spec.load_study`.
        out_dir: the study directory; runs go to ``out_dir/runs``.
        jobs: runs at once (local with 1: in this process); each gets cpu_count // jobs threads.
        backend: ``local`` (processes on this machine) or ``ray`` (Ray tasks, see :mod:`toolkit.runs.backends`).
        address: the Ray cluster for ``backend="ray"`` (None: a Ray instance on this machine).
        progress: one progress bar over all the study's runs.

    Raises:
        StudyError: an unknown backend, or Ray asked for but missing or unreachable.
    """
    executor = make_backend(backend, jobs=jobs, address=address)
    out = Path(out_dir)
    with DirectoryLock(out, what="study"):  # a second lfl study on the same --out stops at once
        (out / "runs").mkdir(parents=True, exist_ok=True)
        return _run_study(study, out, executor, progress=progress)


def _run_study(study: Study, out: Path, executor, *, progress: bool) -> list[GroupOutcome]:
    scheduler = _Scheduler(study, out, executor, progress=progress)
    with executor:
        scheduler.run()
    return list(scheduler.outcomes.values())


class _Scheduler:
    """The study's runs as a graph of callbacks: each group selects its grid point on the selection seed
    (extending a grid at its edge where asked), waits for the groups it links to (a matched step count, a
    reused loss), then requests its seeds. A run asked for by several groups (same config and seed) trains
    once; a finished one on disk is reused; a failed one is tried once more."""

    def __init__(self, study: Study, out: Path, executor, *, progress: bool) -> None:
        self.study, self.out, self.executor = study, out, executor
        self.outcomes = {(g.setting, g.method): GroupOutcome(group=g) for g in study.groups}
        self.bar = _StudyProgress(count_runs(study), enabled=progress)
        self.in_flight: dict[Path, Future] = {}
        self.jobs_of: dict[Future, _Job] = {}
        self.finished: dict[Path, RunOutcome] = {}
        self.waiting_for: dict[tuple[str, str], list[Callable[[], None]]] = {key: [] for key in self.outcomes}

    def run(self) -> None:
        for outcome in self.outcomes.values():
            self.begin(outcome)
        while self.in_flight:
            done, _ = wait(list(self.in_flight.values()), return_when=FIRST_COMPLETED)
            for future in done:
                self.collect(future)
        self.bar.close()

    def collect(self, future: Future) -> None:
        """A finished job: retried once if it failed (not diverged), else handed to whoever waits for it."""
        job = self.jobs_of.pop(future)
        del self.in_flight[job.run_dir]
        reply = _reply(future)
        if reply.get("error") and not reply.get("final") and job.attempt < MAX_ATTEMPTS:
            return self.submit(replace(job, attempt=job.attempt + 1))
        result = RunOutcome(path=str(job.run_dir), seed=job.config.seed, results=reply.get("results"),
                            error=reply.get("error"))
        self.finished[job.run_dir] = result
        for then in job.waiting:
            self.bar.update(result)
            then(result)

    def submit(self, job: _Job) -> None:
        # An absolute path: a Ray worker's working directory need not be this one.
        future = self.executor.submit(_train_one, job.config, str(job.run_dir.absolute()), self.executor.threads,
                                      gpu=job.config.device != "cpu")
        self.in_flight[job.run_dir] = future
        self.jobs_of[future] = job

    def request(self, config: TrainConfig, then: Callable[[RunOutcome], None]) -> None:
        """``then(outcome)`` once the run of ``config`` is over: at once if it finished here or on disk."""
        run_dir = self.out / "runs" / run_key(config) / f"seed-{config.seed}"
        if run_dir in self.in_flight:
            return self.jobs_of[self.in_flight[run_dir]].waiting.append(then)
        if run_dir not in self.finished:
            results = finished_results(run_dir, config)
            if results is None:
                return self.submit(_Job(run_dir=run_dir, config=config, attempt=1, waiting=[then]))
            self.finished[run_dir] = RunOutcome(path=str(run_dir), seed=config.seed, results=results, reused=True)
        self.bar.update(self.finished[run_dir])
        then(self.finished[run_dir])

    def after(self, key: tuple[str, str], then: Callable[[], None]) -> None:
        """``then`` once the group ``key`` has chosen its grid point (at once if it has)."""
        if self.outcomes[key].chosen is not None:
            then()
        else:
            self.waiting_for[key].append(then)

    def fail(self, outcome: GroupOutcome, reason: str) -> None:
        outcome.error = reason
        for seed in self.study.seeds:
            outcome.runs[seed] = RunOutcome(path="", seed=seed, error=reason)
            self.bar.update(outcome.runs[seed])

    def start_seeds(self, outcome: GroupOutcome) -> None:
        config = outcome.points[outcome.chosen].config
        target = outcome.group.links.steps_match
        if target is not None:
            try:
                config = replace(config, steps=_matched(outcome, self.outcomes[(outcome.group.setting, target)]))
            except StudyError as exc:
                return self.fail(outcome, str(exc))
        for seed in self.study.seeds:
            self.request(replace(config, seed=seed), lambda result, seed=seed: outcome.runs.__setitem__(seed, result))

    def decide(self, outcome: GroupOutcome, index: int) -> None:
        outcome.chosen = index
        for then in self.waiting_for[(outcome.group.setting, outcome.group.method)]:
            then()
        target = outcome.group.links.steps_match
        if target is not None:
            self.after((outcome.group.setting, target), lambda: self.start_seeds(outcome))
        else:
            self.start_seeds(outcome)

    def select(self, outcome: GroupOutcome, first: int = 0) -> None:
        if not self.study.needs_selection(outcome.group):
            return self.decide(outcome, 0)
        for index in range(first, len(outcome.points)):
            self.request(replace(outcome.points[index].config, seed=self.study.selection_seed),
                         lambda result, o=outcome, i=index: self.selected(o, i, result))

    def selected(self, outcome: GroupOutcome, index: int, result: RunOutcome) -> None:
        """A selection run is over; once all are, the best point is chosen, or the grid extended at its edge."""
        outcome.selection[index] = result
        if not all(s is not None for s in outcome.selection):
            return
        scores = [selection_metric(s.results) for s in outcome.selection]
        best = min(range(len(scores)), key=lambda i: (scores[i], i))
        edges = grid_edges(outcome.grid, outcome.points[best].values)
        if self.study.extend_edges and edges and outcome.rounds < self.study.max_extensions:
            new = extend_grid(outcome.group.grid, outcome.grid, outcome.points, edges, outcome.extensions)
            if new:
                outcome.rounds += 1
                first = len(outcome.points)
                outcome.points += new
                outcome.selection += [None] * len(new)
                self.bar.grow(len(new))
                return self.select(outcome, first)
        self.decide(outcome, best)

    def begin(self, outcome: GroupOutcome) -> None:
        source = outcome.group.links.loss_source
        if source is None:
            return self.select(outcome)
        origin = self.outcomes[(source.setting or outcome.group.setting, source.method)]
        self.after((origin.group.setting, origin.group.method), lambda: self.with_source_loss(outcome, origin))

    def with_source_loss(self, outcome: GroupOutcome, origin: GroupOutcome) -> None:
        """A method that reuses ``origin``'s learned loss: its points train that loss, fixed."""
        source = outcome.group.links.loss_source
        run = origin.selection[origin.chosen]
        if run is None or not run.results or not (Path(run.path) / LOSS).is_file():
            self.bar.grow(-len(outcome.points))
            return self.fail(outcome, f"method {source.method!r} left no learned loss on the selection seed")
        try:
            outcome.loss_file = str(write_source_loss(Path(run.path), self.out, approx=source.approx))
        except Exception as exc:  # noqa: BLE001 - an approximation that fails stops this method only
            self.bar.grow(-len(outcome.points))
            return self.fail(outcome, f"cannot reuse {source.text()}: {type(exc).__name__}: {exc}")
        outcome.points = [replace(p, config=replace(p.config, loss_from=outcome.loss_file)) for p in outcome.points]
        self.select(outcome)


def _matched(outcome: GroupOutcome, target: GroupOutcome) -> int:
    """The matched step count of ``outcome`` (recorded in ``outcome.matched``) from both selection runs."""
    own, theirs = outcome.selection[outcome.chosen], target.selection[target.chosen]
    times = [r.results.get("wall_time_s") if r is not None and r.results else None for r in (own, theirs)]
    if not all(_number(t, 0.0) for t in times):
        raise StudyError(f"cannot match {target.group.method!r}'s time: a selection run has no training time")
    outcome.matched = {"method": target.group.method, **matched_steps(
        target_time_s=times[1], own_time_s=times[0], own_steps=int(own.results["steps"]))}
    return outcome.matched["steps"]


__all__ = ["run_study", "count_runs", "finished_results", "RunOutcome", "GroupOutcome", "MAX_ATTEMPTS"]
