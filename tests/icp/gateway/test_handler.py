"""The `/ws` gateway end to end on real sockets: resume (with random disconnects), visibility, ops at
most once across reconnects, malformed frames, slow consumers, positions, and two nodes."""

from __future__ import annotations

import asyncio
import functools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from icp import appkeys
from icp.app import create_app
from icp.config import Settings
from icp.gateway import handler, protocol
from icp.store import database, eventlog
from icp.store.eventlog import NewEvent
from tests.icp.test_dispatch_api import INCIDENT, NEAR, City, build_city


class Ws:
    """A raw protocol client (the SDK has its own tests): hello, frames, and what arrived."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, client: TestClient, token: str, resume_from: int | None = None) -> tuple[Ws, dict[str, Any]]:
        ws = cls(await client.ws_connect("/ws"))
        hello: dict[str, Any] = {"op": "hello", "token": token}
        if resume_from is not None:
            hello["resume_from"] = resume_from
        await ws.ws.send_json(hello)
        welcome = await ws.next("welcome")
        return ws, welcome

    async def next(self, op: str, timeout: float = 5, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"socket ended ({msg.type}, {self.ws.close_code}) waiting for {op}")
                frame = json.loads(msg.data)
                self.frames.append(frame)
                if frame["op"] == op and all(frame.get(k) == v for k, v in match.items()):
                    return frame  # type: ignore[no-any-return]

    async def request(self, op: str, op_id: str, **fields: Any) -> dict[str, Any]:
        await self.ws.send_json({"op": op, "id": op_id, **fields})
        async with asyncio.timeout(10):
            while True:
                frame = await self.next_any()
                if frame.get("ref") == op_id and frame["op"] in ("ok", "error"):
                    return frame

    async def next_any(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended ({msg.type}, {self.ws.close_code})")
        frame: dict[str, Any] = json.loads(msg.data)
        self.frames.append(frame)
        return frame

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f["op"] == "event"]


async def _append(db_url: str, events: list[NewEvent]) -> None:
    conn = await database.connect(db_url)
    try:
        async with conn.transaction():
            await eventlog.append(conn, events)
    finally:
        await conn.close()


async def test_hello_welcome_and_bad_tokens(client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    ws, welcome = await Ws.connect(client, await make_token("dispatcher", agency="fire"))
    assert welcome["protocol"] == 1 and welcome["principal"]["role"] == "dispatcher" and "session" in welcome
    bad = await client.ws_connect("/ws")
    await bad.send_json({"op": "hello", "token": "icp_nope"})
    error = await bad.receive_json(timeout=5)
    assert error["code"] == "unauthorized"
    closing = await bad.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and bad.close_code == 4401
    await ws.ws.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_resume_after_random_disconnects_delivers_every_visible_event_exactly_once_in_order(
    client: TestClient, make_token, db_url: str, seed: int  # type: ignore[no-untyped-def]
) -> None:
    """A property over random schedules: events keep committing while the client drops its link
    at random moments and resumes from the last seq it saw."""
    rng = random.Random(seed)
    token = await make_token("dispatcher", agency="fire")
    total = 300
    produced: list[int] = []

    async def producer() -> None:
        for i in range(total):
            visibility = ("fire",) if i % 3 else ("police",)  # a third are another agency's
            conn = await database.connect(db_url)
            try:
                async with conn.transaction():
                    recorded = await eventlog.append(conn, [NewEvent("test.tick", f"t:{i}", {"i": i},
                                                                    visibility=visibility)])
            finally:
                await conn.close()
            if visibility == ("fire",):
                produced.append(recorded[0].seq)
            if rng.random() < 0.1:
                await asyncio.sleep(rng.random() * 0.02)

    got: list[int] = []
    task = asyncio.create_task(producer())
    ws, _ = await Ws.connect(client, token, resume_from=0)
    while True:
        try:
            frame = await asyncio.wait_for(ws.next_any(), 3)
        except TimeoutError:
            if task.done():
                break
            continue
        if frame["op"] == "event":
            got.append(frame["seq"])
        if rng.random() < 0.03:  # the link drops; resume from the last seq received
            await ws.ws.close()
            ws, _ = await Ws.connect(client, token, resume_from=got[-1] if got else 0)
    await task
    assert got == sorted(set(got)), "no duplicates, in order"
    assert got == produced, "every visible event, and no other agency's"
    await ws.ws.close()


async def test_resync_when_the_gap_is_too_old(client: TestClient, make_token, db_url: str,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "MAX_REPLAY_EVENTS", 5)
    await _append(db_url, [NewEvent("test.old", "t", {"i": i}) for i in range(20)])
    await asyncio.sleep(0.7)  # the node's feed catches up (poll interval 0.5 s in tests)
    ws, welcome = await Ws.connect(client, await make_token("admin"), resume_from=1)
    frame = await ws.next("resync")
    assert frame["seq"] == welcome["seq"] >= 20
    await ws.ws.close()


async def test_field_units_see_only_their_own_assignments_and_incidents(with_roads, client: TestClient,  # type: ignore[no-untyped-def]
                                                                         make_token) -> None:
    city: City = await build_city(client, make_token)
    m2 = await make_token("unit", agency="hki-ems", unit="M2")
    m1 = await make_token("unit", agency="hki-ems", unit="M1")
    e1 = await make_token("unit", agency="hki-fire", unit="E1")
    ws_m2, _ = await Ws.connect(client, m2)
    ws_m1, _ = await Ws.connect(client, m1)
    ws_e1, _ = await Ws.connect(client, e1)
    incident = await city.incident("medical_emergency", token=city.tokens["hki-ems"])
    await city.call("POST", f"/api/v1/incidents/{incident['id']}/assignments", city.tokens["hki-ems"],
                    json={"units": ["M2"]})
    dispatched = await ws_m2.next("event", type="assignment.dispatched")
    assert dispatched["data"]["unit_id"] == "M2"
    await city.call("POST", f"/api/v1/incidents/{incident['id']}/notes", city.tokens["hki-ems"],
                    json={"text": "patient on the 3rd floor"})
    note = await ws_m2.next("event", type="incident.note_added")
    assert note["data"]["text"] == "patient on the 3rd floor"  # its incident's updates reach it
    ack = await ws_m2.request("ack", "m2-ack-1", assignment=dispatched["data"]["assignment_id"])
    assert ack["op"] == "ok"
    await asyncio.sleep(0.5)
    for other in (ws_m1, ws_e1):  # another unit of the same agency, and another agency's unit
        seen = [f for f in other.frames if f["op"] == "event"]
        while True:
            try:
                seen.append(await asyncio.wait_for(other.next_any(), 0.3))
            except TimeoutError:
                break
        assert not [f for f in seen if f.get("op") == "event" and f["subject"] == f"incident/{incident['id']}"]
    for ws in (ws_m1, ws_m2, ws_e1):
        await ws.ws.close()


async def test_operations_apply_once_even_when_repeated_after_a_reconnect(with_roads, client: TestClient,  # type: ignore[no-untyped-def]
                                                                          make_token) -> None:
    city: City = await build_city(client, make_token)
    incident = await city.incident("medical_emergency", token=city.tokens["hki-ems"])
    console = city.tokens["hki-ems"]
    ws, _ = await Ws.connect(client, console)
    await ws.ws.send_json({"op": "incident.note", "id": "note-1", "incident": incident["id"], "text": "once"})
    await ws.ws.close()  # the link drops before the answer is read
    ws, _ = await Ws.connect(client, console)
    first = await ws.request("incident.note", "note-1", incident=incident["id"], text="once")
    again = await ws.request("incident.note", "note-1", incident=incident["id"], text="once")
    assert first["op"] == again["op"] == "ok" and first["events"] == again["events"]
    timeline = await city.call("GET", f"/api/v1/incidents/{incident['id']}/timeline", console)
    assert [e["data"].get("text") for e in timeline["events"] if e["type"] == "incident.note_added"] == ["once"]
    # Within a session the answer is repeated from memory; on a new connection the server's record
    # still knows the id, and refuses it for a different operation.
    await ws.ws.close()
    ws, _ = await Ws.connect(client, console)
    refused = await ws.request("incident.note", "note-1", incident=incident["id"], text="different")
    assert refused["op"] == "error" and refused["code"] == "idempotency_key_reused"
    await ws.ws.close()


async def test_malformed_frames_get_error_frames_and_abuse_closes(client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    ws, _ = await Ws.connect(client, await make_token("dispatcher", agency="fire"))
    await ws.ws.send_str("{not json")
    assert (await ws.next("error"))["code"] == "invalid_json"
    await ws.ws.send_json({"op": "teleport", "id": "x"})
    assert (await ws.next("error"))["code"] == "unknown_op"
    await ws.ws.send_json({"op": "incident.dispatch", "id": "y", "incident": "I-1", "units": "E1"})
    bad = await ws.next("error")
    assert bad["code"] == "invalid_request" and bad["errors"][0]["field"].startswith("/units")
    forbidden = await ws.request("position", "p-1", lat=60.17, lon=24.94, time=datetime.now(UTC).isoformat())
    assert forbidden["op"] == "error" and forbidden["code"] == "forbidden"  # not a field unit
    for _ in range(25):
        await ws.ws.send_str("garbage")
    async with asyncio.timeout(10):
        while (await ws.ws.receive()).type == aiohttp.WSMsgType.TEXT:
            pass
    assert ws.ws.close_code == 1008


async def test_the_node_clock_closes_silent_sockets_and_pings_quiet_clients(  # type: ignore[no-untyped-def]
        client: TestClient, make_token, monkeypatch: pytest.MonkeyPatch) -> None:
    # One ticker walks every connection: short deadlines here so the test takes a second.
    monkeypatch.setattr(handler, "TICK_S", 0.05)
    monkeypatch.setattr(protocol, "Session", functools.partial(protocol.Session, heartbeat_s=0.3,
                                                               hello_timeout_s=0.3))
    silent = await client.ws_connect("/ws")  # never says hello
    ws, _ = await Ws.connect(client, await make_token("dispatcher", agency="fire"))
    async with asyncio.timeout(5):
        assert (await silent.receive()).type == aiohttp.WSMsgType.CLOSE
        assert silent.close_code == protocol.CLOSE_UNAUTHORIZED
        await ws.next("ping")  # the quiet client is pinged, does not answer, and is let go
        while (await ws.ws.receive()).type == aiohttp.WSMsgType.TEXT:
            pass
    assert ws.ws.close_code == protocol.CLOSE_HEARTBEAT_LOST


@pytest.mark.slow
async def test_a_slow_consumer_is_closed_resumably_and_can_resume(client: TestClient, make_token, db_url: str,  # type: ignore[no-untyped-def]
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "SEND_QUEUE", 20)
    token = await make_token("admin")
    ws, welcome = await Ws.connect(client, token)
    big = "x" * 2000
    flooding = True

    async def flood() -> None:
        nonlocal flooding
        for _ in range(10):  # about 10 MB of events, far faster than this client reads
            await _append(db_url, [NewEvent("test.flood", "t", {"pad": big}) for _ in range(500)])
        flooding = False

    producer = asyncio.create_task(flood())
    async with asyncio.timeout(60):
        while (msg := await ws.ws.receive()).type == aiohttp.WSMsgType.TEXT:
            ws.frames.append(json.loads(msg.data))
            if flooding:
                await asyncio.sleep(0.01)  # a consumer on a poor link
    await producer
    assert ws.ws.close_code == 4008
    last = ws.seqs()[-1] if ws.seqs() else welcome["seq"]
    monkeypatch.setattr(handler, "SEND_QUEUE", 20000)
    resumed, _ = await Ws.connect(client, token, resume_from=last)
    async with asyncio.timeout(30):
        while len(resumed.seqs()) < 5000 - (last - welcome["seq"]):
            await resumed.next("event")
    assert resumed.seqs() == list(range(last + 1, welcome["seq"] + 5001))
    await resumed.ws.close()


async def test_positions_update_the_picture_and_reach_consoles(with_roads, client: TestClient, make_token,  # type: ignore[no-untyped-def]
                                                               db_url: str) -> None:
    city: City = await build_city(client, make_token)
    unit, _ = await Ws.connect(client, await make_token("unit", agency="hki-fire", unit="E1"))
    console, _ = await Ws.connect(client, city.tokens["hki-fire"])
    subscribed = await console.request("subscribe", "s-1", topics=["positions"])
    assert subscribed["op"] == "ok" and "positions" in subscribed["topics"]
    now = datetime.now(UTC)
    # E1's last fix (from the city's set-up) is ~130 m away: 20 s later is a plausible drive.
    ok = await unit.request("position", "p-1", lat=60.1690, lon=24.9400, heading=90, speed=8.0,
                            time=(now + timedelta(seconds=20)).isoformat())
    assert ok["op"] == "ok" and ok["accepted"], ok
    too_soon = await unit.request("position", "p-2", lat=60.1690, lon=24.9401,
                                  time=(now + timedelta(seconds=20.1)).isoformat())
    assert too_soon["accepted"] is False and "often" in too_soon["reason"]
    jump = await unit.request("position", "p-3", lat=60.3, lon=25.2, time=(now + timedelta(seconds=22)).isoformat())
    assert jump["accepted"] is False and "impossible" in jump["reason"]
    batch = await console.next("positions")
    assert batch["units"][0]["unit"] == "E1" and batch["units"][0]["lat"] == pytest.approx(60.1690)
    await asyncio.sleep(0.6)  # the batched write
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM unit_positions WHERE unit_id = 'E1'") >= 1
        doc = await conn.fetchval("SELECT doc FROM units WHERE id = 'E1'")
        assert json.loads(doc)["position"]["lat"] == pytest.approx(60.1690)
    finally:
        await conn.close()
    for ws in (unit, console):
        await ws.ws.close()


async def test_two_nodes_deliver_each_others_events_and_positions(with_roads, settings: Settings, client: TestClient,  # type: ignore[no-untyped-def]
                                                                  aiohttp_client, make_token) -> None:
    node_b = await aiohttp_client(create_app(settings))
    city: City = await build_city(client, make_token)  # city built through node A
    console_b, _ = await Ws.connect(node_b, city.tokens["hki-fire"])
    await console_b.request("subscribe", "s", topics=["events", "positions"])
    incident = await city.incident("vehicle_fire", where=INCIDENT)  # committed on node A
    created = await console_b.next("event", timeout=5, type="incident.created")
    assert created["data"]["incident_id"] == incident["id"]
    unit_a, _ = await Ws.connect(client, await make_token("unit", agency="hki-fire", unit="E2"))
    sent = await unit_a.request("position", "p", lat=NEAR["lat"], lon=NEAR["lon"],
                                time=(datetime.now(UTC) + timedelta(seconds=25)).isoformat())
    assert sent["accepted"]
    async with asyncio.timeout(5):
        while True:
            frame = await console_b.next("positions")
            if any(u["unit"] == "E2" for u in frame["units"]):
                break
    for ws in (console_b, unit_a):
        await ws.ws.close()


async def test_a_silent_unit_is_announced_stale_once(with_roads, client: TestClient, make_token) -> None:  # type: ignore[no-untyped-def]
    city: City = await build_city(client, make_token)
    await city.place("E3", {"lat": 60.1700, "lon": 24.9400}, age_s=3600)  # last heard an hour ago
    hub = client.app[appkeys.POSITIONS]
    first = await hub.announce_stale()
    assert "E3" in first and "E1" not in first  # E1 reported just now
    assert "E3" not in await hub.announce_stale()  # the same silence is announced once
    await asyncio.sleep(0.7)
    events = await city.call("GET", "/api/v1/events", params={"limit": "1000"})
    stale = [e for e in events["events"] if e["type"] == "unit.position_stale" and e["data"]["unit_id"] == "E3"]
    assert len(stale) == 1 and stale[0]["data"]["age_s"] >= 3600


@pytest.mark.slow
async def test_two_server_processes_on_one_database(db_url: str, make_token) -> None:  # type: ignore[no-untyped-def]
    """An event committed through one `icp serve` process reaches a client of another."""
    from tests.process import free_port, icp_env, serving

    admin = await make_token("admin")
    env = icp_env(ICP_DATABASE_URL=db_url)
    port_a, port_b = free_port(), free_port()
    with serving(env, port_a), serving(env, port_b):
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port_b}/ws")
            await ws.send_json({"op": "hello", "token": admin})
            assert (await ws.receive_json(timeout=10))["op"] == "welcome"
            async with http.post(f"http://127.0.0.1:{port_a}/api/v1/agencies", json={
                    "id": "far-fire", "name": "Far Fire", "kind": "fire"},
                    headers={"Authorization": f"Bearer {admin}"}) as r:
                assert r.status == 201
            async with asyncio.timeout(10):
                while True:
                    frame = await ws.receive_json()
                    if frame["op"] == "event" and frame["type"] == "agency.saved":
                        break
            assert frame["data"]["agency"]["id"] == "far-fire"
            await ws.close()
