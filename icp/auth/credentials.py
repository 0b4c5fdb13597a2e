"""Credentials at rest: bearer tokens and session ids (SHA-256), passwords (argon2id).

Secrets are generated here, shown once to whoever created them, and stored only as hashes.
Tokens and session ids are 256-bit random strings, for which SHA-256 is enough (nothing to
brute-force) and keeps each request's check to one indexed lookup; passwords are chosen by
people, so they get a slow, memory-hard KDF.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from icp.auth.principal import Principal, Role, parse_role

TOKEN_PREFIX = "icp_"
SESSION_COOKIE = "icp_session"
MAX_SECRET_LENGTH = 200
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 copes, but unbounded input is a denial-of-service lever
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
# Verifying against this keeps "no such user" as slow as "wrong password".
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class CredentialError(ValueError):
    """Bad input when creating a credential (unknown role, weak password, taken username)."""


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def check_id(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not _ID.match(value):
        raise CredentialError(f"{what} must be 1..100 characters of letters, digits and ._:-")
    return value


def parse_duration(text: str) -> timedelta:
    """``3600``, ``90s``, ``30m``, ``12h``, ``30d`` → a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match or int(match.group(1)) == 0:
        raise CredentialError(f"expected a duration such as 3600, 30m, 12h or 30d, got {text!r}")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return timedelta(seconds=int(match.group(1)) * unit)


# -- tokens ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class IssuedToken:
    id: int
    secret: str
    expires_at: datetime | None


async def create_token(
    conn: asyncpg.Connection | asyncpg.Pool,
    role: str,
    *,
    agency: str | None = None,
    unit: str | None = None,
    name: str = "",
    expires_in: timedelta | None = None,
    now: datetime | None = None,
    source: str | None = None,
) -> IssuedToken:
    parsed = _role(role)
    check_id(agency, "agency id")
    check_id(unit, "unit id")
    check_id(source, "sensor network (source)")
    if len(name) > 200:
        raise CredentialError("token name must be at most 200 characters")
    secret = new_secret(TOKEN_PREFIX)
    expires_at = (now or datetime.now(UTC)) + expires_in if expires_in else None
    token_id = await conn.fetchval(
        "INSERT INTO api_tokens (name, role, agency_id, unit_id, token_hash, expires_at, source)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        name, parsed.value, agency, unit, hash_secret(secret), expires_at, source,
    )
    return IssuedToken(token_id, secret, expires_at)


LAST_USED_RESOLUTION_S = 60  # last_used_at is kept to the minute: a write per request would
# cost an fsync and serialise every client sharing a key on one row lock.


async def principal_for_token(
    conn: asyncpg.Connection | asyncpg.Pool, secret: str, *, now: datetime | None = None
) -> Principal | None:
    """The principal behind a bearer token, or None if unknown, revoked or expired."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
    now = now or datetime.now(UTC)
    row = await conn.fetchrow(
        "SELECT id, name, role, agency_id, unit_id, source, last_used_at FROM api_tokens"
        " WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        hash_secret(secret), now,
    )
    if row is None:
        return None
    if row["last_used_at"] is None or (now - row["last_used_at"]).total_seconds() > LAST_USED_RESOLUTION_S:
        await conn.execute("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1", row["id"], now)
    return Principal(
        kind="token", id=str(row["id"]), name=row["name"] or f"token {row['id']}",
        role=Role(row["role"]), agency=row["agency_id"], unit=row["unit_id"], source=row["source"],
    )


async def revoke_token(conn: asyncpg.Connection | asyncpg.Pool, token_id: int) -> bool:
    status = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )
    return bool(status.endswith(" 1"))


# -- users and passwords ---------------------------------------------------------------------

def _role(text: str) -> Role:
    try:
        return parse_role(text)
    except ValueError as exc:
        raise CredentialError(str(exc)) from None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CredentialError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CredentialError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


async def create_user(
    conn: asyncpg.Connection | asyncpg.Pool,
    username: str,
    password: str,
    role: str,
    *,
    agency: str | None = None,
) -> int:
    if not _USERNAME.match(username):
        raise CredentialError("username must be 1..100 characters of letters, digits and ._@-")
    parsed = _role(role)
    check_id(agency, "agency id")
    check_password(password)
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    try:
        return int(await conn.fetchval(
            "INSERT INTO users (username, password_hash, role, agency_id)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            username, password_hash, parsed.value, agency,
        ))
    except asyncpg.UniqueViolationError:
        raise CredentialError(f"a user named {username!r} already exists") from None


async def authenticate_user(
    conn: asyncpg.Connection | asyncpg.Pool, username: str, password: str
) -> Principal | None:
    """Check a username and password (argon2 off the event loop); None when they do not match."""
    if len(password) > MAX_PASSWORD_LENGTH or len(username) > 100:
        return None
    row = await conn.fetchrow(
        "SELECT id, username, password_hash, role, agency_id FROM users"
        " WHERE lower(username) = lower($1) AND NOT disabled",
        username,
    )
    stored = row["password_hash"] if row else _DUMMY_HASH
    try:
        await asyncio.to_thread(_hasher.verify, stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):
        new_hash = await asyncio.to_thread(_hasher.hash, password)
        await conn.execute("UPDATE users SET password_hash = $1 WHERE id = $2", new_hash, row["id"])
    return _user_principal(row)


def _user_principal(row: asyncpg.Record) -> Principal:
    return Principal(
        kind="user", id=str(row["id"]), name=row["username"],
        role=Role(row["role"]), agency=row["agency_id"],
    )


# -- sessions --------------------------------------------------------------------------------

async def create_session(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: int, ttl: timedelta
) -> tuple[str, datetime]:
    secret = new_secret()
    expires_at = datetime.now(UTC) + ttl
    await conn.execute(
        "INSERT INTO sessions (id_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        hash_secret(secret), user_id, expires_at,
    )
    return secret, expires_at


async def principal_for_session(
    conn: asyncpg.Connection | asyncpg.Pool, secret: str
) -> Principal | None:
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    row = await conn.fetchrow(
        "SELECT u.id, u.username, u.role, u.agency_id FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.id_hash = $1 AND s.expires_at > now() AND NOT u.disabled",
        hash_secret(secret),
    )
    return _user_principal(row) if row else None


async def end_session(conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE id_hash = $1", hash_secret(secret))


async def purge_expired_sessions(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    status = await conn.execute("DELETE FROM sessions WHERE expires_at <= now()")
    return int(status.split()[-1])
