"""Shapes at the edges: GeoJSON and CAP polygons and circles as shapely lon/lat geometry, and back.

Every shapely geometry in ICP has x = longitude and y = latitude, which is GeoJSON's order
(RFC 7946) and the opposite of CAP 1.2's ``lat,lon`` text. The parsers here are the only places
where either text becomes a shape, so the order is decided once. Parsers check structure and
ranges and name the offending part in a `GeometryError` (``"feature 2: Polygon ring 0 is not
closed"``); whether a polygon is *valid* (no self-intersection) is a separate question answered by
`require_valid`, because some callers must reject and others may repair.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from geopy.distance import geodesic
from numpy.typing import NDArray
from shapely.geometry import (
    GeometryCollection,
    LinearRing,
    LineString,
    MultiLineString,
    MultiPoint,
    MultiPolygon,
    Polygon,
)
from shapely.geometry import Point as ShapelyPoint
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from geo.coords import CoordinateError, Point, geodesic_m

# Bound on the work one document can cause (h11-style: every input has a stated limit). A
# detailed national border runs to a few hundred thousand positions; a million is generous.
MAX_POSITIONS = 1_000_000

# The one CRS GeoJSON (RFC 7946) allows. The 2008 draft's optional "crs" member still appears in
# exported files; EPSG:4326 there meant lon/lat too. Anything else (a national grid such as
# EPSG:3067) is refused rather than misread as degrees.
_LONLAT_CRS_NAMES = frozenset(
    {
        "urn:ogc:def:crs:ogc:1.3:crs84",
        "urn:ogc:def:crs:ogc::crs84",
        "crs84",
        "epsg:4326",
        "urn:ogc:def:crs:epsg::4326",
        "urn:ogc:def:crs:epsg:6.6:4326",
    }
)

GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


# JSON arrays arrive as lists; tuples come from Python callers (shapely's __geo_interface__).
_ARRAY = (list, tuple)


class GeometryError(ValueError):
    """A shape is malformed, out of range or invalid; the message names the offending part."""


def _at(where: str, what: str) -> str:
    return f"{where} {what}" if where else what


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


# --- GeoJSON in ----------------------------------------------------------------------------------


class _Reader:
    """One document's parse: carries the position budget so nested calls share it."""

    def __init__(self, max_positions: int) -> None:
        self.limit = self.remaining = max_positions

    def positions(self, obj: Any, where: str, minimum: int) -> list[tuple[float, float]]:
        if not isinstance(obj, _ARRAY):
            raise GeometryError(f"{where} must be an array of positions, got {_describe(obj)}")
        if len(obj) < minimum:
            raise GeometryError(f"{where} has {len(obj)} positions, needs at least {minimum}")
        self.spend(len(obj), where)
        return [self.position(pair, _at(where, f"coordinate {j}")) for j, pair in enumerate(obj)]

    def spend(self, count: int, where: str) -> None:
        self.remaining -= count
        if self.remaining < 0:
            raise GeometryError(f"{where}: too many positions in one document (at most {self.limit})")

    def position(self, obj: Any, where: str) -> tuple[float, float]:
        try:
            p = Point.from_lonlat(obj)
        except CoordinateError as exc:
            raise GeometryError(f"{where}: {exc}") from None
        return (p.lon, p.lat)

    def ring(self, obj: Any, where: str) -> list[tuple[float, float]]:
        ring = self.positions(obj, where, 4)
        if ring[0] != ring[-1]:
            raise GeometryError(
                f"{where} is not closed (first position {list(ring[0])} differs from last {list(ring[-1])})"
            )
        return ring

    def polygon(self, obj: Any, where: str) -> Polygon:
        if not isinstance(obj, _ARRAY) or not obj:
            raise GeometryError(f"{where} must be a non-empty array of linear rings")
        rings = [self.ring(r, _at(where, f"ring {i}")) for i, r in enumerate(obj)]
        return Polygon(rings[0], rings[1:])

    def parts(self, obj: Any, where: str, noun: str) -> Sequence[Any]:
        if not isinstance(obj, _ARRAY) or not obj:
            raise GeometryError(f"{where} coordinates must be a non-empty array of {noun}s")
        return obj

    def geometry(self, obj: Any, where: str) -> BaseGeometry:
        if not isinstance(obj, dict):
            raise GeometryError(f"{_at(where, 'geometry')} must be an object, got {_describe(obj)}")
        kind = obj.get("type")
        if kind not in GEOMETRY_TYPES:
            raise GeometryError(
                f"{_at(where, 'geometry')} type must be one of {', '.join(GEOMETRY_TYPES)}; got {_describe(kind)}"
            )
        _check_crs(obj, where)
        here = _at(where, str(kind))
        if kind == "GeometryCollection":
            members = obj.get("geometries")
            if not isinstance(members, _ARRAY):
                raise GeometryError(f"{here} needs a 'geometries' array")
            return GeometryCollection([self.geometry(g, _at(here, f"geometry {i}")) for i, g in enumerate(members)])
        if "coordinates" not in obj:
            raise GeometryError(f"{here} has no 'coordinates'")
        coords = obj["coordinates"]
        if kind == "Point":
            self.spend(1, here)
            return ShapelyPoint(self.position(coords, here))
        if kind == "MultiPoint":
            return MultiPoint(self.positions(coords, here, 1))
        if kind == "LineString":
            return LineString(self.positions(coords, here, 2))
        if kind == "MultiLineString":
            lines = self.parts(coords, here, "line")
            return MultiLineString([self.positions(c, _at(here, f"line {i}"), 2) for i, c in enumerate(lines)])
        if kind == "Polygon":
            return self.polygon(coords, here)
        polygons = self.parts(coords, here, "polygon")
        return MultiPolygon([self.polygon(c, _at(here, f"polygon {i}")) for i, c in enumerate(polygons)])


def _check_crs(obj: Mapping[str, Any], where: str) -> None:
    crs = obj.get("crs")
    if crs is None:
        return
    name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
    if not isinstance(name, str) or name.strip().lower() not in _LONLAT_CRS_NAMES:
        raise GeometryError(
            f"{_at(where, 'crs')} {_describe(name if name is not None else crs)} is not WGS 84 "
            "lon/lat; GeoJSON (RFC 7946) coordinates must be [longitude, latitude] in degrees"
        )


def geometry_from_geojson(obj: Any, *, max_positions: int = MAX_POSITIONS) -> BaseGeometry:
    """A GeoJSON geometry object (``[lon, lat]`` positions) as a shapely geometry (x=lon, y=lat)."""
    return _Reader(max_positions).geometry(obj, "")


@dataclass(frozen=True, slots=True)
class Feature:
    """A GeoJSON Feature: a geometry (or None, which RFC 7946 allows), properties and an id."""

    geometry: BaseGeometry | None
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | int | None = None


def _feature(reader: _Reader, obj: Any, where: str) -> Feature:
    if not isinstance(obj, dict) or obj.get("type") != "Feature":
        raise GeometryError(f"{where} must be a GeoJSON Feature object")
    if "geometry" not in obj:
        raise GeometryError(f"{where} has no 'geometry' member")
    _check_crs(obj, where)
    raw = obj["geometry"]
    geometry = None if raw is None else reader.geometry(raw, f"{where}:")
    properties = obj.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise GeometryError(f"{where} properties must be an object or null")
    fid = obj.get("id")
    if fid is not None and (isinstance(fid, bool) or not isinstance(fid, (str, int))):
        raise GeometryError(f"{where} id must be a string or a number, got {_describe(fid)}")
    return Feature(geometry=geometry, properties=dict(properties), id=fid)


def features_from_geojson(obj: Any, *, max_positions: int = MAX_POSITIONS) -> list[Feature]:
    """The features of a GeoJSON FeatureCollection, or of a single Feature, in document order."""
    reader = _Reader(max_positions)
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        return [_feature(reader, obj, "feature")]
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection":
        got = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise GeometryError(f"expected a GeoJSON Feature or FeatureCollection, got {_describe(got)}")
    _check_crs(obj, "FeatureCollection")
    features = obj.get("features")
    if not isinstance(features, _ARRAY):
        raise GeometryError("FeatureCollection needs a 'features' array")
    return [_feature(reader, f, f"feature {i}") for i, f in enumerate(features)]


# --- GeoJSON out ---------------------------------------------------------------------------------


def _coords(seq: Any, precision: int | None) -> list[list[float]]:
    xy: NDArray[np.float64] = np.asarray(seq, dtype=np.float64)[:, :2]
    if precision is not None:
        xy = np.round(xy, precision)
    rows: list[list[float]] = xy.tolist()
    return rows


def _polygon_rings(polygon: Polygon, precision: int | None) -> list[list[list[float]]]:
    # RFC 7946 section 3.1.6: exterior counterclockwise, holes clockwise (readers must not rely
    # on it, but writers should follow it).
    p = orient(polygon, sign=1.0)
    return [_coords(p.exterior.coords, precision)] + [_coords(r.coords, precision) for r in p.interiors]


def geometry_to_geojson(geometry: BaseGeometry, *, precision: int | None = None) -> dict[str, Any]:
    """A shapely geometry (x=lon, y=lat) as a GeoJSON geometry object; `precision` rounds degrees.

    Altitudes are dropped (ICP's shapes are 2-D). Empty geometries cannot be written, since
    GeoJSON readers disagree on what they mean.
    """
    if geometry.is_empty:
        raise GeometryError(f"cannot write an empty {geometry.geom_type} as GeoJSON")
    if isinstance(geometry, ShapelyPoint):
        return {"type": "Point", "coordinates": _coords(geometry.coords, precision)[0]}
    if isinstance(geometry, (LineString, LinearRing)):
        return {"type": "LineString", "coordinates": _coords(geometry.coords, precision)}
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_rings(geometry, precision)}
    if isinstance(geometry, MultiPoint):
        pts = [_coords(g.coords, precision)[0] for g in geometry.geoms]
        return {"type": "MultiPoint", "coordinates": pts}
    if isinstance(geometry, MultiLineString):
        lines = [_coords(g.coords, precision) for g in geometry.geoms]
        return {"type": "MultiLineString", "coordinates": lines}
    if isinstance(geometry, MultiPolygon):
        polys = [_polygon_rings(g, precision) for g in geometry.geoms]
        return {"type": "MultiPolygon", "coordinates": polys}
    if isinstance(geometry, GeometryCollection):
        members = [geometry_to_geojson(g, precision=precision) for g in geometry.geoms]
        return {"type": "GeometryCollection", "geometries": members}
    raise GeometryError(f"cannot write a {geometry.geom_type} as GeoJSON")


def feature_to_geojson(feature: Feature, *, precision: int | None = None) -> dict[str, Any]:
    """A `Feature` as a GeoJSON Feature object."""
    out: dict[str, Any] = {"type": "Feature"}
    if feature.id is not None:
        out["id"] = feature.id
    out["geometry"] = None if feature.geometry is None else geometry_to_geojson(feature.geometry, precision=precision)
    out["properties"] = dict(feature.properties)
    return out


def feature_collection_to_geojson(features: Iterable[Feature], *, precision: int | None = None) -> dict[str, Any]:
    """Features as a GeoJSON FeatureCollection object."""
    return {
        "type": "FeatureCollection",
        "features": [feature_to_geojson(f, precision=precision) for f in features],
    }


# --- validity ------------------------------------------------------------------------------------


def require_valid(
    geometry: BaseGeometry, *, repair: bool = False, where: str = "geometry"
) -> tuple[BaseGeometry, str | None]:
    """`geometry` if it is valid (OGC rules: no self-intersection, holes inside, ...).

    Otherwise a `GeometryError` naming the reason and place, or, with ``repair=True``, the
    geometry rebuilt by `shapely.make_valid` and a warning saying what was wrong: a repair
    changes the shape, so it is never done silently. Polygonal input stays polygonal (GEOS's
    "structure" method: a bow-tie becomes two triangles; a spike or a sliver is dropped).
    """
    if shapely.is_valid(geometry):
        return geometry, None
    reason = shapely.is_valid_reason(geometry)
    if not repair:
        raise GeometryError(f"{where} is not valid: {reason}")
    if isinstance(geometry, (Polygon, MultiPolygon)):
        fixed = shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    else:
        fixed = shapely.make_valid(geometry)
    if fixed.is_empty:
        raise GeometryError(f"{where} is not valid ({reason}) and nothing is left after repair")
    return (
        fixed,
        f"{where} was not valid ({reason}); repaired with make_valid into a {fixed.geom_type}",
    )


# --- CAP 1.2 shapes ------------------------------------------------------------------------------

# CAP writes "lat,lon" pairs separated by whitespace; spaces around the comma are nonconforming
# but harmless, and tolerated so that they do not split a pair in two.
_COMMA = re.compile(r"\s*,\s*")
_CAP_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)\Z")


def _cap_point(token: str, where: str) -> Point:
    parts = token.split(",")
    if len(parts) != 2 or not all(_CAP_NUMBER.match(p) for p in parts):
        raise GeometryError(f"{where}: expected 'lat,lon', got {_describe(token)}")
    try:
        return Point(lat=float(parts[0]), lon=float(parts[1]))
    except CoordinateError as exc:
        raise GeometryError(f"{where}: {exc}") from None


def parse_cap_polygon(text: str, *, max_positions: int = MAX_POSITIONS) -> Polygon:
    """A CAP 1.2 ``<polygon>`` (whitespace-separated ``lat,lon`` pairs, closed, at least 4).

    The result is a shapely Polygon with x=lon, y=lat, like every shape parsed from GeoJSON.
    """
    if not isinstance(text, str):
        raise GeometryError("CAP polygon must be text")
    tokens = _COMMA.sub(",", text.strip()).split()
    if len(tokens) > max_positions:
        raise GeometryError(f"CAP polygon has more than {max_positions} pairs")
    if len(tokens) < 4:
        raise GeometryError(f"CAP polygon has {len(tokens)} pairs, needs at least 4")
    points = [_cap_point(t, f"CAP polygon pair {i}") for i, t in enumerate(tokens)]
    if points[0] != points[-1]:
        raise GeometryError(f"CAP polygon is not closed (first pair {tokens[0]!r} differs from last {tokens[-1]!r})")
    return Polygon([(p.lon, p.lat) for p in points])


def _decimal(value: float) -> str:
    # CAP's schema allows plain decimals only; repr would write 1e-06. This is still the shortest
    # text that reads back to the same float.
    return np.format_float_positional(value, trim="-")


def cap_polygon_text(polygon: Polygon) -> str:
    """A Polygon (x=lon, y=lat; no holes, which CAP cannot express) as CAP ``lat,lon`` pairs."""
    if polygon.is_empty or polygon.interiors:
        raise GeometryError("a CAP polygon is one non-empty ring without holes")
    return " ".join(f"{_decimal(lat)},{_decimal(lon)}" for lon, lat in _coords(polygon.exterior.coords, None))


@dataclass(frozen=True, slots=True)
class Circle:
    """A geodesic circle: all points within `radius_m` metres (WGS 84 ellipsoid) of `center`.

    CAP and PIDF-LO describe areas this way. Containment is exact (`contains`); `to_polygon`
    offers a shape for maps and spatial indexes, whose vertices lie exactly on the circle.
    """

    center: Point
    radius_m: float

    def __post_init__(self) -> None:
        r = self.radius_m
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise GeometryError(f"circle radius must be a finite number >= 0, got {_describe(r)}")
        object.__setattr__(self, "radius_m", float(r))

    def contains(self, point: Point) -> bool:
        return geodesic_m(self.center, point) <= self.radius_m

    def to_polygon(self, segments: int = 64) -> Polygon:
        """The circle as a polygon (x=lon, y=lat) with `segments` vertices on its rim.

        Chords cut inside the rim by at most ``r * (1 - cos(pi / segments))`` (0.12 % of r at 64).
        A circle around a pole or across the antimeridian has no such lon/lat polygon and is
        refused.
        """
        if segments < 8:
            raise ValueError(f"a circle polygon needs at least 8 segments, got {segments}")
        if self.radius_m == 0:
            raise GeometryError("a circle of radius 0 is a point, not a polygon (use to_shape)")
        start = (self.center.lat, self.center.lon)
        rim = geodesic(meters=self.radius_m)
        ring: list[tuple[float, float]] = []
        for i in range(segments):
            dest = rim.destination(start, 360.0 * i / segments)
            ring.append((float(dest.longitude), float(dest.latitude)))
        lons = np.array([x for x, _ in ring])
        if np.ptp(lons) > 180.0 or any(abs(y) >= 90.0 for _, y in ring):
            raise GeometryError("circle crosses the antimeridian or encloses a pole")
        # Bearings turn clockwise, so the ring does too; RFC 7946 wants exteriors counterclockwise.
        ring.reverse()
        return Polygon(ring)

    def to_shape(self, segments: int = 64) -> ShapelyPoint | Polygon:
        """The centre as a Point when the radius is 0 (CAP allows it), else `to_polygon`."""
        if self.radius_m == 0:
            return ShapelyPoint(self.center.lon, self.center.lat)
        return self.to_polygon(segments)


def parse_cap_circle(text: str) -> Circle:
    """A CAP 1.2 ``<circle>``: ``"lat,lon radius"`` with the radius in kilometres."""
    if not isinstance(text, str):
        raise GeometryError("CAP circle must be text")
    tokens = _COMMA.sub(",", text.strip()).split()
    if len(tokens) != 2:
        raise GeometryError(f"CAP circle must be 'lat,lon radius_km', got {_describe(text)}")
    center = _cap_point(tokens[0], "CAP circle centre")
    if not _CAP_NUMBER.match(tokens[1]):
        raise GeometryError(f"CAP circle radius must be a number of km, got {_describe(tokens[1])}")
    return Circle(center=center, radius_m=float(tokens[1]) * 1000.0)


def cap_circle_text(circle: Circle) -> str:
    """A `Circle` as CAP ``"lat,lon radius_km"``."""
    return f"{_decimal(circle.center.lat)},{_decimal(circle.center.lon)} {_decimal(circle.radius_m / 1000.0)}"


# --- axis-order mistakes -------------------------------------------------------------------------


def swap_axes(geometry: BaseGeometry) -> BaseGeometry:
    """`geometry` with x and y exchanged: what a feed meant if it wrote lon where lat belongs."""

    def swap(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        return coords[:, ::-1].copy()

    swapped: BaseGeometry = shapely.transform(geometry, swap)
    return swapped


def axis_swap_suspected(shape: BaseGeometry, service_area: BaseGeometry) -> bool:
    """True when `shape` misses `service_area` as written but touches it with lat and lon swapped.

    The usual cause is a feed writing ``lon,lat`` where CAP requires ``lat,lon`` (or ``[lat,
    lon]`` in GeoJSON). Intake should flag such an alert for a person rather than place it
    anywhere: either reading could be wrong, and the unswapped one is certainly outside.
    """
    return not shape.intersects(service_area) and swap_axes(shape).intersects(service_area)
