"""Coordinates: the one point type, and the parsers and writers at the edges.

Inside ICP a point is always a `Point(lat=…, lon=…)` with named fields. The axis order differs
between the formats ICP speaks, so every conversion names its order:

- CAP 1.2 and PIDF-LO (GML `pos`) write ``lat,lon`` (``"60.17,24.94"``, ``"60.17 24.94"``);
- GeoJSON and OGC SensorThings write ``[lon, lat]``.

There is deliberately no function that takes "a pair" without saying which order it is in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from geopy.distance import geodesic

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), for the vectorised haversine path


class CoordinateError(ValueError):
    """A coordinate is malformed or out of range; the message names the value and the rule."""


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CoordinateError(f"{name} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise CoordinateError(f"{name} must be finite, got {value!r}")
    return f


@dataclass(frozen=True, slots=True)
class Point:
    """A WGS 84 position. Constructed only with valid ranges."""

    lat: float
    lon: float

    def __post_init__(self) -> None:
        if type(self.lat) is float and type(self.lon) is float and -90.0 <= self.lat <= 90.0 \
                and -180.0 <= self.lon <= 180.0:
            return  # the common case, checked in one line (NaN fails the comparisons)
        lat = _finite(self.lat, "latitude")
        lon = _finite(self.lon, "longitude")
        if not -90.0 <= lat <= 90.0:
            raise CoordinateError(f"latitude {lat} is outside -90..90")
        if not -180.0 <= lon <= 180.0:
            raise CoordinateError(f"longitude {lon} is outside -180..180")
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)

    # --- [lon, lat] formats: GeoJSON, SensorThings -------------------------------------------
    @classmethod
    def from_lonlat(cls, pair: Any) -> Point:
        """Parse a GeoJSON/SensorThings position ``[lon, lat]`` (an optional altitude is ignored)."""
        if not isinstance(pair, (list, tuple)) or len(pair) not in (2, 3):
            raise CoordinateError("a GeoJSON position must be [lon, lat] or [lon, lat, alt]")
        return cls(lat=_finite(pair[1], "latitude"), lon=_finite(pair[0], "longitude"))

    def to_lonlat(self) -> list[float]:
        """The GeoJSON/SensorThings position ``[lon, lat]``."""
        return [self.lon, self.lat]

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "Point", "coordinates": self.to_lonlat()}

    # --- lat,lon formats: CAP, PIDF-LO, query strings ----------------------------------------
    @classmethod
    def from_latlon_text(cls, text: str) -> Point:
        """Parse ``"lat,lon"`` (CAP, query strings) or ``"lat lon"`` (GML ``pos`` in PIDF-LO)."""
        if not isinstance(text, str):
            raise CoordinateError("a lat,lon text must be a string")
        parts = text.replace(",", " ").split()
        if len(parts) != 2:
            raise CoordinateError(f"expected 'lat,lon', got {text[:60]!r}")
        try:
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            raise CoordinateError(f"expected 'lat,lon' numbers, got {text[:60]!r}") from None
        return cls(lat=lat, lon=lon)

    def to_latlon_text(self) -> str:
        """``"lat,lon"`` as CAP writes it."""
        return f"{self.lat:.7f},{self.lon:.7f}"

    @classmethod
    def from_mapping(cls, obj: Any) -> Point:
        """Parse ``{"lat": …, "lon": …}`` (``lng`` is accepted as an alias of ``lon``)."""
        if not isinstance(obj, dict):
            raise CoordinateError("a location object must be {'lat': …, 'lon': …}")
        lon = obj.get("lon", obj.get("lng"))
        if "lat" not in obj or lon is None:
            raise CoordinateError("a location object needs both 'lat' and 'lon'")
        return cls(lat=_finite(obj["lat"], "latitude"), lon=_finite(lon, "longitude"))

    def to_mapping(self) -> dict[str, float]:
        return {"lat": self.lat, "lon": self.lon}

    def swapped(self) -> Point:
        """The point with lat and lon exchanged (for detecting axis-order mistakes in feeds)."""
        return Point(lat=self.lon, lon=self.lat)

    def __str__(self) -> str:
        return f"({self.lat:.6f}, {self.lon:.6f})"


def geodesic_m(a: Point, b: Point) -> float:
    """Geodesic distance in metres on the WGS 84 ellipsoid (geopy, Karney's algorithm)."""
    return float(geodesic((a.lat, a.lon), (b.lat, b.lon)).meters)


class LatLon(Protocol):
    """Anything with a latitude and longitude in degrees (a `Point`, a unit's position fix)."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...


def haversine_m(a: LatLon, b: LatLon) -> float:
    """Great-circle distance in metres on a sphere of mean Earth radius: within about 0.5% of
    `geodesic_m` and some fifty times cheaper, for plausibility checks on streams of positions
    (which need not be made `Point`s first)."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat, dlon = lat2 - lat1, math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
