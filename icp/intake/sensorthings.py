"""OGC SensorThings API 1.1 Observations (``POST …/v1.1/Observations``) turned into alert reports.

An Observation carries a ``result`` for a ``Datastream`` (inline, or by ``@iot.id``) at a
``phenomenonTime``, optionally about a ``FeatureOfInterest`` (inline GeoJSON ``[lon, lat]``, or
by id). What was measured and where the sensor stands come from the inline entities or, for a
device that posts only ids, from the sensor registry (`icp.intake.registry`). Threshold rules
then say whether the reading is an alert: water level above 3 m is a flood, one gunshot event is
a gunshot. A reading that crosses no threshold still becomes a report, with
``below_threshold=True``: the server records it and opens nothing.

Reading is two steps so the server can look ids up asynchronously in between:
`read_observation` (structure only) then `observation_report` (registry, rules, placement);
`parse_observation` does both.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shapely.geometry import Point as ShapelyPoint
from shapely.geometry.base import BaseGeometry

from dispatch.alert_rules import AlertKind, Certainty, Severity, Urgency
from icp import jsontext
from icp.intake.registry import EMPTY_REGISTRY, SensorRecord, SensorRegistry
from icp.intake.report import (
    DEFAULT_CONFIG,
    MAX_ID_CHARS,
    AlertReport,
    IntakeConfig,
    IntakeError,
    LocationFlag,
    Problems,
    finite_number,
    geojson_shape,
    load_json,
    parse_time,
    place,
)

GEOJSON_ENCODINGS = ("application/geo+json", "application/vnd.geo+json")
SHAPE_TYPES = ("Point", "Polygon", "MultiPolygon", "LineString", "MultiPoint")
MAX_POSITIONS = 10_000

_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
}
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def property_key(name: str) -> str:
    """An observed property's name or definition URI reduced to a comparable key.

    ``"Water Level"``, ``"water_level"`` and ``"http://…/def#WaterLevel"`` all give ``waterlevel``.
    """
    tail = re.split(r"[#/]", name.strip().rstrip("/#"))[-1] if "://" in name else name
    return _NOT_ALNUM.sub("", tail.lower())


# --- threshold rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """``result op threshold`` for one observed property (any of ``properties``) means an alert.

    Rules are tried in order; list the most severe threshold of a property first. The units are
    the ones stated in ``unit``: the rule does not convert.
    """

    properties: frozenset[str]
    kind: AlertKind
    op: str
    threshold: float
    severity: Severity = Severity.SEVERE
    urgency: Urgency = Urgency.IMMEDIATE
    certainty: Certainty = Certainty.OBSERVED
    unit: str = ""
    keys: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        if isinstance(self.properties, str) or not self.properties:
            raise ValueError("properties must be a non-empty list of property names")
        object.__setattr__(self, "properties", frozenset(self.properties))
        object.__setattr__(self, "keys", frozenset(property_key(p) for p in self.properties))
        object.__setattr__(self, "kind", AlertKind(self.kind))
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}")
        if finite_number(self.threshold) is None or isinstance(self.threshold, bool):
            raise ValueError("threshold must be a finite number")
        for name, enum in (("severity", Severity), ("urgency", Urgency), ("certainty", Certainty)):
            object.__setattr__(self, name, enum(getattr(self, name)))

    def applies_to(self, key: str) -> bool:
        return key in self.keys

    def crossed(self, value: float) -> bool:
        return _OPS[self.op](value, float(self.threshold))

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{min(self.properties)} {self.op} {self.threshold:g}{unit} → {self.kind.value} ({self.severity.value})"


def _rule(names: str, kind: AlertKind, op: str, threshold: float, severity: Severity, **kw: Any) -> ThresholdRule:
    return ThresholdRule(frozenset(n.strip() for n in names.split(",")), kind, op, threshold, severity, **kw)


_WATER = "water_level, water level, river level, gauge height, stage"
_CO = "carbon_monoxide, carbon monoxide, co"
_LEL = "methane_lel, combustible_gas, combustible gas, lel"
DEFAULT_THRESHOLDS: tuple[ThresholdRule, ...] = (
    _rule(_WATER, AlertKind.FLOOD, ">", 3.0, Severity.SEVERE, unit="m"),
    _rule(_WATER, AlertKind.FLOOD, ">", 2.0, Severity.MODERATE, urgency=Urgency.EXPECTED, unit="m"),
    _rule("smoke_obscuration, smoke obscuration, smoke density, smoke", AlertKind.SMOKE, ">=", 2.0,
          Severity.SEVERE, unit="%/m"),
    _rule("fire_alarm, fire alarm", AlertKind.ALARM, ">=", 1, Severity.SEVERE),
    # Acoustic detection: a fix from several microphones is likely, not seen.
    _rule("gunshot_count, gunshot count, gunshots, gunshot, shots detected", AlertKind.GUNSHOT, ">=", 1,
          Severity.SEVERE, certainty=Certainty.LIKELY, unit="events"),
    _rule("panic_button, panic button, panic, duress", AlertKind.PANIC, ">=", 1, Severity.SEVERE),
    _rule(_CO, AlertKind.GAS, ">=", 100, Severity.SEVERE, unit="ppm"),
    _rule(_CO, AlertKind.GAS, ">=", 50, Severity.MODERATE, urgency=Urgency.EXPECTED, unit="ppm"),
    _rule(_LEL, AlertKind.GAS, ">=", 20, Severity.SEVERE, unit="%LEL"),
    _rule(_LEL, AlertKind.GAS, ">=", 10, Severity.MODERATE, urgency=Urgency.EXPECTED, unit="%LEL"),
    _rule("intrusion, door_forced, door forced, glass_break, glass break", AlertKind.INTRUSION, ">=", 1,
          Severity.MODERATE),
    _rule("crash_detected, crash detected, collision, impact", AlertKind.COLLISION, ">=", 1, Severity.SEVERE,
          certainty=Certainty.LIKELY),
)


# --- step 1: structure ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """An Observation's parts, checked for shape only (ids as strings; entities as given)."""

    result: Any
    iot_id: str | None = None
    phenomenon_time: str | None = None
    result_time: str | None = None
    datastream_id: str | None = None
    datastream: Mapping[str, Any] | None = None
    thing_id: str | None = None
    thing: Mapping[str, Any] | None = None
    feature_id: str | None = None
    feature: Mapping[str, Any] | None = None
    canonical: str = ""  # the body re-encoded canonically, for an identifier when it has no id

    @property
    def observed_property(self) -> str:
        prop = (self.datastream or {}).get("ObservedProperty")
        if isinstance(prop, Mapping):
            for key in ("name", "definition"):
                if isinstance(prop.get(key), str) and prop[key].strip():
                    return str(prop[key])[:200]
        return ""

    @property
    def unit(self) -> str:
        unit = (self.datastream or {}).get("unitOfMeasurement")
        if isinstance(unit, Mapping):
            for key in ("symbol", "name"):
                if isinstance(unit.get(key), str):
                    return str(unit[key])[:40]
        return ""


def _iot_id(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value) == "":
        raise IntakeError("invalid_alert", "@iot.id must be a number or a non-empty string", where)
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise IntakeError("invalid_alert", f"@iot.id is longer than {MAX_ID_CHARS} characters", where)
    return text


def _entity(obj: Mapping[str, Any], name: str) -> tuple[str | None, Mapping[str, Any] | None]:
    """A navigation property: ``{"@iot.id": …}`` (a reference) or an inline entity."""
    value = obj.get(name)
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise IntakeError("invalid_alert", f"{name} must be an object", f"/{name}")
    ident = _iot_id(value["@iot.id"], f"/{name}/@iot.id") if "@iot.id" in value else None
    inline = value if set(value) - {"@iot.id"} else None
    return ident, inline


def read_observation(body: bytes | bytearray | memoryview | str | Mapping[str, Any], *,
                     max_bytes: int = DEFAULT_CONFIG.max_json_bytes) -> Observation:
    """The structure of an Observation body, or `IntakeError` naming the part that is wrong."""
    obj = body if isinstance(body, Mapping) else load_json(body, max_bytes=max_bytes, what="observation")
    if not isinstance(obj, Mapping):
        raise IntakeError("not_an_observation", "an Observation is a JSON object")
    if "dataArray" in obj or "components" in obj or ("value" in obj and "result" not in obj):
        raise IntakeError("not_an_observation", "this is a collection (dataArray or value list), not one "
                          "Observation; post each Observation on its own")
    if "result" not in obj:
        raise IntakeError("not_an_observation", "an Observation needs a result", "/result")
    ds_id, ds = _entity(obj, "Datastream")
    if ds_id is None and ds is None:
        raise IntakeError("not_an_observation", "an Observation needs its Datastream (inline or by @iot.id)",
                          "/Datastream")
    thing_id, thing = None, None
    if ds is not None and isinstance(ds.get("Thing"), Mapping):
        thing_value = ds["Thing"]
        if "@iot.id" in thing_value:
            thing_id = _iot_id(thing_value["@iot.id"], "/Datastream/Thing/@iot.id")
        thing = thing_value if set(thing_value) - {"@iot.id"} else None
    foi_id, foi = _entity(obj, "FeatureOfInterest")
    for name in ("phenomenonTime", "resultTime"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise IntakeError("invalid_alert", f"{name} must be an ISO 8601 time or interval", f"/{name}")
    return Observation(
        result=obj["result"],
        iot_id=_iot_id(obj["@iot.id"], "/@iot.id") if "@iot.id" in obj else None,
        phenomenon_time=obj.get("phenomenonTime"),
        result_time=obj.get("resultTime"),
        datastream_id=ds_id,
        datastream=ds,
        thing_id=thing_id,
        thing=thing,
        feature_id=foi_id,
        feature=foi,
        canonical=jsontext.canonical(obj),
    )


# --- step 2: meaning -----------------------------------------------------------------------------


def _time(text: str | None, where: str) -> datetime | None:
    """An instant, or the end of an interval ``start/end`` (the latest moment observed)."""
    if text is None:
        return None
    return parse_time(text.split("/")[-1], where)


def _geojson_location(value: object, where: str) -> BaseGeometry:
    """A GeoJSON Feature or geometry (``[lon, lat]``) as shapely."""
    if isinstance(value, Mapping) and value.get("type") == "Feature":
        geometry = value.get("geometry")
        where = f"{where}/geometry"
    else:
        geometry = value
    return geojson_shape(geometry, where, allowed=SHAPE_TYPES, max_positions=MAX_POSITIONS)


@dataclass(slots=True)
class _Located:
    shape: BaseGeometry | None = None
    from_registry: bool = False


def _locate(obs: Observation, sensor: SensorRecord | None, thing: SensorRecord | None,
            registry: SensorRegistry, problems: Problems) -> _Located:
    # The feature of interest is what was observed, so it wins over where the sensor stands.
    if obs.feature is not None:
        encoding = obs.feature.get("encodingType")
        if encoding is not None and encoding not in GEOJSON_ENCODINGS:
            problems.add("unsupported_encoding", "/FeatureOfInterest/encodingType",
                         f"{str(encoding)[:60]!r} is not GeoJSON; the feature is not used for the location")
        elif "feature" in obs.feature:
            return _Located(_geojson_location(obs.feature["feature"], "/FeatureOfInterest/feature"))
    if obs.feature_id is not None:
        shape = registry.feature(obs.feature_id)
        if shape is not None:
            return _Located(shape, from_registry=True)
        problems.add("unknown_feature", "/FeatureOfInterest/@iot.id",
                     f"FeatureOfInterest {obs.feature_id} is not registered; the sensor's location is used")
    locations = (obs.thing or {}).get("Locations")
    first = locations[0] if isinstance(locations, list) and locations else None
    if isinstance(first, Mapping) and "location" in first:
        return _Located(_geojson_location(first["location"], "/Datastream/Thing/Locations/0/location"))
    for record in (sensor, thing):
        if record is not None and record.location is not None:
            return _Located(ShapelyPoint(record.location.lon, record.location.lat), from_registry=True)
    return _Located()


def _identifier(obs: Observation) -> str:
    # A retry of the same Observation must give the same key, so the id is derived, never drawn.
    if obs.iot_id is not None:
        return f"Observations({obs.iot_id})"
    if obs.datastream_id is not None and obs.phenomenon_time:
        ident = f"Datastreams({obs.datastream_id})/{obs.phenomenon_time}"
        if len(ident) <= MAX_ID_CHARS:
            return ident
    return "sha256:" + hashlib.sha256(obs.canonical.encode("utf-8")).hexdigest()


def _value(result: Any) -> float | None:
    number = finite_number(result)
    if number is None and isinstance(result, str):
        text = result.strip().lower()
        if text in ("true", "false"):
            return 1.0 if text == "true" else 0.0
        try:
            number = finite_number(float(text))
        except ValueError:
            return None
    return number


def _scalar(result: Any) -> Any:
    if isinstance(result, (int, float, bool)) or result is None:
        return result
    if isinstance(result, str):
        return result[:200]
    return None  # an object or array result is kept only in the raw payload


def observation_report(
    obs: Observation,
    *,
    source: str,
    registry: SensorRegistry = EMPTY_REGISTRY,
    config: IntakeConfig = DEFAULT_CONFIG,
    rules: Sequence[ThresholdRule] = DEFAULT_THRESHOLDS,
    now: datetime | None = None,
) -> AlertReport:
    """The report for a read Observation. ``source`` is the sensor network (from the caller's key)."""
    problems = Problems()
    sensor = registry.datastream(obs.datastream_id) if obs.datastream_id is not None else None
    if obs.datastream_id is not None and sensor is None and obs.datastream is None:
        raise IntakeError("unknown_datastream", f"Datastream {obs.datastream_id} is not registered; register the "
                          "sensor or send the Datastream inline", "/Datastream/@iot.id")
    thing = registry.thing(obs.thing_id) if obs.thing_id is not None else None

    sent = _time(obs.phenomenon_time, "/phenomenonTime") or _time(obs.result_time, "/resultTime")
    if sent is None:
        if now is None:
            raise IntakeError("invalid_alert", "an Observation without phenomenonTime needs the time of receipt",
                              "/phenomenonTime")
        problems.add("no_time", "/phenomenonTime", "no phenomenonTime; the time of receipt is used")
        sent = now
    if config.too_far_ahead(sent, now):
        problems.add("time_in_future", "/phenomenonTime", "the observation is stamped ahead of the server's clock")

    prop = obs.observed_property or (sensor.observed_property if sensor else "") or (
        thing.observed_property if thing else "")
    unit = obs.unit or (sensor.unit if sensor else "")
    value = _value(obs.result)
    kind, severity, urgency, certainty, rule, crossed = _classify(prop, value, sensor, rules)
    if value is None:
        problems.add("non_numeric_result", "/result", "the result is not a number; no threshold is applied")
    elif not prop:
        problems.add("no_rule", "/Datastream", "the observed property is unknown (not inline, not registered); "
                     "recorded")
    elif not any(r.applies_to(property_key(prop)) for r in rules):
        problems.add("no_rule", "/Datastream", f"no threshold rule for observed property {prop[:60]!r}; recorded")

    located = _locate(obs, sensor, thing, registry, problems)
    placement = place(located.shape, config)
    flags = list(placement.flags)
    if located.from_registry and placement.location is not None:
        flags.append(LocationFlag.REGISTRY_LOCATION)

    label = prop or "observation"
    where = f" at {sensor.name}" if sensor is not None and sensor.name else ""
    shown = f"{obs.result!r}" if value is None else f"{value:g}"
    headline = f"{label} {shown}{f' {unit}' if unit else ''}{where}"
    if rule is not None:
        limit = f"{rule.op} {rule.threshold:g}{f' {rule.unit}' if rule.unit else ''}"
        headline += f" ({'over' if crossed else 'under'} {limit})"
    data: dict[str, Any] = {
        "sensorthings": {
            "datastream": obs.datastream_id,
            "thing": obs.thing_id,
            "feature_of_interest": obs.feature_id,
            "observed_property": prop,
            "unit": unit,
            "result": _scalar(obs.result),
            "phenomenon_time": obs.phenomenon_time,
            "result_time": obs.result_time,
            "rule": rule.describe() if rule is not None else None,
            "sensor": sensor.name if sensor is not None else None,
        }
    }
    if placement.data:
        data["placement"] = dict(placement.data)
    return AlertReport(
        source=source,
        identifier=_identifier(obs),
        kind=kind,
        sent=sent,
        raw_format="sensorthings",
        severity=severity,
        urgency=urgency,
        certainty=certainty,
        headline=headline[:200],
        location=placement.location,
        area=placement.area,
        location_flags=tuple(flags),
        findings=tuple(problems.items),
        below_threshold=not crossed,
        data=data,
    )


def _classify(
    prop: str, value: float | None, sensor: SensorRecord | None, rules: Iterable[ThresholdRule]
) -> tuple[AlertKind, Severity, Urgency, Certainty, ThresholdRule | None, bool]:
    key = property_key(prop)
    own = [r for r in rules if r.applies_to(key)]
    if value is not None:
        for rule in own:
            if rule.crossed(value):
                return rule.kind, rule.severity, rule.urgency, rule.certainty, rule, True
    # Below every threshold (or no rule): the kind the property or the sensor stands for, so the
    # recorded reading can be found with the alerts of its kind.
    kind = own[-1].kind if own else (sensor.kind if sensor is not None else AlertKind.OTHER)
    return kind, Severity.UNKNOWN, Urgency.UNKNOWN, Certainty.OBSERVED, (own[-1] if own else None), False


def parse_observation(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    source: str,
    registry: SensorRegistry = EMPTY_REGISTRY,
    config: IntakeConfig = DEFAULT_CONFIG,
    rules: Sequence[ThresholdRule] = DEFAULT_THRESHOLDS,
    now: datetime | None = None,
) -> AlertReport:
    """`read_observation` then `observation_report`."""
    obs = read_observation(body, max_bytes=config.max_json_bytes)
    return observation_report(obs, source=source, registry=registry, config=config, rules=rules, now=now)
