"""The dispatch store against a real PostgreSQL: an incident's alert list lives in rows of its own
(migration 0014) and reads back as part of the incident."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from dispatch import codec
from dispatch.incident import Incident, IncidentNumber
from geo.coords import Point
from icp import dispatch_store as store
from icp.store import database, migrations

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)
INCIDENT = Incident(id="2026-000007", number=IncidentNumber(2026, 7), incident_type="alarm_activation",
                    priority=3, location=Point(lat=60.17, lon=24.94), created_at=AT, alert_ids=("AL-1", "AL-2"))


async def _load(conn: asyncpg.Connection, incident_id: str) -> Incident:
    async with conn.transaction():
        return (await store.lock(conn, incident_ids=[incident_id], incident_only=True)).incidents[incident_id]


async def test_an_incident_saved_twice_keeps_its_alert_list_in_order(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        await store.save_incident(conn, INCIDENT, ["fire"])
        grown = replace(INCIDENT, alert_ids=(*INCIDENT.alert_ids, "AL-3"), priority=2)
        await store.save_incident(conn, grown, ["fire"])
        await store.save_incident(conn, grown, ["fire"])  # saving again adds nothing
        assert await _load(conn, INCIDENT.id) == grown
        row = await conn.fetchrow("SELECT doc::text AS doc, alert_count FROM incidents WHERE id = $1", INCIDENT.id)
        assert "alert_ids" not in json.loads(row["doc"]) and row["alert_count"] == 3
        rows = await conn.fetch("SELECT n, alert_id FROM incident_alerts WHERE incident_id = $1 ORDER BY n",
                                INCIDENT.id)
        assert [(r["n"], r["alert_id"]) for r in rows] == [(1, "AL-1"), (2, "AL-2"), (3, "AL-3")]
        _, opened, _, _ = await store.load_open(conn)
        assert opened == [grown]
    finally:
        await conn.close()


async def test_the_migration_moves_lists_out_of_stored_documents(empty_db_url: str) -> None:
    conn = await database.connect(empty_db_url)
    try:
        every = migrations.load_migrations()
        await migrations.migrate(conn, [m for m in every if m.version < 14])
        # An incident as the earlier code wrote it: the list inside the document.
        await conn.execute(
            "INSERT INTO incidents (id, number, status, incident_type, priority, agency_ids, lat, lon, created_at,"
            " doc, alert_count) VALUES ($1, $2, 'pending', $3, 3, ARRAY['fire'], 60.17, 24.94, $4, $5, 2)",
            INCIDENT.id, str(INCIDENT.number), INCIDENT.incident_type, AT, codec.encode_fields(INCIDENT))
        assert [m.version for m in await migrations.migrate(conn, every)] == [m.version for m in every
                                                                              if m.version >= 14]
        assert await _load(conn, INCIDENT.id) == INCIDENT
        assert not await conn.fetchval("SELECT doc ? 'alert_ids' FROM incidents WHERE id = $1", INCIDENT.id)
        assert await conn.fetchval("SELECT count(*) FROM incident_alerts WHERE incident_id = $1", INCIDENT.id) == 2
    finally:
        await conn.close()
