"""Fan-out: the event log is the outbox. Each committed event becomes one delivery row per endpoint
that subscribes to its type and whose agency may see it.

The step runs in one transaction that locks the single ``webhook_outbox`` row, reads the events
after its ``last_seq``, inserts the deliveries and advances ``last_seq``: however many nodes run
it, each event is fanned out exactly once, and nothing is announced that was not committed
(commit order equals seq order, so reading ``seq > last_seq`` never skips a late commit).

The body is built once per event and stored with the delivery, so every retry sends (and signs)
the very same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from icp.store import eventlog
from icp.store.eventlog import PUBLIC, RecordedEvent
from icp.webhooks.endpoints import INTERNAL_PREFIX, matches

FANOUT_BATCH = 2000
IncidentView = Callable[[asyncpg.Connection, str, datetime], Any]


def msg_id(endpoint_id: str, seq: int) -> str:
    """The ``webhook-id``: a function of (endpoint, event), so it is the same on every attempt,
    on every node, and after any restart."""
    return f"msg_{endpoint_id}_{seq}"


def payload(ev: RecordedEvent, eido: dict[str, Any] | None) -> bytes:
    data = dict(ev.data)
    if eido is not None:
        data["eido"] = eido
    return json.dumps({"type": ev.type, "seq": ev.seq, "timestamp": eventlog.format_at(ev.at), "data": data},
                      separators=(",", ":"), ensure_ascii=False).encode()


def _visible_to(ev: RecordedEvent, agency_id: str) -> bool:
    return PUBLIC in ev.visibility or agency_id in ev.visibility


async def fan_out(conn: asyncpg.Connection, incident_view: IncidentView,
                  limit: int = FANOUT_BATCH) -> tuple[int, set[str]] | None:
    """One fan-out step inside the caller's transaction: (events consumed, endpoint ids that got
    deliveries), or None when no endpoint listens (the cursor then moves to the log's head).
    ``incident_view(conn, incident_id, at)`` gives the EIDO view of an incident."""
    last = await conn.fetchval("SELECT last_seq FROM webhook_outbox FOR UPDATE")
    endpoints = await conn.fetch(
        "SELECT id, agency_id, events, from_seq FROM webhook_endpoints WHERE status <> 'disabled'")
    if not endpoints:  # nobody listens: skip ahead without reading the log
        head = await eventlog.head_seq(conn)
        if head != last:
            await conn.execute("UPDATE webhook_outbox SET last_seq = $1", head)
        return None
    events = await eventlog.read_after(conn, last, limit)
    if not events:
        return 0, set()
    rows: list[tuple[str, int, str, str, bytes]] = []
    views: dict[str, Any] = {}
    for ev in events:
        if ev.type.startswith(INTERNAL_PREFIX):
            continue
        targets = [e for e in endpoints
                   if ev.seq > e["from_seq"] and matches(e["events"], ev.type) and _visible_to(ev, e["agency_id"])]
        if not targets:
            continue
        eido = None
        if ev.subject.startswith("incident/"):
            incident_id = ev.subject.removeprefix("incident/")
            if incident_id not in views:
                views[incident_id] = await incident_view(conn, incident_id, ev.at)
            eido = views[incident_id]
        body = payload(ev, eido)
        rows += [(e["id"], ev.seq, ev.type, msg_id(e["id"], ev.seq), body) for e in targets]
    if rows:
        await conn.copy_records_to_table(
            "webhook_deliveries", records=rows, columns=["endpoint_id", "seq", "event_type", "msg_id", "body"])
    await conn.execute("UPDATE webhook_outbox SET last_seq = $1", events[-1].seq)
    return len(events), {r[0] for r in rows}
