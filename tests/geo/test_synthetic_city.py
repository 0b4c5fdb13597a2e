"""The synthetic city generator: deterministic, sized as asked, shaped like a city."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from geo.road_graph import CLASS_CODE, RoadNetwork
from geo.synthetic_city import CityPlan, synthetic_city


@pytest.fixture(scope="module")
def city() -> RoadNetwork:
    return synthetic_city(CityPlan(rows=48, cols=48, seed=1))


def test_same_seed_same_city_other_seed_other_city() -> None:
    plan = CityPlan(rows=12, cols=15, seed=9)
    a, b = synthetic_city(plan), synthetic_city(plan)
    for name in RoadNetwork._ARRAY_FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = synthetic_city(CityPlan(rows=12, cols=15, seed=10))
    assert not np.array_equal(a.node_lat, c.node_lat)


def test_size_for_benchmarks() -> None:
    big = synthetic_city(CityPlan.for_nodes(100_000))
    assert big.node_count >= 100_000
    assert big.link_count > 1.7 * big.node_count  # a grid: about two links per junction


def test_size_for_tests(city: RoadNetwork) -> None:
    assert 48 * 48 * 0.98 <= city.node_count <= 48 * 48
    _, lat0, _, lat1 = city.bbox()
    # 47 blocks of 70–160 m: 3.3–7.5 km across.
    assert 3.0 < (lat1 - lat0) * 111.2 < 8.0


def test_shape_is_city_like(city: RoadNetwork) -> None:
    speeds = city.link_length_m / np.fmin(city.link_fwd_s, city.link_bwd_s) * 3.6
    arterial = np.isin(city.link_class, [CLASS_CODE["primary"], CLASS_CODE["secondary"]])
    local = city.link_class == CLASS_CODE["residential"]
    assert arterial.any() and local.any() and (city.link_class == CLASS_CODE["living_street"]).any()
    assert speeds[arterial].min() > speeds[local].max() - 1e-3  # arterials are the fast roads
    assert len(np.unique(np.round(speeds))) >= 4  # varied speeds
    one_way = np.isinf(city.link_fwd_s) | np.isinf(city.link_bwd_s)
    assert 0.05 < one_way.mean() < 0.3
    assert (one_way & arterial).any()  # one-way couplets among the arterials
    full_grid = 2 * 48 * 47
    assert 0.9 * full_grid < city.link_count < full_grid  # some links are missing
    # Blocks are irregular and some streets bend.
    lengths = city.link_length_m[local]
    assert lengths.std() / lengths.mean() > 0.1
    assert (np.diff(city.shape_ptr) == 3).any()


def test_city_is_mostly_one_connected_network(city: RoadNetwork) -> None:
    _, labels = connected_components(city.search.matrix, directed=True, connection="strong")
    largest = np.bincount(labels[: city.node_count]).max()
    assert largest >= 0.97 * city.node_count


def test_plan_validation() -> None:
    with pytest.raises(ValueError):
        CityPlan(rows=1, cols=5)
    with pytest.raises(ValueError):
        CityPlan(block_min_m=200, block_max_m=100)
    with pytest.raises(ValueError):
        CityPlan(missing_share=1.0)
