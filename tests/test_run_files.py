"""The run directory's layout (toolkit.layout): one JSON-lines policy for every reader, one set of file names."""
from __future__ import annotations

import json

import pytest

from toolkit.analysis.rundir import AnalysisError, read_run
from toolkit.layout import HISTORY, RUN_OUTPUTS, JsonLinesError, read_jsonl
from toolkit.errors import ConfigError
from toolkit.runs.log import History
from toolkit.runs.run_directory import RUN_OUTPUTS as WRITER_OUTPUTS
from toolkit.runtime import seed_stream


def test_a_torn_last_line_is_skipped_by_every_reader(tmp_path):
    path = tmp_path / HISTORY
    path.write_text('{"phase": "train", "step": 1}\n\n{"phase": "train", "step": 2}\n{"phase": "tr')
    expected = [{"phase": "train", "step": 1}, {"phase": "train", "step": 2}]
    assert read_jsonl(path) == expected
    assert History(path).records() == expected
    assert read_run(tmp_path).history == expected


@pytest.mark.parametrize("bad", ['{"phase": "tr', "[1, 2]", "NaN-ish"])
def test_a_damaged_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path, bad):
    path = tmp_path / HISTORY
    path.write_text('{"step": 1}\n' + bad + '\n{"step": 3}\n')
    with pytest.raises(JsonLinesError, match=rf"{path} line 2 is not a JSON object"):
        read_jsonl(path)
    with pytest.raises(ConfigError, match=r"line 2"):
        History(path).records()
    with pytest.raises(AnalysisError, match=r"line 2"):
        read_run(tmp_path)


def test_the_writer_and_the_readers_share_the_names():
    assert WRITER_OUTPUTS is RUN_OUTPUTS


def test_the_named_seed_streams_keep_the_numbers_runs_used():
    assert seed_stream(5, "train_batches") == 5
    assert seed_stream(5, "meta_batches") == 5 + 7919
    assert seed_stream(5, "train_batches", 3) == 5 * 1_000_003 + 3
    assert seed_stream(5, "meta_batches", 3) == (5 + 7919) * 1_000_003 + 3
    with pytest.raises(ValueError, match="unknown seed stream"):
        seed_stream(5, "batches")


def test_json_lines_are_strict_json(tmp_path):
    path = tmp_path / HISTORY
    History(path).append({"step": 1, "x": float("nan")})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"step": 1, "x": None}
