"""Mutual aid over real HTTP: a partner agency's unit is requested, the partner (and only the
partner) answers, a refusal or silence moves on to the next candidate — all on the timeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icp.config import Settings
from tests.helpers import bearer, problem
from tests.icp.test_dispatch_api import City, build_city


@pytest.fixture
async def city(with_roads, client, make_token) -> City:  # type: ignore[no-untyped-def]
    return await build_city(client, make_token)


async def _fire(city: City) -> tuple[str, dict[str, Any]]:
    incident = await city.incident("vehicle_fire", priority=3, token=city.tokens["hki-fire"])
    after = await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-fire"],
                            json={"units": [{"unit_id": "ES-E1", "capability": "ENGINE"}]})
    return incident["id"], after


async def _timeline(city: City, iid: str) -> list[str]:
    return [e["type"] for e in (await city.call("GET", f"/api/v1/incidents/{iid}/timeline"))["events"]]


async def test_a_partner_unit_goes_only_when_its_agency_accepts(city: City, make_token) -> None:  # type: ignore[no-untyped-def]
    iid, after = await _fire(city)
    (request,) = after["assignments"]
    assert request["status"] == "requested" and after["status"] == "pending"
    assert (await city.call("GET", "/api/v1/units/ES-E1"))["status"] == "available"
    espoo = city.tokens["espoo-fire"]
    shared = await city.call("GET", f"/api/v1/incidents/{iid}", espoo)  # the partner sees what it is asked
    assert "espoo-fire" in shared["agency_ids"]
    # Neither the asking agency nor the unit itself answers for the partner.
    body = await problem(await city.client.post(f"/api/v1/assignments/{request['id']}/accept",
                                                headers=bearer(city.tokens["hki-fire"])), 403)
    assert "espoo-fire" in body["detail"]
    unit_token = await make_token("unit", agency="espoo-fire", unit="ES-E1")
    await problem(await city.client.post(f"/api/v1/assignments/{request['id']}/decline",
                                         headers=bearer(unit_token)), 403)
    accepted = await city.call("POST", f"/api/v1/assignments/{request['id']}/accept", espoo)
    assert accepted["status"] == "dispatched"
    assert {a["unit_id"]: a["status"] for a in accepted["assignments"]} == {"ES-E1": "dispatched"}
    assert (await city.call("GET", "/api/v1/units/ES-E1"))["status"] == "dispatched"
    types = await _timeline(city, iid)
    assert types.index("assignment.mutual_aid_requested") < types.index("assignment.mutual_aid_accepted") \
        < types.index("assignment.dispatched")
    # Accepting twice is an illegal move, not a second dispatch.
    body = await problem(await city.client.post(f"/api/v1/assignments/{request['id']}/accept",
                                                headers=bearer(espoo)), 409)
    assert body["code"] == "illegal_transition"


async def test_a_refusal_recommends_the_next_candidate(city: City) -> None:
    iid, after = await _fire(city)
    request = after["assignments"][0]["id"]
    declined = await city.call("POST", f"/api/v1/assignments/{request}/decline", city.tokens["espoo-fire"],
                               json={"reason": "engine committed elsewhere"})
    by_unit = {a["unit_id"]: a["status"] for a in declined["assignments"]}
    assert by_unit["ES-E1"] == "declined"
    assert "recommended" in by_unit.values()  # on_decline=recommend: the next engine, for a dispatcher to confirm
    timeline = (await city.call("GET", f"/api/v1/incidents/{iid}/timeline"))["events"]
    refusal = next(e for e in timeline if e["type"] == "assignment.mutual_aid_declined")
    assert refusal["data"]["reason"] == "engine committed elsewhere" and refusal["data"]["agency_id"] == "espoo-fire"


async def test_automatic_aid_terms_dispatch_directly(city: City) -> None:
    await city.call("PATCH", "/api/v1/agencies/hki-fire", json={"mutual_aid": [
        {"partner_id": "espoo-fire", "capabilities": ["ENGINE", "LADDER"], "margin_s": 60, "automatic": True}]})
    _, after = await _fire(city)
    assert after["assignments"][0]["status"] == "dispatched" and after["status"] == "dispatched"


@pytest.fixture
def quick_answer(settings: Settings) -> Settings:
    object.__setattr__(settings, "mutual_aid_timeout_s", 1.0)
    object.__setattr__(settings, "timer_interval_s", 0.1)
    return settings


async def test_an_unanswered_request_times_out_and_the_next_unit_goes(quick_answer: Settings, city: City) -> None:
    iid, _ = await _fire(city)
    for _ in range(60):
        await asyncio.sleep(0.1)
        types = await _timeline(city, iid)
        if "incident.escalated" in types and "assignment.dispatched" in types:
            break
    assert "assignment.timed_out" in types
    incident = await city.call("GET", f"/api/v1/incidents/{iid}")
    by_unit = {a["unit_id"]: a["status"] for a in incident["assignments"]}
    assert by_unit["ES-E1"] == "timed_out"
    # on_ack_timeout=dispatch: the best home engine is sent instead.
    assert [u for u, s in by_unit.items() if s == "dispatched"] and incident["status"] == "dispatched"
    timeline = (await city.call("GET", f"/api/v1/incidents/{iid}/timeline"))["events"]
    escalation = next(e for e in timeline if e["type"] == "incident.escalated")
    assert "did not answer the mutual-aid request" in escalation["data"]["reason"]


async def test_a_partner_only_asked_sees_the_incident_but_not_its_conversation(city: City) -> None:
    iid, after = await _fire(city)
    await city.call("POST", f"/api/v1/channels/incident:{iid}/messages", city.tokens["hki-fire"],
                    json={"text": "hydrant at the corner is dry"})
    espoo = city.tokens["espoo-fire"]

    async def message_types(token: str) -> list[str]:
        events = (await city.call("GET", f"/api/v1/incidents/{iid}/timeline", token))["events"]
        return [e["type"] for e in events if e["type"].startswith("message.")]

    assert await message_types(city.tokens["hki-fire"]) == ["message.sent"]
    assert await message_types(espoo) == []  # asked, not yet part of it
    await city.call("POST", f"/api/v1/assignments/{after['assignments'][0]['id']}/accept", espoo)
    assert await message_types(espoo) == ["message.sent"]  # its unit is on the way: a member now
