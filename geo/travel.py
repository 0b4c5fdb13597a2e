"""Travel times: one target to many origins on the road network, and the straight-line fallback.

`RoadTimer.one_to_many` answers "who gets to this incident fastest?" with ONE bounded Dijkstra from
the incident over the reversed graph (`geo.road_graph.SearchGraph`), then reads every unit's
answer out of the distance array with numpy: no Python loop over nodes or units.

Why scipy's ``csgraph.dijkstra`` and not our own: it is compiled (Cython, Fibonacci heap), takes a
``limit`` so the search stops at the time bound, and on a 100,000-node synthetic city it answers a
15-minute-bounded search in a few milliseconds (see ``bench/geo.py`` and ``docs/geo-routing.md``).
A pure-Python heap would be ~100× slower; a C extension of our own would add a build step for no
measured gain. Two scipy limits shape the design: it takes no start offsets and sums duplicate
entries, so the target's position part-way along a link is a virtual node whose two edges are
rewritten per query, and parallel edges are reduced to the cheapest when the graph is built.

Positions are snapped to the nearest point on a road (`geo.snap`): the partial link from a unit's
snapped position to either end, and from the entry end to the incident, is charged at that link's
speed and only in directions the link allows. The stretch between a position and its snapped point
is charged at ``offroad_speed_mps``. Points with no road within ``max_snap_m`` get the straight-line
estimate, labelled ``method="straight_line"`` so a caller can tell.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from geo.coords import Point
from geo.distance import as_arrays, haversine_m
from geo.eta import Method, TravelEstimate
from geo.road_graph import MAX_SEARCH_SECONDS, RoadNetwork, unpack_cost
from geo.route import Route, find_route
from geo.snap import DEFAULT_MAX_SNAP_M, Snap, Snapper, Snaps, along_link_cost, exit_costs, search_ends

# A cached snap: link (as float), fraction, snapped lat, snapped lon, off-road metres.
_SnapRow = tuple[float, float, float, float, float]

DEFAULT_SPEED_MPS = 40.0 / 3.6
"""Straight-line fallback speed: 40 km/h, a typical urban emergency-response average."""

DEFAULT_DETOUR_FACTOR = 1.3
"""Road distance ÷ straight-line distance in a street grid; √2 ≈ 1.41 is the worst case of a
perfect grid, measured city networks average 1.2–1.4."""

DEFAULT_OFFROAD_SPEED_MPS = 15.0 / 3.6
"""Speed over the gap between a position and the road it snaps to (yards, driveways, GPS error)."""


class StraightLineTimer:
    """The fallback `TravelTimer`: great-circle distance × detour factor at a stated speed."""

    def __init__(
        self,
        speed_mps: float = DEFAULT_SPEED_MPS,
        detour_factor: float = DEFAULT_DETOUR_FACTOR,
    ) -> None:
        if not speed_mps > 0:
            raise ValueError("speed_mps must be positive")
        if not detour_factor >= 1.0:
            raise ValueError("detour_factor must be at least 1")
        self.speed_mps = float(speed_mps)
        self.detour_factor = float(detour_factor)

    def estimate_arrays(
        self,
        target: Point,
        lat: NDArray[np.float64],
        lon: NDArray[np.float64],
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """ETA seconds and estimated road metres for arrays of origins."""
        metres = haversine_m(target, lat, lon) * self.detour_factor
        return metres / self.speed_mps, metres

    def one_to_many(
        self, target: Point, origins: Sequence[Point], max_seconds: float
    ) -> list[TravelEstimate]:
        lat, lon = as_arrays(origins)
        eta, metres = self.estimate_arrays(target, lat, lon)
        return [
            TravelEstimate(True, float(e), float(m), "straight_line")
            if e <= max_seconds
            else TravelEstimate(False, None, None, "straight_line")
            for e, m in zip(eta, metres, strict=True)
        ]


@dataclass(frozen=True)
class Estimates:
    """Vectorised one-to-many answer: per origin, ETA and metres (``inf`` = out of range)."""

    eta_s: NDArray[np.float64]
    distance_m: NDArray[np.float64]
    by_road: NDArray[np.bool_]  # False where the straight-line fallback answered

    def to_list(self, max_seconds: float) -> list[TravelEstimate]:
        out: list[TravelEstimate] = []
        for eta, dist, road in zip(
            self.eta_s.tolist(), self.distance_m.tolist(), self.by_road.tolist(), strict=True
        ):
            method: Method = "road" if road else "straight_line"
            if eta <= max_seconds:
                out.append(TravelEstimate(True, eta, dist, method))
            else:
                out.append(TravelEstimate(False, None, None, method))
        return out


class RoadTimer:
    """The road-network `TravelTimer`, plus `route` for navigation."""

    def __init__(
        self,
        network: RoadNetwork,
        *,
        max_snap_m: float = DEFAULT_MAX_SNAP_M,
        offroad_speed_mps: float = DEFAULT_OFFROAD_SPEED_MPS,
        fallback: StraightLineTimer | None = None,
        snap_cache_size: int = 100_000,
    ) -> None:
        if not offroad_speed_mps > 0:
            raise ValueError("offroad_speed_mps must be positive")
        self.network = network
        self.snapper = Snapper(network)
        self.max_snap_m = float(max_snap_m)
        self.offroad_speed_mps = float(offroad_speed_mps)
        self.fallback = fallback if fallback is not None else StraightLineTimer()
        self._cache_size = snap_cache_size
        self._snap_cache: dict[tuple[float, float], _SnapRow] = {}
        self._cache_lock = threading.Lock()

    def one_to_many(
        self, target: Point, origins: Sequence[Point], max_seconds: float
    ) -> list[TravelEstimate]:
        """Estimates for each origin (same order) to reach ``target`` within ``max_seconds``."""
        lat, lon = as_arrays(origins)
        return self.estimate(target, lat, lon, max_seconds).to_list(max_seconds)

    def estimate(
        self,
        target: Point,
        lat: NDArray[np.float64],
        lon: NDArray[np.float64],
        max_seconds: float,
        origin_snaps: Snaps | None = None,
    ) -> Estimates:
        """The vectorised core of `one_to_many`; pass ``origin_snaps`` to reuse snapped origins."""
        if not 0.0 <= max_seconds <= MAX_SEARCH_SECONDS:  # also rejects NaN
            raise ValueError(f"max_seconds must be within 0..{MAX_SEARCH_SECONDS:.0f}")
        snaps = origin_snaps if origin_snaps is not None else self.snap_origins(lat, lon)
        tsnap = self.snapper.snap(target, self.max_snap_m)
        n = len(lat)
        eta = np.full(n, np.inf)
        dist = np.full(n, np.inf)
        by_road = snaps.link >= 0
        if tsnap is None:
            by_road[:] = False
        else:
            on = np.flatnonzero(by_road)
            e, d = self._road_costs(tsnap, snaps, on, max_seconds)
            eta[on], dist[on] = e, d
        off = np.flatnonzero(~by_road)
        if len(off):
            eta[off], dist[off] = self.fallback.estimate_arrays(target, lat[off], lon[off])
        return Estimates(eta, dist, by_road)

    def snap_origins(self, lat: NDArray[np.float64], lon: NDArray[np.float64]) -> Snaps:
        """Snap origins, remembering each position's snap (most units have not moved since the
        last incident, and a cached snap costs a dict look-up instead of a tree query)."""
        keys = list(zip(lat.tolist(), lon.tolist(), strict=True))
        with self._cache_lock:
            rows = [self._snap_cache.get(k) for k in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = self.snapper.snap_many(lat[missing], lon[missing], self.max_snap_m)
            table = np.column_stack(
                [fresh.link, fresh.fraction, fresh.lat, fresh.lon, fresh.offroad_m]
            ).tolist()
            with self._cache_lock:
                overflow = len(self._snap_cache) + len(missing) - self._cache_size
                if overflow > 0:  # forget the oldest positions first (dicts keep insert order)
                    for old in list(itertools.islice(self._snap_cache, overflow)):
                        del self._snap_cache[old]
                for i, row in zip(missing, table, strict=True):
                    tup = (row[0], row[1], row[2], row[3], row[4])
                    rows[i] = tup
                    if len(self._snap_cache) < self._cache_size:
                        self._snap_cache[keys[i]] = tup
        arr = np.array(rows, np.float64).reshape(len(keys), 5)
        return Snaps(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4])

    def _road_costs(
        self, tsnap: Snap, snaps: Snaps, which: NDArray[np.intp], max_seconds: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        net = self.network
        t_off_s = tsnap.offroad_m / self.offroad_speed_mps
        budget = max_seconds - t_off_s
        if budget < 0:
            return np.full(len(which), np.inf), np.full(len(which), np.inf)
        packed = self.network.search.search_to(search_ends(net, tsnap), budget)[0]

        link = snaps.link[which]
        g = snaps.fraction[which]
        exit_v, exit_u = exit_costs(net, link, g)
        via_v = packed[net.link_v[link]] + exit_v
        via_u = packed[net.link_u[link]] + exit_u
        best = np.fmin(via_v, via_u)
        same = np.flatnonzero(link == tsnap.link)
        if len(same):
            best[same] = np.fmin(best[same], along_link_cost(net, tsnap, g[same]))
        seconds, metres = unpack_cost(best)
        o_off = snaps.offroad_m[which]
        seconds = seconds + (o_off + tsnap.offroad_m) / self.offroad_speed_mps
        metres = metres + o_off + tsnap.offroad_m
        return seconds, metres

    def route(self, start: Point, end: Point) -> Route:
        """The quickest route by road from ``start`` to ``end`` (raises `NoRouteError`)."""
        return find_route(
            self.network, self.snapper, start, end,
            max_snap_m=self.max_snap_m, offroad_speed_mps=self.offroad_speed_mps,
        )

