"""Messaging: incident, agency, broadcast, talkgroup and direct channels, persisted and delivered over the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from icp.messaging.service import MessagingService

# Here rather than in the service module, so the gateway can name it without importing the service.
MESSAGING: web.AppKey[MessagingService] = web.AppKey("messaging")
