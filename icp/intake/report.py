"""The alert report every intake format produces, its errors and findings, and where it is placed.

Each format (native JSON, CAP 1.2, SensorThings) turns a request body into one `AlertReport` or
raises `IntakeError`. Both are plain values: no I/O, no clock (a caller that wants "now" passes
it). The report says where the alert is (`location`, `area`) only when that is believable; when
it is not, `location_flags` says why, so an alert is never silently placed in the wrong city.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import orjson
import shapely
from shapely.geometry import Point as ShapelyPoint
from shapely.geometry.base import BaseGeometry

from dispatch.alert_rules import AlertKind, Certainty, Severity, Urgency, normalise
from geo.coords import CoordinateError, Point
from geo.geojson import GeometryError, axis_swap_suspected, geometry_from_geojson, geometry_to_geojson, swap_axes
from icp import jsontext

MAX_ID_CHARS = 200
MAX_HEADLINE_CHARS = 1_000
MAX_DESCRIPTION_CHARS = 20_000  # what a report keeps; the raw payload is stored verbatim anyway
MAX_LANGUAGE_CHARS = 64
MAX_REFERENCES = 1_000
MAX_FINDINGS = 200
MAX_INFOS = 64
MAX_CAP_BYTES = 256 * 1024
MAX_JSON_BYTES = 64 * 1024

RawFormat = Literal["native", "cap", "sensorthings"]
RAW_FORMATS: tuple[RawFormat, ...] = ("native", "cap", "sensorthings")

# Stable codes of IntakeError, and the HTTP status each suggests (413 for size, 400 for bodies
# that are not parseable at all, 422 for well-formed bodies with bad content).
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "too_large": 413,
        "malformed_json": 400,
        "malformed_xml": 400,
        "unsupported_encoding": 400,
        "xml_forbidden": 400,
        "not_cap": 422,
        "schema_invalid": 422,
        "invalid_alert": 422,
        "invalid_area": 422,
        "not_an_observation": 422,
        "unknown_datastream": 422,
    }
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
E = TypeVar("E", bound=StrEnum)


class MsgType(StrEnum):
    """CAP ``msgType``, lower-cased; native and SensorThings alerts are always ``alert``."""

    ALERT = "alert"
    UPDATE = "update"
    CANCEL = "cancel"
    ACK = "ack"
    ERROR = "error"


class Status(StrEnum):
    """CAP ``status``; only ``actual`` alerts may open incidents. ``unknown``: unreadable in a
    tolerant parse (treated as not actual)."""

    ACTUAL = "actual"
    EXERCISE = "exercise"
    SYSTEM = "system"
    TEST = "test"
    DRAFT = "draft"
    UNKNOWN = "unknown"


class LocationFlag(StrEnum):
    """Why a report's location is missing, doubtful or derived."""

    NO_LOCATION = "no_location"
    OUTSIDE_SERVICE_AREA = "outside_service_area"
    AXIS_SWAP_SUSPECTED = "axis_swap_suspected"  # inside only with lat and lon exchanged: not used
    GEOCODE_ONLY_UNRESOLVED = "geocode_only_unresolved"
    GEOCODE_RESOLVED = "geocode_resolved"  # the area came from the configured geocode table
    NONCONFORMING_LOCATION = "nonconforming_location"  # read from elements outside the standard
    REGISTRY_LOCATION = "registry_location"  # the sensor registry placed it, not the message


# Flags that keep an alert from opening an incident on its own: a person must look first.
DOUBTFUL_FLAGS = frozenset(
    {LocationFlag.NO_LOCATION, LocationFlag.OUTSIDE_SERVICE_AREA, LocationFlag.AXIS_SWAP_SUSPECTED}
)


# --- errors and findings ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong or odd in an input: a stable ``code``, where (``field``, a JSON-pointer-like
    path such as ``/info/0/area/1/polygon/0``) and a message for people."""

    code: str
    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Finding:
        return cls(str(obj["code"]), str(obj["field"]), str(obj["message"]))


class IntakeError(ValueError):
    """An input refused. ``code`` is stable (see `ERROR_STATUS`); ``field`` is the path of the
    offending part ("" for the whole body); ``details`` lists every problem when there are several
    (native validation reports all bad fields at once; strict CAP all XSD errors)."""

    def __init__(self, code: str, message: str, field: str = "", *, details: Sequence[Finding] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = tuple(details)

    @property
    def status(self) -> int:
        """The HTTP status this error suggests."""
        return ERROR_STATUS.get(self.code, 422)

    def errors(self) -> list[dict[str, str]]:
        """The problem+json ``errors`` member: ``[{field, message}, …]``."""
        items = self.details or (Finding(self.code, self.field, self.message),)
        return [{"field": f.field, "message": f.message} for f in items]

    def prefixed(self, prefix: str) -> IntakeError:
        """The same error with every path under ``prefix`` (an item of a batch: ``/3``)."""
        return IntakeError(
            self.code,
            self.message,
            prefix + self.field,
            details=[Finding(f.code, prefix + f.field, f.message) for f in self.details],
        )

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "message": self.message, "errors": self.errors()}


class Problems:
    """Collects findings while a body is read; strict readers turn them into one `IntakeError`."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Finding] = []

    def add(self, code: str, where: str, message: str) -> None:
        if len(self.items) < MAX_FINDINGS:
            self.items.append(Finding(code, where, message))

    def raise_if_any(self, code: str) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise IntakeError(code, f"{first.field or 'body'}: {first.message}{more}", first.field, details=self.items)


# --- shared readers --------------------------------------------------------------------------


def _shape_json(value: object) -> Any:
    """orjson's fallback for a report's area (a shapely geometry)."""
    if isinstance(value, BaseGeometry):
        return geometry_to_geojson(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Made once: json.loads with an option builds a decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# A run of 19 digits, found by mapping every digit to "0" and anything else to a space, then
# looking for nineteen "0"s: a regular expression tried a match at every digit of a batch, and
# cost four times as much as decoding it.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"0" * 19


def load_json(body: bytes | bytearray | memoryview | str, *, max_bytes: int, what: str) -> Any:
    """Decode a JSON body, refusing more than ``max_bytes``, NaN/Infinity and absurd nesting."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) > max_bytes:
        raise IntakeError("too_large", f"{what} is {len(raw)} bytes; at most {max_bytes} are accepted")
    # orjson reads most bodies several times faster. It reads integers beyond 64 bits as floats,
    # so a body with a run of 19 digits goes to the standard library, as does anything orjson
    # refuses (UTF-16 or -32, a BOM, a lone surrogate, bad JSON): its answer or error stands.
    if _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        # As json.loads reads bytes: UTF-8, -16 or -32 by their first bytes (bad UTF-8: ValueError).
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except json.JSONDecodeError as exc:
        raise IntakeError(
            "malformed_json", f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise IntakeError("malformed_json", f"{what} is nested too deeply") from None
    except ValueError as exc:  # bad UTF-8, a 5,000-digit integer, NaN
        raise IntakeError("malformed_json", f"{what} is not valid JSON: {str(exc)[:120]}") from None


def parse_time(value: object, where: str) -> datetime:
    """An RFC 3339 / ISO 8601 date-time with a UTC offset (``Z`` allowed) as an aware datetime."""
    if not isinstance(value, str) or not 10 <= len(value) <= 64 or ("T" not in value and "t" not in value):
        raise IntakeError("invalid_alert", "must be a date-time such as 2026-03-01T12:00:00+02:00", where)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:  # with spaces around it (stripped only when needed: a copy of every alert's time)
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise IntakeError("invalid_alert", f"{value[:40]!r} is not an ISO 8601 date-time", where) from None
    if parsed.utcoffset() is None:
        # A time without an offset means a different instant on every node; never guess.
        raise IntakeError("invalid_alert", f"{value[:40]!r} has no UTC offset (add Z or +hh:mm)", where)
    return parsed


def clean_text(value: object, where: str, *, max_chars: int, problems: Problems | None = None) -> str:
    """Text as a report keeps it: a string, cut at ``max_chars`` (noted in ``problems``)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise IntakeError("invalid_alert", "must be a string", where)
    if len(value) > max_chars:
        if problems is None:
            raise IntakeError("invalid_alert", f"is longer than {max_chars} characters", where)
        problems.add("truncated", where, f"{len(value)} characters, cut to {max_chars}")
        return value[:max_chars]
    return value


def check_ident(value: object, where: str) -> str:
    """A source or identifier: 1-200 characters, no control characters, not only spaces."""
    if not isinstance(value, str) or not value.strip():
        raise IntakeError("invalid_alert", "must be a non-empty string", where)
    if len(value) > MAX_ID_CHARS:
        raise IntakeError("invalid_alert", f"is longer than {MAX_ID_CHARS} characters", where)
    if not value.isprintable() and _CONTROL.search(value):  # printable text has no control characters
        raise IntakeError("invalid_alert", "must not contain control characters", where)
    return value


# --- the report ------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time_or_none(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True, slots=True)
class InfoSummary:
    """One CAP ``info`` block, summarised (every block is kept, whichever was selected)."""

    language: str
    kind: AlertKind = AlertKind.OTHER
    event: str = ""
    categories: tuple[str, ...] = ()
    urgency: Urgency = Urgency.UNKNOWN
    severity: Severity = Severity.UNKNOWN
    certainty: Certainty = Certainty.UNKNOWN
    headline: str = ""
    sender_name: str = ""
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    event_codes: tuple[tuple[str, str], ...] = ()
    area_descs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "kind": self.kind.value,
            "event": self.event,
            "categories": list(self.categories),
            "urgency": self.urgency.value,
            "severity": self.severity.value,
            "certainty": self.certainty.value,
            "headline": self.headline,
            "sender_name": self.sender_name,
            "effective": _iso(self.effective),
            "onset": _iso(self.onset),
            "expires": _iso(self.expires),
            "event_codes": [list(c) for c in self.event_codes],
            "area_descs": list(self.area_descs),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InfoSummary:
        return cls(
            language=obj["language"],
            kind=AlertKind(obj["kind"]),
            event=obj["event"],
            categories=tuple(obj["categories"]),
            urgency=Urgency(obj["urgency"]),
            severity=Severity(obj["severity"]),
            certainty=Certainty(obj["certainty"]),
            headline=obj["headline"],
            sender_name=obj["sender_name"],
            effective=_time_or_none(obj["effective"]),
            onset=_time_or_none(obj["onset"]),
            expires=_time_or_none(obj["expires"]),
            event_codes=tuple((str(a), str(b)) for a, b in obj["event_codes"]),
            area_descs=tuple(obj["area_descs"]),
        )


def _invalid(name: str, message: str) -> IntakeError:
    return IntakeError("invalid_alert", f"{name} {message}", f"/{name}")


def _member(enum: type[E], value: object, name: str) -> E:
    member = normalise(enum, value)
    if member is None:
        raise _invalid(name, f"must be one of {', '.join(m.value for m in enum)}; got {str(value)[:40]!r}")
    return member


_ENUM_FIELDS: tuple[tuple[str, type[StrEnum]], ...] = (
    ("kind", AlertKind), ("msg_type", MsgType), ("status", Status),
    ("severity", Severity), ("urgency", Urgency), ("certainty", Certainty))
_TEXT_FIELDS = (("headline", MAX_HEADLINE_CHARS), ("description", MAX_DESCRIPTION_CHARS),
                ("language", MAX_LANGUAGE_CHARS))


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertReport:
    """One alert in ICP's terms, whatever format it came in. Validated at construction.

    ``(source, identifier)`` is the idempotency key; for CAP it is ``(sender, identifier)``,
    which is also how CAP ``references`` name earlier alerts. ``location`` is a point to dispatch
    to, set only when believable; ``area`` is the lon/lat shape the alert covers (polygons,
    circles, geocoded areas). ``infos`` keeps every CAP info block; ``selected_info`` is the
    index of the one chosen by language. ``below_threshold``: a SensorThings observation that
    crossed no alert threshold (recorded, opens nothing).
    """

    source: str
    identifier: str
    kind: AlertKind
    sent: datetime
    raw_format: RawFormat
    msg_type: MsgType = MsgType.ALERT
    status: Status = Status.ACTUAL
    references: tuple[tuple[str, str], ...] = ()
    severity: Severity = Severity.UNKNOWN
    urgency: Urgency = Urgency.UNKNOWN
    certainty: Certainty = Certainty.UNKNOWN
    headline: str = ""
    description: str = ""
    language: str = ""
    location: Point | None = None
    area: BaseGeometry | None = None
    location_flags: tuple[LocationFlag, ...] = ()
    findings: tuple[Finding, ...] = ()
    infos: tuple[InfoSummary, ...] = ()
    selected_info: int | None = None
    below_threshold: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every alert passes here, most with empty lists and members already of their enums:
        # those cases are tested first and cost a type check each.
        set_ = object.__setattr__
        check_ident(self.source, "/source")
        check_ident(self.identifier, "/identifier")
        for name, enum in _ENUM_FIELDS:
            value = getattr(self, name)
            if type(value) is not enum:
                set_(self, name, _member(enum, value, name))
        if not isinstance(self.sent, datetime) or self.sent.utcoffset() is None:
            raise _invalid("sent", "must be a timezone-aware datetime")
        if self.raw_format not in RAW_FORMATS:
            raise _invalid("raw_format", f"must be one of {', '.join(RAW_FORMATS)}")
        if self.references != ():
            refs = tuple(self.references)
            if len(refs) > MAX_REFERENCES or not all(
                isinstance(r, tuple) and len(r) == 2 and all(isinstance(x, str) and x for x in r) for r in refs
            ):
                raise _invalid("references", f"must be at most {MAX_REFERENCES} (source, identifier) pairs")
            set_(self, "references", refs)
        for name, limit in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > limit:
                raise _invalid(name, f"must be a string of at most {limit} characters")
        if self.location is not None and not isinstance(self.location, Point):
            raise _invalid("location", "must be a geo.coords.Point or None")
        if self.area is not None and (not isinstance(self.area, BaseGeometry) or self.area.is_empty):
            raise _invalid("area", "must be a non-empty shapely geometry (lon/lat) or None")
        if self.location_flags != ():
            set_(self, "location_flags",
                 tuple(_member(LocationFlag, f, "location_flags") for f in self.location_flags))
        for name, kind, limit in (("findings", Finding, MAX_FINDINGS), ("infos", InfoSummary, MAX_INFOS)):
            items = getattr(self, name)
            if items == ():
                continue
            items = tuple(items)
            if len(items) > limit or not all(isinstance(i, kind) for i in items):
                raise _invalid(name, f"must be at most {limit} {kind.__name__} values")
            set_(self, name, items)
        if self.selected_info is not None and not (
            isinstance(self.selected_info, int) and 0 <= self.selected_info < len(self.infos)
        ):
            raise _invalid("selected_info", "must index infos")
        if not isinstance(self.below_threshold, bool):
            raise _invalid("below_threshold", "must be true or false")
        if not isinstance(self.data, dict) or (self.data and not all(isinstance(k, str) for k in self.data)):
            raise _invalid("data", "must be an object with string keys")

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key ``(source, identifier)``."""
        return (self.source, self.identifier)

    @property
    def expires(self) -> datetime | None:
        """When the selected CAP info block says the alert stops being in effect."""
        return None if self.selected_info is None else self.infos[self.selected_info].expires

    @property
    def actionable(self) -> bool:
        """Whether this report may open or join an incident without a person looking first:
        an actual alert or update, over a threshold, with a location no flag casts doubt on.
        Cancels and updates still follow ``references`` whatever this says."""
        return (
            self.status is Status.ACTUAL
            and self.msg_type in (MsgType.ALERT, MsgType.UPDATE)
            and not self.below_threshold
            and self.location is not None
            and (not self.location_flags or DOUBTFUL_FLAGS.isdisjoint(self.location_flags))
        )

    def to_json(self) -> dict[str, Any]:
        """Every member as JSON-ready values (the API shows this; ``from_json`` reads it back)."""
        return {
            "source": self.source,
            "identifier": self.identifier,
            "kind": self.kind.value,
            "sent": self.sent.isoformat(),
            "raw_format": self.raw_format,
            "msg_type": self.msg_type.value,
            "status": self.status.value,
            "references": [list(r) for r in self.references],
            "severity": self.severity.value,
            "urgency": self.urgency.value,
            "certainty": self.certainty.value,
            "headline": self.headline,
            "description": self.description,
            "language": self.language,
            "location": None if self.location is None else self.location.to_mapping(),
            "area": None if self.area is None else geometry_to_geojson(self.area),
            "location_flags": [f.value for f in self.location_flags],
            "findings": [f.to_json() for f in self.findings],
            "infos": [i.to_json() for i in self.infos],
            "selected_info": self.selected_info,
            "below_threshold": self.below_threshold,
            "data": self.data,
        }

    def _stored(self) -> dict[str, Any]:
        """What is stored: the members not at their defaults (the fields' own; `from_json`
        restores them), with the values orjson writes as `to_json` spells them (members of the
        enums, the time, tuples, parts) left as they are. A sensor's alert sets a few of the
        twenty-two."""
        loc = self.location
        out: dict[str, Any] = {"source": self.source, "identifier": self.identifier, "kind": self.kind,
                               "sent": self.sent, "raw_format": self.raw_format}
        if loc is not None:
            # As a mapping: orjson writes a slotted dataclass field by field, at a third of a report's cost.
            out["location"] = {"lat": loc.lat, "lon": loc.lon}
        # Each member against its default in turn (a loop over a table of them cost three times this).
        if self.msg_type is not MsgType.ALERT:
            out["msg_type"] = self.msg_type
        if self.status is not Status.ACTUAL:
            out["status"] = self.status
        if self.references:
            out["references"] = self.references
        if self.severity is not Severity.UNKNOWN:
            out["severity"] = self.severity
        if self.urgency is not Urgency.UNKNOWN:
            out["urgency"] = self.urgency
        if self.certainty is not Certainty.UNKNOWN:
            out["certainty"] = self.certainty
        if self.headline:
            out["headline"] = self.headline
        if self.description:
            out["description"] = self.description
        if self.language:
            out["language"] = self.language
        if self.area is not None:
            out["area"] = self.area
        if self.location_flags:
            out["location_flags"] = self.location_flags
        if self.findings:
            out["findings"] = self.findings
        if self.infos:
            out["infos"] = self.infos
        if self.selected_info is not None:
            out["selected_info"] = self.selected_info
        if self.below_threshold:
            out["below_threshold"] = self.below_threshold
        if self.data:
            out["data"] = self.data
        return out

    def to_json_bytes(self) -> bytes:
        """The report as stored (`_stored`), as compact JSON text written by orjson. What orjson
        cannot write (an integer beyond 64 bits in a sender's data) goes through `to_json`."""
        stored = self._stored()
        try:
            return orjson.dumps(stored, default=_shape_json)
        except TypeError:
            return jsontext.compact_bytes({k: v for k, v in self.to_json().items() if k in stored})

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AlertReport:
        location = obj.get("location")
        area = obj.get("area")
        return cls(
            source=obj["source"],
            identifier=obj["identifier"],
            kind=obj["kind"],
            sent=datetime.fromisoformat(obj["sent"]),
            raw_format=obj["raw_format"],
            msg_type=obj.get("msg_type", MsgType.ALERT),
            status=obj.get("status", Status.ACTUAL),
            references=tuple((str(a), str(b)) for a, b in obj.get("references", ())),
            severity=obj.get("severity", Severity.UNKNOWN),
            urgency=obj.get("urgency", Urgency.UNKNOWN),
            certainty=obj.get("certainty", Certainty.UNKNOWN),
            headline=obj.get("headline", ""),
            description=obj.get("description", ""),
            language=obj.get("language", ""),
            location=None if location is None else Point.from_mapping(location),
            area=None if area is None else geometry_from_geojson(area),
            location_flags=tuple(obj.get("location_flags", ())),
            findings=tuple(Finding.from_json(f) for f in obj.get("findings", ())),
            infos=tuple(InfoSummary.from_json(i) for i in obj.get("infos", ())),
            selected_info=obj.get("selected_info"),
            below_threshold=obj.get("below_threshold", False),
            data=dict(obj.get("data", {})),
        )


# --- configuration ---------------------------------------------------------------------------


def _shape(value: object, where: str) -> BaseGeometry:
    if isinstance(value, Point):
        return ShapelyPoint(value.lon, value.lat)
    if isinstance(value, BaseGeometry) and not value.is_empty:
        return value
    raise ValueError(f"{where} must be a non-empty shapely geometry (lon/lat) or a geo.coords.Point")


@dataclass(frozen=True, slots=True)
class IntakeConfig:
    """What every format needs to know about this installation.

    ``service_area``: the lon/lat shape ICP serves (None: no checks, nothing is flagged outside).
    ``geocodes``: CAP ``(valueName, value)`` → shape or Point, e.g. ``("SAME", "006113")``.
    ``languages``: CAP info preference, best first (``["en-US", "fi", "sv"]``).
    ``strict``: CAP documents must pass the official XSD (else tolerant, with findings).
    ``max_future_s``: alerts stamped further ahead of the caller's ``now`` get a finding.
    """

    service_area: BaseGeometry | None = None
    geocodes: Mapping[tuple[str, str], BaseGeometry | Point] = field(default_factory=dict)
    languages: tuple[str, ...] = ("en-US",)
    strict: bool = False
    max_cap_bytes: int = MAX_CAP_BYTES
    max_json_bytes: int = MAX_JSON_BYTES
    max_future_s: float = 300.0

    def __post_init__(self) -> None:
        if self.service_area is not None:
            area = _shape(self.service_area, "service_area")
            shapely.prepare(area)  # every alert asks it "intersects?"; preparing makes that cheap
            object.__setattr__(self, "service_area", area)
        table = {}
        for key, value in dict(self.geocodes).items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise ValueError("geocodes keys must be (valueName, value) pairs of strings")
            table[(key[0].strip(), key[1].strip())] = _shape(value, f"geocode {key}")
        object.__setattr__(self, "geocodes", MappingProxyType(table))
        if isinstance(self.languages, str) or not all(isinstance(x, str) for x in self.languages):
            raise ValueError("languages must be a list of language tags")
        object.__setattr__(self, "languages", tuple(self.languages))
        for name in ("max_cap_bytes", "max_json_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ValueError(f"{name} must be an integer of at least 1024")

    def geocode(self, name: str, value: str) -> BaseGeometry | None:
        return self.geocodes.get((name.strip(), value.strip()))

    def too_far_ahead(self, sent: datetime, now: datetime | None) -> bool:
        return now is not None and sent - now > timedelta(seconds=self.max_future_s)


DEFAULT_CONFIG = IntakeConfig()


# --- placement: the one place that decides whether a location is believable ------------------


@dataclass(frozen=True, slots=True)
class Placement:
    location: Point | None
    area: BaseGeometry | None
    flags: tuple[LocationFlag, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


def _point_of(geometry: BaseGeometry) -> Point:
    return Point(lat=geometry.y, lon=geometry.x)


def representative_point(shape: BaseGeometry) -> Point:
    """The point an area is dispatched to: its centroid (a point is its own)."""
    return _point_of(shape if isinstance(shape, ShapelyPoint) else shape.centroid)


def place(
    shape: BaseGeometry | None,
    config: IntakeConfig,
    *,
    center: Point | None = None,
    trusted: bool = True,
) -> Placement:
    """Decide ``location`` and ``area`` for a lon/lat ``shape`` as written, and the flags.

    ``center`` overrides the centroid (a CAP circle's centre). ``trusted`` False means the shape
    was read from nonstandard elements (so its axis order is a guess): it is used only where a
    service area confirms it. With a service area:

    - inside (touching it) as written: used; if the centroid falls outside the service area, the
      centroid of the part inside is used instead, so a regional warning lands in the city;
    - inside only with lat and lon swapped: ``axis_swap_suspected``; neither reading is used;
    - outside either way: ``outside_service_area``; kept (it is plausible), but not actionable.
    """
    if shape is None or shape.is_empty:
        return Placement(None, None, (LocationFlag.NO_LOCATION,))
    area = None if isinstance(shape, ShapelyPoint) else shape
    point = center or representative_point(shape)
    service = config.service_area
    doubt = () if trusted else (LocationFlag.NONCONFORMING_LOCATION,)
    if service is None:
        if not trusted:
            return Placement(None, None, (*doubt, LocationFlag.NO_LOCATION), _as_written(shape))
        return Placement(point, area, ())
    if shape.intersects(service):
        if not service.intersects(ShapelyPoint(point.lon, point.lat)):
            point = representative_point(shape.intersection(service))
        return Placement(point, area, doubt)
    if axis_swap_suspected(shape, service):
        data = {**_as_written(shape), "location_if_swapped": representative_point(swap_axes(shape)).to_mapping()}
        return Placement(None, None, (*doubt, LocationFlag.AXIS_SWAP_SUSPECTED), data)
    if not trusted:
        return Placement(None, None, (*doubt, LocationFlag.OUTSIDE_SERVICE_AREA), _as_written(shape))
    return Placement(point, area, (LocationFlag.OUTSIDE_SERVICE_AREA,))


def place_point(point: Point, config: IntakeConfig) -> Placement:
    """`place` for a point as written (lat/lon), asking the service area without making a shape
    first when the point is simply inside it (almost every sensor's case)."""
    if inside_service_area(point, config):
        return Placement(point, None, ())
    return place(ShapelyPoint(point.lon, point.lat), config)


def inside_service_area(point: Point, config: IntakeConfig) -> bool:
    """Whether ``point`` is in the service area (touching it counts), or there is none."""
    service = config.service_area
    return service is None or bool(shapely.intersects_xy(service, point.lon, point.lat))


def _as_written(shape: BaseGeometry) -> dict[str, Any]:
    # What the sender wrote, kept for the person who has to decide where it really is.
    return {"area_as_written": geometry_to_geojson(shape)}


def geojson_shape(obj: Any, where: str, *, allowed: Sequence[str], max_positions: int) -> BaseGeometry:
    """A GeoJSON geometry of one of ``allowed`` types as shapely, or `IntakeError` at ``where``."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind not in allowed:
        raise IntakeError("invalid_alert", f"must be a GeoJSON {' or '.join(allowed)}, got {str(kind)[:40]!r}", where)
    try:
        shape = geometry_from_geojson(obj, max_positions=max_positions)
    except GeometryError as exc:
        raise IntakeError("invalid_alert", str(exc), where) from None
    if not shapely.is_valid(shape):
        raise IntakeError("invalid_alert", f"is not a valid shape: {shapely.is_valid_reason(shape)}", where)
    return shape


def lat_lon_point(obj: Any, where: str) -> Point:
    """``{"lat": …, "lon": …}`` (``lng`` accepted) with the bad member named in the error's path."""
    if type(obj) is dict and len(obj) == 2 and "lat" in obj and "lon" in obj:  # as nearly every sender writes it
        try:
            return Point(lat=obj["lat"], lon=obj["lon"])
        except CoordinateError:
            pass  # named below
    if not isinstance(obj, dict):
        raise IntakeError("invalid_alert", 'must be {"lat": …, "lon": …} or a GeoJSON geometry', where)
    lon_key = "lng" if "lng" in obj and "lon" not in obj else "lon"
    unknown = [] if len(obj) == 2 and "lat" in obj and lon_key in obj else sorted(set(obj) - {"lat", lon_key})
    if unknown:
        raise IntakeError("invalid_alert", f"unknown member {unknown[0][:40]!r}", f"{where}/{unknown[0][:40]}")
    for key in ("lat", lon_key):
        if key not in obj:
            raise IntakeError("invalid_alert", f"{key} is required", f"{where}/{key}")
    try:
        return Point(lat=obj["lat"], lon=obj[lon_key])
    except CoordinateError as exc:
        problem = exc
    try:
        Point(lat=obj["lat"], lon=0.0)  # alone, so the error names the right member
    except CoordinateError as exc:
        raise IntakeError("invalid_alert", str(exc), f"{where}/lat") from None
    raise IntakeError("invalid_alert", str(problem), f"{where}/{lon_key}") from None


def finite_number(value: object) -> float | None:
    """A JSON number (or boolean, as 0/1) as a finite float, else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None
