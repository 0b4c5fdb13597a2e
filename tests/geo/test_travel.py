"""Travel times and routes on the Helsinki extract and a small synthetic city."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import dijkstra

from geo.coords import Point, geodesic_m
from geo.eta import TravelTimer
from geo.road_graph import MAX_SEARCH_SECONDS, RoadNetwork, haversine_pairs_m
from geo.route import NoRouteError
from geo.snap import routable_links
from geo.synthetic_city import CityPlan, synthetic_city
from geo.travel import DEFAULT_DETOUR_FACTOR, DEFAULT_SPEED_MPS, RoadTimer, StraightLineTimer

HELSINKI = Path(__file__).resolve().parents[2] / "data" / "osm" / "helsinki-center.osm.pbf"
BBOX = (24.9352, 60.1642, 24.9534, 60.1791)  # min_lon, min_lat, max_lon, max_lat
HOUR = 3600.0


@pytest.fixture(scope="module")
def net() -> RoadNetwork:
    return RoadNetwork.from_pbf(HELSINKI)


@pytest.fixture(scope="module")
def timer(net: RoadNetwork) -> RoadTimer:
    return RoadTimer(net)


def _eta(timer: RoadTimer, origin: Point, target: Point) -> float:
    est = timer.one_to_many(target, [origin], HOUR)[0]
    return est.eta_s if est.eta_s is not None else math.inf


def _along(net: RoadNetwork, link: int, f: float) -> Point:
    """A point at fraction ``f`` of a two-point link (straight between its nodes)."""
    u, v = int(net.link_u[link]), int(net.link_v[link])
    return Point(
        lat=net.node_lat[u] + f * (net.node_lat[v] - net.node_lat[u]),
        lon=net.node_lon[u] + f * (net.node_lon[v] - net.node_lon[u]),
    )


def test_road_timer_is_a_travel_timer(timer: RoadTimer) -> None:
    implementations: list[TravelTimer] = [timer, StraightLineTimer()]
    assert len(implementations) == 2


def test_one_way_street_is_respected(net: RoadNetwork, timer: RoadTimer) -> None:
    # A straight one-way link at least 40 m long, from the data.
    two_points = np.diff(net.shape_ptr) == 2
    one_way = np.isfinite(net.link_fwd_s) & np.isinf(net.link_bwd_s)
    connected = routable_links(net)  # not a clipped dead end at the extract's border
    candidates = np.flatnonzero(two_points & one_way & connected & (net.link_length_m > 40))
    assert len(candidates) > 0
    link = int(candidates[np.argmax(net.link_length_m[candidates])])
    a, b = _along(net, link, 0.2), _along(net, link, 0.8)  # a before b in the allowed direction

    forward = _eta(timer, a, b)
    backward = _eta(timer, b, a)
    expected = 0.6 * float(net.link_fwd_s[link])
    assert forward == pytest.approx(expected, abs=0.5)
    assert backward > forward + 20  # round the block, not against the traffic

    there = timer.route(a, b)
    back = timer.route(b, a)
    assert there.time_s == pytest.approx(forward, abs=1e-3)
    assert back.time_s == pytest.approx(backward, abs=1e-3)
    assert back.length_m > there.length_m
    assert there.streets == (net.link_street(link),) or net.link_street(link) == ""


def _random_points(rng: np.random.Generator, n: int) -> list[Point]:
    lon = rng.uniform(BBOX[0], BBOX[2], n)
    lat = rng.uniform(BBOX[1], BBOX[3], n)
    return [Point(lat=float(la), lon=float(lo)) for la, lo in zip(lat, lon, strict=True)]


def test_routes_are_longer_than_the_crow_flies_but_sane(timer: RoadTimer) -> None:
    rng = np.random.default_rng(11)
    starts, ends = _random_points(rng, 40), _random_points(rng, 40)
    checked = 0
    for a, b in zip(starts, ends, strict=True):
        crow = geodesic_m(a, b)
        r = timer.route(a, b)
        assert r.length_m >= 0.995 * crow  # haversine vs ellipsoid: within 0.5 %
        # The drawn line and the reported length agree.
        lat = np.array([p.lat for p in r.points])
        lon = np.array([p.lon for p in r.points])
        drawn = haversine_pairs_m(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum()
        assert drawn == pytest.approx(r.length_m, rel=0.02, abs=2.0)
        assert r.points[0] == a and r.points[-1] == b
        # The route's time is the ETA the unit would be ranked by.
        assert r.time_s == pytest.approx(_eta(timer, a, b), abs=1e-3)
        if crow > 500:
            assert r.length_m < 3 * crow
            checked += 1
        assert all(r.streets[i] != r.streets[i + 1] for i in range(len(r.streets) - 1))
    assert checked >= 15


def test_route_geojson(timer: RoadTimer) -> None:
    r = timer.route(Point(lat=60.1700, lon=24.9410), Point(lat=60.1660, lon=24.9480))
    feature = r.to_geojson()
    assert feature["geometry"]["type"] == "LineString"
    assert feature["geometry"]["coordinates"][0] == [24.9410, 60.1700]
    assert feature["properties"]["streets"] == list(r.streets)


coordinate = st.tuples(
    st.floats(BBOX[1], BBOX[3], allow_nan=False), st.floats(BBOX[0], BBOX[2], allow_nan=False)
).map(lambda t: Point(lat=t[0], lon=t[1]))


@settings(max_examples=150, deadline=None)
@given(a=coordinate, b=coordinate, c=coordinate)
def test_eta_triangle_inequality(timer: RoadTimer, a: Point, b: Point, c: Point) -> None:
    # Through b, the route a→c is no shorter than a→b then b→c (b's off-road leg is counted on
    # both sides of b, so it only adds slack); 10 ms covers per-link millisecond rounding.
    ac = _eta(timer, a, c)
    ab = _eta(timer, a, b)
    bc = _eta(timer, b, c)
    assert ac <= ab + bc + 0.01


def test_out_of_range_origins_are_answers_not_errors(timer: RoadTimer) -> None:
    target = Point(lat=60.1650, lon=24.9370)  # south-west corner
    origins = [
        Point(lat=60.1651, lon=24.9372),  # a stone's throw
        Point(lat=60.1785, lon=24.9525),  # the opposite corner
        Point(lat=61.0, lon=26.0),  # far off the network: straight-line estimate
    ]
    near, far, off = timer.one_to_many(target, origins, 60.0)
    assert near.in_range and near.method == "road" and near.eta_s is not None
    assert near.eta_s < 60 and near.distance_m is not None
    assert not far.in_range and far.eta_s is None and far.distance_m is None
    assert far.method == "road"
    assert not off.in_range and off.method == "straight_line"

    wide = timer.one_to_many(target, origins, HOUR)
    assert wide[1].in_range and wide[1].eta_s is not None and wide[1].eta_s > 60
    assert wide[2].method == "straight_line" and not wide[2].in_range  # ~100 km away


def test_target_off_the_network_falls_back_visibly(timer: RoadTimer) -> None:
    result = timer.one_to_many(Point(lat=60.30, lon=24.94), [Point(lat=60.17, lon=24.94)], HOUR)
    assert result[0].method == "straight_line" and result[0].in_range


def test_distance_is_along_the_quickest_path(timer: RoadTimer) -> None:
    rng = np.random.default_rng(5)
    target = Point(lat=60.1700, lon=24.9450)
    origins = _random_points(rng, 30)
    estimates = timer.one_to_many(target, origins, HOUR)
    for origin, est in zip(origins, estimates, strict=True):
        assert est.in_range and est.distance_m is not None
        assert est.distance_m == pytest.approx(timer.route(origin, target).length_m, abs=0.05)


def test_bad_bound_is_an_error(timer: RoadTimer) -> None:
    with pytest.raises(ValueError):
        timer.one_to_many(Point(lat=60.17, lon=24.94), [], MAX_SEARCH_SECONDS + 1)
    assert timer.one_to_many(Point(lat=60.17, lon=24.94), [], 60.0) == []


def test_straight_line_timer() -> None:
    timer = StraightLineTimer()
    assert timer.speed_mps == pytest.approx(DEFAULT_SPEED_MPS) and DEFAULT_SPEED_MPS == 40 / 3.6
    a, b = Point(lat=60.17, lon=24.94), Point(lat=60.18, lon=24.96)
    (est,) = timer.one_to_many(a, [b], HOUR)
    crow = geodesic_m(a, b)
    assert est.method == "straight_line" and est.in_range
    assert est.distance_m == pytest.approx(crow * DEFAULT_DETOUR_FACTOR, rel=0.006)
    assert est.eta_s == pytest.approx(est.distance_m / DEFAULT_SPEED_MPS)
    (late,) = timer.one_to_many(a, [b], 10.0)
    assert not late.in_range and late.eta_s is None
    with pytest.raises(ValueError):
        StraightLineTimer(speed_mps=0)
    with pytest.raises(ValueError):
        StraightLineTimer(detour_factor=0.5)


def test_no_route_errors(timer: RoadTimer) -> None:
    with pytest.raises(NoRouteError, match="from any road"):
        timer.route(Point(lat=60.30, lon=24.94), Point(lat=60.17, lon=24.94))


def test_concurrent_queries_agree(timer: RoadTimer) -> None:
    rng = np.random.default_rng(3)
    targets, origins = _random_points(rng, 24), _random_points(rng, 50)
    serial = [timer.one_to_many(t, origins, HOUR) for t in targets]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda t: timer.one_to_many(t, origins, HOUR), targets))
    assert serial == parallel


# --- against a plain reference Dijkstra on a synthetic city ---------------------------------


def test_etas_from_junctions_match_a_reference_dijkstra() -> None:
    city = synthetic_city(CityPlan(rows=18, cols=22, seed=4))
    timer = RoadTimer(city)
    fwd, bwd = np.isfinite(city.link_fwd_s), np.isfinite(city.link_bwd_s)
    src = np.concatenate([city.link_u[fwd], city.link_v[bwd]])
    dst = np.concatenate([city.link_v[fwd], city.link_u[bwd]])
    cost = np.concatenate([city.link_fwd_s[fwd], city.link_bwd_s[bwd]]).astype(np.float64)
    n = city.node_count
    # Reversed graph; for parallel links keep the quickest (a sparse matrix would add them).
    best: dict[tuple[int, int], float] = {}
    for a, b, c in zip(dst.tolist(), src.tolist(), cost.tolist(), strict=True):
        best[(a, b)] = min(c, best.get((a, b), math.inf))
    keys = list(best)
    reverse = scipy.sparse.csr_matrix(
        ([best[k] for k in keys], ([k[0] for k in keys], [k[1] for k in keys])), shape=(n, n)
    )
    junctions = [city.node_point(i) for i in range(n)]
    for target in (0, n // 3, n - 1):
        reference = dijkstra(reverse, indices=target)
        got = timer.one_to_many(city.node_point(target), junctions, 24 * HOUR)
        eta = np.array([e.eta_s if e.eta_s is not None else np.inf for e in got])
        assert np.array_equal(np.isfinite(eta), np.isfinite(reference))
        ok = np.isfinite(reference)
        assert np.abs(eta[ok] - reference[ok]).max() < 0.05
