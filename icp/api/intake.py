"""Sensor intake endpoints (native JSON, batch, CAP 1.2, SensorThings), the sensor registry, and
alerts read back with their original payload."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
from aiohttp import web
from shapely.geometry import box

from geo.coords import Point
from icp import appkeys, jsontext
from icp.api.writes import point_field, reject_unknown
from icp.auth.guard import principal, require
from icp.auth.principal import Principal, Role
from icp.dispatch_service import sees_incident
from icp.errors import FieldError, Problem, forbidden, not_found, to_problem, validation
from icp.httpapi import json_response, operation, read_json_object
from icp.intake.cap import parse_cap
from icp.intake.native import MAX_BATCH_BYTES, batch_items, parse_native, parse_native_batch
from icp.intake.registry import InMemorySensorRegistry, SensorRecord
from icp.intake.report import AlertReport, IntakeConfig, IntakeError, load_json
from icp.intake.sensorthings import observation_report, read_observation
from icp.ratelimit import RateLimiter, retry_after

INTAKE_LIMITER = web.AppKey("intake_limiter", RateLimiter)
INTAKE_CONFIG = web.AppKey("intake_config", dict)  # {"areas": AreaIndex seen, "config": IntakeConfig}
OUTCOME = {"type": "object", "required": ["alert_id", "incident_id", "outcome"], "properties": {
    "alert_id": {"type": "string"}, "incident_id": {"type": ["string", "null"]},
    "outcome": {"enum": ["created", "attached", "duplicate", "recorded"]}, "reason": {"type": "string"},
    "location_flags": {"type": "array", "items": {"type": "string"}}, "findings": {"type": "array"}}}
NATIVE = {"type": "object", "required": ["source", "id", "kind", "time", "location"], "properties": {
    "source": {"type": "string"}, "id": {"type": "string"}, "kind": {"type": "string"},
    "time": {"type": "string", "format": "date-time"},
    "location": {"description": "a GeoJSON geometry ([lon, lat]) or {\"lat\", \"lon\"}"},
    "severity": {"type": "string"}, "urgency": {"type": "string"}, "certainty": {"type": "string"},
    "headline": {"type": "string"}, "description": {"type": "string"}, "data": {"type": "object"}}}
CAP_TYPES = ("application/cap+xml", "application/xml", "text/xml")


def intake_config(app: web.Application) -> IntakeConfig:
    """The parsers' view of this installation; the service area follows the jurisdictions."""
    holder = app[INTAKE_CONFIG]
    areas = app[appkeys.GEOGRAPHY].areas
    if holder.get("areas") is not areas:
        settings = app[appkeys.SETTINGS]
        shapes = [a.geometry for a in areas.areas(kind="jurisdiction")]
        service_area: Any = None
        if shapes:
            from shapely import union_all

            service_area = union_all(shapes)
        elif settings.service_area:
            min_lon, min_lat, max_lon, max_lat = (float(v) for v in settings.service_area.split(","))
            service_area = box(min_lon, min_lat, max_lon, max_lat)
        languages = tuple(x.strip() for x in settings.intake_languages.split(",") if x.strip())
        holder["config"] = IntakeConfig(service_area=service_area, languages=languages, strict=settings.cap_strict)
        holder["areas"] = areas
    config: IntakeConfig = holder["config"]
    return config


def _limit(request: web.Request, cost: int = 1) -> None:
    who = principal(request)
    wait = request.app[INTAKE_LIMITER].take(f"{who.kind}:{who.id}", cost)
    if wait > 0:
        raise Problem(429, "rate_limited", f"this key sends faster than allowed; retry in {wait:.1f} s",
                      headers={"Retry-After": retry_after(wait)})


async def _body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` — read from the stream, so the
    batch endpoint's larger bound is independent of the app-wide one."""
    if (request.content_length or 0) > limit:
        raise Problem(413, "too_large", f"the body exceeds {limit} bytes")
    chunks, size = [], 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _bound_source(who: Principal, report: AlertReport) -> None:
    if who.source is not None and report.source != who.source:
        raise forbidden(f"this key posts for sensor network {who.source!r}, not {report.source!r}")


async def _accept(request: web.Request, report: AlertReport, raw: bytes, content_type: str) -> web.Response:
    outcome = await request.app[appkeys.INTAKE].accept(report, raw, content_type, principal(request))
    return json_response(outcome.to_json(), status=202)


# -- the four intake endpoints ----------------------------------------------------------------------

@operation("Post one native alert; 202 once it is durable", tags=("intake",), request=NATIVE,
           responses={202: {"description": "recorded", "schema": OUTCOME}, 429: "rate limited"})
@require(Role.SENSOR)
async def post_alert(request: web.Request) -> web.Response:
    _limit(request)
    config = intake_config(request.app)
    raw = await _body(request, config.max_json_bytes)
    report = parse_native(raw, config)
    _bound_source(principal(request), report)
    return await _accept(request, report, raw, "application/json")


@operation("Post many native alerts (a JSON array, or {\"alerts\": [...]}); a result per alert",
           tags=("intake",), request={"oneOf": [{"type": "array", "items": NATIVE},
                                                  {"type": "object", "properties": {"alerts": {"type": "array"}}}]},
           responses={202: {"description": "results in order", "schema": {"type": "object", "properties": {
               "results": {"type": "array"}}}}})
@require(Role.SENSOR)
async def post_batch(request: web.Request) -> web.Response:
    config = intake_config(request.app)
    body = load_json(await _body(request, MAX_BATCH_BYTES), max_bytes=MAX_BATCH_BYTES, what="batch")
    items = parse_native_batch(body, config)
    sent, _ = batch_items(body)  # the members as sent (parse_native_batch accepted the shape)
    _limit(request, len(items))
    who = principal(request)
    results: list[dict[str, Any] | None] = [None] * len(items)
    accepted: list[tuple[int, AlertReport]] = []
    for n, item in enumerate(items):
        if isinstance(item, IntakeError):
            results[n] = {"error": {"code": item.code, "message": str(item), "errors": item.errors()}}
        elif who.source is not None and item.source != who.source:
            results[n] = {"error": {"code": "forbidden", "message": f"this key posts for {who.source!r} only"}}
        else:
            accepted.append((n, item))
    # Each item's own JSON, as sent, is its raw payload (the batch as a whole is not kept per alert).
    outcomes = await request.app[appkeys.INTAKE].accept_all(
        [(item, jsontext.compact_bytes(sent[n]), "application/json") for n, item in accepted], who)
    for (n, _), outcome in zip(accepted, outcomes, strict=True):
        if isinstance(outcome, BaseException):  # this one failed; the others stand
            failed = to_problem(outcome)
            results[n] = {"error": {"code": failed.code, "message": failed.detail}}
        else:
            results[n] = outcome.to_json()
    ok = any(r is not None and "error" not in r for r in results)
    return json_response({"results": results}, status=202 if ok else 422)


@operation("Post a CAP 1.2 document (application/cap+xml or application/xml)", tags=("intake",),
           responses={202: {"description": "recorded", "schema": OUTCOME}, 415: "not XML"})
@require(Role.SENSOR)
async def post_cap(request: web.Request) -> web.Response:
    if request.content_type not in CAP_TYPES:
        raise Problem(415, "unsupported_media_type", f"send CAP as one of {', '.join(CAP_TYPES)}")
    _limit(request)
    config = intake_config(request.app)
    raw = await _body(request, config.max_cap_bytes)
    report = await asyncio.to_thread(parse_cap, raw, config) if config.strict else parse_cap(raw, config)
    return await _accept(request, report, raw, request.content_type)


@operation("Post an OGC SensorThings 1.1 Observation (Datastream/FeatureOfInterest inline or by @iot.id, "
           "placed from the sensor registry)", tags=("intake",), request={"type": "object"},
           responses={202: {"description": "recorded", "schema": OUTCOME}})
@require(Role.SENSOR)
async def post_observation(request: web.Request) -> web.Response:
    _limit(request)
    config = intake_config(request.app)
    raw = await _body(request, config.max_json_bytes)
    obs = read_observation(raw, max_bytes=config.max_json_bytes)
    who = principal(request)
    registry = await _registry_for(request.app[appkeys.POOL], obs.datastream_id, obs.thing_id)
    report = observation_report(obs, source=who.source or "sensorthings", registry=registry, config=config)
    return await _accept(request, report, raw, "application/json")


async def _registry_for(pool: asyncpg.Pool, datastream_id: str | None, thing_id: str | None) -> InMemorySensorRegistry:
    """The registered sensors an observation names, as the parser's registry."""
    if datastream_id is None and thing_id is None:
        return InMemorySensorRegistry()
    rows = await pool.fetch(
        "SELECT * FROM sensors WHERE ($1::text IS NOT NULL AND $1 = ANY(datastream_ids))"
        " OR ($2::text IS NOT NULL AND $2 = ANY(thing_ids))", datastream_id, thing_id)
    datastreams: dict[str | int, SensorRecord] = {}
    things: dict[str | int, SensorRecord] = {}
    for row in rows:
        record = _record(row)
        if datastream_id is not None and datastream_id in row["datastream_ids"]:
            datastreams[datastream_id] = record
        if thing_id is not None and thing_id in row["thing_ids"]:
            things[thing_id] = record
    return InMemorySensorRegistry(datastreams=datastreams, things=things)


def _record(row: asyncpg.Record) -> SensorRecord:
    location = Point(lat=row["lat"], lon=row["lon"]) if row["lat"] is not None else None
    return SensorRecord(id=row["id"], kind=row["kind"], location=location, observed_property=row["observed_property"],
                        name=row["name"], unit=row["unit"])


# -- the sensor registry ------------------------------------------------------------------------------

SENSOR = {"type": "object", "required": ["id", "kind"], "properties": {
    "id": {"type": "string"}, "source": {"type": "string"}, "kind": {"type": "string"},
    "name": {"type": "string"}, "location": {"type": "object"}, "observed_property": {"type": "string"},
    "unit": {"type": "string"}, "datastream_ids": {"type": "array", "items": {"type": "string"}},
    "thing_ids": {"type": "array", "items": {"type": "string"}}}}


def _sensor_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "source": row["source"], "kind": row["kind"], "name": row["name"],
            "location": {"lat": row["lat"], "lon": row["lon"]} if row["lat"] is not None else None,
            "observed_property": row["observed_property"], "unit": row["unit"],
            "datastream_ids": list(row["datastream_ids"]), "thing_ids": list(row["thing_ids"])}


@operation("Register or replace a sensor with its fixed location (supervisors; a sensor key for its network)",
           tags=("intake",), request=SENSOR, responses={201: {"description": "the sensor", "schema": SENSOR}})
@require(Role.SUPERVISOR, Role.SENSOR)
async def put_sensor(request: web.Request) -> web.Response:
    who = principal(request)
    body = await read_json_object(request, max_bytes=16 * 1024)
    reject_unknown(body, set(SENSOR["properties"]))
    source = body.get("source") or who.source
    if not isinstance(source, str) or not source:
        raise validation([FieldError("source", "required: the sensor network")])
    if who.role is Role.SENSOR and who.source not in (None, source):
        raise forbidden(f"this key registers sensors of {who.source!r} only")
    location = point_field(body, "location", required=False)
    try:
        record = SensorRecord(id=body.get("id", ""), kind=body.get("kind", ""), location=location,
                              observed_property=body.get("observed_property", ""), name=body.get("name", ""),
                              unit=body.get("unit", ""))
    except ValueError as exc:
        raise validation([FieldError("sensor", str(exc))]) from None
    ids: dict[str, list[str]] = {}
    for name in ("datastream_ids", "thing_ids"):
        value = body.get(name, [])
        if not isinstance(value, list) or len(value) > 100 or not all(isinstance(v, str | int) for v in value):
            raise validation([FieldError(name, "a list of at most 100 ids")])
        ids[name] = [str(v) for v in value]
    row = await request.app[appkeys.POOL].fetchrow(
        "INSERT INTO sensors (id, source, kind, name, lat, lon, observed_property, unit, datastream_ids, thing_ids)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source,"
        " kind = EXCLUDED.kind, name = EXCLUDED.name, lat = EXCLUDED.lat, lon = EXCLUDED.lon,"
        " observed_property = EXCLUDED.observed_property, unit = EXCLUDED.unit,"
        " datastream_ids = EXCLUDED.datastream_ids, thing_ids = EXCLUDED.thing_ids, updated_at = now()"
        " RETURNING *",
        record.id, source, record.kind.value, record.name, location.lat if location else None,
        location.lon if location else None, record.observed_property, record.unit,
        ids["datastream_ids"], ids["thing_ids"])
    return json_response(_sensor_view(row), status=201)


@operation("The sensor registry", tags=("intake",), parameters=(
    {"name": "source", "in": "query", "schema": {"type": "string"}},),
    responses={200: {"description": "sensors", "schema": {"type": "object"}}})
@require(Role.DISPATCHER, Role.SENSOR)
async def list_sensors(request: web.Request) -> web.Response:
    who = principal(request)
    source = who.source if who.role is Role.SENSOR and who.source else request.query.get("source")
    rows = await request.app[appkeys.POOL].fetch(
        "SELECT * FROM sensors WHERE $1::text IS NULL OR source = $1 ORDER BY id LIMIT 10000", source)
    return json_response({"sensors": [_sensor_view(r) for r in rows]})


# -- alerts read back ---------------------------------------------------------------------------------

async def _visible_alert(request: web.Request, columns: str) -> asyncpg.Record:
    row = await request.app[appkeys.POOL].fetchrow(
        f"SELECT {columns}, i.agency_ids FROM alerts a LEFT JOIN incidents i ON i.id = a.incident_id"
        " WHERE a.id = $1", request.match_info["id"])
    if row is None or not sees_incident(principal(request), row["agency_ids"] or ["*"]):
        raise not_found(f"alert {request.match_info['id']}")
    return row


@operation("An alert: the parsed report, where it went and why", tags=("intake",),
           responses={200: {"description": "the alert", "schema": {"type": "object"}}})
@require(Role.DISPATCHER)
async def get_alert(request: web.Request) -> web.Response:
    row = await _visible_alert(request, "a.id, a.source, a.identifier, a.received_at, a.incident_id, a.outcome,"
                                        " a.report, a.content_type, length(a.raw) AS raw_bytes")
    return json_response({
        "id": row["id"], "source": row["source"], "identifier": row["identifier"],
        "received_at": row["received_at"].isoformat(), "incident_id": row["incident_id"], "outcome": row["outcome"],
        # Stored without the members at their defaults: shown whole.
        "report": AlertReport.from_json(row["report"]).to_json(), "content_type": row["content_type"],
        "raw_bytes": row["raw_bytes"],
        "raw_url": f"/api/v1/alerts/{row['id']}/raw",
    })


@operation("The alert's original payload, byte for byte", tags=("intake",),
           responses={200: "the payload with its original content type"})
@require(Role.DISPATCHER)
async def get_alert_raw(request: web.Request) -> web.Response:
    row = await _visible_alert(request, "a.raw, a.content_type")
    raw = bytes(row["raw"])
    return web.Response(body=raw, content_type=row["content_type"].split(";")[0], headers={
        "X-Content-Type-Options": "nosniff", "Content-Disposition": "attachment",
        "ETag": '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'})


def setup(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]
    app[INTAKE_LIMITER] = RateLimiter(settings.sensor_rate_per_s, settings.sensor_burst)
    app[INTAKE_CONFIG] = {}
    app.router.add_post("/api/v1/alerts", post_alert)
    app.router.add_post("/api/v1/alerts/batch", post_batch)
    app.router.add_post("/api/v1/alerts/cap", post_cap)
    app.router.add_post("/api/v1/sensorthings/v1.1/Observations", post_observation)
    app.router.add_get("/api/v1/alerts/{id}", get_alert)
    app.router.add_get("/api/v1/alerts/{id}/raw", get_alert_raw)
    app.router.add_get("/api/v1/sensors", list_sensors)
    app.router.add_post("/api/v1/sensors", put_sensor)
