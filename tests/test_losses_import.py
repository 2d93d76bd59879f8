"""The package boundary: public names, and that `losses` stays a light leaf package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import losses

PUBLIC = [
    "LearnedLoss", "MLPLoss", "TaylorLoss", "CrossEntropyLoss", "SquaredErrorLoss", "SymbolicLoss",
    "GradientScaledLoss", "GeneralizedCrossEntropyLoss", "FocalLoss",
    "Y_PRED", "Y_TRUE", "SYMPY_TO_TORCH", "UnsupportedFunctionError", "save_loss", "load_loss",
    "loss_to_dict", "loss_from_dict", "LossFileError", "build_loss", "LOSS_NAMES",
    "prediction_transform", "encode_targets", "task_loss", "task_loss_module", "task_gradient",
    "parse_formula", "FormulaError", "UserError",
]


def test_public_names_are_pinned() -> None:
    assert sorted(losses.__all__) == sorted(PUBLIC)
    assert all(hasattr(losses, name) for name in PUBLIC)
    assert losses.__doc__.startswith("Learned loss functions as torch modules with exact SymPy export.")


def test_symbolic_table_is_one_shared_dict() -> None:
    import losses.symbolic

    assert losses.symbolic.SYMPY_TO_TORCH is losses.SYMPY_TO_TORCH


def test_losses_never_imports_toolkit_or_heavy_plotting_libraries() -> None:
    code = (
        "import losses, sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('toolkit', 'matplotlib', 'seaborn', 'scipy')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
