"""The public names of every package face, pinned: adding or dropping one is a decision, made here."""
from __future__ import annotations

import importlib

import pytest
from test_losses_import import PUBLIC as LOSSES_PUBLIC

FACES = {
    "losses": LOSSES_PUBLIC,  # pinned once, in tests/test_losses_import.py
    "toolkit.data": [
        "Augmentation", "AugmentedBatches", "DATASET_NAMES", "DataError", "Dataset", "NOISE_KINDS", "Split",
        "apply_regime", "augment_batch", "augmentation_for", "dataset_status", "imbalanced_indices", "load_dataset",
        "load_run_data", "load_search_data", "long_tail_counts", "noisy_labels", "prepare_run_data", "search_view",
        "selection_indices", "split_for_selection"],
    "toolkit.models": [
        "AlexNet", "AllCNNC", "LeNet5", "LogisticRegression", "MLP", "MODEL_NAMES", "ModelError", "PreActResNet",
        "PyramidNet", "ResNet18", "SqueezeNet", "VGG16", "build_model", "model_options"],
    "toolkit.meta": [
        "AdamRule", "ClippedRule", "GroupedRule", "Guard", "GuardCounts", "GuardReport", "Lookahead", "ModelIO",
        "NonFiniteError", "OnlineLossLearner", "OptimizerLink", "RMSpropRule", "Replicas", "SGDRule", "StepRule",
        "SyncBatchNorm", "check_step", "convert_sync_batchnorm",
        "descent_reflection", "from_environment", "frozen_copy", "jacobian_vector_product", "make_rule",
        "meta_gradient", "meta_gradient_fd", "meta_gradient_naive", "offline_initialise", "parameter_reflection", "rule_from_optimizer",
        "search_taylorglo", "taylorglo_loss"],
    "toolkit.runs": [
        "ConfigError", "PRESETS", "RunDirectory", "RunLog", "RunWriter", "TrainConfig", "benchmark_all",
        "benchmark_floor", "benchmark_steps", "checkpoint_options", "count_ops", "fd_error_table", "floor_all",
        "load_run_dataset", "load_study", "lr_at", "make_loss", "read_config_file",
        "read_metrics_csv", "resolve_config", "run_seeds", "run_study", "study_command", "terminate_as_interrupt",
        "train"],
    "toolkit.analysis": [
        "AnalysisError", "approximate_loss", "compare_runs", "exact_formula", "export_loss", "find_runs",
        "format_comparison", "paired_tests", "plot_cost_quality", "plot_learning_curves", "plot_loss_evolution", "plot_loss_shapes", "plot_loss_surface",
        "read_run", "summarise_values", "taylor_expansion"],
    "toolkit.errors": ["ConfigError", "StudyError", "UserError"],
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_each_face_lists_exactly_its_public_names(face: str) -> None:
    module = importlib.import_module(face)
    assert sorted(module.__all__) == sorted(FACES[face])


@pytest.mark.parametrize("face", sorted(FACES))
def test_every_public_name_resolves(face: str) -> None:
    module = importlib.import_module(face)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []


def test_every_user_error_has_one_base_the_command_line_catches() -> None:
    """The command line catches ``UserError`` once; every error a user can fix derives from it, and keeps
    the built-in base it always had, so existing ``except ValueError`` clauses still catch it."""
    import losses
    import toolkit.analysis
    import toolkit.data
    import toolkit.meta
    import toolkit.models
    from toolkit.errors import ConfigError, StudyError, UserError

    assert losses.UserError is UserError
    errors = {losses.LossFileError: ValueError, losses.FormulaError: ValueError, ConfigError: ValueError,
              StudyError: ConfigError, toolkit.data.DataError: Exception, toolkit.models.ModelError: ValueError,
              toolkit.meta.NonFiniteError: RuntimeError, toolkit.analysis.AnalysisError: ValueError}
    for error, builtin in errors.items():
        assert issubclass(error, UserError) and issubclass(error, builtin), error
    from toolkit.runs import ConfigError as from_face
    assert from_face is ConfigError  # one class, whichever way it is imported

