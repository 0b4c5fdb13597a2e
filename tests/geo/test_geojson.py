"""GeoJSON and CAP shapes: one axis order inside, clear errors, real alert files, round trips."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry import Point as ShapelyPoint

from geo.coords import Point, geodesic_m
from geo.geojson import (
    Circle,
    Feature,
    GeometryError,
    axis_swap_suspected,
    cap_circle_text,
    cap_polygon_text,
    feature_collection_to_geojson,
    features_from_geojson,
    geometry_from_geojson,
    geometry_to_geojson,
    parse_cap_circle,
    parse_cap_polygon,
    require_valid,
    swap_axes,
)
from tests.shared import shared_file

CAP_NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
SWEDEN = shapely.box(10.5, 55.0, 24.5, 69.5)  # a service area: lon 10.5..24.5, lat 55..69.5
CALIFORNIA = shapely.box(-124.5, 32.5, -114.0, 42.0)


def cap_texts(name: str, element: str) -> list[str]:
    """The text of every <element> in a CAP fixture (just enough XML to reach the strings)."""
    root = ET.parse(shared_file("fixtures", "cap", name)).getroot()
    return [e.text or "" for e in root.iterfind(f".//cap:{element}", CAP_NS)]


# --- GeoJSON in ----------------------------------------------------------------------------------


def test_polygon_with_hole_is_lon_lat() -> None:
    doc = {
        "type": "Polygon",
        "coordinates": [
            [[24.93, 60.16], [24.96, 60.16], [24.96, 60.18], [24.93, 60.18], [24.93, 60.16]],
            [[24.94, 60.165], [24.945, 60.165], [24.945, 60.17], [24.94, 60.165]],
        ],
    }
    poly = geometry_from_geojson(doc)
    assert isinstance(poly, Polygon) and len(poly.interiors) == 1
    assert poly.bounds == (24.93, 60.16, 24.96, 60.18)  # x is longitude, y latitude
    assert not poly.contains(ShapelyPoint(24.943, 60.166))  # in the hole


def test_all_geometry_types_and_altitude() -> None:
    assert geometry_from_geojson({"type": "Point", "coordinates": [24.9, 60.1, 15.0]}).equals(ShapelyPoint(24.9, 60.1))
    multi = geometry_from_geojson(
        {
            "type": "MultiPolygon",
            "coordinates": [
                [[[0, 0], [1, 0], [1, 1], [0, 0]]],
                [[[5, 5], [6, 5], [6, 6], [5, 5]]],
            ],
        }
    )
    assert isinstance(multi, MultiPolygon) and len(multi.geoms) == 2
    coll = geometry_from_geojson(
        {
            "type": "GeometryCollection",
            "geometries": [
                {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
                {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]},
            ],
        }
    )
    assert [g.geom_type for g in coll.geoms] == ["LineString", "MultiPoint", "MultiLineString"]


def test_features_and_collections() -> None:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    one = features_from_geojson({"type": "Feature", "id": 7, "geometry": square, "properties": {"a": 1}})
    assert one == [Feature(geometry=one[0].geometry, properties={"a": 1}, id=7)]
    many = features_from_geojson(
        {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "geometry": None, "properties": None},
                {"type": "Feature", "geometry": square, "properties": {}},
            ],
        }
    )
    assert many[0].geometry is None and many[0].properties == {}
    assert many[1].geometry is not None and many[1].geometry.area == 1.0


RING_OPEN = [[0, 0], [1, 0], [1, 1], [0, 1]]
RING_OK = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "Polygon", "coordinates": [[*RING_OPEN, [0, 2]]]}, "Polygon ring 0 is not closed"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 95], [0, 1], [0, 0]]]},
            "Polygon ring 0 coordinate 2: latitude 95.0 is outside -90..90",
        ),
        (
            {"type": "Polygon", "coordinates": [RING_OK, [[0, 0], [1, 1], [0, 0]]]},
            "Polygon ring 1 has 3 positions, needs at least 4",
        ),
        (
            {"type": "MultiPolygon", "coordinates": [[RING_OK], [[[0, 0], [200, 0], [1, 1], [0, 0]]]]},
            "MultiPolygon polygon 1 ring 0 coordinate 1: longitude 200.0 is outside -180..180",
        ),
        ({"type": "Point", "coordinates": [1, "2"]}, "Point: latitude must be a number, got str"),
        ({"type": "Point"}, "Point has no 'coordinates'"),
        ({"type": "Polygon", "coordinates": []}, "Polygon must be a non-empty array of linear rings"),
        ({"type": "Circle", "coordinates": [0, 0]}, "geometry type must be one of"),
        ([1, 2], "geometry must be an object"),
        (
            {
                "type": "Point",
                "coordinates": [2e5, 6.7e6],
                "crs": {"type": "name", "properties": {"name": "EPSG:3067"}},
            },
            "crs 'EPSG:3067' is not WGS 84 lon/lat",
        ),
    ],
)
def test_bad_geometry_names_the_part(doc: Any, message: str) -> None:
    with pytest.raises(GeometryError, match=re.escape(message)):
        geometry_from_geojson(doc)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [RING_OK]}, "properties": {}},
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [RING_OPEN]}, "properties": {}},
                ],
            },
            "feature 1: Polygon ring 0 is not closed",
        ),
        ({"type": "FeatureCollection", "features": [{"type": "Polygon"}]}, "feature 0 must be a GeoJSON Feature"),
        ({"type": "FeatureCollection"}, "needs a 'features' array"),
        ({"type": "Feature", "properties": {}}, "feature has no 'geometry' member"),
        ({"type": "Feature", "geometry": None, "properties": [1]}, "properties must be an object or null"),
        ({"type": "Feature", "geometry": None, "id": [1]}, "id must be a string or a number"),
        (
            {"type": "Polygon", "coordinates": [RING_OK]},
            "expected a GeoJSON Feature or FeatureCollection, got 'Polygon'",
        ),
    ],
)
def test_bad_features_name_the_feature(doc: Any, message: str) -> None:
    with pytest.raises(GeometryError, match=re.escape(message)):
        features_from_geojson(doc)


def test_position_budget_bounds_work() -> None:
    doc = {"type": "MultiPoint", "coordinates": [[0, 0]] * 11}
    with pytest.raises(GeometryError, match="too many positions"):
        geometry_from_geojson(doc, max_positions=10)
    assert len(geometry_from_geojson(doc, max_positions=11).geoms) == 11


# --- GeoJSON out and round trips -----------------------------------------------------------------


def test_writer_orients_rings_per_rfc7946() -> None:
    clockwise = Polygon([(0, 0), (0, 1), (1, 1), (1, 0)], [[(0.2, 0.2), (0.4, 0.2), (0.4, 0.4)]])
    out = geometry_to_geojson(clockwise)
    shell, hole = out["coordinates"]
    assert shapely.LinearRing(shell).is_ccw
    assert not shapely.LinearRing(hole).is_ccw
    assert geometry_from_geojson(out).equals(clockwise)


def test_writer_precision_and_empty() -> None:
    assert geometry_to_geojson(ShapelyPoint(24.123456789, 60.987654321), precision=6)["coordinates"] == [
        24.123457,
        60.987654,
    ]
    with pytest.raises(GeometryError, match="empty Polygon"):
        geometry_to_geojson(Polygon())


def test_feature_collection_out() -> None:
    f = Feature(geometry=ShapelyPoint(24.9, 60.1), properties={"name": "x"}, id="a")
    out = feature_collection_to_geojson([f, Feature(geometry=None)])
    assert out == {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a",
                "geometry": {"type": "Point", "coordinates": [24.9, 60.1]},
                "properties": {"name": "x"},
            },
            {"type": "Feature", "geometry": None, "properties": {}},
        ],
    }
    back = features_from_geojson(json.loads(json.dumps(out)))
    assert back[0].id == "a" and back[0].properties == {"name": "x"}
    assert back[0].geometry is not None and back[0].geometry.equals(f.geometry)


lon_st = st.floats(min_value=-179, max_value=178, allow_nan=False)
lat_st = st.floats(min_value=-89, max_value=88, allow_nan=False)
size_st = st.floats(min_value=1e-6, max_value=1.0)


@st.composite
def boxes_with_holes(draw: st.DrawFn) -> Polygon:
    x, y, w, h = draw(lon_st), draw(lat_st), draw(size_st), draw(size_st)
    shell = shapely.box(x, y, x + w, y + h)
    if draw(st.booleans()):
        hole = shapely.box(x + w / 4, y + h / 4, x + w / 2, y + h / 2)
        return Polygon(shell.exterior.coords, [hole.exterior.coords])
    return shell


@st.composite
def geometries(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["point", "polygon", "multipolygon", "ring"]))
    if kind == "point":
        return ShapelyPoint(draw(st.floats(-180, 180)), draw(st.floats(-90, 90)))
    if kind == "polygon":
        return draw(boxes_with_holes())
    if kind == "ring":
        # Any closed ring, self-intersecting or not: the parser checks structure, not validity.
        pts = draw(st.lists(st.tuples(st.floats(-180, 180), st.floats(-90, 90)), min_size=3, max_size=12))
        return Polygon([*pts, pts[0]])
    parts = draw(st.lists(boxes_with_holes(), min_size=1, max_size=4))
    return MultiPolygon(parts)


@settings(max_examples=200)
@given(geometries())
def test_geojson_round_trip(geom: Any) -> None:
    text = json.dumps(geometry_to_geojson(geom))
    back = geometry_from_geojson(json.loads(text))
    assert back.geom_type == geom.geom_type
    # The writer may only reverse rings (RFC 7946 orientation); every coordinate survives exactly.
    for ring_back, ring in zip(rings(back), rings(geom), strict=True):
        assert ring_back in (ring, ring[::-1])


def rings(geom: Any) -> list[list[tuple[float, float]]]:
    if isinstance(geom, ShapelyPoint):
        return [list(geom.coords)]
    polygons = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    return [list(r.coords) for p in polygons for r in (p.exterior, *p.interiors)]


@settings(max_examples=100)
@given(boxes_with_holes())
def test_cap_polygon_round_trip(poly: Polygon) -> None:
    shell = Polygon(poly.exterior.coords)
    back = parse_cap_polygon(cap_polygon_text(shell))
    assert back.equals_exact(shell, tolerance=0)


# --- CAP shapes ----------------------------------------------------------------------------------


def test_cap_polygon_and_geojson_of_the_same_area_are_the_same_shape() -> None:
    (text,) = cap_texts("oasis_cap12_appendixA2_thunderstorm_polygon.xml", "polygon")
    from_cap = parse_cap_polygon(text)
    # The same storm area as GeoJSON would carry it: [lon, lat].
    from_geojson = geometry_from_geojson(
        {
            "type": "Polygon",
            "coordinates": [[[-120.14, 38.47], [-119.95, 38.34], [-119.74, 38.52], [-119.89, 38.62], [-120.14, 38.47]]],
        }
    )
    assert from_cap.equals(from_geojson)
    assert from_cap.contains(ShapelyPoint(-119.9, 38.48))  # Alpine County, California
    assert from_cap.within(CALIFORNIA)
    assert not axis_swap_suspected(from_cap, CALIFORNIA)


def test_every_cap_fixture_polygon_parses_in_place() -> None:
    fixtures = {
        "oasis_cap12_appendixA2_thunderstorm_polygon.xml": CALIFORNIA,
        "nws_ipaws_hurricane_warning_multipolygon.xml": shapely.box(-94.0, 29.0, -91.0, 31.0),  # Louisiana
        "canada_naads_eccc_wind_warning_update.xml": shapely.box(-64.5, 46.0, -61.0, 48.5),  # PEI, Canada
    }
    for name, region in fixtures.items():
        texts = cap_texts(name, "polygon")
        assert texts, name
        for text in texts:
            poly = parse_cap_polygon(text)
            require_valid(poly)
            assert poly.within(region), name


def test_nonconforming_swedish_alert_is_detected_as_swapped() -> None:
    # Its invented <Polygons> element writes "lon,lat" where CAP writes "lat,lon". Read as CAP
    # says, Gävle lands in the Arabian Sea; swapped, it is inside the Swedish service area.
    text = shared_file("fixtures", "cap", "NONCONFORMING_sweden_krisinformation_custom_polygon_lonlat.xml").read_text(
        encoding="utf-8"
    )
    pairs = re.findall(r"<Polygons>([^<]+)</Polygons>", text)
    assert pairs == ["16.5695265628148,61.4418656555802", "17.166667,60.666667"]
    for pair in pairs:
        as_cap = Point.from_latlon_text(pair)
        shape = ShapelyPoint(as_cap.lon, as_cap.lat)
        assert not SWEDEN.contains(shape)
        assert axis_swap_suspected(shape, SWEDEN)
        assert SWEDEN.contains(swap_axes(shape))
    assert not axis_swap_suspected(ShapelyPoint(17.166667, 60.666667), SWEDEN)  # read correctly: fine


def test_cap_circle_radius_zero_from_fixture_is_a_point() -> None:
    (text,) = cap_texts("oasis_cap12_appendixA3_earthquake_update_circle.xml", "circle")
    circle = parse_cap_circle(text)
    assert circle == Circle(center=Point(lat=32.9525, lon=-115.5527), radius_m=0.0)
    assert circle.to_shape().equals(ShapelyPoint(-115.5527, 32.9525))
    assert circle.contains(Point(lat=32.9525, lon=-115.5527))
    with pytest.raises(GeometryError, match="radius 0 is a point"):
        circle.to_polygon()


def test_cap_circle_polygon_is_geodesically_round() -> None:
    circle = parse_cap_circle("60.17,24.94 10")  # 10 km
    assert circle.radius_m == 10_000.0
    poly = circle.to_polygon(64)
    assert poly.is_valid and poly.exterior.is_ccw
    for lon, lat in poly.exterior.coords:
        assert math.isclose(geodesic_m(circle.center, Point(lat=lat, lon=lon)), 10_000.0, rel_tol=1e-9)
    # Chords cut inside the rim by at most r (1 - cos(pi / 64)), about 12 m here.
    coords = list(poly.exterior.coords)
    for (x1, y1), (x2, y2) in itertools.pairwise(coords):
        mid = geodesic_m(circle.center, Point(lat=(y1 + y2) / 2, lon=(x1 + x2) / 2))
        assert 10_000.0 * math.cos(math.pi / 64) - 1.0 <= mid < 10_000.0
    assert circle.contains(Point(lat=60.17, lon=25.11)) and not circle.contains(Point(lat=60.17, lon=25.13))
    assert parse_cap_circle(cap_circle_text(circle)) == circle


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("38.47,-120.14 38.34,-119.95 38.47,-120.14", "CAP polygon has 3 pairs, needs at least 4"),
        ("1,2 3,4 5,6 1,3", "CAP polygon is not closed (first pair '1,2' differs from last '1,3')"),
        ("1,2 3;4 5,6 1,2", "CAP polygon pair 1: expected 'lat,lon', got '3;4'"),
        ("95,2 3,4 5,6 95,2", "CAP polygon pair 0: latitude 95.0 is outside -90..90"),
        ("1,2 3,4,5 5,6 1,2", "pair 1: expected 'lat,lon'"),
    ],
)
def test_bad_cap_polygon_names_the_pair(text: str, message: str) -> None:
    with pytest.raises(GeometryError, match=re.escape(message)):
        parse_cap_polygon(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("60.17,24.94", "must be 'lat,lon radius_km'"),
        ("60.17,24.94 -1", "radius must be a finite number >= 0"),
        ("60.17,24.94 ten", "radius must be a number of km"),
        ("91,24.94 1", "CAP circle centre: latitude 91.0"),
    ],
)
def test_bad_cap_circle(text: str, message: str) -> None:
    with pytest.raises(GeometryError, match=re.escape(message)):
        parse_cap_circle(text)


def test_cap_polygon_tolerates_spaces_around_commas() -> None:
    assert parse_cap_polygon("1, 2 3 ,4 5,6 1,2").equals(Polygon([(2, 1), (4, 3), (6, 5)]))


def test_circle_across_antimeridian_is_refused() -> None:
    with pytest.raises(GeometryError, match="antimeridian"):
        Circle(center=Point(lat=0, lon=179.99), radius_m=5000).to_polygon()


# --- validity ------------------------------------------------------------------------------------

BOW_TIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


def test_bow_tie_is_refused_by_default() -> None:
    geom = geometry_from_geojson(BOW_TIE)  # structurally fine
    with pytest.raises(GeometryError, match=re.escape("geometry is not valid: Self-intersection[0.5 0.5]")):
        require_valid(geom)


def test_bow_tie_repair_is_announced() -> None:
    fixed, warning = require_valid(geometry_from_geojson(BOW_TIE), repair=True, where="zone 7")
    assert isinstance(fixed, MultiPolygon) and len(fixed.geoms) == 2 and fixed.is_valid
    assert math.isclose(fixed.area, 0.5)
    assert warning is not None and "zone 7 was not valid (Self-intersection" in warning and "make_valid" in warning
    same, none = require_valid(fixed)
    assert same is fixed and none is None
