"""Package faces whose public names load their module on first use (PEP 562), so imports stay cheap."""
from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_names(package: str, where: dict[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for a package whose name ``n`` lives in ``package.where[n]``."""

    def __getattr__(name: str):
        if name in where:
            return getattr(import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
