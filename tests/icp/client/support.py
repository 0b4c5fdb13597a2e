"""Test support for the SDK: a flaky link between client and server, and small async helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from icp.client import Event
from tests.icp.test_dispatch_api import City


class FlakyLink:
    """A TCP proxy on loopback standing in for a mobile link: a test can cut it (both ends see a
    reset), hold it down (new connections are refused), or make it lose what the server sends."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_down = False
        self.swallowing = False  # server → client bytes are dropped (answers lost in flight)
        self._frozen: set[asyncio.StreamWriter] = set()  # connections that silently carry nothing
        self.accepted = 0  # connections let through

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Reset every connection through the link, as a dropped mobile link does."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        """Let the current connections go silent without closing, as a mobile link that died
        quietly does; new connections work."""
        self._frozen |= self._writers

    def down(self) -> None:
        self.is_down = True
        self.cut()

    def up(self) -> None:
        self.is_down = False

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.is_down:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self.accepted += 1
        self._writers |= {client_w, server_w}
        for task in (self._pump(client_r, server_w, upstream=True), self._pump(server_r, client_w, upstream=False)):
            t = asyncio.create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if (not upstream and self.swallowing) or writer in self._frozen:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            self._frozen.discard(writer)
            writer.transport.abort()


def ws_url(client: TestClient[web.Request, web.Application]) -> str:
    return str(client.make_url("/ws")).replace("http://", "ws://", 1)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll an async ``check`` until it returns something truthy; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task for the block; cancel and await it after."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def unit_token(city: City, unit_id: str, agency: str) -> str:
    """A token bound to a unit, minted over REST as the simulator does."""
    issued = await city.call("POST", "/api/v1/tokens", json={"role": "unit", "agency": agency, "unit": unit_id})
    return str(issued["token"])


async def next_event(items: AsyncIterator[Any], wanted: Callable[[Event], bool], timeout: float = 10.0) -> Event:
    """The next `Event` from ``items`` for which ``wanted`` holds (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for item in items:
            if isinstance(item, Event) and wanted(item):
                return item
    raise AssertionError("the stream ended")
