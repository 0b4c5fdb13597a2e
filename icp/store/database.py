"""Which PostgreSQL a node uses (external URL or the embedded cluster) and its connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg

from icp import jsontext
from icp.config import Settings
from icp.store.embedded import EmbeddedCluster


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection set-up: json and jsonb values as Python objects.

    Both use their binary wire formats (json's is its text; jsonb's a version byte, then the
    text) so that COPY, which the event log and intake use for batches, can carry them. A ``str``
    or UTF-8 ``bytes`` is taken as already-encoded JSON text.
    """
    await conn.set_type_codec(
        "json", encoder=_encode_json, decoder=json.loads, schema="pg_catalog", format="binary",
    )
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog",
        format="binary",
    )


def _encode_json(value: Any) -> bytes:
    # Pre-encoded JSON text passes through untouched (the event log encodes canonically itself;
    # intake's reports come as UTF-8 bytes, which are no JSON value of their own).
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return jsontext.compact_bytes(value)


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + _encode_json(value)


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The URL of the configured database, holding the embedded cluster for the duration when
    no ``ICP_DATABASE_URL`` is set (starting it if nobody runs it, stopping it if we were last)."""
    if settings.database_url:
        yield settings.database_url
        return
    with EmbeddedCluster(settings.pgdata) as cluster:
        yield cluster.url()


@contextlib.asynccontextmanager
async def async_database_url(settings: Settings) -> AsyncIterator[str]:
    """`database_url` for async code: the cluster's start and stop run off the event loop."""
    if settings.database_url:
        yield settings.database_url
        return
    cluster = EmbeddedCluster(settings.pgdata)
    await asyncio.to_thread(cluster.hold)
    try:
        yield cluster.url()
    finally:
        await asyncio.to_thread(cluster.release)


async def connect(url: str, *, timeout: float = 10.0) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, timeout=timeout)
    await init_connection(conn)
    return conn


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        init=init_connection,
        timeout=settings.db_timeout_s,
        command_timeout=60,
        # A connection that sat idle through a database restart is discarded, not handed out.
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool
