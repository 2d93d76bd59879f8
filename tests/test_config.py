"""One declaration of every option: the command line, presets, config files and the API agree."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from toolkit.errors import ConfigError
from toolkit.runs.config import (OPTION_NAMES, PRESETS, TrainConfig, lr_at, read_config_file,
                            resolve_config)


def test_every_option_has_a_command_line_flag_with_its_help():
    from cli import train

    params = {p.name: p for p in train.params}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in params, f.name
        assert f.metadata["help"] and params[f.name].help.startswith(f.metadata["help"])
        if f.metadata.get("choices"):
            assert list(params[f.name].type.choices) == list(f.metadata["choices"])
    assert set(OPTION_NAMES) <= set(params)


def test_layers_defaults_preset_file_and_explicit_options(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "paper"\nonline-meta-lr = 0.002\nsteps = 7\nmodel-option = ["hidden=[16]"]\n')
    config = resolve_config({"steps": 9}, config_file=path)
    assert config.loss_scale == "free" and config.descent_guard is False  # the file's preset
    assert config.online_meta_lr == 0.002  # the file over its own preset
    assert config.steps == 9  # explicit over the file
    assert config.model_options == {"hidden": (16,)}
    assert resolve_config(preset="paper") == TrainConfig(**PRESETS["paper"])
    assert resolve_config({"descent_guard": True}, preset="paper").descent_guard is True


def test_yaml_and_toml_files_resolve_alike(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "c.toml").write_text('loss = "adalfl"\nmilestones = [10, 20]\nlr = 0.1\n')
    (tmp_path / "c.yaml").write_text("loss: adalfl\nmilestones: '10,20'\nlr: 0.1\n")
    assert read_config_file(tmp_path / "c.toml") == read_config_file(tmp_path / "c.yaml")


@pytest.mark.parametrize("text, fragment", [
    ("steps = 5.7\n", "--steps must be an integer"),
    ("nesterov = 1\n", "--nesterov must be true or false"),
    ("lossy = 1\n", "unknown option 'lossy'"),
    ('preset = "fast"\n', "unknown preset 'fast'"),
    ('optimizer = "lion"\n', "unknown --optimizer 'lion'"),
    ("steps = {a = 1}\n", "must be a value, not a table"),
    ("= broken", "cannot parse"),
])
def test_bad_config_files_name_the_option_and_the_file(tmp_path, text, fragment):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        resolve_config(config_file=path)


def test_cosine_schedule_equals_torch_cosine_annealing():
    config = TrainConfig(lr=0.1, steps=40, schedule="cosine")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    for step in range(40):
        assert lr_at(config, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        schedule.step()
    with pytest.raises(ConfigError, match="--milestones belong to --schedule multistep"):
        TrainConfig(schedule="cosine", milestones=(10,))
