"""The README's Python example runs as written and prints a loss and its formula."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_prints_the_formula():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its Python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), {})
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("tensor(") and "grad_fn" in printed[0]
    assert "y_pred" in printed[1] and "y" in printed[1].replace("y_pred", "")


def _block(containing: str) -> str:
    """The README's Python block that contains ``containing``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if containing in b]
    assert blocks, f"the README lost its Python example with {containing!r}"
    return blocks[0]


def test_readme_training_loop_example_runs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_block("OnlineLossLearner("), str(README), "exec"), {})
    record = out.getvalue()
    assert "meta_loss" in record and "'skipped_base': 0" in record and "'step': 20" in record


def test_readme_criterion_example_is_torchs_cross_entropy():
    import torch

    import losses
    logits, labels = torch.randn(5, 4, dtype=torch.float64), torch.tensor([3, 1, 0, 1, 2])
    namespace = {"losses": losses, "logits": logits, "labels": labels}
    exec(compile(_block("label_smoothing"), str(README), "exec"), namespace)
    torch.testing.assert_close(namespace["loss"], torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels))


@pytest.mark.slow
def test_readme_own_loop_with_torch_optim_autocast_and_run_writer(tmp_path, monkeypatch):
    """The README's own loop: two parameter groups, a cosine schedule reaching lr 0, clipping, a dict-in /
    dict-out model under bfloat16 autocast, and RunWriter's directory, which lfl export and plot read."""
    import json

    from helpers import run_lfl

    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_block("RunWriter("), str(README), "exec"), {"__name__": "__main__"})
    assert out.getvalue().split() == ["0.0", "20"]
    results = json.loads((tmp_path / "runs" / "own-loop" / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == 20 and 0 <= results["test_error"] <= 1
    assert run_lfl("export", tmp_path / "runs" / "own-loop").returncode == 0
    assert run_lfl("plot", tmp_path / "runs" / "own-loop", "--out", tmp_path / "figures").returncode == 0
