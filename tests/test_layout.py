"""The dependency direction: losses ← toolkit ← cli, and no import cycles (lazy imports included)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("losses", "toolkit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules ``name`` imports anywhere in its source (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # Importing a package's submodule runs the package's __init__ first: a submodule importing its own
    # package face is not a cycle (the face imports the submodule, not the other way round at run time).
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_losses_never_imports_toolkit():
    offenders = {name: sorted(t for t in targets if t.startswith("toolkit"))
                 for name, targets in _graph().items() if name.startswith("losses")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_package_folder_is_a_regular_package():
    """``packages = find:`` ships only folders with an ``__init__.py``: one without it would be missing
    from the wheel users install (the editable install used by the tests would still find it)."""
    missing = [str(d.relative_to(ROOT)) for package in PACKAGES for d in [ROOT / package, *(ROOT / package).rglob("*")]
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert not missing, f"add an __init__.py (the package's face) to: {', '.join(missing)}"


def test_the_version_is_written_once():
    """setup.cfg reads the version from toolkit.__version__, so the two cannot disagree."""
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: toolkit.__version__" in setup
    assert not re.search(r"^version\s*=\s*\d", setup, flags=re.M)


def _toolkit_imports(prefix: str) -> dict[str, list[str]]:
    """The toolkit modules each module under ``prefix`` imports (module level and inside functions)."""
    return {name: sorted(t for t in targets if t.startswith("toolkit"))
            for name, targets in _graph().items() if name == prefix or name.startswith(prefix + ".")}


def test_analysis_never_imports_runs():
    """Reading results must not depend on how they were produced: runs may import analysis, not the reverse."""
    offenders = {name: [t for t in targets if t.startswith("toolkit.runs")]
                 for name, targets in _toolkit_imports("toolkit.analysis").items()}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["toolkit.data", "toolkit.models"])
def test_data_and_models_import_nothing_else_of_the_toolkit(package):
    """Datasets and the model zoo stand alone: of the toolkit they use only its errors and the face helper."""
    allowed = ("toolkit.errors", "toolkit._faces", "toolkit")
    offenders = {name: [t for t in targets if not t.startswith(package) and t not in allowed]
                 for name, targets in _toolkit_imports(package).items()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_layering_checks_see_imports_inside_functions(tmp_path):
    """The checks read imports anywhere in a file, so a lazy import cannot slip past them."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from toolkit.runs.config import TrainConfig\n")
    assert _imports("toolkit.analysis.m", source, {"toolkit.runs.config", "toolkit.analysis.m"}) == {
        "toolkit.runs.config"}
