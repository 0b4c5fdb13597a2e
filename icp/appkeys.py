"""Typed application state: what the app factory wires and handlers read."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from icp.config import Settings

if TYPE_CHECKING:
    from icp.auth.sealing import SecretBox
    from icp.dispatch_service import DispatchService
    from icp.gateway.positions import PositionHub
    from icp.geography import Geography
    from icp.intake.service import IntakeService
    from icp.live import LivePicture
    from icp.metrics import Metrics
    from icp.scheduler import TimerScheduler
    from icp.store.feed import EventFeed
    from icp.store.group_commit import GroupCommitter
    from icp.webhooks.delivery import Deliverer

SETTINGS = web.AppKey("settings", Settings)
DB_URL = web.AppKey("db_url", str)
POOL = web.AppKey("pool", asyncpg.Pool)
COMMITTER: web.AppKey[GroupCommitter] = web.AppKey("committer")
FEED: web.AppKey[EventFeed] = web.AppKey("feed")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse[bool]]] = web.AppKey("websockets")
GEOGRAPHY: web.AppKey[Geography] = web.AppKey("geography")
LIVE: web.AppKey[LivePicture] = web.AppKey("live")
DISPATCH: web.AppKey[DispatchService] = web.AppKey("dispatch")
SCHEDULER: web.AppKey[TimerScheduler] = web.AppKey("scheduler")
INTAKE: web.AppKey[IntakeService] = web.AppKey("intake")
POSITIONS: web.AppKey[PositionHub] = web.AppKey("positions")
SECRET_BOX: web.AppKey[SecretBox] = web.AppKey("secret_box")
WEBHOOKS: web.AppKey[Deliverer] = web.AppKey("webhooks")
