"""A declared comparison (``lfl study FILE``): settings × methods × seeds, with tuned grids.

The study file is TOML::

    [study]                       # options shared by every run
    dataset = "fashion-mnist"
    seeds = [0, 1, 2, 3, 4]       # the evaluation seeds, paired across methods
    baseline = "ce-tuned"         # the method every other method is tested against
    selection_seed = 5            # optional: the seed grids are chosen on (not among seeds)

    [[setting]]                   # what the methods are compared on
    name = "lenet5-sgd"
    model = "lenet5"
    steps = 2000

    [[method]]                    # what is compared
    name = "ce-tuned"
    loss = "ce"
    lr = [0.01, 0.03, 0.1]        # a list is a grid: the point with the lowest validation
                                  # error on the selection seed is run on every seed

Every other key is an ``lfl train`` option with underscores (a field of
:class:`~toolkit.runs.common.TrainConfig`), or ``preset`` (its values sit below any option the
file sets explicitly, as on the command line). A later table wins over an earlier one:
``[study]`` < ``[[setting]]`` < ``[[method]]``. For ``milestones`` (itself a list) a grid
is a list of lists. Everything is checked, and every run's config built, before the first
run starts.

``[study]`` may also set ``extend_edges = true`` (a choice at the end of a numeric grid extends
that grid, at most ``max_extensions`` rounds: :mod:`toolkit.runs.study_edges`), and a
``[[method]]`` may set ``steps = "match:METHOD"`` or ``loss_from = "method:[SETTING/]METHOD[:approx]"``
(equal time, or another method's learned loss trained fixed: :mod:`toolkit.runs.study_links`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, StudyError
from toolkit.runs.config import OPTION_NAMES, PRESETS, TrainConfig, coerce_option
from toolkit.runs.options import field_types
from toolkit.runs.study_links import Links, check_links, split_links

STUDY_KEYS = ("seeds", "baseline", "selection_seed", "extend_edges", "max_extensions")
NOT_IN_STUDY = ("seed", "search_jobs")  # the study sets the seed; parallelism is --jobs
MAX_GRID_POINTS = 10_000
"""Most grid points one (setting, method) group may declare, and all groups together: each is a training run."""
OPTION_TYPES = field_types(TrainConfig)
"""``{option: (type, optional)}`` from TrainConfig's own declaration (a list option's grid is a list of lists)."""


@dataclass(frozen=True)
class GridPoint:
    """One combination of grid values and the config it gives (seed still to be set)."""

    values: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class Group:
    """One (setting, method) cell of the study: its grid points, in declaration order."""

    setting: str
    method: str
    grid: dict[str, list]
    points: tuple[GridPoint, ...]
    links: Links = Links()

    @property
    def tuned(self) -> bool:
        return len(self.points) > 1


@dataclass(frozen=True)
class Study:
    """A parsed study file."""

    path: Path
    seeds: tuple[int, ...]
    selection_seed: int
    baseline: str
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    groups: tuple[Group, ...]
    extend_edges: bool = False
    max_extensions: int = 3

    def group(self, setting: str, method: str) -> Group:
        return next(g for g in self.groups if g.setting == setting and g.method == method)

    def needs_selection(self, group: Group) -> bool:
        """Whether ``group`` trains on the selection seed: a grid, a link, or another method's link to it."""
        return group.tuned or group.links.any or any(
            g.links.steps_match == group.method and g.setting == group.setting
            or g.links.loss_source is not None and g.links.loss_source.method == group.method
            and (g.links.loss_source.setting or g.setting) == group.setting for g in self.groups)


def run_key(config: TrainConfig) -> str:
    """A directory name for a config without its seed: readable prefix, stable hash of every option."""
    options = {**config.to_dict(), "seed": None}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.model}-{config.loss}-{digest}"


def selection_metric(results: dict[str, Any]) -> float:
    """Validation error (classification) or MSE (regression); inf for a failed or non-finite run."""
    value = results.get("valid_mse", results.get("valid_error")) if results else None
    return float(value) if isinstance(value, (int, float)) and value == value and abs(value) != float("inf") \
        else float("inf")


def load_study(path: str | Path) -> Study:
    """Parse and check a study file; build every grid point's config.

    Raises:
        StudyError: a missing or malformed file, an unknown option, a bad value or name.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"cannot parse {path}: {exc}") from None
    unknown = sorted(set(data) - {"study", "setting", "method"})
    if unknown:
        raise StudyError(f"{path}: unknown table {unknown[0]!r}; a study has [study], [[setting]] and [[method]]")
    shared = _table(data.get("study", {}), "[study]")
    settings = _named_tables(data.get("setting", [{"name": "default"}]), "setting")
    methods = _named_tables(data.get("method"), "method")

    seeds = shared.pop("seeds", None)
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise StudyError(f"{path}: [study] needs seeds = [0, 1, 2, ...] (distinct integers >= 0)")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: [study] seeds must be distinct; got {seeds}")
    method_names = [m["name"] for m in methods]
    baseline = shared.pop("baseline", method_names[0])
    if baseline not in method_names:
        raise StudyError(f"{path}: baseline {baseline!r} is not a method; methods: {', '.join(method_names)}")
    selection_seed = shared.pop("selection_seed", max(seeds) + 1)
    if not _is_int(selection_seed) or selection_seed < 0 or selection_seed in seeds:
        raise StudyError(f"{path}: selection_seed must be an integer >= 0 that is not among seeds; "
                         f"got {selection_seed!r}")
    extend_edges = shared.pop("extend_edges", False)
    max_extensions = shared.pop("max_extensions", 3)
    if not isinstance(extend_edges, bool):
        raise StudyError(f"{path}: [study] extend_edges must be true or false; got {extend_edges!r}")
    if not _is_int(max_extensions) or max_extensions < 0:
        raise StudyError(f"{path}: [study] max_extensions must be an integer >= 0; got {max_extensions!r}")

    groups, points = [], 0
    for setting in settings:
        for method in methods:
            where = f"{path} (setting {setting['name']!r}, method {method['name']!r})"
            own, links = split_links(_without_name(method), where)
            options = {**shared, **_without_name(setting), **own}
            points += _grid_size(options)  # Counted before any point is built.
            if points > MAX_GRID_POINTS:
                raise StudyError(f"{path}: the grids declare more than {MAX_GRID_POINTS:,} points "
                                 "(toolkit.runs.study_spec.MAX_GRID_POINTS), each a training run; use fewer values")
            groups.append(replace(_group(options, setting["name"], method["name"], path), links=links))
    check_links(groups, tuple(s["name"] for s in settings), tuple(method_names), path)
    return Study(path=path, seeds=tuple(seeds), selection_seed=selection_seed, baseline=baseline,
                 settings=tuple(s["name"] for s in settings), methods=tuple(method_names), groups=tuple(groups),
                 extend_edges=extend_edges, max_extensions=max_extensions)


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a table of option = value")
    allowed = set(OPTION_NAMES) | {"preset"} | (set(STUDY_KEYS) if where == "[study]" else {"name"})
    for key in value:
        if key in NOT_IN_STUDY:
            raise StudyError(f"{where}: {key!r} cannot be set in a study (seeds come from [study] seeds; "
                             "parallel runs from --jobs)")
        if key not in allowed:
            hint = " (use underscores: lfl train option names)" if "-" in key else ""
            raise StudyError(f"{where}: unknown option {key!r}{hint}")
    return dict(value)


def _named_tables(value: Any, kind: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"a study needs at least one [[{kind}]] table with a name")
    tables = [_table(v, f"[[{kind}]]") for v in value]
    names = [t.get("name") for t in tables]
    for name in names:
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\n") or name.startswith("."):
            raise StudyError(f"every [[{kind}]] needs a name (a plain string, no '/'); got {name!r}")
    if len(set(names)) != len(names):
        raise StudyError(f"[[{kind}]] names must be distinct; got {names}")
    return tables


def _without_name(table: dict) -> dict:
    return {k: v for k, v in table.items() if k != "name"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_grid(key: str, value: Any) -> bool:
    if not isinstance(value, list):
        return False
    if key in OPTION_TYPES and OPTION_TYPES[key][0] is tuple:
        return bool(value) and all(isinstance(v, list) for v in value)
    return True


def _grid_size(options: dict) -> int:
    """How many points a group's grid has (the product of its lists' lengths), without building them."""
    return math.prod(len(v) for k, v in options.items() if _is_grid(k, v))


def _group(options: dict, setting: str, method: str, path: Path) -> Group:
    where = f"{path} (setting {setting!r}, method {method!r})"
    preset = options.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise StudyError(f"{where}: unknown preset {preset!r}; choose {', '.join(PRESETS)}")
        options = {**PRESETS[preset], **options}
    grid = {k: v for k, v in options.items() if _is_grid(k, v)}
    for key, values in grid.items():
        if not values or len(values) != len({json.dumps(v) for v in values}):
            raise StudyError(f"{where}: the grid {key} = {values} must list distinct values")
    fixed = {k: _coerce(k, v, where) for k, v in options.items() if k not in grid}
    points = []
    for combination in itertools.product(*grid.values()):
        values = {k: _coerce(k, v, where) for k, v in zip(grid, combination)}
        try:
            config = TrainConfig(**fixed, **values)
        except ConfigError as exc:
            raise StudyError(f"{where}: {exc}") from None
        points.append(GridPoint(values=values, config=config))
    return Group(setting=setting, method=method, grid={k: [_coerce(k, v, where) for v in vs] for k, vs in grid.items()},
                 points=tuple(points))


def _coerce(key: str, value: Any, where: str) -> Any:
    """A TOML value checked as ``TrainConfig`` declares ``key`` (type, choices, check), named as in the file."""
    try:
        return coerce_option(key, value, shown=key)
    except ConfigError as exc:
        raise StudyError(f"{where}: {exc}") from None


__all__ = ["Study", "Group", "GridPoint", "StudyError", "load_study", "run_key", "selection_metric"]
