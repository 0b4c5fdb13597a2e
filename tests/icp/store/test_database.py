"""The connection's JSON codecs: values are encoded compactly; JSON already encoded passes through."""

from __future__ import annotations

import asyncpg


async def test_json_values_and_json_already_encoded_read_back_the_same(conn: asyncpg.Connection) -> None:
    value = {"b": [1, 2.5, "ä€"], "a": None}
    for given in (value, '{"b": [1, 2.5, "ä€"], "a": null}', '{"b":[1,2.5,"ä€"],"a":null}'.encode()):
        assert await conn.fetchval("SELECT $1::jsonb", given) == value
        assert await conn.fetchval("SELECT $1::json", given) == value
    # Text already encoded is stored as it was written (json keeps it verbatim).
    assert await conn.fetchval("SELECT ($1::json)::text", '{"b":1,  "a":2}') == '{"b":1,  "a":2}'
    assert await conn.fetchval("SELECT ($1::json)::text", b'{"b":1,  "a":2}') == '{"b":1,  "a":2}'


async def test_the_embedded_cluster_is_durable_and_flushes_wal_early(conn: asyncpg.Connection) -> None:
    # Every commit is on disk before it is answered; the WAL writer flushes between commits, so
    # a commit has little left to flush, and the background writer keeps clean buffers ready
    # (icp/store/embedded.py).
    settings = {name: await conn.fetchval(f"SHOW {name}") for name in
                ("fsync", "synchronous_commit", "wal_writer_delay", "wal_writer_flush_after", "bgwriter_delay",
                 "bgwriter_lru_maxpages")}
    assert settings == {"fsync": "on", "synchronous_commit": "on", "wal_writer_delay": "10ms",
                        "wal_writer_flush_after": "128kB", "bgwriter_delay": "10ms", "bgwriter_lru_maxpages": "1000"}


async def test_intakes_hot_tables_are_stored_as_their_writes_need(conn: asyncpg.Connection) -> None:
    # Migrations 0020-0022: the report as json, room for HOT updates of incidents, an event's
    # large data stored uncompressed.
    assert await conn.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                               " WHERE attrelid = 'alerts'::regclass AND attname = 'report'") == "json"
    assert "fillfactor=70" in await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'incidents'::regclass")
    assert await conn.fetchval("SELECT attstorage FROM pg_attribute"
                               " WHERE attrelid = 'events'::regclass AND attname = 'data'") == b"e"  # a "char"
