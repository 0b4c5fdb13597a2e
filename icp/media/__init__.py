"""Voice and video: WebRTC peers terminated by the server (aiortc), rooms, talkgroups and recordings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from icp.media.service import MediaService

# Here rather than in the service module, so the gateway can name it without importing aiortc.
MEDIA: web.AppKey[MediaService] = web.AppKey("media")
