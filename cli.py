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
from toolkit.runs.config import PRESETS as PRESET_NAMES, click_options
from toolkit.runs.signals import terminate_as_interrupt

def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'the user asked for something wrong' (imported lazily).

    Every toolkit and losses error a user can fix derives from ``UserError``; a missing file is the other.
    """
    from toolkit.errors import UserError
    return (UserError, FileNotFoundError)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation the machine (CPU or GPU) refused: a size the user chose, not a bug."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _int_list(text: str | None, what: str = "step numbers") -> tuple[int, ...]:
    """Comma-separated integers (toolkit.runs.config.parse_int_list), as a click error naming the option."""
    from toolkit.errors import ConfigError
    from toolkit.runs.config import parse_int_list

    try:
        return parse_int_list(text, what)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names, spaces around each and empty entries dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


INTERRUPTED = ("Interrupted; the last checkpoint is kept: rerun lfl train with --resume, or the same lfl study "
               "command (finished runs are reused), to continue.")


class LflGroup(click.Group):
    """The ``lfl`` group: user errors become one line on stderr and exit status 2, never a traceback.

    Handled in ``main`` itself, so the console script and click's ``CliRunner`` behave alike.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with terminate_as_interrupt():  # SIGTERM (pre-emption, kill) as Ctrl-C, in every command
                super().main(args=args, prog_name=prog_name or "lfl", complete_var=complete_var,
                             standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:  # click turns Ctrl-C (and so SIGTERM) into Abort
            interrupted = isinstance(exc.__context__, KeyboardInterrupt)
            click.echo(INTERRUPTED if interrupted else "Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}".replace("\n", " "), err=True)
            sys.exit(2)
        except _user_errors() as exc:
            rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
            click.echo((f"Error: rank {rank}: {exc}" if rank else f"Error: {exc}").replace("\n", " "), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            sys.exit(130)
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            click.echo("Error: not enough memory for what was asked (the allocator refused it): use a smaller "
                       "--batch-size, model or dataset", err=True)
            sys.exit(2)
        if standalone_mode:
            sys.exit(0)


@click.group(cls=LflGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfl")
def cli() -> None:
    """Learn loss functions online (AdaLFL), read them as formulas, compare them."""
    from toolkit.runtime import keep_freed_memory
    keep_freed_memory()  # a CPU step re-faults its freed buffers otherwise (toolkit.runtime.keep_freed_memory)


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML or YAML file setting any option below (and 'preset'); the command line overrides it.")
@click.option("--preset", type=click.Choice(sorted(PRESET_NAMES)), default=None,
              help="Named option values: 'paper' is AdaLFL as published (--loss-scale free, no guard). A config "
                   "file and explicit options win.")
@click_options
@click.option("--seeds", default=None, help="Comma-separated seeds: one run per seed under --out, plus summary.json.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes for --seeds.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory for results and history.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint, with the options saved "
                                             "there (options given must equal them; --steps may extend the run).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out (otherwise it is refused).")
@click.option("--tensorboard", is_flag=True,
              help="Also write the history's numbers as TensorBoard scalars under --out/tensorboard "
                   "(pip install tensorboard).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config_file: str | None, preset: str | None, seeds: str | None, jobs: int, out: str | None, resume: bool,
          overwrite: bool, tensorboard: bool, quiet: bool, **options) -> None:
    """Train a model with a fixed or learned loss; write results.json, loss.json, history.jsonl and metrics.csv
    under --out.

    Every option is declared once in toolkit.runs.config.TrainConfig; defaults < --preset < --config file <
    options typed here (toolkit.runs.config.resolve_config, which the Python API uses too).
    """
    from toolkit.runs.config import parse_int_list, parse_model_options, resolve_config
    from toolkit.runs.run import train as run_training

    seeds_text = seeds
    seed_list = _int_list(seeds_text, what="seeds")
    if seeds_text is not None and not seed_list:
        raise click.BadParameter("--seeds needs at least one seed, e.g. --seeds 0,1,2", param_hint="--seeds")
    if resume and out is None:
        raise click.BadParameter("--resume needs --out DIR of the run to continue", param_hint="--resume")
    if resume and overwrite:
        raise click.BadParameter("choose one of --resume and --overwrite", param_hint="--overwrite")
    if tensorboard and out is None:
        raise click.BadParameter("--tensorboard writes under --out DIR: add --out", param_hint="--tensorboard")
    explicit = {k: v for k, v in options.items() if v is not None}
    if "milestones" in explicit:
        explicit["milestones"] = parse_int_list(explicit["milestones"])
    explicit["model_options"] = parse_model_options(explicit.pop("model_options", ()))
    if not explicit["model_options"]:
        del explicit["model_options"]
    from toolkit.runs.checkpoints import checkpoint_options  # --resume alone: the options the checkpoint trained with
    base = checkpoint_options(out) if resume and out is not None and not seed_list else None
    config = resolve_config(explicit, config_file=config_file, preset=preset, base=base)
    if seed_list and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.BadParameter("--seeds starts one process per seed; under torchrun train one run (--seed)",
                                 param_hint="--seeds")
    if seed_list:
        if out is None:
            raise click.BadParameter("--seeds needs --out DIR for the per-seed runs", param_hint="--seeds")
        from toolkit.runs.sweep import run_seeds
        summary = run_seeds(config, list(seed_list), out_dir=out, jobs=jobs, resume=resume, overwrite=overwrite,
                            progress=not quiet, tensorboard=tensorboard)
        metric = "test_mse" if "test_mse" in summary else "test_error"
        stats = summary[metric]
        click.echo(f"{config.loss}: {metric} {stats['mean']:.4f} ± {stats['std']:.4f} over seeds "
                   f"{','.join(map(str, seed_list))} (worst {stats['max']:.4f})  -> {out}/summary.json")
        return
    from toolkit.meta import distributed
    from toolkit.runtime import resolve_device

    replicas, local_rank = distributed.from_environment()  # torchrun: one data-parallel run over WORLD_SIZE
    from toolkit.runs.run import check_data_parallel
    check_data_parallel(config, replicas)
    try:
        with distributed.joined(replicas, resolve_device(config.device), local_rank=local_rank):
            results = run_training(config, out_dir=out, resume=resume, overwrite=overwrite, progress=not quiet,
                                   replicas=replicas, tensorboard=tensorboard)
    except RuntimeError as exc:
        if not replicas.active:
            raise
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"rank {replicas.rank}: the data-parallel run stopped ({reason}); another "
                                   "process failed: see its message") from None
    if not replicas.is_main:
        return
    metric = "test_error" if results["task"] == "classification" else "test_mse"
    click.echo(f"{results['loss']}: {metric} {results[metric]:.4f}  test_loss {results['test_loss']:.4f}  "
               f"({results['wall_time_s']:.1f} s)" + (f"  -> {out}" if out else ""))


@cli.command()
@click.argument("study_file", metavar="FILE")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Study directory: runs/, report.json, report.md, test_error.png/.svg.")
@click.option("--jobs", default=1, show_default=True, type=int,
              help="Runs at once, each with cpu_count // jobs threads (on Ray: CPUs each task asks for).")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help='Where runs execute: local processes, or Ray tasks (pip install "ray[default]>=2.9").')
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster to submit to (--backend ray; default: start Ray on this machine).")
@click.option("--dry-run", is_flag=True, help="Check the file and list the groups and run counts; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def study(study_file: str, out: str, jobs: int, backend: str, address: str | None, dry_run: bool,
          quiet: bool) -> None:
    """A declared comparison: settings x methods, grids tuned on validation, paired tests over seeds."""
    if dry_run:
        from toolkit.runs.study import count_runs
        from toolkit.runs.study_spec import load_study

        spec = load_study(study_file)
        for group in spec.groups:
            grid = ", ".join(f"{k} in {v}" for k, v in group.grid.items()) or "no grid"
            click.echo(f"{group.setting} / {group.method}: {grid}; {len(spec.seeds)} seeds")
        click.echo(f"{count_runs(spec)} runs at most (runs shared by methods train once); "
                   f"selection seed {spec.selection_seed}")
        return
    from toolkit.runs.study_report import study_command

    command = (f"lfl study {study_file} --out {out}" + (f" --jobs {jobs}" if jobs != 1 else "")
               + (f" --backend {backend}" if backend != "local" else "") + (f" --address {address}" if address else ""))
    report = study_command(study_file, out, jobs=jobs, backend=backend, address=address, progress=not quiet,
                           command=command)
    click.echo((Path(out) / "report.md").read_text(), nl=False)
    failed = sum(len(r.get("failed", {})) for r in report["rows"])
    click.echo(f"{len(report['rows'])} rows in {report['wall_time_s']:.0f} s"
               + (f"; {failed} runs failed (see report.json)" if failed else "") + f"  -> {out}/report.json")


@cli.command()
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets(data_dir: str | None, as_json: bool) -> None:
    """List the datasets, whether their files were found, and where."""
    from toolkit.data.datasets import dataset_status

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
@click.option("--models", "only", default=None, metavar="NAME,NAME",
              help="With --all: only these zoo models (e.g. logreg,mlp).")
@click.option("--dataset-shape", default="1,28,28", show_default=True, help="Input shape of the synthetic batches.")
@click.option("--classes", default=10, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeats", default=None, type=int, help="Timed steps per method (median); default 30, 10 with --all.")
@click.option("--loss-param", default="mlp", show_default=True, type=click.Choice(["mlp", "taylor"]))
@click.option("--loss-scale", default="normalised", show_default=True, type=click.Choice(["normalised", "free"]),
              help="As in lfl train: 'free' times the loss network alone (the paper's AdaLFL).")
@click.option("--breakdown", is_flag=True, help="Also time the default step's parts under the profiler (CPU only).")
@click.option("--floor", is_flag=True, help="The model's primitives (forward, forward+backward, JVP), each AdaLFL "
              "route's floor as their sum, and its measured distance to it, in CE steps.")
@click.option("--ops", is_flag=True, help="aten:: operator calls per step of each route over a CE step's (CPU).")
@click.option("--compile", "compile_step", is_flag=True,
              help="With --floor/--ops: also the guarded default and reverse steps under lfl train --compile.")
@click.option("--routes", default=None, metavar="NAME,NAME",
              help="With --floor/--ops: time only these AdaLFL routes (unguarded, guarded, fd_unguarded, "
              "reverse_unguarded, reverse_guarded; compiled, compiled_reverse with --compile): each is a model copy "
              "timed every round, so fewer take less time and memory.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(model: str, all_models: bool, only: str | None, dataset_shape: str, classes: int, batch_size: int, device: str,
          repeats: int | None, loss_param: str, loss_scale: str, breakdown: bool, floor: bool, ops: bool,
          compile_step: bool, routes: str | None, as_json: bool) -> None:
    """Time a cross-entropy step against AdaLFL steps (default and naive meta-gradient)."""
    from toolkit.runs.bench import ZOO_INPUTS, benchmark_all, benchmark_steps
    from toolkit.runtime import resolve_device

    zoo = tuple(ZOO_INPUTS)
    if only is not None:
        if not all_models:
            raise click.UsageError("--models chooses among the zoo models of --all: add --all")
        zoo = _names(only)
        unknown = [name for name in zoo if name not in ZOO_INPUTS]
        if unknown or not zoo:
            raise click.UsageError(f"unknown zoo model {', '.join(unknown) or repr(only)} in --models: "
                                   f"choose from {', '.join(ZOO_INPUTS)}")
    if floor or ops:
        from toolkit.runs.bench_floor import floor_report
        if breakdown:
            raise click.UsageError("choose one of --breakdown and --floor/--ops")
        models = tuple((name, *ZOO_INPUTS[name]) for name in zoo) if all_models else \
            ((model, tuple(_int_list(dataset_shape)), batch_size),)
        progress = None if as_json else (lambda name: click.echo(f"  measuring {name} ...", err=True))
        repeats = repeats if repeats is not None else (10 if all_models else 30)
        chosen = None if routes is None else _names(routes)
        click.echo(floor_report(floor=floor, ops=ops, models=models, num_outputs=classes, device=resolve_device(device),
                                repeats=repeats, as_json=as_json, progress=progress, loss_param=loss_param,
                                loss_scale=loss_scale, compile=compile_step, routes=chosen))
        return
    if compile_step:
        raise click.UsageError("--compile times the compiled step against its floor: add --floor or --ops")
    if routes is not None:
        raise click.UsageError("--routes chooses the routes of --floor/--ops: add --floor or --ops")
    options = {"device": resolve_device(device), "loss_param": loss_param, "loss_scale": loss_scale,
               "breakdown": breakdown}
    if all_models:
        progress = None if as_json else (lambda name: click.echo(f"  timing {name} ...", err=True))
        rows = benchmark_all(repeats=repeats or 10, progress=progress, models=zoo, **options)
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
    from toolkit.analysis.export import export_loss

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
    if Path(source).is_dir():  # what the descent guard did while this loss trained (toolkit.analysis.rundir)
        from toolkit.analysis.rundir import guard_note, read_run
        guard = guard_note(read_run(source))
        if guard:
            click.echo(guard, err=True)


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the figures.")
@click.option("--format", "formats", default="png,svg", show_default=True, help="Comma-separated: png, svg.")
def plot(runs: tuple[str, ...], out: str, formats: str) -> None:
    """Figures of runs: learning curves, final test errors, and for learned losses their evolution."""
    from toolkit.analysis.plots import plot_runs
    from toolkit.analysis.rundir import find_runs

    paths = plot_runs(find_runs(list(runs)), out, formats=list(_names(formats)))
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
    from toolkit.analysis.compare import compare_runs, format_comparison
    from toolkit.analysis.rundir import find_runs

    found = find_runs(list(runs))
    rows = compare_runs(found, baseline=baseline, metric=metric)
    if fmt == "text":
        from toolkit.analysis.rundir import budget_note
        click.echo(budget_note([r for r in found if r.results]))
    click.echo(format_comparison(rows, fmt, metric=metric), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point (the ``lfl`` console script): :meth:`LflGroup.main` with the process's arguments.

    Given ``argv`` (from Python), it returns on success instead of exiting; errors exit as always.
    """
    cli.main(args=argv, prog_name="lfl", standalone_mode=argv is None)


if __name__ == "__main__":
    main()
