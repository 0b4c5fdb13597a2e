"""Shared builders for the dispatch tests: a deterministic travel timer and a small city."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dispatch.agency import Agency, MutualAidTerms, Station
from dispatch.capability import Capability
from dispatch.unit import Unit
from geo.coords import Point
from geo.eta import Method, TravelEstimate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCENE = Point(60.1700, 24.9400)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def north_of(point: Point, metres: float) -> Point:
    """A point ``metres`` due north: makes distances (and so ETAs) easy to reason about."""
    return Point(lat=point.lat + metres / 111_195.0, lon=point.lon)


@dataclass
class FixedSpeedTimer:
    """Straight line at a fixed speed, with per-origin overrides (ETA seconds, or None for out
    of range). Records every call so tests can check there was exactly one query."""

    speed_mps: float = 10.0
    overrides: Mapping[Point, float | None] = field(default_factory=dict)
    method: Method = "road"
    calls: list[int] = field(default_factory=list)

    def one_to_many(
        self, target: Point, origins: Sequence[Point], max_seconds: float
    ) -> list[TravelEstimate]:
        self.calls.append(len(origins))
        out = []
        for origin in origins:
            dist = _metres(origin, target)
            eta = self.overrides[origin] if origin in self.overrides else dist / self.speed_mps
            if eta is None or eta > max_seconds:
                out.append(TravelEstimate(False, None, None, self.method))
            else:
                out.append(TravelEstimate(True, eta, dist, self.method))
        return out


def _metres(a: Point, b: Point) -> float:
    # Equirectangular: plenty for test geometry at city scale, and fast.
    x = math.radians(b.lon - a.lon) * math.cos(math.radians((a.lat + b.lat) / 2))
    y = math.radians(b.lat - a.lat)
    return 6_371_008.8 * math.hypot(x, y)


HELSINKI = Agency(
    "hki-fire",
    "Helsinki Fire",
    "fire",
    mutual_aid=(MutualAidTerms("espoo-fire", frozenset({Capability.ENGINE, Capability.LADDER}), 120),),
)
ESPOO = Agency("espoo-fire", "Espoo Fire", "fire")
VANTAA = Agency("vantaa-fire", "Vantaa Fire", "fire")
HKI_EMS = Agency("hki-ems", "Helsinki EMS", "ems")


def unit(
    uid: str,
    agency: str,
    caps: str,
    *,
    metres: float | None = None,
    eta_place: Point | None = None,
    status: str = "available",
    station: str | None = None,
    position_at: datetime = T0,
) -> Unit:
    """A unit ``metres`` north of the scene (at 10 m/s: metres/10 seconds away)."""
    position = eta_place if eta_place is not None else (
        north_of(SCENE, metres) if metres is not None else None
    )
    return Unit(
        id=uid,
        call_sign=uid.upper(),
        agency_id=agency,
        capabilities=frozenset(Capability(c) for c in caps.split(",")),
        station_id=station,
        status=status,  # type: ignore[arg-type]  # coerced by Unit
        position=position,
        position_at=position_at if position is not None else None,
    )


def station(sid: str, agency: str, metres: float, name: str | None = None) -> Station:
    return Station(sid, agency, name or sid.title(), north_of(SCENE, metres))
