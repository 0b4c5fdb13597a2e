"""The application factory: wiring only. Each resource is a cleanup_ctx, torn down in reverse."""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from dispatch.policy import DispatchPolicy
from dispatch.recommendation import RecommendOptions
from geo.geocoder import nominatim
from icp import appkeys
from icp.api import setup_routes
from icp.auth.guard import TOKEN_CACHE, TokenCache
from icp.auth.sealing import load_box
from icp.config import Settings
from icp.dispatch_service import DispatchService
from icp.errors import problem_middleware
from icp.gateway.positions import PositionHub
from icp.geography import Geography
from icp.intake.service import IntakeService
from icp.live import LivePicture
from icp.media.service import media_context
from icp.messaging.service import messaging_context
from icp.metrics import Metrics, metrics_middleware
from icp.scheduler import TimerScheduler
from icp.store import database, migrations
from icp.store.feed import EventFeed
from icp.store.group_commit import GroupCommitter
from icp.webhooks.delivery import Deliverer
from icp.webhooks.retry import RetrySchedule
from icp.webhooks.ssrf import AllowList
from icp.webhooks.views import incident_views

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.WEBSOCKETS] = weakref.WeakSet()
    if settings.token_cache_ttl_s > 0:
        app[TOKEN_CACHE] = TokenCache(settings.token_cache_ttl_s)
    app.cleanup_ctx.extend([_database, _group_commit, _event_feed, _geography, _dispatch, messaging_context, _webhooks,
                            media_context])
    app.on_shutdown.append(_close_websockets)
    setup_routes(app)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    async with database.async_database_url(settings) as url:
        if settings.auto_migrate:
            conn = await database.connect(url)
            try:
                applied = await migrations.migrate(conn)
            finally:
                await conn.close()
            for m in applied:
                log.info("applied migration %s", m.label)
        app[appkeys.DB_URL] = url
        app[appkeys.POOL] = pool = await database.create_pool(url, settings)
        try:
            yield
        finally:
            await pool.close()


async def _group_commit(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    committer = GroupCommitter(
        app[appkeys.POOL],
        max_batch=settings.group_commit_max_batch,
        max_queue=settings.group_commit_max_queue,
        on_commit=app[appkeys.METRICS].on_commit,
    )
    committer.start()
    app[appkeys.COMMITTER] = committer
    try:
        yield
    finally:
        await committer.stop()


async def _event_feed(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    feed = EventFeed(app[appkeys.DB_URL], app[appkeys.POOL], poll_interval_s=settings.event_poll_interval_s)
    await feed.start()
    app[appkeys.FEED] = feed
    committer = app[appkeys.COMMITTER]
    committer.on_recorded, committer.on_appended = feed.offer, feed.expect
    try:
        yield
    finally:
        committer.on_recorded, committer.on_appended = None, None
        await feed.stop()


async def _geography(app: web.Application) -> AsyncIterator[None]:
    pool = app[appkeys.POOL]
    settings = app[appkeys.SETTINGS]
    external = (nominatim(settings.geocoder_url, user_agent="icp", timeout_s=settings.geocoder_timeout_s)
                if settings.geocoder_url else None)
    geography = Geography(settings.data_dir, external=external)
    await geography.load(pool)
    app[appkeys.GEOGRAPHY] = geography
    unsubscribe = app[appkeys.FEED].subscribe(lambda batch: geography.on_events(pool, batch))
    try:
        yield
    finally:
        unsubscribe()


async def _dispatch(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    policy = DispatchPolicy(
        ack_timeout_s=settings.ack_timeout_s, mutual_aid_timeout_s=settings.mutual_aid_timeout_s,
        on_timeout=settings.on_ack_timeout,  # type: ignore[arg-type]
        on_decline=settings.on_decline, close_releases_units=settings.close_releases_units,  # type: ignore[arg-type]
    )
    live = LivePicture(policy)
    pool, feed = app[appkeys.POOL], app[appkeys.FEED]
    unsubscribe = feed.subscribe(live.apply)  # before the rebuild: see LivePicture.rebuild
    await live.rebuild(pool)
    service = DispatchService(live, app[appkeys.GEOGRAPHY], RecommendOptions(
        max_travel_s=settings.max_travel_s, max_position_age_s=settings.max_position_age_s))
    scheduler = TimerScheduler(pool, service, feed, interval_s=settings.timer_interval_s)
    app[appkeys.LIVE], app[appkeys.DISPATCH], app[appkeys.SCHEDULER] = live, service, scheduler
    app[appkeys.INTAKE] = IntakeService(app[appkeys.COMMITTER], service)
    app[appkeys.POSITIONS] = positions = PositionHub(
        pool, live, stale_after_s=settings.max_position_age_s, announce=app[appkeys.COMMITTER].append_many)
    await positions.start()
    scheduler.start()
    try:
        yield
    finally:
        await scheduler.stop()
        await positions.stop()
        unsubscribe()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    app[appkeys.SECRET_BOX] = box = load_box(settings)
    deliverer = Deliverer(
        app[appkeys.POOL], box, incident_views(app[appkeys.LIVE], settings.site_domain),
        app[appkeys.COMMITTER].append_many,
        allow=AllowList.parse([e for e in settings.webhook_allow.split(",") if e.strip()]),
        schedule=RetrySchedule.parse(settings.webhook_retry_schedule, time_scale=settings.webhook_time_scale),
        timeout_s=settings.webhook_timeout_s, lease_s=settings.webhook_lease_s, poll_s=settings.webhook_poll_s)
    app[appkeys.WEBHOOKS] = deliverer
    unsubscribe = app[appkeys.FEED].subscribe(deliverer.wake)
    await deliverer.start()
    try:
        yield
    finally:
        unsubscribe()
        await deliverer.stop()


async def _close_websockets(app: web.Application) -> None:
    # 1001 Going Away tells clients to reconnect (to another node, or to this one after restart).
    registry = app[appkeys.WEBSOCKETS]
    for ws in list(registry):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
