"""Save / load, dicts for checkpoints, config round trips and the name registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_losses_cases import CASE_IDS, F64, element_inputs, make_loss

from losses import (
    LOSS_NAMES,
    LossFileError,
    MLPLoss,
    SymbolicLoss,
    build_loss,
    load_loss,
    loss_from_dict,
    loss_to_dict,
    save_loss,
)


def _perturb(loss: torch.nn.Module) -> None:
    """Move every parameter away from its initial value, as training would."""
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(torch.linspace(-0.01, 0.02, p.numel(), dtype=p.dtype).reshape(p.shape))


@pytest.mark.parametrize("case", CASE_IDS)
def test_save_and_load_give_bit_identical_outputs(case: str, tmp_path: Path) -> None:
    loss = make_loss(case)
    _perturb(loss)
    path = save_loss(loss, tmp_path / "loss.json")
    loaded = load_loss(path)
    assert type(loaded) is type(loss) and loaded.config() == loss.config()
    for name, value in loss.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value) and loaded.state_dict()[name].dtype == value.dtype
    y_pred, y_true = element_inputs(loss.task)
    assert torch.equal(loaded.elementwise(y_pred, y_true), loss.elementwise(y_pred, y_true))
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["kind"] == loss.kind
    assert data["formula"] == str(loss.to_sympy())


def test_float32_losses_round_trip_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loss = MLPLoss(hidden=(3,))
    loaded = load_loss(save_loss(loss, tmp_path / "loss.json"))
    assert loaded.layers[0].weight.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(loss.parameters(), loaded.parameters()))


def test_dict_is_json_serialisable_and_can_skip_the_formula() -> None:
    loss = make_loss("taylorglo")
    data = loss_to_dict(loss, formula=False)
    assert "formula" not in data
    rebuilt = loss_from_dict(json.loads(json.dumps(data)))
    assert torch.equal(rebuilt.coefficients, loss.coefficients)


@pytest.mark.parametrize("case", CASE_IDS)
def test_from_config_rebuilds_the_same_architecture(case: str) -> None:
    loss = make_loss(case)
    rebuilt = type(loss).from_config(json.loads(json.dumps(loss.config())))
    assert rebuilt.config() == loss.config()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in loss.parameters()]


def test_symbolic_config_can_be_written_by_hand() -> None:
    loss = SymbolicLoss.from_config({"expression": "0.5*(y_pred - y)**2", "task": "regression"})
    assert loss.task == "regression" and loss.constants.tolist() == [0.5]
    with pytest.raises(ValueError, match="exactly one of"):
        SymbolicLoss.from_config({"task": "regression"})


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format_version": 1}', "missing keys"),
])
def test_malformed_files_raise_loss_file_error_naming_the_file(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LossFileError, match=message) as error:
        load_loss(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=2), "format_version 2 is not supported.*re-save"),
    (lambda d: d.update(kind="gaussian"), "unknown kind 'gaussian'; known kinds: cross_entropy"),
    (lambda d: d["config"].update(hidden=[-1]), "invalid config for MLPLoss"),
    (lambda d: d["config"].update(colour="red"), "unknown MLPLoss config keys"),
    (lambda d: d["parameters"].pop("layers.0.weight"), "do not match"),
    (lambda d: d["parameters"].update({"layers.0.weight": [[1.0, 2.0]]}), "has shape"),
    (lambda d: d["parameters"].update({"layers.0.weight": "oops"}), "not a nested list of numbers"),
    (lambda d: d.update(dtype="int8"), "not a torch floating-point dtype"),
])
def test_wrong_contents_raise_loss_file_error(edit, message: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = loss_to_dict(MLPLoss(hidden=(2,)), formula=False)
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LossFileError, match=message):
        load_loss(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_loss(tmp_path / "absent.json")


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "loss.json"
    path.write_text("previous")
    save_loss(make_loss("ce"), path)
    assert json.loads(path.read_text())["kind"] == "cross_entropy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.json"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_build_loss_knows_every_name(name: str) -> None:
    options = {"expression": "(y_pred - y)**2"} if name == "symbolic" else {}
    loss = build_loss(name, **options)
    assert loss.task == ("regression" if name == "mse" else "classification")


def test_build_loss_presets_and_options() -> None:
    assert build_loss("ml3").activation == "relu" and build_loss("ml3").output == "softplus"
    assert sum(p.numel() for p in build_loss("taylorglo").parameters()) == 8
    assert build_loss("mlp", hidden=(3,), task="regression").hidden == (3,)
    assert LOSS_NAMES == ("ce", "mse", "mlp", "ml3", "taylor", "taylorglo", "symbolic", "gce", "focal")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: ce, mse, mlp, ml3, taylor"):
        build_loss("hinge")
    with pytest.raises(ValueError, match="needs expression="):
        build_loss("symbolic")


def test_loaded_symbolic_loss_from_a_network_keeps_its_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    symbolic = SymbolicLoss(MLPLoss(hidden=(4, 3), dtype=F64).to_sympy(), dtype=F64)
    _perturb(symbolic)
    loaded = load_loss(save_loss(symbolic, tmp_path / "symbolic.json"))
    y_pred, y_true = element_inputs("classification")
    assert torch.equal(loaded.elementwise(y_pred, y_true), symbolic.elementwise(y_pred, y_true))
