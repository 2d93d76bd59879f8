"""Errors a user can cause and fix, shared by every toolkit package (so none imports another for them)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A user-supplied option is invalid; the message names the fix."""


__all__ = ["ConfigError"]
