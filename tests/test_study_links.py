"""lfl study: cost and guard columns, steps = "match:METHOD", loss_from = "method:SOURCE" (tiny real runs)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import losses
from toolkit.runs.study_report import study_command
from toolkit.runs.study_spec import StudyError, load_study

STUDY = """
[study]
dataset = "digits"
model = "mlp"
seeds = [0, 1]
baseline = "ce"
steps = 20
batch_size = 64
lr = 0.1
log_every = 10
checkpoint_every = 0
device = "cpu"
init_steps = 5

[[setting]]
name = "wide"
model_options = { hidden = [16] }

[[setting]]
name = "narrow"
model_options = { hidden = [8] }

[[method]]
name = "ce"
loss = "ce"

[[method]]
name = "adalfl"
loss = "adalfl"

[[method]]
name = "ce-time"
loss = "ce"
steps = "match:adalfl"

[[method]]
name = "reused"
loss_from = "method:adalfl"

[[method]]
name = "transferred"
loss_from = "method:wide/adalfl"
"""


def _results(run: str | Path) -> dict:
    return json.loads((Path(run) / "results.json").read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("links")
    path = tmp / "study.toml"
    path.write_text(STUDY)
    report = study_command(path, tmp / "out", progress=False)
    return tmp, report, {(r["setting"], r["method"]): r for r in report["rows"]}


def _selection_run(out: Path, setting: str, method: str) -> Path:
    """The one selection-seed run of a method, found from the run directories themselves."""
    found = [p.parent for p in (out / "runs").glob("*/seed-2/results.json")
             if _results(p.parent)["config"]["model_options"]["hidden"] == ([16] if setting == "wide" else [8])
             and _results(p.parent)["config"]["loss"] == ("adalfl" if method == "adalfl" else "ce")
             and _results(p.parent)["config"]["loss_from"] is None
             and _results(p.parent)["steps"] == 20]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_every_row_reports_cost_and_guard_share_from_its_runs(study) -> None:
    tmp, report, rows = study
    for (setting, method), row in rows.items():
        times = [_results(run)["wall_time_s"] for run in row["runs"]]
        assert row["train_time_s_median"] == pytest.approx(float(np.median(times)))
        base = [_results(run)["wall_time_s"] for run in rows[(setting, "ce")]["runs"]]
        assert row["cost_vs_baseline"] == pytest.approx(np.median(times) / np.median(base))
        guarded = [_results(run).get("guarded") for run in row["runs"]]
        if any(g is None for g in guarded):
            assert row["guarded_mean"] is None and row["rejected_steps_mean"] is None
        else:
            assert row["guarded_mean"] == pytest.approx(np.mean(guarded))
            assert row["rejected_steps_mean"] == pytest.approx(np.mean([_results(r)["rejected_steps"]
                                                                         for r in row["runs"]]))
    assert rows[("wide", "adalfl")]["guarded_mean"] is not None  # AdaLFL runs with the guard by default
    assert rows[("wide", "ce")]["guarded_mean"] is None
    markdown = (tmp / "out" / "report.md").read_text()
    assert "| budget | steps | train time (median) | × baseline | guarded | rejected steps |" in markdown
    assert "| ce | - |" in markdown and "—" in markdown and "equal time" in markdown


@pytest.mark.slow
def test_match_gives_the_steps_that_fit_the_named_methods_time(study) -> None:
    tmp, _, rows = study
    for setting in ("wide", "narrow"):
        row = rows[(setting, "ce-time")]
        target = _results(_selection_run(tmp / "out", setting, "adalfl"))["wall_time_s"]
        own = _results(_selection_run(tmp / "out", setting, "ce"))  # ce-time's selection run is ce's: shared
        expected = math.floor(target / (own["wall_time_s"] / own["steps"]))
        matched = row["matched_steps"]
        assert matched["steps"] == expected and matched["method"] == "adalfl"
        assert matched["target_time_s"] == target and matched["own_time_s"] == own["wall_time_s"]
        assert row["budget"] == "equal time" and rows[(setting, "ce")]["budget"] == "equal steps"
        assert row["steps"] == expected and all(_results(r)["steps"] == expected for r in row["runs"])
    assert expected > 20  # an AdaLFL step costs more than a CE step


@pytest.mark.slow
def test_a_reused_loss_is_the_source_methods_final_loss_trained_fixed(study) -> None:
    tmp, _, rows = study
    source = _selection_run(tmp / "out", "wide", "adalfl") / "loss.json"
    for setting, method in (("wide", "reused"), ("wide", "transferred"), ("narrow", "transferred")):
        row = rows[(setting, method)]
        assert row["loss_source"]["setting"] == "wide" and row["loss_source"]["method"] == "adalfl"
        saved = Path(row["loss_source"]["file"])
        assert saved.read_text() == source.read_text()
        assert saved.stem == hashlib.sha256(source.read_bytes()).hexdigest()[:16]  # the key fingerprints it
        for run in row["runs"]:
            results = _results(run)
            assert results["loss"] == "reused" and results["config"]["loss_from"] == str(saved)
            assert not results["config"]["adapt"]
            expected, got = losses.load_loss(source), losses.load_loss(Path(run) / "loss.json")
            for a, b in zip(expected.state_dict().values(), got.state_dict().values()):
                torch.testing.assert_close(a.double(), b.double())
    narrow = _selection_run(tmp / "out", "narrow", "adalfl") / "loss.json"
    assert Path(rows[("narrow", "reused")]["loss_source"]["file"]).read_text() == narrow.read_text()
    assert rows[("narrow", "reused")]["loss_source"]["file"] != rows[("narrow", "transferred")]["loss_source"]["file"]


@pytest.mark.parametrize("method, fragment", [
    ('steps = "match:nobody"', "not a method"),
    ('steps = "match:ce"\n[[method]]\nname = "x"\nloss = "ce"\nsteps = "match:m"', "trains on its own"),
    ('loss_from = "method:ce"', "learns no loss"),
    ('loss_from = "method:elsewhere/ce"', "setting"),
    ('loss_from = "method:ce"\nadapt = true', "drop adapt"),
])
def test_bad_links_are_one_line_errors(tmp_path, method: str, fragment: str) -> None:
    path = tmp_path / "study.toml"
    path.write_text('[study]\ndataset = "digits"\nseeds = [0]\n[[method]]\nname = "ce"\nloss = "ce"\n'
                    f'[[method]]\nname = "m"\n{method}\n')
    with pytest.raises(StudyError, match=fragment):
        load_study(path)


@pytest.mark.slow
def test_an_approx_source_is_the_sources_export_approx_closed_form(tmp_path) -> None:
    from toolkit.analysis.export import export_loss

    path = tmp_path / "study.toml"
    path.write_text(STUDY.split("[[setting]]")[0] + 'model_options = { hidden = [8] }\n[[method]]\nname = "ce"\nloss = "ce"\n[[method]]\nname = "adalfl"\n'
                    'loss = "adalfl"\n[[method]]\nname = "approx"\nloss_from = "method:adalfl:approx"\n')
    report = study_command(path, tmp_path / "out", progress=False)
    rows = {r["method"]: r for r in report["rows"]}
    source = _selection_run(tmp_path / "out", "narrow", "adalfl")
    expected, _ = export_loss(str(source), fmt="json", approx=True)
    saved = Path(rows["approx"]["loss_source"]["file"])
    assert json.loads(saved.read_text()) == json.loads(expected) and rows["approx"]["loss_source"]["approx"]
    assert all(_results(r)["config"]["loss_from"] == str(saved) for r in rows["approx"]["runs"])
    assert rows["approx"]["n"] == 2 and "approx" in (tmp_path / "out" / "report.md").read_text()
