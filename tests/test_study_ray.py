"""lfl study --backend ray: the same report as the local backend, and a dead Ray worker's run retried.

One local Ray instance serves the module (starting one takes seconds); the study joins it
instead of starting its own.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='the Ray backend needs Ray: pip install "ray[default]>=2.9"')

from cli import main  # noqa: E402
import helpers  # noqa: E402
from helpers import crash_once  # noqa: E402
from test_study import CLASSIFICATION, ONE_METHOD, write  # noqa: E402

WALL_CLOCK = ("wall_time_s", "run_time_s", "train_time_s_median", "cost_vs_baseline")  # measured, so never equal


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # One CPU: a single worker process imports torch once; two would compete for a small CI machine's cores.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def without_wall_clock(report: dict, out: Path) -> dict:
    """The report with its timing fields removed and the study directory written as OUT."""
    report = json.loads(json.dumps(report).replace(str(out), "OUT"))
    for row in [report, *report["rows"]]:
        for key in WALL_CLOCK:
            row.pop(key, None)
    return report


@pytest.mark.slow
def test_ray_and_local_backends_write_the_same_report(tmp_path, capsys, monkeypatch) -> None:
    from toolkit.runs.backends import RayTasks

    submitted = []
    monkeypatch.setattr(RayTasks, "submit", lambda self, *args, submit=RayTasks.submit, **kwargs:
                        submitted.append(args) or submit(self, *args, **kwargs))
    path = write(tmp_path, CLASSIFICATION)
    reports = {}
    # The Ray instance has one CPU, so each task gets one torch thread, as the in-process local run has (conftest).
    for backend in ("local", "ray"):
        out = tmp_path / backend
        main(["study", str(path), "--out", str(out), "--quiet", "--backend", backend])
        reports[backend] = without_wall_clock(json.loads((out / "report.json").read_text()), out)
    capsys.readouterr()
    assert len(submitted) == 2 + 3 + 3  # every run went to Ray: two selection runs, three seeds of each method
    assert reports["ray"] == reports["local"]
    assert reports["ray"]["reused_results"] == 0 and all(row["n"] == 3 for row in reports["ray"]["rows"])


@pytest.mark.slow
def test_a_dead_ray_worker_is_retried(tmp_path, monkeypatch) -> None:
    import toolkit.runs.study
    from toolkit.runs.study_report import study_command

    monkeypatch.setattr(toolkit.runs.study, "_train_one", crash_once)
    # Ray workers cannot import tests/helpers.py (not on their path): send crash_once by value.
    ray.cloudpickle.register_pickle_by_value(helpers)
    path = write(tmp_path, ONE_METHOD.replace("seeds = [0, 1, 2]", "seeds = [0]"))
    try:
        (row,) = study_command(path, tmp_path / "out", backend="ray", progress=False)["rows"]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(helpers)
    assert row["n"] == 1 and "failed" not in row, row.get("failed")
    assert Path(row["runs"][0] + ".crashed").exists()  # the first attempt did die
