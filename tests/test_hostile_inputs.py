"""A hostile corpus: small shared files that once exploded (memory, time) or crashed with a traceback.

Each case writes its file in ``tmp_path`` and names what reads it: ``lfl ARGS`` or one reader
function. ``test_hostile_case_is_one_line`` runs it in this process; the slow
``test_hostile_case_is_bounded`` runs it in a child process whose address space is capped at
2 GiB above what its imports use and which SIGALRM ends after 10 s, and asserts exit 2, one line
on stderr, and the child's peak memory. The formula-parser corpus itself is in
test_losses_formula_parser.py, the code-injection corpus in test_untrusted_inputs.py.
"""
from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch

import losses
from helpers import run_in_process, run_lfl

CASE_SECONDS = 10
HEADROOM_BYTES = 2 << 30
REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--steps", "2", "--batch-size", "16", "--quiet",
         "--device", "cpu"]


def _loss_file(path: Path, config: dict | None = None, **fields) -> Path:
    data = {"format_version": 1, "kind": "symbolic", "dtype": None, "parameters": {"constants": []},
            "config": config or {"expression": "y_pred"}, **fields}
    path.write_text(json.dumps(data))
    return path


def _shared_graph(op: str, count: int) -> dict:
    """``count`` nodes, each ``op`` of the previous one twice: a tree of 2**count nodes."""
    return {"graph": [["Symbol", "y_pred"]] + [[op, k - 1, k - 1] for k in range(1, count + 1)]}


def _idx(path: Path, dims: tuple[int, ...], payload: bytes, *, code: int = 0x08) -> Path:
    header = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + payload, compresslevel=9))
    return path


def _cifar(path: Path, data: object, labels: object) -> Path:
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    return path


def _study(path: Path, values: int, keys: int) -> Path:
    grid = "".join(f"{key} = {list(range(1, values + 1))}\n" for key in ("steps", "batch_size", "eval_every",
                                                                        "init_steps", "log_every", "meta_interval")[:keys])
    path.write_text(f'[study]\ndataset = "digits"\nseeds = [0]\n\n[[method]]\nname = "ce"\nloss = "ce"\n{grid}')
    return path


def _reader(name: str, path: Path, **kwargs) -> tuple[str, list]:
    return "reader", [name, str(path), kwargs]


CASES = {
    # name: (build(tmp) -> ("lfl", argv) or ("reader", [function, path, kwargs]), fragment of the message)
    "loss-dag-add-export": (lambda t: ("lfl", ["export", str(_loss_file(t / "l.json", _shared_graph("Add", 100)))]),
                            "MAX_TREE_NODES"),
    "loss-dag-mul-train": (lambda t: ("lfl", [*TRAIN, "--loss-from",
                                              str(_loss_file(t / "l.json", _shared_graph("Mul", 100)))]),
                           "MAX_TREE_NODES"),
    "loss-json-deep": (lambda t: ("lfl", ["export", str(_write(t / "l.json", "[" * 100_000 + "]" * 100_000))]),
                       "nested too deeply"),
    "loss-kind-list": (lambda t: ("lfl", ["export", str(_loss_file(t / "l.json", kind=["symbolic"]))]),
                       "unknown kind"),
    "loss-chain-100k": (lambda t: ("lfl", ["export", str(_loss_file(
        t / "l.json", {"graph": [["Symbol", "y"]] + [["Add", k - 1, 0] for k in range(1, 100_001)]}))]),
                        "MAX_DEPTH"),
    "loss-float-inf": (lambda t: ("lfl", ["export", str(_loss_file(t / "l.json", {"graph": [["Float", "1e999"]]}))]),
                       "must be finite"),
    "formula-constant": (lambda t: ("lfl", [*TRAIN, "--loss-from", "1"]), "does not depend on y_pred"),
    "formula-product-5000-digits": (lambda t: ("lfl", [*TRAIN, "--loss-from",
                                                       "y_pred*" + "*".join(["99999999999999999999"] * 250)]),
                                    "beyond float64's range"),
    "study-grid-1e6": (lambda t: ("lfl", ["study", str(_study(t / "s.toml", 10, 6)), "--out", str(t / "study"), "--dry-run"]),
                       "MAX_GRID_POINTS"),
    "csv-dev-zero": (lambda t: ("lfl", ["train", "--dataset", "csv:/dev/zero", "--steps", "1", "--quiet"]),
                     "not a regular file"),
    "idx-gzip-bomb": (lambda t: _reader("read_idx", _idx(t / "x.gz", (10, 28, 28), bytes(300 << 20)), ndim=3),
                      "holds more"),
    "idx-declares-2**40-bytes": (lambda t: _reader("read_idx", _idx(t / "x.gz", (1 << 20, 1 << 10, 1 << 10), b""),
                                                   ndim=3), "MAX_IDX_BYTES"),
    "idx-sizes-beyond-int64": (lambda t: _reader("read_idx", _idx(t / "x.gz", (2**32 - 1,) * 3, b"", code=0x0E),
                                                 ndim=3), "MAX_IDX_BYTES"),
    "cifar-memo-shared-rows": (lambda t: _reader("read_cifar_batch", _cifar(t / "b", [[0] * 3072] * 10_000, [0]),
                                                 label_key="labels", num_classes=10), "uint8 array"),
    "cifar-label-half": (lambda t: _reader("read_cifar_batch", _cifar(t / "b", np.zeros((2, 3072), np.uint8), [0, 0.5]),
                                           label_key="labels", num_classes=10), "integer class labels"),
    "results-json-list": (lambda t: ("lfl", ["compare", str(_write(_mkdir(t / "run") / "results.json", "[1, 2]").parent)]),
                          "holds a JSON list"),
    "model-option-nested": (lambda t: ("lfl", [*TRAIN, "--model-option", "hidden=" + "[" * 3000 + "]" * 3000]),
                            "nested too deeply"),
    "model-too-large": (lambda t: ("lfl", [*TRAIN, "--model-option", "hidden=[100000000000]"]),
                        "parameters, more than"),
    "bench-batch-beyond-memory": (lambda t: ("lfl", ["bench", "--model", "mlp", "--batch-size", "100000000000"]),
                                  "not enough memory"),
    "loss-not-finite": (lambda t: ("lfl", [*TRAIN, "--loss-from", "y_pred*1e308*1e308"]),
                        "not finite on the first training batch"),
    "overwrite-foreign-tensorboard": (lambda t: ("lfl", [*TRAIN, "--out", str(_users_tensorboard(t / "d")),
                                                         "--overwrite"]), "did not write"),
    "seeds-keep-summary": (lambda t: ("lfl", [*TRAIN, "--seeds", "0", "--out",
                                              str(_write(_mkdir(t / "s") / "summary.json", "keep").parent)]),
                           "summary.json already exists"),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _users_tensorboard(run: Path) -> Path:
    """mkdir -p d/tensorboard/x && echo keep > d/tensorboard/x/f: a tree lfl never wrote."""
    _write(_mkdir(run / "tensorboard" / "x") / "f", "keep\n")
    return run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_reader(name: str, path: str, kwargs: dict) -> tuple[int, str]:
    from toolkit.data import formats

    try:
        getattr(formats, name)(Path(path), **kwargs)
    except formats.DataError as error:
        return 2, f"Error: {error}\n"
    return 0, ""


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_is_one_line(name, tmp_path, capsys, monkeypatch) -> None:
    if name in ("idx-gzip-bomb", "loss-json-deep", "loss-chain-100k", "formula-product-5000-digits"):
        pytest.skip("checked under a memory cap in test_hostile_case_is_bounded (slow)")
    monkeypatch.chdir(tmp_path)
    kind, payload = CASES[name][0](tmp_path)
    code, err = run_in_process(payload, capsys)[::2] if kind == "lfl" else _run_reader(*payload)
    _assert_one_line(code, err, CASES[name][1])


def _assert_one_line(code: int, err: str, fragment: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    assert fragment in lines[0] and len(lines[0]) < 500, lines[0]
    return lines[0]


CHILD = r"""
import json, resource, signal, sys, time
stats_path, kind, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import cli, losses, sympy, torch, numpy, toolkit.data.formats, toolkit.data.datasets, toolkit.runs.run  # imports first
def status(key):  # Bytes; VmHWM is this process's peak resident memory (ru_maxrss survives exec).
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
limit = status("VmSize") + int(sys.argv[4])
imported = status("VmRSS")
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
signal.alarm(int(sys.argv[5]))
start, code = time.perf_counter(), 0
def stats():
    with open(stats_path, "w") as f:
        json.dump({"seconds": time.perf_counter() - start,
                   "peak_rss_mib": status("VmHWM") / 2**20,
                   "imports_rss_mib": imported / 2**20}, f)
if kind == "lfl":
    try:
        cli.main(payload)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
else:
    name, path, kwargs = payload
    try:
        getattr(toolkit.data.formats, name)(__import__("pathlib").Path(path), **kwargs)
    except toolkit.data.formats.DataError as error:
        print(f"Error: {error}", file=sys.stderr)
        code = 2
stats()
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_is_bounded(name, tmp_path) -> None:
    """Exit 2 and one line, within 10 s and 2 GiB of address space above the imports (a child process)."""
    kind, payload = CASES[name][0](tmp_path)
    stats = tmp_path / "stats.json"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, str(stats), kind, json.dumps(payload), str(HEADROOM_BYTES),
                             str(CASE_SECONDS)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=CASE_SECONDS + 60)
    line = _assert_one_line(result.returncode, result.stderr, CASES[name][1])
    measured = json.loads(stats.read_text())
    assert measured["seconds"] < CASE_SECONDS
    print(f"\nHOSTILE {name} | exit {result.returncode} | {line[:100]} | peak {measured['peak_rss_mib']:.0f} MiB "
          f"(imports {measured['imports_rss_mib']:.0f}) | "
          f"{measured['seconds']:.2f} s (child {time.perf_counter() - started:.1f} s with imports)")


def test_shared_graph_within_the_budget_round_trips() -> None:
    """A DAG (each node used twice) rebuilds the same tree and evaluates to 2**k·y_pred, exactly as written."""
    from losses.graph import MAX_TREE_NODES, expression_to_graph, graph_to_expression

    graph = _shared_graph("Add", 20)["graph"]  # A tree of 2**21 - 1 nodes: within MAX_TREE_NODES.
    assert 2**21 < MAX_TREE_NODES
    loss = losses.loss_from_dict({"format_version": 1, "kind": "symbolic", "dtype": "float64",
                                  "parameters": {"constants": []}, "config": {"graph": graph, "task": "regression"}})
    assert expression_to_graph(loss.expression) == graph
    assert graph_to_expression(expression_to_graph(loss.expression)) == loss.expression
    y_pred = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.elementwise(y_pred, y_pred), 2.0**20 * y_pred)


def test_many_term_conditions_and_integers_beyond_int64_evaluate() -> None:
    """Three-term & and | (one n-ary And / Or in SymPy) and 2**64 evaluate as lambdify does in float64."""
    text = "Piecewise((y_pred, (y > 0) & (y_pred > 0) & (y < 1)), (2**64*y_pred, (y > 2) | (y < -2) | (y_pred < 0)), " \
           "(0, True))"
    expression = losses.parse_formula(text)
    loss = losses.SymbolicLoss(expression, task="regression", dtype=torch.float64)
    y_pred = torch.tensor([0.5, 0.5, -0.5, 0.5, 0.5], dtype=torch.float64)
    y = torch.tensor([0.5, 3.0, 0.5, 1.5, -3.0], dtype=torch.float64)
    reference = sympy.lambdify((losses.Y_PRED, losses.Y_TRUE), expression, "numpy")(y_pred.numpy(), y.numpy())
    torch.testing.assert_close(loss.elementwise(y_pred[:, None], y[:, None])[:, 0], torch.as_tensor(reference))


def nested_extrema(levels: int, offset: int = 0) -> str:
    """Max(Min(Max(...), ...), ...): ``levels`` nested calls, six arguments each, ~90 characters a level."""
    text = "y_pred"
    for k in range(levels):
        extra = ", ".join(f"{k + j + offset}*y - y_pred/{j + 2}" for j in range(5))
        text = f"{'Max' if k % 2 else 'Min'}({text}, {extra})"
    return text


@pytest.mark.slow
def test_nested_extrema_parse_in_linear_time() -> None:
    """16× the text (1 KB → 16 KB) takes at most 20× the time (it took 48 s at 3.5 KB, cubic in depth)."""
    losses.parse_formula("Max(y, y_pred)")

    def seconds(levels: int, offset: int) -> float:
        start = time.process_time()
        losses.parse_formula(nested_extrema(levels, offset))
        return time.process_time() - start

    assert 800 < len(nested_extrema(10)) < 1200 and 14_000 < len(nested_extrema(160)) < 18_000
    small = min(seconds(10, offset) for offset in (1000, 2000, 3000))  # Fresh numbers: SymPy caches by value.
    large = min(seconds(160, offset) for offset in (4000, 5000))
    assert large / small <= 20, f"16x the text took {large / small:.1f}x the time"


def test_extreme_feature_and_target_columns_stay_finite_and_standardised(tmp_path) -> None:
    """A feature near ±1e308 and a regression target near ±1e300 are standardised, not overflowed to zero."""
    from toolkit.data.datasets import load_dataset

    rng = np.random.default_rng(0)
    big, target = rng.uniform(-1, 1, 80) * 1e308, rng.uniform(-1, 1, 80) * 1e300
    rows = ["a,b,t"] + [f"{float(a)!r},{float(b)!r},{float(t)!r}" for a, b, t in zip(rng.normal(size=80), big, target)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(f"csv:{tmp_path / 'd.csv'}", task="regression")
    x, y = data.train.x.double(), data.train.y.double()
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(0, correction=0), torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(y.std(correction=0), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)
    restored = y.numpy()[:, 0] * data.target_std + data.target_mean  # Predictions convert back.
    assert np.isfinite(restored).all() and np.abs(restored).max() > 1e299


# --- Results, options and sizes a user gets wrong: one line, exit 2, nothing allocated first ---------------

def test_plot_and_compare_refuse_a_results_json_that_is_a_list(tmp_path):
    (tmp_path / "results.json").write_text("[1, 2]")
    for args in (("compare", tmp_path), ("plot", tmp_path, "--out", tmp_path / "f")):
        result = run_lfl(*args)
        assert result.returncode == 2 and "holds a JSON list, not the object a run writes" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_deeply_nested_model_option_is_one_line(tmp_path):
    nested = "[" * 3000 + "]" * 3000
    result = run_lfl("train", "--dataset", "digits", "--model", "mlp", "--model-option", f"hidden={nested}",
                     "--steps", "2", "--quiet")
    assert result.returncode == 2 and "--model-option hidden" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_model_too_large_to_allocate_is_refused_before_allocating(tmp_path):
    """hidden=[10**11] asks for 6.4e12 weights: counted on the meta device, refused without allocating."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_lfl("train", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[100000000000]",
                     "--steps", "2", "--quiet")
    assert result.returncode == 2 and "parameters, more than the" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing large was touched


def test_an_allocation_the_machine_refuses_is_one_line(capsys):
    """A size no check foresaw (here lfl bench's batch) fails in the allocator: one line, exit 2."""
    from helpers import run_in_process

    code, _, err = run_in_process(["bench", "--model", "mlp", "--batch-size", "100000000000"], capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "not enough memory" in err


def test_a_csv_error_quotes_no_line_of_a_file_that_is_no_table(tmp_path):
    """An error message can end up in a shared study report: it names a CSV table's columns, but never
    copies a line of some other readable file."""
    secret = tmp_path / "notes.txt"
    secret.write_text("password: hunter2, pin: 1234, door code /x/y\nsecond line,2,3\n")
    result = run_lfl("train", "--dataset", f"csv:{secret}", "--target", "label", "--steps", "2", "--quiet")
    assert result.returncode == 2 and "hunter2" not in result.stderr and "1234" not in result.stderr
    table = tmp_path / "houses.csv"
    table.write_text("rooms,area,price\n3,70,1\n4,90,0\n")
    result = run_lfl("train", "--dataset", f"csv:{table}", "--target", "label", "--steps", "2", "--quiet")
    assert result.returncode == 2 and "columns: rooms, area, price" in result.stderr


@pytest.mark.parametrize("make", ["formula-infinite", "nan-parameter", "infinite-parameter"])
def test_a_loss_that_is_not_finite_at_step_0_is_refused(tmp_path, make):
    """A broken learned loss used to finish "finished" with --loss ce's numbers (the guard replaced every
    step); now it is refused before anything is written."""
    if make == "formula-infinite":
        source = "y_pred*1e308*1e308"
    else:
        loss = losses.MLPLoss(hidden=(4,))
        with torch.no_grad():
            next(loss.parameters())[0, 0] = float("nan") if make == "nan-parameter" else float("inf")
        source = str(tmp_path / "broken.json")
        losses.save_loss(loss, source)
    result = run_lfl(*TRAIN, "--loss-from", source, "--out", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert "is not finite on the first training batch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
