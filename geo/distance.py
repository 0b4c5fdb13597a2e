"""Distances in bulk: vectorised haversine ranking, a nearest-point index, and local metric frames.

`geo.coords.geodesic_m` is exact (WGS 84 ellipsoid) but costs tens of microseconds per pair; ranking
thousands of units or address points needs arrays. Haversine on the mean-radius sphere differs from
the ellipsoidal geodesic by at most `HAVERSINE_MAX_RELATIVE_ERROR` (0.57 %, at most 5.7 m per km),
which is far below what position reports and road travel times can resolve, so it is used for
ranking; report a distance with `geodesic_m` when it is shown to a person and must be exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from geo.coords import EARTH_RADIUS_M, CoordinateError, LatLon, Point

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

# Bound of |haversine - geodesic| / geodesic over the globe; the measured worst case is 0.5614 %
# (short north-south hops at the poles, where the ellipsoid's curvature departs most from the
# sphere's). tests/geo/test_distance.py checks it on random and worst-case pairs.
HAVERSINE_MAX_RELATIVE_ERROR = 0.0057

_DEG = math.pi / 180.0


def as_arrays(points: Sequence[Point]) -> tuple[FloatArray, FloatArray]:
    """Latitudes and longitudes of `points` as two float arrays, the shape taken here."""
    lats = np.fromiter((p.lat for p in points), dtype=np.float64, count=len(points))
    lons = np.fromiter((p.lon for p in points), dtype=np.float64, count=len(points))
    return lats, lons


def _checked(lats: ArrayLike, lons: ArrayLike) -> tuple[FloatArray, FloatArray]:
    # Arrays arrive from outside (a fleet's last positions); one NaN would silently sort last or
    # first, so ranges are checked here once rather than trusted.
    la = np.asarray(lats, dtype=np.float64)
    lo = np.asarray(lons, dtype=np.float64)
    if la.ndim != 1 or lo.ndim != 1 or la.shape != lo.shape:
        raise CoordinateError(
            f"latitudes and longitudes must be 1-D arrays of one length, got {la.shape} and {lo.shape}"
        )
    bad_lat = ~(np.abs(la) <= 90.0)  # written so NaN counts as bad
    if bad_lat.any():
        i = int(np.argmax(bad_lat))
        raise CoordinateError(f"coordinate {i}: latitude {la[i]} is outside -90..90")
    bad_lon = ~(np.abs(lo) <= 180.0)
    if bad_lon.any():
        i = int(np.argmax(bad_lon))
        raise CoordinateError(f"coordinate {i}: longitude {lo[i]} is outside -180..180")
    return la, lo


def haversine_m(origin: Point, lats: ArrayLike, lons: ArrayLike) -> FloatArray:
    """Great-circle distances in metres from `origin` to each (lat, lon), in input order."""
    la, lo = _checked(lats, lons)
    phi1 = origin.lat * _DEG
    phi2 = la * _DEG
    dphi = phi2 - phi1
    dlmb = (lo - origin.lon) * _DEG
    h = np.sin(dphi / 2.0) ** 2 + math.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2.0) ** 2
    # Rounding can push h a hair above 1 for antipodal points; arcsin would then return NaN.
    result: FloatArray = 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return result


class PointArrays:
    """Many points held for repeated distance queries: checked once, with their latitudes'
    radians and cosines kept, so each `haversine_m` from a new origin does only what depends on
    it (correlation asks one set of open incidents once per alert)."""

    __slots__ = ("cos_phi", "lats", "lons", "phi")

    def __init__(self, lats: ArrayLike, lons: ArrayLike) -> None:
        self.lats, self.lons = _checked(lats, lons)
        self.phi: FloatArray = self.lats * _DEG
        self.cos_phi: FloatArray = np.cos(self.phi)

    @classmethod
    def of(cls, points: Sequence[Point]) -> PointArrays:
        return cls(*as_arrays(points))

    def __len__(self) -> int:
        return int(self.lats.size)

    def haversine_m(self, origin: Point) -> FloatArray:
        """Great-circle distances in metres from ``origin``, in order (as `haversine_m`)."""
        phi1 = origin.lat * _DEG
        dlmb = (self.lons - origin.lon) * _DEG
        h = np.sin((self.phi - phi1) / 2.0) ** 2 + math.cos(phi1) * self.cos_phi * np.sin(dlmb / 2.0) ** 2
        result: FloatArray = 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        return result


class PointGrid:
    """Points bucketed in square cells of ``cell_deg`` degrees, answering "which lie within r of
    here" by measuring only the points of the cells the query's box overlaps.

    For a radius small next to the spread of the points (detectors of one building among a city's
    open incidents) a query measures a handful of points in plain Python, where one vectorised pass
    over every point pays a fixed cost of several array operations. A query whose box spans more
    than ``max_cells`` cells, or reaches the antimeridian (the box does not wrap), answers None:
    the caller measures every point instead (`PointArrays`).
    """

    __slots__ = ("_cell", "_cells", "_cos", "_lons", "_phi", "max_cells")

    def __init__(self, points: Sequence[LatLon], cell_deg: float, max_cells: int = 64) -> None:
        if not (math.isfinite(cell_deg) and cell_deg > 0):
            raise ValueError(f"cell size must be a positive number of degrees, got {cell_deg}")
        self._cell, self.max_cells = cell_deg, max_cells
        # Plain lists and no arrays: a grid is often made for a few dozen points and asked a few
        # times (the open incidents near one transaction's alerts).
        self._phi: list[float] = []
        self._cos: list[float] = []
        self._lons: list[float] = []
        cells: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(points):
            lat, lon = float(p.lat), float(p.lon)
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # written so NaN fails
                raise CoordinateError(f"coordinate {i}: ({lat}, {lon}) is not a latitude and longitude")
            self._phi.append(lat * _DEG)
            self._cos.append(math.cos(lat * _DEG))
            self._lons.append(lon)
            cells.setdefault((math.floor(lat / cell_deg), math.floor(lon / cell_deg)), []).append(i)
        self._cells = cells

    def __len__(self) -> int:
        return len(self._lons)

    def within(self, origin: Point, radius_m: float) -> list[tuple[int, float]] | None:
        """Indices (ascending) and haversine metres of the points within ``radius_m`` of
        ``origin``; None when the query is too wide for the grid (see the class)."""
        min_lon, min_lat, max_lon, max_lat = bbox_around(origin, radius_m)
        if min_lon <= -180.0 or max_lon >= 180.0:
            return None
        c = self._cell
        i0, i1 = math.floor(min_lat / c), math.floor(max_lat / c)
        j0, j1 = math.floor(min_lon / c), math.floor(max_lon / c)
        if (i1 - i0 + 1) * (j1 - j0 + 1) > self.max_cells:
            return None
        cells = self._cells
        found = [k for i in range(i0, i1 + 1) for j in range(j0, j1 + 1) for k in cells.get((i, j), ())]
        if not found:
            return []
        found.sort()
        # The same arithmetic as PointArrays.haversine_m, one point at a time.
        phi1 = origin.lat * _DEG
        cos1, lon1 = math.cos(phi1), origin.lon
        phi, cos, lons, sin, asin, sqrt = self._phi, self._cos, self._lons, math.sin, math.asin, math.sqrt
        # The cells hold points outside the query's box too: a point outside it is beyond the
        # radius (the box is generous), so it is passed over before the trigonometry.
        phi0, phi9 = min_lat * _DEG, max_lat * _DEG
        out = []
        for k in found:
            if not (phi0 <= phi[k] <= phi9 and min_lon <= lons[k] <= max_lon):
                continue
            h = sin((phi[k] - phi1) / 2.0) ** 2 + cos1 * cos[k] * sin((lons[k] - lon1) * _DEG / 2.0) ** 2
            d = 2.0 * EARTH_RADIUS_M * asin(sqrt(min(max(h, 0.0), 1.0)))
            if d <= radius_m:
                out.append((k, d))
        return out


def nearest_k(
    origin: Point,
    lats: ArrayLike,
    lons: ArrayLike,
    k: int,
    *,
    max_m: float | None = None,
) -> tuple[IndexArray, FloatArray]:
    """Indices and distances (metres) of the `k` points nearest to `origin`, nearest first.

    Fewer than `k` come back when there are fewer points, or fewer within `max_m`. Ties keep
    input order, so the ranking is deterministic.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    d = haversine_m(origin, lats, lons)
    candidates = np.arange(d.size) if max_m is None else np.flatnonzero(d <= max_m)
    if candidates.size > k:
        # argpartition keeps this O(n) for a large fleet; only the k winners are sorted.
        part = np.argpartition(d[candidates], k - 1)[:k]
        candidates = np.sort(candidates[part])
    order = candidates[np.argsort(d[candidates], kind="stable")]
    return order, d[order]


def bbox_around(center: Point, radius_m: float) -> tuple[float, float, float, float]:
    """A lon/lat box ``(min_lon, min_lat, max_lon, max_lat)`` holding every point within `radius_m`.

    A little generous (sphere, plus a margin for the ellipsoid); meant for spatial-index queries
    whose candidates are then measured exactly. Near a pole the box widens to all longitudes.
    """
    if radius_m < 0 or not math.isfinite(radius_m):
        raise ValueError(f"radius must be a finite non-negative number of metres, got {radius_m}")
    # The 1e-9 degrees (0.1 mm) absorbs rounding, so a radius of 0 still holds its centre.
    dlat = radius_m * (1.0 + HAVERSINE_MAX_RELATIVE_ERROR) / (EARTH_RADIUS_M * _DEG) + 1e-9
    min_lat = max(-90.0, center.lat - dlat)
    max_lat = min(90.0, center.lat + dlat)
    widest = max(abs(min_lat), abs(max_lat))
    cos_lat = math.cos(widest * _DEG)
    if cos_lat < 1e-9 or dlat / cos_lat >= 180.0:
        return (-180.0, min_lat, 180.0, max_lat)
    dlon = dlat / cos_lat
    return (max(-180.0, center.lon - dlon), min_lat, min(180.0, center.lon + dlon), max_lat)


def _local_scale(origin: Point) -> tuple[float, float]:
    ky = EARTH_RADIUS_M * _DEG
    return ky * math.cos(origin.lat * _DEG), ky


def to_local_metres(geometry: BaseGeometry, origin: Point) -> BaseGeometry:
    """`geometry` (lon/lat) in an equirectangular frame in metres centred on `origin`.

    Scale is exact at `origin` and drifts with the cosine of latitude away from it (0.3 % at
    10 km in Helsinki), so it serves distances of a few kilometres around `origin`, e.g. "how far
    is this street from this point", where a geodesic per segment would be far slower.
    """
    kx, ky = _local_scale(origin)

    def project(coords: FloatArray) -> FloatArray:
        out = np.empty_like(coords)
        out[:, 0] = (coords[:, 0] - origin.lon) * kx
        out[:, 1] = (coords[:, 1] - origin.lat) * ky
        return out

    projected: BaseGeometry = shapely.transform(geometry, project)
    return projected


def from_local_metres(x: float, y: float, origin: Point) -> Point:
    """The point `x` metres east and `y` metres north of `origin` in `to_local_metres`' frame."""
    kx, ky = _local_scale(origin)
    return Point(lat=origin.lat + y / ky, lon=origin.lon + x / kx)


DISC_DECIMALS = 7  # about a centimetre: the outline approximates the circle far more coarsely anyway
DISC_MAX_ERROR_M = 1.0  # how far a disc's outline may cut inside its circle (larger discs: 0.12 %)


@functools.cache
def _unit_ring(quad_segs: int) -> FloatArray:
    """The unit circle as `shapely.buffer` draws it (closed), counterclockwise as RFC 7946 wants."""
    disc = shapely.orient_polygons(shapely.buffer(shapely.Point(0.0, 0.0), 1.0, quad_segs=quad_segs))
    return np.asarray(disc.exterior.coords)


def disc_segments(radius_m: float, max_error_m: float = DISC_MAX_ERROR_M) -> int:
    """Vertices of a disc outline: 32 while their chords stay within ``max_error_m`` of the
    circle (``r·(1 - cos(π/32))``: radii up to ~200 m for a metre; the outline then keeps 99.4 %
    of the circle's area), else 64 (0.12 % of the radius, 99.8 % of the area)."""
    return 32 if radius_m * (1.0 - math.cos(math.pi / 32)) <= max_error_m else 64


def local_disc(center: Point, radius_m: float) -> BaseGeometry:
    """A circle of ``radius_m`` around ``center`` as a lon/lat polygon of `disc_segments`
    vertices, drawn in `to_local_metres`' frame (for radii of a few kilometres), vertices rounded
    to ``DISC_DECIMALS`` decimals. Raises `CoordinateError` when the outline would leave the
    valid range of latitudes or longitudes (near a pole or the antimeridian)."""
    if not radius_m > 0:
        raise ValueError(f"a disc needs a positive radius, got {radius_m!r}")
    ring = _unit_ring(disc_segments(radius_m) // 4)
    kx, ky = _local_scale(center)
    lons = np.round(center.lon + ring[:, 0] * (radius_m / kx), DISC_DECIMALS)
    lats = np.round(center.lat + ring[:, 1] * (radius_m / ky), DISC_DECIMALS)
    if not (np.all(np.abs(lats) <= 90.0) and np.all(np.abs(lons) <= 180.0)):
        raise CoordinateError(f"a {radius_m:g} m disc around {center} leaves the range of coordinates")
    disc: BaseGeometry = shapely.polygons(np.column_stack((lons, lats)))
    return disc


def distance_to_geometry_m(point: Point, geometry: BaseGeometry) -> float:
    """Metres from `point` to the nearest part of a nearby lon/lat `geometry`."""
    local = to_local_metres(geometry, point)
    return float(shapely.distance(shapely.Point(0.0, 0.0), local))


def _unit_vectors(lats: FloatArray, lons: FloatArray) -> FloatArray:
    phi = lats * _DEG
    lmb = lons * _DEG
    cphi = np.cos(phi)
    return np.column_stack((cphi * np.cos(lmb), cphi * np.sin(lmb), np.sin(phi)))


def _chord_to_m(chord: FloatArray) -> FloatArray:
    arc: FloatArray = 2.0 * EARTH_RADIUS_M * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
    return arc


def _m_to_chord(metres: float) -> float:
    return 2.0 * math.sin(min(metres / EARTH_RADIUS_M, math.pi) / 2.0)


class PointIndex:
    """A static set of points answering "nearest to here" and "all within r" in O(log n).

    Points are stored as unit vectors in a k-d tree: the straight-line (chord) distance between
    two unit vectors is a monotonic function of their great-circle distance, so the tree's
    Euclidean search is exact on the sphere everywhere, poles and antimeridian included. Distances
    returned are haversine metres, as `haversine_m` gives.
    """

    __slots__ = ("_size", "_tree")

    def __init__(self, lats: ArrayLike, lons: ArrayLike) -> None:
        la, lo = _checked(lats, lons)
        self._size = int(la.size)
        self._tree = cKDTree(_unit_vectors(la, lo) if la.size else np.empty((0, 3)))

    def __len__(self) -> int:
        return self._size

    def nearest(self, point: Point, max_m: float = math.inf) -> tuple[int, float] | None:
        """Index and distance of the nearest point within `max_m`, or None."""
        if self._size == 0:
            return None
        q = _unit_vectors(np.array([point.lat]), np.array([point.lon]))[0]
        bound = _m_to_chord(max_m) if math.isfinite(max_m) else np.inf
        # The tree's bound is strict; nudge it so a point exactly at max_m still counts.
        chord, idx = self._tree.query(q, k=1, distance_upper_bound=bound * (1 + 1e-12) + 1e-15)
        if not math.isfinite(float(chord)):
            return None
        return int(idx), float(_chord_to_m(np.array([chord]))[0])

    def within(self, point: Point, radius_m: float) -> tuple[IndexArray, FloatArray]:
        """Indices and distances of every point within `radius_m`, nearest first."""
        if self._size == 0:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        q = _unit_vectors(np.array([point.lat]), np.array([point.lon]))[0]
        found = np.asarray(
            self._tree.query_ball_point(q, _m_to_chord(radius_m) * (1 + 1e-12) + 1e-15),
            dtype=np.intp,
        )
        pts = self._tree.data[found]
        dist = _chord_to_m(np.linalg.norm(pts - q, axis=1))
        order = np.lexsort((found, dist))
        return found[order], dist[order]
