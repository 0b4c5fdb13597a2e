"""Issuing bearer tokens over HTTP (administrators): for simulators, provisioning and the demo."""

from __future__ import annotations

from aiohttp import web

from icp import appkeys
from icp.auth import credentials
from icp.auth.guard import principal, require
from icp.auth.principal import Role
from icp.errors import FieldError, validation
from icp.httpapi import json_response, operation, read_json_object
from icp.store.eventlog import NewEvent

TOKEN_REQUEST = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": [r.value for r in Role]}, "agency": {"type": "string"}, "unit": {"type": "string"},
    "source": {"type": "string"}, "name": {"type": "string"}, "expires_in": {"type": "string"}}}


ISSUED = {"type": "object", "properties": {"id": {"type": "integer"}, "token": {"type": "string"},
                                           "expires_at": {"type": ["string", "null"]}}}


@operation("Issue a bearer token (administrators); the secret is in this answer only", tags=("auth",),
           request=TOKEN_REQUEST, responses={201: {"description": "the token", "schema": ISSUED}})
@require(Role.ADMIN)
async def create_token(request: web.Request) -> web.Response:
    body = await read_json_object(request, max_bytes=4096)
    unknown = sorted(set(body) - set(TOKEN_REQUEST["properties"]))
    if unknown:
        raise validation([FieldError(name, "unknown field") for name in unknown])
    fields = {k: body.get(k) for k in ("agency", "unit", "source")}
    if not all(v is None or isinstance(v, str) for v in fields.values()) or not isinstance(body.get("role"), str):
        raise validation([FieldError("role", "role, agency, unit and source are strings")])
    try:
        expires_in = credentials.parse_duration(body["expires_in"]) if body.get("expires_in") else None
        issued = await credentials.create_token(
            request.app[appkeys.POOL], body["role"], name=str(body.get("name") or ""), expires_in=expires_in,
            **fields,
        )
    except credentials.CredentialError as exc:
        raise validation([FieldError("role", str(exc))]) from None
    who = principal(request)
    await request.app[appkeys.COMMITTER].append(NewEvent(
        "token.created", f"token/{issued.id}", {"id": issued.id, "role": body["role"], **fields},
        actor=who.actor(), visibility=()))
    return json_response({"id": issued.id, "token": issued.secret,
                          "expires_at": issued.expires_at.isoformat() if issued.expires_at else None}, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/tokens", create_token)
