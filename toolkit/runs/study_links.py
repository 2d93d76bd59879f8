"""Methods of a study that depend on another method: a compute-matched step count, a reused learned loss.

Two values a ``[[method]]`` table may give, each naming another method of the study:

- ``steps = "match:METHOD"``: as many steps as fit in METHOD's training time. Both methods train once
  on the selection seed at the configured step count; this method's time per step is its selection
  run's ``wall_time_s / steps``, and its seed runs get ``floor(METHOD's wall_time_s / time per step)``
  steps (:func:`matched_steps`). ``wall_time_s`` is the run's own clock, from after data loading to
  the end of training (the offline phase, periodic validation and checkpoints included; the final
  evaluation excluded).
- ``loss_from = "method:[SETTING/]METHOD[:approx]"``: METHOD's final learned loss (``loss.json`` of its
  chosen grid point's selection-seed run; ``:approx``: its ``lfl export --approx`` closed form),
  trained fixed. Without ``SETTING/`` the source is METHOD in the same setting; with it, the loss
  learned in SETTING is reused in every setting (a transfer where the settings differ). The loss is
  copied to ``DIR/losses/<sha256>.json`` and the runs read it from there, so the file name, and with
  it every run's key, fingerprints the source loss: a run is never reused for another source.

A method that depends on another waits for that method's selection (:mod:`toolkit.runs.study`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import StudyError
from toolkit.layout import LOSS

MATCH_PREFIX = "match:"
METHOD_PREFIX = "method:"
APPROX_SUFFIX = ":approx"
LOSSES_DIR = "losses"


@dataclass(frozen=True)
class LossSource:
    """Where a reused method's loss comes from: METHOD's selection run in SETTING (None: the same setting)."""

    method: str
    setting: str | None = None
    approx: bool = False

    def text(self) -> str:
        return (f"{METHOD_PREFIX}{self.setting + '/' if self.setting else ''}{self.method}"
                f"{APPROX_SUFFIX if self.approx else ''}")


@dataclass(frozen=True)
class Links:
    """A group's dependencies: the method whose time it matches, the method whose loss it reuses."""

    steps_match: str | None = None
    loss_source: LossSource | None = None

    @property
    def any(self) -> bool:
        return self.steps_match is not None or self.loss_source is not None


def split_links(options: dict, where: str) -> tuple[dict, Links]:
    """``options`` without ``steps = "match:..."`` and ``loss_from = "method:..."``, and those two parsed."""
    options = dict(options)
    steps, source = options.get("steps"), options.get("loss_from")
    match = None
    if isinstance(steps, str) and steps.startswith(MATCH_PREFIX):
        match = steps[len(MATCH_PREFIX):]
        if not match:
            raise StudyError(f"{where}: steps = \"match:METHOD\" needs a method name")
        options.pop("steps")
    loss_source = None
    if isinstance(source, str) and source.startswith(METHOD_PREFIX):
        rest = source[len(METHOD_PREFIX):]
        approx = rest.endswith(APPROX_SUFFIX)
        rest = rest[: -len(APPROX_SUFFIX)] if approx else rest
        setting, _, method = rest.rpartition("/")
        if not method:
            raise StudyError(f"{where}: loss_from = \"method:[SETTING/]METHOD[:approx]\" needs a method name")
        loss_source = LossSource(method=method, setting=setting or None, approx=approx)
        options.pop("loss_from")
        if options.get("adapt"):
            raise StudyError(f"{where}: a loss reused from another method trains fixed; drop adapt")
        if options.get("loss", "ce") not in ("ce", "mse"):
            raise StudyError(f"{where}: loss_from = {source!r} replaces loss {options['loss']!r}; drop loss")
    return options, Links(steps_match=match, loss_source=loss_source)


def check_links(groups, settings: tuple[str, ...], methods: tuple[str, ...], path: Path) -> None:
    """Every link names an existing method that itself links to nothing (no chains, no cycles)."""
    linked = {g.method for g in groups if g.links.any}
    for group in groups:
        where = f"{path} (method {group.method!r})"
        for kind, name in (("steps = \"match:\"", group.links.steps_match),
                           ("loss_from = \"method:\"", group.links.loss_source and group.links.loss_source.method)):
            if name is None:
                continue
            if name not in methods:
                raise StudyError(f"{where}: {kind} names {name!r}, not a method; methods: {', '.join(methods)}")
            if name == group.method or name in linked:
                raise StudyError(f"{where}: {kind} must name a method that trains on its own, not {name!r}")
        source = group.links.loss_source
        if source is not None:
            if source.setting is not None and source.setting not in settings:
                raise StudyError(f"{where}: loss_from names setting {source.setting!r}; settings: {', '.join(settings)}")
            origin = next(g for g in groups if g.method == source.method
                          and g.setting == (source.setting or group.setting))
            if not origin.points[0].config.learned:
                raise StudyError(f"{where}: method {source.method!r} learns no loss to reuse")


def matched_steps(*, target_time_s: float, own_time_s: float, own_steps: int) -> dict[str, Any]:
    """The step count that fits ``target_time_s`` at this method's measured time per step, and how it was found.

    Raises:
        StudyError: a selection run that took no measurable time or no steps.
    """
    if not (own_steps > 0 and own_time_s > 0 and math.isfinite(own_time_s) and math.isfinite(target_time_s)):
        raise StudyError(f"cannot match steps: the selection run took {own_time_s!r} s for {own_steps} steps")
    per_step = own_time_s / own_steps
    return {"target_time_s": target_time_s, "own_time_s": own_time_s, "own_steps": own_steps,
            "time_per_step_s": per_step, "steps": max(1, math.floor(target_time_s / per_step))}


def write_source_loss(run_dir: Path, out: Path, *, approx: bool) -> Path:
    """The source run's final loss (or its ``--approx`` closed form) as ``out/losses/<sha256>.json``."""
    from toolkit.analysis.export import export_loss

    if approx:
        text, _ = export_loss(str(run_dir), fmt="json", approx=True)
    else:
        text = (run_dir / LOSS).read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = (out / LOSSES_DIR / f"{digest}.json").absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        target.write_text(text)
    return target


__all__ = ["Links", "LossSource", "split_links", "check_links", "matched_steps", "write_source_loss"]
