"""Dispatch aggregates in PostgreSQL: rows to domain values and back, loaded under row locks.

A command's transaction locks the rows it may change — incidents, then assignments, then units,
each set in id order, so two commands never wait on each other in opposite orders — and hands
`decide` a state built from what it locked. That is what makes two dispatchers (or two nodes)
racing for one unit safe: the second waits, then sees the unit already dispatched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from dispatch import codec
from dispatch.agency import Agency, Station
from dispatch.assignment import Assignment
from dispatch.incident import Incident, IncidentNumber
from dispatch.lifecycle import OPEN_INCIDENT
from dispatch.response_plan import ResponsePlan, ResponsePlans, default_plans
from dispatch.unit import Unit

Connection: TypeAlias = asyncpg.Connection | asyncpg.Pool


def agency_from(doc: Mapping[str, Any]) -> Agency:
    return codec.decode(Agency, doc)


def station_from(doc: Mapping[str, Any]) -> Station:
    return codec.decode(Station, doc)


def unit_from(doc: Mapping[str, Any]) -> Unit:
    return codec.decode(Unit, doc)


def incident_from(doc: Mapping[str, Any]) -> Incident:
    return codec.decode(Incident, doc)


# An incident's document as stored lacks its alert list (rows of incident_alerts, migration 0014):
# every read of a document for `incident_from` selects this in place of the bare column.
INCIDENT_DOC = "icp_incident_doc(id, doc) AS doc"


def assignment_from(doc: Mapping[str, Any]) -> Assignment:
    return codec.decode(Assignment, doc)


@dataclass
class Locked:
    """What one command's transaction holds: the aggregates it may change, and incident agencies."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    assignments: dict[str, Assignment] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)
    incident_agencies: dict[str, list[str]] = field(default_factory=dict)


async def lock(
    conn: asyncpg.Connection, *, incident_ids: Iterable[str] = (), unit_ids: Iterable[str] = (),
    assignment_ids: Iterable[str] = (), incident_only: bool = False,
) -> Locked:
    """Lock and load the named aggregates and everything a decision about them reads: the
    incidents' assignments, those assignments' units, and each unit's current assignment with
    its incident. Found by a first unlocked read, then locked in a fixed order and re-read; if the
    set grew meanwhile (someone assigned a unit), the closure is taken again.

    ``incident_only``: the command changes nothing but the incident itself (a note, a linked
    alert, a correction), so only its row is locked — one query instead of five."""
    incidents, units = set(incident_ids), set(unit_ids)
    if not incidents and not units and not assignment_ids:
        return Locked()
    if incident_only:
        held = Locked()
        for row in await conn.fetch(
            f"SELECT id, agency_ids, {INCIDENT_DOC} FROM incidents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            sorted(incidents)
        ):
            held.incidents[row["id"]] = incident_from(row["doc"])
            held.incident_agencies[row["id"]] = list(row["agency_ids"])
        return held
    if assignment_ids:
        rows = await conn.fetch("SELECT incident_id, unit_id FROM assignments WHERE id = ANY($1)", list(assignment_ids))
        incidents.update(r["incident_id"] for r in rows)
        units.update(r["unit_id"] for r in rows)
    while True:
        want_incidents, want_units = await _closure(conn, incidents, units)
        held = Locked()
        for row in await conn.fetch(
            f"SELECT id, agency_ids, {INCIDENT_DOC} FROM incidents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            sorted(want_incidents),
        ):
            held.incidents[row["id"]] = incident_from(row["doc"])
            held.incident_agencies[row["id"]] = list(row["agency_ids"])
        for row in await conn.fetch(
            "SELECT id, doc FROM assignments WHERE incident_id = ANY($1) ORDER BY id FOR UPDATE", sorted(want_incidents)
        ):
            held.assignments[row["id"]] = assignment_from(row["doc"])
        for row in await conn.fetch(
            "SELECT id, doc FROM units WHERE id = ANY($1) ORDER BY id FOR UPDATE", sorted(want_units)
        ):
            held.units[row["id"]] = unit_from(row["doc"])
        unit_ids_seen = {a.unit_id for a in held.assignments.values()}
        if unit_ids_seen <= held.units.keys() and all(
            u.assignment_id is None or u.assignment_id in held.assignments for u in held.units.values()
        ):
            return held
        # Someone assigned a unit between the first read and the locks: take the closure again.
        # (Locks already held stay held; a deadlock this may cause is detected and retried.)
        incidents, units = want_incidents, want_units | unit_ids_seen


async def _closure(conn: asyncpg.Connection, incidents: set[str], units: set[str]) -> tuple[set[str], set[str]]:
    incidents, units = set(incidents), set(units)
    rows = await conn.fetch(
        "SELECT a.incident_id, a.unit_id FROM assignments a WHERE a.incident_id = ANY($1)"
        " UNION SELECT a.incident_id, a.unit_id FROM units u JOIN assignments a ON a.id = u.doc->>'assignment_id'"
        " WHERE u.id = ANY($2)",
        list(incidents), list(units),
    )
    for row in rows:
        incidents.add(row["incident_id"])
        units.add(row["unit_id"])
    return incidents, units


# -- writing ---------------------------------------------------------------------------------

def _incident_row(incident: Incident, agency_ids: Sequence[str]) -> tuple[Any, ...]:
    return (incident.id, str(incident.number), incident.status.value, incident.incident_type, incident.priority,
            sorted(set(agency_ids)), incident.location.lat, incident.location.lon, incident.created_at,
            codec.encode_fields(incident), list(incident.alert_ids))


async def save_incident(conn: asyncpg.Connection, incident: Incident, agency_ids: Sequence[str]) -> None:
    await save_incidents(conn, [(incident, agency_ids)])


async def save_incidents(conn: asyncpg.Connection, items: Sequence[tuple[Incident, Sequence[str]]]) -> None:
    """Upsert incidents, and the alerts of their lists not stored yet (one pipelined round trip
    for many; migration 0014)."""
    await conn.executemany(
        "SELECT icp_save_incident($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [_incident_row(incident, agencies) for incident, agencies in items],
    )


async def save_assignment(conn: asyncpg.Connection, a: Assignment) -> None:
    await conn.execute(
        "INSERT INTO assignments (id, incident_id, unit_id, status, doc) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, doc = EXCLUDED.doc, updated_at = now()",
        a.id, a.incident_id, a.unit_id, a.status.value, codec.encode_fields(a),
    )


async def save_unit(conn: asyncpg.Connection, unit: Unit) -> None:
    await conn.execute(
        "INSERT INTO units (id, agency_id, status, doc) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (id) DO UPDATE SET agency_id = EXCLUDED.agency_id, status = EXCLUDED.status,"
        " doc = EXCLUDED.doc, updated_at = now()",
        unit.id, unit.agency_id, unit.status.value, codec.encode_fields(unit),
    )


async def save_agency(conn: asyncpg.Connection, agency: Agency) -> None:
    await conn.execute(
        "INSERT INTO agencies (id, doc) VALUES ($1, $2)"
        " ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
        agency.id, codec.encode_fields(agency),
    )


async def save_station(conn: asyncpg.Connection, station: Station) -> None:
    await conn.execute(
        "INSERT INTO stations (id, agency_id, doc) VALUES ($1, $2, $3)"
        " ON CONFLICT (id) DO UPDATE SET agency_id = EXCLUDED.agency_id, doc = EXCLUDED.doc, updated_at = now()",
        station.id, station.agency_id, codec.encode_fields(station),
    )


async def next_incident_number(conn: asyncpg.Connection, year: int) -> IncidentNumber:
    """The next number of ``year``; the counter row stays locked until the transaction ends."""
    sequence = await conn.fetchval(
        "INSERT INTO incident_numbers (year, last) VALUES ($1, 1)"
        " ON CONFLICT (year) DO UPDATE SET last = incident_numbers.last + 1 RETURNING last",
        year,
    )
    return IncidentNumber(year=year, sequence=int(sequence))


# -- timers ----------------------------------------------------------------------------------

ACK_TIMEOUT = "ack_timeout"


async def set_timer(conn: asyncpg.Connection, kind: str, ref: str, due_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO timers (kind, ref, due_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (kind, ref) DO UPDATE SET due_at = EXCLUDED.due_at, attempts = 0",
        kind, ref, due_at,
    )


async def clear_timer(conn: asyncpg.Connection, kind: str, ref: str) -> None:
    await conn.execute("DELETE FROM timers WHERE kind = $1 AND ref = $2", kind, ref)


# -- reading (whole tables, for the live picture and lists) -------------------------------------

async def load_reference(conn: Connection) -> tuple[list[Agency], list[Station]]:
    agencies = [agency_from(r["doc"]) for r in await conn.fetch("SELECT doc FROM agencies ORDER BY id")]
    stations = [station_from(r["doc"]) for r in await conn.fetch("SELECT doc FROM stations ORDER BY id")]
    return agencies, stations


async def load_open(conn: Connection) -> tuple[list[Unit], list[Incident], list[Assignment], dict[str, list[str]]]:
    """Every unit, every open incident with its assignments, and the assignments units work."""
    units = [unit_from(r["doc"]) for r in await conn.fetch("SELECT doc FROM units ORDER BY id")]
    open_statuses = sorted(s.value for s in OPEN_INCIDENT)
    rows = await conn.fetch(
        f"SELECT id, agency_ids, {INCIDENT_DOC} FROM incidents WHERE status = ANY($1)"
        " OR id IN (SELECT a.incident_id FROM units u JOIN assignments a ON a.id = u.doc->>'assignment_id')",
        open_statuses,
    )
    incidents = [incident_from(r["doc"]) for r in rows]
    agencies = {r["id"]: list(r["agency_ids"]) for r in rows}
    assignments = [
        assignment_from(r["doc"])
        for r in await conn.fetch("SELECT doc FROM assignments WHERE incident_id = ANY($1) ORDER BY id",
                                  [i.id for i in incidents])
    ]
    return units, incidents, assignments, agencies


async def load_plans(conn: Connection) -> ResponsePlans:
    """The shipped run cards with the operator's overrides (per incident type) applied."""
    plans = default_plans()
    for row in await conn.fetch("SELECT incident_type, plans FROM response_plans ORDER BY incident_type"):
        plans = plans.replacing_type(row["incident_type"], [ResponsePlan.from_dict(p) for p in row["plans"]])
    return plans
