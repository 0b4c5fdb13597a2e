"""The field-unit client against the real server: its own assignments only, the assignment steps over
its own link, positions answered accepted or not, status, and errors with their codes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from icp.client import Event, FieldUnitClient, OpError
from tests.icp.client.support import unit_token, ws_url
from tests.icp.test_dispatch_api import NEAR, City


async def test_a_unit_gets_its_own_assignments_and_works_them(city: City) -> None:
    url = ws_url(city.client)
    async with FieldUnitClient(url, await unit_token(city, "E1", "hki-fire")) as e1, \
            FieldUnitClient(url, await unit_token(city, "E2", "hki-fire")) as e2:
        await asyncio.gather(e1.wait_connected(5), e2.wait_connected(5))
        assert e1.unit_id == "E1", "the unit is named by the server's welcome"
        incident = await city.incident("structure_fire", priority=1)
        await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-fire"],
                        json={"units": ["E1"]})
        jobs = e1.assignments()
        async with asyncio.timeout(5):
            dispatched = await anext(jobs)
        assert isinstance(dispatched, Event) and dispatched.type == "assignment.dispatched"
        assignment = dispatched.data["assignment_id"]
        for step in (e1.ack, e1.en_route, e1.on_scene, e1.clear):
            answer = await step(assignment)
            assert answer["events"], answer
            async with asyncio.timeout(5):
                followed = await anext(jobs)  # each step comes back as this unit's event too
            assert isinstance(followed, Event) and followed.data["assignment_id"] == assignment
        with pytest.raises(OpError) as again:
            await e1.ack(assignment)
        assert again.value.code == "illegal_transition" and not again.value.retryable
        current = await city.call("GET", f"/api/v1/incidents/{incident['id']}")
        assert next(a for a in current["assignments"] if a["id"] == assignment)["status"] == "cleared"
        # E2 was never assigned: nothing of that incident reached it.
        await asyncio.sleep(0.2)
        stray = e2.events()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(stray)


async def test_positions_are_answered_whether_the_server_used_them(city: City) -> None:
    async with FieldUnitClient(ws_url(city.client), await unit_token(city, "E1", "hki-fire")) as unit:
        await asyncio.sleep(0.6)  # the test city placed E1 just now: one fix per 0.5 s is the limit
        first = await unit.send_position(NEAR["lat"], NEAR["lon"] + 0.0003, accuracy=5.0, heading=90.0, speed=8.0)
        assert first == {"accepted": True, "reason": "accepted"}
        older = await unit.send_position(NEAR["lat"], NEAR["lon"], time=datetime.now(UTC) - timedelta(minutes=1))
        assert older["accepted"] is False and older["reason"]
        position = (await city.call("GET", "/api/v1/units/E1"))["position"]
        assert position["lon"] == pytest.approx(NEAR["lon"] + 0.0003)
        with pytest.raises(OpError) as invalid:
            await unit.send_position(91.0, 24.9)
        assert invalid.value.code == "invalid_request" and invalid.value.errors[0]["field"] == "/lat"
        with pytest.raises(ValueError):
            await unit.send_position(60.1, 24.9, time=datetime(2026, 1, 1))  # no offset: refused before sending


async def test_a_unit_reports_its_status(city: City) -> None:
    async with FieldUnitClient(ws_url(city.client), await unit_token(city, "M1", "hki-ems")) as unit:
        await unit.set_status("out_of_service")
        assert (await city.call("GET", "/api/v1/units/M1"))["status"] == "out_of_service"
        with pytest.raises(OpError) as refused:
            await unit.set_status("dispatched")  # only a dispatcher's command sets it
        assert refused.value.code == "invalid_request"
