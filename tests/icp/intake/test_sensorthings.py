"""SensorThings Observations: the OGC spec examples, the registry placing id-only devices,
threshold rules, [lon, lat] order, stable identifiers and clear errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from shapely.geometry import box

from dispatch.alert_rules import AlertKind, Certainty, Severity, default_alert_rules
from geo.coords import Point
from icp.intake.registry import InMemorySensorRegistry, SensorRecord
from icp.intake.report import IntakeConfig, IntakeError, LocationFlag
from icp.intake.sensorthings import (
    DEFAULT_THRESHOLDS,
    ThresholdRule,
    observation_report,
    parse_observation,
    property_key,
    read_observation,
)
from tests.icp.intake import HELSINKI, HELSINKI_AREA, T0, fixture_bytes

CALGARY = Point(51.05, -114.06)  # the spec's Weather Station YYC, written [-114.06, 51.05]
CALGARY_AREA = box(-114.4, 50.8, -113.8, 51.3)
GAUGE = Point(*HELSINKI)


def http_body(name: str) -> bytes:
    """The JSON body of one of the spec's printed HTTP exchanges (after the blank line)."""
    return fixture_bytes("sensorthings", name).split(b"\n\n", 1)[1]


def spec_json(name: str) -> dict:
    return json.loads(fixture_bytes("sensorthings", name))


REGISTRY = InMemorySensorRegistry(
    datastreams={
        1: SensorRecord("1", kind="gunshot", location=CALGARY, observed_property="gunshot_count", name="Mic array 1"),
        "river-7": SensorRecord("river-7", kind="flood", location=GAUGE, observed_property="Water Level", unit="m",
                                name="Pitkäsilta gauge"),
        "pb-3": SensorRecord("pb-3", kind="panic", location=GAUGE, observed_property="panic_button"),
        "oven": SensorRecord("oven", location=GAUGE, observed_property="temperature"),
    },
    things={"bldg-1": SensorRecord("bldg-1", kind="smoke", location=GAUGE)},
    features={2: Point(51.0447, -114.0719)},
)


def reading(datastream: str, result, **extra) -> dict:
    return {"Datastream": {"@iot.id": datastream}, "phenomenonTime": "2026-03-01T12:00:00Z", "result": result,
            **extra}


def parse(obj, registry=REGISTRY, **kw):
    return parse_observation(json.dumps(obj).encode(), source="city-sensors", registry=registry, **kw)


# --- the specification's examples ------------------------------------------------------------


def test_spec_post_observation_is_placed_by_the_registered_feature_of_interest():
    report = parse_observation(http_body("ogc_sta11_spec_POST_observation_http.txt"), source="city-sensors",
                               registry=REGISTRY)
    assert report.raw_format == "sensorthings" and report.source == "city-sensors"
    assert report.identifier == "Datastreams(1)/2013-04-18T16:15:00-07:00"
    assert (report.location.lat, report.location.lon) == (51.0447, -114.0719)
    assert report.location_flags == (LocationFlag.REGISTRY_LOCATION,)
    assert report.kind is AlertKind.GUNSHOT and not report.below_threshold  # 124 events >= 1
    assert report.certainty is Certainty.LIKELY
    assert report.data["sensorthings"]["feature_of_interest"] == "2"


def test_spec_post_observation_without_a_registered_feature_uses_the_sensor():
    registry = InMemorySensorRegistry(datastreams={1: SensorRecord("1", location=CALGARY)})
    report = parse_observation(http_body("ogc_sta11_spec_POST_observation_http.txt"), source="s",
                               registry=registry)
    assert report.location == CALGARY
    assert "unknown_feature" in [f.code for f in report.findings]


def test_spec_post_observation_from_an_unregistered_datastream_is_refused():
    with pytest.raises(IntakeError) as err:
        parse_observation(http_body("ogc_sta11_spec_POST_observation_http.txt"), source="s")
    assert err.value.code == "unknown_datastream" and err.value.field == "/Datastream/@iot.id"


def test_the_spec_example_that_is_not_valid_json_gets_a_clear_error():
    with pytest.raises(IntakeError) as err:
        parse_observation(http_body("ogc_sta11_spec_POST_thing_deep_insert_http_INVALIDJSON.txt"), source="s")
    assert err.value.code == "malformed_json" and err.value.status == 400
    assert "Invalid control character" in err.value.message and "line 56" in err.value.message


def test_a_bare_observation_entity_names_the_missing_datastream():
    with pytest.raises(IntakeError) as err:
        parse_observation(fixture_bytes("sensorthings", "ogc_sta11_spec_observation.json"), source="s")
    assert err.value.code == "not_an_observation" and err.value.field == "/Datastream"


def test_a_data_array_response_is_not_an_observation():
    with pytest.raises(IntakeError) as err:
        parse_observation(http_body("ogc_sta11_spec_dataArray_response_http.txt"), source="s")
    assert err.value.code == "not_an_observation" and "dataArray" in err.value.message


def test_inline_feature_of_interest_is_lon_lat():
    obs = spec_json("ogc_sta11_spec_observation.json")
    obs["Datastream"] = spec_json("ogc_sta11_spec_datastream.json")
    obs["FeatureOfInterest"] = spec_json("ogc_sta11_spec_featureofinterest.json")
    report = parse(obs, registry=InMemorySensorRegistry(), config=IntakeConfig(service_area=CALGARY_AREA))
    assert report.location == CALGARY and report.location_flags == ()
    assert report.identifier == "Observations(1)"
    assert report.sent == datetime(2014, 12, 31, 3, 59, 59, tzinfo=UTC)
    # An oven temperature with no rule: recorded, no alert.
    assert report.below_threshold and report.kind is AlertKind.OTHER and not report.actionable
    assert report.data["sensorthings"]["unit"] == "°C"


def test_inline_thing_location_is_lon_lat():
    location = spec_json("ogc_sta11_spec_location_feature_lonlat.json")
    obs = reading("x", 1, Datastream={"name": "panic", "ObservedProperty": {"name": "panic_button"},
                                      "Thing": {"name": "CCIT", "Locations": [location]}})
    report = parse(obs, registry=InMemorySensorRegistry())
    assert report.location == CALGARY
    assert report.kind is AlertKind.PANIC and report.severity is Severity.SEVERE


def test_a_feature_of_interest_with_lat_lon_swapped_is_flagged_or_refused():
    def foi(lat: float, lon: float) -> dict:
        return {"encodingType": "application/geo+json", "feature": {"type": "Point", "coordinates": [lat, lon]}}

    report = parse(reading("1", 1, FeatureOfInterest=foi(*HELSINKI)), config=IntakeConfig(service_area=HELSINKI_AREA))
    assert report.location_flags == (LocationFlag.AXIS_SWAP_SUSPECTED,) and report.location is None
    # Calgary's longitude read as a latitude is out of range: refused outright, with the reason.
    with pytest.raises(IntakeError) as err:
        parse(reading("1", 1, FeatureOfInterest=foi(CALGARY.lat, CALGARY.lon)))
    assert err.value.field == "/FeatureOfInterest/feature" and "latitude -114.06" in err.value.message


# --- the registry and the rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "kind", "severity", "below"),
    [
        (3.4, AlertKind.FLOOD, Severity.SEVERE, False),
        (2.5, AlertKind.FLOOD, Severity.MODERATE, False),
        (1.2, AlertKind.FLOOD, Severity.UNKNOWN, True),
        ("3.6", AlertKind.FLOOD, Severity.SEVERE, False),
    ],
)
def test_water_level_thresholds(result, kind, severity, below):
    report = parse(reading("river-7", result), config=IntakeConfig(service_area=HELSINKI_AREA))
    assert (report.kind, report.severity, report.below_threshold) == (kind, severity, below)
    assert report.location == GAUGE and LocationFlag.REGISTRY_LOCATION in report.location_flags
    assert report.actionable is not below
    assert "Pitkäsilta gauge" in report.headline and ("over" if not below else "under") in report.headline


def test_a_gunshot_detection_is_auto_dispatched_by_the_default_rules():
    report = parse(reading("1", 1))
    decision = default_alert_rules().decide(report.kind, report.severity, report.urgency, report.certainty)
    assert decision.incident_type == "gunshot" and decision.auto_dispatch and decision.priority == 1


def test_boolean_results_count_as_one_and_zero():
    assert not parse(reading("pb-3", True)).below_threshold
    assert parse(reading("pb-3", False)).below_threshold
    assert not parse(reading("pb-3", "true")).below_threshold


def test_results_that_are_not_numbers_are_recorded_with_a_finding():
    report = parse(reading("river-7", {"level": 3}))
    assert report.below_threshold and "non_numeric_result" in [f.code for f in report.findings]
    assert report.kind is AlertKind.FLOOD


def test_a_property_without_rules_takes_the_sensor_kind_and_is_recorded():
    report = parse(reading("oven", 250))
    assert report.below_threshold and report.kind is AlertKind.OTHER
    assert [f.code for f in report.findings] == ["no_rule"]


def test_custom_rules():
    rules = (ThresholdRule(frozenset({"temperature"}), AlertKind.FIRE, ">=", 200, Severity.SEVERE, unit="°C"),)
    report = parse(reading("oven", 250), rules=rules)
    assert report.kind is AlertKind.FIRE and not report.below_threshold


def test_the_thing_record_places_an_inline_datastream():
    obs = reading("x", 5.0, Datastream={"ObservedProperty": {"name": "smoke_obscuration"},
                                         "Thing": {"@iot.id": "bldg-1"}})
    report = parse(obs)
    assert report.kind is AlertKind.SMOKE and report.location == GAUGE


@pytest.mark.parametrize(
    ("name", "key"),
    [("Water Level", "waterlevel"), ("water_level", "waterlevel"),
     ("http://sweet.jpl.nasa.gov/ontology/property.owl#DewPointTemperature", "dewpointtemperature"),
     ("http://example.org/def/WaterLevel/", "waterlevel")],
)
def test_property_keys(name, key):
    assert property_key(name) == key


def test_default_rules_list_the_severe_threshold_of_a_property_first():
    seen: dict[frozenset[str], float] = {}
    for rule in DEFAULT_THRESHOLDS:
        if rule.keys in seen:
            assert rule.threshold < seen[rule.keys]
        seen[rule.keys] = rule.threshold


# --- times and identifiers -----------------------------------------------------------------


def test_interval_phenomenon_time_uses_its_end_and_result_time_is_the_fallback():
    report = parse(reading("river-7", 1, phenomenonTime="2026-03-01T11:00:00Z/2026-03-01T11:15:00Z"))
    assert report.sent == datetime(2026, 3, 1, 11, 15, tzinfo=UTC)
    obs = reading("river-7", 1, resultTime="2026-03-01T11:20:00+00:00")
    del obs["phenomenonTime"]
    assert parse(obs).sent == datetime(2026, 3, 1, 11, 20, tzinfo=UTC)


def test_no_time_at_all_needs_the_receipt_time():
    obs = reading("river-7", 1)
    del obs["phenomenonTime"]
    with pytest.raises(IntakeError) as err:
        parse(obs)
    assert err.value.field == "/phenomenonTime"
    report = parse(obs, now=T0)
    assert report.sent == T0 and report.findings[0].code == "no_time"


def test_identifiers_are_stable_across_retries():
    a = parse(reading("river-7", 1))
    b = parse(reading("river-7", 1))
    assert a.identifier == b.identifier == "Datastreams(river-7)/2026-03-01T12:00:00Z"
    inline = {"Datastream": {"name": "x", "ObservedProperty": {"name": "water_level"}}, "result": 1,
              "phenomenonTime": "2026-03-01T12:00:00Z"}
    first, again = parse(inline), parse(dict(reversed(list(inline.items()))))
    assert first.identifier.startswith("sha256:") and first.identifier == again.identifier


@pytest.mark.parametrize(
    ("obj", "code", "path"),
    [
        ([], "not_an_observation", ""),
        ({"Datastream": {"@iot.id": 1}}, "not_an_observation", "/result"),
        ({"Datastream": 7, "result": 1}, "invalid_alert", "/Datastream"),
        ({"Datastream": {"@iot.id": True}, "result": 1}, "invalid_alert", "/Datastream/@iot.id"),
        ({"Datastream": {"@iot.id": 1}, "result": 1, "phenomenonTime": 5}, "invalid_alert", "/phenomenonTime"),
        ({"Datastream": {"@iot.id": 1}, "result": 1, "phenomenonTime": "2026-03-01T12:00:00"}, "invalid_alert",
         "/phenomenonTime"),
        (reading("1", 1, FeatureOfInterest={"feature": {"type": "Point", "coordinates": [500, 0]}}),
         "invalid_alert", "/FeatureOfInterest/feature"),
        (reading("1", 1, FeatureOfInterest={"feature": {"type": "Feature", "geometry": {"type": "Polygon"}}}),
         "invalid_alert", "/FeatureOfInterest/feature/geometry"),
    ],
)
def test_bad_observations(obj, code, path):
    with pytest.raises(IntakeError) as err:
        parse(obj)
    assert (err.value.code, err.value.field) == (code, path)


def test_reading_and_meaning_are_separate_steps():
    obs = read_observation(json.dumps(reading("river-7", 3.5)).encode())
    assert obs.datastream_id == "river-7" and obs.feature_id is None
    # The server looks the ids up (asynchronously) and passes only what it found.
    found = InMemorySensorRegistry(datastreams={"river-7": REGISTRY.datastream("river-7")})
    assert observation_report(obs, source="s", registry=found).kind is AlertKind.FLOOD
