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
