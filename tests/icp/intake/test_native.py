"""Native JSON alerts: the happy path, every bad field reported with its path, bounds, batches,
coordinate order (GeoJSON [lon, lat] vs {"lat", "lon"}) and the service-area flags."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from dispatch.alert_rules import AlertKind, Certainty, Severity
from icp.intake.native import parse_native, parse_native_batch
from icp.intake.report import AlertReport, IntakeConfig, IntakeError, LocationFlag
from tests.icp.intake import HELSINKI, HELSINKI_AREA, T0

CITY = IntakeConfig(service_area=HELSINKI_AREA)


def alert(**changes) -> dict:
    base = {
        "source": "acme-smoke",
        "id": "det-17/0001",
        "kind": "smoke",
        "time": "2026-03-01T12:00:05Z",
        "location": {"lat": HELSINKI[0], "lon": HELSINKI[1]},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def fields_of(exc: IntakeError) -> dict[str, str]:
    return {e["field"]: e["message"] for e in exc.errors()}


def test_a_good_alert():
    report = parse_native(body(alert(severity="severe", certainty="Observed", description="Kitchen",
                                     data={"floor": 3})), CITY)
    assert report.key == ("acme-smoke", "det-17/0001")
    assert report.kind is AlertKind.SMOKE and report.raw_format == "native"
    assert report.sent == T0 + timedelta(seconds=5)
    assert (report.location.lat, report.location.lon) == HELSINKI
    assert report.area is None and report.location_flags == ()
    assert report.severity is Severity.SEVERE and report.certainty is Certainty.OBSERVED
    assert report.description == "Kitchen" and report.data == {"native": {"floor": 3}}
    assert report.actionable
    assert AlertReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_geojson_point_is_lon_lat_and_agrees_with_the_lat_lon_object():
    as_object = parse_native(alert())
    as_geojson = parse_native(alert(location={"type": "Point", "coordinates": [HELSINKI[1], HELSINKI[0]]}))
    assert as_object.location == as_geojson.location


def test_a_polygon_location_is_the_area_and_its_centroid():
    square = [[24.93, 60.16], [24.95, 60.16], [24.95, 60.18], [24.93, 60.18], [24.93, 60.16]]
    report = parse_native(alert(location={"type": "Polygon", "coordinates": [square]}), CITY)
    assert isinstance(report.area, Polygon)
    assert report.location.lat == pytest.approx(60.17) and report.location.lon == pytest.approx(24.94)


def test_every_bad_field_is_reported_at_once_with_its_path():
    bad = alert(id="", kind="tornado", time="2026-03-01T12:00:05", location={"lat": 95, "lon": 24.9},
                severity="Awful", colour="red")
    with pytest.raises(IntakeError) as err:
        parse_native(body(bad))
    assert err.value.code == "invalid_alert" and err.value.status == 422
    fields = fields_of(err.value)
    assert set(fields) == {"/id", "/kind", "/time", "/location/lat", "/severity", "/colour"}
    assert "smoke" in fields["/kind"] and "UTC offset" in fields["/time"]
    assert "-90..90" in fields["/location/lat"]
    assert err.value.field == "/colour"  # the first found leads


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"source": None}, "/source", "required"),
        ({"location": None}, "/location", "required"),
        ({"location": {"lat": 60.1, "lon": 200}}, "/location/lon", "-180..180"),
        ({"location": {"lat": "60.1", "lon": 24.9}}, "/location/lat", "number"),
        ({"location": {"lat": 60.1}}, "/location/lon", "required"),
        ({"location": {"lat": 60.1, "lon": 24.9, "alt": 3}}, "/location/alt", "unknown"),
        ({"location": [24.9, 60.1]}, "/location", "lat"),
        ({"location": {"type": "Point", "coordinates": [24.9, 95.0]}}, "/location", "latitude"),
        ({"location": {"type": "LineString", "coordinates": [[24.9, 60.1], [25, 60.2]]}}, "/location", "Polygon"),
        ({"location": {"type": "Polygon", "coordinates": [[[24.9, 60.1], [25, 60.1], [25, 60.2], [24.9, 60.3]]]}},
         "/location", "not closed"),
        ({"location": {"type": "Polygon",
                       "coordinates": [[[24.9, 60.1], [25, 60.2], [25, 60.1], [24.9, 60.2], [24.9, 60.1]]]}},
         "/location", "not a valid shape"),
        ({"id": "x" * 201}, "/id", "200"),
        ({"source": "acme\u0000"}, "/source", "control"),
        ({"time": "yesterday"}, "/time", "date-time"),
        ({"time": 1709294405}, "/time", "date-time"),
        ({"description": "d" * 4001}, "/description", "4000"),
        ({"description": 7}, "/description", "string"),
        ({"data": {"blob": "x" * 17000}}, "/data", "16384"),
        ({"data": [1, 2]}, "/data", "object"),
        ({"certainty": "Sure"}, "/certainty", "Observed"),
    ],
)
def test_bad_fields(changes, path, words):
    with pytest.raises(IntakeError) as err:
        parse_native(body(alert(**changes)))
    fields = fields_of(err.value)
    assert path in fields, fields
    assert words in fields[path]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "malformed_json"),
        (b'{"lat": NaN}', "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_large"),
        (b"[" * 20_000 + b"]" * 20_000, "malformed_json"),
        (b"\xff\xfe\x00", "malformed_json"),
        (b"[]", "invalid_alert"),
        (b'"alert"', "invalid_alert"),
    ],
)
def test_bodies_that_are_not_alerts(raw, code):
    with pytest.raises(IntakeError) as err:
        parse_native(raw)
    assert err.value.code == code


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_json_in_any_encoding_rfc_8259_names_is_read(encoding):
    # As json.loads reads bytes: UTF-8 (with or without a byte order mark), UTF-16 or UTF-32.
    text = json.dumps(alert(description="Kamppi, 3. kerros — keittiö"), ensure_ascii=False)
    report = parse_native(text.encode(encoding), CITY)
    assert report.description == "Kamppi, 3. kerros — keittiö" and report.key == ("acme-smoke", "det-17/0001")


@pytest.mark.parametrize("number", [2**64, 18446744073709551615, -(2**63) - 1, 10**30, 1.2345678901234567e-5])
def test_numbers_in_a_senders_data_are_kept_exactly(number):
    # Bodies are read by orjson where it reads them as the standard library does; integers that
    # may not fit 64 bits (a run of 19 digits) and anything else it refuses go to the stdlib.
    report = parse_native(json.dumps(alert(data={"serial": number, "nested": [number]})).encode(), CITY)
    assert report.data["native"] == {"serial": number, "nested": [number]}
    assert type(report.data["native"]["serial"]) is type(number)


@pytest.mark.parametrize("raw", [b'{"source": NaN}', b'{"source": Infinity}', b'[' * 100_000, b'{"source": 1'])
def test_what_neither_reader_takes_is_refused_as_malformed(raw):
    with pytest.raises(IntakeError) as err:
        parse_native(raw, IntakeConfig(max_json_bytes=200_000))
    assert err.value.code == "malformed_json"


def test_body_size_bound():
    big = body(alert(description="d" * 3000, data={f"k{i}": "v" * 100 for i in range(150)}))
    assert len(big) > 16 * 1024
    with pytest.raises(IntakeError) as err:
        parse_native(big, IntakeConfig(max_json_bytes=8 * 1024))
    assert err.value.code == "too_large" and err.value.status == 413


def test_swapped_coordinates_are_flagged_not_used():
    lat, lon = HELSINKI
    for location in ({"lat": lon, "lon": lat}, {"type": "Point", "coordinates": [lat, lon]}):
        report = parse_native(alert(location=location), CITY)
        assert report.location_flags == (LocationFlag.AXIS_SWAP_SUSPECTED,)
        assert report.location is None and not report.actionable
        swapped = report.data["placement"]["location_if_swapped"]
        assert (swapped["lat"], swapped["lon"]) == (lat, lon)


def test_outside_the_service_area_is_kept_but_flagged():
    report = parse_native(alert(location={"lat": 61.4978, "lon": 23.7610}), CITY)  # Tampere
    assert report.location_flags == (LocationFlag.OUTSIDE_SERVICE_AREA,)
    assert report.location is not None and not report.actionable


def test_time_ahead_of_the_clock_is_a_finding_not_a_refusal():
    report = parse_native(alert(time="2026-03-01T13:00:00Z"), now=T0)
    assert [f.code for f in report.findings] == ["time_in_future"]
    assert not parse_native(alert(time="2026-03-01T12:04:00Z"), now=T0).findings


@pytest.mark.parametrize("changes", [
    {},
    {"severity": "severe", "urgency": "Immediate", "certainty": "Observed", "headline": "Kitchen",
     "description": "Smoke on the 3rd floor", "data": {"floor": 3}},
    {"location": {"type": "Point", "coordinates": [HELSINKI[1], HELSINKI[0]]}},
    {"location": {"lat": 61.4978, "lon": 23.7610}},  # outside: flagged
    {"location": {"lat": HELSINKI[1], "lon": HELSINKI[0]}},  # swapped: flagged, with data
    {"location": {"type": "Polygon", "coordinates": [[[24.93, 60.16], [24.95, 60.16], [24.95, 60.18],
                                                     [24.93, 60.16]]]}},
    {"time": "2026-03-01T13:00:00Z"},  # ahead of the clock: a finding
])
def test_a_point_alerts_report_is_what_the_checked_construction_makes(changes):
    # Reports of point alerts skip the report's own checks (the readers made them): each must
    # be equal, field for field, to the one the checked constructor makes of the same values.
    report = parse_native(body(alert(**changes)), CITY, now=T0)
    assert AlertReport(**{name: getattr(report, name) for name in AlertReport.__slots__}) == report
    assert AlertReport.from_json(json.loads(report.to_json_bytes())) == report


def test_batch_keeps_the_good_and_names_the_bad():
    items = [alert(id="a"), alert(id="b", kind="nope"), alert(id="c")]
    results = parse_native_batch(body(items))
    assert [type(r).__name__ for r in results] == ["AlertReport", "IntakeError", "AlertReport"]
    assert results[1].field == "/1/kind" and set(fields_of(results[1])) == {"/1/kind"}
    wrapped = parse_native_batch(body({"alerts": items}))
    assert wrapped[1].field == "/alerts/1/kind"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"alerts": "x"}, "invalid_alert"),
        ({"alerts": [], "extra": 1}, "invalid_alert"),
        ([], "invalid_alert"),
        ({"source": "x"}, "invalid_alert"),
    ],
)
def test_batch_shape(payload, code):
    with pytest.raises(IntakeError) as err:
        parse_native_batch(body(payload))
    assert err.value.code == code


def test_batch_item_bound():
    with pytest.raises(IntakeError) as err:
        parse_native_batch([alert(id=str(i)) for i in range(11)], max_items=10)
    assert err.value.code == "too_large"


@settings(max_examples=150, deadline=None)
@given(lat=st.floats(-90, 90, allow_nan=False), lon=st.floats(-180, 180, allow_nan=False))
def test_coordinates_round_trip_through_both_shapes_and_storage(lat, lon):
    as_object = parse_native(alert(location={"lat": lat, "lon": lon}))
    as_geojson = parse_native(alert(location={"type": "Point", "coordinates": [lon, lat]}))
    assert (as_object.location.lat, as_object.location.lon) == (lat, lon)
    assert as_geojson.location == as_object.location
    stored = AlertReport.from_json(json.loads(json.dumps(as_object.to_json())))
    assert stored.location == as_object.location
