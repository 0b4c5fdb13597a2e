"""Native JSON alerts (``POST /api/v1/alerts`` and ``/alerts/batch``): strict validation to a report.

The shape (docs/intake.md, INTERFACES.md)::

    {"source": "acme-smoke", "id": "det-17/2026-03-01T12:00:05Z", "kind": "smoke",
     "time": "2026-03-01T12:00:05Z", "location": {"lat": 60.17, "lon": 24.94},
     "severity": "Severe", "description": "…", "data": {…}}

``location`` is a GeoJSON Point, Polygon or MultiPolygon (``[lon, lat]``) or ``{"lat", "lon"}``.
Optional ``urgency``, ``certainty`` and ``headline`` take CAP's words. Every bad field is
reported at once, each with its path (``/location/lat``), and nothing is guessed: a native
sender controls its format, so a mistake is refused rather than recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from dispatch._checks import maker
from dispatch.alert_rules import AlertKind, Certainty, Severity, Urgency, normalise
from geo.coords import Point
from icp import jsontext
from icp.intake.report import (
    DEFAULT_CONFIG,
    AlertReport,
    Finding,
    IntakeConfig,
    IntakeError,
    LocationFlag,
    MsgType,
    Problems,
    Status,
    check_ident,
    geojson_shape,
    inside_service_area,
    lat_lon_point,
    load_json,
    parse_time,
    place,
    place_point,
)

MAX_DESCRIPTION_CHARS = 4_000
MAX_HEADLINE_CHARS = 200
MAX_DATA_BYTES = 16 * 1024
MAX_LOCATION_POSITIONS = 10_000
MAX_BATCH_ITEMS = 1_000
MAX_BATCH_BYTES = 8 * 1024 * 1024

REQUIRED = ("source", "id", "kind", "time", "location")
OPTIONAL = ("severity", "urgency", "certainty", "headline", "description", "data")
GEOMETRY_TYPES = ("Point", "Polygon", "MultiPolygon")

E = TypeVar("E", bound=StrEnum)


def parse_native(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any],
    config: IntakeConfig = DEFAULT_CONFIG,
    *,
    now: datetime | None = None,
) -> AlertReport:
    """One native alert (a raw body or an already decoded object) as a report.

    Raises `IntakeError` (``invalid_alert`` with every bad field in ``details``; ``too_large``;
    ``malformed_json``). ``now``, if given, only serves to flag times from the future.
    """
    obj = body if isinstance(body, Mapping) else load_json(body, max_bytes=config.max_json_bytes, what="alert")
    return _alert(obj, config, now)


def parse_native_batch(
    body: bytes | bytearray | memoryview | str | list[Any] | Mapping[str, Any],
    config: IntakeConfig = DEFAULT_CONFIG,
    *,
    now: datetime | None = None,
    max_items: int = MAX_BATCH_ITEMS,
) -> list[AlertReport | IntakeError]:
    """A batch — a JSON array of alerts or ``{"alerts": [...]}`` — as one result per item.

    A body that is not a batch at all raises `IntakeError`; a bad item becomes an `IntakeError`
    in its place, its paths prefixed with the item's (``/3/location`` or ``/alerts/3/location``),
    so the good items are still taken.
    """
    obj, prefix = batch_items(body, max_items=max_items)
    out: list[AlertReport | IntakeError] = []
    for i, item in enumerate(obj):
        try:
            out.append(_alert(item, config, now))
        except IntakeError as exc:
            out.append(exc.prefixed(f"{prefix}/{i}"))
    return out


def batch_items(
    body: bytes | bytearray | memoryview | str | list[Any] | Mapping[str, Any], *, max_items: int = MAX_BATCH_ITEMS,
) -> tuple[list[Any], str]:
    """A batch's items as sent, and the path they sit under ("" for an array, "/alerts" for
    ``{"alerts": [...]}``); `IntakeError` when the body is not a batch."""
    obj: Any = body if isinstance(body, (list, Mapping)) else load_json(body, max_bytes=MAX_BATCH_BYTES, what="batch")
    prefix = ""
    if isinstance(obj, Mapping):
        extra = sorted(set(obj) - {"alerts"})
        if extra or not isinstance(obj.get("alerts"), list):
            raise IntakeError("invalid_alert", 'a batch is a JSON array of alerts or {"alerts": [...]}', "")
        obj, prefix = obj["alerts"], "/alerts"
    if not isinstance(obj, list):
        raise IntakeError("invalid_alert", 'a batch is a JSON array of alerts or {"alerts": [...]}', "")
    if not obj:
        raise IntakeError("invalid_alert", "a batch needs at least one alert", prefix)
    if len(obj) > max_items:
        raise IntakeError("too_large", f"a batch holds at most {max_items} alerts, got {len(obj)}", prefix)
    return obj, prefix


def _alert(obj: Any, config: IntakeConfig, now: datetime | None) -> AlertReport:
    if type(obj) is not dict and not isinstance(obj, Mapping):  # a decoded body's objects are dicts
        raise IntakeError("invalid_alert", "an alert must be a JSON object", "")
    values: dict[str, Any] = {}
    try:  # an alert as it should be: each member it has read once
        for name, value in obj.items():
            where, reader = _READER_OF[name]
            values[name] = reader(value, where)
        if not values.keys() >= _KNOWN_REQUIRED:
            raise KeyError("a required member is missing")
    except (KeyError, IntakeError):  # something is wrong: every problem, in the documented order
        _problems(obj).raise_if_any("invalid_alert")
        raise  # not reached: `_problems` finds what the quick reading tripped on

    sent = values["time"]
    findings = ((Finding("time_in_future", "/time", f"{obj['time']} is ahead of the server's clock"),)
                if now is not None and config.too_far_ahead(sent, now) else ())
    # The sender's own details stay apart from what intake adds, so no key of theirs is overwritten.
    data: dict[str, Any] = {"native": values["data"]} if "data" in values else {}
    location = values["location"]
    if isinstance(location, Point) and inside_service_area(location, config):  # a sensor's usual case
        placed: tuple[Point | None, Any, tuple[LocationFlag, ...]] = (location, None, ())
    else:
        placement = place_point(location, config) if isinstance(location, Point) else place(location, config)
        placed = (placement.location, placement.area, placement.flags)
        if placement.data:
            data["placement"] = dict(placement.data)
    get = values.get
    fields = (values["source"], values["id"], values["kind"], sent, "native", MsgType.ALERT, Status.ACTUAL, (),
              get("severity", Severity.UNKNOWN), get("urgency", Urgency.UNKNOWN), get("certainty", Certainty.UNKNOWN),
              get("headline", ""), get("description", ""), "", *placed, findings, (), None, False, data)
    if placed[1] is None:
        # Every value above passed the readers' checks, which are those of the report's own (its
        # text bounds are wider): a point alert's report is made without checking them twice.
        report: AlertReport = _MAKE_REPORT(*fields)
        return report
    return AlertReport(**dict(zip(_REPORT_FIELDS, fields, strict=True)))


def _problems(obj: Mapping[str, Any]) -> Problems:
    """Every problem of an alert, in the order of `REQUIRED`, then `_READERS`."""
    problems = Problems()
    if not _KNOWN.issuperset(obj):
        for name in sorted(set(obj) - _KNOWN):
            problems.add("unknown_field", f"/{name[:40]}", f"unknown field {name[:40]!r}")
    for name in REQUIRED:
        if name not in obj:
            problems.add("missing_field", f"/{name}", f"{name} is required")
    for name, where, reader in _READERS:
        if name in obj:
            try:
                reader(obj[name], where)
            except IntakeError as exc:
                problems.add("invalid_field", exc.field, exc.message)
    return problems


def _kind(value: object, where: str) -> AlertKind:
    kind: AlertKind = _vocab(AlertKind, value, where)
    return kind


def _vocab(enum: type[E], value: object, where: str) -> E:
    member = normalise(enum, value)
    if member is None:
        allowed = ", ".join(m.value for m in enum)
        raise IntakeError("invalid_alert", f"must be one of {allowed}; got {str(value)[:40]!r}", where)
    return member


def _text(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise IntakeError("invalid_alert", "must be a string", where)
    if len(value) > limit:
        raise IntakeError("invalid_alert", f"is {len(value)} characters; at most {limit}", where)
    return value


def _location(value: object, where: str) -> Any:
    """A GeoJSON geometry as a shape, or ``{"lat", "lon"}`` as a `Point` (placed without a shape)."""
    if isinstance(value, dict) and "type" in value:
        return geojson_shape(value, where, allowed=GEOMETRY_TYPES, max_positions=MAX_LOCATION_POSITIONS)
    return lat_lon_point(value, where)


def _data(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise IntakeError("invalid_alert", "must be a JSON object", where)
    try:
        size = len(jsontext.compact(value).encode("utf-8"))
    except (TypeError, ValueError):  # only from Python callers; a decoded body always encodes
        raise IntakeError("invalid_alert", "must hold only JSON values", where) from None
    if size > MAX_DATA_BYTES:
        raise IntakeError("invalid_alert", f"is {size} bytes encoded; at most {MAX_DATA_BYTES}", where)
    return value


_KNOWN = frozenset(REQUIRED + OPTIONAL)
_REPORT_FIELDS = tuple(f.name for f in dataclass_fields(AlertReport))  # the order `maker` takes them in
_MAKE_REPORT = maker(AlertReport)  # `derived` for reports, looked up once
_KNOWN_REQUIRED = frozenset(REQUIRED)
# Each member's reader, in the order its problems are listed: (name, JSON pointer, reader(value, where)).
_READERS: tuple[tuple[str, str, Callable[[Any, str], Any]], ...] = tuple(
    (name, f"/{name}", reader) for name, reader in (
    ("source", check_ident),
    ("id", check_ident),
    ("kind", _kind),
    ("time", parse_time),
    ("location", _location),
    ("severity", partial(_vocab, Severity)),
    ("urgency", partial(_vocab, Urgency)),
    ("certainty", partial(_vocab, Certainty)),
    ("headline", partial(_text, limit=MAX_HEADLINE_CHARS)),
    ("description", partial(_text, limit=MAX_DESCRIPTION_CHARS)),
    ("data", _data),
))
_READER_OF = {name: (where, reader) for name, where, reader in _READERS}
