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
    outcomes = {(g.setting, g.method): GroupOutcome(group=g) for g in study.groups}
    bar = _StudyProgress(count_runs(study), enabled=progress)
    # Several groups may ask for the same run (same config and seed): it trains once.
    in_flight: dict[Path, Future] = {}
    jobs_of: dict[Future, _Job] = {}
    finished: dict[Path, RunOutcome] = {}
    waiting_for: dict[tuple[str, str], list[Callable[[], None]]] = {key: [] for key in outcomes}

    def submit(job: _Job) -> None:
        # An absolute path: a Ray worker's working directory need not be this one.
        future = executor.submit(_train_one, job.config, str(job.run_dir.absolute()), executor.threads,
                                 gpu=job.config.device != "cpu")
        in_flight[job.run_dir] = future
        jobs_of[future] = job

    def request(config: TrainConfig, then: Callable[[RunOutcome], None]) -> None:
        run_dir = out / "runs" / run_key(config) / f"seed-{config.seed}"
        if run_dir in finished:
            bar.update(finished[run_dir])
            then(finished[run_dir])
            return
        if run_dir in in_flight:
            jobs_of[in_flight[run_dir]].waiting.append(then)
            return
        results = finished_results(run_dir, config)
        if results is not None:
            finished[run_dir] = RunOutcome(path=str(run_dir), seed=config.seed, results=results, reused=True)
            bar.update(finished[run_dir])
            then(finished[run_dir])
            return
        submit(_Job(run_dir=run_dir, config=config, attempt=1, waiting=[then]))

    def after(key: tuple[str, str], then: Callable[[], None]) -> None:
        """``then`` once the group ``key`` has chosen its grid point (at once if it has)."""
        if outcomes[key].chosen is not None:
            then()
        else:
            waiting_for[key].append(then)

    def fail(outcome: GroupOutcome, reason: str) -> None:
        outcome.error = reason
        for seed in study.seeds:
            outcome.runs[seed] = RunOutcome(path="", seed=seed, error=reason)
            bar.update(outcome.runs[seed])

    def start_seeds(outcome: GroupOutcome) -> None:
        config = outcome.points[outcome.chosen].config
        target = outcome.group.links.steps_match
        if target is not None:
            try:
                config = replace(config, steps=_matched(outcome, outcomes[(outcome.group.setting, target)]))
            except StudyError as exc:
                return fail(outcome, str(exc))
        for seed in study.seeds:
            request(replace(config, seed=seed), lambda result, seed=seed: outcome.runs.__setitem__(seed, result))

    def decide(outcome: GroupOutcome, index: int) -> None:
        outcome.chosen = index
        for then in waiting_for[(outcome.group.setting, outcome.group.method)]:
            then()
        target = outcome.group.links.steps_match
        if target is not None:
            after((outcome.group.setting, target), lambda: start_seeds(outcome))
        else:
            start_seeds(outcome)

    def select(outcome: GroupOutcome, first: int = 0) -> None:
        if not study.needs_selection(outcome.group):
            return decide(outcome, 0)
        for index in range(first, len(outcome.points)):
            request(replace(outcome.points[index].config, seed=study.selection_seed),
                    lambda result, o=outcome, i=index: selected(o, i, result))

    def selected(outcome: GroupOutcome, index: int, result: RunOutcome) -> None:
        outcome.selection[index] = result
        if not all(s is not None for s in outcome.selection):
            return
        scores = [selection_metric(s.results) for s in outcome.selection]
        best = min(range(len(scores)), key=lambda i: (scores[i], i))
        edges = grid_edges(outcome.grid, outcome.points[best].values)
        if study.extend_edges and edges and outcome.rounds < study.max_extensions:
            new = extend_grid(outcome.group.grid, outcome.grid, outcome.points, edges, outcome.extensions)
            if new:
                outcome.rounds += 1
                first = len(outcome.points)
                outcome.points += new
                outcome.selection += [None] * len(new)
                bar.grow(len(new))
                return select(outcome, first)
        decide(outcome, best)

    def begin(outcome: GroupOutcome) -> None:
        source = outcome.group.links.loss_source
        if source is None:
            return select(outcome)
        origin = outcomes[(source.setting or outcome.group.setting, source.method)]

        def with_loss() -> None:
            run = origin.selection[origin.chosen]
            if run is None or not run.results or not (Path(run.path) / LOSS).is_file():
                bar.grow(-len(outcome.points))
                return fail(outcome, f"method {source.method!r} left no learned loss on the selection seed")
            try:
                outcome.loss_file = str(write_source_loss(Path(run.path), out, approx=source.approx))
            except Exception as exc:  # noqa: BLE001 - an approximation that fails stops this method only
                bar.grow(-len(outcome.points))
                return fail(outcome, f"cannot reuse {source.text()}: {type(exc).__name__}: {exc}")
            outcome.points = [replace(p, config=replace(p.config, loss_from=outcome.loss_file))
                              for p in outcome.points]
            select(outcome)

        after((origin.group.setting, origin.group.method), with_loss)

    with executor:
        for outcome in outcomes.values():
            begin(outcome)
        while in_flight:
            done, _ = wait(list(in_flight.values()), return_when=FIRST_COMPLETED)
            for future in done:
                job = jobs_of.pop(future)
                del in_flight[job.run_dir]
                reply = _reply(future)
                if reply.get("error") and not reply.get("final") and job.attempt < MAX_ATTEMPTS:
                    submit(replace(job, attempt=job.attempt + 1))
                    continue
                result = RunOutcome(path=str(job.run_dir), seed=job.config.seed,
                                    results=reply.get("results"), error=reply.get("error"))
                finished[job.run_dir] = result
                for then in job.waiting:
                    bar.update(result)
                    then(result)
    bar.close()
    return list(outcomes.values())


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
