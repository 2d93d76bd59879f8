"""lfl bench --floor / --ops: the table's structure, floors that are sums of the primitives, operator counts."""
from __future__ import annotations

import json
import math

import pytest

from helpers import run_lfl

from toolkit.runs.bench_floor import (COMPILED, FLOOR_COLUMNS, GUARDED, PRIMITIVES, ROUTES, count_ops, floors,
                                      guard_passes)

def test_floors_are_the_sums_of_their_primitives():
    p = {"forward": 0.4, "forward_backward": 0.9, "jvp": 1.1, "reverse_jvp": 1.6, "loss": 0.3, "fused_check": 1.5,
         "parameter_dot": 0.05, "parameter_norm": 0.03, "parameter_axpy": 0.07}
    f = floors(p)
    assert f["backward"] == p["forward_backward"] - p["forward"]
    assert f["exact_model"] == 2 * p["forward_backward"] + p["jvp"]
    assert f["exact"] == f["exact_model"] + p["loss"]  # the loss network's derivatives are part of any exact route
    assert f["guard"] == f["backward"] + p["forward"]
    assert f["guarded"] == f["exact"] + f["guard"]
    assert f["fd_unguarded"] == 2 * p["forward_backward"] + p["forward"] + p["loss"]
    # The reverse route: the training forward, backward and tangent in one primitive, the validation pass beside it.
    assert f["reverse_unguarded"] == p["forward_backward"] + p["reverse_jvp"] + p["loss"]
    assert f["reverse_guarded"] == f["reverse_unguarded"] + f["guard"]
    assert f["fused_saving"] == pytest.approx(p["forward_backward"] + p["forward"] - p["fused_check"])


def test_the_guards_parameter_passes_are_counted_at_the_shares_of_steps_that_take_them():
    """Every step takes the decision's dot product; a reflected one adds the norm, a dot and two axpys
    (H g and H w); a rejected one adds the fallback's axpy."""
    p = {"parameter_dot": 0.05, "parameter_norm": 0.03, "parameter_axpy": 0.07}
    assert guard_passes(p, reflected=0.0, rejected=0.0) == p["parameter_dot"]
    assert guard_passes(p, reflected=1.0, rejected=0.0) == pytest.approx(2 * 0.05 + 0.03 + 2 * 0.07)
    assert guard_passes(p, reflected=0.5, rejected=0.25) == pytest.approx(0.05 + 0.5 * 0.22 + 0.25 * 0.07)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_bench_floor_json_on_two_small_models():
    rows = []
    for model, shape in (("logreg", "1,6,6"), ("mlp", "12")):
        result = run_lfl("bench", "--floor", "--model", model, "--dataset-shape", shape, "--classes", "3",
                         "--batch-size", "8", "--repeats", "2", "--device", "cpu", "--json")
        assert result.returncode == 0, result.stderr
        rows += json.loads(result.stdout)["floor"]
    _check_floor_rows(rows)


def test_bench_floor_all_on_the_two_small_zoo_models():
    """``--floor --all`` as the docs run it, restricted to the two cheapest zoo models at their benchmark inputs."""
    result = run_lfl("bench", "--floor", "--all", "--models", "logreg,mlp", "--repeats", "1", "--device", "cpu",
                     "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["floor"]
    assert [row["model"] for row in rows] == ["logreg", "mlp"]
    assert [row["input_shape"] for row in rows] == [[1, 28, 28], [1, 28, 28]]
    _check_floor_rows(rows)


@pytest.mark.parametrize("args, message", [
    (("--models", "logreg"), "add --all"),
    (("--all", "--models", "logreg,nosuch"), "unknown zoo model nosuch"),
])
def test_bench_models_is_checked(args, message):
    result = run_lfl("bench", "--floor", *args, "--device", "cpu")
    assert result.returncode == 2 and message in result.stderr


def _check_floor_rows(rows: list[dict], routes=ROUTES) -> None:
    for row in rows:
        assert set(row["primitives"]) == set(PRIMITIVES) and set(row["measured"]) == set(routes)
        p, f, ce = row["primitives"], row["floor"], row["ce_step_s"]
        assert _positive(ce)
        for key in PRIMITIVES:  # CE units are the primitive's median over the CE step's
            assert _positive(p[key]) and p[key] == row["primitives_s"][key] / ce
        assert f == floors(p)  # exactly the sums, recomputed from the reported primitives
        for route in routes:
            assert _positive(row["measured"][route]) and _positive(row["distance"][route])
        if "unguarded" in routes:
            assert row["distance"]["unguarded"] == row["measured"]["unguarded"] / f["exact"]
        if "guarded" in routes:
            assert row["distance"]["guarded"] == row["measured"]["guarded"] / f["guarded"]
        guarded = [route for route in GUARDED if route in routes]
        assert set(row["guard_shares"]) == set(row["floor_with_passes"]) == set(guarded)
        for route in guarded:  # each guarded route's floor plus the passes its own run's verdicts required
            shares = row["guard_shares"][route]
            assert set(shares) == {"reflected", "rejected"} and all(0 <= v <= 1 for v in shares.values())
            assert row["floor_with_passes"][route] == pytest.approx(f[GUARDED[route]] + guard_passes(p, **shares))
            assert row["distance_with_passes"][route] == row["measured"][route] / row["floor_with_passes"][route]
        if not {"guarded", "unguarded"} <= set(routes):  # the guard's own cost needs both steps
            assert "guard_overhead" not in row and "guard_distance" not in row
            continue
        overhead = row["measured"]["guarded"] - row["measured"]["unguarded"]
        assert row["guard_overhead"] == overhead
        assert row["guard_distance"]["floor"] == overhead / f["guard"]
        own = f["guard"] + guard_passes(p, **row["guard_shares"]["guarded"])
        assert row["guard_floor_with_passes"] == pytest.approx(own)
        assert row["guard_distance"]["with_passes"] == overhead / row["guard_floor_with_passes"]


@pytest.mark.parametrize("routes", [("unguarded", "guarded"), ("reverse_guarded",)])
def test_bench_floor_times_only_the_routes_asked_for(routes):
    """--routes leaves the other model copies out (less memory pressure on a large model); the guard's own cost is
    reported only when both of its steps are timed, and the table prints "-" for a route not timed."""
    common = ["bench", "--floor", "--ops", "--model", "mlp", "--dataset-shape", "12", "--classes", "3", "--batch-size",
              "8", "--repeats", "2", "--device", "cpu", "--routes", ",".join(routes)]
    result = run_lfl(*common, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    _check_floor_rows(report["floor"], routes={route: ROUTES[route] for route in routes})
    assert set(report["ops"][0]["routes"]) == set(routes)
    table = run_lfl(*common)
    assert table.returncode == 0, table.stderr
    cells = dict(zip(FLOOR_COLUMNS, table.stdout.splitlines()[2].split()[2:]))
    for column in FLOOR_COLUMNS:  # a route's measured column holds a number exactly when it was timed
        if column[2][:1] == ("measured",):
            assert (cells[column] == "-") == (column[2][1] not in routes), column
    assert (cells[("guard", 5, ("guard_overhead",))] == "-") == (len(routes) == 1)


@pytest.mark.parametrize("args, message", [
    (("--floor", "--routes", "guarded,nosuch"), "unknown route nosuch in --routes"),
    (("--floor", "--routes", "compiled"), "the compiled routes need --compile"),
    (("--routes", "guarded"), "add --floor or --ops"),
])
def test_bench_routes_are_checked(args, message):
    result = run_lfl("bench", *args, "--model", "mlp", "--dataset-shape", "12", "--repeats", "1", "--device", "cpu")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_bench_floor_prints_a_table_and_refuses_breakdown_with_it():
    result = run_lfl("bench", "--floor", "--model", "mlp", "--dataset-shape", "12", "--classes", "3",
                     "--batch-size", "8", "--repeats", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1]
    assert header.split()[0] == "model" and "dist" in header
    assert result.stdout.splitlines()[2].split()[0] == "mlp"
    refused = run_lfl("bench", "--floor", "--breakdown", "--model", "mlp", "--dataset-shape", "12", "--device", "cpu")
    assert refused.returncode == 2 and "--breakdown" in refused.stderr


def test_ops_count_aten_calls_per_step_and_ratios_to_cross_entropy():
    result = count_ops(model="mlp", input_shape=(12,), num_outputs=3, batch_size=8, steps=1)
    assert result["ce"] >= 3  # at least a forward, a loss and a backward
    for route in ROUTES:
        ops = result["routes"][route]
        assert ops["ops"] > result["ce"] and ops["ratio"] == ops["ops"] / result["ce"]
    # The guard's extra backward and forward are more operators, never fewer.
    assert result["routes"]["guarded"]["ops"] > result["routes"]["unguarded"]["ops"]


@pytest.mark.parametrize("flag", ["--floor", "--ops"])
def test_bench_floor_and_ops_refuse_bad_sizes_in_one_line(flag):
    result = run_lfl("bench", flag, "--model", "mlp", "--batch-size", "0", "--device", "cpu")
    assert result.returncode == 2 and "--batch-size must be >= 1" in result.stderr


@pytest.mark.slow
def test_bench_floor_and_ops_with_compile_add_the_compiled_steps():
    """``--compile`` adds the guarded default and reverse steps under ``lfl train --compile``, read against
    their eager routes' floors, and counts their operators (a compiled graph's kernels are not aten calls)."""
    result = run_lfl("bench", "--floor", "--ops", "--compile", "--model", "mlp", "--dataset-shape", "12",
                     "--classes", "3", "--batch-size", "8", "--repeats", "2", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    _check_floor_rows(report["floor"], routes={**ROUTES, **COMPILED})
    row = report["floor"][0]
    assert row["distance"]["compiled"] == row["measured"]["compiled"] / row["floor"]["guarded"]
    assert row["distance"]["compiled_reverse"] == row["measured"]["compiled_reverse"] / row["floor"]["reverse_guarded"]
    ops = report["ops"][0]["routes"]
    assert set(ops) == {*ROUTES, *COMPILED}
    assert ops["compiled"]["ops"] < ops["guarded"]["ops"]  # the loss's derivatives no longer dispatch operators


def test_bench_compile_needs_floor_or_ops():
    result = run_lfl("bench", "--compile", "--model", "mlp", "--dataset-shape", "12", "--device", "cpu")
    assert result.returncode == 2 and "add --floor or --ops" in result.stderr
