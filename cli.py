"""The ``lfl`` command line: wiring only; the work lives in ``toolkit`` and ``losses``.

Every user error (bad option, unknown name, missing or corrupted file) ends in one
line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from toolkit import __version__

def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'the user asked for something wrong' (imported lazily)."""
    from losses import LossFileError
    from toolkit.data import DataError
    from toolkit.models import ModelError
    from toolkit.online import NonFiniteError
    from toolkit.train import ConfigError
    from toolkit.rundir import AnalysisError
    return (DataError, ModelError, ConfigError, LossFileError, NonFiniteError, FileNotFoundError, AnalysisError)


def _read_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager --config: a TOML or YAML file whose keys become the command's defaults."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"config file {path} does not exist", param_hint="--config")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise click.BadParameter("YAML config needs PyYAML: pip install pyyaml (or use TOML)") from None
            data = yaml.safe_load(text) or {}
        else:
            import tomllib
            data = tomllib.loads(text)
    except click.BadParameter:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error is one user-facing message
        raise click.BadParameter(f"cannot parse {path}: {exc}".replace("\n", " "), param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a table of option = value", param_hint="--config")
    params = {p.name: p for p in ctx.command.params}
    defaults = {}
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name not in params or name == "config":
            raise click.BadParameter(f"unknown option {key!r} in {path}", param_hint="--config")
        if isinstance(val, dict):
            raise click.BadParameter(f"option {key!r} in {path} must be a value, not a table", param_hint="--config")
        _check_config_value(params[name], val, path)
        if params[name].multiple and not isinstance(val, list):
            val = [val]
        elif isinstance(val, list) and not params[name].multiple:
            val = ",".join(str(v) for v in val)
        defaults[name] = val
    preset = defaults.pop("preset", None)
    if preset is not None:
        from toolkit.train import PRESETS
        if preset not in PRESETS:
            raise click.BadParameter(f"unknown preset {preset!r} in {path}; choose {', '.join(PRESETS)}",
                                     param_hint="--config")
        _add_preset(defaults, preset)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _check_config_value(param: click.Parameter, value: object, path: Path) -> None:
    """A config value must have the option's type: 5.7 is no step count and 1 is no flag (no truncation)."""
    from toolkit.train import ConfigError, coerce_option

    declared = {click.INT: "int", click.FLOAT: "float", click.BOOL: "bool"}.get(param.type)
    if getattr(param, "is_flag", False):
        declared = "bool"
    if declared is None or isinstance(value, list):
        return
    try:
        coerce_option(param.name, value, declared)
    except ConfigError as exc:
        raise click.BadParameter(f"{exc} (in {path})", param_hint="--config") from None


def _add_preset(defaults: dict, preset: str) -> dict:
    """Fill ``defaults`` with a preset's option values, keeping the values already there."""
    from toolkit.train import PRESETS
    for name, val in PRESETS[preset].items():
        defaults.setdefault(name, val)
    return defaults


def _apply_preset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager --preset: its option values become defaults below any --config file and the command line."""
    if value is not None:
        ctx.default_map = _add_preset(dict(ctx.default_map or {}), value)
    return value


def _int_list(text: str | None, what: str = "step numbers") -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {what}, got {text!r}") from None


def _model_options(items: tuple[str, ...]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--model-option")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = tuple(value) if isinstance(value, list) else value
    return options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfl")
def cli() -> None:
    """Learn loss functions online (AdaLFL), read them as formulas, compare them."""


@cli.command()
@click.option("--config", type=click.Path(dir_okay=False), callback=_read_config_file, is_eager=True,
              expose_value=False, help="TOML or YAML file setting any option below; the command line overrides it.")
@click.option("--preset", type=click.Choice(["default", "paper"]), callback=_apply_preset, is_eager=True,
              expose_value=False,
              help="Named option values: 'paper' is AdaLFL as published (--loss-scale free). Explicit options win.")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="mnist, fashion-mnist, cifar10, cifar100, svhn, digits, wine, breast_cancer, diabetes, csv:PATH")
@click.option("--target", default=None, help="Target column of a csv: dataset (default: the last column).")
@click.option("--task", type=click.Choice(["classification", "regression"]), default=None,
              help="Task of a csv: dataset (default: inferred).")
@click.option("--model", default="lenet5", show_default=True, help="Model name; see toolkit.models.MODEL_NAMES.")
@click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="Model option, e.g. --model-option depth=16 --model-option 'hidden=[100,100]'.")
@click.option("--loss", default="ce", show_default=True,
              type=click.Choice(["ce", "mse", "adalfl", "ml3", "taylorglo"]),
              help="ce/mse: fixed; ml3: offline-learned then fixed; adalfl: offline then online; "
                   "taylorglo: CMA-ES search, then fixed.")
@click.option("--loss-from", default=None, metavar="FILE_OR_FORMULA",
              help="Reuse a loss: a loss.json, a run directory, a file holding a SymPy formula, or a formula "
                   "in y_pred and y. Fixed, unless --adapt.")
@click.option("--adapt", is_flag=True, help="With --loss-from: keep learning the loss online (no offline phase).")
@click.option("--generations", default=10, show_default=True, type=int, help="TaylorGLO: CMA-ES generations.")
@click.option("--population", default=None, type=int, help="TaylorGLO: candidates per generation (default 10).")
@click.option("--fitness-steps", default=200, show_default=True, type=int,
              help="TaylorGLO: training steps per candidate evaluation.")
@click.option("--search-jobs", default=1, show_default=True, type=int,
              help="TaylorGLO: parallel processes evaluating candidates.")
@click.option("--invariant/--no-invariant", default=True, show_default=True,
              help="TaylorGLO: reject candidates whose gradient does not favour the true class, untrained.")
@click.option("--loss-param", default="mlp", show_default=True, type=click.Choice(["mlp", "taylor"]),
              help="Parameterisation of a learned loss.")
@click.option("--loss-scale", default="normalised", show_default=True, type=click.Choice(["normalised", "free"]),
              help="adalfl/ml3: 'normalised' takes the gradient's direction from the learned loss and its size from "
                   "the task loss times a learned scale in [1/--max-scale, --max-scale]; 'free' uses the loss as is.")
@click.option("--descent-guard/--no-descent-guard", default=True, show_default=True,
              help="Learned losses: reflect each sample's gradient that points uphill for the task loss, so no step "
                   "trains a sample backwards (off in --preset paper).")
@click.option("--max-scale", default=1.0, show_default=True, type=float,
              help="Bound on the learned scale of a normalised loss (1 fixes it at the task loss's).")
@click.option("--steps", default=1000, show_default=True, type=int, help="Base training steps.")
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=0.01, show_default=True, type=float, help="Base learning rate.")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adam", "adamw"]),
              help="Base optimiser, as torch.optim's SGD, Adam or AdamW (betas 0.9, 0.999); learned losses "
                   "differentiate through it.")
@click.option("--momentum", default=0.0, show_default=True, type=float, help="SGD momentum.")
@click.option("--nesterov/--no-nesterov", default=False, show_default=True)
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--milestones", default="", help="Comma-separated steps where the lr is multiplied by --gamma.")
@click.option("--gamma", default=0.1, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--seeds", default=None, help="Comma-separated seeds: one run per seed under --out, plus summary.json.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes for --seeds.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--valid-fraction", default=0.1, show_default=True, type=float)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="The dataset's standard training augmentation: random crops of the 4-pixel zero-padded image "
                   "and horizontal flips for CIFAR-10/100, crops only for SVHN; no effect on other datasets.")
@click.option("--init-steps", default=2500, show_default=True, type=int, help="Offline initialisation meta steps.")
@click.option("--meta-lr", default=1e-3, show_default=True, type=float,
              help="Adam learning rate of the loss in the offline phase.")
@click.option("--online-meta-lr", default=1e-4, show_default=True, type=float,
              help="Adam learning rate of the loss's online updates (adalfl, --adapt).")
@click.option("--meta-interval", default=1, show_default=True, type=int, help="Meta step every k base steps.")
@click.option("--meta-clip", default=None, type=float, help="Clip the meta-gradient to this global norm.")
@click.option("--meta-gradient", default="fast", show_default=True, type=click.Choice(["fast", "naive"]))
@click.option("--meta-source", default="valid", show_default=True, type=click.Choice(["valid", "train"]),
              help="Where meta-objective batches come from.")
@click.option("--eval-every", default=0, show_default=True, type=int, help="Validation every N steps (0: at the end).")
@click.option("--log-every", default=50, show_default=True, type=int, help="History record every N steps.")
@click.option("--checkpoint-every", default=500, show_default=True, type=int, help="0 disables checkpoints.")
@click.option("--snapshot-every", default=100, show_default=True, type=int, help="Learned-loss snapshot every N steps.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory for results and history.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out (otherwise it is refused).")
@click.option("--tensorboard", is_flag=True,
              help="Also write the history's numbers as TensorBoard scalars under --out/tensorboard "
                   "(pip install tensorboard).")
@click.option("--sync-batchnorm/--no-sync-batchnorm", default=False, show_default=True,
              help="Under torchrun: BatchNorm statistics of the global batch instead of each process's share.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(**options) -> None:
    """Train a model with a fixed or learned loss; write results.json, loss.json, history.jsonl and metrics.csv
    under --out."""
    from toolkit.run import train as run_training
    from toolkit.train import TrainConfig

    out, resume, quiet = options.pop("out"), options.pop("resume"), options.pop("quiet")
    overwrite, tensorboard = options.pop("overwrite"), options.pop("tensorboard")
    seeds_text, jobs = options.pop("seeds"), options.pop("jobs")
    seeds = _int_list(seeds_text, what="seeds")
    if seeds_text is not None and not seeds:
        raise click.BadParameter("--seeds needs at least one seed, e.g. --seeds 0,1,2", param_hint="--seeds")
    if resume and out is None:
        raise click.BadParameter("--resume needs --out DIR of the run to continue", param_hint="--resume")
    if resume and overwrite:
        raise click.BadParameter("choose one of --resume and --overwrite", param_hint="--overwrite")
    if tensorboard and out is None:
        raise click.BadParameter("--tensorboard writes under --out DIR: add --out", param_hint="--tensorboard")
    options["milestones"] = _int_list(options["milestones"])
    options["model_options"] = _model_options(options.pop("model_option"))
    config = TrainConfig(**options)
    if seeds and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.BadParameter("--seeds starts one process per seed; under torchrun train one run (--seed)",
                                 param_hint="--seeds")
    if seeds:
        if out is None:
            raise click.BadParameter("--seeds needs --out DIR for the per-seed runs", param_hint="--seeds")
        from toolkit.sweep import run_seeds
        summary = run_seeds(config, list(seeds), out_dir=out, jobs=jobs, resume=resume, overwrite=overwrite,
                            progress=not quiet, tensorboard=tensorboard)
        metric = "test_mse" if "test_mse" in summary else "test_error"
        stats = summary[metric]
        click.echo(f"{config.loss}: {metric} {stats['mean']:.4f} ± {stats['std']:.4f} over seeds "
                   f"{','.join(map(str, seeds))} (worst {stats['max']:.4f})  -> {out}/summary.json")
        return
    from toolkit import distributed

    replicas, local_rank = distributed.from_environment()
    if replicas.active:  # launched by torchrun: one data-parallel run over WORLD_SIZE processes
        from toolkit.train import resolve_device
        device = resolve_device(config.device)
        if device.type == "cuda":
            import torch
            device = torch.device("cuda", local_rank or 0)
        distributed.initialise(replicas, device)
    try:
        results = run_training(config, out_dir=out, resume=resume, overwrite=overwrite, progress=not quiet,
                               replicas=replicas, tensorboard=tensorboard)
    except RuntimeError as exc:
        if not replicas.active:
            raise
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"rank {replicas.rank}: the data-parallel run stopped ({reason}); another "
                                   "process failed: see its message") from None
    finally:
        distributed.shutdown(replicas)
    if not replicas.is_main:
        return
    metric = "test_error" if results["task"] == "classification" else "test_mse"
    click.echo(f"{results['loss']}: {metric} {results[metric]:.4f}  test_loss {results['test_loss']:.4f}  "
               f"({results['wall_time_s']:.1f} s)" + (f"  -> {out}" if out else ""))


@cli.command()
@click.argument("study_file", metavar="FILE")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Study directory: runs/, report.json, report.md, test_error.png/.svg.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Runs in parallel processes.")
@click.option("--dry-run", is_flag=True, help="Check the file and list the groups and run counts; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def study(study_file: str, out: str, jobs: int, dry_run: bool, quiet: bool) -> None:
    """A declared comparison: settings x methods, grids tuned on validation, paired tests over seeds."""
    if dry_run:
        from toolkit.study import count_runs
        from toolkit.study_spec import load_study

        spec = load_study(study_file)
        for group in spec.groups:
            grid = ", ".join(f"{k} in {v}" for k, v in group.grid.items()) or "no grid"
            click.echo(f"{group.setting} / {group.method}: {grid}; {len(spec.seeds)} seeds")
        click.echo(f"{count_runs(spec)} runs at most (runs shared by methods train once); "
                   f"selection seed {spec.selection_seed}")
        return
    from toolkit.study_report import study_command

    command = f"lfl study {study_file} --out {out}" + (f" --jobs {jobs}" if jobs != 1 else "")
    report = study_command(study_file, out, jobs=jobs, progress=not quiet, command=command)
    click.echo((Path(out) / "report.md").read_text(), nl=False)
    failed = sum(len(r.get("failed", {})) for r in report["rows"])
    click.echo(f"{len(report['rows'])} rows in {report['wall_time_s']:.0f} s"
               + (f"; {failed} runs failed (see report.json)" if failed else "") + f"  -> {out}/report.json")


@cli.command()
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets(data_dir: str | None, as_json: bool) -> None:
    """List the datasets, whether their files were found, and where."""
    from toolkit.data import dataset_status

    rows = dataset_status(data_dir=data_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        where = row["where"] if row["found"] else row.get("hint", "not found")
        click.echo(f"{row['name']:<14} {row['task']:<15} {'found' if row['found'] else 'missing':<8} {where}")


@cli.command()
@click.option("--model", default="lenet5", show_default=True)
@click.option("--all", "all_models", is_flag=True,
              help="Every zoo model at its benchmark input (MNIST shapes, batch 128; CIFAR shapes, batch 32).")
@click.option("--dataset-shape", default="1,28,28", show_default=True, help="Input shape of the synthetic batches.")
@click.option("--classes", default=10, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=None, type=int, help="Timed steps per method (median); default 30, 10 with --all.")
@click.option("--loss-param", default="mlp", show_default=True, type=click.Choice(["mlp", "taylor"]))
@click.option("--loss-scale", default="normalised", show_default=True, type=click.Choice(["normalised", "free"]),
              help="As in lfl train: 'free' times the loss network alone (the paper's AdaLFL).")
@click.option("--breakdown", is_flag=True, help="Also time the default step's parts under the profiler (CPU only).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(model: str, all_models: bool, dataset_shape: str, classes: int, batch_size: int, device: str,
          repeats: int | None, loss_param: str, loss_scale: str, breakdown: bool, as_json: bool) -> None:
    """Time a cross-entropy step against AdaLFL steps (default and naive meta-gradient)."""
    from toolkit.bench import benchmark_all, benchmark_steps
    from toolkit.train import resolve_device

    options = {"device": resolve_device(device), "loss_param": loss_param, "loss_scale": loss_scale,
               "breakdown": breakdown}
    if all_models:
        progress = None if as_json else (lambda name: click.echo(f"  timing {name} ...", err=True))
        rows = benchmark_all(repeats=repeats or 10, progress=progress, **options)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'model':<11} {'input':<9} {'batch':>5} {'CE ms':>8} {'default':>8} {'unguarded':>9} "
                   f"{'naive':>6} {'CE MB':>7} {'mem default':>11} {'mem naive':>9}")
        for row in rows:
            click.echo(f"{row['model']:<11} {'x'.join(map(str, row['input_shape'])):<9} {row['batch_size']:>5} "
                       f"{row['ce_step_s'] * 1e3:8.2f} {row['fast_ratio']:7.2f}x {row['fast_unguarded_ratio']:8.2f}x "
                       f"{row['naive_ratio']:5.2f}x {row['ce_peak_mb']:7.1f} {row['fast_memory_ratio']:10.2f}x "
                       f"{row['naive_memory_ratio']:8.2f}x")
        return
    repeats = repeats or 30
    shape = _int_list(dataset_shape)
    result = benchmark_steps(model=model, input_shape=shape, num_outputs=classes, batch_size=batch_size,
                             repeats=repeats, **options)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{model}, batch {batch_size}, {result['device']}, median of {repeats}:")
    for key in ("ce", "fast", "fast_unguarded", "naive"):
        ratio = 1.0 if key == "ce" else result[f"{key}_ratio"]
        click.echo(f"  {key:<15} {result[f'{key}_step_s'] * 1e3:8.2f} ms  {ratio:5.2f}x  "
                   f"peak {result[f'{key}_peak_mb']:.1f} MB")
    if breakdown:
        parts = result["breakdown"]
        click.echo(f"default step by part, under the profiler (CE step {parts['ce_step_ms']:.2f} ms, "
                   f"default step {parts['fast_step_ms']:.2f} ms):")
        for name, ms in parts["phases_ms"].items():
            click.echo(f"  {name:<15} {ms:8.2f} ms  {parts['phases_ratio'][name]:5.2f}x")


def _domain(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI (two numbers), got {text!r}", param_hint="--domain") from None
    return lo, hi


@cli.command()
@click.argument("source", required=False, metavar="RUN_OR_LOSS")
@click.option("--format", "fmt", default="sympy", show_default=True,
              type=click.Choice(["sympy", "latex", "python", "json"]), help="Output format.")
@click.option("--approx", is_flag=True, help="A compact fitted formula instead of the exact network.")
@click.option("--step", type=int, default=None, help="The loss snapshot after this many training steps.")
@click.option("--max-terms", default=12, show_default=True, type=int, help="--approx: most terms in the formula.")
@click.option("--target-r2", default=0.9995, show_default=True, type=float,
              help="--approx: R² each part must reach; fewer terms win.")
@click.option("--domain", default=None, metavar="LO,HI",
              help="--approx: y_pred interval (default 0,1; regression -3,3 for y and y_pred).")
@click.option("--taylor", "taylor_order", type=int, default=None, metavar="ORDER",
              help="The Taylor polynomial of this order around --around instead.")
@click.option("--around", default=0.5, show_default=True, type=float, help="--taylor: the y_pred expansion point.")
@click.option("--around-y", default=None, type=float,
              help="--taylor: also expand in y around this value (needed for regression).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Write to a file, not stdout.")
def export(source: str | None, fmt: str, approx: bool, step: int | None, max_terms: int, target_r2: float,
           domain: str | None, taylor_order: int | None, around: float, around_y: float | None,
           output: str | None) -> None:
    """Print a learned loss (a run directory or loss.json) as a formula: exact, --approx or --taylor."""
    from toolkit.export import export_loss

    if source is None:
        raise click.UsageError("lfl export needs RUN_OR_LOSS: a run directory or a loss .json file")
    if approx and taylor_order is not None:
        raise click.UsageError("choose one of --approx and --taylor")
    text, note = export_loss(source, fmt=fmt, step=step, approx=approx, max_terms=max_terms, target_r2=target_r2,
                             domain=_domain(domain), taylor_order=taylor_order, around=around, around_y=around_y)
    if output:
        Path(output).write_text(text if text.endswith("\n") else text + "\n")
    else:
        click.echo(text)
    if note:
        click.echo(note, err=True)


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the figures.")
@click.option("--format", "formats", default="png,svg", show_default=True, help="Comma-separated: png, svg.")
def plot(runs: tuple[str, ...], out: str, formats: str) -> None:
    """Figures of runs: learning curves, final test errors, and for learned losses their evolution."""
    from toolkit.plots import plot_runs
    from toolkit.rundir import find_runs

    paths = plot_runs(find_runs(list(runs)), out, formats=[f.strip() for f in formats.split(",") if f.strip()])
    for path in paths:
        click.echo(str(path))


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "markdown", "csv"]))
@click.option("--baseline", default="ce", show_default=True,
              help="Method the others are tested against (ce falls back to mse for regression).")
@click.option("--metric", default="test_error", show_default=True, help="A key of results.json.")
def compare(runs: tuple[str, ...], fmt: str, baseline: str, metric: str) -> None:
    """Mean ± std of the test error per method across seeds, with paired tests against a baseline."""
    from toolkit.compare import compare_runs, format_comparison
    from toolkit.rundir import find_runs

    found = find_runs(list(runs))
    rows = compare_runs(found, baseline=baseline, metric=metric)
    if fmt == "text":
        from toolkit.rundir import budget_note
        click.echo(budget_note([r for r in found if r.results]))
    click.echo(format_comparison(rows, fmt, metric=metric), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group, turning user errors into one line and exit status 2."""
    try:
        cli.main(args=argv, prog_name="lfl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}".replace("\n", " "), err=True)
        sys.exit(2)
    except _user_errors() as exc:
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
        click.echo((f"Error: rank {rank}: {exc}" if rank else f"Error: {exc}").replace("\n", " "), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted; rerun with --resume to continue from the last checkpoint.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
