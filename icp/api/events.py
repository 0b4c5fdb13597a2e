"""Reading the event log over HTTP, filtered to what the caller may see."""

from __future__ import annotations

from aiohttp import web

from icp import appkeys
from icp.auth.guard import principal, require
from icp.httpapi import json_response, operation, query_int
from icp.store import eventlog

EVENT_SCHEMA = {
    "type": "object",
    "properties": {"seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                   "type": {"type": "string"}, "subject": {"type": "string"},
                   "actor": {"type": "object"}, "data": {"type": "object"}},
}


@operation(
    "The event log after a seq, in order, filtered to what the caller may see",
    tags=("events",),
    parameters=(
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ),
    responses={200: {"description": "events", "schema": {"type": "object", "properties": {
        "events": {"type": "array", "items": EVENT_SCHEMA}, "next_after": {"type": "integer"}}}}},
)
@require()
async def list_events(request: web.Request) -> web.Response:
    after = query_int(request, "after", 0, lo=0, hi=2**62)
    limit = query_int(request, "limit", 100, lo=1, hi=1000)
    pool = request.app[appkeys.POOL]
    rows = await eventlog.read_after(pool, after, limit, principal(request).visible_agencies())
    return json_response({
        "events": [e.to_wire() for e in rows],
        "next_after": rows[-1].seq if rows else after,
    })


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/events", list_events)
