"""The normalisation of a gradient-scaled loss as one comment line above its formula text.

Why: the formula of a ``GradientScaledLoss`` (what ``lfl export`` writes as SymPy text,
LaTeX or Python source) is its inner loss's *shape*: a gradient direction, whose step
size comes from the task loss's gradient norm times the learned scale. Trained raw, the
same formula takes steps of another size (often many times smaller), so the text carries
one header line saying so, for people, with the exact numbers for the toolkit::

    # normalised: a gradient direction; train with --loss-scale normalised (steps of 1x the task
    loss's gradient norm; max_scale=1.0, scale_logit=0.0, reduction=mean)

(one line; ``%`` instead of ``#`` in LaTeX). :func:`split_header` reads it back: only that
fixed pattern, its three values checked (a finite bound >= 1, a finite scale logit, a known
reduction); any other ``#`` line is a comment and is dropped. No text is evaluated.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from losses.base import LearnedLoss
from losses.io import LossFileError
from losses.scaled import GradientScaledLoss

PREFIX = "normalised:"
_VALUES = re.compile(r"\(steps of [^;()]*; max_scale=(?P<max_scale>[^\s,()]+), "
                     r"scale_logit=(?P<scale_logit>[^\s,()]+), reduction=(?P<reduction>\w+)\)\s*$")
REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class Normalisation:
    """What a ``GradientScaledLoss`` adds to its shape: bound B, logit ρ of s = B ** tanh(ρ), reduction."""

    max_scale: float
    scale_logit: float
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_scale) and self.max_scale >= 1):
            raise LossFileError(f"normalisation header: max_scale must be a finite number >= 1; got {self.max_scale!r}")
        if not math.isfinite(self.scale_logit):
            raise LossFileError(f"normalisation header: scale_logit must be finite; got {self.scale_logit!r}")
        if self.reduction not in REDUCTIONS:
            raise LossFileError(f"normalisation header: reduction must be one of {', '.join(REDUCTIONS)}; "
                                f"got {self.reduction!r}")

    @property
    def scale(self) -> float:
        """s = max_scale ** tanh(scale_logit): each step's gradient norm over the task loss's."""
        return self.max_scale ** math.tanh(self.scale_logit)

    @classmethod
    def of(cls, loss: LearnedLoss) -> Normalisation | None:
        """The normalisation of ``loss`` (None unless it is a ``GradientScaledLoss``)."""
        if not isinstance(loss, GradientScaledLoss):
            return None
        return cls(max_scale=loss.max_scale, scale_logit=float(loss.scale_logit.detach().double()),
                   reduction=loss.reduction)

    def wrap(self, shape: LearnedLoss) -> GradientScaledLoss:
        """``shape`` inside a ``GradientScaledLoss`` with this bound, scale and reduction."""
        wrapped = GradientScaledLoss(shape, max_scale=self.max_scale, reduction=self.reduction)
        with torch.no_grad():
            wrapped.scale_logit.fill_(self.scale_logit)
        return wrapped

    def header(self, *, comment: str = "#") -> str:
        """The one header line (``comment`` is ``#`` for SymPy text and Python, ``%`` for LaTeX)."""
        return (f"{comment} {PREFIX} a gradient direction; train with --loss-scale normalised (steps of "
                f"{self.scale:.4g}x the task loss's gradient norm; max_scale={self.max_scale!r}, "
                f"scale_logit={self.scale_logit!r}, reduction={self.reduction})")


def scale_header(loss: LearnedLoss, *, comment: str = "#") -> str | None:
    """The header line for ``loss``'s exported formula, or None when the formula is the loss itself."""
    normalisation = Normalisation.of(loss)
    return None if normalisation is None else normalisation.header(comment=comment)


def split_header(text: str) -> tuple[str, Normalisation | None]:
    """``(formula text, normalisation or None)``: ``#`` lines dropped, a normalisation header read.

    Raises:
        LossFileError: A ``# normalised:`` line that is not the header :func:`scale_header`
            writes, two of them, or values out of range (one line naming the problem).
    """
    found: list[Normalisation] = []
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            kept.append(line)
            continue
        if not stripped[1:].lstrip().startswith(PREFIX):
            continue
        match = _VALUES.search(stripped)
        if match is None:
            raise LossFileError(f"a '# {PREFIX}' line must be the header lfl export writes, ending in "
                                "'(steps of ...; max_scale=B, scale_logit=R, reduction=mean)'")
        try:
            max_scale, scale_logit = float(match["max_scale"]), float(match["scale_logit"])
        except ValueError:
            raise LossFileError("normalisation header: max_scale and scale_logit must be numbers") from None
        found.append(Normalisation(max_scale=max_scale, scale_logit=scale_logit, reduction=match["reduction"]))
    if len(found) > 1:
        raise LossFileError(f"more than one '# {PREFIX}' header; a formula has one normalisation")
    return "\n".join(kept).strip(), (found[0] if found else None)


__all__ = ["Normalisation", "PREFIX", "scale_header", "split_header"]
