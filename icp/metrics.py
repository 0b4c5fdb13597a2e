"""Prometheus metrics of a node, in a registry of its own (so tests can run many apps)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from icp import appkeys


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "icp_http_requests", "HTTP requests handled", ["method", "route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "icp_http_request_seconds", "HTTP request handling time", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.events_appended = Counter(
            "icp_events_appended", "Events appended through group commit", registry=r
        )
        self.commit_batch = Histogram(
            "icp_group_commit_batch_units", "Units of work per group-commit transaction",
            registry=r, buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
        )
        self.commit_seconds = Histogram(
            "icp_group_commit_seconds", "Group-commit transaction time", registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.feed_head = Gauge("icp_event_feed_head_seq", "Highest seq delivered on this node", registry=r)
        self.websockets = Gauge("icp_websocket_connections", "Open WebSocket connections", registry=r)
        self.pool_size = Gauge("icp_db_pool_connections", "Database pool connections", ["state"], registry=r)
        self.webhook_attempts = Gauge("icp_webhook_attempts", "Webhook attempts by this node since start",
                                      ["outcome"], registry=r)
        self.webhook_lanes = Gauge("icp_webhook_lanes", "Webhook endpoints this node is delivering to", registry=r)

    def on_commit(self, units: int, events: int, seconds: float) -> None:
        self.events_appended.inc(events)
        self.commit_batch.observe(units)
        self.commit_seconds.observe(seconds)

    def render(self, app: web.Application) -> bytes:
        if appkeys.POOL in app:
            pool = app[appkeys.POOL]
            self.pool_size.labels("total").set(pool.get_size())
            self.pool_size.labels("idle").set(pool.get_idle_size())
        if appkeys.FEED in app:
            self.feed_head.set(app[appkeys.FEED].head)
        if appkeys.WEBSOCKETS in app:
            self.websockets.set(len(app[appkeys.WEBSOCKETS]))
        if appkeys.WEBHOOKS in app:
            hooks = app[appkeys.WEBHOOKS]
            for outcome, count in (("sent", hooks.sent), ("delivered", hooks.delivered), ("failed", hooks.failed),
                                   ("dead_lettered", hooks.dead)):
                self.webhook_attempts.labels(outcome).set(count)
            self.webhook_lanes.set(len(hooks.lanes))
        return generate_latest(self.registry)


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # Label by route template, not raw path, to keep the label set bounded.
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        metrics = request.app[appkeys.METRICS]
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_seconds.labels(route).observe(time.perf_counter() - started)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[appkeys.METRICS].render(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
