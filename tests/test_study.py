"""lfl study: the file format, selection on validation, reuse of finished runs, the report's numbers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cli import main
from helpers import crash_once
from toolkit.runs.study import count_runs, run_study
from toolkit.runs.study_report import study_command
from toolkit.runs.study_spec import StudyError, load_study, run_key

SHARED = """
[study]
dataset = "digits"
model = "mlp"
model_options = { hidden = [16] }
seeds = [0, 1, 2]
baseline = "ce-tuned"
steps = 30
batch_size = 64
log_every = 10
checkpoint_every = 0
device = "cpu"
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CLASSIFICATION = SHARED + """
[[setting]]
name = "sgd"

[[method]]
name = "ce-tuned"
loss = "ce"
lr = [0.00001, 0.3]

[[method]]
name = "ce-small"
loss = "ce"
lr = 0.001
"""


@pytest.fixture(scope="module")
def classification_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    path = write(tmp, CLASSIFICATION)
    report = study_command(path, tmp / "out", progress=False)
    return tmp, path, report


def test_grid_point_with_lowest_validation_error_is_run_on_every_seed(classification_study) -> None:
    tmp, path, report = classification_study
    tuned = next(r for r in report["rows"] if r["method"] == "ce-tuned")
    points = tuned["selection"]["points"]
    # Independent check: read the selection runs' results.json.
    valid = {p["lr"]: json.loads((Path(p["run"]) / "results.json").read_text()) for p in points}
    assert all(results["seed"] == 3 for results in valid.values())  # the selection seed, not among seeds
    best = min(valid, key=lambda lr: valid[lr]["valid_error"])
    assert best == 0.3 and tuned["lr"] == best
    for run in tuned["runs"]:
        results = json.loads((Path(run) / "results.json").read_text())
        assert results["config"]["lr"] == best and results["seed"] in (0, 1, 2)
    assert tuned["n"] == 3 and "p_value" not in tuned  # the baseline is not tested against itself


def test_report_statistics_match_an_independent_computation(classification_study) -> None:
    _, _, report = classification_study
    rows = {r["method"]: r for r in report["rows"]}
    per_seed = {}
    for name, row in rows.items():
        per_seed[name] = [json.loads((Path(run) / "results.json").read_text())["test_error"] for run in row["runs"]]
        values = np.array(per_seed[name])
        assert row["test_error_mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert row["test_error_std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert row["test_error_worst"] == pytest.approx(values.max(), rel=1e-12)
    small = rows["ce-small"]
    assert small["baseline"] == "ce-tuned" and small["n_pairs"] == 3
    expected = stats.ttest_rel(per_seed["ce-small"], per_seed["ce-tuned"]).pvalue
    assert small["p_value"] == pytest.approx(expected, rel=1e-9)
    assert small["mean_difference"] == pytest.approx(np.mean(per_seed["ce-small"]) - np.mean(per_seed["ce-tuned"]))
    assert small["wins"] == sum(a < b for a, b in zip(per_seed["ce-small"], per_seed["ce-tuned"]))


def test_report_files_and_figure(classification_study) -> None:
    tmp, _, report = classification_study
    out = tmp / "out"
    assert json.loads((out / "report.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    markdown = (out / "report.md").read_text()
    assert "| ce-tuned | lr 0.3 |" in markdown and "## sgd" in markdown
    for suffix in ("png", "svg"):
        assert (out / f"test_error.{suffix}").stat().st_size > 1000


def test_second_invocation_reuses_every_finished_run(classification_study) -> None:
    tmp, path, report = classification_study
    stamps = {p: p.stat().st_mtime_ns for p in (tmp / "out" / "runs").glob("*/seed-*/results.json")}
    assert len(stamps) == 2 + 3 + 3  # two selection runs, three seeds of each method
    again = study_command(path, tmp / "out", progress=False)
    assert again["reused_results"] == count_runs(load_study(path))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["rows"] == report["rows"]


def test_a_run_left_failed_by_an_earlier_invocation_runs_again(classification_study) -> None:
    """A results.json saying "failed" (a killed worker, a full disk) is not reused; "diverged" is."""
    tmp, path, report = classification_study
    runs = sorted((tmp / "out" / "runs").glob("*/seed-*/results.json"))
    for run, status in zip(runs, ("failed", "diverged")):
        results = json.loads(run.read_text())
        run.write_text(json.dumps({**results, "status": status}))
    again = study_command(path, tmp / "out", progress=False)
    assert again["reused_results"] == count_runs(load_study(path)) - 1
    assert json.loads(runs[0].read_text())["status"] == "finished"
    assert json.loads(runs[1].read_text())["status"] == "diverged"


def test_a_run_shared_by_two_methods_trains_once(tmp_path) -> None:
    path = write(tmp_path, SHARED + """
[[method]]
name = "ce-tuned"
loss = "ce"
lr = 0.1

[[method]]
name = "ce-again"
loss = "ce"
lr = 0.1
""")
    outcomes = run_study(load_study(path), tmp_path / "out", progress=False)
    assert outcomes[0].runs[0].path == outcomes[1].runs[0].path
    assert len(list((tmp_path / "out" / "runs").glob("*/seed-*"))) == 3


def test_regression_rows_report_test_mse(tmp_path) -> None:
    path = write(tmp_path, SHARED.replace('"digits"', '"diabetes"').replace("[0, 1, 2]", "[0, 1]")
                 .replace('baseline = "ce-tuned"', 'baseline = "mse"') + """
[[method]]
name = "mse"
loss = "mse"
lr = [0.001, 0.01]
""")
    report = study_command(path, tmp_path / "out", progress=False)
    (row,) = report["rows"]
    assert row["n"] == 2 and row["test_mse_mean"] > 0 and "test_error_mean" not in row
    assert row["selection"]["metric"] == "valid_mse" and row["lr"] in (0.001, 0.01)


def test_presets_and_typed_options(tmp_path) -> None:
    study = load_study(write(tmp_path, SHARED + """
[[method]]
name = "paper"
loss = "adalfl"
preset = "paper"
lr = [0.01, 0.1]
milestones = [[10], [10, 20]]

[[method]]
name = "ce-tuned"
loss = "ce"
online_meta_lr = 0.5
"""))
    paper, ce = study.groups
    assert len(paper.points) == 4 and paper.points[0].config.loss_scale == "free"
    assert paper.points[0].config.online_meta_lr == 1e-3  # the preset's value
    assert {p.config.milestones for p in paper.points} == {(10,), (10, 20)}
    assert ce.points[0].config.online_meta_lr == 0.5 and ce.points[0].config.model_options == {"hidden": [16]}
    assert run_key(paper.points[0].config) != run_key(paper.points[1].config)


@pytest.mark.parametrize("text,fragment", [
    (SHARED + '[[method]]\nname = "a"\nlearning_rate = 0.1\n', "unknown option 'learning_rate'"),
    (SHARED + '[[method]]\nname = "a"\ninit-steps = 1\n', "use underscores"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nsteps = 5.7\n', "steps must be an integer"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nnesterov = 1\n', "nesterov must be true or false"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nseed = 1\n', "'seed' cannot be set"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nlr = []\n', "must list distinct values"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nlr = [0.1, 0.1]\n', "must list distinct values"),
    (SHARED + '[[method]]\nname = "ce-tuned"\nlr = -1.0\n', "): lr must be > 0, got -1.0"),  # named as in the file
    (SHARED + '[[method]]\nname = "ce-tuned"\npreset = "fast"\n', "unknown preset 'fast'"),
    (SHARED + '[[method]]\nname = "other"\n', "baseline 'ce-tuned' is not a method"),
    (SHARED + '[[method]]\nname = "ce-tuned"\n[[method]]\nname = "ce-tuned"\n', "names must be distinct"),
    (SHARED + '[[method]]\nname = "../x"\n', "needs a name"),
    (SHARED.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\nselection_seed = 1")
     + '[[method]]\nname = "ce-tuned"\n', "selection_seed must be"),
    (SHARED.replace("seeds = [0, 1, 2]", "seeds = []") + '[[method]]\nname = "ce-tuned"\n', "needs seeds"),
    (SHARED, "at least one [[method]]"),
    (SHARED + "[[method]\n", "cannot parse"),
    (SHARED + '[[methods]]\nname = "a"\n', "unknown table 'methods'"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, capsys, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError, match=None) as info:
        load_study(path)
    assert fragment in str(info.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


def test_missing_file_and_dry_run(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["study", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err
    path = write(tmp_path, CLASSIFICATION)
    main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out
    assert "sgd / ce-tuned: lr in [1e-05, 0.3]; 3 seeds" in out and "8 runs at most" in out
    assert not (tmp_path / "out").exists()


ONE_METHOD = SHARED + """
[[method]]
name = "ce-tuned"
loss = "ce"
lr = 0.1
"""


def test_a_run_failing_once_is_retried_and_one_failing_twice_is_reported(tmp_path, monkeypatch) -> None:
    import toolkit.runs.study

    real_run_one, calls = toolkit.runs.study.run_one, {}

    def flaky(config, out_dir, *args):
        calls[config.seed] = calls.get(config.seed, 0) + 1
        if config.seed == 1 and calls[1] == 1:
            raise OSError("disk full")  # seed 1: fails once, then succeeds
        if config.seed == 2:
            raise RuntimeError("out of memory")  # seed 2: fails every time
        return real_run_one(config, out_dir, *args)

    monkeypatch.setattr(toolkit.runs.study, "run_one", flaky)
    path = write(tmp_path, ONE_METHOD)
    (row,) = study_command(path, tmp_path / "out", progress=False)["rows"]
    assert calls == {0: 1, 1: 2, 2: toolkit.runs.study.MAX_ATTEMPTS}
    assert row["n"] == 2 and row["seeds"] == [0, 1]
    assert row["failed"] == {"2": "RuntimeError: out of memory"}
    monkeypatch.setattr(toolkit.runs.study, "run_one", real_run_one)
    again = study_command(path, tmp_path / "out", progress=False)
    assert again["reused_results"] == 2 and again["rows"][0]["n"] == 3  # the retried run is reused as it stands


def test_a_diverged_run_is_not_retried(tmp_path, monkeypatch) -> None:
    import toolkit.runs.study
    from toolkit.meta.online import NonFiniteError

    calls = []

    def diverge(config, *args):
        calls.append(config.seed)
        raise NonFiniteError("the training loss is nan at step 3")

    monkeypatch.setattr(toolkit.runs.study, "run_one", diverge)
    (row,) = study_command(write(tmp_path, ONE_METHOD), tmp_path / "out", progress=False)["rows"]
    assert sorted(calls) == [0, 1, 2] and row["n"] == 0 and set(row["failed"]) == {"0", "1", "2"}


@pytest.mark.slow
def test_a_dead_worker_process_is_replaced_and_its_run_retried(tmp_path, monkeypatch) -> None:
    import toolkit.runs.study

    monkeypatch.setattr(toolkit.runs.study, "_train_one", crash_once)
    path = write(tmp_path, ONE_METHOD.replace("seeds = [0, 1, 2]", "seeds = [0]"))
    (row,) = study_command(path, tmp_path / "out", jobs=2, progress=False)["rows"]
    assert row["n"] == 1 and "failed" not in row
    assert Path(row["runs"][0] + ".crashed").exists()  # the first attempt did die


@pytest.mark.parametrize("args,fragment", [
    (["--backend", "spark"], "'spark' is not one of 'local', 'ray'"),
    (["--address", "10.0.0.1:6379"], "--address names a Ray cluster: add --backend ray"),
])
def test_bad_backend_options_are_one_line_errors(tmp_path, capsys, args, fragment) -> None:
    path = write(tmp_path, ONE_METHOD)
    with pytest.raises(SystemExit) as info:
        main(["study", str(path), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_ray_backend_without_ray_names_the_install_hint(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    path = write(tmp_path, ONE_METHOD)
    with pytest.raises(SystemExit) as info:
        main(["study", str(path), "--out", str(tmp_path / "out"), "--backend", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert 'pip install "ray[default]>=2.9"' in err[0]
    assert not (tmp_path / "out").exists()


def test_ray_is_imported_only_when_the_ray_backend_runs() -> None:
    code = "import sys, cli, toolkit.runs.study, toolkit.runs.backends; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_the_study_figure_keeps_every_seed_visible_and_its_legend_off_the_data(tmp_path):
    """Seeds with equal values sat on one dot, and the legend sat inside the last panel."""
    from toolkit.runs.study_report import plot_study

    study = load_study(write(tmp_path, CLASSIFICATION))
    values = {"0": 0.1, "1": 0.1, "2": 0.3}
    rows = [{"setting": "sgd", "method": m, "test_error_values": values, "test_error_mean": 0.5 / 3}
            for m in ("ce-tuned", "ce-small")]
    fig = plot_study(study, rows)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    xs = [line.get_xdata()[0] for line in ax.get_lines()]
    assert len(xs) == 3 and len(set(xs)) == 3  # one dot per seed, side by side
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert ax.get_ylabel() == "test error (fraction wrong)"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_study_file_loads(path):
    """The declared studies the README and docs cite are valid files (options, grids, baseline)."""
    spec = load_study(path)
    assert spec.groups and spec.seeds and count_runs(spec) > 0
    assert any(group.method == spec.baseline for group in spec.groups)
