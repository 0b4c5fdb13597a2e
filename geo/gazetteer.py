"""The offline gazetteer: addresses, streets and places from an OpenStreetMap extract, both ways.

Built once from the same PBF extract as the road network (`Gazetteer.from_osm`), saved as a
plain ``.npz`` of arrays plus one JSON document (no pickle: a cache file is data, never code), and
loaded in milliseconds at the next start (`Gazetteer.load_or_build`). Immutable once built, so
any number of threads may query it at once.

Forward geocoding normalises the query and the names alike (`geo.address_text`), finds street
and place names by typo-tolerant similarity (rapidfuzz), then the house number on the matched
streets. Reverse geocoding finds the nearest address point (a k-d tree), or else the nearest
street line (an STRtree), within a radius.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import shapely
from numpy.typing import NDArray
from rapidfuzz import fuzz, process
from shapely.geometry import LineString, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import nearest_points

from geo.address_text import HouseNumber, fold, match_key, parse_house_number, parse_query
from geo.coords import Point
from geo.distance import (
    PointIndex,
    bbox_around,
    distance_to_geometry_m,
    from_local_metres,
    haversine_m,
    to_local_metres,
)
from geo.geocoder import GeocodeKind, GeocodeResult, check_query

CACHE_FORMAT = "icp-gazetteer"
CACHE_VERSION = 1

# Tags that make a named object a place worth finding by name.
PLACE_KEYS = (
    "amenity",
    "emergency",
    "healthcare",
    "shop",
    "tourism",
    "leisure",
    "historic",
    "office",
    "place",
    "building",
)
# Named highways that are not streets one drives or walks along to an address.
_NOT_STREETS = frozenset({"platform", "bus_stop", "proposed", "construction", "abandoned", "elevator"})
_NAME_TAGS = ("name", "alt_name", "short_name", "official_name", "loc_name")
_LANGUAGE_NAME = re.compile(r"name:[a-z]{2,3}\Z")

# Same-named ways closer than this belong to one street; farther apart they are namesakes in
# different towns (about 300 m north-south; the east-west span shrinks with latitude, which
# errs on the side of splitting).
_STREET_JOIN_DEG = 0.003
# Records of one street name and number farther apart than this are different addresses.
_ADDRESS_SPLIT_M = 1000.0
# An address is linked to the nearest street of its name only within this distance.
_ADDRESS_STREET_M = 2000.0

MIN_SCORE = 75.0  # below this a name is too different to offer
_CANDIDATES = 25  # names considered per query before house numbers and ranking
_KIND_ORDER: dict[GeocodeKind, int] = {"address": 0, "street": 1, "place": 2}

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class GazetteerCacheError(ValueError):
    """A cache file is missing, damaged, of another version, or built from another extract."""


# --- tables: the whole gazetteer as columns (what is built, saved and loaded) --------------------


@dataclass(frozen=True, slots=True)
class _Tables:
    # streets: same-named highway ways grouped per town; names[0] is the primary name
    street_names: list[list[str]]
    street_city: list[str]
    street_lat: FloatArray
    street_lon: FloatArray
    line_coords: FloatArray  # (n, 2) lon, lat of every street line, one after another
    line_offsets: IntArray  # line i is line_coords[line_offsets[i]:line_offsets[i + 1]]
    line_street: IntArray
    # addresses: one per street, number and place, at the best of its source points
    addr_street: list[str]
    addr_number: list[str]
    addr_city: list[str]
    addr_postcode: list[str]
    addr_lat: FloatArray
    addr_lon: FloatArray
    addr_street_id: IntArray  # -1: no street of that name nearby
    # every object carrying an address, for reverse geocoding
    point_lat: FloatArray
    point_lon: FloatArray
    point_addr: IntArray
    # named places and POIs
    place_names: list[list[str]]
    place_category: list[str]
    place_lat: FloatArray
    place_lon: FloatArray
    place_addr: IntArray  # -1: no address
    source: dict[str, Any] = field(default_factory=dict)


_TEXT_COLUMNS = (
    "street_names",
    "street_city",
    "addr_street",
    "addr_number",
    "addr_city",
    "addr_postcode",
    "place_names",
    "place_category",
)
_FLOAT_COLUMNS = (
    "street_lat",
    "street_lon",
    "line_coords",
    "addr_lat",
    "addr_lon",
    "point_lat",
    "point_lon",
    "place_lat",
    "place_lon",
)
_INT_COLUMNS = ("line_offsets", "line_street", "addr_street_id", "point_addr", "place_addr")


def _check_tables(t: _Tables) -> None:
    """Raise GazetteerCacheError unless the columns agree with each other and hold real positions.

    Run on every construction: a cache file may be damaged or written by something else.
    """
    n_streets, n_addr, n_points, n_places = (
        len(t.street_names),
        len(t.addr_street),
        len(t.point_lat),
        len(t.place_names),
    )
    lengths = {
        "street": (n_streets, [len(t.street_city), len(t.street_lat), len(t.street_lon)]),
        "address": (
            n_addr,
            [
                len(t.addr_number),
                len(t.addr_city),
                len(t.addr_postcode),
                len(t.addr_lat),
                len(t.addr_lon),
                len(t.addr_street_id),
            ],
        ),
        "point": (n_points, [len(t.point_lon), len(t.point_addr)]),
        "place": (n_places, [len(t.place_category), len(t.place_lat), len(t.place_lon), len(t.place_addr)]),
        "line": (len(t.line_street), [len(t.line_offsets) - 1]),
    }
    for what, (n, others) in lengths.items():
        if any(o != n for o in others):
            raise GazetteerCacheError(f"{what} columns disagree in length")
    if t.line_coords.ndim != 2 or t.line_coords.shape[1] != 2:
        raise GazetteerCacheError("street line coordinates must be an (n, 2) array")
    offsets = t.line_offsets
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != len(t.line_coords):
        raise GazetteerCacheError("street line offsets do not cover the coordinates")
    if np.any(np.diff(offsets) < 2):
        raise GazetteerCacheError("a street line has fewer than 2 positions")
    for name, ids, upper, allow_missing in (
        ("line_street", t.line_street, n_streets, False),
        ("addr_street_id", t.addr_street_id, n_streets, True),
        ("point_addr", t.point_addr, n_addr, False),
        ("place_addr", t.place_addr, n_addr, True),
    ):
        low = -1 if allow_missing else 0
        if ids.size and (ids.min() < low or ids.max() >= upper):
            raise GazetteerCacheError(f"{name} refers outside its table")
    for names in (t.street_names, t.place_names):
        if any(not n for n in names):
            raise GazetteerCacheError("an entry has no name")
    for what, lats, lons in (
        ("street", t.street_lat, t.street_lon),
        ("street line", t.line_coords[:, 1], t.line_coords[:, 0]),
        ("address", t.addr_lat, t.addr_lon),
        ("address point", t.point_lat, t.point_lon),
        ("place", t.place_lat, t.place_lon),
    ):
        # Written so that NaN fails too.
        if not (np.all(np.abs(lats) <= 90.0) and np.all(np.abs(lons) <= 180.0)):
            raise GazetteerCacheError(f"{what} coordinates are out of range")


# --- reading OpenStreetMap -------------------------------------------------------------------------


@dataclass(slots=True)
class _RawAddress:
    street: str
    number: HouseNumber
    number_text: str
    city: str
    postcode: str
    lat: float
    lon: float
    building: bool  # from a way or a multipolygon: its centre is a better anchor than a shop node


@dataclass(slots=True)
class _RawPlace:
    names: list[str]
    category: str
    lat: float
    lon: float
    address: int  # index into the raw addresses, or -1


@dataclass(slots=True)
class _Collector:
    addresses: list[_RawAddress] = field(default_factory=list)
    places: list[_RawPlace] = field(default_factory=list)
    streets: list[tuple[list[str], list[LineString]]] = field(default_factory=list)


def _names(tags: Any) -> list[str]:
    names: list[str] = []
    for key in _NAME_TAGS:
        value = tags.get(key)
        if value:
            names.extend(v.strip() for v in value.split(";") if v.strip())
    for tag in tags:
        if _LANGUAGE_NAME.match(tag.k) and tag.v.strip():
            names.append(tag.v.strip())
    return list(dict.fromkeys(names))


def _anchor(geometry: BaseGeometry) -> tuple[float, float]:
    """(lat, lon) standing for a building or line: its centroid, if that lies on it."""
    centre = geometry.centroid
    if isinstance(geometry, (Polygon, MultiPolygon)) and not geometry.contains(centre):
        centre = geometry.point_on_surface()
    elif isinstance(geometry, LineString):
        centre = geometry.interpolate(0.5, normalized=True)
    return float(centre.y), float(centre.x)


def _way_runs(way: Any) -> list[list[tuple[float, float]]]:
    # An extract cuts ways at its border: nodes outside it have no location. Keep each run of
    # located nodes as its own piece rather than joining across the gap.
    runs: list[list[tuple[float, float]]] = [[]]
    for node in way.nodes:
        loc = node.location
        if loc.valid():
            runs[-1].append((loc.lon, loc.lat))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if len(r) >= 2]


def _way_shape(way: Any) -> BaseGeometry | None:
    runs = _way_runs(way)
    if not runs:
        return None
    if len(runs) == 1 and way.is_closed() and len(runs[0]) >= 4:
        polygon = Polygon(runs[0])
        if polygon.is_valid and polygon.area > 0:
            return polygon
    return LineString(max(runs, key=len))


def _area_shape(area: Any) -> BaseGeometry | None:
    polygons = []
    for outer in area.outer_rings():
        shell = [(n.lon, n.lat) for n in outer]
        holes = [[(n.lon, n.lat) for n in inner] for inner in area.inner_rings(outer)]
        if len(shell) >= 4:
            polygons.append(Polygon(shell, holes))
    if not polygons:
        return None
    shape = MultiPolygon(polygons) if len(polygons) > 1 else polygons[0]
    return shape if shape.is_valid else shapely.make_valid(shape)


def _collect(obj: Any, at: tuple[float, float] | None, building: bool, out: _Collector) -> None:
    """Record the address and the place that one OSM object carries, at `at` (lat, lon)."""
    if at is None:
        return
    lat, lon = at
    tags = obj.tags
    address = -1
    number_text = tags.get("addr:housenumber") or ""
    number = parse_house_number(number_text)
    # Finnish and Swedish rural addresses name a village instead of a street (addr:place).
    # "Kaivopiha, Mannerheimintie" puts a mall's name before the street: the street is the last
    # part (the mall is found by its own name, as a place).
    street = (tags.get("addr:street") or tags.get("addr:place") or "").rsplit(",", 1)[-1].strip()
    if number is not None and street:
        address = len(out.addresses)
        out.addresses.append(
            _RawAddress(
                street=street,
                number=number,
                number_text=number_text.split(",")[0].strip(),
                city=(tags.get("addr:city") or "").strip(),
                postcode=(tags.get("addr:postcode") or "").strip(),
                lat=lat,
                lon=lon,
                building=building,
            )
        )
    category = next((f"{k}={tags.get(k)}" for k in PLACE_KEYS if k in tags), None)
    if category is not None and "name" in tags and "highway" not in tags:
        out.places.append(_RawPlace(_names(tags), category, lat, lon, address))


def _read_osm(path: Path) -> _Collector:
    out = _Collector()
    wanted = ("addr:housenumber", "highway", *PLACE_KEYS)
    processor = (
        osmium.FileProcessor(str(path)).with_locations().with_areas().with_filter(osmium.filter.KeyFilter(*wanted))
    )
    for obj in processor:
        if isinstance(obj, osmium.osm.Node):
            loc = obj.location
            _collect(obj, (loc.lat, loc.lon) if loc.valid() else None, False, out)
        elif isinstance(obj, osmium.osm.Way):
            tags = obj.tags
            if "name" in tags and tags.get("highway") not in (None, *_NOT_STREETS):
                lines = [LineString(run) for run in _way_runs(obj)]
                if lines:
                    out.streets.append((_names(tags), lines))
            elif "highway" not in tags:
                shape = _way_shape(obj)
                _collect(obj, None if shape is None else _anchor(shape), True, out)
        elif isinstance(obj, osmium.osm.Area) and not obj.from_way():
            # Ways were handled above; areas assembled from multipolygon relations come here.
            shape = _area_shape(obj)
            _collect(obj, None if shape is None else _anchor(shape), True, out)
    return out


# --- grouping raw records into the tables -----------------------------------------------------------


def _most_common(values: Iterable[str]) -> str:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else ""


def _components(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of 0..n-1 linked by `pairs` (union-find), each in ascending order."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _street_clusters(raw: list[tuple[list[str], list[LineString]]]) -> list[tuple[list[str], list[LineString]]]:
    """Same-named ways joined into streets where they meet or nearly do (union-find per name)."""
    by_name: dict[str, list[int]] = {}
    for i, (names, _) in enumerate(raw):
        by_name.setdefault(match_key(names[0]), []).append(i)
    clusters: list[tuple[list[str], list[LineString]]] = []
    for members in by_name.values():
        shapes = [shapely.union_all(raw[m][1]) for m in members]
        pairs: list[tuple[int, int]] = []
        if len(members) > 1:
            tree = shapely.STRtree(shapes)
            left, right = tree.query(shapes, predicate="dwithin", distance=_STREET_JOIN_DEG)
            pairs = list(zip(left.tolist(), right.tolist(), strict=True))
        for group in _components(len(members), pairs):
            names = list(dict.fromkeys(n for i in group for n in raw[members[i]][0]))
            lines = [line for i in group for line in raw[members[i]][1]]
            clusters.append((names, lines))
    return clusters


def _build_tables(found: _Collector, source: dict[str, Any]) -> _Tables:
    streets = _street_clusters(found.streets)
    street_ids_by_key: dict[str, list[int]] = {}
    for sid, (names, _) in enumerate(streets):
        for name in names:
            street_ids_by_key.setdefault(match_key(name), []).append(sid)
    street_geoms = [shapely.union_all(lines) for _, lines in streets]

    # Addresses: group records by street and number, then split groups that lie far apart.
    groups: dict[tuple[str, str], list[list[int]]] = {}
    for r, rec in enumerate(found.addresses):
        clusters = groups.setdefault((match_key(rec.street), rec.number.key), [])
        for cluster in clusters:
            seed = found.addresses[cluster[0]]
            if haversine_m(Point(seed.lat, seed.lon), [rec.lat], [rec.lon])[0] <= _ADDRESS_SPLIT_M:
                cluster.append(r)
                break
        else:
            clusters.append([r])

    record_addr = np.full(len(found.addresses), -1, dtype=np.int64)
    addr_rows: list[tuple[str, str, str, str, float, float, int]] = []
    for (key, _), clusters in groups.items():
        for cluster in clusters:
            recs = [found.addresses[r] for r in cluster]
            anchor = _pick_anchor(recs)
            aid = len(addr_rows)
            record_addr[cluster] = aid
            here = Point(anchor.lat, anchor.lon)
            near = [(distance_to_geometry_m(here, street_geoms[s]), s) for s in street_ids_by_key.get(key, [])]
            best = min(near, default=(math.inf, -1))
            addr_rows.append(
                (
                    _most_common(r.street for r in recs),
                    _most_common(r.number_text for r in recs),
                    _most_common(r.city for r in recs),
                    _most_common(r.postcode for r in recs),
                    anchor.lat,
                    anchor.lon,
                    best[1] if best[0] <= _ADDRESS_STREET_M else -1,
                )
            )

    street_city = [_most_common(row[2] for row in addr_rows if row[6] == sid) for sid in range(len(streets))]
    street_points = [_street_point(g) for g in street_geoms]
    lines = [line for _, ls in streets for line in ls]
    line_coords = [np.asarray(line.coords, dtype=np.float64) for line in lines]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in line_coords])

    places = _dedupe_places(found.places, record_addr)
    return _Tables(
        street_names=[names for names, _ in streets],
        street_city=street_city,
        street_lat=np.array([p.lat for p in street_points], dtype=np.float64),
        street_lon=np.array([p.lon for p in street_points], dtype=np.float64),
        line_coords=np.concatenate(line_coords) if lines else np.empty((0, 2)),
        line_offsets=offsets,
        line_street=np.array([s for s, (_, ls) in enumerate(streets) for _ in ls], dtype=np.int64),
        addr_street=[row[0] for row in addr_rows],
        addr_number=[row[1] for row in addr_rows],
        addr_city=[row[2] for row in addr_rows],
        addr_postcode=[row[3] for row in addr_rows],
        addr_lat=np.array([row[4] for row in addr_rows], dtype=np.float64),
        addr_lon=np.array([row[5] for row in addr_rows], dtype=np.float64),
        addr_street_id=np.array([row[6] for row in addr_rows], dtype=np.int64),
        point_lat=np.array([r.lat for r in found.addresses], dtype=np.float64),
        point_lon=np.array([r.lon for r in found.addresses], dtype=np.float64),
        point_addr=record_addr,
        place_names=[p.names for p in places],
        place_category=[p.category for p in places],
        place_lat=np.array([p.lat for p in places], dtype=np.float64),
        place_lon=np.array([p.lon for p in places], dtype=np.float64),
        place_addr=np.array([p.address for p in places], dtype=np.int64),
        source=source,
    )


def _pick_anchor(records: list[_RawAddress]) -> _RawAddress:
    """The record that best stands for an address: a building, else the most central point.

    Always one of the records' own points, so reverse geocoding that point gives the address.
    """
    buildings = [r for r in records if r.building]
    pool = buildings or records
    if len(pool) <= 2:
        return pool[0]
    lats = np.array([r.lat for r in pool])
    lons = np.array([r.lon for r in pool])
    middle = Point(float(np.median(lats)), float(np.median(lons)))
    return pool[int(np.argmin(haversine_m(middle, lats, lons)))]


def _street_point(geometry: BaseGeometry) -> Point:
    """A point on the street near its middle, to show where "the street" is."""
    on_line = nearest_points(geometry, geometry.centroid)[0]
    return Point(float(on_line.y), float(on_line.x))


def _dedupe_places(places: list[_RawPlace], record_addr: IntArray) -> list[_RawPlace]:
    # A shop is often mapped twice, as a node and on its building; one answer is enough.
    seen: set[tuple[str, str]] = set()
    out: list[_RawPlace] = []
    for p in places:
        addr = int(record_addr[p.address]) if p.address >= 0 else -1
        where = str(addr) if addr >= 0 else f"{p.lat:.3f},{p.lon:.3f}"
        key = (match_key(p.names[0]), where)
        if key in seen:
            continue
        seen.add(key)
        out.append(_RawPlace(p.names, p.category, p.lat, p.lon, addr))
    return out


# --- cache files ------------------------------------------------------------------------------------


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def _save(tables: _Tables, path: Path) -> None:
    header = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "source": tables.source,
        **{name: getattr(tables, name) for name in _TEXT_COLUMNS},
    }
    arrays: dict[str, Any] = {name: getattr(tables, name) for name in _FLOAT_COLUMNS + _INT_COLUMNS}
    arrays["header"] = np.frombuffer(json.dumps(header, ensure_ascii=False).encode(), dtype=np.uint8)
    # Write beside the target and rename, so a crash mid-write never leaves half a cache.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _strings(value: Any, name: str, nested: bool) -> Any:
    ok = isinstance(value, list) and all(
        (isinstance(v, list) and all(isinstance(s, str) for s in v)) if nested else isinstance(v, str) for v in value
    )
    if not ok:
        raise GazetteerCacheError(f"cache column {name} is not a list of {'lists of ' if nested else ''}strings")
    return value


def _load(path: Path) -> _Tables:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise GazetteerCacheError(f"cannot read gazetteer cache {path}: {exc}") from None
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GazetteerCacheError(f"gazetteer cache {path} has no readable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
        raise GazetteerCacheError(f"{path} is not a gazetteer cache")
    if header.get("version") != CACHE_VERSION:
        raise GazetteerCacheError(
            f"{path} is gazetteer cache version {header.get('version')}; this ICP reads {CACHE_VERSION}"
        )
    columns: dict[str, Any] = {}
    for name in _TEXT_COLUMNS:
        columns[name] = _strings(header.get(name), name, nested=name.endswith("_names"))
    for names, dtype in ((_FLOAT_COLUMNS, np.float64), (_INT_COLUMNS, np.int64)):
        for name in names:
            array = arrays.get(name)
            if array is None or array.dtype != dtype:
                raise GazetteerCacheError(f"cache column {name} is missing or not {np.dtype(dtype)}")
            columns[name] = array
    source = header.get("source")
    return _Tables(**columns, source=source if isinstance(source, dict) else {})


# --- the gazetteer ----------------------------------------------------------------------------------


def _key_index(names_per_entry: Iterable[Iterable[str]]) -> tuple[list[str], list[list[int]]]:
    """Distinct match keys and, for each, the entries carrying a name with that key."""
    members: dict[str, list[int]] = {}
    for entry, names in enumerate(names_per_entry):
        for name in names:
            key = match_key(name)
            if key and entry not in members.setdefault(key, []):
                members[key].append(entry)
    keys = list(members)
    return keys, [members[k] for k in keys]


def _similar(key: str, choices: list[str]) -> dict[int, float]:
    """Choices resembling `key`, with a similarity from 0 to 100.

    Normalised edit similarity catches typos; a query contained in a name also counts, most
    when it is the name's start ("kaivok" -> "kaivokatu") and less for a tail ("esplanadi" ->
    "pohjoisesplanadi"), scaled by how much of the name the query covers.
    """
    if not key or not choices:
        return {}
    scores = {
        i: float(s)
        for _, s, i in process.extract(key, choices, scorer=fuzz.ratio, limit=_CANDIDATES, score_cutoff=MIN_SCORE)
    }
    if len(key) >= 5:
        for _, _, i in process.extract(key, choices, scorer=fuzz.partial_ratio, limit=_CANDIDATES, score_cutoff=100):
            name = choices[i]
            if key in name:
                base = 90.0 if name.startswith(key) else 75.0
                scores[i] = max(scores.get(i, 0.0), base + 10.0 * len(key) / len(name))
    return scores


class Gazetteer:
    """Offline forward and reverse geocoding over one OpenStreetMap extract (a `Geocoder`)."""

    source = "gazetteer"

    def __init__(self, tables: _Tables) -> None:
        _check_tables(tables)
        t = self._t = tables
        self._numbers = [parse_house_number(n) or HouseNumber(0) for n in t.addr_number]
        self._addr_city = [fold(c) for c in t.addr_city]
        self._street_keys, self._street_members = _key_index(t.street_names)
        # An address is found by its own street name and by every name of its street
        # ("Mannerheimvägen 10" is "Mannerheimintie 10").
        self._addr_keys, addr_members = _key_index(
            [t.addr_street[a], *(t.street_names[s] if s >= 0 else [])] for a, s in enumerate(t.addr_street_id.tolist())
        )
        self._addr_by_number: list[dict[int, list[int]]] = []
        for members in addr_members:
            by_number: dict[int, list[int]] = {}
            for a in members:
                n = self._numbers[a]
                # A range answers for each number it covers (bounded: a typo'd "1-999" must
                # not flood the index).
                last = n.last if n.last is not None and n.last - n.number <= 50 else n.number
                for k in range(n.number, last + 1):
                    by_number.setdefault(k, []).append(a)
            self._addr_by_number.append(by_number)
        self._place_keys, self._place_members = _key_index(t.place_names)
        self._points = PointIndex(t.point_lat, t.point_lon)
        self._lines = (
            shapely.linestrings(
                t.line_coords, indices=np.repeat(np.arange(len(t.line_street)), np.diff(t.line_offsets))
            )
            if len(t.line_street)
            else np.empty(0, dtype=object)
        )
        self._line_tree = shapely.STRtree(self._lines)

    # --- construction and persistence ---------------------------------------------------------

    @classmethod
    def from_osm(cls, pbf_path: str | os.PathLike[str]) -> Gazetteer:
        """Build from an OpenStreetMap extract (``.osm.pbf``; seconds for a city)."""
        path = Path(pbf_path)
        found = _read_osm(path)
        return cls(_build_tables(found, _fingerprint(path)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache file (``.npz``: arrays and a JSON header; no pickled objects)."""
        _save(self._t, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Gazetteer:
        """Read a cache file written by `save`; `GazetteerCacheError` if it is unusable."""
        return cls(_load(Path(path)))

    @classmethod
    def load_or_build(cls, pbf_path: str | os.PathLike[str], cache_path: str | os.PathLike[str]) -> Gazetteer:
        """The cache when it was built from this very extract (by content hash), else a rebuild.

        A rebuilt gazetteer is saved to `cache_path` for the next start.
        """
        pbf, cache = Path(pbf_path), Path(cache_path)
        if cache.exists():
            try:
                tables = _load(cache)
                if tables.source.get("sha256") == _fingerprint(pbf)["sha256"]:
                    return cls(tables)
            except GazetteerCacheError:
                pass  # a stale or damaged cache is rebuilt, which is what the caller asked for
        built = cls.from_osm(pbf)
        built.save(cache)
        return built

    @property
    def stats(self) -> Mapping[str, int]:
        """How many of each thing the gazetteer holds."""
        return {
            "addresses": len(self._t.addr_street),
            "address_points": len(self._t.point_lat),
            "streets": len(self._t.street_names),
            "street_lines": len(self._t.line_street),
            "places": len(self._t.place_names),
        }

    def addresses(self) -> Iterator[GeocodeResult]:
        """Every address at its point (score 100), in build order; e.g. to put demo incidents at
        real addresses, or to check a build."""
        t = self._t
        for a in range(len(t.addr_street)):
            point = Point(float(t.addr_lat[a]), float(t.addr_lon[a]))
            yield GeocodeResult(label=self._address_label(a), point=point, kind="address", score=100.0)

    # --- labels -----------------------------------------------------------------------------------

    def _address_label(self, a: int) -> str:
        t = self._t
        locality = " ".join(x for x in (t.addr_postcode[a], t.addr_city[a]) if x)
        head = f"{t.addr_street[a]} {t.addr_number[a]}"
        return f"{head}, {locality}" if locality else head

    def _street_label(self, s: int) -> str:
        city = self._t.street_city[s]
        name = self._t.street_names[s][0]
        return f"{name}, {city}" if city else name

    def _place_label(self, p: int) -> str:
        a = int(self._t.place_addr[p])
        name = self._t.place_names[p][0]
        return f"{name}, {self._address_label(a)}" if a >= 0 else name

    # --- forward ----------------------------------------------------------------------------------

    def _locality(self, wanted: tuple[str, ...], city: str, postcode: str) -> float:
        """Factor for how well a result's place agrees with the query's "…, Helsinki" part."""
        if not wanted:
            return 1.0
        if not city and not postcode:
            return 0.95
        for word in wanted:
            if word == postcode or (city and (word in city.split() or fuzz.ratio(word, city) >= 85)):
                return 1.0
        return 0.8

    def geocode(self, query: str, limit: int = 5) -> list[GeocodeResult]:
        """Addresses, streets and places matching `query`, best first (see module docstring)."""
        text = check_query(query, limit)
        q = parse_query(text)
        t = self._t
        best: dict[tuple[GeocodeKind, str], GeocodeResult] = {}

        def offer(kind: GeocodeKind, label: str, lat: float, lon: float, score: float, category: str = "") -> None:
            if score < MIN_SCORE:
                return
            current = best.get((kind, label))
            if current is None or score > current.score:
                best[(kind, label)] = GeocodeResult(
                    label=label,
                    point=Point(float(lat), float(lon)),
                    kind=kind,
                    score=min(score, 100.0),
                    category=category or None,
                )

        if q.number is not None:
            for k, similarity in _similar(q.key, self._addr_keys).items():
                for a in self._addr_by_number[k].get(q.number.number, ()):
                    fit = self._numbers[a].match(q.number)
                    place = self._locality(q.locality, self._addr_city[a], t.addr_postcode[a])
                    label = self._address_label(a)
                    offer("address", label, t.addr_lat[a], t.addr_lon[a], similarity * fit * place)
        # Without a matching number the street itself is the answer, ranked below real addresses.
        street_factor = 1.0 if q.number is None else 0.8
        for k, similarity in _similar(q.key, self._street_keys).items():
            for s in self._street_members[k]:
                place = self._locality(q.locality, fold(t.street_city[s]), "")
                score = similarity * street_factor * place
                offer("street", self._street_label(s), t.street_lat[s], t.street_lon[s], score)
        # Place names may contain digits ("Route 66"), so they are matched on the whole head.
        for k, similarity in _similar(match_key(text.partition(",")[0]), self._place_keys).items():
            for p in self._place_members[k]:
                a = int(t.place_addr[p])
                place = (
                    self._locality(q.locality, self._addr_city[a], t.addr_postcode[a])
                    if a >= 0
                    else (0.95 if q.locality else 1.0)
                )
                score = similarity * place
                offer("place", self._place_label(p), t.place_lat[p], t.place_lon[p], score, t.place_category[p])

        ranked = sorted(best.values(), key=lambda r: (-r.score, _KIND_ORDER[r.kind], r.label))
        return ranked[:limit]

    # --- reverse ----------------------------------------------------------------------------------

    def reverse(
        self, point: Point, *, address_radius_m: float = 75.0, street_radius_m: float = 300.0
    ) -> GeocodeResult | None:
        """The nearest address within `address_radius_m`, else the nearest street within
        `street_radius_m` (its point is the nearest point on the street), else None.

        The score falls linearly from 100 at distance 0 to 0 at the radius.
        """
        t = self._t
        hit = self._points.nearest(point, address_radius_m)
        if hit is not None:
            i, distance = hit
            return GeocodeResult(
                label=self._address_label(int(t.point_addr[i])),
                point=Point(float(t.point_lat[i]), float(t.point_lon[i])),
                kind="address",
                score=_closeness(distance, address_radius_m),
                distance_m=distance,
            )
        return self._nearest_street(point, street_radius_m)

    def _nearest_street(self, point: Point, radius_m: float) -> GeocodeResult | None:
        candidates = self._line_tree.query(shapely.box(*bbox_around(point, radius_m)))
        if len(candidates) == 0:
            return None
        local = [to_local_metres(self._lines[i], point) for i in candidates.tolist()]
        origin = shapely.Point(0.0, 0.0)
        distances = shapely.distance(origin, np.array(local, dtype=object))
        j = int(np.argmin(distances))
        distance = float(distances[j])
        if distance > radius_m:
            return None
        foot = shapely.line_interpolate_point(local[j], shapely.line_locate_point(local[j], origin))
        street = int(self._t.line_street[candidates[j]])
        return GeocodeResult(
            label=self._street_label(street),
            point=from_local_metres(float(foot.x), float(foot.y), point),
            kind="street",
            score=_closeness(distance, radius_m),
            distance_m=distance,
        )


def _closeness(distance_m: float, radius_m: float) -> float:
    if radius_m <= 0 or not math.isfinite(radius_m):
        return 100.0 if distance_m == 0 else 50.0
    return max(0.0, 100.0 * (1.0 - distance_m / radius_m))
