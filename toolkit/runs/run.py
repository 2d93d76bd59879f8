"""One training run end to end: data, model, stepper, loop, checkpoints and output files.

Output directory layout (the ``lfl train --out DIR`` contract):
    results.json         final metrics and the full config
    loss.json            the loss that trained the model (kind, config, parameters, formula)
    history.jsonl        one JSON object per line: training records every ``log_every``
                         steps, evaluation records, offline-phase records
    metrics.csv          the same numbers, one ``phase,step,name,value`` row each (toolkit.runs.log)
    tensorboard/         the same numbers as TensorBoard scalars (``tensorboard=True`` only)
    loss_snapshots.jsonl the learned loss every ``snapshot_every`` steps (learned losses)
    checkpoint.pt        the latest checkpoint (written atomically)
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

import losses

from toolkit.data.datasets import Dataset
from toolkit.data.run_data import load_run_data, load_search_data, prepare_run_data
from toolkit.models.zoo import build_model
from toolkit.meta.offline import offline_initialise
from toolkit.meta.adam import all_finite
from toolkit.data.augment import AugmentedBatches, augmentation_for
from toolkit.meta.online import (GuardCounts, NonFiniteError, OnlineLossLearner, fixed_loss_gradients, frozen_copy,
                                 guarded_step, has_trainable_parameters)
from toolkit.meta.distributed import SINGLE, Replicas, convert_sync_batchnorm
from toolkit.meta.rules import torch_optimizer
from toolkit.runs.run_directory import RunDirectory
from toolkit.runs.signals import terminate_as_interrupt
from toolkit.runs.user_model import check_outputs, check_same_model, describe_model, model_class, reinitialise
from toolkit.runs.log import History, RunLog, summary_writer_class
from toolkit.runs.reporting import GuardWarning, LossWindow, loss_postfix, run_progress, sums_from_checkpoint
from toolkit.runs.common import (BatchStream, ConfigError, TrainConfig, atomic_write, evaluate, lr_at,
                    resolve_device, seed_everything, write_json)

CHECKPOINT_VERSION = 1


class FixedLossStepper:
    """The base optimiser on a fixed loss: cross-entropy, squared error, or a frozen learned loss.

    Unguarded, the step is ``torch.optim``'s own (SGD, Adam or AdamW). With ``guard_task`` (a frozen
    learned loss and ``config.descent_guard``) it is the same rule written functionally
    (:mod:`toolkit.meta.rules`, equal to ``torch.optim``) around the descent guard (:mod:`toolkit.meta.descent`):
    the two reflections, then the step check that falls back to the task loss's own step.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, config: TrainConfig, *, task: str | None = None,
                 learned: bool = False, guard_task: str | None = None, replicas: Replicas = SINGLE) -> None:
        self.model, self.loss, self.guard_task, self.replicas = model, loss, guard_task, replicas
        self.task, self.learned = task or guard_task or "classification", learned or guard_task is not None
        self.rule = config.rule()
        self.optimizer = torch_optimizer(self.rule, model.parameters())
        self.guard_counts = GuardCounts(next(model.parameters()).device)
        self.state = self.rule.init({k: p for k, p in model.named_parameters() if p.requires_grad})

    def step(self, train, valid=None, *, lr: float, diagnostics: bool = False) -> dict[str, Tensor]:
        """One base step; returns device scalars ``task_loss`` (L_task on the batch at θ, from the step's own
        outputs) and, for a learned loss, ``learned_loss`` (its value there)."""
        if self.guard_task is not None:
            return self._guarded_step(train, lr)
        x, y = train
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if not self.replicas.active:
            outputs = self.model(x)
            value = self.loss(outputs, y)
            value.backward()
            task_value = losses.task_loss(outputs.detach(), y, self.task)
        else:  # the global batch's loss and gradient (toolkit.meta.distributed), then torch.optim's own step
            params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
            step = fixed_loss_gradients(self.model, self.loss, train, params, self.task, replicas=self.replicas)
            value, task_value = step.value, step.train_task_loss
            for k, p in params.items():
                p.grad = step.grads[k]
        self.optimizer.step()
        return self._info(value, task_value)

    def _info(self, value: Tensor, task_value: Tensor) -> dict[str, Tensor]:
        info = {"task_loss": task_value.detach()}
        if self.learned:
            info["learned_loss"] = value.detach()
        return info

    def _guarded_step(self, train, lr: float) -> dict[str, Tensor]:
        params = {k: p for k, p in self.model.named_parameters() if p.requires_grad}
        step = guarded_step(self.model, self.loss, train, params, self.state, self.rule.with_lr(lr), self.guard_task,
                            replicas=self.replicas)
        self.state = step.state
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(step.params[k])
        self.guard_counts.add(*step.guard, len(train[1]))
        return self._info(step.value, step.task_loss)

    def record(self) -> dict:
        """The history's diagnostics since the last record (the guard's shares; a host read)."""
        return {} if self.guard_task is None else self.guard_counts.read()

    def summary(self) -> dict:
        """The run's diagnostics for results.json (the guard's shares over every step)."""
        return {} if self.guard_task is None else self.guard_counts.totals()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "guard_counts": self.guard_counts.counts,
                "rule_state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.guard_counts.load(state.get("guard_counts"))
        if "rule_state" in state:
            self.state = state["rule_state"]
        elif state.get("momentum") is not None:  # checkpoints written before the rules took state dicts
            self.state = {"momentum": state["momentum"]}


class OnlineStepper:
    """Adapter from :class:`OnlineLossLearner` to the loop's stepper interface."""

    def __init__(self, learner: OnlineLossLearner) -> None:
        self.learner = learner

    def step(self, train, valid=None, *, lr: float, diagnostics: bool = False) -> dict[str, Tensor]:
        return self.learner.step(train, valid, lr=lr, diagnostics=diagnostics)

    def record(self) -> dict:
        rec = {**self.learner.check(), **self.learner.guard_record()}
        if "grad_ratio" in self.learner.last:
            rec["grad_ratio"] = float(self.learner.last["grad_ratio"])
        return rec

    def summary(self) -> dict:
        """The run's diagnostics for results.json: skipped updates, the guard's shares over every step."""
        guard = self.learner.guard_counts.totals() if self.learner.descent_guard else {}
        return {**self.learner.check(), **guard}

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)


FORMULA_FILE_LIMIT = 1_000_000
"""Bytes read from a formula file at most (a formula, not a data set)."""


def reused_loss(source: str, task: str) -> nn.Module:
    """A loss to reuse: a loss.json, a run directory, a file holding a formula, or a formula string.

    Formulas are per-element losses in ``y_pred`` and ``y`` (e.g. ``"-y*log(y_pred)"``), read
    by ``losses.parse_formula``, which parses a whitelist grammar and never evaluates text;
    their numeric constants become trainable parameters of a ``losses.SymbolicLoss``. Text
    that is no formula but looks like a path is reported as a missing file. The loss comes
    back as the source says it trained: a saved ``GradientScaledLoss`` whole, and a formula
    under the header line ``lfl export`` writes for one (:mod:`losses.scale_header`) inside
    that normalisation; ``#`` lines are comments.
    """
    from losses.scale_header import split_header
    from losses.symbolic import parse_formula

    path = Path(source)
    if _is(path, "dir"):
        if not _is(path / "loss.json", "file"):
            raise ConfigError(f"--loss-from {source}: the directory holds no loss.json (give a run directory)")
        path = path / "loss.json"
    if path.suffix == ".json":
        if not _is(path, "file"):
            raise ConfigError(f"--loss-from {source}: no such file")
        loss = losses.load_loss(path)
    else:
        if _is(path, "file"):
            with path.open("rb") as f:
                text = f.read(FORMULA_FILE_LIMIT + 1).decode("utf-8", errors="replace")
            if len(text) > FORMULA_FILE_LIMIT:
                raise ConfigError(f"--loss-from {source}: more than {FORMULA_FILE_LIMIT} bytes; a formula file holds "
                                  "one formula in y_pred and y (lfl export --format sympy)")
            where = f"--loss-from {source}"
        else:
            text, where = source, "--loss-from"
        try:
            text, normalisation = split_header(text)
        except losses.LossFileError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            expression = parse_formula(text, max_length=FORMULA_FILE_LIMIT)
        except (ValueError, TypeError) as exc:
            if not _is(path, "file") and _looks_like_path(source):
                raise ConfigError(f"--loss-from {source}: no such file") from None
            raise ConfigError(f"{where}: {exc}") from None
        try:
            loss = losses.SymbolicLoss(expression, task=task, dtype=torch.float64)  # exact; the run casts it
        except (ValueError, TypeError) as exc:  # e.g. a function the SymPy-to-torch table lacks
            raise ConfigError(f"{where}: {exc}") from None
        if normalisation is not None:
            loss = normalisation.wrap(loss)
    inner = loss.shape if isinstance(loss, losses.GradientScaledLoss) else loss
    if isinstance(inner, losses.SymbolicLoss) and losses.Y_PRED not in inner.expression.free_symbols:
        raise ConfigError(f"--loss-from {_clipped(source)}: the loss does not depend on y_pred, so its gradient is "
                          "zero and it cannot train a model")
    if loss.task != task:
        raise ConfigError(f"--loss-from {source}: a {loss.task} loss cannot train a {task} dataset")
    if loss.reduction == "none":
        raise ConfigError(f"--loss-from {source}: the loss has reduction 'none' (per-element values) but training "
                          'needs a scalar; set "reduction": "mean" in its config')
    return loss


def scaled_as_asked(loss: nn.Module, config: TrainConfig) -> nn.Module:
    """A reused loss with the normalisation ``--loss-scale`` asks for; options it would ignore are refused.

    Unset (None): as the source says. ``normalised``: a loss saved normalised stays so, any
    other is wrapped in ``GradientScaledLoss(max_scale=--max-scale)`` (scale 1: cross-entropy's
    gradient norm). ``free``: a normalised loss is unwrapped to its shape, trained raw.
    ``--max-scale`` bounds only a normalisation made here.
    """
    source = f"--loss-from {config.loss_from}"
    wrapped = isinstance(loss, losses.GradientScaledLoss)
    if config.loss_scale == "normalised" and not wrapped:
        try:
            loss = losses.GradientScaledLoss(loss, max_scale=config.max_scale)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source} with --loss-scale normalised: {exc}") from None
        if config.adapt and config.max_scale == 1 and not has_trainable_parameters(loss.shape):
            raise ConfigError(f"the loss to adapt has no trainable parameters ({type(loss.shape).__name__}; "
                              "--max-scale 1 fixes its scale): give a formula with numeric constants, or drop --adapt")
        return loss
    if config.max_scale != 1:
        if wrapped and config.loss_scale != "free":
            held = f"carries its own normalisation (max_scale {loss.max_scale:g}); drop --max-scale"
        elif config.loss_scale == "free":
            held = "is trained raw (--loss-scale free); drop --max-scale"
        else:
            held = "is not normalised; drop --max-scale, or add --loss-scale normalised to normalise it"
        raise ConfigError(f"--max-scale {config.max_scale:g} would be ignored: {source} {held}")
    return loss.shape if wrapped and config.loss_scale == "free" else loss


def _is(path: Path, kind: str) -> bool:
    """``path.is_file()`` / ``is_dir()``, False for text no file system takes as a name (e.g. a long formula)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


def _clipped(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_like_path(text: str) -> bool:
    """Text a user meant as a file: a path separator or a file suffix, no formula operator but '/',
    and some word that no formula may use (``y_pred/2`` is a formula, ``runs/x/seed-0`` a path)."""
    import re

    from losses.formula import formula_functions

    name = text.strip()
    if any(c in name for c in "*+()<>,") or " " in name:
        return False
    known = {"y_pred", "y", "pi", "E", *formula_functions()}
    if all(word in known for word in re.findall(r"[A-Za-z_]\w*", name)):
        return False
    return "/" in name or "\\" in name or Path(name).suffix.lower() in (
        ".json", ".txt", ".sympy", ".formula", ".tex", ".py", ".toml", ".yaml")


def load_run_dataset(config: TrainConfig) -> Dataset:
    """The dataset, splits and normalisation a config names (its seed picks the validation split and its
    meta/selection parts), its training split made harder as asked (:mod:`toolkit.data.run_data`)."""
    return load_run_data(config)


def make_loss(config: TrainConfig, task: str, num_outputs: int = 2) -> nn.Module:
    """The loss module a config asks for, before any learning.

    ``--loss ce`` is PyTorch's cross-entropy (binary with logits for one output), the same
    definition as the meta-objective and evaluation (``losses.task_loss``).
    """
    if config.loss_from is not None:
        return scaled_as_asked(reused_loss(config.loss_from, task), config)
    if config.loss == "ce":
        if task != "classification":
            raise ConfigError("--loss ce needs a classification dataset: use --loss mse for regression")
        return losses.task_loss_module(task, num_outputs)
    if config.loss == "mse":
        return losses.SquaredErrorLoss(task=task)
    if config.loss in ("gce", "focal"):  # fixed robust losses, trained as --loss ce is
        if task != "classification" or num_outputs < 2:
            raise ConfigError(f"--loss {config.loss} needs a classification dataset with 2 or more outputs: "
                              "use --loss mse for regression")
        return losses.build_loss(config.loss)
    if config.loss == "taylorglo":
        return losses.TaylorLoss.taylorglo(task=task)
    shape = losses.TaylorLoss.taylorglo(task=task) if config.loss_param == "taylor" else losses.MLPLoss(task=task)
    if config.loss_scale == "normalised":
        return losses.GradientScaledLoss(shape, max_scale=config.max_scale)
    return shape


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_device(split, device: torch.device) -> tuple[Tensor, Tensor]:
    return split.x.to(device), split.y.to(device)


MIN_EVALUATION_SAMPLES = 10
"""A validation or test split smaller than this cannot measure an error rate: the run is refused."""


def train(config: TrainConfig, *, out_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, dataset: Dataset | None = None,
          on_step: Callable[[int], None] | None = None, initial_loss: nn.Module | None = None,
          replicas: Replicas = SINGLE, tensorboard: bool = False, model: nn.Module | None = None) -> dict:
    """Run one training job and return its results (also written to ``out_dir``).

    Args:
        config: the run.
        out_dir: where results, history and checkpoints go (None: nothing is written). The
            directory is locked for the run (:class:`~toolkit.runs.run_directory.RunDirectory`).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        overwrite: replace a run already in ``out_dir`` (otherwise it is refused, unless ``resume``).
        progress: show a progress bar on stderr.
        dataset: an already loaded dataset (else loaded from the config).
        on_step: called after every step with the step count (tests use it to interrupt).
        initial_loss: a loss module to train with instead of the one the config names;
            no offline phase or search runs, and it adapts online only if ``config.online``.
        replicas: this process's place in a data-parallel run (:mod:`toolkit.meta.distributed`; the
            caller has joined the process group). Only process 0 writes ``out_dir``; the others
            read its checkpoint on ``resume``.
        tensorboard: also write the history's numbers as TensorBoard scalars under
            ``out_dir/tensorboard`` (:mod:`toolkit.runs.log`; needs the tensorboard package).
            An output choice, not part of the run: the config (results.json) does not hold it.
        model: your own ``nn.Module`` to train (in place) instead of the zoo model ``config.model`` names;
            its outputs must be (batch, classes or targets). The checkpoint records its class and shapes,
            and ``resume`` refuses another (:mod:`toolkit.runs.user_model`); results.json's ``model`` is its class.

    Raises:
        NonFiniteError: training diverged; results.json then holds ``"status": "diverged"``.
        ConfigError, DataError, ...: bad options or data, before anything is written.
    """
    reached = [0]

    def track(done: int) -> None:
        reached[0] = done
        if on_step is not None:
            on_step(done)

    kwargs = dict(progress=progress and replicas.is_main, dataset=dataset, on_step=track,
                  initial_loss=initial_loss, replicas=replicas, user_model=model)
    if out_dir is None:
        return _train(config, out=None, resume=False, **kwargs)
    if not replicas.is_main:  # process 0 owns the run directory; the others only read its checkpoint
        return _train(config, out=None, resume=resume, read_from=Path(out_dir), **kwargs)
    if tensorboard:
        summary_writer_class()  # a missing package is reported before --overwrite removes anything
    out = Path(out_dir)
    created = not out.exists()
    started: list[bool] = []
    with (RunDirectory(out, resume=resume, overwrite=overwrite), RunLog(out, tensorboard=tensorboard) as log,
          terminate_as_interrupt()):
        try:
            return _train(config, out=out, resume=resume, started=started, log=log, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the checkpoint stays for --resume
            if started:
                write_json(out / "results.json", {"status": "interrupted", "step": reached[0], "seed": config.seed,
                                                  "config": config.to_dict()})
            raise
        except Exception as exc:
            if started:
                status = "diverged" if isinstance(exc, NonFiniteError) else "failed"
                write_json(out / "results.json", {"status": status, "error": f"{type(exc).__name__}: {exc}",
                                                  "seed": config.seed, "config": config.to_dict()})
            raise
        finally:
            if created and not started:
                _remove_if_empty(out)


def check_data_parallel(config: TrainConfig, replicas: Replicas) -> None:
    """Refuse options a data-parallel run cannot take. Called before the process group is joined too: an
    error raised by every process at once, before any collective, reaches each as its own message (one
    raised later may cut a peer's collective short and reach it as a lost connection)."""
    if not replicas.active:
        return
    replicas.rows(config.batch_size)  # a batch that does not split evenly is refused before anything runs
    if config.meta_gradient != "fast":
        raise ConfigError("a data-parallel run uses the default --meta-gradient fast")


def _remove_if_empty(path: Path) -> None:
    """Remove a directory this run created when nothing but its lock file is in it."""
    try:
        if {p.name for p in path.iterdir()} <= {".lock"}:
            (path / ".lock").unlink(missing_ok=True)
            path.rmdir()
    except OSError:
        pass


def _base_model(config: TrainConfig, data: Dataset, user_model: nn.Module | None, device: torch.device) -> nn.Module:
    """The zoo model the config names, or the user's own (its outputs checked against the dataset), on ``device``."""
    if user_model is None:
        return build_model(config.model, input_shape=data.input_shape, num_outputs=data.num_outputs,
                           **config.model_options).to(device)
    user_model.to(device)
    check_outputs(user_model, data.train.x[:2].to(device=device), data.num_outputs)
    return user_model


def _check_splits(data: Dataset) -> None:
    meta = len(data.meta.y) if data.meta is not None else 0  # the validation split is selection + meta parts
    sizes = f"train {len(data.train.y)}, validation {len(data.valid.y) + meta}, test {len(data.test.y)} samples"
    if len(data.valid.y) < MIN_EVALUATION_SAMPLES:
        raise ConfigError(f"the validation split is too small to measure anything ({sizes}; its selection part "
                          f"{len(data.valid.y)}): raise --valid-fraction or --selection-fraction so that the selection "
                          f"part holds at least {MIN_EVALUATION_SAMPLES} samples, or use more data")
    if len(data.test.y) < MIN_EVALUATION_SAMPLES:
        raise ConfigError(f"the test split is too small to measure anything ({sizes}): it needs at least "
                          f"{MIN_EVALUATION_SAMPLES} samples; use a larger dataset")


def _train(config: TrainConfig, *, out: Path | None, resume: bool, progress: bool, dataset: Dataset | None,
           on_step: Callable[[int], None] | None, initial_loss: nn.Module | None,
           started: list[bool] | None = None, replicas: Replicas = SINGLE, read_from: Path | None = None,
           log: RunLog | None = None, user_model: nn.Module | None = None) -> dict:
    """The run itself; ``started`` gets an entry once setup is done and files may be written.

    ``read_from``: the run directory whose checkpoint a process other than 0 resumes from.
    ``log``: where the records go (history.jsonl and its CSV and TensorBoard views, under ``out``).
    """
    started_at = time.perf_counter()
    elapsed = lambda: (time.perf_counter() - started_at  # noqa: E731
                       + (checkpoint["wall_time_s"] if checkpoint else 0.0))
    device = resolve_device(config.device)
    if replicas.active:
        check_data_parallel(config, replicas)
        if device.type == "cuda" and torch.cuda.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(config.seed)
    data = prepare_run_data(dataset, config) if dataset is not None else load_run_dataset(config)
    _check_splits(data)
    task = data.task
    model = _base_model(config, data, user_model, device)
    if replicas.active:
        if config.sync_batchnorm:
            model = convert_sync_batchnorm(model)
        replicas.broadcast_([*model.parameters(), *model.buffers()])  # one starting point, whatever the seeds did
    loss = (initial_loss if initial_loss is not None else make_loss(config, task, data.num_outputs))
    # A saved loss (float64 formula constants) trains a float32 model in the model's dtype.
    loss = loss.to(device=device, dtype=next(model.parameters()).dtype)
    prepare = initial_loss is None and (config.offline_phase or config.loss == "taylorglo")
    train_x, train_y = _to_device(data.train, device)
    valid_x, valid_y = _to_device(data.valid, device)
    test_x, test_y = _to_device(data.test, device)
    train_batches = BatchStream(train_x, train_y, config.batch_size, seed=config.seed)
    augmentation = augmentation_for(data.name) if config.augment else None
    if augmentation is not None:  # training batches only: never validation, test or meta-objective batches
        train_batches = AugmentedBatches(train_batches, augmentation, seed=config.seed)
    meta_x, meta_y = _to_device(data.meta, device) if config.meta_source == "valid" else (train_x, train_y)
    meta_batches = (BatchStream(meta_x, meta_y, config.batch_size, seed=config.seed + 7919)
                    if config.online or config.offline_phase else None)
    history = log if log is not None else RunLog(None)
    snapshots = History(out / "loss_snapshots.jsonl" if out is not None else None)
    checkpoint_path = out / "checkpoint.pt" if out is not None else None
    read_path = checkpoint_path if read_from is None else read_from / "checkpoint.pt"

    checkpoint = None
    if resume and read_path is not None and read_path.exists():
        checkpoint = _load_checkpoint(read_path, config, model)
    elif out is not None:
        (out / "loss_snapshots.jsonl").unlink(missing_ok=True)
    history.start(resume=checkpoint is not None)
    if started is not None:
        started.append(True)

    if prepare and (checkpoint is None or checkpoint["phase"] == "init"):
        if config.loss == "taylorglo":  # the search runs once, on process 0 (each fitness run is single-process)
            searched = _search(config, task, history, progress) if replicas.is_main else None
            loss = _shared_loss(searched, replicas).to(device=device, dtype=next(model.parameters()).dtype)
        else:
            _initialise(config, model, loss, train_batches, meta_batches, task, history, snapshots, progress,
                        data.input_shape, data.num_outputs, replicas, user_model is not None)
        if checkpoint_path is not None and config.checkpoint_every:
            _save_checkpoint(checkpoint_path, config, "train", 0, model, loss, None, device, None, elapsed())

    if config.online and not has_trainable_parameters(loss):
        raise ConfigError(f"the loss to adapt has no trainable parameters ({type(loss).__name__}): "
                          "give a formula with numeric constants, or drop --adapt")
    if config.online:
        learner = OnlineLossLearner(model, loss, rule=config.rule(), online_meta_lr=config.online_meta_lr,
                                    meta_interval=config.meta_interval, meta_clip=config.meta_clip,
                                    meta_gradient=config.meta_gradient, task=task, descent_guard=config.descent_guard,
                                    snapshot_every=0,  # the run writes loss_snapshots.jsonl itself
                                    replicas=replicas)
        stepper = OnlineStepper(learner)
    else:
        learned = has_trainable_parameters(loss)
        train_loss = frozen_copy(loss) if learned else loss
        stepper = FixedLossStepper(model, train_loss, config, task=task, learned=learned,
                                   guard_task=task if learned and config.descent_guard else None, replicas=replicas)

    start_step = 0
    window = LossWindow(device)
    if checkpoint is not None and checkpoint["phase"] == "train":
        model.load_state_dict(checkpoint["model"])
        loss.load_state_dict(checkpoint["loss"])
        if checkpoint["stepper"] is not None:
            stepper.load_state_dict(checkpoint["stepper"])
        start_step = checkpoint["step"]
        window = LossWindow(device, sums_from_checkpoint(checkpoint, learned=has_trainable_parameters(loss)))
        _set_rng_state(checkpoint["rng"], device)
        history.truncate_after(start_step, ("train", "eval"))
        snapshots.truncate_after(start_step, "train")
    elif config.learned:
        snapshots.append({"phase": "train", "step": 0, "loss": losses.loss_to_dict(loss, formula=False)})

    bar = _progress_bar(config.steps, start_step, progress, every=config.log_every)
    guard_warning = GuardWarning()
    model.train()
    for step in range(start_step, config.steps):
        train_batch = train_batches(step)
        valid_batch = meta_batches(step) if meta_batches is not None else None
        logging = (step + 1) % config.log_every == 0 or step + 1 == config.steps
        info = stepper.step(train_batch, valid_batch, lr=lr_at(config, step), diagnostics=logging)
        if replicas.active and not config.sync_batchnorm:  # per-process BatchNorm: process 0's running statistics
            replicas.broadcast_(list(model.buffers()))
        window.add(info)
        done = step + 1
        if logging:
            record = _log_record(config, done, info, window, stepper)
            history.append(record)
            _check_finite(model, done, config)
            bar.set_postfix(**loss_postfix(record), refresh=False)
            guard_warning.check_summary(stepper.summary(), done)
        if config.learned and config.snapshot_every and done % config.snapshot_every == 0:
            snapshots.append({"phase": "train", "step": done, "loss": losses.loss_to_dict(loss, formula=False)})
        if config.eval_every and done % config.eval_every == 0 and done != config.steps:
            metrics = evaluate(model, valid_x, valid_y, task=task)
            history.append({"phase": "eval", "step": done, **{f"valid_{k}": v for k, v in metrics.items()}})
            bar.set_postfix(**loss_postfix({f"valid_{k}": v for k, v in metrics.items()}), refresh=False)
        if checkpoint_path is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
            _save_checkpoint(checkpoint_path, config, "train", done, model, loss, stepper, device, window.sums,
                             elapsed())
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()

    results = _final_results(config, data, model, valid_x, valid_y, test_x, test_y, stepper, device,
                             elapsed())
    guard_warning.check_summary(results, config.steps)
    results.update(world_size=replicas.world_size, warnings=guard_warning.messages,
                   **({"model": model_class(model), "user_model": True} if user_model is not None else {}))
    if out is not None:
        history.truncate_after(config.steps - 1, "eval")  # a resumed finished run: no second record
        history.append({"phase": "eval", "step": config.steps,
                        **{k: v for k, v in results.items() if k.startswith("valid_")}})
        losses.save_loss(loss, out / "loss.json")
        write_json(out / "results.json", results)
        if checkpoint_path is not None and config.checkpoint_every:
            _save_checkpoint(checkpoint_path, config, "train", config.steps, model, loss, stepper, device,
                             window.sums, elapsed())
    return results


def _search(config: TrainConfig, task: str, history: RunLog, progress: bool) -> nn.Module:
    """The TaylorGLO phase: CMA-ES over the 8 Taylor parameters, records in the history."""
    from toolkit.meta.taylorglo import search_taylorglo

    history.truncate_after(-1, "search")
    bar = _progress_bar(config.generations, 0, progress, desc="TaylorGLO search")

    def report(record: dict) -> None:
        history.append({"phase": "search", "step": record["generation"], **record})
        bar.update(1)
        bar.set_postfix(best=f"{record['best']:.4f}", refresh=False)

    loss, _ = search_taylorglo(config, trainer=train, load_data=load_search_data, task=task,
                               generations=config.generations, population=config.population,
                               fitness_steps=config.fitness_steps, jobs=config.search_jobs, seed=config.seed,
                               invariant=config.invariant,
                               on_generation=report)
    bar.close()
    return loss


def _shared_loss(loss: nn.Module | None, replicas: Replicas) -> nn.Module:
    """Process 0's loss on every process, sent as its JSON description (no pickling)."""
    if not replicas.active:
        return loss
    text = json.dumps(losses.loss_to_dict(loss, formula=False)) if replicas.is_main else ""
    size = torch.tensor([len(text.encode())], dtype=torch.long)
    replicas.broadcast_([size])
    payload = torch.zeros(int(size), dtype=torch.uint8)
    if replicas.is_main:
        payload.copy_(torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8))
    replicas.broadcast_([payload])
    return losses.loss_from_dict(json.loads(bytes(payload.tolist()).decode()))


def _initialise(config, model, loss, train_batches, meta_batches, task, history, snapshots, progress,
                input_shape, num_outputs, replicas: Replicas = SINGLE, user_model: bool = False) -> None:
    """The offline phase of AdaLFL / ML3, with its records in the history."""
    history.truncate_after(-1, "init")
    snapshots.truncate_after(-1, "train")
    bar = _progress_bar(config.init_steps, 0, progress, desc="offline init")

    def report(step: int, record: dict) -> None:
        history.append({"phase": "init", **record})
        bar.update(step - bar.n)
        bar.set_postfix(meta_loss=f"{record['meta_loss']:.4f}", refresh=False)

    def fresh_initialisation(scratch: nn.Module) -> None:
        """The model builder's own initialisation (a user model's layers' own), drawn anew (global RNG)."""
        if user_model:
            return reinitialise(scratch)
        fresh = build_model(config.model, input_shape=input_shape, num_outputs=num_outputs, **config.model_options)
        scratch.load_state_dict(fresh.state_dict())

    offline_initialise(model, loss, lambda s: (train_batches(s), meta_batches(s)), steps=config.init_steps,
                       rule=config.rule(), meta_lr=config.meta_lr, meta_clip=config.meta_clip,
                       meta_gradient=config.meta_gradient, task=task, progress=report,
                       reset=fresh_initialisation, descent_guard=config.descent_guard, replicas=replicas)
    bar.close()


def _final_results(config, data, model, valid_x, valid_y, test_x, test_y, stepper, device, wall) -> dict:
    task = data.task
    valid = evaluate(model, valid_x, valid_y, task=task)
    test = evaluate(model, test_x, test_y, task=task)
    results = {
        "status": "finished",
        "dataset": data.name, "model": config.model, "seed": config.seed,
        "loss": config.loss if config.loss_from is None else ("reused-adapt" if config.adapt else "reused"),
        "loss_from": config.loss_from,
        "steps": config.steps, "task": task,
        "test_loss": test["loss"], "valid_loss": valid["loss"],
        "wall_time_s": wall,
        "device": str(device), "torch": torch.__version__, "config": config.to_dict(),
        "data_regime": data.regime,  # the realised label noise, class counts, meta/selection sizes
    }
    if task == "classification":
        results.update(test_error=test["error"], valid_error=valid["error"])
    else:
        results.update(test_mse=test["mse"], valid_mse=valid["mse"], test_error=test["mse"])
        if data.target_std is not None:
            results["test_mse_original_units"] = test["mse"] * data.target_std ** 2
    results.update(stepper.summary())
    return results


def _log_record(config: TrainConfig, done: int, info: dict, window: LossWindow, stepper) -> dict:
    """The history's ``train`` record at step ``done``: the window's average losses and the diagnostics."""
    length = config.log_every if done % config.log_every == 0 else done % config.log_every
    record = {"phase": "train", "step": done, "lr": lr_at(config, done - 1), **window.read(length)}
    if "meta_loss" in info:
        record["meta_loss"] = float(info["meta_loss"])
    record.update(stepper.record())
    return record


def _check_finite(model: nn.Module, done: int, config: TrainConfig) -> None:
    """Refuse to go on with non-finite parameters (after the record that shows it was written)."""
    if not bool(all_finite(p.detach() for p in model.parameters() if p.is_floating_point())):
        raise NonFiniteError(f"training diverged by step {done}: the model's parameters are no longer "
                             f"finite (a step too large, or a loss that is not finite on this data); "
                             f"lower --lr (now {config.lr:g}) or check the loss")


def _progress_bar(total: int, initial: int, enabled: bool, desc: str = "train", every: int | None = None):
    """A bar on a terminal; elsewhere a plain line every ``every`` steps (default: about 20 lines in all)."""
    return run_progress(total, initial=initial, enabled=enabled, desc=desc, every=every or max(total // 20, 1))


def _save_checkpoint(path: Path, config: TrainConfig, phase: str, step: int, model, loss, stepper,
                     device, loss_sums, wall_time_s: float) -> None:
    state = {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "phase": phase, "step": step,
             "model": model.state_dict(), "loss": loss.state_dict(),
             "stepper": stepper.state_dict() if stepper is not None else None,
             "loss_sums": loss_sums if loss_sums is not None else LossWindow("cpu").sums,
             "rng": _rng_state(device), "wall_time_s": wall_time_s, "model_description": describe_model(model)}
    atomic_write(path, lambda p: torch.save(state, p))


def checkpoint_options(out_dir: str | Path) -> dict | None:
    """The options of the run whose checkpoint is in ``out_dir`` (None when there is none), as ``--resume``
    alone reads them: every option but ``device``, which may differ between machines."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    saved = _saved_config(_read_checkpoint(path), current=None)
    known = set(TrainConfig.__dataclass_fields__)
    return {k: v for k, v in saved.items() if k in known and k != "device"}


def _read_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except pickle.UnpicklingError:
        raise ConfigError(f"refusing checkpoint {path}: it holds objects other than tensors and plain data, and "
                          "loading those could run code; delete it to start afresh") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot read checkpoint {path} ({reason}); delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path} is not a checkpoint of this toolkit version; delete it to start afresh")
    return state


def _saved_config(state: dict, current: dict | None) -> dict:
    """A checkpoint's config, with the options added since it was written at the values it trained with."""
    saved = dict(state["config"])
    for key, old_default in (("optimizer", "sgd"), ("sync_batchnorm", False)):  # options added later
        saved.setdefault(key, old_default)
    if saved.get("loss_from") is not None and saved.get("loss_scale") == "normalised" and current["loss_scale"] is None:
        saved["loss_scale"] = None  # written when --loss-from ignored --loss-scale: the loss as it said, as now
    if "augment" not in saved:  # written before --augment existed: those runs trained without augmentation
        no_augmentation = augmentation_for(saved.get("dataset", "")) is None
        saved["augment"] = (current or {}).get("augment", True) if no_augmentation else False
    return saved


def _load_checkpoint(path: Path, config: TrainConfig, model: nn.Module | None = None) -> dict:
    state = _read_checkpoint(path)
    current = config.to_dict()
    saved = _saved_config(state, current)
    differing = sorted(k for k in current if k not in ("device",) and saved.get(k) != current[k]
                       and k != "steps")
    if differing:
        raise ConfigError(f"--resume with different options than the checkpoint in {path.parent}: "
                          f"{', '.join(differing)}; use the same options or another --out")
    if model is not None:
        check_same_model(state.get("model_description"), model, str(path.parent))
    return state
