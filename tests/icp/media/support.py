"""Helpers for media tests: SDK clients bound to the test server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from icp.client.media import MediaConsoleClient, MediaUnitClient
from tests.icp.client.support import unit_token, ws_url
from tests.icp.test_dispatch_api import City


@contextlib.asynccontextmanager
async def unit(city: City, unit_id: str, agency: str = "hki-fire") -> AsyncIterator[MediaUnitClient]:
    async with MediaUnitClient(ws_url(city.client), await unit_token(city, unit_id, agency)) as client:
        await client.wait_connected(5)
        yield client


@contextlib.asynccontextmanager
async def dispatcher(city: City, agency: str = "hki-fire", token: str | None = None
                     ) -> AsyncIterator[MediaConsoleClient]:
    async with MediaConsoleClient(ws_url(city.client), token or city.tokens[agency]) as client:
        await client.wait_connected(5)
        yield client


def member(client: MediaUnitClient | MediaConsoleClient) -> str:
    """The client's member key, as the server names it (unit:<id> or token:<id>)."""
    principal = client.welcome["principal"]
    return f"unit:{principal['unit']}" if principal.get("unit") else f"{principal['kind']}:{principal['id']}"
