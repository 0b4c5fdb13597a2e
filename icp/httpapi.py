"""HTTP handler helpers: bounded JSON bodies, JSON responses, and OpenAPI metadata on handlers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from icp import jsontext
from icp.errors import Problem, bad_request

H = TypeVar("H", bound=Callable[..., Any])


def operation(
    summary: str,
    *,
    tags: tuple[str, ...] = (),
    request: Mapping[str, Any] | None = None,
    responses: Mapping[int, Mapping[str, Any] | str] | None = None,
    parameters: tuple[Mapping[str, Any], ...] = (),
    description: str = "",
) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document (schemas are JSON Schema 2020-12)."""

    def mark(handler: H) -> H:
        handler.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary, "tags": list(tags), "request": request,
            "responses": dict(responses or {}), "parameters": list(parameters),
            "description": description,
        }
        return handler

    return mark


async def read_json(request: web.Request, *, max_bytes: int | None = None) -> Any:
    """The request body as JSON; 413 beyond ``max_bytes`` (default: the app's body limit),
    400 when it is not JSON."""
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise Problem(413, "body_too_large", f"the request body exceeds {max_bytes} bytes")
    raw = await request.read()
    if max_bytes is not None and len(raw) > max_bytes:
        raise Problem(413, "body_too_large", f"the request body exceeds {max_bytes} bytes")
    if not raw:
        raise bad_request("the request body is empty; a JSON document is expected")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


async def read_json_object(request: web.Request, *, max_bytes: int | None = None) -> dict[str, Any]:
    body = await read_json(request, max_bytes=max_bytes)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=jsontext.compact_bytes(data),
        status=status, content_type="application/json", charset="utf-8", headers=headers,
    )


def query_int(request: web.Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter {name!r} must be an integer") from None
    if not lo <= value <= hi:
        raise bad_request(f"query parameter {name!r} must be between {lo} and {hi}")
    return value
