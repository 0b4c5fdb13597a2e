"""Reference data: agencies (with mutual-aid terms and areas), stations and units."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from dispatch import codec
from dispatch import commands as cmd
from dispatch.agency import Agency, Station
from dispatch.unit import Unit
from icp import appkeys
from icp import dispatch_store as store
from icp.api.writes import IDEMPOTENCY_PARAM, decode_or_422, point_field, reject_unknown, write
from icp.auth.guard import principal, require
from icp.auth.principal import Principal, Role
from icp.dispatch_service import Written, may_dispatch, sees_unit
from icp.errors import FieldError, Problem, forbidden, not_found, validation
from icp.geography import store_areas
from icp.httpapi import json_response, operation, read_json, read_json_object
from icp.live import AGENCY_SAVED, STATION_SAVED, UNIT_SAVED
from icp.store import eventlog
from icp.store.eventlog import NewEvent

OBJ = {"type": "object"}
AGENCY_SCHEMA = {"type": "object", "required": ["id", "name", "kind"], "properties": {
    "id": {"type": "string"}, "name": {"type": "string"},
    "kind": {"enum": ["fire", "ems", "police", "utility", "other"]},
    "mutual_aid": {"type": "array", "items": {"type": "object", "properties": {
        "partner_id": {"type": "string"}, "capabilities": {"type": "array", "items": {"type": "string"}},
        "margin_s": {"type": "number"},
        "automatic": {"type": "boolean", "description": "automatic aid: dispatched without asking the partner"}}}}}}
STATION_SCHEMA = {"type": "object", "required": ["id", "agency_id", "name", "location"], "properties": {
    "id": {"type": "string"}, "agency_id": {"type": "string"}, "name": {"type": "string"},
    "location": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}}}}
UNIT_SCHEMA = {"type": "object", "required": ["id", "call_sign", "agency_id", "capabilities"], "properties": {
    "id": {"type": "string"}, "call_sign": {"type": "string"}, "agency_id": {"type": "string"},
    "capabilities": {"type": "array", "items": {"type": "string"}}, "station_id": {"type": "string"},
    "staffing": {"type": "integer"}}}
ADMINS = (Role.ADMIN,)


def _may_manage(who: Principal, agency_id: str) -> bool:
    """Administrators manage every agency; a supervisor manages their own."""
    return who.role is Role.ADMIN or (who.has(Role.SUPERVISOR) and who.agency in (None, agency_id))


async def _saved(conn: asyncpg.Connection, who: Principal, type_: str, subject: str, key: str, value: Any,
                 visibility: tuple[str, ...] = (eventlog.PUBLIC,)) -> int:
    recorded = await eventlog.append(conn, [NewEvent(type_, subject, {key: codec.encode_fields(value)},
                                                     actor=who.actor(), visibility=visibility)])
    return recorded[-1].seq


async def _create_new(request: web.Request, *, table: str, kind: str, value: Any, save: Any, event_type: str,
                      visibility: tuple[str, ...] = (eventlog.PUBLIC,)) -> web.Response:
    """Insert a new reference record (409 if the id is taken) and put it on the record."""
    who = principal(request)

    async def work(conn: asyncpg.Connection) -> Written:
        if await conn.fetchval(f"SELECT 1 FROM {table} WHERE id = $1", value.id):
            raise Problem(409, "conflict", f"{kind} {value.id!r} already exists")
        await save(conn, value)
        seq = await _saved(conn, who, event_type, f"{kind}/{value.id}", kind, value, visibility)
        return Written(201, codec.encode_fields(value), last_seq=seq)

    return await write(request, work)


# -- agencies ------------------------------------------------------------------------------------

@operation("List agencies", tags=("agencies",), responses={200: {"description": "agencies", "schema": OBJ}})
@require()
async def list_agencies(request: web.Request) -> web.Response:
    agencies = request.app[appkeys.LIVE].state.agencies.values()
    return json_response({"agencies": [codec.encode_fields(a) for a in sorted(agencies, key=lambda a: a.id)]})


@operation("Create an agency (administrators)", tags=("agencies",), request=AGENCY_SCHEMA,
           parameters=(IDEMPOTENCY_PARAM,), responses={201: {"description": "created", "schema": AGENCY_SCHEMA}})
@require(Role.ADMIN)
async def create_agency(request: web.Request) -> web.Response:
    agency: Agency = decode_or_422(Agency, await read_json_object(request))
    live = request.app[appkeys.LIVE]
    missing = [t.partner_id for t in agency.mutual_aid if t.partner_id not in live.state.agencies]
    if missing:
        raise validation([FieldError("mutual_aid", f"unknown partner agency {missing[0]!r}")])
    return await _create_new(request, table="agencies", kind="agency", value=agency, save=store.save_agency,
                             event_type=AGENCY_SAVED)


def _agency(request: web.Request) -> Agency:
    agency = request.app[appkeys.LIVE].state.agencies.get(request.match_info["id"])
    if agency is None:
        raise not_found(f"agency {request.match_info['id']}")
    return agency


@operation("An agency", tags=("agencies",), responses={200: {"description": "the agency", "schema": AGENCY_SCHEMA}})
@require()
async def get_agency(request: web.Request) -> web.Response:
    return json_response(codec.encode_fields(_agency(request)))


@operation("Change an agency's name or mutual-aid terms (administrators, its supervisors)", tags=("agencies",),
           request={"type": "object", "properties": {"name": {"type": "string"}, "mutual_aid": {"type": "array"}}},
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "updated", "schema": AGENCY_SCHEMA}})
@require(Role.SUPERVISOR)
async def patch_agency(request: web.Request) -> web.Response:
    current = _agency(request)
    who = principal(request)
    if not _may_manage(who, current.id):
        raise forbidden("only administrators and the agency's own supervisors change it")
    body = await read_json_object(request)
    reject_unknown(body, {"name", "kind", "mutual_aid"})
    merged: Agency = decode_or_422(Agency, {**codec.encode_fields(current), **body})

    async def work(conn: asyncpg.Connection) -> Written:
        await store.save_agency(conn, merged)
        seq = await _saved(conn, who, AGENCY_SAVED, f"agency/{merged.id}", "agency", merged)
        return Written(200, codec.encode_fields(merged), last_seq=seq)

    return await write(request, work)


@operation("Add areas to an agency from GeoJSON (Feature or FeatureCollection; ?kind=, ?repair=true)",
           tags=("agencies", "geo"), request={"type": "object"},
           parameters=({"name": "kind", "in": "query", "required": True,
                        "schema": {"enum": ["jurisdiction", "zone", "beat", "geofence"]}},
                       {"name": "repair", "in": "query", "schema": {"type": "boolean"}}),
           responses={201: {"description": "the imported area ids and repair warnings", "schema": OBJ}})
@require(Role.SUPERVISOR)
async def add_areas(request: web.Request) -> web.Response:
    agency = _agency(request)
    who = principal(request)
    if not _may_manage(who, agency.id):
        raise forbidden("only administrators and the agency's own supervisors change its areas")
    kind = request.query.get("kind")
    if kind not in ("jurisdiction", "zone", "beat", "geofence"):
        raise validation([FieldError("kind", "query parameter: jurisdiction, zone, beat or geofence")])
    document = await read_json(request)
    repair = request.query.get("repair", "false").lower() in ("1", "true", "yes")

    async def work(conn: asyncpg.Connection) -> Written:
        areas, warnings, recorded = await store_areas(conn, document, agency=agency.id, kind=kind, repair=repair,
                                                      actor=who.actor())
        return Written(201, {"ids": [a.id for a in areas], "warnings": warnings}, last_seq=recorded[-1].seq)

    return await write(request, work)


# -- stations ------------------------------------------------------------------------------------

@operation("List stations", tags=("agencies",), parameters=({"name": "agency", "in": "query",
                                                            "schema": {"type": "string"}},),
           responses={200: {"description": "stations", "schema": OBJ}})
@require(Role.DISPATCHER, Role.UNIT)
async def list_stations(request: web.Request) -> web.Response:
    agency = request.query.get("agency")
    stations = [s for s in request.app[appkeys.LIVE].state.stations.values() if agency in (None, s.agency_id)]
    return json_response({"stations": [codec.encode_fields(s) for s in sorted(stations, key=lambda s: s.id)]})


@operation("Create a station (administrators, the agency's supervisors)", tags=("agencies",),
           request=STATION_SCHEMA, parameters=(IDEMPOTENCY_PARAM,),
           responses={201: {"description": "created", "schema": STATION_SCHEMA}})
@require(Role.SUPERVISOR)
async def create_station(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if "location" not in body and isinstance(body.get("address"), str):
        results = request.app[appkeys.GEOGRAPHY].geocode(body["address"], 1)
        if not results:
            raise validation([FieldError("address", "no such address in the gazetteer")])
        body = {**body, "location": {"lat": results[0]["lat"], "lon": results[0]["lon"]}}
    body.pop("address", None)
    station: Station = decode_or_422(Station, body)
    who = principal(request)
    if station.agency_id not in request.app[appkeys.LIVE].state.agencies:
        raise validation([FieldError("agency_id", f"unknown agency {station.agency_id!r}")])
    if not _may_manage(who, station.agency_id):
        raise forbidden("only administrators and the agency's own supervisors add its stations")
    return await _create_new(request, table="stations", kind="station", value=station, save=store.save_station,
                             event_type=STATION_SAVED)


# -- units ---------------------------------------------------------------------------------------

def unit_view(unit: Unit) -> dict[str, Any]:
    return codec.encode_fields(unit)


@operation("List units your agency may dispatch (its own and lending partners'), or all (administrators)",
           tags=("units",), parameters=({"name": "agency", "in": "query", "schema": {"type": "string"}},
                                        {"name": "status", "in": "query", "schema": {"type": "string"}}),
           responses={200: {"description": "units", "schema": OBJ}})
@require(Role.DISPATCHER)
async def list_units(request: web.Request) -> web.Response:
    live = request.app[appkeys.LIVE]
    live.pending_positions()
    who = principal(request)
    agency, status = request.query.get("agency"), request.query.get("status")
    units = [u for u in live.state.units.values()
             if may_dispatch(who, u, live.state.agencies) and agency in (None, u.agency_id)
             and status in (None, u.status.value)]
    return json_response({"units": [unit_view(u) for u in sorted(units, key=lambda u: u.id)]})


@operation("Create a unit (administrators, the agency's supervisors)", tags=("units",), request=UNIT_SCHEMA,
           parameters=(IDEMPOTENCY_PARAM,), responses={201: {"description": "created", "schema": UNIT_SCHEMA}})
@require(Role.SUPERVISOR)
async def create_unit(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    reject_unknown(body, {"id", "call_sign", "agency_id", "capabilities", "station_id", "staffing"})
    unit: Unit = decode_or_422(Unit, body)
    who = principal(request)
    state = request.app[appkeys.LIVE].state
    if unit.agency_id not in state.agencies:
        raise validation([FieldError("agency_id", f"unknown agency {unit.agency_id!r}")])
    if unit.station_id is not None and unit.station_id not in state.stations:
        raise validation([FieldError("station_id", f"unknown station {unit.station_id!r}")])
    if not _may_manage(who, unit.agency_id):
        raise forbidden("only administrators and the agency's own supervisors add its units")
    return await _create_new(request, table="units", kind="unit", value=unit, save=store.save_unit,
                             event_type=UNIT_SAVED, visibility=(unit.agency_id,))


def _visible_unit(request: web.Request) -> Unit:
    live = request.app[appkeys.LIVE]
    live.pending_positions()
    unit = live.state.units.get(request.match_info["id"])
    if unit is None or not sees_unit(principal(request), unit, live.state.agencies):
        raise not_found(f"unit {request.match_info['id']}")
    return unit


@operation("A unit", tags=("units",), responses={200: {"description": "the unit", "schema": UNIT_SCHEMA}})
@require(Role.DISPATCHER, Role.UNIT)
async def get_unit(request: web.Request) -> web.Response:
    return json_response(unit_view(_visible_unit(request)))


PATCH_UNIT = {"type": "object", "properties": {
    "status": {"enum": ["available", "out_of_service", "off_duty", "en_route", "on_scene", "transporting",
                        "at_hospital", "dispatched"]},
    "position": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"},
                                                  "time": {"type": "string", "format": "date-time"}}},
    "call_sign": {"type": "string"}, "capabilities": {"type": "array"}, "station_id": {"type": "string"},
    "staffing": {"type": "integer"}}}


@operation("Change a unit: status (supervisors, or the unit itself), position, roster fields (supervisors)",
           tags=("units",), request=PATCH_UNIT, parameters=(IDEMPOTENCY_PARAM,),
           responses={200: {"description": "the unit after the change", "schema": UNIT_SCHEMA}})
@require(Role.SUPERVISOR, Role.UNIT)
async def patch_unit(request: web.Request) -> web.Response:
    unit = _visible_unit(request)
    who = principal(request)
    body = await read_json_object(request)
    reject_unknown(body, {"status", "position", "call_sign", "capabilities", "station_id", "staffing"})
    roster = {k: body[k] for k in ("call_sign", "capabilities", "station_id", "staffing") if k in body}
    if roster and not _may_manage(who, unit.agency_id):
        raise forbidden("only supervisors change a unit's roster fields")
    position = point_field(body, "position", required=False)
    at = datetime.now(UTC)
    if position is not None and isinstance(body["position"], dict) and body["position"].get("time"):
        try:
            at = datetime.fromisoformat(body["position"]["time"])
        except (TypeError, ValueError):
            raise validation([FieldError("position.time", "an ISO 8601 time with offset")]) from None
        if at.tzinfo is None:
            raise validation([FieldError("position.time", "the time needs a UTC offset")])
    service = request.app[appkeys.DISPATCH]

    async def work(conn: asyncpg.Connection) -> Written:
        seq = 0
        if "status" in body:
            change = decode_or_422(cmd.ChangeUnitStatus, {"unit_id": unit.id, "status": body["status"]})
            seq = (await service.run(conn, change, who)).last_seq
        if roster or position is not None:
            row = await conn.fetchrow("SELECT doc FROM units WHERE id = $1 FOR UPDATE", unit.id)
            current = store.unit_from(row["doc"])
            changed = decode_or_422(Unit, {**codec.encode_fields(current), **roster})
            if position is not None:
                changed = replace(changed, position=position, position_at=at)
            await store.save_unit(conn, changed)
            seq = await _saved(conn, who, UNIT_SAVED, f"unit/{unit.id}", "unit", changed, (unit.agency_id,))
        final = store.unit_from((await conn.fetchrow("SELECT doc FROM units WHERE id = $1", unit.id))["doc"])
        return Written(200, unit_view(final), last_seq=seq)

    return await write(request, work)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/agencies", list_agencies)
    app.router.add_post("/api/v1/agencies", create_agency)
    app.router.add_get("/api/v1/agencies/{id}", get_agency)
    app.router.add_patch("/api/v1/agencies/{id}", patch_agency)
    app.router.add_post("/api/v1/agencies/{id}/areas", add_areas)
    app.router.add_get("/api/v1/stations", list_stations)
    app.router.add_post("/api/v1/stations", create_station)
    app.router.add_get("/api/v1/units", list_units)
    app.router.add_post("/api/v1/units", create_unit)
    app.router.add_get("/api/v1/units/{id}", get_unit)
    app.router.add_patch("/api/v1/units/{id}", patch_unit)
