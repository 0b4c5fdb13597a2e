"""Geocoding: the interface every geocoder offers, and an adapter for external ones through geopy.

Two implementations stand behind `Geocoder`: the offline `geo.gazetteer.Gazetteer` (built from
the same OpenStreetMap extract as the road network; pure CPU work, a few milliseconds) and
`GeopyGeocoder`, which wraps any geopy geocoder such as a self-hosted Nominatim. The external
one does blocking network I/O inside geopy: `icp` must call it off the event loop
(``loop.run_in_executor``), with its own timeout, and treat `GeocoderUnavailable` as "no answer
now", never as "no such place".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args
from urllib.parse import urlsplit

from geopy.exc import GeopyError
from geopy.point import Point as GeopyPoint

from geo.coords import CoordinateError, Point, geodesic_m

GeocodeKind = Literal["address", "street", "place"]
GEOCODE_KINDS: tuple[GeocodeKind, ...] = get_args(GeocodeKind)

# Bounds on a query: a street address is rarely 60 characters; 200 leaves room for a POI name
# and a locality while keeping fuzzy matching cheap and log lines short.
MAX_QUERY_CHARS = 200
MAX_LIMIT = 50
MAX_LABEL_CHARS = 400  # an external service's label is cut here; it is display text, not data


class GeocodeQueryError(ValueError):
    """A query or limit is unusable (empty, too long, control characters, limit out of range)."""


class GeocoderUnavailable(RuntimeError):
    """An external geocoder did not answer (network, timeout, quota); try again or go offline."""


@dataclass(frozen=True, slots=True)
class GeocodeResult:
    """One answer: what was found (`kind`, `label`), where (`point`) and how sure (`score`).

    `score` runs from 0 to 100; results of one query are ordered by it. It compares results of
    one geocoder, not of two. `distance_m` is set by reverse geocoding: how far the query point
    is from what was found. `source` names the geocoder ("gazetteer", "nominatim", ...).
    `category` says what a place is, as OpenStreetMap tags it (``"amenity=fire_station"``).
    """

    label: str
    point: Point
    kind: GeocodeKind
    score: float
    distance_m: float | None = None
    source: str = "gazetteer"
    category: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in GEOCODE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(GEOCODE_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.score <= 100.0:
            raise ValueError(f"score must be within 0..100, got {self.score}")
        if self.distance_m is not None and not (self.distance_m >= 0 and math.isfinite(self.distance_m)):
            raise ValueError(f"distance_m must be finite and >= 0, got {self.distance_m}")

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-ready dict (``lat``/``lon`` named, as ICP writes points in its own API)."""
        return {
            "label": self.label,
            "kind": self.kind,
            "score": round(self.score, 1),
            "lat": self.point.lat,
            "lon": self.point.lon,
            "distance_m": None if self.distance_m is None else round(self.distance_m, 1),
            "source": self.source,
            "category": self.category,
        }


class Geocoder(Protocol):
    """Text to places, and a place back to text."""

    def geocode(self, query: str, limit: int = 5) -> list[GeocodeResult]:
        """At most `limit` results for `query`, best first; [] when nothing matches."""
        ...

    def reverse(self, point: Point) -> GeocodeResult | None:
        """The address (or else the street) nearest to `point`, or None when nothing is near."""
        ...


def check_query(query: object, limit: object = 1) -> str:
    """`query` stripped, after checking it and `limit` against the bounds every geocoder keeps."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise GeocodeQueryError(f"limit must be an integer within 1..{MAX_LIMIT}, got {limit!r}")
    if not isinstance(query, str):
        raise GeocodeQueryError("query must be text")
    if len(query) > MAX_QUERY_CHARS:
        raise GeocodeQueryError(f"query is {len(query)} characters; at most {MAX_QUERY_CHARS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in query):
        raise GeocodeQueryError("query contains control characters")
    text = query.strip()
    if not text:
        raise GeocodeQueryError("query is empty")
    return text


# --- external geocoders through geopy -----------------------------------------------------------


class GeopyLocation(Protocol):
    """What ICP reads of a `geopy.location.Location`."""

    @property
    def address(self) -> str: ...
    @property
    def latitude(self) -> float: ...
    @property
    def longitude(self) -> float: ...
    @property
    def raw(self) -> Any: ...


class GeopyBackend(Protocol):
    """The part of geopy's geocoder interface (``geopy.geocoders.base.Geocoder``) ICP uses."""

    def geocode(self, query: str, *, exactly_one: bool, timeout: float) -> Any: ...
    def reverse(self, query: GeopyPoint, *, exactly_one: bool, timeout: float) -> Any: ...


def _kind_of(raw: Any) -> GeocodeKind:
    # Nominatim's answer says what it found; other services say less, and count as places.
    if not isinstance(raw, dict):
        return "place"
    details = raw.get("address")
    if isinstance(details, dict) and "house_number" in details:
        return "address"
    if raw.get("addresstype") in ("house", "building") or raw.get("type") == "house":
        return "address"
    if raw.get("class") == "highway" or raw.get("addresstype") == "road":
        return "street"
    return "place"


def _category_of(raw: Any) -> str | None:
    # Nominatim reports the OSM tag it matched as class and type, the gazetteer's own convention.
    if isinstance(raw, dict) and isinstance(raw.get("class"), str) and isinstance(raw.get("type"), str):
        return f"{raw['class']}={raw['type']}"
    return None


class GeopyGeocoder:
    """A `Geocoder` over any geopy geocoder (blocking network I/O: call it off the event loop).

    Scores are the backend's own order mapped to 100, 95, 90, ...: external services do not
    expose comparable confidences, so the order is the only honest signal.
    """

    def __init__(self, backend: GeopyBackend, *, source: str, timeout_s: float = 5.0) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s}")
        self._backend = backend
        self._timeout = timeout_s
        self.source = source

    @property
    def backend(self) -> GeopyBackend:
        """The wrapped geopy geocoder."""
        return self._backend

    def _result(self, loc: GeopyLocation, rank: int, distance_from: Point | None) -> GeocodeResult:
        try:
            point = Point(lat=float(loc.latitude), lon=float(loc.longitude))
        except (CoordinateError, TypeError, ValueError) as exc:
            raise GeocoderUnavailable(f"{self.source} returned an invalid location: {exc}") from None
        distance = None
        if distance_from is not None:
            distance = geodesic_m(distance_from, point)
        return GeocodeResult(
            label=str(loc.address)[:MAX_LABEL_CHARS],
            point=point,
            kind=_kind_of(loc.raw),
            category=_category_of(loc.raw),
            score=max(0.0, 100.0 - 5.0 * rank),
            distance_m=distance,
            source=self.source,
        )

    def geocode(self, query: str, limit: int = 5) -> list[GeocodeResult]:
        text = check_query(query, limit)
        try:
            found = self._backend.geocode(text, exactly_one=False, timeout=self._timeout)
        except GeopyError as exc:
            raise GeocoderUnavailable(f"{self.source}: {type(exc).__name__}") from exc
        locations: Sequence[GeopyLocation] = found or []
        return [self._result(loc, i, None) for i, loc in enumerate(locations[:limit])]

    def reverse(self, point: Point) -> GeocodeResult | None:
        # geopy's own Point names its axes, so the order cannot be mixed up on the way out.
        query = GeopyPoint(latitude=point.lat, longitude=point.lon)
        try:
            found = self._backend.reverse(query, exactly_one=True, timeout=self._timeout)
        except GeopyError as exc:
            raise GeocoderUnavailable(f"{self.source}: {type(exc).__name__}") from exc
        if not found:
            return None
        loc: GeopyLocation = found[0] if isinstance(found, list) else found
        return self._result(loc, 0, point)


def nominatim(url: str, *, user_agent: str, timeout_s: float = 5.0) -> GeopyGeocoder:
    """A `GeopyGeocoder` for the Nominatim server at `url` (e.g. ``https://nominatim.example.org``).

    Constructing it does no I/O. The public nominatim.openstreetmap.org allows one request per
    second and forbids heavy use; a dispatch centre runs its own server or uses the gazetteer.
    """
    # Imported here: geopy.geocoders loads every service adapter it knows, which ICP pays for
    # only when an external geocoder is configured.
    from geopy.geocoders import Nominatim

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Nominatim URL must be http(s)://host[/path], got {url!r}")
    # geopy joins scheme, "domain" and "/search"; a path prefix rides along in the domain.
    domain = parts.netloc + parts.path.rstrip("/")
    backend = Nominatim(domain=domain, scheme=parts.scheme, user_agent=user_agent)
    return GeopyGeocoder(backend, source="nominatim", timeout_s=timeout_s)
