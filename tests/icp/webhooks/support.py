"""A real webhook receiver on loopback for the delivery tests: verifies every request with the
`standardwebhooks` reference library, records what arrived, and answers as a test scripts it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

# How the receiver answers one request: a status code, or ("sleep", seconds) then 200.
Answer = int | tuple[str, float]


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    verified_with: list[str]  # which of the receiver's secrets verify it (the reference library)
    at: float
    signatures: str

    @property
    def verified(self) -> bool:
        return bool(self.verified_with)


@dataclass
class Receiver:
    """``answers`` is consumed one per request (then ``default``); ``secrets`` are the ones the
    reference library must accept (set after the endpoint is created)."""

    secrets: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    default: Answer = 200
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    seen_ids: list[str] = field(default_factory=list)  # webhook-id of every request, as it arrives
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, path: str = "/hook") -> Receiver:
        app = web.Application()
        app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{path}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _verified_with(self, body: bytes, headers: dict[str, str]) -> list[str]:
        good = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except Exception:  # the library raises its own WebhookVerificationError
                continue
            good.append(secret)
        return good

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen_ids.append(headers.get("webhook-id", ""))
        answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, tuple):
            await asyncio.sleep(answer[1])
            answer = 200
        if 200 <= answer < 300:
            self.received.append(Received(headers["webhook-id"], int(headers["webhook-timestamp"]), json.loads(body),
                                          self._verified_with(body, headers), time.monotonic(),
                                          headers["webhook-signature"]))
            self._arrived.set()
        return web.Response(status=answer)

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"receiver: condition not met in {timeout} s; got "
                                     f"{[(r.body['type'], r.body['seq']) for r in self.received]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.2))
        return self.received

    def types(self) -> list[str]:
        return [r.body["type"] for r in self.received]
