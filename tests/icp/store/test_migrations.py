"""Migrations against a real PostgreSQL: fresh, re-run, changed file refused, concurrent nodes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from icp.resources import resource_dir
from icp.store import database, migrations


@pytest.fixture
def migration_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(resource_dir("migrations"), folder)
    return folder


async def test_fresh_database_gets_every_migration_in_order(empty_db_url: str) -> None:
    conn = await database.connect(empty_db_url)
    try:
        applied = await migrations.migrate(conn)
        expected = migrations.load_migrations()
        assert [m.version for m in applied] == [m.version for m in expected]
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [(m.version, m.checksum) for m in expected]
        assert await conn.fetchval("SELECT to_regclass('events') IS NOT NULL")
        assert await migrations.pending(conn) == []
    finally:
        await conn.close()


async def test_rerun_applies_nothing(empty_db_url: str) -> None:
    conn = await database.connect(empty_db_url)
    try:
        await migrations.migrate(conn)
        assert await migrations.migrate(conn) == []
    finally:
        await conn.close()


async def test_changed_applied_file_is_refused(empty_db_url: str, migration_dir: Path) -> None:
    conn = await database.connect(empty_db_url)
    try:
        await migrations.migrate(conn, migrations.load_migrations(migration_dir))
        first = sorted(migration_dir.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after it was applied\n")
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn, migrations.load_migrations(migration_dir))
        with pytest.raises(migrations.MigrationError):
            await migrations.pending(conn, migrations.load_migrations(migration_dir))
    finally:
        await conn.close()


async def test_new_file_is_applied_and_unknown_applied_version_refused(
    empty_db_url: str, migration_dir: Path
) -> None:
    conn = await database.connect(empty_db_url)
    try:
        await migrations.migrate(conn, migrations.load_migrations(migration_dir))
        (migration_dir / "9001_extra.sql").write_text("CREATE TABLE extra_thing (id int);")
        applied = await migrations.migrate(conn, migrations.load_migrations(migration_dir))
        assert [m.label for m in applied] == ["9001_extra"]
        # An older installation (without 9001) must refuse the newer database.
        with pytest.raises(migrations.MigrationError, match="does not have"):
            await migrations.pending(conn, migrations.load_migrations(resource_dir("migrations")))
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_is_not_recorded(empty_db_url: str, migration_dir: Path) -> None:
    (migration_dir / "9002_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();")
    conn = await database.connect(empty_db_url)
    try:
        with pytest.raises(migrations.MigrationError, match="9002_broken failed"):
            await migrations.migrate(conn, migrations.load_migrations(migration_dir))
        assert not await conn.fetchval("SELECT to_regclass('half_done') IS NOT NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") < 9002
    finally:
        await conn.close()


def test_malformed_names_and_duplicates_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"NNNN_name\.sql"):
        migrations.load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="two migrations"):
        migrations.load_migrations(tmp_path)


async def test_concurrent_migrators_take_turns(empty_db_url: str) -> None:
    conns = [await database.connect(empty_db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in conns))
        applied_counts = sorted(len(r) for r in results)
        assert applied_counts == [0, 0, 0, len(migrations.load_migrations())]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrations.load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_event_log_is_append_only(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        from icp.store import eventlog

        async with conn.transaction():
            await eventlog.append(conn, [eventlog.NewEvent("test.one", "t:1", {"a": 1})])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE events SET type = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE events")
    finally:
        await conn.close()
