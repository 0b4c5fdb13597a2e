"""A small REST client for the demo's own calls to its node (seeding, the sensor feed, the autopilot)."""

from __future__ import annotations

from typing import Any

import aiohttp


class RestError(RuntimeError):
    """The node answered with an error; ``status`` and the problem document are kept."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]}")
        self.status = status


class Rest:
    """Calls with one bearer token, JSON in and out."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self._session, self.base = session, base.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                   content_type: str | None = None) -> Any:
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(method, self.base + path, json=json, data=data, headers=headers) as response:
            text = await response.text()
            if response.status >= 300:
                raise RestError(method, path, response.status, text)
            return await response.json(content_type=None) if text else None
