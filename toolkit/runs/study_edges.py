"""Choices at the edge of a grid, and the geometric extension of a grid past that edge.

A grid point chosen at the smallest or the largest value of a numeric option (a grid of at least
two values) says the best value may lie outside the grid. :func:`grid_edges` names each such
option and end; with ``[study] extend_edges = true`` the study adds :func:`next_value` at that
end, trains the new points on the selection seed and chooses again, until the choice is interior,
``max_extensions`` rounds have been added, or the option's own check refuses the next value.

The next value continues the grid geometrically: the declared grid's two values nearest that
edge give the ratio (``[0.01, 0.03, 0.1]`` upward: 0.1 / 0.03), the previous edge times it is
rounded to as many significant digits as the declared values need (0.3, then 1, then 3). Integer
options round to integers. A grid with a value ≤ 0 is flagged but not extended.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from typing import Any

from toolkit.errors import ConfigError
from toolkit.runs.config import coerce_option
from toolkit.runs.study_spec import GridPoint

UPPER, LOWER = "upper", "lower"


def numeric(values: list) -> bool:
    """Whether a grid is of numbers (not booleans, not lists) with at least two distinct values."""
    return (len(set(values)) >= 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))


def grid_edges(grid: dict[str, list], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"option", "end", "value"}]`` for each numeric option whose chosen value is its grid's min or max."""
    edges = []
    for option, values in grid.items():
        if not numeric(values) or option not in chosen:
            continue
        value = chosen[option]
        if value == max(values):
            edges.append({"option": option, "end": UPPER, "value": value})
        elif value == min(values):
            edges.append({"option": option, "end": LOWER, "value": value})
    return edges


def _significant_digits(value: float) -> int:
    """How many significant digits ``value`` needs (0.03: 1, 0.025: 2), at most 6."""
    for digits in range(1, 7):
        if math.isclose(float(f"{value:.{digits - 1}e}"), value, rel_tol=1e-9):
            return digits
    return 6


def next_value(declared: list, current: list, end: str) -> int | float | None:
    """The value past ``end`` of the ``current`` grid (the declared grid, extended), or None: no extension.

    None where a value is ≤ 0 (no geometric continuation) or an integer grid's next value rounds to
    the edge itself.
    """
    ordered = sorted(declared)
    if ordered[0] <= 0:
        return None
    ratio = ordered[-1] / ordered[-2] if end == UPPER else ordered[0] / ordered[1]
    edge = max(current) if end == UPPER else min(current)
    raw = edge * ratio
    if all(isinstance(v, int) for v in declared):
        value = round(raw)
        return None if value == edge or value <= 0 else value
    digits = max(_significant_digits(float(v)) for v in declared)
    return float(f"{raw:.{digits - 1}e}")


def extend_grid(declared: dict[str, list], grid: dict[str, list], points: list[GridPoint],
                edges: list[dict[str, Any]], notes: dict[tuple[str, str], dict]) -> list[GridPoint]:
    """One round of extension: the next value past each edge in ``edges`` appended to ``grid`` (in place),
    and the new grid points it makes (every combination with the other options' values).

    ``notes`` (in place) holds, per (option, end), ``{"option", "end", "added": [...], "stopped": reason}``;
    an edge whose note is stopped is not extended again.
    """
    base = points[0].config
    for edge in edges:
        option, end = edge["option"], edge["end"]
        note = notes.setdefault((option, end), {"option": option, "end": end, "added": [], "stopped": None})
        if note["stopped"]:
            continue
        value = next_value(declared[option], grid[option], end)
        if value is None:
            note["stopped"] = "no geometric continuation (a value <= 0, or integers that would repeat)"
            continue
        try:
            value = coerce_option(option, value, shown=option)
            replace(base, **{option: value})
        except ConfigError as exc:
            note["stopped"] = f"the next value {value:g} is refused: {exc}"
            continue
        grid[option].append(value)
        note["added"].append(value)
    seen = {json.dumps(p.values, sort_keys=True) for p in points}
    new = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        if json.dumps(values, sort_keys=True) in seen:
            continue
        try:
            new.append(GridPoint(values=values, config=replace(base, **values)))
        except ConfigError:
            continue  # a combination the config refuses (each value alone was accepted)
    return new


__all__ = ["UPPER", "LOWER", "numeric", "grid_edges", "next_value", "extend_grid"]
