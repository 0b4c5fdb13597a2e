"""The geo endpoints and `icp roads import` / `icp areas import`, on the real Helsinki extract."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from geo.coords import Point, geodesic_m
from icp.geography import load_roads
from icp.resources import resource_dir
from tests.helpers import bearer, problem
from tests.process import icp_env, run_icp

HELSINKI = resource_dir("data") / "osm" / "helsinki-center.osm.pbf"
BBOX = "24.9352,60.1642,24.9534,60.1791"


async def _get(client: TestClient, token: str, path: str, **params: str):  # type: ignore[no-untyped-def]
    return await client.get(path, params=params, headers=bearer(token))


async def _route(client: TestClient, token: str, start: str, end: str):  # type: ignore[no-untyped-def]
    return await _get(client, token, "/api/v1/geo/route", **{"from": start, "to": end})


async def test_geo_endpoints_need_authentication(client: TestClient) -> None:
    for path in ("/api/v1/geo/roads", "/api/v1/geo/areas", "/api/v1/geo/geocode", "/api/v1/geo/reverse",
                 "/api/v1/geo/route"):
        await problem(await client.get(path), 401)


async def test_roads_layer_in_a_bbox(with_roads, client: TestClient, make_token,  # type: ignore[no-untyped-def]
                                     helsinki_roads: Path) -> None:
    token = await make_token("dispatcher")
    response = await _get(client, token, "/api/v1/geo/roads", bbox="24.940,60.166,24.945,60.169")
    assert response.status == 200
    doc = await response.json()
    assert doc["type"] == "FeatureCollection" and not doc["truncated"]
    assert "OpenStreetMap" in doc["attribution"]
    assert 10 < len(doc["features"]) < 1010
    for feature in doc["features"]:
        lons = [c[0] for c in feature["geometry"]["coordinates"]]
        lats = [c[1] for c in feature["geometry"]["coordinates"]]
        # [lon, lat] order, and every link touches the box.
        assert all(24.9 < x < 25.0 for x in lons) and all(60.1 < y < 60.2 for y in lats)
        assert max(lons) >= 24.940 and min(lons) <= 24.945 and max(lats) >= 60.166 and min(lats) <= 60.169
        assert feature["properties"]["oneway"] in ("no", "forward", "backward")
    net = load_roads(helsinki_roads.parent).network  # type: ignore[union-attr]
    whole = ",".join(str(v) for v in net.bbox())
    everything = await (await _get(client, token, "/api/v1/geo/roads", bbox=whole)).json()
    assert len(everything["features"]) == net.link_count


@pytest.mark.parametrize("bbox, message", [
    ("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("24.95,60.17,24.94,60.18", "min must not exceed max"),
    ("24,60,25.5,61", "at most"), ("24.9,95,25,96", "latitude"),
])
async def test_bad_bbox_is_a_validation_problem(with_roads, client: TestClient, make_token, bbox: str,  # type: ignore[no-untyped-def]
                                                message: str) -> None:
    body = await problem(await _get(client, await make_token("unit"), "/api/v1/geo/roads", bbox=bbox), 422)
    assert body["errors"][0]["field"] == "bbox" and message in body["errors"][0]["message"]


async def test_without_an_import_geocoding_is_503_and_routes_are_straight_lines(client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    token = await make_token("dispatcher")
    body = await problem(await _get(client, token, "/api/v1/geo/geocode", q="Mannerheimintie 1"), 503)
    assert "icp roads import" in body["detail"]
    await problem(await _get(client, token, "/api/v1/geo/roads", bbox=BBOX), 503)
    route = await (await _route(client, token, "60.170,24.940", "60.175,24.945")).json()
    assert route["properties"]["method"] == "straight_line"
    assert route["properties"]["length_m"] > geodesic_m(Point(60.170, 24.940), Point(60.175, 24.945))


async def test_geocode_real_addresses_and_reverse_back(with_roads, client: TestClient, make_token,  # type: ignore[no-untyped-def]
                                                       helsinki_roads: Path) -> None:
    token = await make_token("dispatcher")
    gazetteer = load_roads(helsinki_roads.parent).gazetteer  # type: ignore[union-attr]
    samples = [a for a in gazetteer.addresses() if a.label.startswith(("Mannerheimintie", "Aleksanterinkatu"))][:5]
    assert samples, "the extract has addresses on Mannerheimintie/Aleksanterinkatu"
    for address in samples:
        body = await (await _get(client, token, "/api/v1/geo/geocode", q=address.label)).json()
        best = body["results"][0]
        assert best["label"] == address.label and best["kind"] == "address"
        reverse = await _get(client, token, "/api/v1/geo/reverse", lat=str(best["lat"]), lon=str(best["lon"]))
        back = await reverse.json()
        assert back["label"] == address.label
    # Typos and a missing diacritic still find the street.
    fuzzy = await (await _get(client, token, "/api/v1/geo/geocode", q="Mannerhemintie", limit="3")).json()
    assert any(r["label"].startswith("Mannerheimintie") for r in fuzzy["results"])
    await problem(await _get(client, token, "/api/v1/geo/geocode", q=" "), 422)
    await problem(await _get(client, token, "/api/v1/geo/geocode", q="x" * 500), 422)
    await problem(await _get(client, token, "/api/v1/geo/reverse", lat="91", lon="24.9"), 422)
    await problem(await _get(client, token, "/api/v1/geo/reverse", lat="0", lon="0"), 404)


async def test_routes_respect_one_way_streets(with_roads, client: TestClient, make_token,  # type: ignore[no-untyped-def]
                                              helsinki_roads: Path) -> None:
    roads = load_roads(helsinki_roads.parent)
    assert roads is not None
    net, snapper = roads.network, roads.timer.snapper

    def on_network(link: int) -> bool:  # not a fragment clipped off at the extract's border
        snap = snapper.snap(_along(net.link_shape(link), 0.5))
        return snap is not None and snap.link == link

    one_way = [i for i in range(net.link_count)
               if np.isfinite(net.link_fwd_s[i]) and not np.isfinite(net.link_bwd_s[i]) and net.link_length_m[i] > 80
               and on_network(i)]
    assert len(one_way) >= 5
    token = await make_token("unit")
    checked = 0
    for link in one_way[:5]:
        # Interior points lie on this link (distance 0), so they cannot snap to a parallel carriageway.
        a, b = _along(net.link_shape(link), 0.25), _along(net.link_shape(link), 0.75)
        along = await _route(client, token, f"{a.lat},{a.lon}", f"{b.lat},{b.lon}")
        against = await _route(client, token, f"{b.lat},{b.lon}", f"{a.lat},{a.lon}")
        assert along.status == 200 and against.status == 200
        fwd, back = (await along.json())["properties"], (await against.json())["properties"]
        assert fwd["method"] == back["method"] == "road"
        assert back["time_s"] > fwd["time_s"], f"link {link} is one-way; going against it must take a detour"
        assert fwd["length_m"] >= geodesic_m(a, b) * 0.99
        checked += 1
    assert checked == 5


def _along(shape: list[Point], fraction: float) -> Point:
    """The point ``fraction`` of the way along a polyline."""
    legs = [geodesic_m(p, q) for p, q in itertools.pairwise(shape)]
    goal = sum(legs) * fraction
    for (p, q), leg in zip(itertools.pairwise(shape), legs, strict=True):
        if goal <= leg and leg > 0:
            t = goal / leg
            return Point(lat=p.lat + (q.lat - p.lat) * t, lon=p.lon + (q.lon - p.lon) * t)
        goal -= leg
    return shape[-1]


async def test_route_validation(with_roads, client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    token = await make_token("unit")
    body = await problem(await _get(client, token, "/api/v1/geo/route", **{"from": "60.17"}), 422)
    assert body["errors"][0]["field"] == "from"
    body = await problem(await _route(client, token, "60.17,24.94", "24.94,200"), 422)
    assert body["errors"][0]["field"] == "to"


JURISDICTION = {
    "type": "FeatureCollection",
    "features": [{
        "type": "Feature", "id": "hki-fire-central",
        "properties": {"name": "Helsinki central fire district"},
        "geometry": {"type": "Polygon", "coordinates": [[[24.93, 60.16], [24.96, 60.16], [24.96, 60.18],
                                                        [24.93, 60.18], [24.93, 60.16]]]},
    }],
}
BOW_TIE = {"type": "Feature", "id": "tie", "properties": {},
           "geometry": {"type": "Polygon", "coordinates": [[[24.93, 60.16], [24.96, 60.18], [24.96, 60.16],
                                                           [24.93, 60.18], [24.93, 60.16]]]}}


async def test_areas_import_reaches_running_nodes(client: TestClient, make_token, db_url: str,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    token = await make_token("dispatcher")
    path = tmp_path / "areas.geojson"
    path.write_text(json.dumps(JURISDICTION))
    env = icp_env(ICP_DATABASE_URL=db_url)
    result = await asyncio.to_thread(run_icp, "areas", "import", str(path), "--agency", "hki-fire",
                                     "--kind", "jurisdiction", env=env)
    assert result.returncode == 0, result.stderr
    assert "imported 1 area(s)" in result.stdout
    for _ in range(50):  # the running app reloads on the areas.imported event
        doc = await (await _get(client, token, "/api/v1/geo/areas")).json()
        if doc["features"]:
            break
        await asyncio.sleep(0.1)
    feature = doc["features"][0]
    assert feature["properties"] == {"id": "hki-fire-central", "agency": "hki-fire", "kind": "jurisdiction",
                                     "name": "Helsinki central fire district"}
    ring = feature["geometry"]["coordinates"][0]
    assert all(math.isclose(p[0], 24.93) or math.isclose(p[0], 24.96) for p in ring)  # lon first
    only = await (await _get(client, token, "/api/v1/geo/areas", agency="other")).json()
    assert only["features"] == []
    await problem(await _get(client, token, "/api/v1/geo/areas", kind="county"), 422)


def test_area_import_errors_are_clear(tmp_path: Path, db_url: str) -> None:
    env = icp_env(ICP_DATABASE_URL=db_url)
    tie = tmp_path / "tie.geojson"
    tie.write_text(json.dumps(BOW_TIE))
    refused = run_icp("areas", "import", str(tie), "--agency", "a", "--kind", "zone", env=env)
    assert refused.returncode == 1 and "not valid" in refused.stderr.lower()
    repaired = run_icp("areas", "import", str(tie), "--agency", "a", "--kind", "zone", "--repair", env=env)
    assert repaired.returncode == 0 and "warning:" in repaired.stderr
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
                       '"coordinates": [[[0, 0], [1, 0], [1, 1]]]}, "properties": {}}]}')
    bad = run_icp("areas", "import", str(garbage), "--agency", "a", "--kind", "zone", env=env)
    assert bad.returncode == 1 and "feature 0" in bad.stderr
    (tmp_path / "notjson.geojson").write_text("{")
    assert "not valid JSON" in run_icp("areas", "import", str(tmp_path / "notjson.geojson"), "--agency", "a",
                                       "--kind", "zone", env=env).stderr


def test_roads_import_of_a_bad_file_is_a_clear_error(tmp_path: Path, db_url: str) -> None:
    env = icp_env(ICP_DATABASE_URL=db_url, ICP_DATA_DIR=tmp_path / "d")
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(b"this is not a protobuf" * 10)
    result = run_icp("roads", "import", str(junk), env=env)
    assert result.returncode == 1 and "cannot import" in result.stderr
    missing = run_icp("roads", "import", str(tmp_path / "nope.osm.pbf"), env=env)
    assert missing.returncode == 1 and "nope.osm.pbf" in missing.stderr


async def test_roads_import_reaches_a_running_node(client: TestClient, make_token, db_url: str,  # type: ignore[no-untyped-def]
                                                   settings) -> None:
    token = await make_token("dispatcher")
    await problem(await _get(client, token, "/api/v1/geo/geocode", q="Aleksanterinkatu"), 503)
    env = icp_env(ICP_DATABASE_URL=db_url, ICP_DATA_DIR=settings.data_dir)
    result = await asyncio.to_thread(run_icp, "roads", "import", str(HELSINKI), env=env)
    assert result.returncode == 0, result.stderr
    assert "1010 road links" in result.stdout
    for _ in range(50):
        response = await _get(client, token, "/api/v1/geo/geocode", q="Aleksanterinkatu")
        if response.status == 200:
            break
        await asyncio.sleep(0.1)
    assert response.status == 200
    assert (await response.json())["results"][0]["label"].startswith("Aleksanterinkatu")


async def test_openapi_lists_geo(client: TestClient) -> None:
    doc = await (await client.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/geo/roads", "/api/v1/geo/areas", "/api/v1/geo/geocode", "/api/v1/geo/reverse",
                 "/api/v1/geo/route"):
        assert "get" in doc["paths"][path]


@pytest.fixture
async def fake_nominatim(aiohttp_server):  # type: ignore[no-untyped-def]
    """A Nominatim-compatible HTTP server on loopback (an external service, not ours)."""
    from aiohttp import web

    asked: list[str] = []

    async def search(request: web.Request) -> web.Response:
        asked.append(request.query["q"])
        if request.query["q"].startswith("Espoo"):
            return web.json_response([{"lat": "60.2055", "lon": "24.6559", "display_name": "Espoo, Finland",
                                       "class": "place", "type": "city", "addresstype": "city"}])
        return web.json_response([])

    async def reverse(request: web.Request) -> web.Response:
        return web.json_response({"lat": request.query["lat"], "lon": request.query["lon"],
                                  "display_name": "Somewhere far, Finland", "class": "highway", "type": "road"})

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_get("/reverse", reverse)
    server = await aiohttp_server(app)
    server.asked = asked  # type: ignore[attr-defined]
    return server


async def test_external_geocoder_answers_what_the_gazetteer_cannot(  # type: ignore[no-untyped-def]
    aiohttp_client, fake_nominatim, settings, helsinki_roads: Path, make_token
) -> None:
    from icp.app import create_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "roads").symlink_to(helsinki_roads, target_is_directory=True)
    configured = settings.replace(geocoder_url=str(fake_nominatim.make_url("/")).rstrip("/"))
    client = await aiohttp_client(create_app(configured))
    token = await make_token("dispatcher")
    local = await (await _get(client, token, "/api/v1/geo/geocode", q="Aleksanterinkatu")).json()
    assert local["results"][0]["source"] == "gazetteer"
    assert fake_nominatim.asked == []  # the offline answer was enough
    far = await (await _get(client, token, "/api/v1/geo/geocode", q="Espoo keskus")).json()
    assert far["results"][0]["source"] == "nominatim" and far["results"][0]["label"] == "Espoo, Finland"
    assert math.isclose(far["results"][0]["lat"], 60.2055)  # lat stays lat through the service
    back = await (await _get(client, token, "/api/v1/geo/reverse", lat="61.5", lon="23.8")).json()
    assert back["source"] == "nominatim" and back["kind"] == "street"
