"""Response plans (run cards): the shipped defaults with the operator's overrides."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from dispatch.errors import Invalid
from dispatch.response_plan import ResponsePlan, ResponsePlans
from icp import appkeys
from icp.api.writes import IDEMPOTENCY_PARAM, write
from icp.auth.guard import principal, require
from icp.auth.principal import Role
from icp.dispatch_service import Written
from icp.errors import FieldError, validation
from icp.httpapi import json_response, operation, read_json
from icp.live import PLANS_UPDATED
from icp.store import eventlog
from icp.store.eventlog import NewEvent

PLAN_SCHEMA = {"type": "object", "required": ["incident_type", "levels"], "properties": {
    "incident_type": {"type": "string"}, "name": {"type": "string"},
    "zone": {"type": ["string", "null"]}, "priority": {"type": ["integer", "null"]},
    "levels": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "integer"}},
               "description": "alarm levels; each adds units by capability"}}}


@operation("Every response plan in force", tags=("response plans",),
           responses={200: {"description": "plans", "schema": {"type": "object", "properties": {
               "plans": {"type": "array", "items": PLAN_SCHEMA}}}}})
@require(Role.DISPATCHER)
async def list_plans(request: web.Request) -> web.Response:
    return json_response({"plans": request.app[appkeys.LIVE].plans.to_list()})


@operation("Replace the plans of one incident type (a list of plans, or {\"plans\": [...]}); supervisors",
           tags=("response plans",),
           request={"oneOf": [{"type": "array", "items": PLAN_SCHEMA},
                              {"type": "object", "properties": {"plans": {"type": "array"}}}]},
           parameters=(IDEMPOTENCY_PARAM,), responses={200: {"description": "the plans of that type", "schema": {
               "type": "object"}}})
@require(Role.SUPERVISOR)
async def put_plans(request: web.Request) -> web.Response:
    incident_type = request.match_info["incident_type"]
    body: Any = await read_json(request, max_bytes=256 * 1024)
    items = body.get("plans") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise validation([FieldError("plans", "a non-empty list of plans")])
    plans = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise validation([FieldError(f"plans[{i}]", "a plan object")])
        try:
            plan = ResponsePlan.from_dict({"incident_type": incident_type, **item})
        except Invalid as exc:
            raise validation([FieldError(f"plans[{i}].{exc.field or ''}".rstrip("."), str(exc))]) from None
        if plan.incident_type != incident_type:
            raise validation([FieldError(f"plans[{i}].incident_type", f"must be {incident_type!r} (the URL's)")])
        plans.append(plan)
    try:  # the whole set must be consistent (no two plans for one key)
        ResponsePlans.from_list([p.to_dict() for p in plans])
    except Invalid as exc:
        raise validation([FieldError("plans", str(exc))]) from None
    who = principal(request)
    encoded = [p.to_dict() for p in plans]

    async def work(conn: asyncpg.Connection) -> Written:
        await conn.execute(
            "INSERT INTO response_plans (incident_type, plans) VALUES ($1, $2) ON CONFLICT (incident_type)"
            " DO UPDATE SET plans = EXCLUDED.plans, updated_at = now()", incident_type, encoded)
        recorded = await eventlog.append(conn, [NewEvent(PLANS_UPDATED, f"response_plans/{incident_type}",
                                                         {"incident_type": incident_type, "plans": encoded},
                                                         actor=who.actor())])
        return Written(200, {"incident_type": incident_type, "plans": encoded}, last_seq=recorded[-1].seq)

    return await write(request, work)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/response-plans", list_plans)
    app.router.add_put("/api/v1/response-plans/{incident_type}", put_plans)
