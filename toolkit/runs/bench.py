"""Step timing for ``lfl bench``: cross-entropy SGD against AdaLFL (default and naive meta-gradient).

All three run in one process on the same model architecture and the same batches,
interleaved round by round so machine noise hits them alike; each figure is the
median over repeats, and speeds are reported as ratios to the cross-entropy step.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch

import losses

from toolkit.meta.lookahead import PHASES
from toolkit.models.zoo import build_model
from toolkit.meta.online import OnlineLossLearner
from toolkit.meta.rules import SGDRule
from toolkit.runs.steppers import FixedLossStepper
from toolkit.errors import ConfigError
from toolkit.runs.common import TrainConfig


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device, fn) -> float:
    """Peak memory of one call: CUDA allocator peak, or the CPU allocator's via the profiler."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _synchronise(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations positive, frees negative
        peak = max(peak, live)
    return peak / 2**20


def check_sizes(*, batch_size: int, repeats: int, num_outputs: int, input_shape) -> None:
    """Refuse sizes below 1 with the option's name (a :class:`ConfigError`)."""
    for name, value in (("--batch-size", batch_size), ("--repeats", repeats), ("--classes", num_outputs)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not input_shape or any(d < 1 for d in input_shape):
        raise ConfigError(f"--dataset-shape must be positive sizes such as 1,28,28; got {tuple(input_shape)}")


STEPPERS = ("ce", "fast", "naive", "fast-unguarded", "fd-unguarded")
"""What :func:`steppers_and_batches` builds by default: cross-entropy SGD, AdaLFL's default route with the descent
guard ("fast", as ``lfl train`` runs it), the unrolled reference ("naive", guarded), the default
route without the guard (``--no-descent-guard``) and the finite-difference tangent without it. It also builds,
when named, "reverse" and "reverse-unguarded" (``--meta-gradient reverse``), and "fast-compiled" and
"reverse-compiled" (the guarded routes with ``--compile``)."""


def steppers_and_batches(*, model: str, input_shape, num_outputs: int, batch_size: int, device: torch.device,
                         loss_param: str = "mlp", loss_scale: str = "normalised", seed: int = 0,
                         names: tuple[str, ...] = STEPPERS, n_batches: int = 8):
    """Steppers of :data:`STEPPERS` on copies of one freshly built model, and random batches.

    Returns (steppers by name, training batches, validation batches, the model they copy).
    ``loss_scale`` is the learned loss's as in ``lfl train`` ("normalised": wrapped in
    ``losses.GradientScaledLoss``; "free": the loss network alone, as in the paper).
    """
    torch.manual_seed(seed)
    base = build_model(model, input_shape=tuple(input_shape), num_outputs=num_outputs).to(device)
    make_x = lambda: torch.randn(batch_size, *input_shape, device=device)  # noqa: E731
    make_y = lambda: torch.randint(0, num_outputs, (batch_size,), device=device)  # noqa: E731
    train = [(make_x(), make_y()) for _ in range(n_batches)]
    valid = [(make_x(), make_y()) for _ in range(n_batches)]
    loss = losses.MLPLoss() if loss_param == "mlp" else losses.TaylorLoss.taylorglo()
    if loss_scale == "normalised":
        loss = losses.GradientScaledLoss(loss)
    elif loss_scale != "free":
        raise ValueError(f"loss_scale must be 'normalised' or 'free', got {loss_scale!r}")
    rule = SGDRule(lr=0.01)
    routes = {"fast": ("fast", True), "naive": ("naive", True), "fast-unguarded": ("fast", False),
              "fd-unguarded": ("fd", False), "reverse": ("reverse", True), "reverse-unguarded": ("reverse", False),
              "fast-compiled": ("fast", True), "reverse-compiled": ("reverse", True)}
    steppers = {}
    for name in names:
        if name == "ce":
            steppers[name] = FixedLossStepper(copy.deepcopy(base), losses.CrossEntropyLoss().to(device),
                                              TrainConfig(lr=0.01))
        else:
            route, guard = routes[name]
            steppers[name] = OnlineLossLearner(copy.deepcopy(base), copy.deepcopy(loss).to(device), rule=rule,
                                               meta_gradient=route, snapshot_every=0, descent_guard=guard,
                                               compile=name.endswith("-compiled"))
    return steppers, train, valid, base


def benchmark_steps(*, model: str = "lenet5", input_shape=(1, 28, 28), num_outputs: int = 10,
                    batch_size: int = 128, device: torch.device = torch.device("cpu"), repeats: int = 30,
                    warmup: int = 5, loss_param: str = "mlp", loss_scale: str = "normalised",
                    seed: int = 0, breakdown: bool = False) -> dict:
    """Median step times of CE-SGD, AdaLFL-fast and AdaLFL-naive, and their ratios.

    Separate validation batches are used for the meta-objective, as in training.
    ``loss_scale`` is the learned loss's as in ``lfl train`` ("normalised": wrapped in
    ``losses.GradientScaledLoss``; "free": the loss network alone, as in the paper).
    Returns a JSON-ready dict with ``ce_step_s``, ``fast_step_s``, ``naive_step_s``,
    ``fast_ratio``, ``naive_ratio`` and peak memory per method (MB, and as ratios to CE's);
    ``fast`` is the default route (:func:`toolkit.meta.lookahead.meta_gradient`) with the descent
    guard, as ``lfl train`` runs it, and ``fast_unguarded_*`` the same without the guard
    (``--no-descent-guard``). The naive route runs with the guard too.

    ``breakdown`` (CPU only) adds ``breakdown``: the fast step's parts (:data:`toolkit.meta.lookahead.PHASES`,
    plus ``other``: the meta update, the commit and the skip counters), in ms per step and as
    ratios to the CE step, all measured under ``torch.profiler``, which inflates small operations.
    """
    if breakdown and device.type != "cpu":
        raise ConfigError("the breakdown times CPU work only: run it with --device cpu")
    check_sizes(batch_size=batch_size, repeats=repeats, num_outputs=num_outputs, input_shape=input_shape)
    steppers, train, valid, _ = steppers_and_batches(
        model=model, input_shape=input_shape, num_outputs=num_outputs, batch_size=batch_size, device=device,
        loss_param=loss_param, loss_scale=loss_scale, seed=seed, names=("ce", "fast", "naive", "fast-unguarded"))
    n_batches = len(train)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for i in range(warmup + repeats):
        for name, stepper in steppers.items():
            batch = (train[i % n_batches], valid[i % n_batches])
            _synchronise(device)
            start = time.perf_counter()
            stepper.step(*batch, lr=0.01)
            _synchronise(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    result = {"model": model, "batch_size": batch_size, "device": str(device), "repeats": repeats,
              "loss_param": loss_param, "loss_scale": loss_scale, "threads": torch.get_num_threads()}
    for name, stepper in steppers.items():
        key = name.replace("-", "_")
        result[f"{key}_step_s"] = statistics.median(times[name])
        result[f"{key}_peak_mb"] = _peak_memory_mb(device, lambda: stepper.step(train[0], valid[0], lr=0.01))
    for key in ("fast", "naive", "fast_unguarded"):
        result[f"{key}_ratio"] = result[f"{key}_step_s"] / result["ce_step_s"]
        result[f"{key}_memory_ratio"] = result[f"{key}_peak_mb"] / max(result["ce_peak_mb"], 1e-9)
    if breakdown:
        result["breakdown"] = _breakdown(steppers["ce"], steppers["fast"], train, valid, repeats)
    return result


def _breakdown(ce, fast, train, valid, repeats: int) -> dict:
    """Per-step CPU time of the fast step's labelled parts, and of both whole steps, under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    def profiled(stepper) -> tuple[float, list]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for i in range(repeats):
                stepper.step(train[i % len(train)], valid[i % len(valid)], lr=0.01)
            elapsed = time.perf_counter() - start
        return elapsed / repeats * 1e3, prof.events()

    ce_ms, _ = profiled(ce)
    fast_ms, events = profiled(fast)
    phases = {name: 0.0 for name in PHASES}
    for event in events:
        if event.name.startswith("lookahead."):
            phases[event.name.split(".", 1)[1]] += event.cpu_time_total / 1e3 / repeats
    phases["other"] = max(fast_ms - sum(phases.values()), 0.0)
    return {"ce_step_ms": ce_ms, "fast_step_ms": fast_ms, "phases_ms": phases,
            "phases_ratio": {name: ms / ce_ms for name, ms in phases.items()}}


ZOO_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "logreg": ((1, 28, 28), 128), "mlp": ((1, 28, 28), 128), "lenet5": ((1, 28, 28), 128),
    **{name: ((3, 32, 32), 32) for name in ("alexnet", "vgg16", "allcnn", "resnet18", "preresnet", "wideresnet",
                                            "pyramidnet", "squeezenet")},
}
"""Each zoo model's benchmark input: MNIST-shaped batches of 128 for the small models, CIFAR-shaped
batches of 32 for the convolutional networks the paper trains on CIFAR."""


def benchmark_all(*, device: torch.device = torch.device("cpu"), repeats: int = 10, warmup: int = 3,
                  models: tuple[str, ...] | None = None, progress=None, **options) -> list[dict]:
    """:func:`benchmark_steps` for every zoo model (:data:`ZOO_INPUTS`), one row per model.

    Each row adds ``input_shape`` to the single-model result; ``progress(model)`` is called
    before each model.
    """
    return for_each_zoo_model(lambda **inputs: benchmark_steps(**inputs, device=device, repeats=repeats,
                                                               warmup=warmup, **options),
                              models=models, progress=progress)


def for_each_zoo_model(measure, *, models: tuple[str, ...] | None = None, progress=None) -> list[dict]:
    """``measure(model=, input_shape=, batch_size=)`` for each of ``models`` (default: every zoo model) at its
    benchmark input (:data:`ZOO_INPUTS`), one row each with ``input_shape`` added; ``progress(model)`` first."""
    rows = []
    for name in models or tuple(ZOO_INPUTS):
        if name not in ZOO_INPUTS:
            raise ConfigError(f"unknown model {name!r}: choose from {', '.join(ZOO_INPUTS)}")
        shape, batch = ZOO_INPUTS[name]
        if progress is not None:
            progress(name)
        row = measure(model=name, input_shape=shape, batch_size=batch)
        row["input_shape"] = list(shape)
        rows.append(row)
    return rows
