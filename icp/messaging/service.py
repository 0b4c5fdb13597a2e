"""The messaging service of a node: wiring (a cleanup context) and the operations the API and gateway call."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web


async def messaging_context(app: web.Application) -> AsyncIterator[None]:
    yield
