"""--overwrite removes only what this toolkit wrote, after checking each file is what its name claims;
a sweep's summary.json follows the same rule. Nothing a user put in --out is ever deleted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_lfl
from toolkit.errors import ConfigError
from toolkit.runs.run_directory import RunDirectory, claim_summary, written_by_us

TRAIN = ("train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[8]", "--steps", "4",
         "--batch-size", "32", "--log-every", "2", "--quiet", "--device", "cpu")


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _fake_run(path: Path, **extra: str | None) -> None:
    """The files a run leaves (in their formats), plus ``extra`` name → text (None: a directory)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"status": "finished", "config": {}}))
    (path / "history.jsonl").write_text(json.dumps({"phase": "train", "step": 1}) + "\n")
    (path / "metrics.csv").write_text("phase,step,name,value\ntrain,1,task_loss,0.5\n")
    for name, text in extra.items():
        if text is None:
            (path / name).mkdir()
        else:
            (path / name).write_text(text)


def test_the_reported_case_keeps_a_users_tensorboard_tree(tmp_path):
    """mkdir -p d/tensorboard/x && echo keep > d/tensorboard/x/f && lfl train ... --out d --overwrite"""
    (tmp_path / "d" / "tensorboard" / "x").mkdir(parents=True)
    (tmp_path / "d" / "tensorboard" / "x" / "f").write_text("keep\n")
    before = _tree(tmp_path / "d")
    result = run_lfl(*TRAIN, "--out", tmp_path / "d", "--overwrite")
    assert result.returncode == 2 and "tensorboard" in result.stderr and "nothing was removed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _tree(tmp_path / "d") == before


@pytest.mark.parametrize("name, text", [
    ("results.json", "my own notes\n"),                       # not JSON
    ("results.json", json.dumps([1, 2, 3])),                  # JSON, not a run's object
    ("loss.json", json.dumps({"note": "mine"})),              # an object without a loss's kind
    ("history.jsonl", "line one\nline two\n"),
    ("metrics.csv", "a,b,c\n1,2,3\n"),
    ("checkpoint.pt", "not an archive"),
    ("checkpoint.pt", None),                                  # a directory named checkpoint.pt
])
def test_a_file_that_only_bears_a_run_files_name_is_never_removed(tmp_path, name, text):
    run = tmp_path / "run"
    _fake_run(run)
    if text is None:
        (run / name).mkdir()
        (run / name / "inside").write_text("keep")
    else:
        (run / name).write_text(text)
    before = _tree(run)
    with pytest.raises(ConfigError, match=f"{name}.*did not write.*nothing was removed"):
        with RunDirectory(run, overwrite=True):
            pass
    assert _tree(run) == before


def test_overwrite_refuses_a_directory_that_holds_other_files_besides_a_run(tmp_path):
    """--out . --overwrite in a project folder: the run's files would go, the user's stay; refused with
    the list instead, so that nothing is removed at all."""
    _fake_run(tmp_path, **{"paper.tex": "mine", "data": None})
    before = _tree(tmp_path)
    result = run_lfl(*TRAIN, "--out", ".", "--overwrite", cwd=tmp_path)
    assert result.returncode == 2 and "besides a run (data, paper.tex)" in result.stderr
    assert _tree(tmp_path) == before


def test_overwrite_replaces_a_run_the_toolkit_wrote_and_only_that(tmp_path):
    out = tmp_path / "run"
    assert run_lfl(*TRAIN, "--out", out, "--tensorboard").returncode == 0
    written = {p.name for p in out.iterdir()}
    assert {"results.json", "history.jsonl", "metrics.csv", "loss.json", "tensorboard"} <= written
    assert all(written_by_us(out / name) for name in written)
    assert run_lfl(*TRAIN, "--out", out, "--overwrite", "--lr", "0.05").returncode == 0
    assert json.loads((out / "results.json").read_text())["config"]["lr"] == 0.05
    assert not (out / "tensorboard").exists()  # the old run's event files went with it


def test_resume_with_tensorboard_rebuilds_only_event_files(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, tensorboard=None)
    (out / "tensorboard" / "mine.txt").write_text("keep")
    from toolkit.runs.log import RunLog

    log = RunLog(out, tensorboard=True)
    with pytest.raises(ConfigError, match="tensorboard.*did not write"):
        log.truncate_after(0, "train")
    assert (out / "tensorboard" / "mine.txt").read_text() == "keep"


def test_a_sweep_summary_is_not_replaced_without_a_flag(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [], "config": {}}))
    with pytest.raises(ConfigError, match="summary.json already exists: add --resume .* --overwrite"):
        claim_summary(tmp_path, resume=False, overwrite=False)
    claim_summary(tmp_path, resume=False, overwrite=True)  # ours: may be replaced
    (tmp_path / "summary.json").write_text("my summary of the week\n")
    with pytest.raises(ConfigError, match="not a summary this toolkit wrote"):
        claim_summary(tmp_path, resume=True, overwrite=False)


def test_lfl_train_seeds_keeps_an_existing_summary(tmp_path):
    (tmp_path / "summary.json").write_text("keep\n")
    result = run_lfl(*TRAIN, "--seeds", "0", "--out", tmp_path)
    assert result.returncode == 2 and "summary.json already exists" in result.stderr
    assert (tmp_path / "summary.json").read_text() == "keep\n"
    assert not (tmp_path / "seed-0").exists()
