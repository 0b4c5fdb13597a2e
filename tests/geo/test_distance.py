"""Vectorised distances agree with the exact geodesic within the stated tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.coords import CoordinateError, Point, geodesic_m
from geo.distance import (
    HAVERSINE_MAX_RELATIVE_ERROR,
    PointArrays,
    PointGrid,
    PointIndex,
    as_arrays,
    bbox_around,
    disc_segments,
    distance_to_geometry_m,
    from_local_metres,
    haversine_m,
    local_disc,
    nearest_k,
    to_local_metres,
)

lats = st.floats(min_value=-89.9, max_value=89.9, allow_nan=False)
lons = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.builds(Point, lat=lats, lon=lons)
HELSINKI = Point(lat=60.1699, lon=24.9384)


@settings(max_examples=300)
@given(points, points)
def test_haversine_within_stated_tolerance_of_geodesic(a: Point, b: Point) -> None:
    exact = geodesic_m(a, b)
    fast = float(haversine_m(a, [b.lat], [b.lon])[0])
    assert abs(fast - exact) <= HAVERSINE_MAX_RELATIVE_ERROR * exact + 1e-6


@pytest.mark.parametrize("lat", [-89.9, -45.0, 0.0, 45.0, 60.17, 89.9])
@pytest.mark.parametrize(("dlat", "dlon"), [(0.01, 0.0), (0.0, 0.01), (0.007, 0.007), (1.0, 0.0)])
def test_haversine_tolerance_holds_at_the_worst_places(lat: float, dlat: float, dlon: float) -> None:
    # Short north-south hops near the poles and the equator are where sphere and ellipsoid differ most.
    a = Point(lat=lat, lon=10.0)
    b = Point(lat=max(-90.0, min(90.0, lat + dlat)), lon=10.0 + dlon)
    exact = geodesic_m(a, b)
    assert abs(float(haversine_m(a, [b.lat], [b.lon])[0]) - exact) <= HAVERSINE_MAX_RELATIVE_ERROR * exact


def test_nearest_k_ranks_like_the_exact_geodesic() -> None:
    rng = np.random.default_rng(7)
    lat = 60.17 + rng.uniform(-0.2, 0.2, 5000)
    lon = 24.94 + rng.uniform(-0.4, 0.4, 5000)
    idx, dist = nearest_k(HELSINKI, lat, lon, 10)
    exact = np.array([geodesic_m(HELSINKI, Point(float(a), float(b))) for a, b in zip(lat, lon, strict=True)])
    assert list(idx) == list(np.argsort(exact, kind="stable")[:10])
    assert np.all(np.diff(dist) >= 0)
    assert np.allclose(dist, exact[idx], rtol=HAVERSINE_MAX_RELATIVE_ERROR)


def test_nearest_k_edges() -> None:
    lat, lon = as_arrays([Point(60.0, 25.0), Point(60.0, 25.01), Point(60.0, 25.0)])
    idx, dist = nearest_k(Point(60.0, 25.0), lat, lon, 5)
    assert list(idx) == [0, 2, 1]  # a tie keeps input order; fewer than k come back
    assert dist[0] == 0.0
    idx, _ = nearest_k(Point(60.0, 25.0), lat, lon, 5, max_m=100.0)
    assert list(idx) == [0, 2]
    idx, dist = nearest_k(HELSINKI, [], [], 3)
    assert idx.size == 0 and dist.size == 0
    with pytest.raises(ValueError, match="k must be at least 1"):
        nearest_k(HELSINKI, lat, lon, 0)


@pytest.mark.parametrize(
    ("lats_", "lons_", "message"),
    [
        ([60.0, 95.0], [25.0, 25.0], "coordinate 1: latitude 95.0"),
        ([60.0, math.nan], [25.0, 25.0], "coordinate 1: latitude nan"),
        ([60.0], [190.0], "coordinate 0: longitude 190.0"),
        ([60.0, 61.0], [25.0], "one length"),
    ],
)
def test_bad_arrays_are_refused_naming_the_coordinate(lats_: list[float], lons_: list[float], message: str) -> None:
    with pytest.raises(CoordinateError, match=message):
        haversine_m(HELSINKI, lats_, lons_)


def test_ranking_ten_thousand_points_is_fast() -> None:
    import time

    rng = np.random.default_rng(1)
    lat = rng.uniform(-90, 90, 10_000)
    lon = rng.uniform(-180, 180, 10_000)
    started = time.perf_counter()
    for _ in range(20):
        nearest_k(HELSINKI, lat, lon, 25)
    assert (time.perf_counter() - started) / 20 < 0.02


@settings(max_examples=200)
@given(points, st.floats(min_value=0, max_value=50_000), st.floats(0, 360), st.floats(0, 1))
def test_bbox_around_holds_every_point_within_radius(centre: Point, radius: float, bearing: float, frac: float) -> None:
    from geopy.distance import geodesic

    dest = geodesic(meters=radius * frac).destination((centre.lat, centre.lon), bearing)
    min_lon, min_lat, max_lon, max_lat = bbox_around(centre, radius)
    assert min_lat <= dest.latitude <= max_lat
    if max_lon - min_lon < 360 and min_lon > -180 and max_lon < 180:  # not clipped at the antimeridian
        assert min_lon <= dest.longitude <= max_lon


def test_point_index_matches_brute_force_including_antimeridian() -> None:
    rng = np.random.default_rng(3)
    lat = rng.uniform(-80, 80, 2000)
    lon = rng.uniform(-180, 180, 2000)
    index = PointIndex(lat, lon)
    assert len(index) == 2000
    for q in (HELSINKI, Point(0.0, 179.99), Point(-10.0, -179.99), Point(89.0, 0.0)):
        brute = haversine_m(q, lat, lon)
        hit = index.nearest(q)
        assert hit is not None
        assert hit[0] == int(np.argmin(brute))
        assert math.isclose(hit[1], float(brute.min()), rel_tol=1e-9, abs_tol=1e-6)
        idx, dist = index.within(q, 800_000.0)
        assert sorted(idx.tolist()) == np.flatnonzero(brute <= 800_000.0).tolist()
        assert np.all(np.diff(dist) >= 0)


def test_point_index_bounds() -> None:
    index = PointIndex([60.0], [25.0])
    assert index.nearest(Point(60.0, 25.001), max_m=10.0) is None
    hit = index.nearest(Point(60.0, 25.001), max_m=100.0)
    assert hit is not None and 55 < hit[1] < 56
    assert PointIndex([], []).nearest(HELSINKI) is None
    assert PointIndex([], []).within(HELSINKI, 1e6)[0].size == 0


def test_local_frame_distances_match_geodesic_nearby() -> None:
    street = shapely.LineString([(24.94, 60.17), (24.95, 60.17)])
    for q in (Point(60.171, 24.945), Point(60.168, 24.938), Point(60.17, 24.945)):
        # The geodesic to the nearest point of the line, found by brute force along it.
        exact = min(geodesic_m(q, Point(60.17, 24.94 + i * 0.00001)) for i in range(1001))
        assert abs(distance_to_geometry_m(q, street) - exact) <= 0.006 * exact + 0.05
    local = to_local_metres(street, HELSINKI)
    x, y = local.coords[0]
    back = from_local_metres(x, y, HELSINKI)
    assert math.isclose(back.lon, 24.94, abs_tol=1e-9) and math.isclose(back.lat, 60.17, abs_tol=1e-9)


@given(lat=st.floats(-80, 80), lon=st.floats(-179, 179), radius=st.floats(1.0, 10_000.0))
@settings(max_examples=60, deadline=None)
def test_a_local_disc_keeps_its_rim_at_the_radius(lat: float, lon: float, radius: float) -> None:
    center = Point(lat=lat, lon=lon)
    disc = local_disc(center, radius)
    assert shapely.is_valid(disc) and len(disc.exterior.coords) == disc_segments(radius) + 1
    rim = [geodesic_m(center, Point(lat=y, lon=x)) for x, y in disc.exterior.coords]
    # The local frame drifts with latitude (well under 1 % within 10 km) and vertices are rounded
    # to 1e-7 degrees (about a centimetre).
    assert all(abs(d - radius) <= 0.01 * radius + 0.05 for d in rim)
    assert disc.exterior.is_ccw
    # Its chords cut inside the circle by at most a metre, or 0.12 % where 32 vertices cannot do that.
    n = disc_segments(radius)
    assert n in (32, 64)
    assert radius * (1 - math.cos(math.pi / n)) <= max(1.0, radius * (1 - math.cos(math.pi / 64))) + 1e-9


def test_a_local_disc_refuses_to_cross_a_pole_or_the_antimeridian() -> None:
    with pytest.raises(CoordinateError):
        local_disc(Point(lat=89.99, lon=0.0), 5_000.0)
    with pytest.raises(CoordinateError):
        local_disc(Point(lat=0.0, lon=179.99), 5_000.0)
    with pytest.raises(ValueError):
        local_disc(Point(lat=0.0, lon=0.0), 0.0)


@given(origin=points, others=st.lists(points, min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_point_arrays_measure_as_haversine_does(origin: Point, others: list[Point]) -> None:
    held = PointArrays.of(others)
    assert len(held) == len(others)
    lats, lons = as_arrays(others)
    assert np.allclose(held.haversine_m(origin), haversine_m(origin, lats, lons), rtol=1e-12, atol=1e-6)


def test_point_arrays_are_checked_once_when_made() -> None:
    with pytest.raises(CoordinateError):
        PointArrays([60.0, float("nan")], [24.0, 25.0])
    with pytest.raises(CoordinateError):
        PointArrays([60.0], [24.0, 25.0])



near_helsinki = st.builds(Point, lat=st.floats(60.0, 60.4), lon=st.floats(24.5, 25.3))


@given(origin=near_helsinki, others=st.lists(near_helsinki, min_size=1, max_size=60),
       radius=st.floats(0.0, 20_000.0), cell_exp=st.integers(-12, -2))
@settings(max_examples=150, deadline=None)
def test_point_grid_finds_what_measuring_every_point_finds(origin: Point, others: list[Point], radius: float,
                                                           cell_exp: int) -> None:
    found = PointGrid(others, 2.0 ** cell_exp, max_cells=10**9).within(origin, radius)
    assert found is not None
    d = PointArrays.of(others).haversine_m(origin)
    # A point on the rim may fall either side in the last bit; every other point must agree.
    rim = {i for i in range(len(others)) if abs(d[i] - radius) <= 1e-6}
    assert {i for i, _ in found} - rim == {i for i in range(len(others)) if d[i] <= radius} - rim
    assert [i for i, _ in found] == sorted(i for i, _ in found)
    for i, metres in found:
        assert metres == pytest.approx(float(d[i]), rel=1e-12, abs=1e-6)


def test_point_grid_sends_wide_and_antimeridian_queries_back() -> None:
    grid = PointGrid([Point(60.17, 24.94), Point(60.18, 24.95)], cell_deg=2.0 ** -6, max_cells=64)
    assert grid.within(Point(60.17, 24.94), 50_000.0) is None  # thousands of cells: measure every point
    assert [i for i, _ in grid.within(Point(60.17, 24.94), 1_500.0) or []] == [0, 1]
    assert grid.within(Point(60.17, 24.94), 10.0) == [(0, 0.0)]
    east = PointGrid([Point(0.0, 179.9999), Point(0.0, -179.9999)], cell_deg=0.01)
    assert east.within(Point(0.0, 179.9999), 100.0) is None  # the box would have to wrap


def test_point_grid_checks_what_it_is_given() -> None:
    with pytest.raises(ValueError):
        PointGrid([], cell_deg=0.0)
    with pytest.raises(CoordinateError):
        PointGrid([PositionFix(lat=91.0, lon=24.0)], cell_deg=0.01)


class PositionFix:
    """Anything with lat/lon (not a Point, so nothing has checked it yet)."""

    def __init__(self, lat: float, lon: float) -> None:
        self.lat, self.lon = lat, lon
