"""The road network: compact arrays of nodes and links, its disk cache, and the bounded search.

Model
-----
A **node** is a junction or a dead end (an OSM node shared by two drivable ways, or a way's end).
A **link** is the road between two nodes, with its full shape (the OSM nodes in between are shape
points, not graph nodes, which keeps the search graph 3–5× smaller than one vertex per OSM node).
Each link has a travel time per direction (``inf`` where that direction is closed: one-way streets),
a length, a road class and a street name (an index into one string table).

The **search graph** is built once from the links: a CSR matrix of the *reversed* graph, so that a
single Dijkstra from the target answers "how long from every node to here" — the one-to-many
question of dispatch. Its weights pack two integers into one float64: travel time in milliseconds
in the high bits and length in decimetres in the low 26 bits. Sums of integers below 2**53 are exact
in float64, so one search yields both the time of the quickest path and that path's length, with
ties in time broken by the shorter path; no predecessor walk is needed on the hot path.

Every array lives in a single ``.npz`` cache (`RoadNetwork.save` / `RoadNetwork.load`), stamped with
a format version, the source file's SHA-256 and the speed profile's fingerprint, so a stale cache is
rebuilt by `load_or_build` rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from scipy.sparse.csgraph import dijkstra

from geo.coords import EARTH_RADIUS_M, Point

if TYPE_CHECKING:
    from geo.osm_roads import RoadProfile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# The classes a link can have, in a fixed order: a link stores the index (uint8). Appending keeps
# old caches readable; reordering needs a FORMAT_VERSION bump.
ROAD_CLASSES: tuple[str, ...] = (
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
    "track",
    "pedestrian",
    "busway",
    "other",
)
CLASS_CODE: dict[str, int] = {name: i for i, name in enumerate(ROAD_CLASSES)}

# Packed search weights: time in ms << LENGTH_BITS | length in dm. 27 bits of milliseconds (37 h)
# plus 26 bits of decimetres (6,710 km) fill float64's 53-bit exact-integer range.
LENGTH_BITS = 26
_LEN_SCALE = float(1 << LENGTH_BITS)
MAX_SEARCH_SECONDS = 24 * 3600.0  # 24 h at 180 km/h is 4,320 km: within the 26 length bits
MAX_SPEED_KMH = 180.0


class RoadNetworkError(Exception):
    """The road network cannot be built or loaded; the message says which file and why."""


FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def haversine_pairs_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> FloatArray:
    """Great-circle metres between paired arrays of points (element-wise; degrees in).

    `geo.distance.haversine_m` measures from one point to many; road shapes and snaps need the
    distance between the i-th points of two arrays, which is this.
    """
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return np.asarray(2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))), np.float64)


def pack_cost(seconds: Any, metres: Any) -> FloatArray:
    """Pack travel time and length into exact search weights (see the module docstring)."""
    ms = np.rint(np.asarray(seconds, np.float64) * 1000.0)
    dm = np.rint(np.asarray(metres, np.float64) * 10.0)
    return np.asarray(ms * _LEN_SCALE + dm, np.float64)


def unpack_cost(packed: Any) -> tuple[FloatArray, FloatArray]:
    """Seconds and metres from packed search weights; ``inf`` stays ``inf`` in both."""
    packed = np.asarray(packed, np.float64)
    finite = np.isfinite(packed)
    safe = np.where(finite, packed, 0.0)
    ms = np.floor(safe / _LEN_SCALE)
    dm = safe - ms * _LEN_SCALE
    inf = np.float64(np.inf)
    return np.where(finite, ms / 1000.0, inf), np.where(finite, dm / 10.0, inf)


@dataclass(frozen=True)
class WaySet:
    """Drivable ways before splitting at junctions: what a source (OSM, synthetic) hands over.

    Way ``w`` has points ``way_ptr[w]:way_ptr[w+1]`` of the flat ``node_id``/``lat``/``lon`` arrays;
    a node id shared between ways (or repeated within one) is a junction. ``fwd_kmh``/``bwd_kmh``
    are the speeds along and against the way's node order, 0 where that direction is closed.
    """

    node_id: IntArray
    lat: FloatArray
    lon: FloatArray
    way_ptr: IntArray
    way_id: IntArray
    fwd_kmh: NDArray[np.float32]
    bwd_kmh: NDArray[np.float32]
    road_class: NDArray[np.uint8]
    name_id: NDArray[np.int32]
    names: tuple[str, ...]  # names[0] == "" (unnamed)


@dataclass(frozen=True, eq=False)
class RoadNetwork:
    """A directed drivable road network, as compact arrays (see the module docstring)."""

    node_lat: FloatArray
    node_lon: FloatArray
    node_osm_id: IntArray
    link_u: NDArray[np.int32]
    link_v: NDArray[np.int32]
    link_length_m: NDArray[np.float32]
    link_fwd_s: NDArray[np.float32]  # u→v travel seconds; inf = closed (one-way against)
    link_bwd_s: NDArray[np.float32]  # v→u travel seconds; inf = closed
    link_class: NDArray[np.uint8]
    link_name: NDArray[np.int32]
    link_way_id: IntArray
    shape_ptr: IntArray  # link i's shape is shape_lat/lon[shape_ptr[i]:shape_ptr[i+1]], u to v
    shape_lat: FloatArray
    shape_lon: FloatArray
    names: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_ways(cls, ways: WaySet, meta: dict[str, Any] | None = None) -> RoadNetwork:
        """Split ways at junctions into links and index the junctions as nodes."""
        n_ways = len(ways.way_id)
        if n_ways == 0 or len(ways.node_id) < 2:
            raise RoadNetworkError("no drivable roads")
        counts = np.diff(ways.way_ptr)
        way_of = np.repeat(np.arange(n_ways), counts)
        # A junction is any node used twice (by two ways, or twice by one way: a loop), plus every
        # way's first and last node.
        _, inverse, uses = np.unique(ways.node_id, return_inverse=True, return_counts=True)
        is_node = uses[inverse] >= 2
        is_node[ways.way_ptr[:-1]] = True
        is_node[ways.way_ptr[1:] - 1] = True
        pos = np.flatnonzero(is_node)
        same_way = way_of[pos[:-1]] == way_of[pos[1:]]
        start, end = pos[:-1][same_way], pos[1:][same_way]
        link_way = way_of[start]
        # Ways of a single point give no link; what remains must not be empty.
        if len(start) == 0:
            raise RoadNetworkError("no drivable roads (every way has fewer than two points)")

        node_ids, node_index = np.unique(ways.node_id[pos], return_index=True)
        node_lat = ways.lat[pos][node_index]
        node_lon = ways.lon[pos][node_index]
        link_u = np.searchsorted(node_ids, ways.node_id[start]).astype(np.int32)
        link_v = np.searchsorted(node_ids, ways.node_id[end]).astype(np.int32)

        # Shapes: the flat points start..end inclusive, for each link.
        n_pts = (end - start + 1).astype(np.int64)
        shape_ptr = np.zeros(len(start) + 1, np.int64)
        np.cumsum(n_pts, out=shape_ptr[1:])
        gather = np.repeat(start - shape_ptr[:-1], n_pts) + np.arange(shape_ptr[-1])
        shape_lat = ways.lat[gather]
        shape_lon = ways.lon[gather]

        step = haversine_pairs_m(ways.lat[:-1], ways.lon[:-1], ways.lat[1:], ways.lon[1:])
        cum = np.concatenate([[0.0], np.cumsum(step)])
        length = cum[end] - cum[start]
        # A zero-length link (duplicate points) still needs a positive weight for the search.
        length = np.maximum(length, 0.1).astype(np.float32)

        def seconds(kmh: NDArray[np.float32]) -> NDArray[np.float32]:
            speed = kmh[link_way].astype(np.float64) / 3.6
            with np.errstate(divide="ignore"):
                s = np.where(speed > 0, length / np.where(speed > 0, speed, 1.0), np.inf)
            return s.astype(np.float32)

        return cls(
            node_lat=node_lat.astype(np.float64),
            node_lon=node_lon.astype(np.float64),
            node_osm_id=node_ids.astype(np.int64),
            link_u=link_u,
            link_v=link_v,
            link_length_m=length,
            link_fwd_s=seconds(ways.fwd_kmh),
            link_bwd_s=seconds(ways.bwd_kmh),
            link_class=ways.road_class[link_way].astype(np.uint8),
            link_name=ways.name_id[link_way].astype(np.int32),
            link_way_id=ways.way_id[link_way].astype(np.int64),
            shape_ptr=shape_ptr,
            shape_lat=shape_lat.astype(np.float64),
            shape_lon=shape_lon.astype(np.float64),
            names=ways.names,
            meta=dict(meta or {}),
        )

    @classmethod
    def from_pbf(
        cls, path: str | os.PathLike[str], profile: RoadProfile | None = None
    ) -> RoadNetwork:
        """Build from an OpenStreetMap PBF extract (drivable roads for emergency vehicles)."""
        from geo.osm_roads import DEFAULT_PROFILE, read_pbf

        prof = profile or DEFAULT_PROFILE
        ways, stats = read_pbf(path, prof)
        meta = {
            "source": os.fspath(path),
            "source_sha256": file_sha256(path),
            "profile": prof.fingerprint(),
            "stats": stats,
        }
        net = cls.from_ways(ways, meta)
        if not np.isfinite(np.minimum(net.link_fwd_s, net.link_bwd_s)).any():
            raise RoadNetworkError(f"{os.fspath(path)}: no road is open in either direction")
        return net

    # --- sizes and look-ups ------------------------------------------------------------------
    @property
    def node_count(self) -> int:
        return len(self.node_lat)

    @property
    def link_count(self) -> int:
        return len(self.link_u)

    @property
    def edge_count(self) -> int:
        """Directed edges (a two-way link counts twice)."""
        return int(np.isfinite(self.link_fwd_s).sum() + np.isfinite(self.link_bwd_s).sum())

    def array_bytes(self) -> int:
        """Bytes held by the network's arrays, including the search graph once built."""
        total = sum(a.nbytes for a in self._arrays().values())
        if "search" in self.__dict__:
            total += self.search.nbytes
        return total + sum(len(s.encode()) for s in self.names)

    def node_point(self, node: int) -> Point:
        return Point(lat=float(self.node_lat[node]), lon=float(self.node_lon[node]))

    def link_shape(self, link: int) -> list[Point]:
        """The link's points from its ``u`` end to its ``v`` end."""
        a, b = int(self.shape_ptr[link]), int(self.shape_ptr[link + 1])
        return [
            Point(lat=float(la), lon=float(lo))
            for la, lo in zip(self.shape_lat[a:b], self.shape_lon[a:b], strict=True)
        ]

    def link_street(self, link: int) -> str:
        return self.names[int(self.link_name[link])]

    def link_road_class(self, link: int) -> str:
        return ROAD_CLASSES[int(self.link_class[link])]

    def bbox(self) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)`` of all shape points."""
        return (
            float(self.shape_lon.min()),
            float(self.shape_lat.min()),
            float(self.shape_lon.max()),
            float(self.shape_lat.max()),
        )

    @cached_property
    def search(self) -> SearchGraph:
        """The reversed search graph, built on first use (tens of milliseconds per 100k nodes)."""
        return SearchGraph(self)

    # --- disk cache --------------------------------------------------------------------------
    _ARRAY_FIELDS = (
        "node_lat",
        "node_lon",
        "node_osm_id",
        "link_u",
        "link_v",
        "link_length_m",
        "link_fwd_s",
        "link_bwd_s",
        "link_class",
        "link_name",
        "link_way_id",
        "shape_ptr",
        "shape_lat",
        "shape_lon",
    )

    def _arrays(self) -> dict[str, NDArray[Any]]:
        return {name: getattr(self, name) for name in self._ARRAY_FIELDS}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the network to one ``.npz`` file, atomically (a reader never sees half a file)."""
        target = Path(path)
        encoded = [s.encode("utf-8") for s in self.names]
        name_ptr = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=name_ptr[1:])
        header = {"format_version": FORMAT_VERSION, **self.meta}
        arrays = {
            **self._arrays(),
            "names_blob": np.frombuffer(b"".join(encoded), np.uint8),
            "names_ptr": name_ptr,
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The cache file's header (format version, source checksum, profile) without the arrays."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header: dict[str, Any] = json.loads(bytes(z["header"]).decode())
                return header
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise RoadNetworkError(f"{os.fspath(path)}: not a road network cache ({e})") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RoadNetwork:
        """Read a network written by `save`; a wrong version or damaged file is an error."""
        where = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format_version") != FORMAT_VERSION:
                    raise RoadNetworkError(
                        f"{where}: cache format {header.get('format_version')}, "
                        f"expected {FORMAT_VERSION}"
                    )
                arrays = {name: z[name] for name in cls._ARRAY_FIELDS}
                blob = bytes(z["names_blob"])
                ptr = z["names_ptr"]
        except RoadNetworkError:
            raise
        except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as e:
            raise RoadNetworkError(f"{where}: not a road network cache ({e})") from e
        names = tuple(blob[ptr[i] : ptr[i + 1]].decode("utf-8") for i in range(len(ptr) - 1))
        header.pop("format_version")
        net = cls(**arrays, names=names, meta=header)
        net._check()
        return net

    def _check(self) -> None:
        """Cheap consistency checks so a truncated or mixed-up cache fails loudly, not later."""
        n, m = self.node_count, self.link_count
        ok = (
            len(self.node_lon) == n == len(self.node_osm_id)
            and all(
                len(getattr(self, f)) == m
                for f in self._ARRAY_FIELDS
                if f.startswith("link_")
            )
            and len(self.shape_ptr) == m + 1
            and int(self.shape_ptr[-1]) == len(self.shape_lat) == len(self.shape_lon)
            and (m == 0 or (int(self.link_u.max()) < n and int(self.link_v.max()) < n))
            and (m == 0 or int(self.link_name.max()) < len(self.names))
        )
        if not ok or m == 0:
            raise RoadNetworkError("road network arrays are inconsistent or empty")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in blocks (a country extract is hundreds of megabytes)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise RoadNetworkError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from e
    return h.hexdigest()


def cache_path(pbf: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """Where `load_or_build` keeps the cache for one extract."""
    name = Path(pbf).name
    for suffix in (".osm.pbf", ".pbf"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(cache_dir) / f"{name}.roads.npz"


def load_or_build(
    pbf: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    profile: RoadProfile | None = None,
) -> RoadNetwork:
    """Load the cached network for ``pbf``, or build and cache it when absent or stale.

    Stale means another format version, another source checksum or another speed profile. A damaged
    cache is rebuilt (and logged); a missing or unusable PBF is a `RoadNetworkError`.
    """
    from geo.osm_roads import DEFAULT_PROFILE

    prof = profile or DEFAULT_PROFILE
    cache = cache_path(pbf, cache_dir)
    digest = file_sha256(pbf)
    if cache.exists():
        try:
            header = RoadNetwork.read_header(cache)
            if (
                header.get("format_version") == FORMAT_VERSION
                and header.get("source_sha256") == digest
                and header.get("profile") == prof.fingerprint()
            ):
                return RoadNetwork.load(cache)
            log.info("road cache %s is stale; rebuilding from %s", cache, pbf)
        except RoadNetworkError as e:
            log.warning("road cache %s is unusable (%s); rebuilding from %s", cache, e, pbf)
    net = RoadNetwork.from_pbf(pbf, prof)
    net.save(cache)
    return net


class SearchGraph:
    """The reversed CSR graph with one spare "virtual target" row, and the bounded Dijkstra on it.

    Row ``N`` (one past the last node) is the virtual target: a point part-way along a link. Its two
    out-edges (to the link's ends, in the reversed graph) are rewritten per search, under a lock, so
    one matrix serves every query without copying its million-entry arrays.
    """

    def __init__(self, net: RoadNetwork) -> None:
        n = net.node_count
        fwd = np.isfinite(net.link_fwd_s)
        bwd = np.isfinite(net.link_bwd_s)
        links = np.arange(net.link_count, dtype=np.int64)
        # Forward edge u→v is the reversed edge v→u (row v, column u), and vice versa.
        rows = np.concatenate([net.link_v[fwd], net.link_u[bwd]]).astype(np.int64)
        cols = np.concatenate([net.link_u[fwd], net.link_v[bwd]]).astype(np.int64)
        cost = np.concatenate(
            [
                pack_cost(net.link_fwd_s[fwd], net.link_length_m[fwd]),
                pack_cost(net.link_bwd_s[bwd], net.link_length_m[bwd]),
            ]
        )
        # Signed link reference: link+1 travelled u→v, -(link+1) travelled v→u.
        ref = np.concatenate([links[fwd] + 1, -(links[bwd] + 1)])
        # Self-loops never shorten a path; parallel edges keep only the cheapest (scipy would sum
        # duplicate entries), so a route can recover exactly the link the search used.
        keep = rows != cols
        rows, cols, cost, ref = rows[keep], cols[keep], cost[keep], ref[keep]
        order = np.lexsort((cost, cols, rows))
        rows, cols, cost, ref = rows[order], cols[order], cost[order], ref[order]
        first = np.ones(len(rows), bool)
        first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        rows, cols, cost, ref = rows[first], cols[first], cost[first], ref[first]

        indptr = np.zeros(n + 2, np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1 : n + 1])
        indptr[n + 1] = indptr[n] + 2
        indices = np.concatenate([cols, [n, n]]).astype(np.int32)
        data = np.concatenate([cost, [1.0, 1.0]]).astype(np.float64)
        self.node_count = n
        self.matrix = scipy.sparse.csr_matrix((data, indices, indptr), shape=(n + 1, n + 1))
        self.edge_ref: NDArray[np.int64] = ref
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        m = self.matrix
        return int(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes + self.edge_ref.nbytes)

    def search_to(
        self,
        ends: Sequence[tuple[int, float]],
        max_seconds: float,
        predecessors: bool = False,
    ) -> tuple[FloatArray, NDArray[np.int32] | None]:
        """Packed costs from every node to a virtual target reached via ``ends``.

        ``ends`` holds up to two ``(node, packed cost from node to the target)`` pairs. Nodes beyond
        ``max_seconds`` get ``inf``. With ``predecessors``, also the next node toward the target
        for each node (``N`` = the virtual target itself, -9999 = unreached).
        """
        if not 0 <= max_seconds <= MAX_SEARCH_SECONDS:
            raise ValueError(f"max_seconds must be within 0..{MAX_SEARCH_SECONDS:.0f}")
        n = self.node_count
        slots = list(ends)[:2]
        while len(slots) < 2:
            slots.append((n, 1.0))  # a harmless self-loop on the virtual row
        limit = (math.floor(max_seconds * 1000.0) + 1) * _LEN_SCALE - 1.0
        m = self.matrix
        with self._lock:
            m.indices[-2:] = [slots[0][0], slots[1][0]]
            m.data[-2:] = [slots[0][1], slots[1][1]]
            if predecessors:
                dist, pred = dijkstra(
                    m, directed=True, indices=n, limit=limit, return_predecessors=True
                )
                return np.asarray(dist, np.float64), np.asarray(pred, np.int32)
            dist = dijkstra(m, directed=True, indices=n, limit=limit)
        return np.asarray(dist, np.float64), None

    def edge_link(self, from_node: int, to_node: int) -> int:
        """Signed link ref (see ``edge_ref``) of the forward edge ``from_node → to_node`` used."""
        m = self.matrix
        a, b = int(m.indptr[to_node]), int(m.indptr[to_node + 1])
        hits = np.flatnonzero(m.indices[a:b] == from_node)
        if len(hits) == 0:
            raise KeyError(f"no edge {from_node} -> {to_node}")
        return int(self.edge_ref[a + int(hits[0])])

