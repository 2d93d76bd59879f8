"""Putting the method together: the options (declared once in ``TrainConfig``), the training loop
behind ``lfl train``, run directories and their logs, seed sweeps, declared studies (``lfl study``,
local or Ray) and step benchmarks (``lfl bench``).

The names below load their module on first use, so importing the package stays cheap."""
from __future__ import annotations

from toolkit._faces import lazy_names

_WHERE = {
    "TrainConfig": "config",
    "resolve_config": "config",
    "read_config_file": "config",
    "PRESETS": "config",
    "lr_at": "config",
    "train": "run",
    "make_loss": "loss_sources",
    "checkpoint_options": "checkpoints",
    "load_run_dataset": "run",
    "RunDirectory": "run_directory",
    "RunWriter": "writer",
    "terminate_as_interrupt": "signals",
    "RunLog": "log",
    "read_metrics_csv": "log",
    "run_seeds": "sweep",
    "load_study": "study_spec",
    "run_study": "study",
    "study_command": "study_report",
    "benchmark_steps": "bench",
    "benchmark_all": "bench",
    "benchmark_floor": "bench_floor",
    "count_ops": "bench_floor",
    "floor_all": "bench_floor",
    "fd_error_table": "fd_error",
}
__getattr__, _lazy_dir, _lazy_all = lazy_names(__name__, _WHERE)

from toolkit.errors import ConfigError  # noqa: E402 - defined once in toolkit.errors; here for compatibility

__all__ = sorted([*_lazy_all, "ConfigError"])


def __dir__() -> list[str]:
    return __all__
