"""Test fixtures: a real PostgreSQL (the embedded cluster, one per session), a fresh database per
test cloned from a migrated template, and the real app served over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from icp.app import create_app
from icp.auth import credentials
from icp.config import Settings
from icp.store import database, migrations
from icp.store.embedded import EmbeddedCluster

TEMPLATE = "icp_test_template"


def _public_tmpdir() -> Path:
    # Not under pytest's tmp root: pytest resets /tmp/pytest-of-<user> to 0700 whenever a session
    # starts, and when tests run as root the cluster's own unprivileged user must traverse it.
    path = Path(tempfile.mkdtemp(prefix="icp-test-", dir=os.environ.get("ICP_TEST_TMP", "/tmp")))
    path.chmod(0o755)  # mkdtemp makes it 0700
    return path


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A data directory for a test that runs embedded clusters of its own."""
    path = _public_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedCluster]:
    base = _public_tmpdir()
    cluster = EmbeddedCluster(base / "pg")
    cluster.hold()
    try:
        yield cluster
    finally:
        cluster.release()
        shutil.rmtree(base, ignore_errors=True)


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template_db(pg_cluster: EmbeddedCluster) -> str:
    async def build() -> None:
        admin = await asyncpg.connect(pg_cluster.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await admin.close()
        conn = await database.connect(pg_cluster.url(TEMPLATE))
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()

    _run(build())
    return TEMPLATE


def _create_database(cluster: EmbeddedCluster, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"

    async def create() -> None:
        admin = await asyncpg.connect(cluster.url("postgres"))
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await admin.close()

    _run(create())
    return name


def _drop_database(cluster: EmbeddedCluster, name: str) -> None:
    async def drop() -> None:
        admin = await asyncpg.connect(cluster.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    _run(drop())


@pytest.fixture
def db_url(pg_cluster: EmbeddedCluster, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = _create_database(pg_cluster, template_db)
    yield pg_cluster.url(name)
    _drop_database(pg_cluster, name)


@pytest.fixture
def empty_db_url(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = _create_database(pg_cluster, None)
    yield pg_cluster.url(name)
    _drop_database(pg_cluster, name)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path / "data", event_poll_interval_s=0.5,
                    pool_min=1, pool_max=10, token_cache_ttl_s=0.3)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await database.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


class LoopWatchdog:
    """Measures how long the event loop was blocked; a test that blocks it fails."""

    def __init__(self, limit_s: float = 1.0, tick_s: float = 0.05) -> None:
        self.limit_s, self.tick_s, self.worst = limit_s, tick_s, 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            self.worst = max(self.worst, time.perf_counter() - started - self.tick_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], settings: Settings
) -> AsyncIterator[TestClient]:
    """The real app on a real socket. Fails the test if anything blocked the event loop."""
    watchdog = LoopWatchdog()
    watchdog.start()
    test_client = await aiohttp_client(create_app(settings))
    yield test_client
    await watchdog.stop()
    assert watchdog.worst < watchdog.limit_s, f"the event loop was blocked for {watchdog.worst:.2f} s"


TokenFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def make_token(db_url: str) -> TokenFactory:
    """Create a bearer token in the test database: ``await make_token("dispatcher", agency=…)``."""

    async def make(role: str, **kwargs: object) -> str:
        c = await asyncpg.connect(db_url)
        try:
            issued = await credentials.create_token(c, role, **kwargs)  # type: ignore[arg-type]
        finally:
            await c.close()
        return issued.secret

    return make


HELSINKI = Path(__file__).resolve().parent.parent / "data" / "osm" / "helsinki-center.osm.pbf"


@pytest.fixture(scope="session")
def helsinki_roads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Helsinki extract's road network and gazetteer, built once per session."""
    from icp.geography import import_roads

    data = tmp_path_factory.mktemp("helsinki")
    import_roads(HELSINKI, data)
    return data / "roads"


@pytest.fixture
def with_roads(settings: Settings, helsinki_roads: Path) -> None:
    """This test's node serves the Helsinki roads (its data directory links to them)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "roads").symlink_to(helsinki_roads, target_is_directory=True)
