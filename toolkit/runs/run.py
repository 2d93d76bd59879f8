"""One training run end to end: setup, the optional offline phase or search, the loop, and the results.

The run directory's files are named in :mod:`toolkit.layout`; the checkpoint is :mod:`toolkit.runs.checkpoints`,
the starting loss :mod:`toolkit.runs.loss_sources`, the step :mod:`toolkit.runs.steppers`. A run is set up
completely (data, model, loss, a resumed checkpoint validated and loaded) before the first file is written,
so an option, data or checkpoint the run cannot take is refused with every file of the run as it was.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

import losses

from toolkit.data.augment import AugmentedBatches, augmentation_for
from toolkit.data.datasets import Dataset
from toolkit.data.run_data import load_run_data, load_search_data, prepare_run_data
from toolkit.layout import CHECKPOINT, LOCK, LOSS, RESULTS, SNAPSHOTS
from toolkit.meta.adam import all_finite
from toolkit.meta.distributed import SINGLE, Replicas, convert_sync_batchnorm
from toolkit.meta.lookahead import DATA_PARALLEL_ROUTES
from toolkit.meta.offline import offline_initialise
from toolkit.meta.online import NonFiniteError, OnlineLossLearner, frozen_copy, has_trainable_parameters
from toolkit.models.zoo import build_model
from toolkit.runs.checkpoints import data_fingerprint, read_checkpoint, restore, save_checkpoint, validate
from toolkit.errors import ConfigError
from toolkit.runs.common import BatchStream, TrainConfig, evaluate, lr_at, write_json
from toolkit.runs.log import History, RunLog, summary_writer_class
from toolkit.runs.loss_sources import check_finite_at_start, make_loss
from toolkit.runs.reporting import GuardWarning, LossWindow, loss_postfix, run_progress
from toolkit.runs.run_directory import RunDirectory
from toolkit.runs.signals import terminate_as_interrupt
from toolkit.runs.steppers import FixedLossStepper, Stepper
from toolkit.runs.user_model import check_outputs, model_class, reinitialise
from toolkit.runtime import process_device, resolve_device, seed_everything, seed_stream

MIN_EVALUATION_SAMPLES = 10
"""A validation or test split smaller than this cannot measure an error rate: the run is refused."""


def load_run_dataset(config: TrainConfig) -> Dataset:
    """The dataset, splits and normalisation a config names (its seed picks the validation split)."""
    return load_run_data(config)


@dataclass
class Run:
    """What one run is made of once set up, and where it stands (the loop's state, no out-flags)."""

    config: TrainConfig
    data: Dataset
    device: torch.device
    model: nn.Module
    loss: nn.Module
    splits: dict[str, tuple[Tensor, Tensor]]
    train_batches: Callable
    meta_batches: Callable | None
    history: RunLog
    snapshots: History
    replicas: Replicas = SINGLE
    out: Path | None = None
    progress: bool = True
    user_model: bool = False
    prepare: bool = False
    fingerprint: str | None = None
    checkpoint: dict | None = None
    stepper: Stepper | None = None
    window: LossWindow | None = None
    start_step: int = 0
    reached: int = 0
    wall_before: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def checkpointing(self) -> bool:
        return self.out is not None and bool(self.config.checkpoint_every)

    def elapsed(self) -> float:
        """Wall time of the run so far, the resumed checkpoint's included."""
        return time.perf_counter() - self.started_at + self.wall_before

    def save(self, step: int, *, with_stepper: bool = True) -> None:
        save_checkpoint(self.out / CHECKPOINT, config=self.config, phase="train", step=step, model=self.model,
                        loss=self.loss, stepper=self.stepper if with_stepper else None, device=self.device,
                        loss_sums=self.window.sums if with_stepper else None, wall_time_s=self.elapsed(),
                        fingerprint=self.fingerprint)


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
    setup = dict(progress=progress and replicas.is_main, dataset=dataset, initial_loss=initial_loss,
                 replicas=replicas, user_model=model)
    if out_dir is None:
        return _execute(_setup(config, out=None, resume=False, **setup), on_step)
    if not replicas.is_main:  # process 0 owns the run directory; the others only read its checkpoint
        return _execute(_setup(config, out=None, resume=resume, read_from=Path(out_dir), **setup), on_step)
    if tensorboard:
        summary_writer_class()  # a missing package is reported before --overwrite removes anything
    out = Path(out_dir)
    created = not out.exists()
    run = None
    with (RunDirectory(out, resume=resume, overwrite=overwrite), RunLog(out, tensorboard=tensorboard) as log,
          terminate_as_interrupt()):
        try:
            run = _setup(config, out=out, resume=resume, log=log, **setup)  # writes nothing
            return _execute(run, on_step)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the checkpoint stays for --resume
            if run is not None:
                write_json(out / RESULTS, {"status": "interrupted", "step": run.reached, "seed": config.seed,
                                           "config": config.to_dict()})
            raise
        except Exception as exc:
            if run is not None:
                status = "diverged" if isinstance(exc, NonFiniteError) else "failed"
                write_json(out / RESULTS, {"status": status, "error": f"{type(exc).__name__}: {exc}",
                                           "seed": config.seed, "config": config.to_dict()})
            raise
        finally:
            if created and run is None:
                _remove_if_empty(out)


def check_data_parallel(config: TrainConfig, replicas: Replicas) -> None:
    """Refuse options a data-parallel run cannot take. Called before the process group is joined too: an
    error raised by every process at once, before any collective, reaches each as its own message (one
    raised later may cut a peer's collective short and reach it as a lost connection)."""
    if not replicas.active:
        return
    replicas.rows(config.batch_size)  # a batch that does not split evenly is refused before anything runs
    if config.meta_gradient not in DATA_PARALLEL_ROUTES:
        raise ConfigError("a data-parallel run takes --meta-gradient fast (the default) or reverse")


def _remove_if_empty(path: Path) -> None:
    """Remove a directory this run created when nothing but its lock file is in it."""
    try:
        if {p.name for p in path.iterdir()} <= {LOCK}:
            (path / LOCK).unlink(missing_ok=True)
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


def _setup(config: TrainConfig, *, out: Path | None, resume: bool, progress: bool, dataset: Dataset | None,
           initial_loss: nn.Module | None, replicas: Replicas = SINGLE, user_model: nn.Module | None = None,
           read_from: Path | None = None, log: RunLog | None = None) -> Run:
    """Everything before the first write: data, model, loss, batches, and a resumed checkpoint validated and
    loaded. ``read_from``: the run directory whose checkpoint a process other than 0 resumes from; ``log``:
    where the records go (history.jsonl and its CSV and TensorBoard views, under ``out``)."""
    device = resolve_device(config.device)
    if replicas.active:
        check_data_parallel(config, replicas)
        device = process_device(device)
    seed_everything(config.seed)
    data = prepare_run_data(dataset, config) if dataset is not None else load_run_dataset(config)
    _check_splits(data)
    model = _base_model(config, data, user_model, device)
    if replicas.active:
        if config.sync_batchnorm:
            model = convert_sync_batchnorm(model)
        replicas.broadcast_([*model.parameters(), *model.buffers()])  # one starting point, whatever the seeds did
    loss = initial_loss if initial_loss is not None else make_loss(config, data.task, data.num_outputs)
    # A saved loss (float64 formula constants) trains a float32 model in the model's dtype.
    loss = loss.to(device=device, dtype=next(model.parameters()).dtype)
    if config.online and not has_trainable_parameters(loss):
        raise ConfigError(f"the loss to adapt has no trainable parameters ({type(loss).__name__}): "
                          "give a formula with numeric constants, or drop --adapt")
    splits = {name: (split.x.to(device), split.y.to(device))
              for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test),
                                  ("meta", data.meta)) if split is not None}
    if not resume:  # a loss that cannot give one finite step is refused before anything is written
        x, y = splits["train"]
        check_finite_at_start(loss, model, (x[:config.batch_size], y[:config.batch_size]),
                              where=f"--loss-from {config.loss_from}" if config.loss_from else f"--loss {config.loss}")
    train_batches, meta_batches = _batches(config, data.name, splits)
    run = Run(config=config, data=data, device=device, model=model, loss=loss, splits=splits,
              train_batches=train_batches, meta_batches=meta_batches, replicas=replicas, out=out,
              history=log if log is not None else RunLog(None), progress=progress,
              snapshots=History(out / SNAPSHOTS if out is not None else None), user_model=user_model is not None,
              prepare=initial_loss is None and (config.offline_phase or config.loss == "taylorglo"))
    run.window = LossWindow(device)
    read_dir = out if read_from is None else read_from
    if read_dir is not None:
        run.fingerprint = data_fingerprint([(s.x, s.y) for s in (data.train, data.valid, data.test, data.meta)
                                            if s is not None])
    if resume and read_dir is not None and (read_dir / CHECKPOINT).exists():
        _resume(run, read_dir / CHECKPOINT)
    return run


def _batches(config: TrainConfig, dataset_name: str, splits: dict) -> tuple[Callable, Callable | None]:
    """The training batches (augmented where asked) and the meta-objective's batches, each its own seed stream."""
    train_x, train_y = splits["train"]
    train_batches = BatchStream(train_x, train_y, config.batch_size, seed=seed_stream(config.seed, "train_batches"))
    augmentation = augmentation_for(dataset_name) if config.augment else None
    if augmentation is not None:  # training batches only: never validation, test or meta-objective batches
        train_batches = AugmentedBatches(train_batches, augmentation, seed=config.seed)
    if not (config.online or config.offline_phase):
        return train_batches, None
    # --meta-source valid: the validation split's meta part, never its selection part (toolkit.data.selection)
    meta_x, meta_y = splits["meta"] if config.meta_source == "valid" else splits["train"]
    return train_batches, BatchStream(meta_x, meta_y, config.batch_size, seed=seed_stream(config.seed, "meta_batches"))


def _resume(run: Run, path: Path) -> None:
    """Validate the checkpoint at ``path`` and, for one in the ``train`` phase, load it (nothing written)."""
    state = read_checkpoint(path, run.config.to_dict())
    validate(state, path, run.config, model=run.model, fingerprint=run.fingerprint)
    run.history.history.check()
    run.snapshots.check()
    run.checkpoint = state
    run.wall_before = float(state["wall_time_s"])
    if state["phase"] != "train":
        return
    run.stepper = _make_stepper(run)
    sums = restore(state, path, model=run.model, loss=run.loss, stepper=run.stepper, device=run.device)
    run.window = LossWindow(run.device, sums)
    run.start_step = run.reached = state["step"]


def _make_stepper(run: Run) -> Stepper:
    """The online learner (``--adapt`` / AdaLFL) or the base optimiser on a fixed (or frozen learned) loss."""
    config, loss = run.config, run.loss
    if config.online:
        learner = OnlineLossLearner(run.model, loss, rule=config.rule(), online_meta_lr=config.online_meta_lr,
                                    meta_interval=config.meta_interval, meta_clip=config.meta_clip,
                                    meta_gradient=config.meta_gradient, task=run.task,
                                    descent_guard=config.descent_guard, compile=config.compile,
                                    snapshot_every=0,  # the run writes loss_snapshots.jsonl itself
                                    replicas=run.replicas)
        return learner  # the learner is a stepper itself
    # A loss from a learned source is guarded as a learned loss whether or not its formula kept a constant.
    learned = run.config.learned or has_trainable_parameters(loss)
    return FixedLossStepper(run.model, frozen_copy(loss) if learned else loss, config, task=run.task, learned=learned,
                            guard_task=run.task if learned and config.descent_guard else None, replicas=run.replicas)


def _execute(run: Run, on_step: Callable[[int], None] | None) -> dict:
    """The run after setup: its files begun, the offline phase or search, the loop, the results."""
    resumed = run.checkpoint is not None
    run.history.start(resume=resumed)
    if not resumed and run.out is not None:
        (run.out / SNAPSHOTS).unlink(missing_ok=True)
    if run.prepare and (not resumed or run.checkpoint["phase"] == "init"):
        _prepare(run)
    if run.stepper is None:
        run.stepper = _make_stepper(run)
    if run.start_step or (resumed and run.checkpoint["phase"] == "train"):
        run.history.truncate_after(run.start_step, ("train", "eval"))
        run.snapshots.truncate_after(run.start_step, "train")
    elif run.config.learned:
        run.snapshots.append({"phase": "train", "step": 0, "loss": losses.loss_to_dict(run.loss, formula=False)})
    guard_warning = GuardWarning()
    _loop(run, guard_warning, on_step)
    return _finish(run, guard_warning)


def _prepare(run: Run) -> None:
    """The TaylorGLO search (once, on process 0; each fitness run is single-process) or the offline phase."""
    if run.config.loss == "taylorglo":
        searched = _search(run.config, run.task, run.history, run.progress) if run.replicas.is_main else None
        run.loss = _shared_loss(searched, run.replicas).to(device=run.device,
                                                            dtype=next(run.model.parameters()).dtype)
    else:
        _initialise(run)
    if run.checkpointing:
        run.save(0, with_stepper=False)


def _loop(run: Run, guard_warning: GuardWarning, on_step: Callable[[int], None] | None) -> None:
    """Steps ``start_step`` to ``config.steps``: the step, the records, snapshots, evaluations, checkpoints."""
    config, stepper, model = run.config, run.stepper, run.model
    bar = _progress_bar(config.steps, run.start_step, run.progress, every=config.log_every)
    model.train()
    for step in range(run.start_step, config.steps):
        valid_batch = run.meta_batches(step) if run.meta_batches is not None else None
        logging = (step + 1) % config.log_every == 0 or step + 1 == config.steps
        info = stepper.step(run.train_batches(step), valid_batch, lr=lr_at(config, step), diagnostics=logging)
        if run.replicas.active and not config.sync_batchnorm:  # per-process BatchNorm: process 0's statistics
            run.replicas.broadcast_(list(model.buffers()))
        run.window.add(info)
        done = run.reached = step + 1
        if logging:
            record = _log_record(config, done, info, run.window, stepper)
            run.history.append(record)
            _check_finite(model, done, config)
            bar.set_postfix(**loss_postfix(record), refresh=False)
            guard_warning.check_summary(stepper.summary(), done)
        _after_step(run, done, bar)
        bar.update(1)
        if on_step is not None:
            on_step(done)
    bar.close()


def _after_step(run: Run, done: int, bar) -> None:
    """The periodic work after step ``done``: a loss snapshot, an evaluation, a checkpoint."""
    config = run.config
    if config.learned and config.snapshot_every and done % config.snapshot_every == 0:
        run.snapshots.append({"phase": "train", "step": done, "loss": losses.loss_to_dict(run.loss, formula=False)})
    if config.eval_every and done % config.eval_every == 0 and done != config.steps:
        metrics = {f"valid_{k}": v for k, v in evaluate(run.model, *run.splits["valid"], task=run.task).items()}
        run.history.append({"phase": "eval", "step": done, **metrics})
        bar.set_postfix(**loss_postfix(metrics), refresh=False)
    if run.checkpointing and done % config.checkpoint_every == 0:
        run.save(done)


def _finish(run: Run, guard_warning: GuardWarning) -> dict:
    """results.json, loss.json, the final evaluation record and the last checkpoint."""
    config = run.config
    results = _final_results(config, run.data, run.model, *run.splits["valid"], *run.splits["test"], run.stepper,
                             run.device, run.elapsed())
    guard_warning.check_summary(results, config.steps)
    results.update(world_size=run.replicas.world_size, warnings=guard_warning.messages,
                   **({"model": model_class(run.model), "user_model": True} if run.user_model else {}))
    if run.out is not None:
        run.history.truncate_after(config.steps - 1, "eval")  # a resumed finished run: no second record
        run.history.append({"phase": "eval", "step": config.steps,
                            **{k: v for k, v in results.items() if k.startswith("valid_")}})
        losses.save_loss(run.loss, run.out / LOSS)
        write_json(run.out / RESULTS, results)
        if run.checkpointing:
            run.save(config.steps)
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


def _initialise(run: Run) -> None:
    """The offline phase of AdaLFL / ML3, with its records in the history."""
    config = run.config
    run.history.truncate_after(-1, "init")
    run.snapshots.truncate_after(-1, "train")
    bar = _progress_bar(config.init_steps, 0, run.progress, desc="offline init")

    def report(step: int, record: dict) -> None:
        run.history.append({"phase": "init", **record})
        bar.update(step - bar.n)
        bar.set_postfix(meta_loss=f"{record['meta_loss']:.4f}", refresh=False)

    def fresh_initialisation(scratch: nn.Module) -> None:
        """The model builder's own initialisation (a user model's layers' own), drawn anew (global RNG)."""
        if run.user_model:
            return reinitialise(scratch)
        fresh = build_model(config.model, input_shape=run.data.input_shape, num_outputs=run.data.num_outputs,
                            **config.model_options)
        scratch.load_state_dict(fresh.state_dict())

    offline_initialise(run.model, run.loss, lambda s: (run.train_batches(s), run.meta_batches(s)),
                       steps=config.init_steps, rule=config.rule(), meta_lr=config.meta_lr,
                       meta_clip=config.meta_clip, meta_gradient=config.meta_gradient, task=run.task,
                       progress=report, reset=fresh_initialisation, descent_guard=config.descent_guard,
                       replicas=run.replicas)
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
    record.update(stepper.diagnostics())
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


__all__ = ["train", "load_run_dataset", "check_data_parallel", "MIN_EVALUATION_SAMPLES", "Run"]
