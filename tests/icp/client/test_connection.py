"""The resumable connection against the real server: welcome, live events, every event exactly once
across dropped links, a refused token, a slow consumer, the offline queue and at-most-once operations."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from icp.client import (
    Backoff,
    ClientClosed,
    Connection,
    ConsoleClient,
    Event,
    OpError,
    OpTimeout,
    QueueFull,
    Resync,
    Unauthorized,
    http_url,
    websocket_url,
)
from tests.icp.client.support import FlakyLink, eventually, running, ws_url
from tests.icp.test_dispatch_api import City

FAST = Backoff(initial=0.05, maximum=0.5)


async def _log(city: City, token: str, after: int) -> list[dict[str, Any]]:
    """The event log after ``after`` as ``token`` may see it (what the socket must deliver)."""
    out: list[dict[str, Any]] = []
    while True:
        page = await city.call("GET", "/api/v1/events", token, params={"after": after, "limit": 1000})
        out += page["events"]
        if len(page["events"]) < 1000:
            return out
        after = page["next_after"]


async def _notes(city: City, incident_id: str) -> list[str]:
    incident = await city.call("GET", f"/api/v1/incidents/{incident_id}")
    return [n["text"] for n in incident["notes"]]


def test_urls_are_derived_either_way() -> None:
    assert websocket_url("http://h:8080") == "ws://h:8080/ws"
    assert websocket_url("https://h/icp/") == "wss://h/icp/ws"
    assert websocket_url("ws://h/ws") == "ws://h/ws"
    assert http_url("wss://h/icp/ws") == "https://h/icp"
    assert http_url("http://h:8080/") == "http://h:8080"
    with pytest.raises(ValueError):
        websocket_url("ftp://h")


def test_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    backoff = Backoff(initial=0.2, maximum=10.0)
    first = [backoff.delay(0, rng) for _ in range(50)]
    assert all(0.1 <= d <= 0.2 for d in first) and len(set(first)) > 1
    assert all(5.0 <= backoff.delay(n, rng) <= 10.0 for n in (6, 10, 1000))


async def test_hello_is_welcomed_and_events_arrive_live(city: City) -> None:
    async with Connection(ws_url(city.client), city.admin) as conn:
        await conn.wait_connected(5)
        assert conn.connected and conn.session
        assert conn.last_seq == conn.welcome["seq"]  # a later link resumes from here
        incident = await city.incident()
        events = conn.events()
        async with asyncio.timeout(5):
            item = await anext(events)
            while not (isinstance(item, Event) and item.type == "incident.created"):
                item = await anext(events)
        assert item.subject == f"incident/{incident['id']}" and item.seq == conn.last_seq


async def test_every_event_exactly_once_in_order_across_dropped_links(city: City, link: FlakyLink) -> None:
    incident = await city.incident()
    token = city.tokens["hki-fire"]  # agency-scoped: what it may see is filtered, on the socket and in the log
    received: list[Event] = []
    async with Connection(link.url, token, backoff=FAST) as conn:
        await conn.wait_connected(5)
        start = conn.last_seq
        assert start is not None

        async def consume() -> None:
            async for item in conn.events():
                assert isinstance(item, Event)
                received.append(item)

        async def chaos() -> None:
            rng = random.Random(7)
            while True:
                await asyncio.sleep(rng.uniform(0.05, 0.25))
                # Either end can see the drop first: the proxy resets both sides, or the client aborts.
                link.cut() if rng.random() < 0.5 else conn.abort_link()

        async with running(consume()), running(chaos()):
            for i in range(60):
                await city.call("POST", f"/api/v1/incidents/{incident['id']}/notes", token, json={"text": f"n{i}"})
                await asyncio.sleep(0.02)
            expected = await _log(city, token, start)
            assert len(expected) >= 60
            await eventually(lambda: _at_least(received, expected[-1]["seq"]), timeout=20)
        assert conn.reconnects >= 3, "the links were cut while events were flowing"
    assert [e.seq for e in received] == [e["seq"] for e in expected]
    assert [(e.type, e.subject, dict(e.data)) for e in received] == [
        (e["type"], e["subject"], e["data"]) for e in expected]


async def _at_least(received: list[Event], seq: int) -> bool:
    return bool(received) and received[-1].seq >= seq


async def test_a_slow_consumer_costs_a_replay_not_an_event(city: City) -> None:
    incident = await city.incident()
    async with Connection(ws_url(city.client), city.admin, max_events=4, backoff=FAST) as conn:
        await conn.wait_connected(5)
        start = conn.last_seq
        assert start is not None
        for i in range(25):  # nobody reads meanwhile: the buffer fills, the rest is dropped and replayed later
            await city.call("POST", f"/api/v1/incidents/{incident['id']}/notes", json={"text": f"n{i}"})
        expected = [e["seq"] for e in await _log(city, city.admin, start)]
        got: list[int] = []
        async with asyncio.timeout(15):
            async for item in conn.events():
                assert isinstance(item, Event)
                got.append(item.seq)
                await asyncio.sleep(0.01)
                if item.seq >= expected[-1]:
                    break
        assert got == expected
        assert conn.reconnects >= 1, "it relinked to catch up"


async def test_a_link_that_dies_silently_is_detected_and_replaced(city: City, link: FlakyLink) -> None:
    async with Connection(link.url, city.admin, backoff=FAST, ping_interval=0.3, ping_timeout=0.6) as conn:
        await conn.wait_connected(5)
        await asyncio.sleep(1.5)
        assert conn.reconnects == 0, "the server answers WebSocket pings: a live link is kept"
        link.freeze()
        await eventually(lambda: _relinked(conn), timeout=5)
        incident = await city.incident()
        async with asyncio.timeout(5):
            async for item in conn.events():
                if isinstance(item, Event) and item.subject == f"incident/{incident['id']}":
                    break


async def _relinked(conn: Connection) -> bool:
    return conn.reconnects >= 1 and conn.connected


async def test_a_refused_token_raises_and_is_not_retried(client: Any, link: FlakyLink) -> None:
    async with Connection(link.url, "icp_not-a-token", backoff=FAST) as conn:
        with pytest.raises(Unauthorized):
            await conn.wait_connected(5)
        await asyncio.sleep(0.5)  # FAST would have retried several times by now
        assert link.accepted == 1
        with pytest.raises(Unauthorized):
            await anext(conn.events())
        with pytest.raises(Unauthorized):
            await conn.request("ping")


async def test_offline_queue_is_bounded_and_times_out_unsent(client: Any, link: FlakyLink) -> None:
    link.down()
    async with Connection(link.url, "icp_whatever", max_pending=3, backoff=FAST) as conn:
        waiting = [asyncio.create_task(conn.request("status", status="available", timeout=None)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert conn.pending == 3 and not conn.connected
        with pytest.raises(QueueFull):
            await conn.request("status", status="available")
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert conn.pending == 0, "a cancelled operation leaves the queue"
        with pytest.raises(OpTimeout) as info:
            await conn.request("status", status="available", timeout=0.2)
        assert not info.value.sent and conn.pending == 0
        late = asyncio.create_task(conn.request("status", status="available", timeout=None))
        await asyncio.sleep(0.05)
    with pytest.raises(ClientClosed):
        await late


# -- operations: these need the gateway's client operations (protocol v1) ---------------------------

async def test_operations_issued_offline_go_out_in_order_after_reconnect(city: City, link: FlakyLink) -> None:
    incident = await city.incident()
    link.down()
    async with ConsoleClient(link.url, city.tokens["hki-fire"], backoff=FAST) as console:
        notes = [asyncio.create_task(console.add_note(incident["id"], f"offline {i}")) for i in range(5)]
        await asyncio.sleep(0.3)
        assert not console.connected and console.pending == 5
        link.up()
        async with asyncio.timeout(10):
            answers = await asyncio.gather(*notes)
        assert len(answers) == 5 and console.pending == 0
    assert await _notes(city, incident["id"]) == [f"offline {i}" for i in range(5)]


async def test_a_lost_answer_is_fetched_again_under_the_same_id_not_reapplied(city: City, link: FlakyLink) -> None:
    incident = await city.incident()
    async with ConsoleClient(link.url, city.tokens["hki-fire"], backoff=FAST) as console:
        await console.wait_connected(5)
        link.swallowing = True  # the server applies it and answers; the answer is lost on the way
        note = asyncio.create_task(console.add_note(incident["id"], "exactly once"))
        await eventually(lambda: _has_note(city, incident["id"], "exactly once"))
        assert not note.done()
        link.cut()  # the link drops before the answer arrived: the client re-sends the same id
        link.swallowing = False
        async with asyncio.timeout(10):
            answer = await note
        assert console.reconnects >= 1 and isinstance(answer, dict)
        # A caller that gave up can also ask again by id: answered, not applied.
        again = await console.request("incident.note", op_id="fixed-id-1", incident=incident["id"], text="by id")
        repeat = await console.request("incident.note", op_id="fixed-id-1", incident=incident["id"], text="by id")
        assert repeat == again
    assert await _notes(city, incident["id"]) == ["exactly once", "by id"]


async def _has_note(city: City, incident_id: str, text: str) -> bool:
    return text in await _notes(city, incident_id)


async def test_an_operation_error_is_raised_with_its_code(city: City) -> None:
    async with ConsoleClient(ws_url(city.client), city.tokens["hki-fire"]) as console:
        with pytest.raises(OpError) as info:
            await console.add_note("no-such-incident", "hello")
        assert info.value.code == "not_found" and info.value.message


async def test_a_gap_too_old_to_replay_is_a_resync_then_the_stream_goes_on(city: City,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from icp.gateway import handler

    monkeypatch.setattr(handler, "MAX_REPLAY_EVENTS", 3)  # the server's setting, made small
    incident = await city.incident()
    async with Connection(ws_url(city.client), city.admin) as probe:
        await probe.wait_connected(5)
        head = probe.last_seq
        assert head is not None and head > 5
    async with Connection(ws_url(city.client), city.admin, resume_from=head - 5) as conn:
        items = conn.events()
        async with asyncio.timeout(5):
            first = await anext(items)
        assert isinstance(first, Resync) and first.seq == head and first.reason
        assert conn.last_seq == head
        await city.call("POST", f"/api/v1/incidents/{incident['id']}/notes", json={"text": "after the resync"})
        async with asyncio.timeout(5):
            after = await anext(items)
        assert isinstance(after, Event) and after.seq > head and after.type == "incident.note_added"


async def test_ping_measures_the_round_trip(city: City) -> None:
    async with Connection(ws_url(city.client), city.admin) as conn:
        rtt = await conn.ping()
        assert 0 < rtt < 5
