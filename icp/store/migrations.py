"""Schema migrations: numbered SQL files applied in order, once, each in its own transaction.

Every applied file is recorded with its SHA-256; a file that changed after it was applied is an
error (the database would no longer match what the code believes), and so is a database that
has applied a migration this installation does not ship. A session-level advisory lock makes
concurrent migrators (two nodes starting at once) take turns; the second finds nothing to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from icp.resources import resource_dir

MIGRATION_LOCK_KEY = 0x1C9_0001  # advisory-lock key space: 0x1C9_xxxx is ICP's
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or one failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files, in order; malformed names and duplicate numbers are errors."""
    folder = directory or resource_dir("migrations")
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations are numbered {version:04d}")
        raw = path.read_bytes()
        found[version] = Migration(
            version, match.group(2), raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()
        )
    return [found[v] for v in sorted(found)]


async def _applied(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: (r["name"], r["checksum"]) for r in rows}


def _check(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    """Raise on any disagreement; return the migrations still to apply."""
    known = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has applied migration {version:04d}_{name}, which this "
                "installation does not have (is it older than the database?)"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.label} was changed after it was applied "
                f"(recorded sha256 {checksum[:12]}…, file {migration.checksum[:12]}…); "
                "write a new migration instead of editing an applied one"
            )
    return [m for m in migrations if m.version not in applied]


async def pending(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Migrations not yet applied (raises MigrationError when the two sides disagree)."""
    return _check(migrations if migrations is not None else load_migrations(), await _applied(conn))


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    todo_all = migrations if migrations is not None else load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        todo = _check(todo_all, await _applied(conn))
        for migration in todo:
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version, migration.name, migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.label} failed: {exc}") from exc
        return todo
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
