"""lfl study: a choice at a grid's edge is flagged, and extend_edges extends the grid geometrically."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.runs.study_edges import extend_grid, grid_edges, next_value
from toolkit.runs.study_report import study_command
from toolkit.runs.study_spec import StudyError, load_study


def test_next_value_continues_the_declared_ratio_at_the_declared_precision() -> None:
    declared = [0.01, 0.03, 0.1]
    grid = list(declared)
    for expected in (0.3, 1.0, 3.0):
        grid.append(next_value(declared, grid, "upper"))
        assert grid[-1] == pytest.approx(expected)
    assert next_value(declared, declared, "lower") == pytest.approx(0.003)
    assert next_value([16, 32], [16, 32], "upper") == 64 and next_value([16, 32], [16, 32], "lower") == 8
    assert next_value([0.0, 0.1], [0.0, 0.1], "upper") is None  # no geometric continuation from 0
    assert next_value([1, 2], [1], "lower") is None  # round(0.5) would be 0


def test_grid_edges_names_the_option_and_the_end() -> None:
    grid = {"lr": [0.1, 0.01, 0.03], "momentum": [0.0, 0.5, 0.9], "nesterov": [False, True], "batch_size": [64]}
    chosen = {"lr": 0.1, "momentum": 0.5, "nesterov": True, "batch_size": 64}
    assert grid_edges(grid, chosen) == [{"option": "lr", "end": "upper", "value": 0.1}]
    assert grid_edges(grid, {**chosen, "lr": 0.01, "momentum": 0.0}) == [
        {"option": "lr", "end": "lower", "value": 0.01}, {"option": "momentum", "end": "lower", "value": 0.0}]


def test_an_extension_stops_where_the_options_check_refuses(tmp_path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('[study]\ndataset = "digits"\nseeds = [0]\n[[method]]\nname = "m"\nmomentum = [0.5, 0.9]\n'
                    'lr = [0.01, 0.1]\n')
    group = load_study(path).groups[0]
    grid, notes = {k: list(v) for k, v in group.grid.items()}, {}
    edges = [{"option": "momentum", "end": "upper", "value": 0.9}, {"option": "lr", "end": "upper", "value": 0.1}]
    new = extend_grid(group.grid, grid, list(group.points), edges, notes)
    assert notes[("momentum", "upper")]["added"] == [] and "refused" in notes[("momentum", "upper")]["stopped"]
    assert notes[("lr", "upper")]["added"] == [1.0] and grid["lr"] == [0.01, 0.1, 1.0]
    assert sorted((p.values["momentum"], p.values["lr"]) for p in new) == [(0.5, 1.0), (0.9, 1.0)]
    assert all(p.config.lr == p.values["lr"] and p.config.momentum == p.values["momentum"] for p in new)


STUDY = """
[study]
dataset = "digits"
model = "mlp"
model_options = { hidden = [16] }
seeds = [0]
steps = 20
batch_size = 64
valid_fraction = 0.5           # a selection part of ~600 samples: errors fine enough to fall with every lr
selection_fraction = 0.9
log_every = 10
checkpoint_every = 0
device = "cpu"
extend_edges = EXTEND
max_extensions = 2

[[method]]
name = "ce"
loss = "ce"
lr = [0.001, 0.002]
"""


@pytest.mark.slow
@pytest.mark.parametrize("extend", [False, True])
def test_a_choice_at_the_top_of_a_monotone_grid_is_flagged_and_extended_until_the_limit(tmp_path, extend) -> None:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace("EXTEND", str(extend).lower()))
    report = study_command(path, tmp_path / "out", progress=False)
    row = report["rows"][0]
    points = row["selection"]["points"]
    valid = {p["lr"]: json.loads((Path(p["run"]) / "results.json").read_text())["valid_error"] for p in points}
    lrs = sorted(valid)
    assert all(valid[a] > valid[b] for a, b in zip(lrs, lrs[1:]))  # monotone: the top is always best
    assert row["edges"] == [{"option": "lr", "end": "upper", "value": max(lrs)}] and row["lr"] == max(lrs)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "the upper end of its grid" in markdown
    if not extend:
        assert lrs == [0.001, 0.002] and "extensions" not in row
        return
    assert lrs == [0.001, 0.002, 0.004, 0.008]  # two rounds of x2, then max_extensions stops it
    assert row["declared_grid"] == {"lr": [0.001, 0.002]} and row["grid"] == {"lr": [0.001, 0.002, 0.004, 0.008]}
    assert row["extensions"] == [{"option": "lr", "end": "upper", "added": [0.004, 0.008],
                                  "stopped": "max_extensions reached (2 rounds)"}]
    assert "extended at its upper end by 0.004, 0.008" in markdown


@pytest.mark.parametrize("text, fragment", [("extend_edges = 1", "true or false"),
                                            ("max_extensions = -1", "integer >= 0")])
def test_bad_edge_options_are_one_line_errors(tmp_path, text, fragment) -> None:
    path = tmp_path / "study.toml"
    path.write_text(f'[study]\ndataset = "digits"\nseeds = [0]\n{text}\n[[method]]\nname = "m"\n')
    with pytest.raises(StudyError, match=fragment):
        load_study(path)
