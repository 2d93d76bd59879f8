"""The notebooks run top to bottom (tiny budgets), as a user would run them.

Each notebook is executed in a fresh Jupyter kernel with nbclient (the engine under
nbmake; ``pytest --nbmake notebooks/`` runs them the same way by hand). The kernel is
the ``python3`` kernel of this interpreter's environment (ipykernel installs it in
``sys.prefix``). Budgets come from environment variables the notebooks read.
"""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
BUDGET = {"LFL_NOTEBOOK_STEPS": "30", "LFL_NOTEBOOK_INIT_STEPS": "5", "LFL_NOTEBOOK_SEEDS": "0,1",
          "OMP_NUM_THREADS": "1"}


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:3] == ["01_quickstart.ipynb", "02_analysing_a_learned_loss.ipynb",
                                               "03_comparing_methods.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
@pytest.mark.slow
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    for key, value in {**BUDGET, "LFL_NOTEBOOK_OUT": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit notebooks without outputs"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the figures should display inline"
