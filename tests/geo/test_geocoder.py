"""The Geocoder interface: results, bounds, and external geocoders through geopy (no network)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from geopy.exc import GeocoderServiceError, GeocoderTimedOut
from geopy.location import Location
from geopy.point import Point as GeopyPoint

from geo.coords import Point
from geo.gazetteer import Gazetteer
from geo.geocoder import (
    GeocodeQueryError,
    Geocoder,
    GeocodeResult,
    GeocoderUnavailable,
    GeopyGeocoder,
    check_query,
    nominatim,
)

HELSINKI = Path(__file__).resolve().parents[2] / "data" / "osm" / "helsinki-center.osm.pbf"
STOCKMANN = Point(lat=60.1686, lon=24.9424)


class FakeNominatim:
    """Answers like geopy's Nominatim would, from a fixed list; records how it was called.

    A stand-in for a remote service (geopy's geocoder interface, not ICP's own code), so the
    adapter is tested without a network.
    """

    def __init__(self, answers: list[Any] | None = None, error: Exception | None = None) -> None:
        self.answers = answers or []
        self.error = error
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def geocode(self, query: str, *, exactly_one: bool = True, timeout: float = 1.0) -> Any:
        self.calls.append(("geocode", query, {"exactly_one": exactly_one, "timeout": timeout}))
        if self.error is not None:
            raise self.error
        if not self.answers:
            return None
        return self.answers[0] if exactly_one else list(self.answers)

    def reverse(self, query: GeopyPoint, *, exactly_one: bool = True, timeout: float = 1.0) -> Any:
        self.calls.append(("reverse", query, {"exactly_one": exactly_one, "timeout": timeout}))
        if self.error is not None:
            raise self.error
        return self.answers[0] if self.answers else None


def location(address: str, lat: float, lon: float, raw: dict[str, Any] | None = None) -> Location:
    return Location(address, (lat, lon), raw or {})


ANSWERS = [
    location(
        "Stockmann, 52, Aleksanterinkatu, Helsinki",
        60.1686,
        24.9424,
        {"class": "shop", "type": "department_store", "address": {"house_number": "52"}},
    ),
    location("Aleksanterinkatu, Helsinki", 60.1690, 24.9480, {"class": "highway", "type": "pedestrian"}),
    location("Helsinki", 60.1699, 24.9384, {"class": "boundary", "type": "administrative"}),
]


def test_geopy_results_keep_order_kind_and_axis() -> None:
    backend = FakeNominatim(ANSWERS)
    geocoder = GeopyGeocoder(backend, source="nominatim", timeout_s=2.5)
    found = geocoder.geocode("  Stockmann  ", limit=2)
    assert [(r.kind, r.score, r.source) for r in found] == [
        ("address", 100.0, "nominatim"),
        ("street", 95.0, "nominatim"),
    ]
    assert found[0].point == Point(lat=60.1686, lon=24.9424)  # latitude stays latitude
    assert found[0].distance_m is None
    assert found[0].category == "shop=department_store"
    assert backend.calls == [("geocode", "Stockmann", {"exactly_one": False, "timeout": 2.5})]
    assert [r.kind for r in geocoder.geocode("x", limit=5)] == ["address", "street", "place"]


def test_geopy_reverse_sends_a_named_point_and_measures_distance() -> None:
    backend = FakeNominatim(ANSWERS[:1])
    geocoder = GeopyGeocoder(backend, source="nominatim")
    asked = Point(lat=60.1690, lon=24.9424)
    found = geocoder.reverse(asked)
    assert found is not None and found.label.startswith("Stockmann")
    kind, query, options = backend.calls[0]
    assert kind == "reverse" and options["exactly_one"] is True
    assert (query.latitude, query.longitude) == (60.1690, 24.9424)
    assert found.distance_m == pytest.approx(44.6, abs=0.5)  # 0.0004 degrees of latitude


def test_geopy_nothing_found() -> None:
    geocoder = GeopyGeocoder(FakeNominatim([]), source="nominatim")
    assert geocoder.geocode("nowhere") == []
    assert geocoder.reverse(STOCKMANN) is None


@pytest.mark.parametrize("error", [GeocoderTimedOut("slow"), GeocoderServiceError("HTTP 503")])
def test_geopy_failures_are_unavailable_not_empty(error: Exception) -> None:
    geocoder = GeopyGeocoder(FakeNominatim(error=error), source="nominatim")
    with pytest.raises(GeocoderUnavailable, match=f"nominatim: {type(error).__name__}"):
        geocoder.geocode("Stockmann")
    with pytest.raises(GeocoderUnavailable):
        geocoder.reverse(STOCKMANN)


class LooseLocation:
    """A location as a careless geopy-compatible service could build it (geopy's own checks ranges)."""

    def __init__(self, latitude: float, longitude: float) -> None:
        self.address, self.latitude, self.longitude = "Broken", latitude, longitude
        self.raw: dict[str, Any] = {}


def test_geopy_invalid_coordinates_are_refused() -> None:
    backend = FakeNominatim([LooseLocation(200.0, 24.9)])
    with pytest.raises(GeocoderUnavailable, match=re.escape("nominatim returned an invalid location: latitude 200.0")):
        GeopyGeocoder(backend, source="nominatim").geocode("Broken")


def test_geopy_adapter_checks_queries_before_any_request() -> None:
    backend = FakeNominatim(ANSWERS)
    geocoder = GeopyGeocoder(backend, source="nominatim")
    with pytest.raises(GeocodeQueryError):
        geocoder.geocode("x" * 1000)
    with pytest.raises(GeocodeQueryError):
        geocoder.geocode("Stockmann", limit=0)
    assert backend.calls == []
    with pytest.raises(ValueError, match="timeout"):
        GeopyGeocoder(backend, source="x", timeout_s=0)


def test_nominatim_factory_does_no_io_and_keeps_a_path_prefix() -> None:
    geocoder = nominatim("https://geo.example.org/nominatim/", user_agent="icp-test")
    assert geocoder.source == "nominatim"
    backend: Any = geocoder.backend
    assert backend.api == "https://geo.example.org/nominatim/search"
    assert backend.reverse_api == "https://geo.example.org/nominatim/reverse"
    with pytest.raises(ValueError, match="http"):
        nominatim("ftp://geo.example.org", user_agent="icp-test")
    with pytest.raises(ValueError, match="http"):
        nominatim("geo.example.org", user_agent="icp-test")


# --- the interface itself ------------------------------------------------------------------------


def locate(geocoder: Geocoder, query: str) -> GeocodeResult | None:
    """What `icp` does with any geocoder: the best answer, or None."""
    found = geocoder.geocode(query, limit=1)
    return found[0] if found else None


def test_gazetteer_and_geopy_adapter_both_are_geocoders() -> None:
    gazetteer = Gazetteer.from_osm(HELSINKI)
    external = GeopyGeocoder(FakeNominatim(ANSWERS), source="nominatim")
    offline = locate(gazetteer, "Aleksanterinkatu 52")
    online = locate(external, "Aleksanterinkatu 52")
    assert offline is not None and online is not None
    assert offline.label == "Aleksanterinkatu 52, 00100 Helsinki" and offline.source == "gazetteer"
    assert online.source == "nominatim"
    back = gazetteer.reverse(offline.point)
    assert back is not None and back.label == offline.label


def test_result_is_validated_and_serialisable() -> None:
    r = GeocodeResult(label="Mannerheimintie 10", point=Point(60.1675, 24.941), kind="address", score=99.96)
    assert r.to_mapping() == {
        "label": "Mannerheimintie 10",
        "kind": "address",
        "score": 100.0,
        "lat": 60.1675,
        "lon": 24.941,
        "distance_m": None,
        "source": "gazetteer",
        "category": None,
    }
    with pytest.raises(ValueError, match="kind must be one of address, street, place"):
        GeocodeResult(label="x", point=STOCKMANN, kind="city", score=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("score must be within 0..100")):
        GeocodeResult(label="x", point=STOCKMANN, kind="place", score=101.0)
    with pytest.raises(ValueError, match="distance_m"):
        GeocodeResult(label="x", point=STOCKMANN, kind="place", score=1.0, distance_m=-1.0)


@pytest.mark.parametrize(
    ("query", "limit", "message"),
    [
        ("", 1, "query is empty"),
        ("a\tb", 1, "control characters"),
        (None, 1, "query must be text"),
        ("a", True, "limit must be an integer"),
        ("a", 1.5, "limit must be an integer"),
    ],
)
def test_check_query(query: object, limit: object, message: str) -> None:
    with pytest.raises(GeocodeQueryError, match=re.escape(message)):
        check_query(query, limit)
    assert check_query("  Mannerheimintie 10 ") == "Mannerheimintie 10"
