"""How far an AdaLFL step is from its floor (``lfl bench --floor``), and its operator count (``--ops``).

The floor of a route is what it cannot avoid, in primitives timed in the same process on the same
batches: the model's forward (without a graph), its forward and backward (the parameter gradient of
cross-entropy) and a forward-mode JVP through it (:func:`toolkit.meta.tangents.jacobian_vector_product`),
and the learned loss's own derivatives on the outputs (its value, m = ∂M/∂f and the pullback of one
tangent, :func:`losses.derivatives.value_gradient_pullback`), which every exact route needs whatever the
model. The exact route (default, unguarded) needs a forward and backward on the training batch, one on
the validation batch at θ′, one JVP and the loss's derivatives; the descent guard adds one backward (the
task gradient) and one forward (the step check at θ′); the finite-difference route
(``meta_gradient="fd"``) replaces the JVP by a forward. The backward is taken as forward+backward minus
forward. ``exact_model`` is the exact floor without the loss network (the model's passes alone).

The reverse route (``meta_gradient="reverse"``, :mod:`toolkit.meta.reverse`) reads the JVP off the training
backward instead: its primitive ``reverse_jvp`` is a forward, a backward that keeps its graph and the derivative
of that backward in its cotangent, and its floor replaces the training forward+backward and the JVP by it.

The guard also works in parameter space, and that work grows with the parameter count, not the batch:
every guarded step takes one dot product over the parameters (g·g_L, its decision), a step it reflects adds
the norm of g_L, the tangent's dot product with g_L and two axpy passes (H g and H w), and a step the check
rejects adds the fallback's axpy (:mod:`toolkit.meta.guard`). Those three primitives (``parameter_dot``,
``parameter_norm``, ``parameter_axpy``) are timed over tensors of the model's parameter shapes, and each
guarded route's floor "with passes" adds them at the shares of steps its own run reflected and rejected
(``guard_shares``, from its :class:`toolkit.meta.guard.GuardCounts`): what the guard cannot avoid on the
steps this run took. The guard's own distance (``guard_distance``) reads the guarded step's cost over the
unguarded one against both floors.

One more primitive answers whether the step check's forward at θ′ should ride on the validation pass
(one forward over both batches concatenated, the validation rows' loss differentiated): ``fused_check``,
to be read against ``forward_backward + forward`` (``floor["fused_saving"]``, positive when fusing saves).
It is timed on every model, but only a model without batch statistics could use it exactly.

Everything (the steps and the primitives) runs interleaved round by round, each round starting one later in
the order, and each figure is a median, in units of the cross-entropy step's median.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from losses.derivatives import value_gradient_pullback

from toolkit.meta.tangents import jacobian_vector_product
from toolkit.meta.reverse import backward_with_tangent
from toolkit.meta.trees import tree_dot, tree_norm
from toolkit.runs.bench import _synchronise, check_sizes, for_each_zoo_model, steppers_and_batches
from toolkit.errors import ConfigError

ROUTES = {"unguarded": "fast-unguarded", "guarded": "fast", "fd_unguarded": "fd-unguarded",
          "reverse_unguarded": "reverse-unguarded", "reverse_guarded": "reverse"}
"""The AdaLFL routes whose distance to the floor is reported: name → stepper of
:func:`toolkit.runs.bench.steppers_and_batches`."""


COMPILED = {"compiled": "fast-compiled", "compiled_reverse": "reverse-compiled"}
"""The routes ``--compile`` adds: the guarded default and reverse steps with ``OnlineLossLearner(compile=True)``."""


def _routes(compile: bool, only: tuple[str, ...] | None = None) -> dict[str, str]:
    """The routes to time: :data:`ROUTES` (and :data:`COMPILED` with ``compile``), or only the named ones.

    Each route is a copy of the model timed every round; ``only`` times fewer (e.g. the guarded and unguarded
    steps, for the guard's own cost), in less time and memory on a large model."""
    routes = {**ROUTES, **(COMPILED if compile else {})}
    if only is None:
        return routes
    unknown = [name for name in only if name not in routes]
    if unknown or not only:
        hint = " (the compiled routes need --compile)" if set(unknown) & set(COMPILED) else ""
        raise ConfigError(f"unknown route {', '.join(unknown) or repr(only)} in --routes: choose from "
                          f"{', '.join(routes)}{hint}")
    return {name: routes[name] for name in routes if name in only}


PRIMITIVES = ("forward", "forward_backward", "jvp", "reverse_jvp", "loss", "fused_check", "parameter_dot",
              "parameter_norm", "parameter_axpy")
"""The timed primitives (CE-step units in a :func:`benchmark_floor` row)."""

GUARDED = {"guarded": "guarded", "reverse_guarded": "reverse_guarded", "compiled": "guarded",
           "compiled_reverse": "reverse_guarded"}
"""The guarded routes, each with the floor (of :func:`floors`) it is read against."""


def _primitives(model, loss, train, valid) -> dict[str, Callable[[int], None]]:
    """Callables of the round number for the primitives of :data:`PRIMITIVES`, on the training batches
    (``fused_check`` on a training and a validation batch)."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    tangents = {k: torch.randn_like(p) for k, p in params.items()}
    loss_params = dict(loss.named_parameters())
    with torch.no_grad():
        outputs = [model(x) for x, _ in train]

    def forward(i: int) -> None:
        with torch.no_grad():
            model(train[i % len(train)][0])

    def forward_backward(i: int) -> None:
        x, y = train[i % len(train)]
        torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))

    def jvp(i: int) -> None:
        jacobian_vector_product(model, params, buffers, train[i % len(train)][0], tangents)

    def reverse_jvp(i: int) -> None:
        x, _ = train[i % len(train)]
        f = model(x)
        _, tangent = backward_with_tangent(f, list(params.values()), torch.ones_like(f))
        tangent(list(tangents.values()))

    def loss_derivatives(i: int) -> None:
        f, y = outputs[i % len(outputs)], train[i % len(train)][1]
        _, m, pullback = value_gradient_pullback(loss, loss_params, f, y)
        pullback(m)

    def fused_check(i: int) -> None:
        (x, y), (x_v, y_v) = train[i % len(train)], valid[i % len(valid)]
        both = model(torch.cat([x, x_v]))
        torch.autograd.grad(F.cross_entropy(both[len(x):], y_v), list(params.values()))
        F.cross_entropy(both[:len(x)].detach(), y)

    # The guard's parameter-space passes, at their cheapest: one read of two parameter-sized lists (dot), of one
    # (norm), and an in-place y += a·x with a Python scalar (axpy: two reads, one write, nothing allocated). Their
    # own tensors: the axpy writes into ``a``, which must not be the JVP primitives' tangents.
    a, b = ([torch.randn_like(t) for t in tangents.values()] for _ in range(2))

    def parameter_dot(i: int) -> None:
        tree_dot(a, b)

    def parameter_norm(i: int) -> None:
        tree_norm(b)

    def parameter_axpy(i: int) -> None:
        torch._foreach_add_(a, b, alpha=1e-3 * (-1) ** i)

    return {"forward": forward, "forward_backward": forward_backward, "jvp": jvp, "reverse_jvp": reverse_jvp,
            "loss": loss_derivatives, "fused_check": fused_check, "parameter_dot": parameter_dot,
            "parameter_norm": parameter_norm, "parameter_axpy": parameter_axpy}


def guard_passes(primitives: dict[str, float], reflected: float, rejected: float) -> float:
    """The guard's parameter-space work per step (any unit): its decision's dot product on every step, a
    reflection's norm, dot product and two axpys on the share ``reflected`` of steps, and the fallback's axpy
    on the share ``rejected``."""
    reflection = primitives["parameter_norm"] + primitives["parameter_dot"] + 2 * primitives["parameter_axpy"]
    return primitives["parameter_dot"] + reflected * reflection + rejected * primitives["parameter_axpy"]


def floors(primitives: dict[str, float]) -> dict[str, float]:
    """Each route's floor from the primitives' times (any unit): sums, nothing else."""
    backward = primitives["forward_backward"] - primitives["forward"]
    exact_model = 2 * primitives["forward_backward"] + primitives["jvp"]
    exact = exact_model + primitives["loss"]
    guard = backward + primitives["forward"]
    reverse = primitives["forward_backward"] + primitives["reverse_jvp"] + primitives["loss"]
    return {"backward": backward, "exact_model": exact_model, "exact": exact, "guard": guard,
            "guarded": exact + guard, "reverse_unguarded": reverse, "reverse_guarded": reverse + guard,
            "fd_unguarded": 2 * primitives["forward_backward"] + primitives["forward"] + primitives["loss"],
            "fused_saving": primitives["forward_backward"] + primitives["forward"] - primitives["fused_check"]}


def benchmark_floor(*, model: str = "lenet5", input_shape=(1, 28, 28), num_outputs: int = 10,
                    batch_size: int = 128, device: torch.device = torch.device("cpu"), repeats: int = 30,
                    warmup: int = 5, seed: int = 0, compile: bool = False, routes: tuple[str, ...] | None = None,
                    **options) -> dict:
    """The primitives, the floors and each AdaLFL route's distance to its floor, from one interleaved run.

    Returns a JSON-ready dict: ``ce_step_s``; ``primitives`` (:data:`PRIMITIVES`; CE-step units) and
    ``primitives_s``; ``floor`` (:func:`floors`: backward, exact_model, exact, guard, guarded, fd_unguarded,
    reverse_unguarded, reverse_guarded, fused_saving; CE-step units, each a sum of ``primitives``); ``measured``
    (:data:`ROUTES`; CE-step units) and ``distance`` (measured / its route's floor: the exact floor for
    unguarded, the guarded one for guarded, the reverse route's own for the reverse routes).
    For each guarded route (:data:`GUARDED`): ``guard_shares`` (reflected, rejected), ``floor_with_passes`` (its
    floor plus :func:`guard_passes` at those shares) and ``distance_with_passes``. ``guard_overhead`` is the
    guarded default step minus the unguarded one, ``guard_floor_with_passes`` the guard's floor with its passes,
    and ``guard_distance`` the overhead over the guard's floor without (``floor``) and with (``with_passes``) them
    (these three only when both the guarded and the unguarded route are timed).
    ``routes`` times only those routes (:func:`_routes`); the primitives are always timed.
    With ``compile``, also the guarded default and reverse steps with ``compile=True`` (``measured["compiled"]`` and
    ``["compiled_reverse"]``, read against their eager routes' floors, whose primitives stay eager); their
    compilation happens in the warm-up rounds.
    ``options`` go to :func:`toolkit.runs.bench.steppers_and_batches` (``loss_param``, ``loss_scale``).
    """
    check_sizes(batch_size=batch_size, repeats=repeats, num_outputs=num_outputs, input_shape=input_shape)
    routes = _routes(compile, routes)
    steppers, train, valid, base = steppers_and_batches(
        model=model, input_shape=input_shape, num_outputs=num_outputs, batch_size=batch_size, device=device,
        seed=seed, names=("ce", *routes.values()), **options)
    work = {name: (lambda i, s=s: s.step(train[i % len(train)], valid[i % len(valid)], lr=0.01))
            for name, s in steppers.items()}
    timed = _primitives(base, copy.deepcopy(steppers[next(iter(routes.values()))].loss), train, valid)
    assert not set(timed) & set(work), "a primitive's name must not be a stepper's"
    work.update(timed)
    times: dict[str, list[float]] = {k: [] for k in work}
    order = list(work)
    for i in range(warmup + repeats):
        # Each round starts one later in the order: what runs just before a step changes the state of the caches and
        # the allocator it meets, so no step always follows the same one.
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            fn = work[name]
            _synchronise(device)
            start = time.perf_counter()
            fn(i)
            _synchronise(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    ce = median["ce"]
    primitives = {k: median[k] / ce for k in PRIMITIVES}
    floor = floors(primitives)
    measured = {route: median[stepper] / ce for route, stepper in routes.items()}
    floor_of = {"unguarded": "exact", "fd_unguarded": "fd_unguarded", "reverse_unguarded": "reverse_unguarded",
                **GUARDED}
    shares = {route: _shares(steppers[routes[route]]) for route in GUARDED if route in routes}
    with_passes = {route: floor[GUARDED[route]] + guard_passes(primitives, **shares[route]) for route in shares}
    row = {"model": model, "batch_size": batch_size, "device": str(device), "repeats": repeats,
           "threads": torch.get_num_threads(), "ce_step_s": ce,
           "primitives_s": {k: median[k] for k in primitives}, "primitives": primitives, "floor": floor,
           "measured": measured, "distance": {r: measured[r] / floor[floor_of[r]] for r in measured},
           "guard_shares": shares, "floor_with_passes": with_passes,
           "distance_with_passes": {r: measured[r] / with_passes[r] for r in with_passes}}
    if "guarded" in measured and "unguarded" in measured:
        overhead = measured["guarded"] - measured["unguarded"]
        own = floor["guard"] + guard_passes(primitives, **shares["guarded"])
        row.update(guard_overhead=overhead, guard_floor_with_passes=own,
                   guard_distance={"floor": overhead / floor["guard"], "with_passes": overhead / own})
    return row


def _shares(stepper) -> dict[str, float]:
    """The shares of a guarded stepper's steps (every round, warm-up included) reflected and rejected."""
    totals = stepper.guard_counts.totals()
    return {"reflected": totals["guarded_steps"], "rejected": totals["rejected_steps"]}


def count_ops(*, model: str = "lenet5", input_shape=(1, 28, 28), num_outputs: int = 10, batch_size: int = 128,
              steps: int = 3, seed: int = 0, compile: bool = False, routes: tuple[str, ...] | None = None,
              **options) -> dict:
    """``aten::`` operator calls per step under ``torch.profiler`` (CPU), every nesting level counted.

    Returns ``ce`` (calls per cross-entropy step) and, per AdaLFL route (:data:`ROUTES`, and :data:`COMPILED`
    with ``compile``), calls per step and their ratio to the CE step's. One warm-up step per stepper (two for
    a compiled one) runs before the profiled ones; a compiled graph's generated code calls no ``aten::`` operator.
    """
    from torch.profiler import ProfilerActivity, profile

    check_sizes(batch_size=batch_size, repeats=steps, num_outputs=num_outputs, input_shape=input_shape)
    routes = _routes(compile, routes)
    steppers, train, valid, _ = steppers_and_batches(
        model=model, input_shape=input_shape, num_outputs=num_outputs, batch_size=batch_size,
        device=torch.device("cpu"), seed=seed, names=("ce", *routes.values()), **options)
    per_step = {}
    for name, stepper in steppers.items():
        for i in range(2 if name.endswith("-compiled") else 1):  # a compiled step compiles on its first call
            stepper.step(train[i % len(train)], valid[i % len(valid)], lr=0.01)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                stepper.step(train[i % len(train)], valid[i % len(valid)], lr=0.01)
        per_step[name] = sum(e.name.startswith("aten::") for e in prof.events()) / steps
    ce = per_step["ce"]
    return {"model": model, "batch_size": batch_size, "steps": steps, "ce": ce,
            "routes": {route: {"ops": per_step[s], "ratio": per_step[s] / ce} for route, s in routes.items()}}


def floor_all(*, models: tuple[str, ...] | None = None, progress=None, **options) -> list[dict]:
    """:func:`benchmark_floor` for every zoo model at its benchmark input (:data:`toolkit.runs.bench.ZOO_INPUTS`)."""
    return for_each_zoo_model(lambda **inputs: benchmark_floor(**inputs, **options), models=models, progress=progress)


def _value(row: dict, *path: str) -> float | None:
    """``row[path[0]][path[1]]...``, or None where a route was not timed."""
    for key in path:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row


FLOOR_COLUMNS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("fwd", 5, ("primitives", "forward")), ("fwd+bwd", 7, ("primitives", "forward_backward")),
    ("jvp", 5, ("primitives", "jvp")), ("loss", 5, ("primitives", "loss")), ("fused", 5, ("primitives", "fused_check")),
    ("|", 0, ()),
    ("floor", 5, ("floor", "exact")), ("unguard", 7, ("measured", "unguarded")), ("dist", 5, ("distance", "unguarded")),
    ("|", 0, ()),
    ("guard fl", 8, ("floor", "guard")), ("floor", 5, ("floor", "guarded")), ("guarded", 7, ("measured", "guarded")),
    ("dist", 5, ("distance", "guarded")),
    ("|", 0, ()),
    ("refl", 4, ("guard_shares", "guarded", "reflected")), ("+passes", 7, ("floor_with_passes", "guarded")),
    ("dist", 5, ("distance_with_passes", "guarded")), ("guard", 5, ("guard_overhead",)),
    ("g.dist", 6, ("guard_distance", "floor")), ("+pass", 5, ("guard_distance", "with_passes")),
    ("|", 0, ()),
    ("fd fl", 5, ("floor", "fd_unguarded")), ("fd", 5, ("measured", "fd_unguarded")),
    ("dist", 5, ("distance", "fd_unguarded")),
    ("|", 0, ()),
    ("rev", 5, ("primitives", "reverse_jvp")), ("floor", 5, ("floor", "reverse_unguarded")),
    ("unguard", 7, ("measured", "reverse_unguarded")), ("dist", 5, ("distance", "reverse_unguarded")),
    ("floor", 5, ("floor", "reverse_guarded")), ("guarded", 7, ("measured", "reverse_guarded")),
    ("dist", 5, ("distance", "reverse_guarded")),
)
"""The text table's columns after the model and the CE step: (header, width, path into a row); "|" separates."""

COMPILED_COLUMNS = (("|", 0, ()), ("compiled", 8, ("measured", "compiled")), ("dist", 5, ("distance", "compiled")),
                    ("c. rev", 6, ("measured", "compiled_reverse")), ("dist", 5, ("distance", "compiled_reverse")))


def format_floor(rows: list[dict]) -> str:
    """A text table: primitives, floors and distances, CE-step units, one line per model; "-" for a route
    that was not timed.

    After the guarded route: the share of steps reflected, its floor with the guard's parameter passes and the
    distance to it, then the guard's cost (guarded − unguarded) and its distance to the guard's floor without
    and with those passes."""
    columns = FLOOR_COLUMNS + (COMPILED_COLUMNS if any("compiled" in r["measured"] for r in rows) else ())
    cell = lambda header, width: "|" if header == "|" else f"{header:>{width}}"  # noqa: E731
    lines = [f"{'model':<11} {'CE ms':>7} " + " ".join(cell(h, w) for h, w, _ in columns)]
    for r in rows:
        values = []
        for header, width, path in columns:
            value = _value(r, *path) if path else None
            values.append("|" if header == "|" else f"{'-':>{width}}" if value is None else f"{value:{width}.2f}")
        lines.append(f"{r['model']:<11} {r['ce_step_s'] * 1e3:7.2f} " + " ".join(values))
    return "\n".join(lines)


def format_ops(rows: list[dict]) -> str:
    """A text table of :func:`count_ops` rows: aten calls per CE step and each route's ratio to it."""
    routes = [route for route in _routes(True) if any(route in r["routes"] for r in rows)]
    lines = [f"{'model':<11} {'CE ops':>7} " + " ".join(f"{route:>17}" for route in routes)]
    for r in rows:
        lines.append(f"{r['model']:<11} {r['ce']:7.0f} " + " ".join(
            f"{r['routes'][route]['ops']:10.0f} {r['routes'][route]['ratio']:5.2f}x" if route in r["routes"]
            else f"{'':17}" for route in routes))
    return "\n".join(lines)


def floor_report(*, floor: bool, ops: bool, models: tuple[tuple[str, tuple[int, ...], int], ...], num_outputs: int,
                 device: torch.device, repeats: int, as_json: bool, progress=None, **options) -> str:
    """``lfl bench --floor`` / ``--ops``: the tables (or JSON) for ``models``, (name, input shape, batch) each.

    ``--ops`` counts CPU operators and is refused on another device.
    """
    if ops and device.type != "cpu":
        raise ConfigError("--ops counts CPU operators: run it with --device cpu")
    result: dict[str, list[dict]] = {}
    for name, shape, batch in models:
        if progress is not None:
            progress(name)
        common = {"model": name, "input_shape": tuple(shape), "num_outputs": num_outputs, "batch_size": batch}
        if floor:
            row = benchmark_floor(**common, device=device, repeats=repeats, **options)
            result.setdefault("floor", []).append({**row, "input_shape": list(shape)})
        if ops:
            result.setdefault("ops", []).append(count_ops(**common, steps=min(repeats, 5), **options))
    if as_json:
        import json
        return json.dumps(result, indent=2)
    parts = []
    if floor:
        parts += [f"CE-step units, medians of {repeats} interleaved rounds; dist = measured / floor:",
                  format_floor(result["floor"])]
    if ops:
        parts += ["aten:: operator calls per step (torch.profiler, CPU):", format_ops(result["ops"])]
    return "\n".join(parts)
