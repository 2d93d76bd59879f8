"""How an option is declared once: a dataclass field with its type, default, choices, help and check.

:func:`option` makes the field; :func:`check_option` is the one validation of a single value
(type from the dataclass's own type hints, then choices, then the declared :class:`Check`), used
by the command line, config files, studies and the Python API alike. Messages name the option
as the caller shows it (``--init-steps`` on the command line, ``init_steps`` in a study file).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from toolkit.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """A predicate on one option's value and the message when it fails.

    The message is formatted with ``option`` (the option's name as the caller shows it) and
    ``value``. ``None`` (an option left unset) is never checked.
    """

    test: Callable[[Any], bool]
    message: str

    def __call__(self, value: Any, *, option: str) -> None:
        if value is not None and not self.test(value):
            raise ConfigError(self.message.format(option=option, value=value))


def at_least(low: float) -> Check:
    """``value >= low``."""
    return Check(lambda v: v >= low, f"{{option}} must be >= {low}, got {{value}}")


def above(low: float) -> Check:
    """``value > low``."""
    return Check(lambda v: v > low, f"{{option}} must be > {low}, got {{value}}")


def within(low: float, high: float, *, include_high: bool = False) -> Check:
    """``low <= value < high`` (``<= high`` with ``include_high``)."""
    close = "]" if include_high else ")"
    return Check(lambda v: low <= v <= high if include_high else low <= v < high,
                 f"{{option}} must be in [{low}, {high}{close}, got {{value}}")


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
           check: Check | None = None, metavar: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field declaring an option: its default, help, choices and :class:`Check`.

    The type is the field's annotation; the command line, config files and studies read all of it.
    """
    metadata = {"help": help, "choices": choices, "metavar": metavar, "check": check}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """``{name: (base type, optional)}`` of a dataclass's fields, from ``typing.get_type_hints``.

    ``str | None`` gives ``(str, True)``; ``tuple[int, ...]`` gives ``(tuple, False)``.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = isinstance(hint, types.UnionType) and type(None) in args
        if optional:
            (hint,) = [a for a in args if a is not type(None)]
        out[f.name] = (typing.get_origin(hint) or hint, optional)
    return out


def coerce_value(value: Any, kind: type, *, optional: bool, option: str) -> Any:
    """``value`` as type ``kind``; never truncates.

    Integers are accepted for floats; a float is never accepted for an integer, nor a bool for a
    number. Raises ConfigError naming ``option``.
    """
    if value is None and optional:
        return None

    def bad(expected: str) -> ConfigError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigError(f"{option} must be {expected}; got {shown}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if not is_int:
            raise bad("an integer")
        return value
    if kind is float:
        if not (is_int or isinstance(value, float)):
            raise bad("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise bad("a list of integers")
        return tuple(value)
    if kind is dict:
        if not isinstance(value, dict):
            raise bad("a table of key = value")
        return dict(value)
    raise bad(getattr(kind, "__name__", str(kind)))  # a field type this function does not know: fail loudly


def check_option(f: dataclasses.Field, kind: tuple[type, bool], value: Any, *, option: str) -> Any:
    """The one validation of one option's value: its type, its choices, its declared check.

    Returns the value as the declared type. Raises ConfigError naming ``option``.
    """
    value = coerce_value(value, kind[0], optional=kind[1], option=option)
    choices = f.metadata.get("choices")
    if choices and value is not None and value not in choices:
        raise ConfigError(f"unknown {option} {value!r}: choose one of {', '.join(choices)}")
    check = f.metadata.get("check")
    if check is not None:
        check(value, option=option)
    return value


def flag(name: str) -> str:
    """The command-line flag of an option: ``init_steps`` → ``--init-steps``."""
    return "--" + name.replace("_", "-")


__all__ = ["Check", "at_least", "above", "within", "option", "field_types", "coerce_value", "check_option", "flag"]
