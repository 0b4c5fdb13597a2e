"""Dispatch over real HTTP on the Helsinki road network: incidents, explained recommendations, mutual
aid, the dispatch race, acknowledgement timeouts (also across a restart), isolation, intervals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from icp.app import create_app
from icp.config import Settings
from tests.helpers import bearer, problem

# Central Helsinki (inside the extract): the incident, and places for units around it.
INCIDENT = {"lat": 60.1686, "lon": 24.9414}          # Esplanadi
NEAR = {"lat": 60.1699, "lon": 24.9384}              # ~250 m away
MIDDLE = {"lat": 60.1725, "lon": 24.9430}            # ~450 m
FAR = {"lat": 60.1770, "lon": 24.9370}               # ~1 km
HELSINKI_BOX = [[24.90, 60.15], [24.99, 60.15], [24.99, 60.19], [24.90, 60.19], [24.90, 60.15]]
ESPOO_BOX = [[24.60, 60.15], [24.80, 60.15], [24.80, 60.25], [24.60, 60.25], [24.60, 60.15]]


@dataclass
class City:
    client: TestClient
    admin: str
    tokens: dict[str, str]

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, headers=bearer(token or self.admin), **kwargs)
        assert response.status < 300, f"{method} {path}: {response.status} {await response.text()}"
        return await response.json()

    async def place(self, unit_id: str, where: dict[str, float], age_s: float = 0) -> None:
        at = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
        await self.call("PATCH", f"/api/v1/units/{unit_id}", json={"position": {**where, "time": at}})

    async def incident(self, kind: str = "medical_emergency", priority: int = 2, where: dict[str, float] | None = None,
                       token: str | None = None) -> dict[str, Any]:
        return await self.call("POST", "/api/v1/incidents", token or self.tokens["hki-fire"],
                               json={"type": kind, "priority": priority, "location": where or INCIDENT})


async def build_city(client: TestClient, make_token: Callable[..., Awaitable[str]]) -> City:
    admin = await make_token("admin")
    city = City(client, admin, {})
    for agency, kind in (("hki-fire", "fire"), ("hki-ems", "ems"), ("hki-police", "police")):
        await city.call("POST", "/api/v1/agencies", json={"id": agency, "name": agency.upper(), "kind": kind})
    await city.call("POST", "/api/v1/agencies", json={"id": "espoo-fire", "name": "Espoo Fire", "kind": "fire"})
    await city.call("PATCH", "/api/v1/agencies/hki-fire", json={"mutual_aid": [
        {"partner_id": "espoo-fire", "capabilities": ["ENGINE", "LADDER"], "margin_s": 60}]})
    for agency in ("hki-fire", "hki-ems", "hki-police"):
        await city.call("POST", f"/api/v1/agencies/{agency}/areas?kind=jurisdiction", json={
            "type": "Feature", "id": f"{agency}-area", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [HELSINKI_BOX]}})
    await city.call("POST", "/api/v1/agencies/espoo-fire/areas?kind=jurisdiction", json={
        "type": "Feature", "id": "espoo-area", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ESPOO_BOX]}})
    await city.call("POST", "/api/v1/stations", json={"id": "st-1", "agency_id": "hki-fire", "name": "Station 1",
                                                      "location": FAR})
    await city.call("POST", "/api/v1/stations", json={"id": "st-ems", "agency_id": "hki-ems", "name": "EMS base",
                                                      "location": MIDDLE})
    units = [
        ("E1", "hki-fire", ["ENGINE"], "st-1", NEAR), ("E2", "hki-fire", ["ENGINE"], "st-1", MIDDLE),
        ("E3", "hki-fire", ["ENGINE"], "st-1", FAR), ("L1", "hki-fire", ["LADDER"], "st-1", FAR),
        ("ES-E1", "espoo-fire", ["ENGINE"], None, MIDDLE), ("ES-L1", "espoo-fire", ["LADDER"], None, NEAR),
        ("M1", "hki-ems", ["BLS"], "st-ems", FAR), ("M2", "hki-ems", ["BLS", "ALS"], "st-ems", NEAR),
        ("P1", "hki-police", ["PATROL"], None, MIDDLE),
    ]
    for unit_id, agency, caps, station, where in units:
        body = {"id": unit_id, "call_sign": unit_id, "agency_id": agency, "capabilities": caps, "staffing": 2}
        if station:
            body["station_id"] = station
        await city.call("POST", "/api/v1/units", json=body)
        await city.place(unit_id, where)
    for agency in ("hki-fire", "hki-ems", "hki-police", "espoo-fire"):
        city.tokens[agency] = await make_token("dispatcher", agency=agency)
    return city


@pytest.fixture
async def city(with_roads, client: TestClient, make_token) -> City:  # type: ignore[no-untyped-def]
    return await build_city(client, make_token)


async def test_incident_creation_numbers_places_and_validates(city: City) -> None:
    created = await city.incident()
    year = datetime.now(UTC).year
    assert created["number"] == f"{year}-000001" and created["id"] == created["number"]
    assert created["status"] == "pending"
    assert set(created["agency_ids"]) == {"hki-fire", "hki-ems", "hki-police"}  # home jurisdictions
    assert created["address"], "coordinates are reverse geocoded to an address"
    second = await city.incident()
    assert second["number"] == f"{year}-000002"
    by_address = await city.call("POST", "/api/v1/incidents", city.tokens["hki-ems"],
                                 json={"type": "cardiac_arrest", "priority": 1, "address": "Aleksanterinkatu 1"})
    assert by_address["address"].startswith("Aleksanterinkatu") and 60.16 < by_address["location"]["lat"] < 60.18
    client, token = city.client, city.tokens["hki-fire"]
    body = await problem(await client.post("/api/v1/incidents", headers=bearer(token), json={
        "type": "alien_landing", "priority": 2, "location": INCIDENT}), 422)
    assert "structure_fire" in body["detail"]
    body = await problem(await client.post("/api/v1/incidents", headers=bearer(token), json={
        "type": "medical_emergency", "priority": 9, "location": INCIDENT}), 422)
    assert body["errors"][0]["field"] == "priority"
    body = await problem(await client.post("/api/v1/incidents", headers=bearer(token), json={
        "type": "medical_emergency", "priority": 2}), 422)
    assert body["errors"][0]["field"] == "location"
    body = await problem(await client.post("/api/v1/incidents", headers=bearer(token), json={
        "type": "medical_emergency", "priority": 2, "location": {"lat": 95, "lon": 24}}), 422)
    assert body["errors"][0]["field"] == "location"
    await problem(await client.post("/api/v1/incidents", headers=bearer(token), json=["not", "an", "object"]), 400)


async def test_recommendation_fills_the_plan_by_road_eta_with_reasons(city: City) -> None:
    incident = await city.incident("medical_emergency", priority=2)
    rec = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation", city.tokens["hki-ems"])
    assert rec["complete"] and not rec["shortfalls"]
    (pick,) = rec["picks"]
    assert pick["unit_id"] == "M2" and pick["capability"] == "BLS"  # nearer by road than M1
    assert pick["method"] == "road" and pick["eta_s"] > 0 and pick["distance_m"] > 0
    assert "M2" in pick["reason"] and "by road" in pick["reason"]
    again = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation", city.tokens["hki-ems"])
    assert again == rec  # deterministic


async def test_mutual_aid_only_when_home_cannot_fill_or_partner_is_faster_by_the_margin(city: City) -> None:
    incident = await city.incident("structure_fire", priority=1)  # 3 ENGINE, 1 LADDER, … at level 1
    rec = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation")
    home = {"ENGINE": ["E1", "E2", "E3"], "LADDER": ["L1"]}
    partner = {"ENGINE": ["ES-E1"], "LADDER": ["ES-L1"]}
    etas = {u: await _eta(city, u, incident) for u in ("E1", "E2", "E3", "L1", "ES-E1", "ES-L1")}
    picked = {p["unit_id"] for p in rec["picks"]}
    for pick in rec["picks"]:
        if pick["capability"] not in home:
            continue
        assert pick["eta_s"] == pytest.approx(etas[pick["unit_id"]], abs=2.0)  # ranked by road ETA
        idle_home = [u for u in home[pick["capability"]] if u not in picked]
        if pick["mutual_aid"]:
            # A partner is picked only when it beats every home unit left out by more than the margin.
            assert pick["agency_id"] == "espoo-fire" and "mutual aid" in pick["reason"].lower()
            assert all(etas[u] - pick["eta_s"] > 60 for u in idle_home), (pick, etas)
        else:
            # A home unit keeps its place unless a partner left out would beat it by the margin.
            idle_partners = [u for u in partner[pick["capability"]] if u not in picked]
            assert all(pick["eta_s"] - etas[u] <= 60 for u in idle_partners), (pick, etas)
    # Home cannot fill at all (L1 out of service): the partner fills it whatever the margin.
    await city.call("PATCH", "/api/v1/units/L1", json={"status": "out_of_service"})
    rec = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation")
    ladder = next(p for p in rec["picks"] if p["capability"] == "LADDER")
    assert ladder["unit_id"] == "ES-L1" and ladder["mutual_aid"]
    # Shortfalls are explained: the plan also wants RESCUE and COMMAND, which nobody has.
    missing = {s["capability"]: s for s in rec["shortfalls"]}
    assert "RESCUE" in missing and "RESCUE" in missing["RESCUE"]["reason"]


async def _eta(city: City, unit_id: str, incident: dict[str, Any]) -> float:
    unit = await city.call("GET", f"/api/v1/units/{unit_id}")
    route = await city.call("GET", "/api/v1/geo/route", params={
        "from": f"{unit['position']['lat']},{unit['position']['lon']}",
        "to": f"{incident['location']['lat']},{incident['location']['lon']}"})
    return float(route["properties"]["time_s"])


async def test_stale_positions_use_the_home_station_and_say_so(city: City) -> None:
    await city.place("M2", NEAR, age_s=3600)  # an hour old
    incident = await city.incident("medical_emergency", priority=2)
    rec = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation")
    by_unit = {p["unit_id"]: p for p in rec["picks"]}
    pick = next(iter(by_unit.values()))
    if pick["unit_id"] == "M2":
        assert pick["from_station"] and "station" in pick["reason"]
    else:  # M1 (fresh, far) may now beat M2 counted from its station
        assert pick["unit_id"] == "M1" and not pick["from_station"]


async def test_two_dispatchers_race_for_one_unit_exactly_one_wins(city: City, settings: Settings,
                                                                  aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    first, second = await city.incident(), await city.incident()
    # A second node on the same database: the race crosses nodes too.
    other = await aiohttp_client(create_app(settings))
    token = city.tokens["hki-ems"]
    responses = await asyncio.gather(
        city.client.post(f"/api/v1/incidents/{first['id']}/assignments", headers=bearer(token), json={"units": ["M2"]}),
        other.post(f"/api/v1/incidents/{second['id']}/assignments", headers=bearer(token), json={"units": ["M2"]}),
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 409], statuses
    loser = next(r for r in responses if r.status == 409)
    body = await problem(loser, 409)
    assert body["code"] == "unit_unavailable" and "M2" in body["detail"]
    winner = await next(r for r in responses if r.status == 200).json()
    assert winner["assignments"][0]["unit_id"] == "M2" and winner["assignments"][0]["status"] == "dispatched"


async def test_agency_isolation(city: City, make_token) -> None:  # type: ignore[no-untyped-def]
    incident = await city.incident(token=city.tokens["hki-ems"])
    espoo = city.tokens["espoo-fire"]
    await problem(await city.client.get(f"/api/v1/incidents/{incident['id']}", headers=bearer(espoo)), 404)
    await problem(await city.client.get(f"/api/v1/incidents/{incident['id']}/timeline", headers=bearer(espoo)), 404)
    await problem(await city.client.post(f"/api/v1/incidents/{incident['id']}/assignments", headers=bearer(espoo),
                                         json={"units": ["ES-E1"]}), 404)
    await problem(await city.client.post(f"/api/v1/incidents/{incident['id']}/close", headers=bearer(espoo)), 404)
    listed = await city.call("GET", "/api/v1/incidents", espoo)
    assert listed["incidents"] == []
    events = await city.call("GET", "/api/v1/events", espoo, params={"limit": "1000"})
    assert not [e for e in events["events"] if e["subject"] == f"incident/{incident['id']}"]
    # A police dispatcher may not dispatch a fire engine (not theirs, not lent to them).
    body = await problem(await city.client.post(
        f"/api/v1/incidents/{incident['id']}/assignments", headers=bearer(city.tokens["hki-police"]),
        json={"units": ["E1"]}), 403)
    assert "E1" in body["detail"]
    # Field units and sensors cannot use dispatcher endpoints at all.
    unit_token = await make_token("unit", agency="hki-fire", unit="E1")
    await problem(await city.client.get("/api/v1/incidents", headers=bearer(unit_token)), 403)


async def test_mutual_aid_dispatch_shares_the_incident_with_the_partner(city: City) -> None:
    incident = await city.incident("vehicle_fire", priority=3, token=city.tokens["hki-fire"])
    espoo = city.tokens["espoo-fire"]
    await problem(await city.client.get(f"/api/v1/incidents/{incident['id']}", headers=bearer(espoo)), 404)
    await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-fire"],
                    json={"units": [{"unit_id": "ES-E1", "capability": "ENGINE"}]})
    shared = await city.call("GET", f"/api/v1/incidents/{incident['id']}", espoo)
    assert "espoo-fire" in shared["agency_ids"]


async def test_full_lifecycle_intervals_close_and_report(city: City, make_token) -> None:  # type: ignore[no-untyped-def]
    incident = await city.incident("medical_emergency", priority=2, token=city.tokens["hki-ems"])
    iid, ems = incident["id"], city.tokens["hki-ems"]
    after = await city.call("POST", f"/api/v1/incidents/{iid}/assignments", ems, json={"units": ["M2"]})
    assert after["status"] == "dispatched"
    assignment = after["assignments"][0]["id"]
    unit_token = await make_token("unit", agency="hki-ems", unit="M2")
    other_unit = await make_token("unit", agency="hki-ems", unit="M1")
    await problem(await city.client.post(f"/api/v1/assignments/{assignment}/acknowledge",
                                         headers=bearer(other_unit)), 403)
    for step in ("acknowledge", "en-route", "on-scene"):
        await asyncio.sleep(0.05)
        await city.call("POST", f"/api/v1/assignments/{assignment}/{step}", unit_token)
    body = await problem(await city.client.post(f"/api/v1/assignments/{assignment}/acknowledge",
                                                headers=bearer(unit_token)), 409)
    assert body["code"] == "illegal_transition" and "on_scene" in body["detail"]
    unit = await city.call("GET", "/api/v1/units/M2", ems)
    assert unit["status"] == "on_scene"
    await city.call("POST", f"/api/v1/incidents/{iid}/notes", ems, json={"text": "patient stable"})
    closed = await city.call("POST", f"/api/v1/incidents/{iid}/close", ems, json={"disposition": "treated"})
    assert closed["status"] == "closed"
    assert (await city.call("GET", "/api/v1/units/M2", ems))["status"] == "available"  # released on close
    intervals = closed["intervals"]
    assert intervals["alarm_processing_s"] >= 0
    (per_unit,) = intervals["assignments"]
    assert per_unit["turnout_s"] > 0 and per_unit["travel_s"] > 0
    timeline = await city.call("GET", f"/api/v1/incidents/{iid}/timeline", ems)
    types = [e["type"] for e in timeline["events"]]
    assert types[0] == "incident.created" and "assignment.acknowledged" in types and types[-1] == "incident.closed"
    assert all(e["actor"]["kind"] in ("token", "user", "system") for e in timeline["events"])
    supervisor = await make_token("supervisor", agency="hki-ems")
    report = await city.call("GET", "/api/v1/reports/intervals", supervisor)
    assert report["incidents"] >= 1 and report["turnout"]["count"] >= 1 and report["turnout"]["p50_s"] > 0
    assert set(report) >= {"alarm_processing", "turnout", "travel", "response", "first_arrival"}
    await problem(await city.client.get("/api/v1/reports/intervals", headers=bearer(supervisor),
                                        params={"agency": "hki-fire"}), 403)


async def test_idempotency_key_makes_a_retry_harmless(city: City) -> None:
    headers = {**bearer(city.tokens["hki-fire"]), "Idempotency-Key": "create-42"}
    body = {"type": "gas_leak", "priority": 2, "location": INCIDENT}
    first = await city.client.post("/api/v1/incidents", headers=headers, json=body)
    again = await city.client.post("/api/v1/incidents", headers=headers, json=body)
    assert first.status == again.status == 201
    assert (await first.json())["id"] == (await again.json())["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    listed = await city.call("GET", "/api/v1/incidents")
    assert [i["incident_type"] for i in listed["incidents"]].count("gas_leak") == 1
    other = await city.client.post("/api/v1/incidents", headers=headers, json={**body, "priority": 1})
    assert (await problem(other, 422))["code"] == "idempotency_key_reused"


async def test_response_plans_can_be_replaced_and_drive_recommendations(city: City, make_token) -> None:  # type: ignore[no-untyped-def]
    plans = await city.call("GET", "/api/v1/response-plans", city.tokens["hki-fire"])
    types = {p["incident_type"] for p in plans["plans"]}
    assert {"structure_fire", "vehicle_fire", "medical_emergency", "cardiac_arrest", "traffic_collision", "gas_leak",
            "flood", "gunshot", "alarm_activation", "utility_outage"} <= types
    supervisor = await make_token("supervisor", agency="hki-fire")
    await problem(await city.client.put("/api/v1/response-plans/gas_leak", headers=bearer(city.tokens["hki-fire"]),
                                        json=[{"levels": [{"ENGINE": 1}]}]), 403)
    bad = await problem(await city.client.put("/api/v1/response-plans/gas_leak", headers=bearer(supervisor),
                                              json=[{"levels": [{"WIZARD": 1}]}]), 422)
    assert bad["errors"][0]["field"].startswith("plans[0]")
    await city.call("PUT", "/api/v1/response-plans/gas_leak", supervisor,
                    json={"plans": [{"name": "Gas leak (patrol only)", "levels": [{"PATROL": 1}]}]})
    incident = await city.incident("gas_leak", priority=3, token=city.tokens["hki-police"])
    rec = await city.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation", city.tokens["hki-police"])
    assert [p["unit_id"] for p in rec["picks"]] == ["P1"]


async def test_unit_status_changes_and_roster_rules(city: City, make_token) -> None:  # type: ignore[no-untyped-def]
    unit_token = await make_token("unit", agency="hki-fire", unit="E3")
    changed = await city.call("PATCH", "/api/v1/units/E3", unit_token, json={"status": "out_of_service"})
    assert changed["status"] == "out_of_service"
    await problem(await city.client.patch("/api/v1/units/E3", headers=bearer(unit_token),
                                          json={"capabilities": ["LADDER"]}), 403)
    await problem(await city.client.patch("/api/v1/units/E2", headers=bearer(unit_token),
                                          json={"status": "available"}), 404)
    body = await problem(await city.client.patch("/api/v1/units/E3", headers=bearer(city.admin),
                                                 json={"status": "flying"}), 422)
    assert body["errors"][0]["field"] == "status"


async def _timeline(city: City, iid: str) -> list[str]:
    return [e["type"] for e in (await city.call("GET", f"/api/v1/incidents/{iid}/timeline"))["events"]]


@pytest.fixture
def quick_ack(settings: Settings) -> Settings:
    object.__setattr__(settings, "ack_timeout_s", 1.0)
    object.__setattr__(settings, "timer_interval_s", 0.1)
    return settings


async def test_unacknowledged_dispatch_times_out_escalates_and_dispatches_the_next_unit(
    quick_ack: Settings, city: City
) -> None:
    incident = await city.incident("medical_emergency", priority=2, token=city.tokens["hki-ems"])
    iid = incident["id"]
    await city.call("POST", f"/api/v1/incidents/{iid}/assignments", city.tokens["hki-ems"], json={"units": ["M2"]})
    for _ in range(60):
        await asyncio.sleep(0.1)
        types = await _timeline(city, iid)
        if "incident.escalated" in types and types.count("assignment.dispatched") == 2:
            break
    assert "assignment.timed_out" in types and "incident.escalated" in types
    now = await city.call("GET", f"/api/v1/incidents/{iid}")
    by_unit = {a["unit_id"]: a["status"] for a in now["assignments"]}
    assert by_unit == {"M2": "timed_out", "M1": "dispatched"}  # the next recommended unit went
    assert (await city.call("GET", "/api/v1/units/M2"))["status"] == "available"


async def test_acknowledgement_deadline_survives_a_restart(quick_ack: Settings, with_roads, aiohttp_client,  # type: ignore[no-untyped-def]
                                                           make_token, db_url: str) -> None:
    # A deadline later than this node's life: dispatch, then stop the node at once.
    object.__setattr__(quick_ack, "ack_timeout_s", 3.0)
    first = await aiohttp_client(create_app(quick_ack))
    city = await build_city(first, make_token)
    incident = await city.incident("medical_emergency", priority=2, token=city.tokens["hki-ems"])
    await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-ems"],
                    json={"units": ["M2"]})
    await first.close()
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM timers") == 1  # the deadline is a row
    finally:
        await conn.close()
    second = await aiohttp_client(create_app(quick_ack))
    restarted = City(second, city.admin, city.tokens)
    for _ in range(80):
        await asyncio.sleep(0.1)
        if "incident.escalated" in await _timeline(restarted, incident["id"]):
            break
    assert "assignment.timed_out" in await _timeline(restarted, incident["id"])


async def test_raise_alarm_adds_units_and_incidents_can_be_corrected(city: City) -> None:
    incident = await city.incident("vehicle_fire", priority=3)
    iid, token = incident["id"], city.tokens["hki-fire"]
    before = await city.call("POST", f"/api/v1/incidents/{iid}/recommendation", token)
    raised = await city.call("POST", f"/api/v1/incidents/{iid}/alarm", token)
    assert raised["alarm_level"] == 2
    after = await city.call("POST", f"/api/v1/incidents/{iid}/recommendation", token)
    assert len(after["requirements"]) > len(before["requirements"]) or sum(
        r["count"] for r in after["requirements"]) > sum(r["count"] for r in before["requirements"])
    corrected = await city.call("PATCH", f"/api/v1/incidents/{iid}", token,
                                json={"priority": 1, "type": "structure_fire", "address": "Pohjoisesplanadi 1"})
    assert (corrected["priority"], corrected["incident_type"], corrected["address"]) == (
        1, "structure_fire", "Pohjoisesplanadi 1")
    body = await problem(await city.client.patch(f"/api/v1/incidents/{iid}", headers=bearer(token),
                                                 json={"type": "picnic"}), 422)
    assert body["errors"][0]["field"] == "type"
    await problem(await city.client.post(f"/api/v1/incidents/{iid}/alarm", headers=bearer(token),
                                         json={"level": 9}), 422)
