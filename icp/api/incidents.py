"""Incidents: create, list, read, recommend, dispatch, assignment steps, notes, close, cancel,
timeline, standards intervals and their report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from dispatch import codec
from dispatch import commands as cmd
from dispatch import events as dev
from dispatch.incident import Incident
from dispatch.intervals import IncidentIntervals, incident_intervals, report
from dispatch.lifecycle import IncidentStatus
from icp import appkeys
from icp import dispatch_store as store
from icp.api.writes import IDEMPOTENCY_PARAM, decode_or_422, point_field, reject_unknown, write
from icp.auth.guard import principal, require
from icp.auth.principal import Principal, Role
from icp.dispatch_service import Outcome, Written, sees_incident
from icp.errors import FieldError, Problem, not_found, validation
from icp.httpapi import json_response, operation, query_int, read_json_object
from icp.messaging import MESSAGING
from icp.messaging.channels import incident_channel_id
from icp.messaging.hub import MESSAGE_PREFIX

OBJ = {"type": "object"}
INCIDENT_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "number": {"type": "string"}, "incident_type": {"type": "string"},
    "priority": {"type": "integer"}, "status": {"type": "string"},
    "location": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    "address": {"type": "string"}, "zone": {"type": ["string", "null"]}, "agency_ids": {"type": "array"},
    "assignments": {"type": "array"}, "intervals": {"type": "object"}}}
CREATE_SCHEMA = {"type": "object", "required": ["type", "priority"], "properties": {
    "type": {"type": "string", "description": "a response-plan incident type, e.g. structure_fire"},
    "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    "location": {"type": "object", "description": "{lat, lon} or a GeoJSON Point; or give address"},
    "address": {"type": "string", "description": "geocoded when no location is given"},
    "zone": {"type": "string"}, "note": {"type": "string"}}}
DISPATCHERS = (Role.DISPATCHER,)


def incident_view(incident: Incident, agency_ids: Sequence[str], assignments: Sequence[Any],
                  intervals: IncidentIntervals | None = None) -> dict[str, Any]:
    view = codec.encode_fields(incident)
    view["agency_ids"] = list(agency_ids)
    view["assignments"] = [codec.encode_fields(a) for a in assignments]
    if intervals is not None:
        view["intervals"] = intervals.to_dict()
    return view


async def _load(conn: asyncpg.Connection | asyncpg.Pool, who: Principal, incident_id: str
                ) -> tuple[Incident, list[str], list[Any]]:
    row = await conn.fetchrow(f"SELECT agency_ids, {store.INCIDENT_DOC}, {_ASSIGNMENTS.format(t='incidents')}"
                              " FROM incidents WHERE id = $1", incident_id)
    if row is None or not sees_incident(who, row["agency_ids"]):
        raise not_found(f"incident {incident_id}")  # another agency's incident does not exist for you
    assignments = [store.assignment_from(a) for a in row["assignments"]]
    return store.incident_from(row["doc"]), list(row["agency_ids"]), assignments


# An incident's assignments read in the statement that reads the incident: one snapshot, so a
# dispatch committed between two reads cannot show its assignments on an incident still pending.
_ASSIGNMENTS = "(SELECT coalesce(jsonb_agg(a.doc ORDER BY a.id), '[]'::jsonb) FROM assignments a" \
               " WHERE a.incident_id = {t}.id) AS assignments"


async def domain_events(conn: asyncpg.Connection | asyncpg.Pool, subjects: Sequence[str]) -> dict[str, list[dev.Event]]:
    """The dispatch-core events of each subject (``incident/ID``), in log order."""
    out: dict[str, list[dev.Event]] = {s: [] for s in subjects}
    rows = await conn.fetch("SELECT type, subject, data FROM events WHERE subject = ANY($1) AND type = ANY($2)"
                            " ORDER BY seq", list(subjects), list(dev.EVENT_TYPES))
    for row in rows:
        data = {k: v for k, v in row["data"].items() if k != "agency_ids"}
        out[row["subject"]].append(dev.event_from_dict({"type": row["type"], **data}))
    return out


async def _intervals(conn: asyncpg.Connection | asyncpg.Pool, incident_id: str) -> IncidentIntervals:
    subject = f"incident/{incident_id}"
    return incident_intervals((await domain_events(conn, [subject]))[subject])


async def _view(conn: asyncpg.Connection | asyncpg.Pool, who: Principal, incident_id: str) -> dict[str, Any]:
    incident, agencies, assignments = await _load(conn, who, incident_id)
    return incident_view(incident, agencies, assignments, await _intervals(conn, incident_id))


# -- create, list, read --------------------------------------------------------------------------

@operation("Open an incident at coordinates or a geocoded address", tags=("incidents",), request=CREATE_SCHEMA,
           parameters=(IDEMPOTENCY_PARAM,),
           responses={201: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def create_incident(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=64 * 1024)
    reject_unknown(body, {"type", "priority", "location", "address", "zone", "note"})
    errors = []
    if not isinstance(body.get("type"), str):
        errors.append(FieldError("type", "required: an incident type such as structure_fire"))
    if not isinstance(body.get("priority"), int) or isinstance(body.get("priority"), bool):
        errors.append(FieldError("priority", "required: an integer 1 (most urgent) to 5"))
    if errors:
        raise validation(errors)
    address = body.get("address", "")
    if not isinstance(address, str) or len(address) > 500:
        raise validation([FieldError("address", "a string of at most 500 characters")])
    location = point_field(body, "location", required=False)
    geography = request.app[appkeys.GEOGRAPHY]
    if location is None:
        if not address.strip():
            raise validation([FieldError("location", "give a location {lat, lon} or an address")])
        found = geography.geocode(address, 1)
        if not found:
            raise validation([FieldError("address", f"{address!r} was not found; give coordinates instead")])
        location = point_field({"p": found[0]}, "p")
        address = found[0]["label"]
    elif not address:
        near = geography.reverse(location) if geography.can_geocode else None
        address = near["label"] if near else ""
    assert location is not None
    who = principal(request)
    service = request.app[appkeys.DISPATCH]
    note = body.get("note")

    async def work(conn: asyncpg.Connection) -> Written:
        outcome = await service.create_incident(
            conn, who, incident_type=body["type"], priority=body["priority"], location=location,
            address=address, zone=body.get("zone"),
        )
        incident_id = next(e.incident_id for e in outcome.events if isinstance(e, dev.IncidentCreated))
        if isinstance(note, str) and note.strip():
            more = await service.run(conn, cmd.AddNote(incident_id=incident_id, author=who.name, text=note), who)
            outcome.recorded += more.recorded
        return Written(201, await _view(conn, who, incident_id), last_seq=outcome.last_seq)

    return await write(request, work)


@operation(
    "Incidents visible to you, newest first", tags=("incidents",),
    parameters=({"name": "status", "in": "query", "schema": {"type": "string"},
                 "description": "a status, or open (the default) or all"},
                {"name": "agency", "in": "query", "schema": {"type": "string"}},
                {"name": "bbox", "in": "query", "schema": {"type": "string"},
                 "description": "min_lon,min_lat,max_lon,max_lat"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}}),
    responses={200: {"description": "incidents", "schema": OBJ}},
)
@require(*DISPATCHERS)
async def list_incidents(request: web.Request) -> web.Response:
    who = principal(request)
    conditions, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    status = request.query.get("status", "open")
    if status == "open":
        conditions.append("status NOT IN ('closed', 'cancelled')")
    elif status != "all":
        if status not in {s.value for s in IncidentStatus}:
            known = ", ".join(s.value for s in IncidentStatus)
            raise validation([FieldError("status", f"open, all, or one of {known}")])
        conditions.append(f"status = {arg(status)}")
    if (agency := request.query.get("agency")) is not None:
        conditions.append(f"{arg(agency)} = ANY(agency_ids)")
    if not who.unrestricted:
        conditions.append(f"(agency_ids && {arg(['*', who.agency or ''])}::text[])")
    if (bbox := request.query.get("bbox")) is not None:
        from icp.api.geo import parse_bbox

        min_lon, min_lat, max_lon, max_lat = parse_bbox(bbox, max_degrees=180.0)
        conditions.append(f"lon BETWEEN {arg(min_lon)} AND {arg(max_lon)}")
        conditions.append(f"lat BETWEEN {arg(min_lat)} AND {arg(max_lat)}")
    limit = query_int(request, "limit", 100, lo=1, hi=500)
    where = " AND ".join(conditions) or "TRUE"
    pool = request.app[appkeys.POOL]
    # The page is chosen first: only its incidents have their alert lists put back.
    rows = await pool.fetch(f"SELECT agency_ids, {store.INCIDENT_DOC}, {_ASSIGNMENTS.format(t='page')}"
                            f" FROM (SELECT id, agency_ids, doc, priority, created_at FROM incidents WHERE {where}"
                            f" ORDER BY priority, created_at DESC LIMIT {arg(limit)}) AS page"
                            " ORDER BY priority, created_at DESC", *args)
    return json_response({"incidents": [
        incident_view(store.incident_from(r["doc"]), r["agency_ids"],
                      [store.assignment_from(a) for a in r["assignments"]]) for r in rows
    ]})


@operation("An incident with its assignments and standards intervals", tags=("incidents",),
           responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def get_incident(request: web.Request) -> web.Response:
    return json_response(await _view(request.app[appkeys.POOL], principal(request), request.match_info["id"]))


@operation("The incident's events in order (its timeline)", tags=("incidents",),
           responses={200: {"description": "events", "schema": OBJ}})
@require(*DISPATCHERS)
async def timeline(request: web.Request) -> web.Response:
    pool = request.app[appkeys.POOL]
    incident_id = request.match_info["id"]
    who = principal(request)
    await _load(pool, who, incident_id)  # 404 unless visible
    rows = await pool.fetch("SELECT seq, at, type, actor, data FROM events WHERE subject = $1 ORDER BY seq",
                            f"incident/{incident_id}")
    if any(r["type"].startswith(MESSAGE_PREFIX) for r in rows) and not await _reads_channel(request, who, incident_id):
        # Seeing the incident is not enough for its conversation: a partner only asked for mutual
        # aid, or one whose units have left, reads the channel's messages no more than the channel.
        rows = [r for r in rows if not r["type"].startswith(MESSAGE_PREFIX)]
    return json_response({"events": [
        {"seq": r["seq"], "at": r["at"].isoformat(), "type": r["type"], "actor": r["actor"],
         "data": {k: v for k, v in r["data"].items() if k != "agency_ids"}} for r in rows
    ]})


async def _reads_channel(request: web.Request, who: Principal, incident_id: str) -> bool:
    try:
        await request.app[MESSAGING].channel_for(who, incident_channel_id(incident_id))
    except Problem:
        return False
    return True


# -- recommendation and commands -----------------------------------------------------------------

@operation("Recommend units for the incident's response plan: picks with ETA, distance, agency and reason; "
           "shortfalls with reasons", tags=("incidents",),
           responses={200: {"description": "the recommendation", "schema": OBJ}})
@require(*DISPATCHERS)
async def recommendation(request: web.Request) -> web.Response:
    incident_id = request.match_info["id"]
    live = request.app[appkeys.LIVE]
    who = principal(request)
    if incident_id not in live.state.incidents or not sees_incident(who, live.incident_agencies.get(incident_id, [])):
        await _load(request.app[appkeys.POOL], who, incident_id)  # 404 unless visible
        raise Problem(409, "conflict", f"incident {incident_id} is not open")
    rec = await request.app[appkeys.DISPATCH].recommend(incident_id)
    return json_response({"incident_id": incident_id, **rec.to_dict()})


DISPATCH_SCHEMA = {"type": "object", "required": ["units"], "properties": {"units": {"type": "array", "items": {
    "oneOf": [{"type": "string"}, {"type": "object", "properties": {
        "unit_id": {"type": "string"}, "capability": {"type": "string"}}}]}}}}


async def _command(request: web.Request, command: cmd.Command, status: int = 200) -> web.Response:
    """Run a dispatch command and answer with the incident as it is afterwards."""
    who = principal(request)
    service = request.app[appkeys.DISPATCH]

    async def work(conn: asyncpg.Connection) -> Written:
        outcome: Outcome = await service.run(conn, command, who)
        incident_id = getattr(command, "incident_id", None) or next(
            (e.incident_id for e in outcome.events if isinstance(e, dev.IncidentEvent)), None)
        if incident_id is None and (aid := getattr(command, "assignment_id", None)):
            incident_id = await conn.fetchval("SELECT incident_id FROM assignments WHERE id = $1", aid)
        body = await _view(conn, who, incident_id) if incident_id else {}
        body["events"] = [e.to_dict() for e in outcome.events]
        return Written(status, body, last_seq=outcome.last_seq)

    return await write(request, work)


@operation("Dispatch units to the incident ({\"units\": [unit ids or {unit_id, capability}]}); all or none. "
           "409 when a unit is no longer available", tags=("incidents",), request=DISPATCH_SCHEMA,
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def dispatch_units(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    units = body.get("units")
    if not isinstance(units, list) or not units:
        raise validation([FieldError("units", "required: a non-empty list of unit ids")])
    requests = [{"unit_id": u} if isinstance(u, str) else u for u in units]
    command = decode_or_422(cmd.DispatchUnits, {"incident_id": request.match_info["id"], "units": requests})
    return await _command(request, command)


async def _body_text(request: web.Request, name: str, *, required: bool = False) -> str:
    body = await read_json_object(request, max_bytes=64 * 1024) if request.can_read_body else {}
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise validation([FieldError(name, "required, a string" if required else "a string")])
    return value


@operation("Close the incident (assignments clear and units return to available, per policy)",
           tags=("incidents",), request={"type": "object", "properties": {"disposition": {"type": "string"}}},
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def close_incident(request: web.Request) -> web.Response:
    disposition = await _body_text(request, "disposition")
    return await _command(request, cmd.CloseIncident(incident_id=request.match_info["id"], disposition=disposition))


@operation("Cancel the incident (before anyone arrived)", tags=("incidents",),
           request={"type": "object", "properties": {"reason": {"type": "string"}}}, parameters=(IDEMPOTENCY_PARAM,),
           responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def cancel_incident(request: web.Request) -> web.Response:
    reason = await _body_text(request, "reason")
    return await _command(request, cmd.CancelIncident(incident_id=request.match_info["id"], reason=reason))


@operation("Add a note to the incident", tags=("incidents",),
           request={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
           parameters=(IDEMPOTENCY_PARAM,), responses={201: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def add_note(request: web.Request) -> web.Response:
    text = await _body_text(request, "text", required=True)
    command = decode_or_422(cmd.AddNote, {"incident_id": request.match_info["id"], "author": principal(request).name,
                                          "text": text})
    return await _command(request, command, status=201)


@operation("Raise the alarm level (adds the next level's units to the plan); {\"level\": n} or the next one",
           tags=("incidents",), request={"type": "object", "properties": {"level": {"type": "integer"}}},
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def raise_alarm(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=4096) if request.can_read_body else {}
    command = decode_or_422(cmd.RaiseAlarmLevel, {"incident_id": request.match_info["id"],
                                                  **({"to_level": body["level"]} if "level" in body else {})})
    return await _command(request, command)


@operation("Correct an incident: type, priority, location, address, zone", tags=("incidents",),
           request={"type": "object",
                    "properties": {k: {} for k in ("type", "priority", "location", "address", "zone")}},
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(*DISPATCHERS)
async def update_incident(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=64 * 1024)
    reject_unknown(body, {"type", "priority", "location", "address", "zone"})
    fields: dict[str, Any] = {"incident_id": request.match_info["id"]}
    if "type" in body:
        if body["type"] not in request.app[appkeys.LIVE].plans.incident_types:
            raise validation([FieldError("type", f"unknown incident type {str(body['type'])[:60]!r}")])
        fields["incident_type"] = body["type"]
    for name in ("priority", "address", "zone"):
        if name in body:
            fields[name] = body[name]
    if "location" in body:
        fields["location"] = point_field(body, "location").to_mapping()  # type: ignore[union-attr]
    return await _command(request, decode_or_422(cmd.UpdateIncident, fields))


ASSIGNMENT_ACTIONS: dict[str, type[cmd.Command]] = {
    "acknowledge": cmd.AcknowledgeAssignment, "decline": cmd.DeclineAssignment, "en-route": cmd.UnitEnRoute,
    "on-scene": cmd.UnitOnScene, "clear": cmd.ClearAssignment, "cancel": cmd.CancelAssignment,
    "accept": cmd.AcceptMutualAid,
}


@operation("An assignment step: acknowledge, decline, en-route, on-scene, clear (the unit itself or a "
           "dispatcher) or cancel (dispatchers); on a mutual-aid request (status requested), accept or "
           "decline by a dispatcher of the unit's agency", tags=("incidents",),
           request={"type": "object", "properties": {"reason": {"type": "string"}}}, parameters=(IDEMPOTENCY_PARAM,),
           responses={200: {"description": "the incident", "schema": INCIDENT_SCHEMA}})
@require(Role.DISPATCHER, Role.UNIT)
async def assignment_action(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    kind = ASSIGNMENT_ACTIONS.get(action)
    if kind is None:
        raise not_found(f"assignment action {action!r}")
    assignment_id = request.match_info["id"]
    fields: dict[str, Any] = {"assignment_id": assignment_id}
    if kind in (cmd.DeclineAssignment, cmd.CancelAssignment):
        fields["reason"] = await _body_text(request, "reason")
    if kind is cmd.DeclineAssignment:
        service = request.app[appkeys.DISPATCH]
        if service.live.policy.on_decline != "none":
            fields["replacement_unit_id"] = service.replacement(assignment_id, datetime.now(UTC))
    return await _command(request, decode_or_422(kind, fields))


# -- standards intervals -------------------------------------------------------------------------

@operation(
    "Standards intervals (alarm processing, turnout, travel, response) per agency and period: count, p50, p90",
    tags=("reports",),
    parameters=({"name": "agency", "in": "query", "schema": {"type": "string"}},
                {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}}),
    responses={200: {"description": "the report", "schema": OBJ}},
)
@require(Role.SUPERVISOR)
async def interval_report(request: web.Request) -> web.Response:
    who = principal(request)
    now = datetime.now(UTC)
    start, end = _time(request, "from", now - timedelta(days=30)), _time(request, "to", now)
    agency = request.query.get("agency") or (None if who.unrestricted else who.agency)
    if agency is not None and not who.unrestricted and agency != who.agency:
        raise Problem(403, "forbidden", "supervisors report on their own agency")
    pool = request.app[appkeys.POOL]
    rows = await pool.fetch(
        "SELECT id FROM incidents WHERE created_at >= $1 AND created_at < $2"
        " AND ($3::text IS NULL OR $3 = ANY(agency_ids)) ORDER BY created_at LIMIT 10000", start, end, agency)
    subjects = [f"incident/{r['id']}" for r in rows]
    events = await domain_events(pool, subjects)
    result = report(incident_intervals(evs) for evs in events.values())
    return json_response({"agency": agency, "from": start.isoformat(), "to": end.isoformat(),
                          "incidents": len(rows), **result.to_dict()})


def _time(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise validation([FieldError(name, "an ISO 8601 time")]) from None
    if value.tzinfo is None:
        raise validation([FieldError(name, "the time needs a UTC offset")])
    return value


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/incidents", list_incidents)
    app.router.add_post("/api/v1/incidents", create_incident)
    app.router.add_get("/api/v1/incidents/{id}", get_incident)
    app.router.add_patch("/api/v1/incidents/{id}", update_incident)
    app.router.add_post("/api/v1/incidents/{id}/alarm", raise_alarm)
    app.router.add_get("/api/v1/incidents/{id}/timeline", timeline)
    app.router.add_post("/api/v1/incidents/{id}/recommendation", recommendation)
    app.router.add_post("/api/v1/incidents/{id}/assignments", dispatch_units)
    app.router.add_post("/api/v1/incidents/{id}/close", close_incident)
    app.router.add_post("/api/v1/incidents/{id}/cancel", cancel_incident)
    app.router.add_post("/api/v1/incidents/{id}/notes", add_note)
    app.router.add_post("/api/v1/assignments/{id}/{action}", assignment_action)
    app.router.add_get("/api/v1/reports/intervals", interval_report)

