"""The common report: validation, JSON storage, placement against a service area, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point as ShapelyPoint
from shapely.geometry import Polygon, box

from dispatch.alert_rules import AlertKind
from geo.coords import Point
from geo.geojson import cap_polygon_text
from icp.intake.cap import parse_cap
from icp.intake.native import parse_native
from icp.intake.report import (
    AlertReport,
    Finding,
    IntakeConfig,
    IntakeError,
    LocationFlag,
    MsgType,
    Status,
    load_json,
    parse_time,
    place,
    place_point,
)
from tests.icp.intake import HELSINKI, HELSINKI_AREA, T0, cap_area, cap_doc, cap_info

CITY = IntakeConfig(service_area=HELSINKI_AREA)


def report(**changes) -> AlertReport:
    base = dict(source="acme", identifier="a-1", kind="smoke", sent=T0, raw_format="native",
                location=Point(*HELSINKI))
    base.update(changes)
    return AlertReport(**base)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"source": ""}, "/source"),
        ({"identifier": "x" * 201}, "/identifier"),
        ({"identifier": "line\nbreak"}, "/identifier"),
        ({"kind": "tornado"}, "/kind"),
        ({"sent": T0.replace(tzinfo=None)}, "/sent"),
        ({"raw_format": "rss"}, "/raw_format"),
        ({"msg_type": "revoke"}, "/msg_type"),
        ({"references": (("only-one",),)}, "/references"),
        ({"headline": "h" * 1001}, "/headline"),
        ({"location": (60.1, 24.9)}, "/location"),
        ({"area": ShapelyPoint()}, "/area"),
        ({"location_flags": ("somewhere",)}, "/location_flags"),
        ({"findings": ("oops",)}, "/findings"),
        ({"selected_info": 0}, "/selected_info"),
        ({"data": {1: "x"}}, "/data"),
    ],
)
def test_reports_are_validated_at_construction(changes, field):
    with pytest.raises(IntakeError) as err:
        report(**changes)
    assert err.value.field == field


def test_vocabularies_are_normalised():
    r = report(kind="SMOKE", msg_type="Update", severity="severe", certainty="very likely",
               location_flags=("registry_location",))
    assert (r.kind, r.msg_type, r.severity.value, r.certainty.value) == (AlertKind.SMOKE, MsgType.UPDATE,
                                                                         "Severe", "Likely")
    assert r.location_flags == (LocationFlag.REGISTRY_LOCATION,)


@pytest.mark.parametrize(
    ("changes", "actionable"),
    [
        ({}, True),
        ({"status": "exercise"}, False),
        ({"msg_type": "cancel"}, False),
        ({"below_threshold": True}, False),
        ({"location": None, "location_flags": ("no_location",)}, False),
        ({"location_flags": ("outside_service_area",)}, False),
        ({"location_flags": ("registry_location",)}, True),
    ],
)
def test_actionable(changes, actionable):
    assert report(**changes).actionable is actionable


def test_json_round_trip_keeps_everything():
    r = report(area=box(24.93, 60.16, 24.95, 60.18), references=(("s", "i"),), status=Status.TEST,
               findings=(Finding("x", "/a", "b"),), data={"k": [1, 2]}, headline="H", language="fi")
    stored = json.loads(json.dumps(r.to_json()))
    back = AlertReport.from_json(stored)
    assert back.area.equals(r.area)
    assert back.to_json() == r.to_json()


def _every_kind_of_report() -> list[AlertReport]:
    from tests.shared import shared_dir

    caps = sorted(shared_dir("fixtures", "cap").glob("*.xml"))
    out = [parse_cap(path.read_bytes(), config) for path in caps for config in (IntakeConfig(), CITY)]
    out += [parse_native(body, CITY, now=T0) for body in (
        {"source": "acme", "id": "n-1", "kind": "smoke", "time": "2026-03-01T12:00:05.250+02:00",
         "location": {"lat": 60.17, "lon": 24.94}, "severity": "Severe", "data": {"floor": 3, "x": [1.5, None]}},
        {"source": "acme", "id": "n-2", "kind": "flood", "time": "2026-03-01T13:00:00Z",  # ahead: a finding
         "location": {"type": "Polygon", "coordinates": [[[24.93, 60.16], [24.95, 60.16], [24.95, 60.18],
                                                          [24.93, 60.16]]]}},
        {"source": "acme", "id": "n-3", "kind": "gas", "time": "2026-03-01T12:00:00Z",
         "location": {"lat": 24.94, "lon": 60.17}},  # swapped: flagged, not placed
    )]
    out.append(report(area=box(24.93, 60.16, 24.95, 60.18), references=(("s", "i"), ("s", "j")),
                      status=Status.TEST, findings=(Finding("x", "/a", "b"),), data={"k": {"é": "\u0000"}},
                      headline="Hälytys", language="fi", below_threshold=True,
                      location_flags=(LocationFlag.REGISTRY_LOCATION,)))
    return out


def test_the_stored_text_of_a_report_is_its_to_json_without_defaults():
    # to_json_bytes lets orjson write times, enums and parts itself, and leaves out the members at
    # their defaults: what it writes must be to_json's own words, and read back the same report.
    reports = _every_kind_of_report()
    assert any(r.infos and r.infos[0].expires for r in reports) and any(r.findings for r in reports)
    assert any(r.area is not None for r in reports) and any(r.location_flags for r in reports)
    for r in reports:
        stored, whole = json.loads(r.to_json_bytes()), r.to_json()
        assert stored.items() <= whole.items(), r.identifier
        back = AlertReport.from_json(stored)
        assert back == AlertReport.from_json(whole), r.identifier
        # An area comes back as GeoJSON writes it (the same shape, its rings in GeoJSON's order).
        assert replace(back, area=None) == replace(r, area=None), r.identifier
        assert (back.area is None) == (r.area is None) and (r.area is None or back.area.equals(r.area))
    plain = report()
    assert set(json.loads(plain.to_json_bytes())) == {"source", "identifier", "kind", "sent", "raw_format", "location"}
    big = report(data={"serial": 2**70})  # beyond orjson: through to_json, exact
    assert json.loads(big.to_json_bytes()) == {k: v for k, v in big.to_json().items() if k in json.loads(
        plain.to_json_bytes()) or k == "data"}


# --- placement -------------------------------------------------------------------------------

SQUARE = box(24.93, 60.16, 24.95, 60.18)  # lon/lat


def test_place_without_a_service_area_trusts_what_is_written():
    p = place(SQUARE, IntakeConfig())
    assert p.flags == () and p.area is SQUARE
    assert (p.location.lat, p.location.lon) == pytest.approx((60.17, 24.94))
    assert place(None, IntakeConfig()).flags == (LocationFlag.NO_LOCATION,)
    untrusted = place(SQUARE, IntakeConfig(), trusted=False)
    assert untrusted.location is None and LocationFlag.NONCONFORMING_LOCATION in untrusted.flags


def test_place_against_a_service_area():
    assert place(SQUARE, CITY).flags == ()
    centre = Point(60.17, 24.94)
    assert place(SQUARE, CITY, center=centre).location == centre
    swapped = place(Polygon([(y, x) for x, y in SQUARE.exterior.coords]), CITY)
    assert swapped.flags == (LocationFlag.AXIS_SWAP_SUSPECTED,) and swapped.location is None
    assert swapped.data["location_if_swapped"] == pytest.approx({"lat": 60.17, "lon": 24.94})
    outside = place(ShapelyPoint(23.76, 61.50), CITY)
    assert outside.flags == (LocationFlag.OUTSIDE_SERVICE_AREA,) and outside.location is not None
    untrusted_inside = place(SQUARE, CITY, trusted=False)
    assert untrusted_inside.location is not None
    assert untrusted_inside.flags == (LocationFlag.NONCONFORMING_LOCATION,)


@given(lat=st.floats(59.0, 62.0), lon=st.floats(23.0, 26.0))
@settings(max_examples=80, deadline=None)
def test_placing_a_point_agrees_with_placing_its_shape(lat: float, lon: float) -> None:
    # Inside, outside, and (Helsinki's lat/lon swapped falls in neither box) in agreement.
    for config in (CITY, IntakeConfig()):
        quick, general = place_point(Point(lat, lon), config), place(ShapelyPoint(lon, lat), config)
        assert quick.flags == general.flags and quick.area is None and general.area is None
        assert quick.location == general.location


def test_a_point_written_with_lat_and_lon_swapped_is_not_placed() -> None:
    swapped = place_point(Point(24.94, 60.17), CITY)  # lat 24.94, lon 60.17: Helsinki if exchanged
    assert swapped.flags == (LocationFlag.AXIS_SWAP_SUSPECTED,) and swapped.location is None


def test_geocode_table_takes_points_and_trims_keys():
    config = IntakeConfig(geocodes={("FIPS", "1"): Point(60.2, 24.9)})
    assert config.geocode(" FIPS", "1 ").equals(ShapelyPoint(24.9, 60.2))
    with pytest.raises(ValueError):
        IntakeConfig(geocodes={"FIPS": Point(60.2, 24.9)})
    with pytest.raises(ValueError):
        IntakeConfig(max_cap_bytes=10)


# --- errors and readers ----------------------------------------------------------------------


def test_intake_error_shapes():
    err = IntakeError("invalid_alert", "bad", "/kind", details=[Finding("invalid_field", "/kind", "bad kind"),
                                                                  Finding("missing_field", "/id", "id is required")])
    assert err.status == 422
    assert err.errors() == [{"field": "/kind", "message": "bad kind"}, {"field": "/id", "message": "id is required"}]
    assert err.prefixed("/3").errors()[1]["field"] == "/3/id"
    single = IntakeError("too_large", "too big")
    assert single.status == 413 and single.errors() == [{"field": "", "message": "too big"}]
    assert single.to_json()["code"] == "too_large"


@pytest.mark.parametrize("text", ["2026-03-01", "2026-03-01T12:00:00", "12:00", "", "x" * 70, None])
def test_times_need_a_date_a_time_and_an_offset(text):
    with pytest.raises(IntakeError):
        parse_time(text, "/t")


def test_times_with_offsets():
    assert parse_time("2026-03-01T14:00:00+02:00", "/t") == T0
    assert parse_time("2026-03-01T12:00:00.123Z", "/t") == T0 + timedelta(milliseconds=123)


def test_load_json_bounds():
    assert load_json(b'{"a": 1}', max_bytes=100, what="x") == {"a": 1}
    with pytest.raises(IntakeError, match="at most 4"):
        load_json(b"12345", max_bytes=4, what="x")
    with pytest.raises(IntakeError, match="Infinity"):
        load_json(b"[Infinity]", max_bytes=100, what="x")


# --- CAP polygons keep their place through text, parse and storage ---------------------------


@settings(max_examples=60, deadline=None)
@given(lat=st.floats(-80, 80, allow_nan=False), lon=st.floats(-179, 179, allow_nan=False),
       size=st.floats(0.001, 0.5, allow_nan=False))
def test_cap_polygon_round_trip(lat, lon, size):
    square = box(lon, lat, lon + size, lat + size)
    doc = cap_doc(infos=(cap_info(areas=(cap_area(polygon=cap_polygon_text(square)),)),))
    r = parse_cap(doc.encode())
    assert r.area.equals(square)
    assert r.location.lat == pytest.approx(lat + size / 2) and r.location.lon == pytest.approx(lon + size / 2)
    assert AlertReport.from_json(json.loads(json.dumps(r.to_json()))).area.equals(square)
