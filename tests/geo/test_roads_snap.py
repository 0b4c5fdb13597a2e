"""Snapping points onto road links: projection onto segments, vectorised, bounded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geo.coords import EARTH_RADIUS_M, Point
from geo.road_graph import RoadNetwork, haversine_pairs_m
from geo.snap import DEFAULT_MAX_SNAP_M, Snapper, routable_links

HELSINKI = Path(__file__).resolve().parents[2] / "data" / "osm" / "helsinki-center.osm.pbf"


@pytest.fixture(scope="module")
def net() -> RoadNetwork:
    return RoadNetwork.from_pbf(HELSINKI)


@pytest.fixture(scope="module")
def snapper(net: RoadNetwork) -> Snapper:
    return Snapper(net)


def _longest_straight_segment(net: RoadNetwork) -> tuple[int, Point, Point]:
    """The longest shape segment of any link, as (link, start, end)."""
    lat, lon = net.shape_lat, net.shape_lon
    seg = haversine_pairs_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
    link_of = np.repeat(np.arange(net.link_count), np.diff(net.shape_ptr))
    seg[link_of[:-1] != link_of[1:]] = 0  # pairs that straddle two links are not segments
    seg[~routable_links(net)[link_of[:-1]]] = 0  # clipped border fragments are not snapped to
    i = int(np.argmax(seg))
    assert seg[i] > 60
    return int(link_of[i]), Point(lat=lat[i], lon=lon[i]), Point(lat=lat[i + 1], lon=lon[i + 1])


def _offset(p: Point, q: Point, along: float, side_m: float) -> tuple[Point, Point]:
    """The point ``along`` (0..1) from p to q, and one ``side_m`` metres to its left."""
    ky = math.radians(1) * EARTH_RADIUS_M
    kx = ky * math.cos(math.radians(p.lat))
    dx, dy = (q.lon - p.lon) * kx, (q.lat - p.lat) * ky
    n = math.hypot(dx, dy)
    mx, my = dx * along, dy * along
    foot = Point(lat=p.lat + my / ky, lon=p.lon + mx / kx)
    side = Point(lat=p.lat + (my + dx / n * side_m) / ky, lon=p.lon + (mx - dy / n * side_m) / kx)
    return foot, side


def test_snaps_to_the_interior_of_a_segment_not_a_node(net: RoadNetwork, snapper: Snapper) -> None:
    link, p, q = _longest_straight_segment(net)
    foot, beside = _offset(p, q, 0.5, 8.0)
    snap = snapper.snap(beside)
    assert snap is not None
    assert snap.link == link
    assert 0.0 < snap.fraction < 1.0
    assert snap.offroad_m == pytest.approx(8.0, abs=0.3)
    assert haversine_pairs_m(snap.position.lat, snap.position.lon, foot.lat, foot.lon) < 0.3
    # The snapped position is mid-segment: not any node, nor a shape point of its link.
    to_nodes = haversine_pairs_m(net.node_lat, net.node_lon, snap.position.lat, snap.position.lon)
    assert to_nodes.min() > 10
    shape = net.link_shape(link)
    assert min(haversine_pairs_m(s.lat, s.lon, foot.lat, foot.lon) for s in shape) > 25


def test_vectorised_matches_one_by_one(snapper: Snapper, net: RoadNetwork) -> None:
    rng = np.random.default_rng(7)
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    lat = rng.uniform(min_lat, max_lat, 200)
    lon = rng.uniform(min_lon, max_lon, 200)
    many = snapper.snap_many(lat, lon)
    for i in range(0, 200, 17):
        one = snapper.snap(Point(lat=lat[i], lon=lon[i]))
        assert one == many.get(i)
    assert (many.link >= 0).all()
    assert (many.offroad_m <= DEFAULT_MAX_SNAP_M).all()
    assert np.median(many.offroad_m) < 60  # the bounding box includes harbour water


def test_far_points_do_not_snap(snapper: Snapper) -> None:
    assert snapper.snap(Point(lat=60.30, lon=24.90)) is None  # ~15 km north
    near = snapper.snap(Point(lat=60.17, lon=24.94), max_distance_m=1.0)
    assert near is None or near.offroad_m <= 1.0
    many = snapper.snap_many([60.30, 60.17], [24.90, 24.94])
    assert many.link[0] == -1 and math.isinf(many.offroad_m[0]) and many.get(0) is None
    assert many.link[1] >= 0


def test_clipped_fragments_are_not_snapped_to(net: RoadNetwork, snapper: Snapper) -> None:
    routable = routable_links(net)
    assert 0.8 * net.link_count < routable.sum() < net.link_count
    fragment = int(np.flatnonzero(~routable)[0])
    on_it = net.link_shape(fragment)[0]
    snap = snapper.snap(on_it)
    assert snap is not None and routable[snap.link]


def test_empty_input(snapper: Snapper) -> None:
    assert len(snapper.snap_many([], [])) == 0
