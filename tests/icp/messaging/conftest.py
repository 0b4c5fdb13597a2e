"""Fixtures for the messaging tests: the real server on real PostgreSQL, a seeded city, SDK clients."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.icp.test_dispatch_api import City, build_city


@pytest.fixture
async def city(with_roads: None, client: TestClient[web.Request, web.Application], make_token: Any) -> City:
    return await build_city(client, make_token)
