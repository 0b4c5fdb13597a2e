"""Areas: which jurisdictions, zones, beats and geofences hold a point; GeoJSON in and out."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon

from geo.areas import AREA_KINDS, Area, AreaError, AreaIndex, areas_from_geojson, areas_to_geojson
from geo.coords import Point
from geo.geojson import GeometryError

# Central Helsinki split in two districts, plus overlapping agencies (fire and police cover
# the same city; a neighbouring rescue department's jurisdiction overlaps the west edge).
CITY = shapely.box(24.93, 60.16, 24.96, 60.18)
WEST = shapely.box(24.93, 60.16, 24.945, 60.18)
EAST = shapely.box(24.945, 60.16, 24.96, 60.18)
NEIGHBOUR = shapely.box(24.90, 60.16, 24.935, 60.18)
RAILWAY_STATION = Point(lat=60.1710, lon=24.9414)  # in WEST
MARKET_SQUARE = Point(lat=60.1675, lon=24.9525)  # in EAST
RAILWAY_STATION_FENCE = shapely.box(24.9405, 60.1705, 24.9425, 60.1715)
BOW_TIE = Polygon([(24.93, 60.16), (24.96, 60.18), (24.96, 60.16), (24.93, 60.18), (24.93, 60.16)])


def area(id: str, agency: str, kind: Any, geometry: Any, name: str = "") -> Area:
    return Area(id=id, agency=agency, kind=kind, name=name or id, geometry=geometry)


@pytest.fixture
def index() -> AreaIndex:
    return AreaIndex(
        [
            area("hki-fire", "fire-hki", "jurisdiction", CITY),
            area("hki-police", "police-hki", "jurisdiction", CITY),
            area("espoo-fire", "fire-espoo", "jurisdiction", NEIGHBOUR),
            area("z-west", "fire-hki", "zone", WEST),
            area("z-east", "fire-hki", "zone", EAST),
            area("beat-1", "police-hki", "beat", WEST),
            area("station-fence", "fire-hki", "geofence", RAILWAY_STATION_FENCE),
        ]
    )


def test_containing_orders_by_kind_then_smallest(index: AreaIndex) -> None:
    found = index.containing(RAILWAY_STATION)
    assert [a.id for a in found] == ["hki-fire", "hki-police", "z-west", "beat-1", "station-fence"]
    assert [a.id for a in index.containing(MARKET_SQUARE)] == ["hki-fire", "hki-police", "z-east"]
    assert [a.id for a in index.containing(RAILWAY_STATION, "zone")] == ["z-west"]
    assert index.containing(Point(lat=0, lon=0)) == []


def test_jurisdiction_of_lists_every_agency(index: AreaIndex) -> None:
    assert index.jurisdiction_of(RAILWAY_STATION) == ["fire-hki", "police-hki"]
    # Where the neighbour's jurisdiction overlaps the city, both answer: mutual aid is decided in
    # dispatch, not hidden here.
    assert index.jurisdiction_of(Point(lat=60.17, lon=24.932)) == ["fire-espoo", "fire-hki", "police-hki"]
    assert index.jurisdiction_of(Point(lat=60.17, lon=24.91)) == ["fire-espoo"]
    assert index.jurisdiction_of(Point(lat=61.0, lon=25.0)) == []


def test_boundary_points_belong_to_both_sides(index: AreaIndex) -> None:
    on_border = Point(lat=60.17, lon=24.945)
    assert {a.id for a in index.containing(on_border, "zone")} == {"z-west", "z-east"}


def test_add_remove_replace_rebuild_lazily(index: AreaIndex) -> None:
    assert len(index) == 7 and "z-west" in index
    assert index.remove("z-west").id == "z-west"
    assert [a.id for a in index.containing(RAILWAY_STATION, "zone")] == []
    index.add(area("z-west", "fire-hki", "zone", CITY, name="Whole city"))
    index.add(area("z-west", "fire-hki", "zone", WEST, name="West"))  # same id replaces
    assert [a.name for a in index.containing(RAILWAY_STATION, "zone")] == ["West"]
    assert len(index) == 7
    with pytest.raises(KeyError):
        index.remove("nope")
    assert index.get("nope") is None
    assert [a.id for a in index.areas(kind="jurisdiction", agency="fire-hki")] == ["hki-fire"]


def test_empty_index() -> None:
    assert AreaIndex().containing(RAILWAY_STATION) == []
    assert AreaIndex().to_geojson() == {"type": "FeatureCollection", "features": []}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "district"}, "kind must be one of jurisdiction, zone, beat, geofence, got 'district'"),
        ({"id": ""}, "area id must be a non-empty string"),
        ({"agency": None}, "area agency must be a non-empty string"),
        ({"geometry": shapely.Point(24.9, 60.1)}, "geometry must be a non-empty Polygon or MultiPolygon, got Point"),
        ({"geometry": Polygon()}, "non-empty Polygon"),
        ({"geometry": BOW_TIE}, "geometry is not valid: Self-intersection"),
    ],
)
def test_area_is_validated(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"id": "a", "agency": "fire", "kind": "zone", "name": "A", "geometry": WEST} | kwargs
    with pytest.raises(AreaError, match=re.escape(message)):
        Area(**fields)


# --- GeoJSON -------------------------------------------------------------------------------------


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def feature(geometry: Any, **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geometry), "properties": properties}


def test_geojson_round_trip(index: AreaIndex) -> None:
    doc = json.loads(json.dumps(index.to_geojson()))
    assert doc["features"][0]["properties"] == {
        "id": "hki-fire",
        "agency": "fire-hki",
        "kind": "jurisdiction",
        "name": "hki-fire",
    }
    back = AreaIndex()
    assert back.load_geojson(doc) == []
    assert [(a.id, a.agency, a.kind, a.name) for a in back] == [(a.id, a.agency, a.kind, a.name) for a in index]
    for a in index:
        b = back.get(a.id)
        assert b is not None and b.geometry.equals(a.geometry)
    assert index.to_geojson(kind="beat")["features"][0]["id"] == "beat-1"


def test_import_fills_in_agency_and_kind_from_the_caller() -> None:
    doc = collection(feature(WEST, name="Kluuvi"), feature(EAST, name="Kaartinkaupunki"))
    imported = areas_from_geojson(doc, agency="fire-hki", kind="zone")
    assert [(a.id, a.name, a.kind) for a in imported.areas] == [
        ("fire-hki-zone-1", "Kluuvi", "zone"),
        ("fire-hki-zone-2", "Kaartinkaupunki", "zone"),
    ]
    assert imported.warnings == []


@pytest.mark.parametrize(
    ("doc", "kwargs", "message"),
    [
        (collection(feature(WEST, id="a", kind="zone")), {}, "feature 0: no 'agency' property and no agency given"),
        (collection(feature(WEST, id="a", agency="x")), {}, "feature 0: no 'kind' property and no kind given"),
        (collection(feature(WEST, agency="x", kind="zone")), {}, "feature 0: no 'id' property or feature id"),
        (
            collection(feature(WEST, id="a", agency="police", kind="zone")),
            {"agency": "fire"},
            "feature 0: property agency 'police' conflicts with agency 'fire' given",
        ),
        (
            collection(feature(WEST, id="a", agency="x", kind="zone"), feature(EAST, id="a", agency="x", kind="zone")),
            {},
            "feature 1: id 'a' appears more than once",
        ),
        (
            collection(feature(shapely.LineString([(0, 0), (1, 1)]), id="a", agency="x", kind="zone")),
            {},
            "feature 0: an area must be a Polygon or MultiPolygon, not LineString",
        ),
        (
            collection({"type": "Feature", "geometry": None, "properties": {"id": "a"}}),
            {},
            "feature 0: an area needs a geometry, got null",
        ),
        (
            collection(feature(WEST, id="a", agency="x", kind="precinct")),
            {},
            "feature 0: kind must be one of jurisdiction, zone, beat, geofence, got 'precinct'",
        ),
    ],
)
def test_import_errors_name_the_feature(doc: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AreaError, match=re.escape(message)):
        areas_from_geojson(doc, **kwargs)


def test_bad_geojson_in_an_area_file_is_a_geometry_error() -> None:
    doc = collection(
        {
            "type": "Feature",
            "properties": {"id": "a", "agency": "x", "kind": "zone"},
            "geometry": {"type": "Polygon", "coordinates": [[[24.9, 60.1], [24.95, 60.1], [24.95, 95], [24.9, 60.1]]]},
        }
    )
    with pytest.raises(GeometryError, match=re.escape("feature 0: Polygon ring 0 coordinate 2: latitude 95.0")):
        areas_from_geojson(doc)


def test_self_intersecting_polygon_is_refused_unless_repair_is_asked() -> None:
    doc = collection(feature(BOW_TIE, id="bt", agency="police", kind="beat"))
    with pytest.raises(AreaError, match=re.escape("feature 0 (bt) is not valid: Self-intersection[24.945 60.17]")):
        areas_from_geojson(doc)
    index = AreaIndex()
    with pytest.raises(AreaError):
        index.load_geojson(doc)
    assert len(index) == 0  # all or nothing
    warnings = index.load_geojson(doc, repair=True)
    assert len(warnings) == 1 and "feature 0 (bt) was not valid (Self-intersection" in warnings[0]
    repaired = index.get("bt")
    assert repaired is not None and isinstance(repaired.geometry, MultiPolygon)
    # The two lobes of the bow-tie (west and east triangles) are kept; its waist is on both.
    assert [a.id for a in index.containing(Point(lat=60.17, lon=24.932))] == ["bt"]
    assert [a.id for a in index.containing(Point(lat=60.17, lon=24.958))] == ["bt"]
    assert index.containing(Point(lat=60.179, lon=24.945)) == []


def test_geometry_collection_of_polygons_is_accepted_as_multipolygon() -> None:
    doc = collection(
        {
            "type": "Feature",
            "properties": {"id": "g", "agency": "x", "kind": "geofence"},
            "geometry": shapely.geometry.mapping(shapely.GeometryCollection([WEST, EAST])),
        }
    )
    (a,) = areas_from_geojson(doc).areas
    assert a.geometry.equals(CITY)


kinds = st.sampled_from(AREA_KINDS)
boxes = st.tuples(st.floats(-179, 178), st.floats(-89, 88), st.floats(1e-4, 1.0), st.floats(1e-4, 1.0)).map(
    lambda t: shapely.box(t[0], t[1], t[0] + t[2], t[1] + t[3])
)
names = st.text(min_size=1, max_size=20)


@settings(max_examples=50)
@given(st.lists(st.tuples(names, kinds, boxes), min_size=1, max_size=8))
def test_geojson_round_trip_property(rows: list[tuple[str, Any, Polygon]]) -> None:
    areas = [area(f"a{i}", f"agency-{i % 3}", kind, geom, name=name) for i, (name, kind, geom) in enumerate(rows)]
    back = areas_from_geojson(json.loads(json.dumps(areas_to_geojson(areas)))).areas
    assert [(a.id, a.agency, a.kind, a.name) for a in back] == [(a.id, a.agency, a.kind, a.name) for a in areas]
    assert all(b.geometry.equals(a.geometry) for a, b in zip(areas, back, strict=True))


def test_thousands_of_areas_answer_fast() -> None:
    index = AreaIndex(
        area(
            f"beat-{i}-{j}",
            "police",
            "beat",
            shapely.box(24.0 + i * 0.01, 60.0 + j * 0.01, 24.01 + i * 0.01, 60.01 + j * 0.01),
        )
        for i in range(60)
        for j in range(60)
    )
    index.containing(Point(lat=60.005, lon=24.005))  # builds the tree
    started = time.perf_counter()
    for k in range(1000):
        found = index.containing(Point(lat=60.0 + (k % 60) * 0.01 + 0.005, lon=24.0 + (k % 50) * 0.01 + 0.005))
        assert len(found) == 1
    assert (time.perf_counter() - started) / 1000 < 0.001
