"""The console client against the real server: dispatch commands over the socket, subscriptions that
survive a reconnect, and unit positions streamed to a subscribed console."""

from __future__ import annotations

import asyncio
import functools

import pytest

from icp.client import Backoff, ConsoleClient, FieldUnitClient, OpError
from tests.icp.client.support import FlakyLink, eventually, next_event, unit_token, ws_url
from tests.icp.test_dispatch_api import INCIDENT, NEAR, City

FAST = Backoff(initial=0.05, maximum=0.5)


async def test_a_console_creates_recommends_and_dispatches(city: City) -> None:
    async with ConsoleClient(ws_url(city.client), city.tokens["hki-ems"]) as console:
        events = console.events()
        created = await console.create_incident("medical_emergency", 2, location=INCIDENT)
        incident_id = created["incident_id"]
        seen = await next_event(events, lambda e: e.type == "incident.created")
        assert seen.data["incident_id"] == incident_id
        recommendation = (await console.recommend(incident_id))["recommendation"]
        assert recommendation["picks"][0]["unit_id"] == "M2"
        answer = await console.dispatch(incident_id, ["M2"])
        assert [e["type"] for e in answer["events"]].count("assignment.dispatched") == 1
        dispatched = await next_event(events, lambda e: e.type == "assignment.dispatched")
        assert dispatched.data["unit_id"] == "M2" and dispatched.data["incident_id"] == incident_id
        other = await console.create_incident("medical_emergency", 3, location=NEAR)
        with pytest.raises(OpError) as refused:
            await console.dispatch(other["incident_id"], ["M2"])
        assert refused.value.code == "unit_unavailable" and not refused.value.retryable
        await console.add_note(incident_id, "patient conscious")
        await console.cancel_incident(other["incident_id"], "duplicate")
        assert (await city.call("GET", f"/api/v1/incidents/{other['incident_id']}"))["status"] == "cancelled"
        assert await console.ping() > 0


async def test_subscriptions_are_repeated_on_every_new_link(city: City, link: FlakyLink) -> None:
    mine, other = await city.incident(), await city.incident()
    token = city.tokens["hki-fire"]
    async with ConsoleClient(link.url, token, topics=[f"incident:{mine['id']}"], backoff=FAST) as console:
        assert console.topics == [f"incident:{mine['id']}"]
        await console.wait_connected(5)
        for round_ in range(2):
            before = console.reconnects
            link.cut()
            if round_ == 1:  # round 0 writes while the link is down (replayed), round 1 after it is back (live)
                await eventually(functools.partial(_relinked, console, before))
            for incident in (other, mine):  # the other first: had it been delivered, it would come first
                await city.call("POST", f"/api/v1/incidents/{incident['id']}/notes", token,
                                json={"text": f"round {round_}"})
            note = await next_event(console.events(), lambda e: e.type == "incident.note_added")
            assert note.data["incident_id"] == mine["id"], "only the subscribed incident's events arrive"
        assert console.reconnects >= 2


async def _relinked(console: ConsoleClient, before: int) -> bool:
    return console.reconnects > before and console.connected


async def test_positions_stream_to_a_subscribed_console(city: City) -> None:
    url = ws_url(city.client)
    async with ConsoleClient(url, city.tokens["hki-fire"], topics=["positions"]) as console, \
            FieldUnitClient(url, await unit_token(city, "E1", "hki-fire")) as unit:
        await console.wait_connected(5)
        await asyncio.sleep(0.6)  # the test city placed E1 just now: one fix per 0.5 s is the limit
        answer = await unit.send_position(NEAR["lat"] + 0.0005, NEAR["lon"], accuracy=4.0, heading=10.0, speed=5.0)
        assert answer["accepted"], answer
        async with asyncio.timeout(5):
            async for batch in console.positions():
                fixes = [f for f in batch if f.get("unit") == "E1"]
                if fixes:
                    break
        assert fixes[-1]["lat"] == pytest.approx(NEAR["lat"] + 0.0005) and fixes[-1]["speed"] == 5.0
