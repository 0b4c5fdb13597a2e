"""Webhook endpoints (an agency's subscriptions) and agencies' inbound secrets: rows and rules.

An endpoint has a URL, event type patterns, a status (``active``; ``paused`` — deliveries queue
up and go out on resume; ``disabled`` — the receiver answered 410 Gone, nothing more is queued)
and a signing secret shown once. Rotating the secret keeps the previous one signing alongside
the new for an overlap period, so receivers can switch without dropping a message.
"""

from __future__ import annotations

import re
import secrets as pysecrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from icp.auth.sealing import SecretBox
from icp.webhooks import signing

MAX_PATTERNS = 50
MAX_DESCRIPTION = 500
STATUSES = ("active", "paused", "disabled")
# A pattern is an event type, a prefix ending in ".*", or "*".
_PATTERN = re.compile(r"\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?")
# Events about webhooks themselves are never delivered by webhook: a dead endpoint's
# dead-letter event sent to a dead endpoint would loop forever.
INTERNAL_PREFIX = "webhook."


def check_patterns(patterns: Any) -> list[str]:
    """Valid, de-duplicated patterns, or ValueError saying which one is wrong."""
    if not isinstance(patterns, list) or not 1 <= len(patterns) <= MAX_PATTERNS:
        raise ValueError(f"events must be a list of 1-{MAX_PATTERNS} event type patterns")
    out: list[str] = []
    for p in patterns:
        if not isinstance(p, str) or len(p) > 100 or not _PATTERN.fullmatch(p):
            raise ValueError(f"event pattern {str(p)[:60]!r} must be a type (incident.created), a prefix "
                             "(incident.*) or *")
        if p not in out:
            out.append(p)
    return out


def matches(patterns: Sequence[str], event_type: str) -> bool:
    if event_type.startswith(INTERNAL_PREFIX):
        return False
    return any(p in ("*", event_type) or (p.endswith(".*") and event_type.startswith(p[:-1])) for p in patterns)


def new_endpoint_id() -> str:
    return "wh_" + pysecrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


@dataclass(frozen=True)
class Endpoint:
    id: str
    agency_id: str
    url: str
    events: tuple[str, ...]
    description: str
    status: str
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    rotating_until: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Endpoint:
        return cls(row["id"], row["agency_id"], row["url"], tuple(row["events"]), row["description"], row["status"],
                   row["disabled_reason"], row["created_at"], row["updated_at"], row["previous_until"])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "agency_id": self.agency_id, "url": self.url, "events": list(self.events),
            "description": self.description, "status": self.status,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
        }
        if self.disabled_reason:
            out["disabled_reason"] = self.disabled_reason
        if self.rotating_until is not None:
            out["previous_secret_valid_until"] = self.rotating_until.isoformat()
        return out


def signing_secrets(box: SecretBox, context: str, current: bytes, previous: bytes | None,
                    previous_until: datetime | None, now: datetime) -> list[str]:
    """The secrets that sign (or verify) now: the current one, and the previous one during the
    rotation overlap."""
    out = [box.open(current, context=context)]
    if previous is not None and previous_until is not None and now < previous_until:
        out.append(box.open(previous, context=context))
    return out


async def create(conn: asyncpg.Connection, box: SecretBox, *, agency_id: str, url: str, events: list[str],
                 description: str) -> tuple[Endpoint, str]:
    """A new endpoint, delivering events committed from now on; returns it and its secret."""
    endpoint_id, secret = new_endpoint_id(), signing.new_secret()
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (id, agency_id, url, events, description, secret, from_seq)"
        " VALUES ($1, $2, $3, $4, $5, $6, (SELECT coalesce(max(seq), 0) FROM events)) RETURNING *",
        endpoint_id, agency_id, url, events, description, box.seal(secret, context=endpoint_id))
    return Endpoint.from_row(row), secret


async def rotate(conn: asyncpg.Connection, box: SecretBox, endpoint_id: str, overlap_s: float,
                 now: datetime) -> tuple[Endpoint, str]:
    secret = signing.new_secret()
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, secret = $2, updated_at = now()"
        " WHERE id = $1 RETURNING *",
        endpoint_id, box.seal(secret, context=endpoint_id), now + timedelta(seconds=overlap_s))
    return Endpoint.from_row(row), secret


async def rotate_inbound(conn: asyncpg.Connection, box: SecretBox, agency_id: str, overlap_s: float,
                         now: datetime) -> tuple[str, datetime | None]:
    """Make (or rotate) an agency's inbound secret; returns it and how long the previous one lasts."""
    secret = signing.new_secret()
    context = f"inbound:{agency_id}"
    row = await conn.fetchrow(
        "INSERT INTO agency_inbound_secrets AS s (agency_id, secret) VALUES ($1, $2)"
        " ON CONFLICT (agency_id) DO UPDATE SET previous_secret = s.secret, previous_until = $3,"
        " secret = EXCLUDED.secret, updated_at = now() RETURNING previous_until",
        agency_id, box.seal(secret, context=context), now + timedelta(seconds=overlap_s))
    return secret, row["previous_until"]


async def inbound_secrets(conn: asyncpg.Connection | asyncpg.Pool, box: SecretBox, agency_id: str,
                          now: datetime) -> list[str]:
    row = await conn.fetchrow("SELECT * FROM agency_inbound_secrets WHERE agency_id = $1", agency_id)
    if row is None:
        return []
    return signing_secrets(box, f"inbound:{agency_id}", row["secret"], row["previous_secret"],
                           row["previous_until"], now)
