"""Helpers for the messaging tests: waiting for messages on SDK clients, dispatching, channels."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from icp.client import Connection, Message, Receipt
from tests.icp.test_dispatch_api import City


async def next_message(conn: Connection, wanted: Callable[[Message], bool] = lambda m: True,
                       timeout: float = 10.0) -> Message:
    """The next message ``conn`` hands out for which ``wanted`` holds (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for message in conn.messages():
            if wanted(message):
                return message
    raise AssertionError("the client was closed")


async def messages_for(conn: Connection, seconds: float) -> list[Message]:
    """Every message ``conn`` hands out within ``seconds``."""
    out: list[Message] = []
    try:
        async with asyncio.timeout(seconds):
            async for message in conn.messages():
                out.append(message)
    except TimeoutError:
        pass
    return out


async def receipts_until(conn: Connection, done: Callable[[list[Receipt]], bool], timeout: float = 10.0
                         ) -> list[Receipt]:
    """Receipts ``conn`` receives until ``done`` holds for what arrived so far."""
    seen: list[Receipt] = []
    async with asyncio.timeout(timeout):
        async for receipt in conn.receipts():
            seen.append(receipt)
            if done(seen):
                return seen
    raise AssertionError("the client was closed")


async def dispatch(city: City, incident_id: str, units: list[str], agency: str = "hki-fire") -> dict[str, Any]:
    body: dict[str, Any] = await city.call("POST", f"/api/v1/incidents/{incident_id}/assignments",
                                           city.tokens[agency], json={"units": units})
    return body


async def incident_channel(city: City, units: list[str] | None = None) -> str:
    """A new structure fire in central Helsinki (hki-fire, hki-ems, hki-police are home), with ``units``
    dispatched by hki-fire; its channel id."""
    incident = await city.incident("structure_fire", priority=1)
    if units:
        await dispatch(city, incident["id"], units)
    return f"incident:{incident['id']}"


def texts(messages: list[Message]) -> list[str]:
    return [m.text for m in messages]
