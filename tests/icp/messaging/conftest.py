"""Fixtures for the messaging tests: the real server on real PostgreSQL, and a seeded city."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.icp.client.support import FlakyLink
from tests.icp.test_dispatch_api import City, build_city


@pytest.fixture
async def city(with_roads: None, client: TestClient[web.Request, web.Application], make_token: Any) -> City:
    return await build_city(client, make_token)


@pytest.fixture
async def link(client: TestClient[web.Request, web.Application]) -> AsyncIterator[FlakyLink]:
    """A link between an SDK client and the server that a test can cut or hold down."""
    assert client.server.port is not None
    proxy = FlakyLink("127.0.0.1", client.server.port)
    await proxy.start()
    yield proxy
    await proxy.stop()
