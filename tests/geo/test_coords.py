"""The Point type: ranges, explicit-order parsers at the edges, and their round trips."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.coords import CoordinateError, Point, geodesic_m

lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
lons = st.floats(min_value=-180, max_value=180, allow_nan=False)
points = st.builds(Point, lat=lats, lon=lons)


@given(points)
def test_lonlat_round_trip(p: Point) -> None:
    assert Point.from_lonlat(p.to_lonlat()) == p
    assert Point.from_lonlat(p.to_geojson()["coordinates"]) == p


@given(points)
def test_mapping_round_trip(p: Point) -> None:
    assert Point.from_mapping(p.to_mapping()) == p


@given(points)
def test_latlon_text_round_trip_to_seven_decimals(p: Point) -> None:
    back = Point.from_latlon_text(p.to_latlon_text())
    assert math.isclose(back.lat, p.lat, abs_tol=1e-7)
    assert math.isclose(back.lon, p.lon, abs_tol=1e-7)


@given(st.builds(Point, lat=lats, lon=st.floats(min_value=-90, max_value=90, allow_nan=False)))
def test_swapped_twice_is_identity(p: Point) -> None:
    assert p.swapped().swapped() == p


def test_each_parser_reads_its_own_axis_order() -> None:
    # The same Helsinki point in the three spellings ICP meets.
    helsinki = Point(lat=60.1699, lon=24.9384)
    assert Point.from_lonlat([24.9384, 60.1699]) == helsinki
    assert Point.from_lonlat([24.9384, 60.1699, 12.5]) == helsinki  # altitude ignored
    assert Point.from_latlon_text("60.1699,24.9384") == helsinki  # CAP
    assert Point.from_latlon_text("60.1699 24.9384") == helsinki  # GML pos in PIDF-LO
    assert Point.from_mapping({"lat": 60.1699, "lng": 24.9384}) == helsinki


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Point(lat=95, lon=0), "latitude 95.0 is outside -90..90"),
        (lambda: Point(lat=0, lon=181), "longitude 181.0 is outside -180..180"),
        (lambda: Point(lat=math.nan, lon=0), "latitude must be finite"),
        (lambda: Point(lat=True, lon=0), "latitude must be a number"),
        (lambda: Point.from_lonlat([1]), "[lon, lat]"),
        (lambda: Point.from_lonlat("24,60"), "[lon, lat]"),
        (lambda: Point.from_latlon_text("60.1"), "expected 'lat,lon'"),
        (lambda: Point.from_latlon_text("a,b"), "numbers"),
        (lambda: Point.from_mapping({"lat": 1}), "both 'lat' and 'lon'"),
        (lambda: Point.from_mapping([1, 2]), "location object"),
    ],
)
def test_bad_input_says_what_is_wrong(make: object, message: str) -> None:
    with pytest.raises(CoordinateError, match=re.escape(message)):
        make()  # type: ignore[operator]


def test_lonlat_written_as_latlon_is_caught_when_out_of_range() -> None:
    # A Helsinki position written lat-first into GeoJSON lands in range (that is what the
    # axis-swap check in geo.geojson is for); one with |lon| > 90 is refused outright.
    with pytest.raises(CoordinateError, match="latitude"):
        Point.from_lonlat([-33.9, 151.2])  # Sydney as [lat, lon]


def test_geodesic_helsinki_to_tallinn() -> None:
    d = geodesic_m(Point(lat=60.1699, lon=24.9384), Point(lat=59.4370, lon=24.7536))
    assert 81_500 < d < 82_500


def test_haversine_is_the_fast_close_approximation_of_the_geodesic() -> None:
    from geo.coords import geodesic_m, haversine_m

    pairs = [(Point(60.17, 24.94), Point(60.18, 24.96)), (Point(0, 0), Point(0, 1)),
             (Point(-33.9, 151.2), Point(51.5, -0.1)), (Point(10, 10), Point(10, 10))]
    for a, b in pairs:
        exact = geodesic_m(a, b)
        assert abs(haversine_m(a, b) - exact) <= 0.006 * exact + 1e-9
