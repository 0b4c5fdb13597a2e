"""JSON shapes of domain values: one encoder and one type-directed decoder for every dataclass.

Times are ISO 8601 strings with their offset, points are ``{"lat", "lon"}``, enums their value,
incident numbers their ``2026-000123`` text, tuples and sets lists (sets sorted, so the output is
canonical, which the hash-chained event log relies on).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from dispatch.errors import DomainError, Invalid
from dispatch.incident import IncidentNumber
from geo.coords import CoordinateError, Point

T = TypeVar("T")


def encode(value: Any) -> Any:
    """A JSON-ready form of a domain value."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:  # most fields
        return value
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Point):
        return value.to_mapping()
    if isinstance(value, IncidentNumber):
        return str(value)
    if isinstance(value, (frozenset, set)):
        return sorted(encode(v) for v in value)
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode_fields(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_fields(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance, encoded, in declaration order."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:  # dataclasses.fields() builds its answer on every call
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    return {name: encode(getattr(obj, name)) for name in names}


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def decode(cls: type[T], data: Any, *, path: str = "") -> T:
    """Build dataclass ``cls`` from its JSON form; every failure is ``Invalid`` naming the field."""
    if not isinstance(data, Mapping):
        raise Invalid(f"{path or cls.__name__} must be an object", field=path or None)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}", field=_join(path, unknown[0]))
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _value(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise Invalid(f"{name} is required", field=_join(path, name))
    try:
        return cls(**kwargs)
    except DomainError as exc:
        if exc.field is not None and path:
            exc.field = _join(path, exc.field)
        raise


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _value(tp: Any, raw: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, raw, path)
    if origin is typing.Literal:
        return raw  # the dataclass validates the allowed values
    if origin in (tuple, frozenset):
        if not isinstance(raw, list):
            raise Invalid(f"{path} must be a list", field=path)
        items = [_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else frozenset(items)
    if tp is datetime:
        if not isinstance(raw, str):
            raise Invalid(f"{path} must be an ISO 8601 time", field=path)
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            raise Invalid(f"{path} must be an ISO 8601 time", field=path) from None
    if tp is Point:
        try:
            return Point.from_mapping(raw)
        except CoordinateError as exc:
            raise Invalid(f"{path}: {exc}", field=path) from None
    if tp is IncidentNumber:
        number = IncidentNumber.parse(raw)
        return number
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return decode(tp, raw, path=path)
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    # str, int, bool and enums arrive as JSON scalars; the dataclass checks and coerces them.
    return raw
