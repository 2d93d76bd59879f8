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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import ConfigError
from toolkit.meta.lookahead import META_GRADIENTS
from toolkit.meta.online import ONLINE_META_LR
from toolkit.meta.rules import OPTIMIZERS, StepRule, make_rule
from toolkit.runs.options import Check, above, at_least, check_option, field_types, flag, option, within
from toolkit.data.regimes import NOISE_KINDS


MAX_SEED = 2**31 - 1
LOSS_CHOICES = ("ce", "mse", "gce", "focal", "adalfl", "ml3", "taylorglo")
LOSS_PARAMS = ("mlp", "taylor")
LOSS_SCALES = ("normalised", "free")
SCHEDULES = ("multistep", "cosine")

POSITIVE_STEPS = Check(lambda steps: all(m > 0 for m in steps), "{option} must be positive step numbers")
DEVICE = Check(lambda name: name in ("auto", "cpu", "cuda") or name.startswith("cuda:"),
               "unknown {option} {value!r}: use auto, cpu or cuda")
MAX_SCALE = Check(lambda v: math.isfinite(v) and v >= 1, "{option} must be >= 1, got {value}")

PRESETS: dict[str, dict[str, Any]] = {
    # This toolkit's defaults: the learned loss gives the gradient's direction, and its
    # size is the task loss's (--max-scale > 1 lets a bounded multiplier be meta-learned too);
    # online updates at Adam rate 1e-4 (--online-meta-lr), a tenth of the offline phase's.
    "default": {},
    # Algorithms 1-2 of the paper as published: the loss network's output is used as is,
    # so the offline phase is free to learn any gradient scale (see losses.scaled), Adam's
    # rate is 1e-3 online too, and no descent guard (toolkit.meta.guard) corrects its steps.
    "paper": {"loss_scale": "free", "online_meta_lr": 1e-3, "descent_guard": False},
}
"""Named groups of option values: ``lfl train --preset paper``. Explicit options win."""


def coerce_option(name: str, value: Any, *, shown: str | None = None) -> Any:
    """``value`` checked as :class:`TrainConfig` declares option ``name`` (type, choices, check).

    ``shown`` is how the message names the option (default: its flag, ``--name``). Raises ConfigError.
    """
    return check_option(_FIELDS[name], _TYPES[name], value, option=shown or flag(name))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (all of it is written to results.json)."""

    dataset: str = option("fashion-mnist", help="mnist, fashion-mnist, cifar10, cifar100, svhn, digits, wine, "
                                                "breast_cancer, diabetes, or csv:PATH for your own CSV file.")
    model: str = option("lenet5", help="Model name; see toolkit.models.zoo.MODEL_NAMES.")
    loss: str = option("ce", choices=LOSS_CHOICES,
                       help="ce/mse: fixed; gce/focal: fixed robust losses (classification); ml3: offline-learned "
                            "then fixed; adalfl: offline then online; taylorglo: CMA-ES search, then fixed.")
    steps: int = option(1000, check=at_least(0), help="Base training steps.")
    batch_size: int = option(128, check=at_least(1), help="Training batch size (the global batch under torchrun).")
    lr: float = option(0.01, check=above(0), help="Base learning rate.")
    optimizer: str = option("sgd", choices=OPTIMIZERS,
                            help="Base optimiser, as torch.optim's SGD, Adam or AdamW (betas 0.9, 0.999); learned "
                                 "losses differentiate through it.")
    momentum: float = option(0.0, check=within(0, 1), help="SGD momentum.")
    nesterov: bool = option(False, help="SGD Nesterov momentum.")
    weight_decay: float = option(0.0, check=at_least(0), help="L2 weight decay (decoupled for AdamW).")
    schedule: str = option("multistep", choices=SCHEDULES,
                           help="Learning-rate schedule: multistep (x --gamma at each of --milestones) or cosine "
                                "(annealed to 0 over --steps).")
    milestones: tuple[int, ...] = option((), metavar="STEPS", check=POSITIVE_STEPS, help="Comma-separated steps where the lr is "
                                                                    "multiplied by --gamma (multistep).")
    gamma: float = option(0.1, check=above(0), help="Multistep factor.")
    seed: int = option(0, check=within(0, MAX_SEED, include_high=True), help="Seed of the initialisation, the batches and the validation split.")
    device: str = option("auto", check=DEVICE, help="auto, cpu, cuda or cuda:N.")
    data_dir: str | None = option(None, help="Where the dataset files are.")
    target: str | None = option(None, help="Target column of a csv: dataset (default: the last column).")
    task: str | None = option(None, choices=("classification", "regression"),
                              help="Task of a csv: dataset (default: inferred).")
    valid_fraction: float = option(0.1, check=within(0, 1), help="Share of the training set held out (stratified) for validation.")
    selection_fraction: float = option(0.5, check=Check(lambda v: 0 < v < 1, "{option} must be in (0, 1), got {value}"),
                                       help="Share of the validation split kept for selection (stratified): every "
                                            "method's valid_* metrics; no method trains or meta-trains on it. The "
                                            "rest is the meta part (--meta-source valid).")
    label_noise: float = option(0.0, check=within(0, 1), metavar="RATE",
                                help="Flip each training label with this probability (classification; validation "
                                     "and test stay clean).")
    label_noise_kind: str = option("symmetric", choices=NOISE_KINDS,
                                   help="symmetric: to a uniformly chosen other class; pairflip: class c to "
                                        "(c+1) mod C.")
    imbalance: float = option(1.0, check=Check(lambda v: math.isfinite(v) and v >= 1, "{option} must be >= 1, got {value}"),
                              metavar="RATIO", help="Long-tailed training split: class c keeps n_max*RATIO^(-c/(C-1)) "
                                                    "samples (classification; 1: as is).")
    augment: bool = option(True, help="The dataset's standard training augmentation: crops and flips for "
                                      "CIFAR-10/100, crops for SVHN; no effect on other datasets.")
    eval_every: int = option(0, check=at_least(0), help="Validation every N steps (0: at the end).")
    log_every: int = option(50, check=at_least(1), help="History record every N steps.")
    checkpoint_every: int = option(500, check=at_least(0), help="Checkpoint every N steps (0 disables checkpoints).")
    # learned losses
    loss_param: str = option("mlp", choices=LOSS_PARAMS, help="Parameterisation of a learned loss.")
    init_steps: int = option(2500, check=at_least(0), help="Offline initialisation meta steps (adalfl, ml3).")
    meta_lr: float = option(1e-3, check=above(0), help="Adam learning rate of the loss in the offline phase.")
    online_meta_lr: float = option(ONLINE_META_LR, check=above(0), help="Adam learning rate of the loss's online updates (adalfl, --adapt).")
    meta_interval: int = option(1, check=at_least(1), help="Meta step every k base steps.")
    meta_clip: float | None = option(None, check=above(0), help="Clip the meta-gradient to this global norm.")
    meta_gradient: str = option("fast", choices=tuple(META_GRADIENTS),
                                help="fast: the JVP route; reverse: the same with the JVP read off the training "
                                     "backward (exact, no forward; faster on linear layers, slower on "
                                     "convolutions: lfl bench --floor); naive: autograd through the unrolled step "
                                     "(reference); fd: the JVP replaced by a one-sided finite difference "
                                     "(approximate, docs/performance.md).")
    meta_source: str = option("valid", choices=("valid", "train"),
                              help="Where meta-objective batches come from (valid: the validation split's meta "
                                   "part, never its selection part).")
    snapshot_every: int = option(100, check=at_least(0), help="Learned-loss snapshot every N steps.")
    loss_scale: str | None = option(None, choices=LOSS_SCALES,
                                    help="adalfl/ml3: 'normalised' (default) takes the gradient's direction from the "
                                         "learned loss and its size from the task loss times a learned scale in "
                                         "[1/--max-scale, --max-scale]; 'free' uses the loss as is. With --loss-from "
                                         "the default is what the loss says (a loss.json or lfl export output "
                                         "carries its normalisation; a bare formula is free); 'normalised' "
                                         "normalises a loss that is not, 'free' drops it.")
    max_scale: float = option(1.0, check=MAX_SCALE, help="Bound on the learned scale of a normalised loss (1 fixes it at the task "
                                        "loss's).")
    descent_guard: bool = option(True, help="Learned losses: reflect each sample's gradient that points uphill for "
                                            "the task loss and check each step, so no step trains backwards (off in "
                                            "--preset paper).")
    compile: bool = option(False, help="AdaLFL: compile the learned loss's derivatives and, off the CPU, the "
                                       "descent guard's step check (reduce-overhead mode on CUDA) with "
                                       "torch.compile; the lookahead's passes through the model stay eager.")
    sync_batchnorm: bool = option(False, help="Under torchrun: BatchNorm statistics of the global batch instead of "
                                              "each process's share.")
    model_options: dict = option(default_factory=dict, metavar="KEY=VALUE",
                                 help="Model option, e.g. --model-option depth=16 --model-option 'hidden=[100,100]'.")
    # reuse of a learned loss, and the TaylorGLO search
    loss_from: str | None = option(None, metavar="FILE_OR_FORMULA",
                                   help="Reuse a loss: a loss.json, a run directory, a file holding a SymPy formula, "
                                        "or a formula in y_pred and y. Fixed, unless --adapt.")
    adapt: bool = option(False, help="With --loss-from: keep learning the loss online (no offline phase).")
    generations: int = option(10, check=at_least(1), help="TaylorGLO: CMA-ES generations.")
    population: int | None = option(None, check=at_least(2), help="TaylorGLO: candidates per generation (default 10).")
    fitness_steps: int = option(200, check=at_least(1), help="TaylorGLO: training steps per candidate evaluation.")
    search_jobs: int = option(1, check=at_least(1), help="TaylorGLO: parallel processes evaluating candidates.")
    invariant: bool = option(True, help="TaylorGLO: reject candidates whose gradient does not favour the true "
                                        "class, untrained.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # each option's declared type, choices and check
            object.__setattr__(self, f.name, coerce_option(f.name, getattr(self, f.name)))
        if self.loss_scale is None and self.loss_from is None:  # unset: a reused loss keeps its own
            object.__setattr__(self, "loss_scale", "normalised")
        _check_combinations(self)

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
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = field_types(TrainConfig)


def _check_combinations(config: TrainConfig) -> None:
    """The checks that involve more than one option (each option's own check is in its declaration)."""
    try:  # the base optimiser's options together: the rule checks itself (toolkit.meta.rules)
        config.rule()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    checks = [
        (config.schedule == "multistep" or not config.milestones, "--milestones belong to --schedule multistep"),
        (not config.adapt or config.loss_from is not None,
         "--adapt needs --loss-from FILE (to learn a loss from scratch use --loss adalfl)"),
        (config.loss_from is None or config.loss in ("ce", "mse", "adalfl"),
         f"--loss-from replaces --loss {config.loss}: drop --loss, or add --adapt to keep learning online"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


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
        if name not in _FIELDS:
            raise ConfigError(f"unknown option {key!r} in {where}")
        if isinstance(value, dict) and _TYPES[name][0] is not dict:
            raise ConfigError(f"option {key!r} in {where} must be a value, not a table")
        try:
            options[name] = coerce_option(name, value)
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
        kind = _TYPES[f.name][0]
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = f" [default: {'on' if default else 'off'}]" if kind is bool else (
            f" [default: {default}]" if default not in (None, (), {}) else "")
        help_text = f.metadata.get("help", "") + shown
        choices = f.metadata.get("choices")
        if f.name == "model_options":
            decorator = click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
                                     help=help_text)
        elif kind is bool:
            decorator = click.option(f"{flag(f.name)}/--no-{flag(f.name)[2:]}", f.name, default=None, help=help_text)
        else:
            click_type = click.Choice(list(choices)) if choices else kind if kind in (int, float) else str
            decorator = click.option(flag(f.name), f.name, type=click_type, default=None,
                                     metavar=f.metadata.get("metavar"), help=help_text)
        command = decorator(command)
    return command


MODEL_OPTION_LIMIT = 10_000
"""The longest text one --model-option value may be (a layer list of a few hundred widths fits)."""


def parse_model_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE read as JSON when it parses, else text) as a dict."""
    import json

    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--model-option: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        if len(raw) > MODEL_OPTION_LIMIT:
            raise ConfigError(f"--model-option {key.strip()}: a value of {len(raw)} characters is longer than any "
                              f"model option takes ({MODEL_OPTION_LIMIT})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise ConfigError(f"--model-option {key.strip()}: the value is nested too deeply; give a number, "
                              "a word or a flat list such as [64, 32]") from None
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


__all__ = ["TrainConfig", "PRESETS", "OPTION_NAMES", "MAX_SEED", "LOSS_CHOICES", "LOSS_PARAMS",
           "LOSS_SCALES", "SCHEDULES", "coerce_option", "lr_at", "read_config_file", "resolve_config",
           "click_options", "parse_model_options", "parse_int_list", "option"]
