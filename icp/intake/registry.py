"""The sensor registry: what ICP knows about each sensor, so a device that posts only its id is placed.

A SensorThings device often posts ``{"Datastream": {"@iot.id": 17}, "result": 1}`` and nothing
else: where it is and what it measures live in the registry. The intake reads the registry
through the small `SensorRegistry` protocol, synchronously, so the pure parser never waits on a
database: the server keeps its registry in memory (it changes rarely) or looks the ids of
`sensorthings.read_observation` up first and hands over an `InMemorySensorRegistry` of those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from shapely.geometry import Point as ShapelyPoint
from shapely.geometry.base import BaseGeometry

from dispatch.alert_rules import AlertKind, normalise
from geo.coords import Point
from icp.intake.report import MAX_ID_CHARS


@dataclass(frozen=True, slots=True)
class SensorRecord:
    """One registered sensor (a SensorThings Datastream or Thing).

    ``kind``: the alert kind it reports when no threshold rule knows its property (a panic
    button is ``panic``). ``location``: where it is fixed (None for a mobile sensor, which must
    then send a FeatureOfInterest). ``observed_property``: what it measures, e.g. ``water_level``.
    """

    id: str
    kind: AlertKind = AlertKind.OTHER
    location: Point | None = None
    observed_property: str = ""
    name: str = ""
    unit: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > MAX_ID_CHARS:
            raise ValueError(f"a sensor id is 1-{MAX_ID_CHARS} characters")
        kind = normalise(AlertKind, self.kind)
        if kind is None:
            raise ValueError(f"unknown alert kind {self.kind!r}")
        object.__setattr__(self, "kind", kind)
        if self.location is not None and not isinstance(self.location, Point):
            raise ValueError("a sensor location is a geo.coords.Point")
        for name in ("observed_property", "name", "unit"):
            if not isinstance(getattr(self, name), str) or len(getattr(self, name)) > 200:
                raise ValueError(f"{name} must be a string of at most 200 characters")


class SensorRegistry(Protocol):
    """Look-ups by SensorThings ``@iot.id`` (as a string: ids may be numbers or strings)."""

    def datastream(self, datastream_id: str) -> SensorRecord | None: ...

    def thing(self, thing_id: str) -> SensorRecord | None: ...

    def feature(self, feature_id: str) -> BaseGeometry | None:
        """A registered FeatureOfInterest's shape (lon/lat), for observations that name it by id."""
        ...


class InMemorySensorRegistry:
    """A registry held in dictionaries: for tests, demos, and the server's in-memory copy."""

    __slots__ = ("_datastreams", "_features", "_things")

    def __init__(
        self,
        datastreams: Mapping[str | int, SensorRecord] | None = None,
        things: Mapping[str | int, SensorRecord] | None = None,
        features: Mapping[str | int, BaseGeometry | Point] | None = None,
    ) -> None:
        self._datastreams = MappingProxyType({str(k): v for k, v in (datastreams or {}).items()})
        self._things = MappingProxyType({str(k): v for k, v in (things or {}).items()})
        shapes = {}
        for key, value in (features or {}).items():
            shapes[str(key)] = ShapelyPoint(value.lon, value.lat) if isinstance(value, Point) else value
        self._features = MappingProxyType(shapes)

    def datastream(self, datastream_id: str) -> SensorRecord | None:
        return self._datastreams.get(datastream_id)

    def thing(self, thing_id: str) -> SensorRecord | None:
        return self._things.get(thing_id)

    def feature(self, feature_id: str) -> BaseGeometry | None:
        return self._features.get(feature_id)


EMPTY_REGISTRY = InMemorySensorRegistry()
