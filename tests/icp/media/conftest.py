"""Fixtures for media tests: the real server with ICE host candidates on loopback, a seeded city, SDK peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from icp.config import Settings
from tests.icp.test_dispatch_api import City, build_city


@pytest.fixture
def settings(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings, with media on loopback; `@pytest.mark.media_settings(**kw)` changes more."""
    marker = request.node.get_closest_marker("media_settings")
    extra: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return Settings(database_url=db_url, data_dir=tmp_path / "data", event_poll_interval_s=0.5, pool_min=1,
                    pool_max=10, token_cache_ttl_s=0.3, media_host_addresses="127.0.0.1", **extra)


@pytest.fixture
async def city(with_roads: None, client: TestClient[web.Request, web.Application], make_token: Any) -> City:
    return await build_city(client, make_token)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "media_settings(**kw): settings for the media test's server")
