"""Routes for navigation: the quickest road path between two points, with shape, time and streets.

A route uses the same search as the ETAs (one Dijkstra towards the destination on the reversed
graph, here with predecessors), so the time a route shows is the ETA a unit was ranked by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geo.coords import Point
from geo.road_graph import (
    MAX_SEARCH_SECONDS,
    RoadNetwork,
    haversine_pairs_m,
    unpack_cost,
)
from geo.snap import Snap, Snapper, along_link_cost, entry_costs, exit_costs, search_ends

_SAME_POINT_M = 0.5  # closer than this, the off-road connector is not drawn


class NoRouteError(LookupError):
    """No road route joins the two points (off the network, or no legal path within the bound)."""


@dataclass(frozen=True)
class Route:
    """A drivable route: its shape from start to end, length, time and streets in order.

    ``streets`` lists street names (or refs) as driven, unnamed links left out and consecutive
    repeats merged. The shape begins and ends at the given points when they lie off the road.
    """

    points: tuple[Point, ...]
    length_m: float
    time_s: float
    streets: tuple[str, ...]

    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON Feature: the LineString, with length, time and streets as properties."""
        return {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [p.to_lonlat() for p in self.points]},
            "properties": {
                "length_m": round(self.length_m, 1),
                "time_s": round(self.time_s, 1),
                "streets": list(self.streets),
            },
        }


def find_route(
    net: RoadNetwork,
    snapper: Snapper,
    start: Point,
    end: Point,
    *,
    max_snap_m: float,
    offroad_speed_mps: float,
    max_seconds: float = MAX_SEARCH_SECONDS,
) -> Route:
    """The quickest route from ``start`` to ``end``; raises `NoRouteError` when there is none."""
    s = _snap(snapper, start, max_snap_m, "start")
    e = _snap(snapper, end, max_snap_m, "end")
    search = net.search
    enter_u, enter_v = entry_costs(net, e)
    dist, pred = search.search_to(search_ends(net, e), max_seconds, predecessors=True)
    assert pred is not None

    link, g = s.link, s.fraction
    u, v = int(net.link_u[link]), int(net.link_v[link])
    exit_v, exit_u = exit_costs(net, np.array([link]), np.array([g]))
    options = [(float(dist[v] + exit_v[0]), "v"), (float(dist[u] + exit_u[0]), "u")]
    if link == e.link:
        options.append((float(along_link_cost(net, e, np.array([g]))[0]), "direct"))
    best, how = min(options)
    if not np.isfinite(best):
        raise NoRouteError(f"no road route from {start} to {end}")

    points: list[Point] = []
    links: list[int] = [link]

    def add(p: Point) -> None:
        if not points or points[-1] != p:
            points.append(p)

    if s.offroad_m > _SAME_POINT_M:
        add(start)
    add(s.position)
    if how == "direct":
        for p in _piece(net, link, g, e.fraction):
            add(p)
    else:
        for p in _piece(net, link, g, 1.0 if how == "v" else 0.0):
            add(p)
        node = v if how == "v" else u
        virtual = net.node_count
        while int(pred[node]) != virtual:
            nxt = int(pred[node])
            ref = search.edge_link(node, nxt)
            step = abs(ref) - 1
            shape = net.link_shape(step)
            for p in shape if ref > 0 else shape[::-1]:
                add(p)
            links.append(step)
            node = nxt
        # The search entered the destination link at ``node``; on a loop link (u == v) either
        # end is that node, and the cheaper entry is the one taken.
        eu, ev = int(net.link_u[e.link]), int(net.link_v[e.link])
        from_u = node == eu if eu != ev else enter_u <= enter_v
        for p in _piece(net, e.link, 0.0 if from_u else 1.0, e.fraction):
            add(p)
        links.append(e.link)
    add(e.position)
    if e.offroad_m > _SAME_POINT_M:
        add(end)

    seconds, metres = unpack_cost(np.array([best]))
    offroad = s.offroad_m + e.offroad_m
    return Route(
        points=tuple(points),
        length_m=float(metres[0]) + offroad,
        time_s=float(seconds[0]) + offroad / offroad_speed_mps,
        streets=_streets(net, links),
    )


def _piece(net: RoadNetwork, link: int, a: float, b: float) -> list[Point]:
    """Shape points of ``link`` strictly between fractions ``a`` and ``b``, in that order, plus
    the end node when ``b`` is 0 or 1."""
    lo, hi = int(net.shape_ptr[link]), int(net.shape_ptr[link + 1])
    lat, lon = net.shape_lat[lo:hi], net.shape_lon[lo:hi]
    steps = haversine_pairs_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    frac = cum / cum[-1] if cum[-1] > 0 else np.linspace(0.0, 1.0, len(cum))
    idx = np.arange(len(frac))
    ahead = b >= a
    chosen = idx[(frac > a) & (frac < b)] if ahead else idx[(frac < a) & (frac > b)][::-1]
    out = [Point(lat=float(lat[i]), lon=float(lon[i])) for i in chosen]
    if b in (0.0, 1.0):
        i = 0 if b == 0.0 else len(lat) - 1
        out.append(Point(lat=float(lat[i]), lon=float(lon[i])))
    return out


def _streets(net: RoadNetwork, links: list[int]) -> tuple[str, ...]:
    names: list[str] = []
    for link in links:
        name = net.link_street(link)
        if name and (not names or names[-1] != name):
            names.append(name)
    return tuple(names)


def _snap(snapper: Snapper, point: Point, max_snap_m: float, what: str) -> Snap:
    """Snap ``point`` or raise `NoRouteError` naming it (``what`` is "start" or "end")."""
    snap = snapper.snap(point, max_snap_m)
    if snap is None:
        raise NoRouteError(f"{what} {point} is more than {max_snap_m:.0f} m from any road")
    return snap
