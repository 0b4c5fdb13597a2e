"""How dispatch endpoints write: one transaction, Idempotency-Key honoured, read-your-writes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from dispatch import codec
from dispatch.errors import Invalid
from geo.coords import CoordinateError, Point
from icp import appkeys
from icp.auth.guard import principal
from icp.dispatch_service import Written, request_fingerprint, transact
from icp.errors import FieldError, validation
from icp.httpapi import json_response

IDEMPOTENCY_PARAM = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200},
                     "description": "a retry with the same key gets the first answer, never a second effect"}


async def write(
    request: web.Request, work: Callable[[asyncpg.Connection], Awaitable[Written]]
) -> web.Response:
    fingerprint = request_fingerprint(request.method, request.path_qs, await request.read())
    written = await transact(
        request.app[appkeys.POOL], request.app[appkeys.FEED], principal(request), work,
        idempotency_key=request.headers.get("Idempotency-Key"), fingerprint=fingerprint,
    )
    headers = {"Idempotent-Replayed": "true"} if written.replayed else None
    return json_response(written.body, status=written.status, headers=headers)


def decode_or_422(cls: type[Any], data: Any) -> Any:
    """A domain value from request JSON; a failure names the field (422)."""
    try:
        return codec.decode(cls, data)
    except Invalid as exc:
        raise validation([FieldError(exc.field or "", str(exc))]) from None


def point_field(body: dict[str, Any], name: str, *, required: bool = True) -> Point | None:
    """``{"lat", "lon"}`` or a GeoJSON Point at ``body[name]``."""
    raw = body.get(name)
    if raw is None:
        if required:
            raise validation([FieldError(name, "required: {\"lat\": …, \"lon\": …}")])
        return None
    try:
        if isinstance(raw, dict) and raw.get("type") == "Point":
            return Point.from_lonlat(raw.get("coordinates"))
        return Point.from_mapping(raw)
    except CoordinateError as exc:
        raise validation([FieldError(name, str(exc))]) from None


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise validation([FieldError(name, "unknown field") for name in unknown])
