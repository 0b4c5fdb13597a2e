"""Validation helpers for the frozen dataclasses' ``__post_init__`` (one wording for every rule)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from dispatch.errors import Invalid
from geo.coords import Point

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

# Ids appear in URLs, log subjects and derived ids ("<incident>-A3"), so no spaces or slashes.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Incident types and zones are vocabulary keys shared with response plans.
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def set_field(obj: object, name: str, value: object) -> None:
    """Store a normalised value on a frozen dataclass during ``__post_init__``."""
    object.__setattr__(obj, name, value)


_MAKERS: dict[type, Callable[..., Any]] = {}


def derived(cls: type[T], *values: object) -> T:
    """A frozen slotted dataclass made from ``values`` (every field, in the order of
    `dataclasses.fields`, a base class's first) without its ``__post_init__``: for a value
    derived from one already checked, on a path that runs for every alert of a storm, where the
    caller checks what it changed. Built through the slots' own setters, by a function made once
    per class (as dataclasses make ``__init__``), it costs a fraction of a checked construction."""
    make = _MAKERS.get(cls)
    if make is None:
        make = _MAKERS[cls] = maker(cls)
    return make(*values)  # type: ignore[no-any-return]


def maker(cls: type) -> Callable[..., Any]:
    """`derived` for one class as a function of its values (for a caller that makes one per alert)."""
    # Every field, a base class's too (a subclass's __slots__ name only its own).
    names = tuple(f.name for f in fields(cls))
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update((f"set_{i}", getattr(cls, name).__set__) for i, name in enumerate(names))
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    set_{i}(obj, v{i})\n" for i in range(len(names)))
    name = f"derived_{cls.__name__}"  # a wrong number of values is a TypeError naming the class
    exec(f"def {name}({args}):\n    obj = new(cls)\n{body}    return obj\n", scope)  # the names are the fields'
    return scope[name]  # type: ignore[no-any-return]


def ident(value: object, name: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise Invalid(
            f"{name} must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            field=name,
        )
    return value


def optional_ident(value: object, name: str) -> str | None:
    return None if value is None else ident(value, name)


def slug(value: object, name: str) -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise Invalid(
            f"{name} must be 1-64 lowercase letters, digits, '_' or '-', got {str(value)[:40]!r}",
            field=name,
        )
    return value


def text(value: object, name: str, *, max_len: int, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if not allow_empty and not value.strip():
        raise Invalid(f"{name} must not be empty", field=name)
    if len(value) > max_len:
        raise Invalid(f"{name} is longer than {max_len} characters", field=name)
    return value


def integer(value: object, name: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Invalid(f"{name} must be an integer in {lo}..{hi}, got {value!r}", field=name)
    return value


def seconds(value: object, name: str, *, lo: float = 0.0, hi: float = 86_400.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{name} must be a number of seconds", field=name)
    f = float(value)
    if not math.isfinite(f) or not lo <= f <= hi:
        raise Invalid(f"{name} must be within {lo:g}..{hi:g} seconds, got {value!r}", field=name)
    return f


def aware(value: object, name: str) -> datetime:
    # Naive times are ambiguous across nodes and DST changes; the domain never guesses a zone.
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise Invalid(f"{name} must be a timezone-aware datetime", field=name)
    return value


def optional_aware(value: object, name: str) -> datetime | None:
    return None if value is None else aware(value, name)


def point(value: object, name: str) -> Point:
    if not isinstance(value, Point):
        raise Invalid(f"{name} must be a Point(lat, lon)", field=name)
    return value


def optional_point(value: object, name: str) -> Point | None:
    return None if value is None else point(value, name)


def member(value: object, enum: type[E], name: str) -> E:
    """Coerce a string (or enum member) to ``enum``, so values can be written as plain strings."""
    if isinstance(value, enum):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise Invalid(f"{name} must be one of {allowed}; got {str(value)[:40]!r}", field=name) from None


def optional_member(value: object, enum: type[E], name: str) -> E | None:
    return None if value is None else member(value, enum, name)


def members(values: object, enum: type[E], name: str, *, min_len: int = 0) -> frozenset[E]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise Invalid(f"{name} must be a collection of {enum.__name__} values", field=name)
    out = frozenset(member(v, enum, name) for v in values)
    if len(out) < min_len:
        raise Invalid(f"{name} needs at least {min_len} value(s)", field=name)
    return out


def tuple_of(values: object, kind: type[Any] | tuple[type[Any], ...], name: str, *,
             max_len: int = 10_000) -> tuple[Any, ...]:
    """A tuple whose items are all instances of ``kind`` (lists are accepted and frozen)."""
    if not isinstance(values, (tuple, list)):
        raise Invalid(f"{name} must be a list", field=name)
    if len(values) > max_len:
        raise Invalid(f"{name} has more than {max_len} items", field=name)
    for item in values:
        if not isinstance(item, kind):
            raise Invalid(f"{name} contains an item of the wrong type", field=name)
    return tuple(values)


# Many ids at once, joined by NUL (which no id may contain): one C-level match instead of one per
# id. Aggregates re-validate their id lists on every evolve, and incidents collect many alerts.
_IDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}(?:\x00[A-Za-z0-9][A-Za-z0-9._:-]{0,127})*")


def idents(values: object, name: str, *, max_len: int = 10_000, unique: bool = True) -> tuple[str, ...]:
    out = tuple_of(values, str, name, max_len=max_len)
    joined = "\x00".join(out)
    if out and (joined.count("\x00") != len(out) - 1 or not _IDS.fullmatch(joined)):
        for v in out:  # find the culprit for the message
            ident(v, name)
    if unique and len(set(out)) != len(out):
        raise Invalid(f"{name} lists the same id twice", field=name)
    return out
