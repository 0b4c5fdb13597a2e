"""The simulator: route geometry (pure), and one unit driving a real Helsinki route to an incident it
was dispatched to, acknowledging, arriving and clearing, against the real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from geo.coords import Point, geodesic_m
from icp import appkeys
from icp.simulate import CrewTiming, Route, bearing_deg, offset, simulate
from tests.icp.client.support import eventually, running
from tests.icp.test_dispatch_api import INCIDENT, City


def test_a_route_is_walked_by_distance_with_headings() -> None:
    feature = {"type": "Feature", "properties": {"length_m": 0, "time_s": 50.0},
               "geometry": {"type": "LineString", "coordinates": [[24.94, 60.17], [24.95, 60.17], [24.95, 60.18]]}}
    route = Route.from_feature(feature)
    assert route is not None
    east, north = geodesic_m(route.points[0], route.points[1]), geodesic_m(route.points[1], route.points[2])
    assert route.length_m == pytest.approx(east + north)
    assert route.speed_mps == pytest.approx(route.length_m / 50.0)
    start, heading = route.at(-5)
    assert start == route.points[0] and heading == pytest.approx(90, abs=0.5)
    half, _ = route.at(east / 2)
    assert half.lat == pytest.approx(60.17) and half.lon == pytest.approx(24.945)
    end, heading = route.at(route.length_m + 100)
    assert end == route.points[-1] and heading == pytest.approx(0, abs=0.5)
    assert Route.from_feature({"geometry": {"coordinates": [[24.94, 60.17]]}}) is None


def test_offsets_and_bearings_agree() -> None:
    here = Point(lat=60.17, lon=24.94)
    for bearing in (0.0, 45.0, 135.0, 270.0):
        there = offset(here, 1000.0, bearing)
        assert geodesic_m(here, there) == pytest.approx(1000.0, rel=0.01)
        assert bearing_deg(here, there) == pytest.approx(bearing, abs=0.5)


@pytest.mark.slow
async def test_a_simulated_unit_drives_real_roads_and_works_its_assignment(city: City) -> None:
    snapper = city.client.app[appkeys.GEOGRAPHY].roads.timer.snapper
    incident = await city.incident("structure_fire", priority=1)
    quick = CrewTiming(ack_s=(2.0, 4.0), turnout_s=(2.0, 4.0), on_scene_s=(4.0, 6.0), park_s=(2.0, 4.0),
                       cruise_m=(300.0, 600.0))
    base = str(city.client.make_url("")).rstrip("/")
    seen: list[Point] = []

    async def track() -> None:
        while True:
            unit = await city.call("GET", "/api/v1/units/E1")
            where = Point(lat=unit["position"]["lat"], lon=unit["position"]["lon"])
            if not seen or where != seen[-1]:
                seen.append(where)
            await asyncio.sleep(0.1)

    # E1 comes first by id. Its road route is ~760 m at ~8 m/s: speed_factor 8 drives it in ~12 s and
    # keeps the reported speed (~64 m/s) under the server's jump filter (90 m/s).
    async with running(simulate(base, city.admin, 1, seed=1, speed_factor=8.0, report_every_s=0.6, timing=quick)), \
            running(track()):
        dispatched = await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments",
                                     json={"units": ["E1"]})
        assignment = next(a for a in dispatched["assignments"] if a["unit_id"] == "E1")["id"]
        await eventually(lambda: _status(city, incident["id"], assignment, "acknowledged", "en_route", "on_scene",
                                         "cleared"), timeout=10)
        await eventually(lambda: _status(city, incident["id"], assignment, "cleared"), timeout=25)
    timeline = await city.call("GET", f"/api/v1/incidents/{incident['id']}/timeline")
    steps = [e["type"] for e in timeline["events"] if e["type"].startswith("assignment.")]
    assert steps == ["assignment.dispatched", "assignment.acknowledged", "assignment.en_route",
                     "assignment.on_scene", "assignment.cleared"]
    acked = next(e for e in timeline["events"] if e["type"] == "assignment.acknowledged")
    assert acked["actor"].get("unit") == "E1", "the unit itself acknowledged, over its own link"
    assert len(seen) >= 5, seen
    # On the road all the way; a route ends at the incident itself, which may lie a few metres off it.
    incident_at = Point(**INCIDENT)
    offroad = [(snapper.snap(p).offroad_m, p) for p in seen[1:] if geodesic_m(p, incident_at) > 0.5]
    assert len(offroad) >= 4 and max(d for d, _ in offroad) < 3.0, offroad  # the first is where the city put it
    assert min(geodesic_m(p, incident_at) for p in seen) < 0.5, "it drove to the incident"


async def _status(city: City, incident_id: str, assignment_id: str, *wanted: str) -> bool:
    incident: dict[str, Any] = await city.call("GET", f"/api/v1/incidents/{incident_id}")
    return next(a["status"] for a in incident["assignments"] if a["id"] == assignment_id) in wanted
