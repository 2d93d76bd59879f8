"""Method comparison across seeds (toolkit.analysis.compare): summaries, paired tests against scipy, formats."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from helpers import write_run
from scipy import stats

from toolkit.analysis.compare import compare_runs, format_comparison
from toolkit.analysis.rundir import AnalysisError, find_runs

CE = [0.120, 0.118, 0.125, 0.121, 0.119, 0.123]
ADALFL = [0.110, 0.112, 0.115, 0.117, 0.109, 0.116]


def _write(path, *, loss, seed, error, dataset="digits", loss_param="mlp", task="classification"):
    write_run(path, loss=loss, seed=seed, error=error, dataset=dataset, task=task, config={"loss_param": loss_param})


@pytest.fixture()
def runs(tmp_path):
    for seed, (ce, adalfl) in enumerate(zip(CE, ADALFL)):
        _write(tmp_path / "ce" / f"seed-{seed}", loss="ce", seed=seed, error=ce)
        _write(tmp_path / "adalfl" / f"seed-{seed}", loss="adalfl", seed=seed, error=adalfl)
    _write(tmp_path / "taylor" / "seed-0", loss="adalfl", loss_param="taylor", seed=0, error=0.2)
    _write(tmp_path / "taylor" / "seed-9", loss="adalfl", loss_param="taylor", seed=9, error=0.3)
    return find_runs([tmp_path])


def test_summaries_and_paired_tests_match_scipy(runs):
    rows = {r.method: r for r in compare_runs(runs)}
    assert list(rows) == ["ce", "adalfl-mlp", "adalfl-taylor"]  # the baseline first
    ce, adalfl, taylor = rows["ce"], rows["adalfl-mlp"], rows["adalfl-taylor"]
    assert ce.n == 6 and ce.mean == pytest.approx(np.mean(CE)) and ce.std == pytest.approx(np.std(CE, ddof=1))
    assert ce.baseline is None and ce.t_p_value is None
    assert adalfl.baseline == "ce" and adalfl.n_pairs == 6
    assert adalfl.mean_difference == pytest.approx(np.mean(np.subtract(ADALFL, CE)))
    assert adalfl.t_p_value == pytest.approx(stats.ttest_rel(ADALFL, CE).pvalue)
    assert adalfl.wilcoxon_p_value == pytest.approx(stats.wilcoxon(ADALFL, CE).pvalue)
    # Only seed 0 pairs with ce: no test possible with one pair.
    assert taylor.n == 2 and taylor.n_pairs == 1 and taylor.t_p_value is None and taylor.wilcoxon_p_value is None


def test_wilcoxon_needs_six_pairs(runs):
    rows = {r.method: r for r in compare_runs([r for r in runs if r.seed != 5])}
    assert rows["adalfl-mlp"].n_pairs == 5
    assert rows["adalfl-mlp"].t_p_value is not None and rows["adalfl-mlp"].wilcoxon_p_value is None


def test_formats(runs):
    rows = compare_runs(runs)
    text = format_comparison(rows, "text")
    assert "digits / mlp" in text and "baseline ce" in text and "adalfl-mlp" in text
    assert f"{np.mean(CE):.4f} ± {np.std(CE, ddof=1):.4f}" in text
    markdown = format_comparison(rows, "markdown").splitlines()
    assert markdown[0].startswith("| dataset | model | method") and markdown[1].startswith("|---|")
    assert len(markdown) == 2 + 3
    records = list(csv.DictReader(io.StringIO(format_comparison(rows, "csv"))))
    assert [r["method"] for r in records] == ["ce", "adalfl-mlp", "adalfl-taylor"]
    assert float(records[1]["t_p_value"]) == pytest.approx(stats.ttest_rel(ADALFL, CE).pvalue)
    with pytest.raises(AnalysisError, match="unknown format"):
        format_comparison(rows, "html")


def test_groups_baselines_and_errors(tmp_path, runs):
    for seed in range(2):
        _write(tmp_path / "reg" / f"mse-{seed}", loss="mse", seed=seed, error=0.5 + seed, dataset="diabetes",
               task="regression")
        _write(tmp_path / "reg" / f"ml3-{seed}", loss="ml3", seed=seed, error=0.4 + seed, dataset="diabetes",
               task="regression")
    rows = compare_runs(find_runs([tmp_path]))
    regression = [r for r in rows if r.dataset == "diabetes"]
    assert [r.method for r in regression] == ["mse", "ml3-mlp"] and regression[1].baseline == "mse"
    assert regression[1].mean_difference == pytest.approx(-0.1)
    explicit = {r.method: r for r in compare_runs(runs, baseline="adalfl-mlp")}
    assert explicit["ce"].baseline == "adalfl-mlp"
    assert all(r.baseline is None for r in compare_runs([r for r in runs if r.method != "ce"]))
    with pytest.raises(AnalysisError, match="baseline 'huber' has no runs"):
        compare_runs(runs, baseline="huber")
    with pytest.raises(AnalysisError, match="no valid_mse"):
        compare_runs(runs, metric="valid_mse")
    with pytest.raises(AnalysisError, match="at least one"):
        compare_runs([])


def _write_config(path, *, loss, seed, error, config, dataset="digits", task="classification"):
    path.mkdir(parents=True)
    results = {"dataset": dataset, "model": "mlp", "loss": loss, "seed": seed, "steps": 10, "task": task,
               "test_error": error, "config": {"loss_param": "mlp", **config}}
    (path / "results.json").write_text(json.dumps(results))


def test_runs_of_one_method_with_different_settings_are_never_pooled(tmp_path):
    from toolkit.analysis.rundir import budget_note

    for seed in range(3):
        _write_config(tmp_path / "a" / f"seed-{seed}", loss="ce", seed=seed, error=0.1 + seed / 100,
                      config={"lr": 0.01, "steps": 10, "seed": seed, "device": "cpu"})
        _write_config(tmp_path / "b" / f"seed-{seed}", loss="ce", seed=seed, error=0.2 + seed / 100,
                      config={"lr": 0.1, "steps": 10, "seed": seed, "device": "cuda"})
    runs = find_runs([tmp_path])
    rows = {r.method: r for r in compare_runs(runs, baseline="ce [lr=0.01]")}
    assert set(rows) == {"ce [lr=0.01]", "ce [lr=0.1]"}  # seed and device do not split a method
    assert rows["ce [lr=0.1]"].n == 3 and rows["ce [lr=0.1]"].mean == pytest.approx(0.21)
    with pytest.raises(AnalysisError, match="different settings.*--baseline"):
        compare_runs(runs)
    note = budget_note(runs)
    assert note.startswith("same for every run: steps 10") and "differs: lr (" in note


def test_plots_refuse_runs_of_different_datasets(tmp_path):
    from toolkit.analysis.plots import plot_final_errors

    _write(tmp_path / "a", loss="ce", seed=0, error=0.1)
    _write(tmp_path / "b", loss="mse", seed=0, error=0.5, dataset="diabetes", task="regression")
    with pytest.raises(AnalysisError, match=r"different datasets or tasks \(diabetes \(regression\), digits"):
        plot_final_errors(find_runs([tmp_path]))
