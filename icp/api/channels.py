"""Messaging over HTTP: channels, history, sending, receipts, acknowledgements and attachments.

Every endpoint needs an authenticated principal that takes part in messaging (units, dispatchers,
supervisors, administrators) and, for a channel, membership of it now (`icp.messaging.channels`).
"""

from __future__ import annotations

import re

from aiohttp import web

from icp.api.writes import IDEMPOTENCY_PARAM, reject_unknown
from icp.auth.guard import principal, require
from icp.errors import FieldError, Problem, validation
from icp.httpapi import json_response, operation, query_int, read_json_object
from icp.messaging import MESSAGING
from icp.messaging.service import HISTORY_MAX

OBJ = {"type": "object"}
CHANNEL_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "kind": {"type": "string", "enum": ["incident", "agency", "broadcast", "talkgroup",
                                                                  "direct"]},
    "name": {"type": "string"}, "agency_id": {"type": "string"}, "incident_id": {"type": "string"},
    "writable": {"type": "boolean"}, "last_seq": {"type": ["integer", "null"]},
    "delivered": {"type": "integer"}, "read": {"type": "integer"}}}
MESSAGE_SCHEMA = {"type": "object", "properties": {
    "channel": {"type": "string"}, "seq": {"type": "integer", "description": "the message's id and order"},
    "at": {"type": "string", "format": "date-time"}, "sender": {"type": "object"}, "text": {"type": "string"},
    "priority": {"type": "string", "enum": ["normal", "emergency"]}, "client_id": {"type": "string"},
    "ack_required": {"type": "boolean"}, "attachment": {"type": "object"}}}
SEND_SCHEMA = {"type": "object", "required": ["text"], "properties": {
    "text": {"type": "string", "maxLength": 4000}, "priority": {"type": "string", "enum": ["normal", "emergency"]},
    "attachment": {"type": "string", "description": "the id of an attachment uploaded to this channel"},
    "client_id": {"type": "string", "maxLength": 100,
                  "description": "makes a resend return the first message (or use Idempotency-Key)"}}}
CREATE_SCHEMA = {"type": "object", "required": ["kind"], "properties": {
    "kind": {"type": "string", "enum": ["talkgroup", "direct"]},
    "with": {"type": "string", "description": "direct: the other member, unit:<id>, user:<id> or token:<id>"},
    "name": {"type": "string", "description": "talkgroup: its short name (lowercase letters, digits, '_', '-')"},
    "title": {"type": "string"}, "agency_id": {"type": "string", "description": "talkgroup owner (administrators)"},
    "agencies": {"type": "array", "items": {"type": "string"}},
    "units": {"type": "array", "items": {"type": "string"}}}}
SEQ_PARAM = {"name": "seq", "in": "path", "required": True, "schema": {"type": "integer"}}
MAX_JSON = 64 * 1024
_NAME = re.compile(r"[^\x00-\x1f\x7f/\\\"]{1,200}")


@operation("The channels you are a member of, with their last message and your delivered/read cursors",
           tags=("messaging",), responses={200: {"description": "channels", "schema": {
               "type": "object", "properties": {"channels": {"type": "array", "items": CHANNEL_SCHEMA}}}}})
@require()
async def list_channels(request: web.Request) -> web.Response:
    return json_response({"channels": await request.app[MESSAGING].list_channels(principal(request))})


@operation("Open a direct channel with another member ({kind: direct, with}), or create a talkgroup "
           "(supervisors: {kind: talkgroup, name, title, agencies, units})", tags=("messaging",),
           request=CREATE_SCHEMA, responses={201: {"description": "the channel", "schema": CHANNEL_SCHEMA},
                                             200: {"description": "the direct channel that existed"}})
@require()
async def create_channel(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=MAX_JSON)
    channel, created = await request.app[MESSAGING].create_channel(principal(request), body)
    return json_response(channel, status=201 if created else 200)


@operation("A channel you are a member of", tags=("messaging",),
           responses={200: {"description": "the channel", "schema": CHANNEL_SCHEMA}})
@require()
async def get_channel(request: web.Request) -> web.Response:
    return json_response(await request.app[MESSAGING].channel_view(principal(request), request.match_info["id"]))


@operation("Change a talkgroup's title, agencies or units (its agency's supervisors)", tags=("messaging",),
           request=CREATE_SCHEMA, responses={200: {"description": "the channel", "schema": CHANNEL_SCHEMA}})
@require()
async def update_channel(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=MAX_JSON)
    reject_unknown(body, {"title", "agencies", "units"})
    return json_response(await request.app[MESSAGING].update_channel(principal(request), request.match_info["id"],
                                                                     body))


@operation("A channel's messages, newest page first: those before `before` (default: the newest), oldest "
           "first within the page; `next_before` asks for the page before", tags=("messaging",),
           parameters=({"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                   "maximum": HISTORY_MAX}}),
           responses={200: {"description": "messages", "schema": {"type": "object", "properties": {
               "messages": {"type": "array", "items": MESSAGE_SCHEMA},
               "next_before": {"type": ["integer", "null"]}}}}})
@require()
async def history(request: web.Request) -> web.Response:
    before = query_int(request, "before", 0, lo=1, hi=2**53) if request.query.get("before") else None
    limit = query_int(request, "limit", 50, lo=1, hi=HISTORY_MAX)
    return json_response(await request.app[MESSAGING].history(principal(request), request.match_info["id"], before,
                                                              limit))


@operation("Post a message (members; broadcast channels: supervisors). 201 once it is durable; a resend "
           "with the same client_id or Idempotency-Key returns the first message", tags=("messaging",),
           request=SEND_SCHEMA, parameters=(IDEMPOTENCY_PARAM,),
           responses={201: {"description": "the message", "schema": {"type": "object", "properties": {
               "message": MESSAGE_SCHEMA, "duplicate": {"type": "boolean"}}}}})
@require()
async def send(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=MAX_JSON)
    reject_unknown(body, {"text", "priority", "attachment", "client_id"})
    key = request.headers.get("Idempotency-Key")
    if key is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", key):
        raise Problem(400, "invalid_request", "Idempotency-Key must be 1..100 letters, digits, '.', '_', ':' or '-'")
    result = await request.app[MESSAGING].send(
        principal(request), request.match_info["id"], body.get("text"), priority=body.get("priority", "normal"),
        attachment_id=body.get("attachment"), client_id=body.get("client_id") or key)
    headers = {"Idempotent-Replayed": "true"} if result["duplicate"] else None
    return json_response(result, status=201, headers=headers)


@operation("Who received, read and acknowledged a message (its sender, and supervisors)", tags=("messaging",),
           parameters=(SEQ_PARAM,), responses={200: {"description": "receipts", "schema": OBJ}})
@require()
async def receipts(request: web.Request) -> web.Response:
    return json_response(await request.app[MESSAGING].receipts_of(principal(request), request.match_info["id"],
                                                                  _seq(request)))


@operation("Acknowledge a message (emergency messages ask every member to)", tags=("messaging",),
           parameters=(SEQ_PARAM,), responses={200: {"description": "when it was acknowledged", "schema": OBJ}})
@require()
async def acknowledge(request: web.Request) -> web.Response:
    return json_response(await request.app[MESSAGING].acknowledge(principal(request), request.match_info["id"],
                                                                  _seq(request)))


@operation("Confirm the last message you received ({delivered}) and read ({read}) in the channel; cursors "
           "only move forward", tags=("messaging",),
           request={"type": "object", "properties": {"delivered": {"type": "integer"}, "read": {"type": "integer"}}},
           responses={202: {"description": "noted; written within a moment", "schema": OBJ}})
@require()
async def confirm(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=4096)
    reject_unknown(body, {"delivered", "read"})
    values = {k: body.get(k, 0) for k in ("delivered", "read")}
    bad = [FieldError(k, "an integer ≥ 0") for k, v in values.items()
           if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**53]
    if bad or not any(values.values()):
        raise validation(bad or [FieldError("read", "give delivered or read")])
    result = await request.app[MESSAGING].confirm_checked(principal(request), request.match_info["id"],
                                                          values["delivered"], values["read"])
    return json_response(result, status=202)


@operation("Upload an attachment to a channel: the body is the file (image or PDF; Content-Type as declared "
           "is checked against the content), ?name= its file name. Send it with a message's `attachment`",
           tags=("messaging",), parameters=({"name": "name", "in": "query", "schema": {"type": "string"}},),
           responses={201: {"description": "the attachment", "schema": OBJ},
                      413: {"description": "larger than attachment_max_bytes"},
                      415: {"description": "not an accepted type, or not the type it claims"}})
@require()
async def upload(request: web.Request) -> web.Response:
    service = request.app[MESSAGING]
    limit = service.settings.attachment_max_bytes
    name = request.query.get("name", "")
    if name and not _NAME.fullmatch(name):
        raise validation([FieldError("name", "a file name of at most 200 characters, no path")])
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "body_too_large", f"an attachment is at most {limit} bytes")
    # Membership first: a stranger's upload is refused before its body is read.
    channel, member = await service.channel_for(principal(request), request.match_info["id"], write=True)
    # Read here rather than with request.read(): the app's body limit is for JSON, not files.
    content = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        content += chunk
        if len(content) > limit:
            raise Problem(413, "body_too_large", f"an attachment is at most {limit} bytes")
    if not content:
        raise validation([FieldError("body", "the attachment is empty")])
    result = await service.upload(channel, member, bytes(content), request.headers.get("Content-Type"), name)
    return json_response(result, status=201)


@operation("An attachment's content, for current members of the channel it was sent to", tags=("messaging",),
           responses={200: {"description": "the file, with the type found in it"}})
@require()
async def download(request: web.Request) -> web.StreamResponse:
    row, path = await request.app[MESSAGING].attachment_file(principal(request), request.match_info["id"])
    disposition = "inline" if row["content_type"].startswith("image/") else "attachment"
    filename = (row["name"] or row["id"]).encode("ascii", "replace").decode().replace('"', "_")
    headers = {
        "Content-Type": row["content_type"], "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'{disposition}; filename="{filename}"',
    }
    if not path.exists():
        raise Problem(410, "gone", "the attachment's file is no longer stored")
    return web.FileResponse(path, headers=headers)


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not raw.isdigit() or len(raw) > 16:
        raise validation([FieldError("seq", "a message seq")])
    return int(raw)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/channels", list_channels)
    app.router.add_post("/api/v1/channels", create_channel)
    app.router.add_get("/api/v1/channels/{id}", get_channel)
    app.router.add_patch("/api/v1/channels/{id}", update_channel)
    app.router.add_get("/api/v1/channels/{id}/messages", history)
    app.router.add_post("/api/v1/channels/{id}/messages", send)
    app.router.add_get("/api/v1/channels/{id}/messages/{seq}/receipts", receipts)
    app.router.add_post("/api/v1/channels/{id}/messages/{seq}/ack", acknowledge)
    app.router.add_post("/api/v1/channels/{id}/receipts", confirm)
    app.router.add_post("/api/v1/channels/{id}/attachments", upload)
    app.router.add_get("/api/v1/attachments/{id}", download)
