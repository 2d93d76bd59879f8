"""Running a study (``lfl study FILE --out DIR``): selection on validation, then every seed.

For each (setting, method) group with a grid, every grid point trains once on the
study's selection seed; the point with the lowest validation error (validation MSE for
regression) is then trained on every evaluation seed and tested. Groups without a grid
go straight to their seeds. Runs live in ``DIR/runs/<key>/seed-<N>``, the key naming
the full config without its seed, so a run shared by two methods (cross-entropy at
lr 0.01 in a fixed and a tuned method) trains once, a finished run is reused by the
next invocation, and a killed one resumes from its checkpoint.

Writes ``DIR/report.json``, ``DIR/report.md`` and ``DIR/test_error.png/.svg``
(:mod:`toolkit.study_report`).
"""
from __future__ import annotations

import json
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .study_spec import Group, Study, run_key, selection_metric
from .sweep import process_pool, run_one, threads_per_job
from .train import TrainConfig, progress_bar


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
    """A group's selection runs (one per grid point), the chosen point and the seed runs."""

    group: Group
    selection: list[RunOutcome | None] = field(default_factory=list)
    chosen: int | None = None
    runs: dict[int, RunOutcome] = field(default_factory=dict)


def finished_results(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """results.json of a finished run with exactly this config, else None."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    expected = json.loads(json.dumps(config.to_dict()))
    return results if isinstance(results, dict) and results.get("config") == expected else None


def _train_one(config: TrainConfig, out_dir: str, threads: int | None) -> dict[str, Any]:
    """Worker: train (resuming a killed run); a failure comes back as a message, not an exception."""
    try:
        return {"results": run_one(config, out_dir, True, False, False, threads)}
    except Exception as exc:  # noqa: BLE001 - one run's failure is reported, the study goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


class _InProcess:
    """The executor interface, running each job at submission (``--jobs 1``)."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None


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

    def close(self) -> None:
        self.bar.close()


def count_runs(study: Study) -> int:
    """How many runs the study asks for: each tuned group's grid on the selection seed, every group's seeds.

    Runs that two groups share count for each (the progress bar moves for each).
    """
    return sum((len(g.points) if g.tuned else 0) + len(study.seeds) for g in study.groups)


def run_study(study: Study, out_dir: str | Path, *, jobs: int = 1, progress: bool = True) -> list[GroupOutcome]:
    """Run (or reuse) every run of the study; return each group's outcome.

    Args:
        study: from :func:`toolkit.study_spec.load_study`.
        out_dir: the study directory; runs go to ``out_dir/runs``.
        jobs: parallel processes (1: in this process); each gets cpu_count // jobs threads.
        progress: one progress bar over all the study's runs.
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    outcomes = {(g.setting, g.method): GroupOutcome(group=g, selection=[None] * len(g.points)) for g in study.groups}
    total = count_runs(study)
    bar = _StudyProgress(total, enabled=progress)
    # Several groups may ask for the same run (same config and seed): it trains once.
    in_flight: dict[Path, Future] = {}
    waiting: dict[Future, list[Callable[[RunOutcome], None]]] = {}
    threads = threads_per_job(jobs) if jobs > 1 else None
    executor = process_pool(jobs) if jobs > 1 else _InProcess()
    finished: dict[Path, RunOutcome] = {}

    def request(config: TrainConfig, then: Callable[[RunOutcome], None]) -> None:
        run_dir = out / "runs" / run_key(config) / f"seed-{config.seed}"
        if run_dir in finished:
            bar.update(finished[run_dir])
            then(finished[run_dir])
            return
        if run_dir in in_flight:
            waiting[in_flight[run_dir]].append(then)
            return
        results = finished_results(run_dir, config)
        if results is not None:
            finished[run_dir] = RunOutcome(path=str(run_dir), seed=config.seed, results=results, reused=True)
            bar.update(finished[run_dir])
            then(finished[run_dir])
            return
        future = executor.submit(_train_one, config, str(run_dir), threads)
        in_flight[run_dir] = future
        waiting[future] = [then]
        future.run_dir, future.seed = run_dir, config.seed  # type: ignore[attr-defined]

    def start_seeds(outcome: GroupOutcome, index: int) -> None:
        outcome.chosen = index
        for seed in study.seeds:
            request(replace(outcome.group.points[index].config, seed=seed),
                    lambda result, seed=seed: outcome.runs.__setitem__(seed, result))

    def selected(outcome: GroupOutcome, index: int, result: RunOutcome) -> None:
        outcome.selection[index] = result
        if all(s is not None for s in outcome.selection):
            scores = [selection_metric(s.results) for s in outcome.selection]
            start_seeds(outcome, min(range(len(scores)), key=lambda i: (scores[i], i)))

    with executor:
        for outcome in outcomes.values():
            if outcome.group.tuned:
                for index, point in enumerate(outcome.group.points):
                    request(replace(point.config, seed=study.selection_seed),
                            lambda result, o=outcome, i=index: selected(o, i, result))
            else:
                start_seeds(outcome, 0)
        while in_flight:
            done, _ = wait(list(in_flight.values()), return_when=FIRST_COMPLETED)
            for future in done:
                run_dir = future.run_dir  # type: ignore[attr-defined]
                reply = future.result()
                result = RunOutcome(path=str(run_dir), seed=future.seed,  # type: ignore[attr-defined]
                                    results=reply.get("results"), error=reply.get("error"))
                finished[run_dir] = result
                del in_flight[run_dir]
                callbacks = waiting.pop(future)
                for then in callbacks:
                    bar.update(result)
                    then(result)
    bar.close()
    return list(outcomes.values())


__all__ = ["run_study", "count_runs", "finished_results", "RunOutcome",
           "GroupOutcome"]
