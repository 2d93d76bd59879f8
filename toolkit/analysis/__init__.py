"""Reading what was learned: exact and approximate closed forms, exports, run directories read
back, comparisons with paired tests, and plots.

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from toolkit._faces import lazy_names

_WHERE = {
    "exact_formula": "fit",
    "approximate_loss": "fit",
    "taylor_expansion": "fit",
    "export_loss": "export",
    "AnalysisError": "rundir",
    "read_run": "rundir",
    "find_runs": "rundir",
    "compare_runs": "compare",
    "format_comparison": "compare",
    "summarise_values": "statistics",
    "paired_tests": "statistics",
    "plot_learning_curves": "plots",
    "plot_cost_quality": "plots",
    "plot_loss_evolution": "plots",
    "plot_loss_shapes": "plots",
    "plot_loss_surface": "plots",
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
