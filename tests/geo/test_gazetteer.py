"""The offline gazetteer on real Helsinki data and on a small hand-made extract."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import numpy as np
import osmium
import pytest

from geo.coords import Point
from geo.gazetteer import Gazetteer, GazetteerCacheError
from geo.geocoder import MAX_QUERY_CHARS, GeocodeQueryError

HELSINKI = Path(__file__).resolve().parents[2] / "data" / "osm" / "helsinki-center.osm.pbf"


@pytest.fixture(scope="module")
def helsinki() -> Gazetteer:
    return Gazetteer.from_osm(HELSINKI)


def top(g: Gazetteer, query: str) -> str:
    found = g.geocode(query, limit=3)
    assert found, f"nothing found for {query!r}"
    return found[0].label


# --- forward: real addresses of the extract, as people type them --------------------------------


@pytest.mark.parametrize(
    ("query", "label"),
    [
        # Mannerheimintie 10: the Marski hotel, mapped as a multipolygon building.
        ("Mannerheimintie 10", "Mannerheimintie 10, 00100 Helsinki"),
        ("mannerheimintie 10", "Mannerheimintie 10, 00100 Helsinki"),
        ("10 Mannerheimintie", "Mannerheimintie 10, 00100 Helsinki"),
        ("Mannerheimintie 10, Helsinki", "Mannerheimintie 10, 00100 Helsinki"),
        ("Mannerheimintie 10, 00100 Helsinki", "Mannerheimintie 10, 00100 Helsinki"),
        ("Manerheimintie 10", "Mannerheimintie 10, 00100 Helsinki"),  # typo
        ("Mannerheimint. 10", "Mannerheimintie 10, 00100 Helsinki"),  # Finnish abbreviation
        ("Mannerheimvägen 10", "Mannerheimintie 10, 00100 Helsinki"),  # the street's Swedish name
        ("Mannerheimvagen 10", "Mannerheimintie 10, 00100 Helsinki"),
        ("Mannerheimintie 10 A 5", "Mannerheimintie 10, 00100 Helsinki"),  # staircase and flat
        ("Aleksanterinkatu 21", "Aleksanterinkatu 21, 00100 Helsinki"),
        ("aleksanterink. 21", "Aleksanterinkatu 21, 00100 Helsinki"),
        ("Aleksanterin k. 21", "Aleksanterinkatu 21, 00100 Helsinki"),
        ("Aleksanterinktau 21", "Aleksanterinkatu 21, 00100 Helsinki"),  # transposed letters
        ("Aleksanterinkatu 15 B", "Aleksanterinkatu 15 B, 00100 Helsinki"),
        ("Aleksanterinkatu 15b", "Aleksanterinkatu 15 B, 00100 Helsinki"),
        ("Aleksanterinkatu 36 B", "Aleksanterinkatu 36b, Helsinki"),
        ("Pohjoisesplanadi 25", "Pohjoisesplanadi 25, Helsinki"),
        ("Pohjoisesplanadi 11", "Pohjoisesplanadi 11-13, 00170 Helsinki"),  # inside a range
        ("Pohjoisesplanadi 11-13", "Pohjoisesplanadi 11-13, 00170 Helsinki"),
        ("Eteläesplanadi 14", "Eteläesplanadi 14, 00130 Helsinki"),
        ("Etelaesplanadi 14", "Eteläesplanadi 14, 00130 Helsinki"),  # without diacritics
        ("ETELÄESPLANADI 14", "Eteläesplanadi 14, 00130 Helsinki"),
        ("Toolonlahdenkatu 2", "Töölönlahdenkatu 2, 00100 Helsinki"),
        ("Lonnrotinkatu 9", "Lönnrotinkatu 9, 00120 Helsinki"),
        ("Bulevardi 2", "Bulevardi 2-4, 00120 Helsinki"),
    ],
)
def test_geocode_real_addresses(helsinki: Gazetteer, query: str, label: str) -> None:
    found = helsinki.geocode(query, limit=3)
    assert found and found[0].label == label and found[0].kind == "address"
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)


def test_exact_beats_typo_beats_nothing(helsinki: Gazetteer) -> None:
    exact = helsinki.geocode("Mannerheimintie 10")[0]
    typo = helsinki.geocode("Manerheimintie 10")[0]
    assert exact.score == 100.0 and 90.0 < typo.score < 100.0
    assert exact.point == typo.point
    # The point is in the extract, where the building is (Mannerheimintie 10 is by Kaivokatu).
    assert 60.166 < exact.point.lat < 60.169 and 24.939 < exact.point.lon < 24.943
    assert helsinki.geocode("xyzzy plugh") == []


def test_staircase_letter_on_one_side_still_finds_the_building(helsinki: Gazetteer) -> None:
    # The map has "Mannerheimintie 12 B" and "Mannerheimintie 12"; a query for 12 A gets 12 first.
    labels = [r.label for r in helsinki.geocode("Mannerheimintie 12 A", limit=5)]
    assert labels[0] == "Mannerheimintie 12, 00100 Helsinki"


def test_unknown_number_falls_back_to_the_street(helsinki: Gazetteer) -> None:
    (first, *_) = helsinki.geocode("Mannerheimintie 999")
    assert (first.kind, first.label) == ("street", "Mannerheimintie, Helsinki")
    assert first.score < 100.0


def test_streets_and_places_by_name(helsinki: Gazetteer) -> None:
    street = helsinki.geocode("Pohjoisesplanadi")[0]
    assert (street.kind, street.label, street.score) == ("street", "Pohjoisesplanadi, Helsinki", 100.0)
    assert top(helsinki, "Stockmann") == "Stockmann, Aleksanterinkatu 52, 00100 Helsinki"
    fire_station = "Erottajan paloasema, Korkeavuorenkatu 26, Helsinki"
    assert top(helsinki, "Erottajan paloasema") == fire_station
    assert helsinki.geocode("Erottajan paloasema")[0].category == "amenity=fire_station"
    assert top(helsinki, "Skillnadens brandstation") == fire_station  # its Swedish name
    assert top(helsinki, "Makkaratalo") == "Kauppakeskus Citycenter, Kaivokatu 8, 00100 Helsinki"  # alt_name
    # "Esplanadi" alone is the tail of both Esplanadi streets: both come back.
    labels = {r.label for r in helsinki.geocode("esplanadi", limit=10)}
    assert {"Pohjoisesplanadi, Helsinki", "Eteläesplanadi, Helsinki"} <= labels


def test_locality_that_disagrees_lowers_the_score(helsinki: Gazetteer) -> None:
    right = helsinki.geocode("Kaivokatu 8, Helsinki")[0]
    wrong = helsinki.geocode("Kaivokatu 8, Espoo")[0]
    assert right.label == wrong.label == "Kaivokatu 8, 00100 Helsinki"
    assert wrong.score < right.score


def test_limit_is_respected(helsinki: Gazetteer) -> None:
    assert len(helsinki.geocode("katu 1", limit=1)) <= 1
    assert len(helsinki.geocode("Aleksanterinkatu 15", limit=2)) == 2


@pytest.mark.parametrize(
    ("query", "limit", "message"),
    [
        ("x" * (MAX_QUERY_CHARS + 1), 5, f"query is {MAX_QUERY_CHARS + 1} characters; at most {MAX_QUERY_CHARS}"),
        ("   ", 5, "query is empty"),
        ("Mannerheimintie\x00 10", 5, "control characters"),
        ("Mannerheimintie 10", 0, "limit must be an integer within 1..50"),
        ("Mannerheimintie 10", 51, "limit must be an integer"),
        (b"Mannerheimintie", 5, "query must be text"),
    ],
)
def test_bounded_inputs(helsinki: Gazetteer, query: object, limit: int, message: str) -> None:
    with pytest.raises(GeocodeQueryError, match=re.escape(message)):
        helsinki.geocode(query, limit)  # type: ignore[arg-type]


# --- reverse -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["Mannerheimintie 10", "Aleksanterinkatu 21", "Pohjoisesplanadi 25", "Eteläesplanadi 14", "Toolonlahdenkatu 2"],
)
def test_forward_then_reverse_gives_the_same_address(helsinki: Gazetteer, query: str) -> None:
    found = helsinki.geocode(query)[0]
    back = helsinki.reverse(found.point)
    assert back is not None
    assert (back.kind, back.label, back.distance_m) == ("address", found.label, 0.0)


def test_every_address_is_found_by_its_label_and_reverses_to_itself(helsinki: Gazetteer) -> None:
    addresses = list(helsinki.addresses())
    assert len(addresses) == helsinki.stats["addresses"] > 500
    for address in addresses:
        found = helsinki.geocode(address.label, limit=1)
        assert found and found[0].label == address.label and found[0].point == address.point
        back = helsinki.reverse(address.point)
        assert back is not None and back.label == address.label and back.distance_m == 0.0


def test_reverse_falls_back_to_the_nearest_street(helsinki: Gazetteer) -> None:
    street = helsinki.geocode("Pohjoisesplanadi")[0]
    back = helsinki.reverse(street.point, address_radius_m=0.0)
    assert back is not None and back.kind == "street"
    assert back.label == "Pohjoisesplanadi, Helsinki"
    assert back.distance_m is not None and back.distance_m < 0.5
    # 40 m north of a point on the street (inside the Esplanadi park), with addresses ignored.
    north = Point(street.point.lat + 40 / 111_200, street.point.lon)
    near = helsinki.reverse(north, address_radius_m=0.0)
    assert near is not None and near.kind == "street" and near.distance_m is not None
    assert near.distance_m <= 40.5
    assert near.point != north  # the point on the street, not the query point


def test_reverse_far_away_is_none(helsinki: Gazetteer) -> None:
    assert helsinki.reverse(Point(lat=61.5, lon=23.8)) is None  # Tampere: outside the extract
    assert helsinki.reverse(Point(lat=60.1700, lon=24.9440), address_radius_m=0.0, street_radius_m=0.0) is None


def test_geocode_is_fast_on_the_helsinki_extract(helsinki: Gazetteer) -> None:
    queries = [
        "Mannerheimintie 10",
        "aleksanterink. 21",
        "Manerheimintie 10, Helsinki",
        "Etelaesplanadi 14",
        "esplanadi",
        "Stockmann",
        "Toolonlahdenkatu 2",
        "10 Mannerheimintie",
    ]
    for q in queries:  # warm up
        helsinki.geocode(q)
    timings = []
    for _ in range(20):
        for q in queries:
            started = time.perf_counter()
            helsinki.geocode(q)
            timings.append(time.perf_counter() - started)
    assert statistics.mean(timings) < 0.005, f"mean {statistics.mean(timings) * 1000:.2f} ms"
    assert statistics.median(timings) < 0.005


# --- cache ---------------------------------------------------------------------------------------


def test_save_and_load_answer_the_same(helsinki: Gazetteer, tmp_path: Path) -> None:
    cache = tmp_path / "gazetteer.npz"
    helsinki.save(cache)
    started = time.perf_counter()
    loaded = Gazetteer.load(cache)
    assert time.perf_counter() - started < 1.0
    assert loaded.stats == helsinki.stats
    for q in ("Mannerheimintie 10", "Stockmann", "esplanadi", "Aleksanterinkatu 15b"):
        assert loaded.geocode(q, limit=5) == helsinki.geocode(q, limit=5)
    p = Point(lat=60.1700, lon=24.9440)
    assert loaded.reverse(p) == helsinki.reverse(p)


def test_load_or_build_uses_the_cache_only_for_the_same_extract(tmp_path: Path) -> None:
    cache = tmp_path / "g.npz"
    built = Gazetteer.load_or_build(HELSINKI, cache)
    assert cache.exists()
    stamp = cache.stat().st_mtime_ns
    again = Gazetteer.load_or_build(HELSINKI, cache)
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    assert again.stats == built.stats
    # Another extract: the Helsinki cache is not used for it, and is replaced.
    tiny = write_tiny_extract(tmp_path / "tiny.osm.pbf")
    other = Gazetteer.load_or_build(tiny, cache)
    assert other.stats["addresses"] < 10
    assert Gazetteer.load(cache).stats == other.stats


def test_damaged_or_foreign_cache_is_refused_then_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "g.npz"
    tiny = write_tiny_extract(tmp_path / "tiny.osm.pbf")
    Gazetteer.load_or_build(tiny, cache)
    cache.write_bytes(cache.read_bytes()[:200])
    with pytest.raises(GazetteerCacheError):
        Gazetteer.load(cache)
    assert Gazetteer.load_or_build(tiny, cache).stats["addresses"] > 0
    assert Gazetteer.load(cache).stats["addresses"] > 0

    # Well-formed files whose contents disagree are refused too, naming what is wrong.
    for column, change, message in (
        ("addr_lat", lambda a: a + 200.0, "address coordinates are out of range"),
        ("point_addr", lambda a: a + 10_000, "point_addr refers outside its table"),
        ("place_lon", lambda a: a[:-1], "place columns disagree in length"),
    ):
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        arrays[column] = change(arrays[column])
        edited = tmp_path / f"edited-{column}.npz"
        with edited.open("wb") as f:
            np.savez(f, **arrays)
        with pytest.raises(GazetteerCacheError, match=message):
            Gazetteer.load(edited)

    missing = tmp_path / "nope.npz"
    with pytest.raises(GazetteerCacheError, match="cannot read"):
        Gazetteer.load(missing)
    # A file with pickled objects is refused without unpickling anything.
    pickled = tmp_path / "pickled.npz"
    with pickled.open("wb") as f:
        np.savez(f, header=np.array([{"format": "icp-gazetteer"}], dtype=object))
    with pytest.raises(GazetteerCacheError):
        Gazetteer.load(pickled)
    other = tmp_path / "other.npz"
    with other.open("wb") as f:
        np.savez(f, header=np.frombuffer(b'{"format": "something-else"}', dtype=np.uint8))
    with pytest.raises(GazetteerCacheError, match="not a gazetteer cache"):
        Gazetteer.load(other)


# --- a hand-made extract: namesakes in two towns, rural addresses, buildings, clipped ways -------


def write_tiny_extract(path: Path) -> Path:
    """Two towns 30 km apart, each with a Koulukatu 1; a village address; a fire station."""
    mutable = osmium.osm.mutable
    with osmium.SimpleWriter(str(path), overwrite=True) as w:
        # Alpha (near 60.20, 24.90): Koulukatu along three nodes; a building at number 3.
        w.add_node(mutable.Node(id=1, location=(24.9000, 60.2000)))
        w.add_node(mutable.Node(id=2, location=(24.9020, 60.2000)))
        w.add_node(mutable.Node(id=3, location=(24.9040, 60.2000)))
        for i, (lon, lat) in enumerate(
            [(24.9010, 60.2002), (24.9014, 60.2002), (24.9014, 60.2005), (24.9010, 60.2005)]
        ):
            w.add_node(mutable.Node(id=10 + i, location=(lon, lat)))
        w.add_node(
            mutable.Node(
                id=20,
                location=(24.9001, 60.2001),
                tags={"addr:street": "Koulukatu", "addr:housenumber": "1", "addr:city": "Alpha"},
            )
        )
        w.add_node(
            mutable.Node(
                id=21,
                location=(24.9030, 60.2001),
                tags={
                    "amenity": "fire_station",
                    "name": "Alphan paloasema",
                    "addr:street": "Koulukatu",
                    "addr:housenumber": "5",
                    "addr:city": "Alpha",
                },
            )
        )
        # Beta (near 60.45, 24.90): another Koulukatu and another number 1.
        w.add_node(mutable.Node(id=30, location=(24.9000, 60.4500)))
        w.add_node(mutable.Node(id=31, location=(24.9030, 60.4500)))
        w.add_node(
            mutable.Node(
                id=40,
                location=(24.9010, 60.4501),
                tags={"addr:street": "Koulukatu", "addr:housenumber": "1", "addr:city": "Beta"},
            )
        )
        # A village address: no street, the village names the place (addr:place).
        w.add_node(
            mutable.Node(
                id=50,
                location=(25.2000, 60.3000),
                tags={"addr:place": "Kylänpää", "addr:housenumber": "7", "addr:city": "Gamma"},
            )
        )
        w.add_way(mutable.Way(id=100, nodes=[1, 2, 3], tags={"highway": "residential", "name": "Koulukatu"}))
        # Node 999 is outside the extract: the way is clipped, its located part still counts.
        w.add_way(mutable.Way(id=101, nodes=[30, 31, 999], tags={"highway": "residential", "name": "Koulukatu"}))
        w.add_way(
            mutable.Way(
                id=102,
                nodes=[10, 11, 12, 13, 10],
                tags={"building": "yes", "addr:street": "Koulukatu", "addr:housenumber": "3", "addr:city": "Alpha"},
            )
        )
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Gazetteer:
    return Gazetteer.from_osm(write_tiny_extract(tmp_path_factory.mktemp("osm") / "tiny.osm.pbf"))


def test_namesake_streets_in_two_towns_stay_apart(tiny: Gazetteer) -> None:
    assert tiny.stats["streets"] == 2
    labels = [r.label for r in tiny.geocode("Koulukatu 1", limit=5) if r.kind == "address"]
    assert sorted(labels) == ["Koulukatu 1, Alpha", "Koulukatu 1, Beta"]
    assert tiny.geocode("Koulukatu 1, Beta")[0].label == "Koulukatu 1, Beta"
    assert tiny.geocode("Koulukatu 1, Alpha")[0].label == "Koulukatu 1, Alpha"
    streets = {r.label for r in tiny.geocode("Koulukatu", limit=5) if r.kind == "street"}
    assert streets == {"Koulukatu, Alpha", "Koulukatu, Beta"}


def test_building_address_is_at_its_centre(tiny: Gazetteer) -> None:
    found = tiny.geocode("Koulukatu 3")[0]
    assert found.label == "Koulukatu 3, Alpha"
    assert found.point.lat == pytest.approx(60.20035, abs=1e-5)
    assert found.point.lon == pytest.approx(24.9012, abs=1e-5)


def test_village_address_and_place(tiny: Gazetteer) -> None:
    assert top(tiny, "Kylanpaa 7") == "Kylänpää 7, Gamma"
    station = tiny.geocode("alphan paloasema")[0]
    assert (station.kind, station.label) == ("place", "Alphan paloasema, Koulukatu 5, Alpha")


def test_reverse_on_the_clipped_way(tiny: Gazetteer) -> None:
    back = tiny.reverse(Point(lat=60.4502, lon=24.9025), address_radius_m=10.0)
    assert back is not None and (back.kind, back.label) == ("street", "Koulukatu, Beta")
    assert back.distance_m == pytest.approx(22.3, abs=0.5)
