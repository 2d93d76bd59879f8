"""Take a learned loss home: what `lfl export` writes trains again as the run's loss did.

A gradient-normalised loss (``GradientScaledLoss``, the default of ``--loss adalfl``) exports
its *shape*; every format carries the normalisation too (JSON: the wrapper itself; text: a
header line), and ``--loss-from`` rebuilds it. References: the saved loss itself (float64,
outputs and gradients), PyTorch's cross-entropy, and the decision table of ``--loss-scale``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import losses
from helpers import run_in_process
from losses.scale_header import Normalisation, split_header
from toolkit.analysis.export import export_loss
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig
from toolkit.runs.loss_sources import reused_loss, scaled_as_asked


def _normalised(shape: losses.LearnedLoss, *, max_scale: float = 4.0, logit: float = 0.37) -> losses.GradientScaledLoss:
    loss = losses.GradientScaledLoss(shape, max_scale=max_scale).double()
    with torch.no_grad():
        loss.scale_logit.fill_(logit)
    return loss


SHAPES = {
    "mlp": lambda: losses.MLPLoss(hidden=(5, 4)),
    "taylor": lambda: losses.TaylorLoss.taylorglo(),
}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(12, 6, generator=g, dtype=torch.float64) * 2, torch.randint(0, 6, (12,), generator=g)


def _value_and_gradient(loss: torch.nn.Module, outputs: torch.Tensor, labels: torch.Tensor):
    f = outputs.clone().requires_grad_(True)
    value = loss(f, labels)
    return value.detach(), torch.autograd.grad(value, f)[0]


def _exported(loss: losses.LearnedLoss, tmp_path: Path, fmt: str) -> str:
    source = losses.save_loss(loss, tmp_path / "run-loss.json")
    return export_loss(str(source), fmt=fmt)[0]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", SHAPES)
def test_exact_json_export_loads_as_the_same_criterion(name, tmp_path):
    loss = _normalised(SHAPES[name]())
    loaded = losses.loss_from_dict(json.loads(_exported(loss, tmp_path, "json")))
    assert isinstance(loaded, losses.GradientScaledLoss) and loaded.max_scale == 4.0
    assert loaded.scale_logit.dtype == torch.float64
    outputs, labels = _batch()
    value, gradient = _value_and_gradient(loaded, outputs, labels)
    expected_value, expected_gradient = _value_and_gradient(loss, outputs, labels)
    torch.testing.assert_close(value, expected_value, rtol=0, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=0)


@pytest.mark.parametrize("name", SHAPES)
def test_formula_text_export_trains_with_the_same_gradients_through_loss_from(name, tmp_path):
    """The SymPy text (17 digits) under its header: --loss-from rebuilds the normalisation."""
    loss = _normalised(SHAPES[name]())
    path = tmp_path / "loss.txt"
    path.write_text(_exported(loss, tmp_path, "sympy"))
    rebuilt = reused_loss(str(path), "classification")
    assert isinstance(rebuilt, losses.GradientScaledLoss) and isinstance(rebuilt.shape, losses.SymbolicLoss)
    assert rebuilt.max_scale == loss.max_scale and rebuilt.scale_logit.dtype == torch.float64
    assert float(rebuilt.scale_logit.detach()) == float(loss.scale_logit.detach())
    outputs, labels = _batch(1)
    value, gradient = _value_and_gradient(rebuilt, outputs, labels)
    expected_value, expected_gradient = _value_and_gradient(loss, outputs, labels)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-15)
    # the step's size is the scale times cross-entropy's gradient norm (PyTorch's own function)
    reference = _value_and_gradient(F.cross_entropy, outputs, labels)[1]
    assert float(gradient.norm() / reference.norm()) == pytest.approx(4.0 ** math.tanh(0.37), rel=1e-10)


@pytest.mark.parametrize("fmt", ["sympy", "latex", "python"])
def test_text_formats_state_the_normalisation_and_a_free_loss_has_no_header(fmt, tmp_path):
    comment = "%" if fmt == "latex" else "#"
    header = _exported(_normalised(SHAPES["taylor"]()), tmp_path, fmt).splitlines()[0]
    assert header.startswith(f"{comment} normalised:") and "train with --loss-scale normalised" in header
    assert f"steps of {4.0 ** math.tanh(0.37):.4g}x the task loss's gradient norm" in header
    assert "normalised" not in _exported(SHAPES["taylor"]().double(), tmp_path, fmt)


def test_python_export_runs_and_computes_the_shape(tmp_path):
    loss = _normalised(SHAPES["mlp"]())
    namespace: dict = {}
    exec(_exported(loss, tmp_path, "python"), namespace)
    p, y = torch.rand(9, dtype=torch.float64), (torch.arange(9) % 2).double()
    torch.testing.assert_close(namespace["loss"](p, y), loss.shape.elementwise(p, y).detach(), rtol=1e-12, atol=0)


def test_taylor_json_export_keeps_the_runs_normalisation(tmp_path):
    loss = _normalised(SHAPES["mlp"](), max_scale=2.0, logit=-0.8)
    source = losses.save_loss(loss, tmp_path / "loss.json")
    data = json.loads(export_loss(str(source), fmt="json", taylor_order=2)[0])
    assert data["kind"] == "gradient_scaled" and data["taylor"]["order"] == 2
    loaded = losses.loss_from_dict(data)
    assert isinstance(loaded.shape, losses.SymbolicLoss) and loaded.max_scale == 2.0
    assert float(loaded.scale_logit.detach()) == -0.8


def test_a_bare_ce_formula_normalised_is_pytorchs_cross_entropy():
    """The trap of a light formula (C times weaker than --loss ce) is gone with --loss-scale normalised."""
    config = TrainConfig(dataset="digits", loss_from="-y*log(y_pred)", loss_scale="normalised")
    loss = scaled_as_asked(reused_loss(config.loss_from, "classification"), config).double()
    raw = reused_loss(config.loss_from, "classification").double()
    outputs, labels = _batch(2)
    reference = _value_and_gradient(F.cross_entropy, outputs, labels)[1]
    torch.testing.assert_close(_value_and_gradient(loss, outputs, labels)[1], reference, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(_value_and_gradient(raw, outputs, labels)[1] * 6, reference, rtol=1e-12, atol=1e-15)


def _config(**options) -> TrainConfig:
    return TrainConfig(dataset="digits", loss_from="loss.json", **options)


def test_loss_scale_with_loss_from_is_applied_as_asked():
    wrapped, raw = _normalised(SHAPES["taylor"]()), SHAPES["taylor"]()
    assert TrainConfig().loss_scale == "normalised" and _config().loss_scale is None
    assert scaled_as_asked(wrapped, _config()) is wrapped and scaled_as_asked(raw, _config()) is raw
    assert scaled_as_asked(wrapped, _config(loss_scale="normalised")) is wrapped
    assert scaled_as_asked(wrapped, _config(loss_scale="free")) is wrapped.shape
    assert scaled_as_asked(raw, _config(loss_scale="free")) is raw
    made = scaled_as_asked(raw, _config(loss_scale="normalised", max_scale=3.0))
    assert isinstance(made, losses.GradientScaledLoss) and made.shape is raw and made.max_scale == 3.0
    assert float(made.scale.detach()) == 1.0


@pytest.mark.parametrize("wrapped, options, match", [
    (True, {"max_scale": 2.0}, r"--max-scale 2 would be ignored: .* carries its own normalisation \(max_scale 4\)"),
    (True, {"max_scale": 2.0, "loss_scale": "free"}, "trained raw"),
    (False, {"max_scale": 2.0}, "add --loss-scale normalised"),
])
def test_an_option_that_would_be_ignored_is_refused(wrapped, options, match):
    loss = _normalised(SHAPES["taylor"]()) if wrapped else SHAPES["taylor"]()
    with pytest.raises(ConfigError, match=match) as error:
        scaled_as_asked(loss, _config(**options))
    assert "\n" not in str(error.value)


def test_lfl_train_refuses_an_ignored_max_scale_in_one_line(tmp_path, capsys):
    path = losses.save_loss(_normalised(SHAPES["taylor"]()), tmp_path / "loss.json")
    code, _, err = run_in_process(["train", "--dataset", "digits", "--model", "logreg", "--steps", "1", "--quiet",
                                   "--loss-from", str(path), "--max-scale", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--max-scale 2 would be ignored" in err, err
    assert not (tmp_path / "r").exists()


def test_adapting_a_normalised_formula_without_constants_is_refused():
    config = TrainConfig(dataset="digits", loss_from="-y*log(y_pred)", loss_scale="normalised", adapt=True)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        scaled_as_asked(reused_loss(config.loss_from, "classification"), config)


HEADER = ("# normalised: a gradient direction; train with --loss-scale normalised (steps of 1x the task loss's "
          "gradient norm; max_scale={}, scale_logit={}, reduction={})")


@pytest.mark.parametrize("text, match", [
    (HEADER.format("nan", 0.0, "mean"), "max_scale must be a finite number >= 1"),
    (HEADER.format(0.5, 0.0, "mean"), "max_scale must be a finite number >= 1"),
    (HEADER.format(2.0, "inf", "mean"), "scale_logit must be finite"),
    (HEADER.format(2.0, "1e", "mean"), "must be numbers"),
    (HEADER.format(2.0, 0.0, "none"), "reduction must be one of mean, sum"),
    ("# normalised: train it normalised please", "must be the header lfl export writes"),
    (HEADER.format(1.0, 0.0, "mean") + "\n" + HEADER.format(1.0, 0.0, "mean"), "more than one"),
])
def test_a_bad_header_is_one_line(text, match):
    with pytest.raises(losses.LossFileError, match=match) as error:
        split_header(text + "\ny_pred - y")
    assert "\n" not in str(error.value)


def test_header_round_trip_and_plain_comments():
    normalisation = Normalisation(max_scale=3.0, scale_logit=-0.123456789012345678)
    assert split_header(f"{normalisation.header()}\n# a note\n(y_pred - y)**2\n") == ("(y_pred - y)**2", normalisation)
    assert split_header("# a note\n-y*log(y_pred)") == ("-y*log(y_pred)", None)


@pytest.mark.parametrize("change, match", [
    (lambda d: d["parameters"].update(scale_logit=float("nan")), "scale_logit nan is not finite"),
    (lambda d: d["config"].update(max_scale=0.5), "max_scale must be a finite number >= 1"),
    (lambda d: d["config"]["shape"].update(kind="nonsense"), "unknown inner loss kind 'nonsense'"),
])
def test_a_bad_normalisation_in_a_loss_file_is_one_line(change, match):
    data = losses.loss_to_dict(_normalised(SHAPES["taylor"]()), formula=False)
    change(data)
    with pytest.raises(losses.LossFileError, match=match) as error:
        losses.loss_from_dict(json.loads(json.dumps(data)))
    assert "\n" not in str(error.value)


def test_readme_criterion_loop_trains_with_an_exported_json(tmp_path, monkeypatch):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "approx.json" in b]
    shape = losses.SymbolicLoss("0.6576*y/(0.08359*y_pred + 1) + 0.60636*(1 - y)/(0.040879*y_pred + 1)",
                                dtype=torch.float64)
    losses.save_loss(Normalisation(max_scale=1.0, scale_logit=0.0).wrap(shape), tmp_path / "approx.json")
    monkeypatch.chdir(tmp_path)
    task_loss = {}
    for steps in (0, 5):  # the same seed: the model before and after the README's five steps
        torch.manual_seed(0)
        namespace: dict = {}
        exec(compile(block.replace("range(5)", f"range({steps})"), "README.md", "exec"), namespace)
        task_loss[steps] = float(F.cross_entropy(namespace["model"](namespace["x"]), namespace["y"]).detach())
    assert isinstance(namespace["criterion"], losses.GradientScaledLoss)
    assert not any(p.requires_grad for p in namespace["criterion"].parameters())
    assert task_loss[5] < task_loss[0]


TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[32]", "--steps", "200",
         "--lr", "0.1", "--batch-size", "64", "--checkpoint-every", "0", "--quiet", "--device", "cpu"]


@pytest.mark.slow
def test_every_export_of_an_adalfl_run_trains_like_the_run(tmp_path, capsys):
    """--loss-from RUN, the exact JSON, --approx and --taylor JSON, and the formula text with
    --loss-scale normalised reach test errors within 0.01 of each other on digits (the formula
    without it, trained raw, does not train)."""
    def lfl(*args) -> str:
        code, out, err = run_in_process([str(a) for a in args], capsys)
        assert code == 0, err
        return out

    run = tmp_path / "run"
    lfl(*TRAIN, "--loss", "adalfl", "--init-steps", "50", "--out", run)
    for name, options in {"exact": [], "approx": ["--approx"], "taylor": ["--taylor", "3"]}.items():
        lfl("export", run, "--format", "json", *options, "-o", tmp_path / f"{name}.json")
    header, formula = lfl("export", run, "--approx").strip().splitlines()
    assert header.startswith("# normalised:")
    routes = {"run": [run], "exact": [tmp_path / "exact.json"], "approx": [tmp_path / "approx.json"],
              "taylor": [tmp_path / "taylor.json"], "text": [formula, "--loss-scale", "normalised"]}
    errors = {}
    for name, source in routes.items():
        lfl(*TRAIN, "--loss-from", *source, "--out", tmp_path / f"from-{name}")
        errors[name] = json.loads((tmp_path / f"from-{name}" / "results.json").read_text())["test_error"]
    assert errors["run"] == errors["exact"]  # one loss, one trajectory
    assert max(errors.values()) - min(errors.values()) <= 0.01, errors
    assert max(errors.values()) < 0.1, errors
    lfl(*TRAIN, "--loss-from", formula, "--out", tmp_path / "raw")  # the shape trained raw: the trap it was
    assert json.loads((tmp_path / "raw" / "results.json").read_text())["test_error"] > 0.3
