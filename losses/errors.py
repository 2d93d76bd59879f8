"""The base of every error a user can cause and fix (here, so the leaf package ``losses`` can use it too).

``toolkit.errors`` re-exports :class:`UserError`; the command line catches it once and prints its
one-line message with exit status 2, never a traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix: a bad option, file, name or input; ``str(error)`` says the fix.

    Concrete errors also derive from the built-in type they have always been (``ValueError``,
    ``RuntimeError``), so existing ``except`` clauses keep catching them.
    """


__all__ = ["UserError"]
