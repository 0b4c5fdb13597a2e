"""Agency webhooks over HTTP: subscriptions (secret shown once, rotation, pause), the delivery log
with manual retry and replay, and signed inbound requests from agencies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from dispatch import commands as cmd
from dispatch.errors import Invalid
from icp import appkeys
from icp.auth.guard import principal, require
from icp.auth.principal import Principal, Role
from icp.dispatch_service import Written, transact
from icp.errors import FieldError, Problem, forbidden, not_found, unauthorized, validation
from icp.httpapi import json_response, operation, query_int, read_json_object
from icp.store.eventlog import NewEvent
from icp.webhooks import endpoints, signing
from icp.webhooks.inbound import InboundError, parse_inbound
from icp.webhooks.ssrf import AllowList, BlockedDestination, check_url, resolve_and_check

MAX_URL = 2048
ENDPOINT_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "agency_id": {"type": "string"}, "url": {"type": "string"},
    "events": {"type": "array", "items": {"type": "string"}}, "description": {"type": "string"},
    "status": {"enum": list(endpoints.STATUSES)}, "secret": {"type": "string", "description": "in create/rotate only"}}}
CREATE_SCHEMA = {"type": "object", "required": ["url", "events"], "properties": {
    "url": {"type": "string", "maxLength": MAX_URL},
    "events": {"type": "array", "items": {"type": "string"}, "description": "incident.created, incident.*, *"},
    "description": {"type": "string", "maxLength": endpoints.MAX_DESCRIPTION}}}
PATCH_SCHEMA = {"type": "object", "properties": {**CREATE_SCHEMA["properties"],  # type: ignore[dict-item]
                                                 "status": {"enum": ["active", "paused"]}}}
DELIVERY_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "integer"}, "endpoint_id": {"type": "string"}, "seq": {"type": "integer"},
    "event_type": {"type": "string"}, "webhook_id": {"type": "string"},
    "status": {"enum": ["pending", "delivered", "dead"]},
    "attempts": {"type": "integer"}, "due_at": {"type": "string"}, "last_status": {"type": ["integer", "null"]},
    "last_error": {"type": ["string", "null"]}, "attempt_log": {"type": "array"}}}
OBJ = {"type": "object"}


# -- who may manage an agency's integration --------------------------------------------------------

def _manages(who: Principal, agency_id: str) -> bool:
    """The agency's own integration key, its supervisors, and administrators."""
    if who.unrestricted:
        return True
    return who.agency == agency_id and (who.role is Role.AGENCY or who.has(Role.SUPERVISOR))


def _agency(request: web.Request) -> str:
    agency_id = request.match_info["id"]
    who = principal(request)
    if agency_id not in request.app[appkeys.LIVE].state.agencies or not _manages(who, agency_id):
        raise not_found(f"agency {agency_id}")  # another agency's integration is not even confirmed to exist
    return agency_id


def _allow(request: web.Request) -> AllowList:
    return request.app[appkeys.WEBHOOKS].allow


async def _checked_url(request: web.Request, raw: Any) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > MAX_URL:
        raise validation([FieldError("url", f"required: an http(s) URL of at most {MAX_URL} characters")])
    try:
        dest = check_url(raw, _allow(request))
        if dest.address is None:
            await resolve_and_check(dest.host, dest.port, _allow(request))
    except BlockedDestination as exc:
        raise validation([FieldError("url", str(exc))], "this destination is not allowed") from None
    except OSError:
        raise validation([FieldError("url", "the host name does not resolve")]) from None
    return str(dest.url)


def _patterns(raw: Any) -> list[str]:
    try:
        return endpoints.check_patterns(raw)
    except ValueError as exc:
        raise validation([FieldError("events", str(exc))]) from None


def _description(raw: Any) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or len(raw) > endpoints.MAX_DESCRIPTION:
        raise validation([FieldError("description", f"text of at most {endpoints.MAX_DESCRIPTION} characters")])
    return raw


def _reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise validation([FieldError(name, "unknown field") for name in unknown])


async def _log(request: web.Request, type_: str, endpoint_id: str, agency_id: str, data: dict[str, Any]) -> None:
    await request.app[appkeys.COMMITTER].append(NewEvent(
        type_, f"webhook/{endpoint_id}", {"endpoint_id": endpoint_id, **data}, actor=principal(request).actor(),
        visibility=(agency_id,)))


# -- subscriptions ---------------------------------------------------------------------------------

@operation("An agency's webhook subscriptions", tags=("webhooks",),
           responses={200: {"description": "the endpoints", "schema": {"type": "array", "items": ENDPOINT_SCHEMA}}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def list_endpoints(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    rows = await request.app[appkeys.POOL].fetch(
        "SELECT * FROM webhook_endpoints WHERE agency_id = $1 ORDER BY created_at, id", agency_id)
    return json_response([endpoints.Endpoint.from_row(r).to_json() for r in rows])


@operation("Subscribe a URL to event types; the signing secret (whsec_…) is in this answer only", tags=("webhooks",),
           request=CREATE_SCHEMA,
           responses={201: {"description": "the endpoint and its secret", "schema": ENDPOINT_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def create_endpoint(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    body = await read_json_object(request, max_bytes=16 * 1024)
    _reject_unknown(body, set(CREATE_SCHEMA["properties"]))
    url = await _checked_url(request, body.get("url"))
    patterns, description = _patterns(body.get("events")), _description(body.get("description"))
    async with request.app[appkeys.POOL].acquire() as conn:
        endpoint, secret = await endpoints.create(conn, request.app[appkeys.SECRET_BOX], agency_id=agency_id,
                                                  url=url, events=patterns, description=description)
    await _log(request, "webhook.endpoint_created", endpoint.id, agency_id, {"url": url, "events": patterns})
    request.app[appkeys.WEBHOOKS].kick(endpoint.id)  # fan out to it from the next commit on
    return json_response({**endpoint.to_json(), "secret": secret}, status=201)


async def _endpoint_row(request: web.Request, agency_id: str) -> asyncpg.Record:
    row = await request.app[appkeys.POOL].fetchrow(
        "SELECT * FROM webhook_endpoints WHERE id = $1 AND agency_id = $2", request.match_info["wid"], agency_id)
    if row is None:
        raise not_found(f"webhook endpoint {request.match_info['wid']}")
    return row


@operation("One webhook subscription", tags=("webhooks",),
           responses={200: {"description": "it", "schema": ENDPOINT_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def get_endpoint(request: web.Request) -> web.Response:
    return json_response(endpoints.Endpoint.from_row(await _endpoint_row(request, _agency(request))).to_json())


@operation("Change a subscription's URL, events or description, pause it or resume it (also after a 410 "
           "disabled it)", tags=("webhooks",), request=PATCH_SCHEMA,
           responses={200: {"description": "the endpoint", "schema": ENDPOINT_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def patch_endpoint(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    row = await _endpoint_row(request, agency_id)
    body = await read_json_object(request, max_bytes=16 * 1024)
    _reject_unknown(body, set(PATCH_SCHEMA["properties"]))
    url = await _checked_url(request, body["url"]) if "url" in body else row["url"]
    patterns = _patterns(body["events"]) if "events" in body else list(row["events"])
    description = _description(body["description"]) if "description" in body else row["description"]
    status = body.get("status", row["status"])
    if status not in ("active", "paused", row["status"]):
        raise validation([FieldError("status", "active or paused")])
    updated = await request.app[appkeys.POOL].fetchrow(
        "UPDATE webhook_endpoints SET url = $2, events = $3, description = $4, status = $5,"
        " disabled_reason = CASE WHEN $5 = 'disabled' THEN disabled_reason END, updated_at = now()"
        " WHERE id = $1 RETURNING *", row["id"], url, patterns, description, status)
    await _log(request, "webhook.endpoint_updated", row["id"], agency_id,
               {"url": url, "events": patterns, "status": status})
    request.app[appkeys.WEBHOOKS].kick(row["id"])
    return json_response(endpoints.Endpoint.from_row(updated).to_json())


@operation("Remove a subscription and its queued deliveries", tags=("webhooks",),
           responses={204: {"description": "gone"}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def delete_endpoint(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    row = await _endpoint_row(request, agency_id)
    await request.app[appkeys.POOL].execute("DELETE FROM webhook_endpoints WHERE id = $1", row["id"])
    await _log(request, "webhook.endpoint_deleted", row["id"], agency_id, {"url": row["url"]})
    request.app[appkeys.WEBHOOKS].kick(row["id"])
    return web.Response(status=204)


@operation("Rotate the signing secret: the new one is in this answer only; the previous one keeps signing "
           "alongside it for the overlap period", tags=("webhooks",),
           responses={200: {"description": "the endpoint and its new secret", "schema": ENDPOINT_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def rotate_secret(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    row = await _endpoint_row(request, agency_id)
    settings = request.app[appkeys.SETTINGS]
    async with request.app[appkeys.POOL].acquire() as conn:
        endpoint, secret = await endpoints.rotate(conn, request.app[appkeys.SECRET_BOX], row["id"],
                                                  settings.webhook_secret_overlap_s, datetime.now(UTC))
    await _log(request, "webhook.secret_rotated", row["id"], agency_id, {})
    return json_response({**endpoint.to_json(), "secret": secret})


@operation("Send again every delivery of this endpoint after a seq (same webhook-ids, so receivers can "
           "de-duplicate)", tags=("webhooks",),
           request={"type": "object", "required": ["after_seq"], "properties": {"after_seq": {"type": "integer"}}},
           responses={200: {"description": "how many were queued", "schema": OBJ}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def replay(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    row = await _endpoint_row(request, agency_id)
    body = await read_json_object(request, max_bytes=1024)
    after = body.get("after_seq")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise validation([FieldError("after_seq", "required: a seq (integer >= 0)")])
    count = await request.app[appkeys.POOL].fetchval(
        "WITH r AS (UPDATE webhook_deliveries SET status = 'pending', due_at = now(), retry_base = attempts"
        " WHERE endpoint_id = $1 AND seq > $2 AND status <> 'pending' RETURNING 1) SELECT count(*) FROM r",
        row["id"], after)
    await _log(request, "webhook.replayed", row["id"], agency_id, {"after_seq": after, "deliveries": count})
    request.app[appkeys.WEBHOOKS].kick(row["id"])
    return json_response({"queued": count})


# -- the delivery log ------------------------------------------------------------------------------

def _delivery_json(row: asyncpg.Record) -> dict[str, Any]:
    out = {"id": row["id"], "endpoint_id": row["endpoint_id"], "seq": row["seq"], "event_type": row["event_type"],
           "webhook_id": row["msg_id"], "status": row["status"], "attempts": row["attempts"],
           "due_at": row["due_at"].isoformat(), "created_at": row["created_at"].isoformat(),
           "last_status": row["last_status"], "last_error": row["last_error"]}
    for name in ("last_attempt_at", "delivered_at"):
        out[name] = row[name].isoformat() if row[name] else None
    return out


def _delivery_scope(who: Principal) -> str | None:
    """The agency whose deliveries the caller sees (None: all, administrators)."""
    if who.unrestricted:
        return None
    if who.agency is None or not (who.role is Role.AGENCY or who.has(Role.SUPERVISOR)):
        raise forbidden("the delivery log is for the agency's integration key, its supervisors and administrators")
    return who.agency


@operation("Webhook deliveries, newest first (filters: endpoint, status, before=id)", tags=("webhooks",),
           parameters=tuple({"name": n, "in": "query", "schema": {"type": t}} for n, t in (
               ("endpoint", "string"), ("status", "string"), ("before", "integer"), ("limit", "integer"))),
           responses={200: {"description": "deliveries", "schema": {"type": "array", "items": DELIVERY_SCHEMA}}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def list_deliveries(request: web.Request) -> web.Response:
    agency = _delivery_scope(principal(request))
    limit = query_int(request, "limit", 100, lo=1, hi=1000)
    before = query_int(request, "before", 2**62, lo=1, hi=2**62)
    status = request.query.get("status")
    if status is not None and status not in ("pending", "delivered", "dead"):
        raise validation([FieldError("status", "pending, delivered or dead")])
    rows = await request.app[appkeys.POOL].fetch(
        "SELECT d.* FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.id < $1 AND ($2::text IS NULL OR e.agency_id = $2) AND ($3::text IS NULL OR d.endpoint_id = $3)"
        "   AND ($4::text IS NULL OR d.status = $4) ORDER BY d.id DESC LIMIT $5",
        before, agency, request.query.get("endpoint"), status, limit)
    return json_response([_delivery_json(r) for r in rows])


async def _delivery_row(request: web.Request) -> asyncpg.Record:
    agency = _delivery_scope(principal(request))
    try:
        delivery_id = int(request.match_info["did"])
    except ValueError:
        raise not_found(f"delivery {request.match_info['did'][:40]}") from None
    row = await request.app[appkeys.POOL].fetchrow(
        "SELECT d.*, e.agency_id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.id = $1 AND ($2::text IS NULL OR e.agency_id = $2)", delivery_id, agency)
    if row is None:
        raise not_found(f"delivery {delivery_id}")
    return row


@operation("One delivery with its attempts (time, status code, latency, error) and its body", tags=("webhooks",),
           responses={200: {"description": "the delivery", "schema": DELIVERY_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def get_delivery(request: web.Request) -> web.Response:
    row = await _delivery_row(request)
    attempts = await request.app[appkeys.POOL].fetch(
        "SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts WHERE delivery_id = $1"
        " ORDER BY attempt", row["id"])
    return json_response({**_delivery_json(row), "body": json.loads(bytes(row["body"])), "attempt_log": [
        {"attempt": a["attempt"], "at": a["at"].isoformat(), "status_code": a["status_code"],
         "latency_ms": round(a["latency_ms"], 2), "error": a["error"]} for a in attempts]})


@operation("Retry a delivery now (a dead-lettered one gets a fresh schedule; a delivered one is sent again)",
           tags=("webhooks",), responses={202: {"description": "queued", "schema": DELIVERY_SCHEMA}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def retry_delivery(request: web.Request) -> web.Response:
    row = await _delivery_row(request)
    updated = await request.app[appkeys.POOL].fetchrow(
        "UPDATE webhook_deliveries SET status = 'pending', due_at = now(), retry_base = attempts WHERE id = $1"
        " RETURNING *", row["id"])
    await _log(request, "webhook.retried", row["endpoint_id"], row["agency_id"], {"delivery_id": row["id"]})
    request.app[appkeys.WEBHOOKS].kick(row["endpoint_id"])
    return json_response(_delivery_json(updated), status=202)


# -- inbound ---------------------------------------------------------------------------------------

@operation("Make or rotate the agency's inbound signing secret (whsec_…, in this answer only); the previous "
           "one is accepted for the overlap period", tags=("webhooks",),
           responses={200: {"description": "the secret", "schema": OBJ}})
@require(Role.AGENCY, Role.SUPERVISOR)
async def rotate_inbound_secret(request: web.Request) -> web.Response:
    agency_id = _agency(request)
    settings = request.app[appkeys.SETTINGS]
    async with request.app[appkeys.POOL].acquire() as conn:
        secret, previous_until = await endpoints.rotate_inbound(
            conn, request.app[appkeys.SECRET_BOX], agency_id, settings.webhook_secret_overlap_s, datetime.now(UTC))
    await request.app[appkeys.COMMITTER].append(NewEvent(
        "webhook.inbound_secret_rotated", f"agency/{agency_id}", {"agency_id": agency_id},
        actor=principal(request).actor(), visibility=(agency_id,)))
    return json_response({"agency_id": agency_id, "secret": secret,
                          "previous_valid_until": previous_until.isoformat() if previous_until else None})


@operation("A signed request from an agency (Standard Webhooks headers, the agency's inbound secret): "
           "unit.status, mutual_aid.accept, mutual_aid.decline, incident.note. 401 on a bad, stale or "
           "replayed signature; nothing is applied then", tags=("webhooks",),
           request={"type": "object", "required": ["type", "data"], "properties": {
               "type": {"enum": ["unit.status", "mutual_aid.accept", "mutual_aid.decline", "incident.note"]},
               "data": {"type": "object"}}},
           responses={200: {"description": "what happened", "schema": OBJ}})
async def inbound(request: web.Request) -> web.Response:
    app = request.app
    settings = app[appkeys.SETTINGS]
    agency_id = request.match_info["id"]
    if request.content_length is not None and request.content_length > settings.inbound_max_bytes:
        raise Problem(413, "payload_too_large", f"an inbound request is at most {settings.inbound_max_bytes} bytes")
    body = await request.content.read(settings.inbound_max_bytes + 1)
    if len(body) > settings.inbound_max_bytes:
        raise Problem(413, "payload_too_large", f"an inbound request is at most {settings.inbound_max_bytes} bytes")
    now = datetime.now(UTC)
    keys = (await endpoints.inbound_secrets(app[appkeys.POOL], app[appkeys.SECRET_BOX], agency_id, now)
            if agency_id in app[appkeys.LIVE].state.agencies else [])
    if not keys:  # unknown agency and agency without a secret look alike: nothing to learn here
        raise unauthorized("the request is not signed with this agency's inbound secret")
    try:
        msg_id = signing.verify(keys, request.headers, body, now=int(now.timestamp()),
                                tolerance_s=settings.inbound_tolerance_s)
    except signing.SignatureError as exc:
        raise unauthorized(f"signature rejected: {exc.reason.value.replace('_', ' ')}") from None
    try:
        command = parse_inbound(body, agency_id)
    except InboundError as exc:
        raise validation([FieldError(exc.field, str(exc))]) from None
    except Invalid as exc:
        raise validation([FieldError(exc.field or "data", str(exc))]) from None
    who = Principal(kind="agency", id=agency_id, name=f"{agency_id} (signed inbound)", role=Role.AGENCY,
                    agency=agency_id)
    service = app[appkeys.DISPATCH]

    async def work(conn: asyncpg.Connection) -> Written:
        # In the transaction that applies the request: a replay is refused, and a request that
        # fails applies nothing and burns no id (the agency may fix and resend it).
        fresh = await conn.fetchval(
            "INSERT INTO inbound_messages (agency_id, msg_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
            agency_id, msg_id)
        if not fresh:
            raise unauthorized("signature rejected: this webhook-id was already received (replay)")
        await conn.execute("DELETE FROM inbound_messages WHERE agency_id = $1 AND received_at < now() - make_interval("
                           "secs => $2)", agency_id, 4 * settings.inbound_tolerance_s)
        run = command
        if isinstance(command, cmd.AcceptMutualAid | cmd.DeclineAssignment):
            status = await conn.fetchval("SELECT status FROM assignments WHERE id = $1", command.assignment_id)
            if status != "requested":  # an agency answers requests; its units decline their own assignments
                raise Problem(409, "not_a_request", f"assignment {command.assignment_id} is not a mutual-aid "
                              "request awaiting an answer")
        if isinstance(command, cmd.DeclineAssignment) and service.live.policy.on_decline != "none":
            run = cmd.DeclineAssignment(assignment_id=command.assignment_id, reason=command.reason,
                                        replacement_unit_id=service.replacement(command.assignment_id, now))
        outcome = await service.run(conn, run, who)
        return Written(200, {"webhook_id": msg_id, "events": [e.to_dict() for e in outcome.events]},
                       last_seq=outcome.last_seq)

    written = await transact(app[appkeys.POOL], app[appkeys.FEED], who, work)
    return json_response(written.body, status=written.status)


def setup(app: web.Application) -> None:
    base = "/api/v1/agencies/{id}/webhooks"
    app.router.add_get(base, list_endpoints)
    app.router.add_post(base, create_endpoint)
    app.router.add_get(base + "/{wid}", get_endpoint)
    app.router.add_patch(base + "/{wid}", patch_endpoint)
    app.router.add_delete(base + "/{wid}", delete_endpoint)
    app.router.add_post(base + "/{wid}/rotate", rotate_secret)
    app.router.add_post(base + "/{wid}/replay", replay)
    app.router.add_get("/api/v1/webhooks/deliveries", list_deliveries)
    app.router.add_get("/api/v1/webhooks/deliveries/{did}", get_delivery)
    app.router.add_post("/api/v1/webhooks/deliveries/{did}/retry", retry_delivery)
    app.router.add_post("/api/v1/agencies/{id}/inbound-secret", rotate_inbound_secret)
    app.router.add_post("/api/v1/agencies/{id}/inbound", inbound)
