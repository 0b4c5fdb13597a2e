"""The HTTP API: each module registers the routes of one concern."""

from __future__ import annotations

from aiohttp import web

from icp import gateway
from icp.api import (
    agencies,
    channels,
    events,
    geo,
    health,
    incidents,
    intake,
    media,  # recordings, cameras, ICE servers
    plans,
    session,
    tokens,
    webhooks,
)
from icp.api.console import setup as setup_console  # the web console's files and settings


def setup_routes(app: web.Application) -> None:
    for module in (health, session, tokens, events, geo, agencies, incidents, plans, intake, channels, webhooks,
                   media, gateway):
        module.setup(app)
    setup_console(app)
