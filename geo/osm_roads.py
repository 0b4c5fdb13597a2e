"""OpenStreetMap tags to drivable roads for emergency vehicles: classes, speeds, one-way, access.

The rules, each in one function so tests can drive them from tables:

- `road_class_for`: which ``highway=*`` ways an engine or ambulance can drive. Motorway down to
  residential, service, living_street, the ``*_link`` ramps, unclassified and road always; track,
  pedestrian, busway, footway, cycleway, path and bridleway only when tagged as open to motor or
  emergency vehicles; steps, platforms, construction and areas (``area=yes``) never.
- `emergency_access`: ``emergency=no`` closes and ``emergency=yes|designated|…`` opens, whatever
  else is said. Otherwise the most specific of ``motorcar`` > ``motor_vehicle`` > ``vehicle`` >
  ``access`` decides: ``no``, ``private``, ``agricultural``, ``forestry`` and ``use_sidepath`` close
  the way; known open values open it; unknown values open it and are counted in the build stats.
  Time-conditional tags (``*:conditional``) are not evaluated.
- `directions`: ``oneway=yes|true|1`` forward only, ``-1|reverse`` backward only, ``no|false|0``
  both; ``junction=roundabout|circular`` and motorways (and their ramps) are one-way unless
  ``oneway=no`` says otherwise; ``reversible``/``alternating`` are driven both ways (counted).
- `parse_maxspeed`: km/h numbers, ``"30 mph"``, ``"10 knots"``, country zones (``FI:urban``,
  ``DE:rural``, ``RU:urban``, ``DE:zone30``…), ``walk``; ``none``/``signals``/``variable`` and
  anything unknown fall back to the road class's default speed (unknown values are counted).

Speeds are posted limits (or class defaults) without turn or junction penalties; ETAs are therefore
optimistic by the time lost at junctions, as in most dispatch systems' first calibration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geo.road_graph import CLASS_CODE, MAX_SPEED_KMH, RoadNetworkError, WaySet

# Default speeds per road class, km/h, when a way has no usable maxspeed.
DEFAULT_CLASS_KMH: Mapping[str, float] = {
    "motorway": 100.0,
    "motorway_link": 60.0,
    "trunk": 80.0,
    "trunk_link": 50.0,
    "primary": 50.0,
    "primary_link": 40.0,
    "secondary": 50.0,
    "secondary_link": 40.0,
    "tertiary": 40.0,
    "tertiary_link": 30.0,
    "unclassified": 30.0,
    "residential": 30.0,
    "living_street": 10.0,
    "service": 15.0,
    "road": 30.0,
    "track": 15.0,
    "pedestrian": 10.0,
    "busway": 40.0,
    "other": 10.0,
}

# Implicit limits of country zone values ("FI:urban"); keys are lower case.
DEFAULT_ZONE_KMH: Mapping[str, float] = {
    "fi:urban": 50.0,
    "fi:rural": 80.0,
    "fi:motorway": 120.0,
    "fi:trunk": 100.0,
    "fi:living_street": 20.0,
    "se:urban": 50.0,
    "se:rural": 70.0,
    "se:motorway": 110.0,
    "no:urban": 50.0,
    "no:rural": 80.0,
    "no:motorway": 110.0,
    "ee:urban": 50.0,
    "ee:rural": 90.0,
    "de:urban": 50.0,
    "de:rural": 100.0,
    "de:motorway": 130.0,  # no general limit; 130 is the advisory speed (Richtgeschwindigkeit)
    "de:trunk": 130.0,
    "de:living_street": 7.0,  # Schrittgeschwindigkeit
    "de:bicycle_road": 30.0,
    "at:urban": 50.0,
    "at:rural": 100.0,
    "at:motorway": 130.0,
    "fr:urban": 50.0,
    "fr:rural": 80.0,
    "fr:motorway": 130.0,
    "ru:urban": 60.0,
    "ru:rural": 90.0,
    "ru:motorway": 110.0,
    "ru:living_street": 20.0,
    "gb:nsl_single": 96.56,  # 60 mph
    "gb:nsl_dual": 112.65,  # 70 mph
    "gb:motorway": 112.65,
}

# Countries not in the table still say what kind of zone they mean.
GENERIC_ZONE_KMH: Mapping[str, float] = {
    "urban": 50.0,
    "rural": 80.0,
    "motorway": 110.0,
    "trunk": 90.0,
    "living_street": 20.0,
}

ALWAYS_DRIVABLE = frozenset(
    {
        "motorway",
        "motorway_link",
        "trunk",
        "trunk_link",
        "primary",
        "primary_link",
        "secondary",
        "secondary_link",
        "tertiary",
        "tertiary_link",
        "unclassified",
        "residential",
        "living_street",
        "service",
        "road",
    }
)
# Drivable only when a tag opens them to motor or emergency vehicles; the value is the class used.
DRIVABLE_IF_OPENED: Mapping[str, str] = {
    "track": "track",
    "pedestrian": "pedestrian",
    "busway": "busway",
    "footway": "other",
    "cycleway": "other",
    "path": "other",
    "bridleway": "other",
}

EMERGENCY_OPEN = frozenset({"yes", "designated", "permissive", "destination", "official", "permit"})
ACCESS_CLOSED = frozenset({"no", "private", "agricultural", "forestry", "use_sidepath"})
ACCESS_OPEN = frozenset(
    {
        "yes",
        "designated",
        "permissive",
        "destination",
        "customers",
        "delivery",
        "official",
        "permit",
        "discouraged",
        "emergency",
    }
)
# Most specific first: the first of these present on a way decides (after emergency=*).
ACCESS_KEYS = ("motorcar", "motor_vehicle", "vehicle", "access")
# For ways that are not roads (footway, track…), only a motor or emergency opening counts:
# access=yes on a footway speaks of walkers, vehicle=yes includes bicycles.
MOTOR_KEYS = ("motorcar", "motor_vehicle")

ONEWAY_FORWARD = frozenset({"yes", "true", "1"})
ONEWAY_BACKWARD = frozenset({"-1", "reverse"})
ONEWAY_NONE = frozenset({"no", "false", "0"})
ONEWAY_BOTH_TIMED = frozenset({"reversible", "alternating"})
IMPLIED_ONEWAY_CLASSES = frozenset({"motorway", "motorway_link"})
ROUNDABOUTS = frozenset({"roundabout", "circular"})

KMH_PER_MPH = 1.609344
KMH_PER_KNOT = 1.852
WALK_KMH = 7.0

_NUMBER_UNIT = re.compile(r"^(\d+(?:\.\d+)?)\s*(km/h|kmh|kph|mph|knots)?$")
_ZONE = re.compile(r"^([a-z]{2}):(.+)$")
_ZONE_NUMBER = re.compile(r"^zone:?(\d+)$")
_NO_NUMBER = frozenset({"none", "signals", "variable", "unposted", "implicit"})

Tags = Mapping[str, str]
_NodeAt = tuple[int, float, float]  # OSM node id, lat, lon


@dataclass(frozen=True)
class RoadProfile:
    """The speed rules a network is built with; its fingerprint is part of the cache key."""

    class_kmh: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CLASS_KMH))
    zone_kmh: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ZONE_KMH))
    walk_kmh: float = WALK_KMH
    max_kmh: float = 130.0

    def __post_init__(self) -> None:
        missing = set(DEFAULT_CLASS_KMH) - set(self.class_kmh)
        if missing:
            raise ValueError(f"class_kmh lacks {sorted(missing)}")
        if not 0 < self.max_kmh <= MAX_SPEED_KMH:
            raise ValueError(f"max_kmh must be within 0..{MAX_SPEED_KMH}")

    def fingerprint(self) -> str:
        body = json.dumps(
            {k: dict(v) if isinstance(v, Mapping) else v for k, v in asdict(self).items()},
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]


DEFAULT_PROFILE = RoadProfile()


def parse_maxspeed(text: str, profile: RoadProfile = DEFAULT_PROFILE) -> float | None:
    """A ``maxspeed`` value in km/h; None when it names no number (``none``, ``signals``).

    Several values (``"50;30"``) give the lowest. Raises ValueError for text it does not know, so
    the caller can count it rather than guess.
    """
    speeds: list[float] = []
    for part in text.split(";"):
        value = part.strip().lower()
        if not value:
            continue
        if value in _NO_NUMBER:
            continue
        if value == "walk":
            speeds.append(profile.walk_kmh)
            continue
        m = _NUMBER_UNIT.match(value)
        if m:
            number = float(m.group(1))
            unit = m.group(2)
            if unit == "mph":
                number *= KMH_PER_MPH
            elif unit == "knots":
                number *= KMH_PER_KNOT
            if number <= 0:
                raise ValueError(f"maxspeed {text!r} is not a positive speed")
            speeds.append(number)
            continue
        z = _ZONE.match(value)
        if z:
            if value in profile.zone_kmh:
                speeds.append(float(profile.zone_kmh[value]))
                continue
            kind = z.group(2)
            zn = _ZONE_NUMBER.match(kind)
            if zn:
                speeds.append(float(zn.group(1)))
                continue
            if kind in GENERIC_ZONE_KMH:
                speeds.append(GENERIC_ZONE_KMH[kind])
                continue
            if kind in _NO_NUMBER:
                continue
        raise ValueError(f"unknown maxspeed {text!r}")
    return min(speeds) if speeds else None


def road_class_for(tags: Tags) -> str | None:
    """The road class of a drivable way, or None when emergency vehicles cannot drive it."""
    highway = tags.get("highway")
    if highway is None or tags.get("area") == "yes":
        return None
    if highway in ALWAYS_DRIVABLE:
        return highway
    opened_as = DRIVABLE_IF_OPENED.get(highway)
    if opened_as is None:
        return None
    if tags.get("emergency") in EMERGENCY_OPEN:
        return opened_as
    for key in MOTOR_KEYS:
        if key in tags:
            return opened_as if tags[key] in ACCESS_OPEN else None
    return None


def emergency_access(tags: Tags) -> tuple[bool, str | None]:
    """Whether an emergency vehicle may use the way, and the unknown value relied on, if any."""
    emergency = tags.get("emergency")
    if emergency == "no":
        return False, None
    if emergency in EMERGENCY_OPEN:
        return True, None
    for key in ACCESS_KEYS:
        value = tags.get(key)
        if value is None:
            continue
        if value in ACCESS_CLOSED:
            return False, None
        if value in ACCESS_OPEN:
            return True, None
        return True, f"{key}={value}"
    return True, None


def directions(tags: Tags, road_class: str) -> tuple[bool, bool, str | None]:
    """``(forward open, backward open, unknown oneway value)`` along the way's node order."""
    oneway = tags.get("oneway")
    if oneway in ONEWAY_FORWARD:
        return True, False, None
    if oneway in ONEWAY_BACKWARD:
        return False, True, None
    if oneway in ONEWAY_NONE or oneway in ONEWAY_BOTH_TIMED:
        return True, True, None
    implied = tags.get("junction") in ROUNDABOUTS or road_class in IMPLIED_ONEWAY_CLASSES
    return True, not implied, (None if oneway is None else f"oneway={oneway}")


def way_speeds(tags: Tags, road_class: str, profile: RoadProfile) -> tuple[float, float, list[str]]:
    """``(forward km/h, backward km/h, unparsed maxspeed values)`` for an open way."""
    default = float(profile.class_kmh[road_class])
    unparsed: list[str] = []

    def one(key: str, fallback: float) -> float:
        text = tags.get(key)
        if text is None:
            return fallback
        try:
            kmh = parse_maxspeed(text, profile)
        except ValueError:
            unparsed.append(f"{key}={text}")
            return fallback
        return fallback if kmh is None else kmh

    base = one("maxspeed", default)
    fwd = one("maxspeed:forward", base)
    bwd = one("maxspeed:backward", base)
    cap = profile.max_kmh
    return min(fwd, cap), min(bwd, cap), unparsed


@dataclass
class _Collector:
    """Accumulates accepted ways as flat lists (one pass over the file)."""

    profile: RoadProfile
    node_id: list[int] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    way_ptr: list[int] = field(default_factory=lambda: [0])
    way_id: list[int] = field(default_factory=list)
    fwd: list[float] = field(default_factory=list)
    bwd: list[float] = field(default_factory=list)
    klass: list[int] = field(default_factory=list)
    name: list[int] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=lambda: {"": 0})
    stats: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)

    def add_way(self, way_id: int, tags: Tags, nodes: list[_NodeAt | None]) -> None:
        self.stats["highway_ways"] += 1
        road_class = road_class_for(tags)
        if road_class is None:
            self.stats["skipped_not_drivable"] += 1
            return
        allowed, unknown_access = emergency_access(tags)
        if unknown_access:
            self.unknown[unknown_access] += 1
        if not allowed:
            self.stats["skipped_no_access"] += 1
            return
        fwd_open, bwd_open, unknown_oneway = directions(tags, road_class)
        if unknown_oneway:
            self.unknown[unknown_oneway] += 1
        fwd_kmh, bwd_kmh, unparsed = way_speeds(tags, road_class, self.profile)
        for value in unparsed:
            self.unknown[value] += 1
        label = tags.get("name") or tags.get("ref") or ""
        name_id = self.names.setdefault(label, len(self.names))
        # A clipped extract leaves nodes without a location: keep each run of located nodes.
        runs: list[list[_NodeAt]] = [[]]
        for node in nodes:
            if node is None:
                runs.append([])
            elif not runs[-1] or runs[-1][-1][0] != node[0]:  # drop repeated consecutive nodes
                runs[-1].append(node)
        if len(runs) > 1:
            self.stats["ways_clipped"] += 1
        for run in runs:
            if len(run) < 2:
                continue
            for nid, la, lo in run:
                self.node_id.append(nid)
                self.lat.append(la)
                self.lon.append(lo)
            self.way_ptr.append(len(self.node_id))
            self.way_id.append(way_id)
            self.fwd.append(fwd_kmh if fwd_open else 0.0)
            self.bwd.append(bwd_kmh if bwd_open else 0.0)
            self.klass.append(CLASS_CODE[road_class])
            self.name.append(name_id)
        self.stats["ways_used"] += 1

    def way_set(self) -> WaySet:
        return WaySet(
            node_id=np.asarray(self.node_id, np.int64),
            lat=np.asarray(self.lat, np.float64),
            lon=np.asarray(self.lon, np.float64),
            way_ptr=np.asarray(self.way_ptr, np.int64),
            way_id=np.asarray(self.way_id, np.int64),
            fwd_kmh=np.asarray(self.fwd, np.float32),
            bwd_kmh=np.asarray(self.bwd, np.float32),
            road_class=np.asarray(self.klass, np.uint8),
            name_id=np.asarray(self.name, np.int32),
            names=tuple(self.names),
        )

    def report(self) -> dict[str, Any]:
        return {**dict(self.stats), "unknown_values": dict(self.unknown.most_common(50))}


def read_pbf(
    path: str | os.PathLike[str], profile: RoadProfile = DEFAULT_PROFILE
) -> tuple[WaySet, dict[str, Any]]:
    """Drivable ways of a PBF extract, and build statistics (counts of what was skipped and why).

    Raises `RoadNetworkError` for a missing, unreadable or corrupt file, or one with no drivable
    road.
    """
    import osmium  # imported here so the rest of geo works without the libosmium bindings

    where = os.fspath(path)
    p = Path(path)
    if not p.is_file():
        raise RoadNetworkError(f"{where}: no such file")
    if p.stat().st_size == 0:
        raise RoadNetworkError(f"{where}: empty file")
    collector = _Collector(profile)
    try:
        processor = (
            osmium.FileProcessor(where)
            .with_locations()
            .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
            .with_filter(osmium.filter.KeyFilter("highway"))
        )
        for way in processor:
            if not isinstance(way, osmium.osm.Way):
                continue
            tags = {t.k: t.v for t in way.tags}
            nodes: list[_NodeAt | None] = []
            for n in way.nodes:
                loc = n.location
                nodes.append((n.ref, loc.lat, loc.lon) if loc.valid() else None)
            collector.add_way(way.id, tags, nodes)
    except RoadNetworkError:
        raise
    except Exception as e:  # libosmium reports corrupt input as RuntimeError and kin
        raise RoadNetworkError(f"{where}: not a readable OSM file ({e})") from e
    if len(collector.way_id) == 0:
        raise RoadNetworkError(
            f"{where}: no drivable roads ({collector.stats['highway_ways']} highway ways read)"
        )
    return collector.way_set(), collector.report()
