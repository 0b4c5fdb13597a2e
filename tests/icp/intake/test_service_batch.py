"""The intake's batch path against a real database: light links and whole-incident changes mixed
in one batch keep the incident's alert list, count and events exactly as one alert at a time
would; incident numbers taken in a batch follow one another; the live picture's fast link path
equals `evolve`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dispatch import events as dev
from dispatch.commands import MAX_ALERTS_PER_LINK
from dispatch.evolve import evolve
from dispatch.incident import Incident, IncidentNumber
from dispatch.policy import DispatchPolicy
from dispatch.state import DispatchState
from geo.coords import Point
from icp import appkeys
from icp.auth.principal import Principal, Role
from icp.config import Settings
from icp.intake.cap import parse_cap
from icp.intake.native import parse_native
from icp.intake.service import COPY_AT_LEAST, CORRELATION_LOCK_KEY, MAX_BOXES_PER_TYPES, RECEIVED_PER_EVENT, _Batch
from icp.live import LivePicture
from icp.store import database, eventlog
from icp.store.eventlog import NewEvent, RecordedEvent
from icp.store.group_commit import GroupCommitter, Staged
from tests.helpers import bearer
from tests.icp.test_intake_api import ACROSS_TOWN, BUILDING, _cap, _cap_post, native, post, sensor  # noqa: F401  (sensor: a fixture)


async def batch(client: TestClient, token: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = await client.post("/api/v1/alerts/batch", json=items, headers=bearer(token))
    assert response.status == 202, await response.text()
    results: list[dict[str, Any]] = (await response.json())["results"]
    return results


def near(i: int) -> dict[str, float]:
    return {"lat": BUILDING["lat"] + i * 0.00002, "lon": BUILDING["lon"]}


async def test_links_before_and_after_an_escalation_in_one_batch(client: TestClient, sensor: str,  # noqa: F811
                                                                 db_url: str) -> None:
    first = await post(client, sensor, native("s-0", where=near(0), certainty="Observed"))
    assert first["outcome"] == "created"
    incident_id = first["incident_id"]
    # s-1 joins lightly; s-2 is the third alert, which turns the alarm into a structure fire (the
    # incident is loaded whole, with s-1's pending link); s-3 joins the loaded copy.
    results = await batch(client, sensor, [native(f"s-{i}", where=near(i)) for i in (1, 2, 3)])
    assert [r["outcome"] for r in results] == ["attached"] * 3
    assert {r["incident_id"] for r in results} == {incident_id}
    assert "type alarm_activation → structure_fire" in results[1]["reason"]
    later = await batch(client, sensor, [native(f"s-{i}", where=near(i)) for i in (4, 5)])
    assert [r["outcome"] for r in later] == ["attached"] * 2
    ids = [first["alert_id"], *(r["alert_id"] for r in results + later)]

    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT icp_incident_doc(id, doc)::text AS doc, doc ? 'alert_ids' AS inline,"
                                  " alert_count, incident_type, priority, last_alert_at"
                                  " FROM incidents WHERE id = $1", incident_id)
        doc = json.loads(row["doc"])
        assert doc["alert_ids"] == ids and not row["inline"]  # the list is rows, not part of the stored document
        assert [r["n"] for r in await conn.fetch("SELECT n FROM incident_alerts WHERE incident_id = $1 ORDER BY n",
                                                 incident_id)] == list(range(1, 7))
        assert row["alert_count"] == 6 and row["incident_type"] == "structure_fire" and row["priority"] == 2
        assert doc["incident_type"] == "structure_fire" and doc["priority"] == 2
        assert row["last_alert_at"] is not None
        events = await conn.fetch("SELECT type, data::text AS data, visibility FROM events WHERE subject = $1"
                                  " ORDER BY seq", f"incident/{incident_id}")
        data = [json.loads(e["data"]) for e in events]
        # s-1's light link is one incident.alerts_linked, staged when s-2 loads the incident;
        # s-2 and s-3 link through the loaded copy; s-4 and s-5 are one light link.
        assert [e["type"] for e in events] == [
            "incident.created", "incident.alerts_linked", "incident.alert_linked", "incident.updated",
            "incident.alert_linked", "incident.alerts_linked"]
        assert [a for d in data for a in d.get("alert_ids", [d.get("alert_id")]) if a] == ids
        assert data[-1]["alert_ids"] == ids[4:]
        assert all(d["agency_ids"] == data[0]["agency_ids"] for d in data)
        assert all(e["visibility"] == events[0]["visibility"] for e in events)
        placed = await conn.fetch("SELECT id, incident_id, outcome FROM alerts ORDER BY id")
        assert {r["id"]: (r["incident_id"], r["outcome"]) for r in placed} == {
            a: (incident_id, "created" if a == ids[0] else "attached") for a in ids}
    finally:
        await conn.close()


async def test_incidents_opened_in_one_batch_take_consecutive_numbers(client: TestClient, sensor: str,  # noqa: F811
                                                                      db_url: str) -> None:
    spots = [{"lat": 60.160 + i * 0.01, "lon": 24.93} for i in range(3)]
    results = await batch(client, sensor, [native(f"n-{i}", where=spots[i]) for i in range(3)])
    assert [r["outcome"] for r in results] == ["created"] * 3
    sequences = [IncidentNumber.parse(r["incident_id"]).sequence for r in results]
    assert sequences == [sequences[0], sequences[0] + 1, sequences[0] + 2]
    one = await post(client, sensor, native("n-3", where={"lat": 60.19, "lon": 24.93}))
    assert IncidentNumber.parse(one["incident_id"]).sequence == sequences[-1] + 1
    conn = await asyncpg.connect(db_url)
    try:
        year = datetime.now(UTC).year
        assert await conn.fetchval("SELECT last FROM incident_numbers WHERE year = $1", year) == sequences[-1] + 1
    finally:
        await conn.close()


def test_the_live_pictures_link_path_equals_evolve() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    incident = Incident(id="2026-000001", number=IncidentNumber(2026, 1), incident_type="alarm_activation",
                        priority=3, location=Point(lat=60.17, lon=24.94), created_at=at, alert_ids=("AL-1",))
    live = LivePicture(DispatchPolicy())
    live.state = DispatchState(incidents={incident.id: incident})
    links = [dev.AlertLinked(at=at, incident_id=incident.id, alert_id="AL-2"),
             dev.AlertsLinked(at=at, incident_id=incident.id, alert_ids=("AL-3", "AL-5"))]
    note = dev.NoteAdded(at=at, incident_id=incident.id, author="ICP intake", text="checked")
    expected = live.state
    for ev in [*links, note, dev.AlertLinked(at=at, incident_id=incident.id, alert_id="AL-4")]:
        expected = evolve(expected, ev)

    def recorded(seq: int, ev: dev.Event) -> RecordedEvent:
        data = {k: v for k, v in ev.to_dict().items() if k != "type"}
        return RecordedEvent(seq, at, ev.type, ev.subject, ("*",), {}, {**data, "agency_ids": ["fire"]},
                             b"", b"")

    # Alerts received between two links change nothing in the picture (and do not end the run).
    received = RecordedEvent(2, at, "alerts.received", "source/s", ("*",), {}, {"alerts": [{"alert_id": "AL-3"}]},
                             b"", b"")
    live.apply([recorded(1, links[0]), received, recorded(3, links[1]), recorded(4, note),
                recorded(5, dev.AlertLinked(at=at, incident_id=incident.id, alert_id="AL-4"))])
    assert live.applied_seq == 5
    assert live.state.incidents[incident.id] == expected.incidents[incident.id]
    assert live.state.incidents[incident.id].alert_ids == ("AL-1", "AL-2", "AL-3", "AL-5", "AL-4")
    assert live.incident_agencies[incident.id] == ["fire"]


async def test_a_failing_lot_is_run_again_alert_by_alert(db_url: str) -> None:
    """Group commit runs a lot of batched work without a savepoint; when it fails, the batch is
    rolled back and each item runs alone, so only the culprit fails."""
    pool = await database.create_pool(db_url, Settings(pool_min=1, pool_max=4))
    committer = GroupCommitter(pool)
    committer.start()

    async def work(c: asyncpg.Connection, items: list[int]) -> list[Staged[int]]:
        await c.execute("CREATE TABLE IF NOT EXISTS lot_probe (v int)")
        await c.executemany("INSERT INTO lot_probe VALUES ($1)", [(v,) for v in items])
        if 13 in items:
            await c.execute("SELECT 1/0")
        return [Staged(v, [NewEvent("test.lot", f"v:{v}", {"v": v})]) for v in items]

    try:
        results = await committer.submit_batched_all(work, [1, 13, 2])
        again = await committer.submit_batched_all(work, [3, 4])
    finally:
        await committer.stop()
        await pool.close()
    assert results[0][0] == 1 and results[2][0] == 2
    assert isinstance(results[1], asyncpg.DivisionByZeroError)
    assert [r[0] for r in again] == [3, 4]
    conn = await asyncpg.connect(db_url)
    try:
        assert sorted(await conn.fetchval("SELECT array_agg(v) FROM lot_probe")) == [1, 2, 3, 4]
        assert await conn.fetchval("SELECT count(*) FROM events WHERE type = 'test.lot'") == 4
    finally:
        await conn.close()


async def test_the_locked_look_up_of_repeats_uses_the_index_as_the_table_grows(db_url: str) -> None:
    # Intake's first statement runs in a PL/pgSQL function, whose plans are kept per session. A
    # plan made once for all while `alerts` was small scanned the whole table on every call after
    # it had grown (migration 0016 plans each call for its values). Count the scans.
    conn = await asyncpg.connect(db_url)
    try:
        async def look_up(keys: list[str]) -> None:
            async with conn.transaction():
                await conn.fetch("SELECT * FROM icp_intake_read_locked($1, $2, $3, '{}', '{}', '{}', '{}', '{}')",
                                 CORRELATION_LOCK_KEY, ["bench"] * len(keys), keys)

        async def scans() -> int:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            return int(await conn.fetchval("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'alerts'"))

        for n in range(8):  # while the table is empty: enough calls for a plan made once for all
            await look_up([f"k-{n}-{i}" for i in range(32)])
        await conn.execute(
            "INSERT INTO alerts (id, source, identifier, kind, msg_type, status, sent, outcome, report, raw,"
            " content_type, principal) SELECT 'AL-' || g, 'bench', 'old-' || g, 'smoke', 'alert', 'actual', now(),"
            " 'recorded', '{}', '\\x', 'application/json', 'token:1' FROM generate_series(1, 20000) AS g")
        before = await scans()
        for n in range(5):
            await look_up([f"old-{n * 32 + i}" for i in range(32)])
        assert await scans() == before
    finally:
        await conn.close()


async def test_intakes_plain_events_keep_the_chain_verifiable(client: TestClient, sensor: str,  # noqa: F811
                                                              db_url: str) -> None:
    # Intake writes its events' data as it builds it (NewEvent.plain), without the log's normalising
    # walk. Coordinates that are whole numbers are where that could go wrong: jsonb gives them back
    # as integers, and the audit recomputes every hash from what it reads back.
    whole = {"lat": 60.0, "lon": 25.0}
    results = await batch(client, sensor, [native("w-0", where=whole), native("w-1", where=whole),
                                           native("f-0", where=near(0)), native("f-1", where=near(1))])
    assert [r["outcome"] for r in results] == ["created", "attached", "created", "attached"]
    conn = await database.connect(db_url)  # jsonb as Python values, as `icp audit verify` reads them
    try:
        verdict = await eventlog.verify(conn)
        assert verdict.ok, verdict.reason
        data = await conn.fetchval("SELECT data FROM events WHERE type = 'alerts.received'")
        assert data["alerts"][0]["alert_id"] == results[0]["alert_id"]
        assert data["alerts"][0]["location"] == {"lat": 60, "lon": 25}
        links = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'incident.alert_linked'")
        assert links == 2
    finally:
        await conn.close()


def test_plain_event_data_must_be_a_dict() -> None:
    with pytest.raises(eventlog.EventError, match="plain"):
        NewEvent("x.y", "x/1", MappingProxyType({"a": 1}), plain=True)
    with pytest.raises(eventlog.EventError, match="NaN"):
        eventlog.json_number(float("nan"))
    assert eventlog.json_number(60.0) == 60 and type(eventlog.json_number(60.0)) is int
    assert eventlog.json_number(60.5) == 60.5


async def test_a_batch_spread_over_many_places_reads_one_box_and_still_joins_the_right_incidents(
        client: TestClient, sensor: str) -> None:  # noqa: F811
    # Eighty buildings ~330 m apart (beyond smoke's 150 m): more boxes than intake reads one by
    # one (MAX_BOXES_PER_TYPES), so the batch reads the open incidents in one box around them all.
    places = [{"lat": BUILDING["lat"] + (i % 10) * 0.003 - 0.015, "lon": BUILDING["lon"] + (i // 10) * 0.006 - 0.024}
              for i in range(80)]
    assert len(places) > MAX_BOXES_PER_TYPES
    opened = await batch(client, sensor, [native(f"first-{i}", where=p) for i, p in enumerate(places)])
    assert [r["outcome"] for r in opened] == ["created"] * 80
    again = await batch(client, sensor, [native(f"again-{i}", where=p) for i, p in enumerate(places)])
    assert [r["outcome"] for r in again] == ["attached"] * 80
    assert [r["incident_id"] for r in again] == [r["incident_id"] for r in opened]


async def test_a_transactions_alerts_are_listed_in_lots_by_who_may_see_them(client: TestClient, make_token: Any,
                                                                            db_url: str) -> None:
    # A key of the fire department's own detectors: the incidents they open are the department's.
    hfd = await make_token("sensor", name="hfd detectors", source="kamppi-detectors", agency="hfd")
    # 150 detectors in one building (an incident's agencies see them) and a camera's alert
    # (recorded for a person to look at; everyone sees it): alerts.received lists them in order,
    # in lots of at most RECEIVED_PER_EVENT, one set of lots per audience.
    items = [native(f"lot-{i}", where=near(i % 10)) for i in range(150)]
    items.insert(70, native("lot-camera", kind="camera"))
    results = await batch(client, hfd, items)
    far = results.pop(70)
    assert far["outcome"] == "recorded" and {r["outcome"] for r in results[1:]} == {"attached"}
    conn = await database.connect(db_url)
    try:
        rows = await conn.fetch("SELECT seq, subject, visibility, actor, data FROM events"
                                " WHERE type = 'alerts.received' ORDER BY seq")
        incident_rows = [r for r in rows if r["visibility"] != ["*"]]
        assert [len(r["data"]["alerts"]) for r in incident_rows] == [RECEIVED_PER_EVENT, RECEIVED_PER_EVENT, 22]
        listed = [a for r in incident_rows for a in r["data"]["alerts"]]
        assert [a["alert_id"] for a in listed] == [r["alert_id"] for r in results]
        assert [(a["incident_id"], a["outcome"]) for a in listed] == [(r["incident_id"], r["outcome"])
                                                                      for r in results]
        assert listed[0]["identifier"] == "lot-0" and listed[0]["kind"] == "smoke"
        agencies = await conn.fetchval("SELECT agency_ids FROM incidents WHERE id = $1", results[0]["incident_id"])
        assert all(r["visibility"] == sorted(agencies) for r in incident_rows)
        [everyone] = [r for r in rows if r["visibility"] == ["*"]]
        assert [a["alert_id"] for a in everyone["data"]["alerts"]] == [far["alert_id"]]
        assert everyone["data"]["alerts"][0]["kind"] == "camera"
        assert {r["subject"] for r in rows} == {"source/kamppi-detectors"}
        assert {r["actor"]["source"] for r in rows} == {"kamppi-detectors"}
        # What was received comes before what it caused.
        first_created = await conn.fetchval("SELECT min(seq) FROM events WHERE type = 'incident.created'")
        assert rows[0]["seq"] < first_created
        verdict = await eventlog.verify(conn)
        assert verdict.ok, verdict.reason
    finally:
        await conn.close()


def test_light_links_are_one_fact_per_run_of_one_sender_within_the_bound() -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    a, b = (Principal(kind="token", id=n, name=n, role=Role.SENSOR) for n in ("1", "2"))
    routing = object.__new__(_Batch)
    routing.now = at
    pending = ([(f"A{n}", a) for n in range(MAX_ALERTS_PER_LINK + 5)] + [("B0", b), ("B1", b)] + [("A-last", a)])
    facts = routing._links("2026-000001", pending)
    assert [(len(e.alert_ids), who.id) for e, who in facts] == [(MAX_ALERTS_PER_LINK, "1"), (5, "1"), (2, "2"),
                                                                (1, "1")]
    assert [x for e, _ in facts for x in e.alert_ids] == [x for x, _ in pending]
    assert all(e.incident_id == "2026-000001" and e.at == at for e, _ in facts)


async def test_a_large_lot_is_inserted_while_it_is_routed(client: TestClient, sensor: str,  # noqa: F811
                                                          db_url: str) -> None:
    # More alerts than COPY_AT_LEAST: the first are inserted while the rest are routed, the
    # one that opened an incident among them, before the flush saves the incident (in the same
    # transaction: an alert's incident is no foreign key, migration 0023). Had any insert failed,
    # the lot would have been run again alert by alert, one alerts.received each.
    joining = [native(f"big-{i}", where=near(i % 10)) for i in range(COPY_AT_LEAST + 5)]
    opening = [native(f"far-{i}", where={"lat": 60.1600 + 0.003 * i, "lon": 24.9300}) for i in range(8)]
    results = await batch(client, sensor, joining + opening)
    assert [r["outcome"] for r in results] == ["created"] + ["attached"] * (COPY_AT_LEAST + 4) + ["created"] * 8
    conn = await database.connect(db_url)
    try:
        placed = {r["id"]: (r["incident_id"], r["outcome"])
                  for r in await conn.fetch("SELECT id, incident_id, outcome FROM alerts")}
        assert placed == {r["alert_id"]: (r["incident_id"], r["outcome"]) for r in results}
        opened = {r["incident_id"] for r in results}
        assert await conn.fetchval("SELECT count(*) FROM incidents WHERE id = any($1::text[])", list(opened)) == 9
        assert await conn.fetchval("SELECT count(*) FROM alerts a LEFT JOIN incidents i ON i.id = a.incident_id"
                                   " WHERE a.incident_id IS NOT NULL AND i.id IS NULL") == 0  # none points nowhere
        lots = await conn.fetch("SELECT data FROM events WHERE type = 'alerts.received' ORDER BY seq")
        whole, rest = divmod(len(results), RECEIVED_PER_EVENT)  # one lot, not alert by alert
        assert [len(r["data"]["alerts"]) for r in lots] == [RECEIVED_PER_EVENT] * whole + [rest]
        verdict = await eventlog.verify(conn)
        assert verdict.ok, verdict.reason
    finally:
        await conn.close()


async def test_a_cap_cancel_in_a_large_lot_waits_for_the_insert_under_way(client: TestClient, make_token: Any,
                                                                          db_url: str) -> None:
    # Alerts from two feeds share a lot: 290 native alerts (inserts start while the rest are
    # routed), a CAP Cancel (its path reads and writes through the
    # connection, so it waits for that insert), then 10 more.
    token = await make_token("sensor")
    opened = await _cap_post(client, token, _cap("LOT-1"))
    assert opened["outcome"] == "created"
    cancel = parse_cap(_cap("LOT-2", "Cancel", "rescue.helsinki,LOT-1,2026-01-01T00:00:00-00:00"))
    who = Principal(kind="token", id="lot", name="lot", role=Role.SENSOR)
    natives = [parse_native(native(f"lot-{i}", where=ACROSS_TOWN)) for i in range(300)]
    items = [(r, b"{}", "application/json") for r in natives[:290]]
    items += [(cancel, b"<alert/>", "application/cap+xml")]
    items += [(r, b"{}", "application/json") for r in natives[290:]]
    outcomes = await client.app[appkeys.INTAKE].accept_all(items, who)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    assert [o.outcome for o in outcomes] == ["created"] + ["attached"] * 289 + ["recorded"] + ["attached"] * 10
    assert outcomes[290].incident_id == opened["incident_id"]
    conn = await database.connect(db_url)
    try:
        assert await conn.fetchval("SELECT status FROM incidents WHERE id = $1", opened["incident_id"]) == "cancelled"
        assert await conn.fetchval("SELECT count(*) FROM alerts WHERE id = any($1::text[])",
                                   [o.alert_id for o in outcomes]) == 301
        lots = await conn.fetch("SELECT data FROM events WHERE type = 'alerts.received' AND subject = $1 ORDER BY seq",
                                "source/kamppi-detectors")
        assert [len(r["data"]["alerts"]) for r in lots] == [64] * 4 + [44]  # one lot, not alert by alert
        verdict = await eventlog.verify(conn)
        assert verdict.ok, verdict.reason
    finally:
        await conn.close()


async def test_summaries_whose_text_must_be_searched_still_hash_as_the_audit_recomputes(
        client: TestClient, sensor: str, db_url: str) -> None:  # noqa: F811
    # A summary's text is orjson's as it is only when intake vouched for it (no float under 1e-4
    # in magnitude, no NUL): a location by the equator and prime meridian sends its group through
    # the canonical writer (orjson writes 5e-05 as "0.00005"). Either way the log verifies.
    items = [native("plain-1", where=near(1)), native("tiny-1", where={"lat": 0.00005, "lon": -0.00002}),
             native("plain-2", where=near(2), headline="Kitchen")]
    results = await batch(client, sensor, items)
    assert all(r["outcome"] in ("created", "attached", "recorded") for r in results)
    conn = await database.connect(db_url)
    try:
        [lot] = await conn.fetch("SELECT data FROM events WHERE type = 'alerts.received' ORDER BY seq")
        location = lot["data"]["alerts"][1]["location"]
        assert (location["lat"], location["lon"]) == (0.00005, -0.00002)
        verdict = await eventlog.verify(conn)
        assert verdict.ok, verdict.reason
    finally:
        await conn.close()
