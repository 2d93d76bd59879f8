"""The one declaration of every training option: type, default, choices, help.

:class:`TrainConfig` declares each option once. Everything else is built from it:
the ``lfl train`` command-line options (:func:`click_options`), presets and TOML/YAML
config files (:func:`resolve_config`, :func:`read_config_file`), ``lfl study`` tables,
and the checks. The Python API and the command line therefore resolve a configuration
the same way: dataclass defaults < preset < config file (and the file's own preset) <
explicit values.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import ConfigError
from toolkit.meta.online import ONLINE_META_LR
from toolkit.meta.rules import OPTIMIZERS, StepRule, make_rule


MAX_SEED = 2**31 - 1
LOSS_CHOICES = ("ce", "mse", "adalfl", "ml3", "taylorglo")
LOSS_PARAMS = ("mlp", "taylor")
LOSS_SCALES = ("normalised", "free")
SCHEDULES = ("multistep", "cosine")

PRESETS: dict[str, dict[str, Any]] = {
    # This toolkit's defaults: the learned loss gives the gradient's direction, and its
    # size is the task loss's (--max-scale > 1 lets a bounded multiplier be meta-learned too);
    # online updates at Adam rate 1e-4 (--online-meta-lr), a tenth of the offline phase's.
    "default": {},
    # Algorithms 1-2 of the paper as published: the loss network's output is used as is,
    # so the offline phase is free to learn any gradient scale (see losses.scaled), Adam's
    # rate is 1e-3 online too, and no descent guard (toolkit.meta.descent) corrects its steps.
    "paper": {"loss_scale": "free", "online_meta_lr": 1e-3, "descent_guard": False},
}
"""Named groups of option values: ``lfl train --preset paper``. Explicit options win."""


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A :class:`TrainConfig` field with what the command line shows for it."""
    metadata = {"help": help, "choices": choices, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def coerce_option(name: str, value: Any, declared: str) -> Any:
    """``value`` as the type an option declares (``"int"``, ``"float | None"``, ...); never truncates.

    Integers are accepted for floats; a float is never accepted for an integer, nor a bool
    for a number. Raises ConfigError naming the option.
    """
    base = declared.replace(" | None", "")
    if value is None and declared.endswith("| None"):
        return None
    flag = "--" + name.replace("_", "-")

    def bad(expected: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigError(f"{flag} must be {expected}; got {shown}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base == "int":
        if not is_int:
            raise bad("an integer")
        return value
    if base == "float":
        if not (is_int or isinstance(value, float)):
            raise bad("a number")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise bad("a list of integers")
        return tuple(value)
    if base == "dict":
        if not isinstance(value, dict):
            raise bad("a table of key = value")
        return dict(value)
    raise bad(declared)  # a field type this function does not know: fail loudly


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (all of it is written to results.json)."""

    dataset: str = option("fashion-mnist", help="mnist, fashion-mnist, cifar10, cifar100, svhn, digits, wine, "
                                                "breast_cancer, diabetes, or csv:PATH for your own CSV file.")
    model: str = option("lenet5", help="Model name; see toolkit.models.zoo.MODEL_NAMES.")
    loss: str = option("ce", choices=LOSS_CHOICES,
                       help="ce/mse: fixed; ml3: offline-learned then fixed; adalfl: offline then online; "
                            "taylorglo: CMA-ES search, then fixed.")
    steps: int = option(1000, help="Base training steps.")
    batch_size: int = option(128, help="Training batch size (the global batch under torchrun).")
    lr: float = option(0.01, help="Base learning rate.")
    optimizer: str = option("sgd", choices=OPTIMIZERS,
                            help="Base optimiser, as torch.optim's SGD, Adam or AdamW (betas 0.9, 0.999); learned "
                                 "losses differentiate through it.")
    momentum: float = option(0.0, help="SGD momentum.")
    nesterov: bool = option(False, help="SGD Nesterov momentum.")
    weight_decay: float = option(0.0, help="L2 weight decay (decoupled for AdamW).")
    schedule: str = option("multistep", choices=SCHEDULES,
                           help="Learning-rate schedule: multistep (x --gamma at each of --milestones) or cosine "
                                "(annealed to 0 over --steps).")
    milestones: tuple[int, ...] = option((), metavar="STEPS", help="Comma-separated steps where the lr is "
                                                                    "multiplied by --gamma (multistep).")
    gamma: float = option(0.1, help="Multistep factor.")
    seed: int = option(0, help="Seed of the initialisation, the batches and the validation split.")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.")
    data_dir: str | None = option(None, help="Where the dataset files are.")
    target: str | None = option(None, help="Target column of a csv: dataset (default: the last column).")
    task: str | None = option(None, choices=("classification", "regression"),
                              help="Task of a csv: dataset (default: inferred).")
    valid_fraction: float = option(0.1, help="Share of the training set held out (stratified) for validation.")
    augment: bool = option(True, help="The dataset's standard training augmentation: crops and flips for "
                                      "CIFAR-10/100, crops for SVHN; no effect on other datasets.")
    eval_every: int = option(0, help="Validation every N steps (0: at the end).")
    log_every: int = option(50, help="History record every N steps.")
    checkpoint_every: int = option(500, help="Checkpoint every N steps (0 disables checkpoints).")
    # learned losses
    loss_param: str = option("mlp", choices=LOSS_PARAMS, help="Parameterisation of a learned loss.")
    init_steps: int = option(2500, help="Offline initialisation meta steps (adalfl, ml3).")
    meta_lr: float = option(1e-3, help="Adam learning rate of the loss in the offline phase.")
    online_meta_lr: float = option(ONLINE_META_LR, help="Adam learning rate of the loss's online updates (adalfl, --adapt).")
    meta_interval: int = option(1, help="Meta step every k base steps.")
    meta_clip: float | None = option(None, help="Clip the meta-gradient to this global norm.")
    meta_gradient: str = option("fast", choices=("fast", "naive", "fd"),
                                help="fast: the JVP route; naive: autograd through the unrolled step (reference); "
                                     "fd: the JVP replaced by a one-sided finite difference (approximate, "
                                     "docs/performance.md).")
    meta_source: str = option("valid", choices=("valid", "train"), help="Where meta-objective batches come from.")
    snapshot_every: int = option(100, help="Learned-loss snapshot every N steps.")
    loss_scale: str | None = option(None, choices=LOSS_SCALES,
                                    help="adalfl/ml3: 'normalised' (default) takes the gradient's direction from the "
                                         "learned loss and its size from the task loss times a learned scale in "
                                         "[1/--max-scale, --max-scale]; 'free' uses the loss as is. With --loss-from "
                                         "the default is what the loss says (a loss.json or lfl export output "
                                         "carries its normalisation; a bare formula is free); 'normalised' "
                                         "normalises a loss that is not, 'free' drops it.")
    max_scale: float = option(1.0, help="Bound on the learned scale of a normalised loss (1 fixes it at the task "
                                        "loss's).")
    descent_guard: bool = option(True, help="Learned losses: reflect each sample's gradient that points uphill for "
                                            "the task loss and check each step, so no step trains backwards (off in "
                                            "--preset paper).")
    sync_batchnorm: bool = option(False, help="Under torchrun: BatchNorm statistics of the global batch instead of "
                                              "each process's share.")
    model_options: dict = option(default_factory=dict, metavar="KEY=VALUE",
                                 help="Model option, e.g. --model-option depth=16 --model-option 'hidden=[100,100]'.")
    # reuse of a learned loss, and the TaylorGLO search
    loss_from: str | None = option(None, metavar="FILE_OR_FORMULA",
                                   help="Reuse a loss: a loss.json, a run directory, a file holding a SymPy formula, "
                                        "or a formula in y_pred and y. Fixed, unless --adapt.")
    adapt: bool = option(False, help="With --loss-from: keep learning the loss online (no offline phase).")
    generations: int = option(10, help="TaylorGLO: CMA-ES generations.")
    population: int | None = option(None, help="TaylorGLO: candidates per generation (default 10).")
    fitness_steps: int = option(200, help="TaylorGLO: training steps per candidate evaluation.")
    search_jobs: int = option(1, help="TaylorGLO: parallel processes evaluating candidates.")
    invariant: bool = option(True, help="TaylorGLO: reject candidates whose gradient does not favour the true "
                                        "class, untrained.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, coerce_option(f.name, getattr(self, f.name), str(f.type)))
        if self.loss_scale is None and self.loss_from is None:  # unset: a reused loss keeps its own
            object.__setattr__(self, "loss_scale", "normalised")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"unknown --{f.name.replace('_', '-')} {value!r}: choose one of {', '.join(choices)}")
        checks = [
            (0 <= self.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}], got {self.seed}"),
            (self.steps >= 0, f"--steps must be >= 0, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.optimizer == "sgd" or (self.momentum == 0 and not self.nesterov),
             f"--momentum and --nesterov belong to --optimizer sgd; {self.optimizer} uses betas (0.9, 0.999)"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (not self.nesterov or self.momentum > 0, "--nesterov needs --momentum > 0"),
            (self.gamma > 0, f"--gamma must be > 0, got {self.gamma}"),
            (all(m > 0 for m in self.milestones), "--milestones must be positive step numbers"),
            (self.schedule == "multistep" or not self.milestones, "--milestones belong to --schedule multistep"),
            (self.init_steps >= 0, f"--init-steps must be >= 0, got {self.init_steps}"),
            (self.meta_lr > 0, f"--meta-lr must be > 0, got {self.meta_lr}"),
            (self.online_meta_lr > 0, f"--online-meta-lr must be > 0, got {self.online_meta_lr}"),
            (self.meta_interval >= 1, f"--meta-interval must be >= 1, got {self.meta_interval}"),
            (math.isfinite(self.max_scale) and self.max_scale >= 1, f"--max-scale must be >= 1, got {self.max_scale}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"unknown --device {self.device!r}: use auto, cpu or cuda"),
            (0 <= self.valid_fraction < 1, "--valid-fraction must be in [0, 1)"),
            (self.log_every >= 1 and self.checkpoint_every >= 0 and self.eval_every >= 0,
             "--log-every must be >= 1; --checkpoint-every and --eval-every >= 0"),
            (not self.adapt or self.loss_from is not None,
             "--adapt needs --loss-from FILE (to learn a loss from scratch use --loss adalfl)"),
            (self.loss_from is None or self.loss in ("ce", "mse", "adalfl"),
             f"--loss-from replaces --loss {self.loss}: drop --loss, or add --adapt to keep learning online"),
            (self.generations >= 1 and self.fitness_steps >= 1 and self.search_jobs >= 1,
             "--generations, --fitness-steps and --jobs must be >= 1"),
            (self.population is None or self.population >= 2, "--population must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def learned(self) -> bool:
        """The loss has parameters worth recording (snapshots, loss.json)."""
        return self.loss in ("adalfl", "ml3", "taylorglo") or self.loss_from is not None

    @property
    def offline_phase(self) -> bool:
        """ML3-style offline initialisation before training (AdaLFL, ML3; not for a reused loss)."""
        return self.loss in ("adalfl", "ml3") and self.loss_from is None

    @property
    def online(self) -> bool:
        """The loss keeps adapting during training."""
        return self.loss == "adalfl" or self.adapt

    def rule(self) -> StepRule:
        """The base optimiser as a differentiable rule (:mod:`toolkit.meta.rules`)."""
        return make_rule(self.optimizer, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                         weight_decay=self.weight_decay)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def lr_at(config: TrainConfig, step: int) -> float:
    """The base learning rate at ``step``: multistep (lr · gamma^(milestones ≤ step)) or cosine annealing
    (lr · (1 + cos(π · step / steps)) / 2, as ``torch.optim.lr_scheduler.CosineAnnealingLR`` with eta_min 0)."""
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1)))
    return config.lr * config.gamma ** sum(step >= m for m in config.milestones)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The option table of a TOML or YAML file (YAML with ``safe_load``; nothing is evaluated).

    Keys may use dashes or underscores; ``preset`` names a preset. Unknown keys, tables where a
    value belongs and values of the wrong type raise ConfigError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("YAML config needs PyYAML: pip install pyyaml (or use TOML)") from None
            data = yaml.safe_load(text) or {}
        else:
            import tomllib
            data = tomllib.loads(text)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error is one user-facing message
        raise ConfigError(f"cannot parse {path}: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of option = value")
    return _checked_options(data, where=str(path))


def _checked_options(data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "preset":
            if value not in PRESETS:
                raise ConfigError(f"unknown preset {value!r} in {where}; choose {', '.join(PRESETS)}")
            options[name] = value
            continue
        if name == "model_option":  # the command line's repeatable KEY=VALUE form
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"option {key!r} in {where} must be KEY=VALUE text or a list of them")
            options["model_options"] = {**options.get("model_options", {}), **parse_model_options(tuple(items))}
            continue
        if name == "milestones" and isinstance(value, str):
            value = list(parse_int_list(value))
        if name not in fields:
            raise ConfigError(f"unknown option {key!r} in {where}")
        declared = str(fields[name].type)
        if isinstance(value, dict) and declared != "dict":
            raise ConfigError(f"option {key!r} in {where} must be a value, not a table")
        try:
            options[name] = coerce_option(name, value, declared)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {where})") from None
    return options


def resolve_config(options: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
                   preset: str | None = None, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from, lowest first: defaults, ``base`` (a resumed run's saved options), ``preset``,
    ``config_file`` (its own ``preset`` key included, below its values), then the explicit ``options``.

    ``lfl train`` calls this with the options given on its command line; the Python API the same.
    """
    layers: dict[str, Any] = _checked_options(dict(base), where="the checkpoint") if base else {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
        layers.update(PRESETS[preset])
    if config_file is not None:
        from_file = read_config_file(config_file)
        file_preset = from_file.pop("preset", None)
        if file_preset is not None:
            layers.update(PRESETS[file_preset])
        layers.update(from_file)
    explicit = _checked_options(dict(options or {}), where="the options")
    explicit.pop("preset", None)
    layers.update(explicit)
    return TrainConfig(**layers)


def click_options(command):
    """Decorate a click command with one option per :class:`TrainConfig` field, from its declaration.

    Booleans become ``--name/--no-name`` flags, choices ``click.Choice``, ``milestones`` a
    comma-separated list and ``model_options`` a repeatable ``--model-option KEY=VALUE``. No
    default is set on the click side (``None`` means "not given"), so :func:`resolve_config`
    layers presets and config files below what was typed.
    """
    import click

    for f in reversed(dataclasses.fields(TrainConfig)):
        flag = "--" + f.name.replace("_", "-")
        declared = str(f.type).replace(" | None", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = f" [default: {'on' if default else 'off'}]" if declared == "bool" else (
            f" [default: {default}]" if default not in (None, (), {}) else "")
        help_text = f.metadata.get("help", "") + shown
        choices = f.metadata.get("choices")
        if f.name == "model_options":
            decorator = click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
                                     help=help_text)
        elif declared == "bool":
            decorator = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(declared, str)
            if choices:
                kind = click.Choice(list(choices))
            decorator = click.option(flag, f.name, type=kind, default=None, metavar=f.metadata.get("metavar"),
                                     help=help_text)
        command = decorator(command)
    return command


def parse_model_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE read as JSON when it parses, else text) as a dict."""
    import json

    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--model-option: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


def parse_int_list(text: str | None, what: str = "step numbers") -> tuple[int, ...]:
    """``"100,200"`` as (100, 200); empty or None as ()."""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated {what}, got {text!r}") from None


__all__ = ["TrainConfig", "ConfigError", "PRESETS", "OPTION_NAMES", "MAX_SEED", "LOSS_CHOICES", "LOSS_PARAMS",
           "LOSS_SCALES", "SCHEDULES", "coerce_option", "lr_at", "read_config_file", "resolve_config",
           "click_options", "parse_model_options", "parse_int_list", "option"]
