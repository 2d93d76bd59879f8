"""Errors a user can cause and fix, shared by every toolkit package (so none imports another for them).

Every one derives from :class:`UserError` (defined in the leaf package ``losses``, whose
``LossFileError`` and ``FormulaError`` derive from it too), so the command line catches
``UserError`` once. This module is the one import path of :class:`ConfigError`.
"""
from __future__ import annotations

from losses.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-supplied option is invalid; the message names the fix."""


class StudyError(ConfigError):
    """The study file is missing, malformed or names something unknown; the message says what to fix."""


__all__ = ["UserError", "ConfigError", "StudyError"]
