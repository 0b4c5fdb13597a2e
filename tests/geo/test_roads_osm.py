"""Road network from OSM: tag rules (table-driven), the Helsinki build, bad input, the disk cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import osmium
import pytest

from geo.osm_roads import (
    DEFAULT_PROFILE,
    RoadProfile,
    directions,
    emergency_access,
    parse_maxspeed,
    road_class_for,
)
from geo.road_graph import RoadNetwork, RoadNetworkError, cache_path, load_or_build

HELSINKI = Path(__file__).resolve().parents[2] / "data" / "osm" / "helsinki-center.osm.pbf"


@pytest.fixture(scope="module")
def helsinki() -> RoadNetwork:
    return RoadNetwork.from_pbf(HELSINKI)


# --- maxspeed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kmh"),
    [
        ("50", 50.0),
        ("30 km/h", 30.0),
        ("30kmh", 30.0),
        ("30 mph", 30 * 1.609344),
        ("20mph", 20 * 1.609344),
        ("10 knots", 18.52),
        ("FI:urban", 50.0),
        ("fi:rural", 80.0),
        ("FI:motorway", 120.0),
        ("DE:urban", 50.0),
        ("DE:rural", 100.0),
        ("DE:living_street", 7.0),
        ("DE:zone30", 30.0),
        ("DE:zone:20", 20.0),
        ("RU:urban", 60.0),
        ("RU:rural", 90.0),
        ("XX:urban", 50.0),  # an unlisted country still says "urban"
        ("walk", 7.0),
        ("50;30", 30.0),  # several limits: the lowest
        ("none", None),  # no limit: the class default applies
        ("signals", None),
        ("variable", None),
        (" 40 ", 40.0),
    ],
)
def test_maxspeed_parses(text: str, kmh: float | None) -> None:
    got = parse_maxspeed(text, DEFAULT_PROFILE)
    if kmh is None:
        assert got is None
    else:
        assert got == pytest.approx(kmh)


@pytest.mark.parametrize("text", ["fast", "50 furlongs", "0", "-30", "XX:unheard_of", "km/h"])
def test_maxspeed_unknown_is_an_error_not_a_guess(text: str) -> None:
    with pytest.raises(ValueError):
        parse_maxspeed(text, DEFAULT_PROFILE)


# --- drivable classes, access, one-way --------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"highway": "motorway"}, "motorway"),
        ({"highway": "primary_link"}, "primary_link"),
        ({"highway": "residential"}, "residential"),
        ({"highway": "service"}, "service"),
        ({"highway": "living_street"}, "living_street"),
        ({"highway": "unclassified"}, "unclassified"),
        ({"highway": "footway"}, None),
        ({"highway": "cycleway"}, None),
        ({"highway": "path"}, None),
        ({"highway": "steps"}, None),
        ({"highway": "steps", "emergency": "yes"}, None),
        ({"highway": "track"}, None),
        ({"highway": "track", "motor_vehicle": "yes"}, "track"),
        ({"highway": "pedestrian"}, None),
        ({"highway": "pedestrian", "emergency": "yes"}, "pedestrian"),
        ({"highway": "footway", "motorcar": "designated"}, "other"),
        ({"highway": "footway", "access": "yes"}, None),  # walkers, not vehicles
        ({"highway": "pedestrian", "area": "yes", "emergency": "yes"}, None),
        ({"highway": "construction"}, None),
        ({"highway": "platform"}, None),
        ({"building": "yes"}, None),
    ],
)
def test_road_class(tags: dict[str, str], expected: str | None) -> None:
    assert road_class_for(tags) == expected


@pytest.mark.parametrize(
    ("tags", "allowed"),
    [
        ({}, True),
        ({"access": "no"}, False),
        ({"access": "private"}, False),
        ({"access": "no", "emergency": "yes"}, True),
        ({"access": "private", "emergency": "designated"}, True),
        ({"emergency": "no"}, False),
        ({"access": "yes", "emergency": "no"}, False),
        ({"access": "no", "motor_vehicle": "yes"}, True),  # the more specific key wins
        ({"access": "yes", "motor_vehicle": "no"}, False),
        ({"vehicle": "no"}, False),
        ({"vehicle": "no", "motorcar": "yes"}, True),
        ({"access": "destination"}, True),
        ({"motor_vehicle": "agricultural"}, False),
        ({"access": "permissive"}, True),
    ],
)
def test_emergency_access(tags: dict[str, str], allowed: bool) -> None:
    assert emergency_access(tags)[0] is allowed


def test_unknown_access_value_is_reported() -> None:
    assert emergency_access({"access": "sometimes"}) == (True, "access=sometimes")


@pytest.mark.parametrize(
    ("tags", "road_class", "fwd", "bwd"),
    [
        ({}, "residential", True, True),
        ({"oneway": "yes"}, "residential", True, False),
        ({"oneway": "true"}, "residential", True, False),
        ({"oneway": "1"}, "residential", True, False),
        ({"oneway": "-1"}, "residential", False, True),
        ({"oneway": "no"}, "residential", True, True),
        ({"junction": "roundabout"}, "primary", True, False),
        ({"junction": "circular"}, "tertiary", True, False),
        ({"junction": "roundabout", "oneway": "no"}, "primary", True, True),
        ({}, "motorway", True, False),
        ({}, "motorway_link", True, False),
        ({"oneway": "no"}, "motorway", True, True),
        ({"oneway": "alternating"}, "primary", True, True),
    ],
)
def test_directions(tags: dict[str, str], road_class: str, fwd: bool, bwd: bool) -> None:
    assert directions(tags, road_class)[:2] == (fwd, bwd)


# --- the Helsinki extract -------------------------------------------------------------------


def test_helsinki_builds_a_directed_network(helsinki: RoadNetwork) -> None:
    net = helsinki
    assert net.node_count > 500 and net.link_count > 500
    one_way = np.isinf(net.link_fwd_s) | np.isinf(net.link_bwd_s)
    assert 50 < one_way.sum() < net.link_count  # central Helsinki has many one-way streets
    assert not (np.isinf(net.link_fwd_s) & np.isinf(net.link_bwd_s)).any()
    assert (net.link_length_m > 0).all()
    speeds = net.link_length_m / np.fmin(net.link_fwd_s, net.link_bwd_s) * 3.6
    assert speeds.min() >= 4.99 and speeds.max() <= 130.01  # "5" is the lowest posted limit
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    assert 24.93 < min_lon < max_lon < 24.96 and 60.16 < min_lat < max_lat < 60.18
    assert "Mannerheimintie" in net.names
    # Links follow their way's shape: the first and last shape points are the link's nodes.
    first = net.shape_ptr[:-1]
    last = net.shape_ptr[1:] - 1
    assert np.array_equal(net.shape_lat[first], net.node_lat[net.link_u])
    assert np.array_equal(net.shape_lon[last], net.node_lon[net.link_v])
    assert net.meta["stats"]["skipped_not_drivable"] > 0


def test_helsinki_keeps_footways_out(helsinki: RoadNetwork) -> None:
    classes = {helsinki.link_road_class(i) for i in range(helsinki.link_count)}
    assert "residential" in classes and "primary" in classes
    assert classes <= {
        "primary", "primary_link", "secondary", "tertiary", "tertiary_link", "unclassified",
        "residential", "service", "living_street", "pedestrian", "track", "other",
    }


# --- bad input ------------------------------------------------------------------------------


def test_missing_pbf(tmp_path: Path) -> None:
    with pytest.raises(RoadNetworkError, match="no such file"):
        RoadNetwork.from_pbf(tmp_path / "nowhere.osm.pbf")


def test_empty_pbf(tmp_path: Path) -> None:
    empty = tmp_path / "empty.osm.pbf"
    empty.write_bytes(b"")
    with pytest.raises(RoadNetworkError, match="empty"):
        RoadNetwork.from_pbf(empty)


def test_garbage_pbf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(RoadNetworkError, match="not a readable OSM file"):
        RoadNetwork.from_pbf(junk)


def test_truncated_pbf(tmp_path: Path) -> None:
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(HELSINKI.read_bytes()[:5000])
    with pytest.raises(RoadNetworkError):
        RoadNetwork.from_pbf(cut)


def _write_osm(path: Path, way_tags: dict[str, str]) -> None:
    with osmium.SimpleWriter(str(path)) as w:
        for i, (lat, lon) in enumerate([(60.0, 25.0), (60.001, 25.0), (60.002, 25.001)], 1):
            w.add_node(osmium.osm.mutable.Node(id=i, location=(lon, lat), version=1))
        w.add_way(osmium.osm.mutable.Way(id=1, nodes=[1, 2, 3], tags=way_tags, version=1))


def test_pbf_without_drivable_roads(tmp_path: Path) -> None:
    path = tmp_path / "paths.osm.pbf"
    _write_osm(path, {"highway": "footway"})
    with pytest.raises(RoadNetworkError, match="no drivable roads"):
        RoadNetwork.from_pbf(path)


def test_tiny_pbf_one_way_street(tmp_path: Path) -> None:
    path = tmp_path / "street.osm.pbf"
    _write_osm(path, {"highway": "residential", "oneway": "-1", "maxspeed": "20 mph", "ref": "R1"})
    net = RoadNetwork.from_pbf(path)
    assert net.node_count == 2 and net.link_count == 1
    assert np.isinf(net.link_fwd_s[0]) and np.isfinite(net.link_bwd_s[0])
    speed_kmh = net.link_length_m[0] / net.link_bwd_s[0] * 3.6
    assert speed_kmh == pytest.approx(20 * 1.609344, rel=1e-4)
    assert net.link_street(0) == "R1"  # no name: the ref
    assert len(net.link_shape(0)) == 3


# --- the cache ------------------------------------------------------------------------------


def _assert_same(a: RoadNetwork, b: RoadNetwork) -> None:
    for name in RoadNetwork._ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.names == b.names
    assert a.meta == b.meta


def test_cache_round_trip_is_identical_and_fast(helsinki: RoadNetwork, tmp_path: Path) -> None:
    path = tmp_path / "roads.npz"
    helsinki.save(path)
    started = time.perf_counter()
    loaded = RoadNetwork.load(path)
    assert time.perf_counter() - started < 0.5
    _assert_same(helsinki, loaded)


def test_load_or_build_reuses_then_rebuilds_when_stale(tmp_path: Path) -> None:
    pbf = tmp_path / "helsinki.osm.pbf"
    pbf.write_bytes(HELSINKI.read_bytes())
    cache_dir = tmp_path / "cache"
    first = load_or_build(pbf, cache_dir)
    cache = cache_path(pbf, cache_dir)
    assert cache.exists()
    stamp = cache.stat().st_mtime_ns
    second = load_or_build(pbf, cache_dir)
    assert cache.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    _assert_same(first, second)

    # Another speed profile: the cache no longer matches.
    slow = RoadProfile(class_kmh={**DEFAULT_PROFILE.class_kmh, "residential": 20.0})
    third = load_or_build(pbf, cache_dir, slow)
    assert third.meta["profile"] == slow.fingerprint() != first.meta["profile"]
    assert RoadNetwork.read_header(cache)["profile"] == slow.fingerprint()

    # A damaged cache is rebuilt rather than trusted.
    cache.write_bytes(b"not a cache")
    fourth = load_or_build(pbf, cache_dir)
    _assert_same(first, fourth)

    # Another source file (different checksum) is rebuilt too.
    small = tmp_path / "small" / "helsinki.osm.pbf"
    small.parent.mkdir()
    _write_osm(small, {"highway": "residential"})
    fifth = load_or_build(small, cache_dir)
    assert fifth.link_count == 1


def test_load_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(RoadNetworkError):
        RoadNetwork.load(path)
