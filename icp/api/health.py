"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from icp import appkeys, openapi
from icp.httpapi import json_response, operation
from icp.metrics import handle_metrics
from icp.store import migrations

READY_TIMEOUT_S = 2.0
_SPEC = web.AppKey("openapi_spec", dict)  # filled on first request; routes are frozen by then


@operation("Liveness: 200 while the process is up", tags=("health",), responses={200: "alive"})
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@operation(
    "Readiness: 200 only when the database answers and migrations are current",
    tags=("health",), responses={200: "ready", 503: "not ready (the body says why)"},
)
async def readyz(request: web.Request) -> web.Response:
    pool = request.app[appkeys.POOL]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with pool.acquire() as conn:
                todo = await migrations.pending(conn)
    except migrations.MigrationError as exc:
        return json_response({"status": "not_ready", "reason": str(exc)}, status=503)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return json_response({"status": "not_ready", "reason": "the database does not answer"}, status=503)
    if todo:
        labels = ", ".join(m.label for m in todo)
        return json_response({"status": "not_ready", "reason": f"pending migrations: {labels}"}, status=503)
    return json_response({"status": "ready"})


@operation("Prometheus metrics (text exposition format)", tags=("health",), responses={200: "metrics"})
async def metrics(request: web.Request) -> web.Response:
    return await handle_metrics(request)


@operation("This OpenAPI 3.1 document", tags=("meta",), responses={200: "the document"})
async def openapi_document(request: web.Request) -> web.Response:
    cache = request.app[_SPEC]
    if not cache:
        cache.update(openapi.build(request.app))
    return json_response(cache)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi_document)
    app[_SPEC] = {}
