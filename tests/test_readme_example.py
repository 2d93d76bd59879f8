"""The README's Python example runs as written and prints a loss and its formula."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

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


def test_readme_training_loop_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README lost its training-loop example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[1], str(README), "exec"), {})
    record = out.getvalue()
    assert "meta_loss" in record and "'skipped_base': 0" in record and "'step': 20" in record
