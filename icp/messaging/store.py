"""Messaging in PostgreSQL: channel definitions, the per-channel message index, cursors, receipts and
attachment rows. The messages themselves are `message.sent` events of the log (text, sender, time)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from dispatch.lifecycle import ACTIVE_ASSIGNMENT
from icp.messaging.channels import Channel, ChannelKind
from icp.store.eventlog import format_at

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool
SENT = "message.sent"
ACKNOWLEDGED = "message.acknowledged"
CHANNEL_SAVED = "channel.saved"
ACTIVE = sorted(s.value for s in ACTIVE_ASSIGNMENT)


# -- channels --------------------------------------------------------------------------------

def channel_from_row(row: Mapping[str, Any]) -> Channel:
    return Channel(row["id"], ChannelKind(row["kind"]), row["name"], agency_id=row["agency_id"],
                   agencies=frozenset(row["agencies"]), units=frozenset(row["units"]),
                   members=tuple(row["members"]))


def channel_doc(channel: Channel) -> dict[str, Any]:
    """A defined channel as event data (``channel.saved``), for every node's registry."""
    return {"id": channel.id, "kind": channel.kind.value, "name": channel.name, "agency_id": channel.agency_id,
            "agencies": sorted(channel.agencies), "units": sorted(channel.units), "members": list(channel.members)}


def channel_from_doc(doc: Mapping[str, Any]) -> Channel:
    return channel_from_row(doc)


async def defined_channel(conn: Conn, channel_id: str) -> Channel | None:
    row = await conn.fetchrow("SELECT id, kind, name, agency_id, agencies, units, members FROM channels WHERE id = $1",
                              channel_id)
    return channel_from_row(row) if row else None


async def all_defined(conn: Conn) -> list[Channel]:
    rows = await conn.fetch("SELECT id, kind, name, agency_id, agencies, units, members FROM channels")
    return [channel_from_row(r) for r in rows]


async def save_channel(conn: asyncpg.Connection, channel: Channel, created_by: Mapping[str, Any]) -> bool:
    """Insert or update a defined channel; True when it was new."""
    inserted = await conn.fetchval(
        "INSERT INTO channels AS c (id, kind, name, agency_id, agencies, units, members, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, agencies = excluded.agencies,"
        " units = excluded.units, updated_at = now()"
        " RETURNING (xmax = 0)",
        channel.id, channel.kind.value, channel.name, channel.agency_id, sorted(channel.agencies),
        sorted(channel.units), list(channel.members), dict(created_by))
    return bool(inserted)


async def talkgroups_and_directs_of(conn: Conn, key: str, agency: str | None, unit: str | None,
                                    everything: bool = False) -> list[Channel]:
    """The defined channels a member may belong to (the rules in `channels` have the last word)."""
    rows = await conn.fetch(
        "SELECT id, kind, name, agency_id, agencies, units, members FROM channels"
        " WHERE (kind = 'direct' AND $1 = ANY(members))"
        " OR (kind = 'talkgroup' AND ($4 OR agency_id = $2 OR $2 = ANY(agencies) OR $3 = ANY(units)))"
        " ORDER BY id", key, agency, unit, everything)
    return [channel_from_row(r) for r in rows]


# -- incidents ---------------------------------------------------------------------------------

async def home_agencies(conn: Conn, incident_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The agencies each incident was created for (jurisdictions and the creator's agency), from
    its ``incident.created`` event; later additions (mutual-aid partners) are not among them."""
    rows = await conn.fetch(
        "SELECT subject, data->'agency_ids' AS home FROM events WHERE subject = ANY($1) AND type = 'incident.created'",
        [f"incident/{i}" for i in incident_ids])
    return {r["subject"].removeprefix("incident/"): tuple(r["home"] or ()) for r in rows}


async def active_assignments(conn: Conn, incident_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """(unit, unit agency) of each incident's active assignments."""
    rows = await conn.fetch(
        "SELECT a.incident_id, a.unit_id, u.agency_id FROM assignments a JOIN units u ON u.id = a.unit_id"
        " WHERE a.incident_id = ANY($1) AND a.status = ANY($2) ORDER BY a.id", list(incident_ids), ACTIVE)
    out: dict[str, list[tuple[str, str]]] = {i: [] for i in incident_ids}
    for r in rows:
        out[r["incident_id"]].append((r["unit_id"], r["agency_id"]))
    return out


async def incident_agency_ids(conn: Conn, incident_id: str) -> list[str] | None:
    """Every agency that sees the incident (home, partners asked or lending), or None: no such incident."""
    row = await conn.fetchrow("SELECT agency_ids FROM incidents WHERE id = $1", incident_id)
    return list(row["agency_ids"]) if row else None


async def incidents_of_unit(conn: Conn, unit_id: str) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT incident_id FROM assignments WHERE unit_id = $1 AND status = ANY($2)"
                            " ORDER BY incident_id", unit_id, ACTIVE)
    return [r["incident_id"] for r in rows]


async def incidents_of_agency(conn: Conn, agency: str | None, recent_s: float, limit: int = 1000) -> list[str]:
    """Open incidents (and those that ended less than ``recent_s`` ago) that ``agency`` sees (None:
    every agency), newest first: candidates for its incident channels."""
    rows = await conn.fetch(
        "SELECT id FROM incidents WHERE (status NOT IN ('closed', 'cancelled')"
        " OR updated_at > now() - make_interval(secs => $2))"
        " AND ($1::text IS NULL OR agency_ids && ARRAY[$1, '*']::text[]) ORDER BY created_at DESC LIMIT $3",
        agency, recent_s, limit)
    return [r["id"] for r in rows]


# -- messages ----------------------------------------------------------------------------------

def message_view(seq: int, at: datetime, actor: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """A message as clients see it (frames, history, answers)."""
    view: dict[str, Any] = {
        "channel": data["channel"], "seq": seq, "at": format_at(at),
        "sender": {**actor, "member": data["sender"]}, "text": data["text"],
        "priority": data.get("priority", "normal"), "client_id": data.get("client_id"),
    }
    if data.get("priority") == "emergency":
        view["ack_required"] = True
    if data.get("attachment"):
        view["attachment"] = data["attachment"]
    return view


async def history(conn: Conn, channel_id: str, before: int | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages of the channel before ``before`` (the newest when None), oldest first."""
    rows = await conn.fetch(
        "SELECT e.seq, e.at, e.actor, e.data FROM messages m JOIN events e ON e.seq = m.seq"
        " WHERE m.channel_id = $1 AND ($2::bigint IS NULL OR m.seq < $2) ORDER BY m.seq DESC LIMIT $3",
        channel_id, before, limit)
    return [message_view(r["seq"], r["at"], r["actor"], r["data"]) for r in reversed(rows)]


async def messages_by_seq(conn: Conn, seqs: Sequence[int]) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT seq, at, actor, data FROM events WHERE seq = ANY($1) ORDER BY seq", list(seqs))
    return [message_view(r["seq"], r["at"], r["actor"], r["data"]) for r in rows]


async def message_row(conn: Conn, seq: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT seq, channel_id, sender, priority, at FROM messages WHERE seq = $1", seq)


async def receipt_counts(conn: Conn, seqs: Sequence[int]) -> dict[int, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT seq, count(delivered_at) AS delivered, count(read_at) AS read, count(acked_at) AS acked"
        " FROM message_receipts WHERE seq = ANY($1) GROUP BY seq", list(seqs))
    return {r["seq"]: {"delivered": r["delivered"], "read": r["read"], "acked": r["acked"]} for r in rows}


async def receipts_of(conn: Conn, seq: int) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT member, delivered_at, read_at, acked_at FROM message_receipts WHERE seq = $1"
                            " ORDER BY member", seq)
    return [{"member": r["member"], **{k: format_at(r[k]) if r[k] else None
                                       for k in ("delivered_at", "read_at", "acked_at")}} for r in rows]


async def own_receipts(conn: Conn, member: str, seqs: Sequence[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch("SELECT seq, delivered_at, read_at, acked_at FROM message_receipts"
                            " WHERE member = $1 AND seq = ANY($2)", member, list(seqs))
    return {r["seq"]: r for r in rows}


async def cursors(conn: Conn, member: str, channel_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch("SELECT channel_id, delivered, read FROM channel_cursors WHERE member = $1"
                            " AND channel_id = ANY($2)", member, list(channel_ids))
    return {r["channel_id"]: (r["delivered"], r["read"]) for r in rows}


async def last_messages(conn: Conn, channel_ids: Sequence[str]) -> dict[str, tuple[int, datetime]]:
    rows = await conn.fetch(
        "SELECT c.id, l.seq, l.at FROM unnest($1::text[]) AS c(id),"
        " LATERAL (SELECT seq, at FROM messages WHERE channel_id = c.id ORDER BY seq DESC LIMIT 1) l",
        list(channel_ids))
    return {r["id"]: (r["seq"], r["at"]) for r in rows}


async def starts(conn: Conn, member: str, channel_ids: Sequence[str], fresh: int) -> dict[str, int]:
    """Where ``member``'s catch-up begins in each channel: after its delivery cursor, or, in a channel
    it has none in, before the newest ``fresh`` messages."""
    rows = await conn.fetch(
        "SELECT c.id, coalesce(k.delivered, (SELECT min(n.seq) - 1 FROM (SELECT seq FROM messages"
        " WHERE channel_id = c.id ORDER BY seq DESC LIMIT $3) n), 0) AS after"
        " FROM unnest($2::text[]) AS c(id) LEFT JOIN channel_cursors k ON k.member = $1 AND k.channel_id = c.id",
        member, list(channel_ids), fresh)
    return {r["id"]: r["after"] for r in rows}


async def pending_after(conn: Conn, after: Mapping[str, int], limit: int) -> list[tuple[int, str]]:
    """(seq, channel) of the first ``limit`` messages after ``after[channel]`` in those channels, in seq order."""
    if not after:
        return []
    rows = await conn.fetch(
        "SELECT m.seq, m.channel_id FROM unnest($1::text[], $2::bigint[]) AS c(id, after),"
        " LATERAL (SELECT seq, channel_id FROM messages WHERE channel_id = c.id AND seq > c.after"
        "          ORDER BY seq LIMIT $3) m ORDER BY m.seq LIMIT $3",
        list(after), list(after.values()), limit)
    return [(r["seq"], r["channel_id"]) for r in rows]


async def unacknowledged(conn: Conn, member: str, channel_ids: Sequence[str], since_s: float, limit: int
                         ) -> list[tuple[int, str]]:
    """(seq, channel) of the emergency messages of these channels from the last ``since_s`` seconds
    that ``member`` has not acknowledged (nor sent)."""
    rows = await conn.fetch(
        "SELECT m.seq, m.channel_id FROM messages m LEFT JOIN message_receipts r ON r.seq = m.seq AND r.member = $1"
        " WHERE m.channel_id = ANY($2) AND m.priority = 'emergency' AND m.sender <> $1"
        " AND m.at > now() - make_interval(secs => $3) AND r.acked_at IS NULL ORDER BY m.seq LIMIT $4",
        member, list(channel_ids), since_s, limit)
    return [(r["seq"], r["channel_id"]) for r in rows]


# -- receipts ----------------------------------------------------------------------------------

_FLUSH = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS x(member, channel_id, delivered, read)
), old AS (
    SELECT i.member, i.channel_id, greatest(i.delivered, i.read) AS delivered, i.read,
           coalesce(c.delivered, 0) AS old_delivered, coalesce(c.read, 0) AS old_read
    FROM input i LEFT JOIN channel_cursors c ON c.member = i.member AND c.channel_id = i.channel_id
), marked AS (
    INSERT INTO message_receipts AS r (seq, member, delivered_at, read_at)
    SELECT m.seq, o.member, now(), CASE WHEN m.seq <= o.read THEN now() END
    FROM old o JOIN messages m ON m.channel_id = o.channel_id
        AND m.seq > least(o.old_delivered, o.old_read) AND m.seq <= o.delivered AND m.sender <> o.member
    WHERE m.seq > o.old_delivered OR (m.seq > o.old_read AND m.seq <= o.read)
    ON CONFLICT (seq, member) DO UPDATE
        SET delivered_at = coalesce(r.delivered_at, excluded.delivered_at),
            read_at = coalesce(r.read_at, excluded.read_at)
        WHERE r.delivered_at IS NULL OR (r.read_at IS NULL AND excluded.read_at IS NOT NULL)
    RETURNING r.seq, r.member, r.delivered_at, r.read_at, r.acked_at
), moved AS (
    INSERT INTO channel_cursors AS c (member, channel_id, delivered, read)
    SELECT member, channel_id, delivered, read FROM old
    ON CONFLICT (member, channel_id) DO UPDATE
        SET delivered = greatest(c.delivered, excluded.delivered), read = greatest(c.read, excluded.read),
            updated_at = now()
), told AS (  -- each receipt as JSON [sender, channel, seq, member, delivered_at, read_at] ...
    SELECT json_build_array(m.sender, m.channel_id, k.seq, k.member,
                            to_char(k.delivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                            to_char(k.read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text AS item
    FROM marked k JOIN messages m ON m.seq = k.seq
), sized AS (  -- ... in NOTIFY payloads of at most $6 + one item bytes, cut by running length
    SELECT item, sum(octet_length(item) + 1) OVER (ORDER BY item ROWS UNBOUNDED PRECEDING) / $6 AS chunk FROM told
), payloads AS (
    SELECT '[' || string_agg(item, ',') || ']' AS payload FROM sized GROUP BY chunk
)
SELECT (SELECT count(*) FROM told) AS receipts,
       (SELECT count(*) FROM (SELECT pg_notify($5, payload) FROM payloads) n) AS notices
"""


async def flush_cursors(conn: asyncpg.Connection, moves: Iterable[tuple[str, str, int, int]], *, notify: str,
                        payload_bytes: int) -> int:
    """Advance (member, channel, delivered, read) cursors, record a receipt for every message they
    newly cover, and publish those receipts on ``notify`` (JSON built by PostgreSQL, in payloads of
    at most ``payload_bytes`` plus one receipt); returns how many receipts were recorded."""
    members, channels, delivered, read = [], [], [], []
    for m, c, d, r in moves:
        members.append(m)
        channels.append(c)
        delivered.append(d)
        read.append(r)
    if not members:
        return 0
    row = await conn.fetchrow(_FLUSH, members, channels, delivered, read, notify, payload_bytes)
    return int(row["receipts"])


async def acknowledge(conn: asyncpg.Connection, seq: int, member: str) -> tuple[datetime, bool]:
    """Record ``member``'s acknowledgement of message ``seq``: (when, whether it is new)."""
    row = await conn.fetchrow(
        "INSERT INTO message_receipts AS r (seq, member, delivered_at, read_at, acked_at)"
        " VALUES ($1, $2, now(), now(), now())"
        " ON CONFLICT (seq, member) DO UPDATE SET delivered_at = coalesce(r.delivered_at, now()),"
        " read_at = coalesce(r.read_at, now()), acked_at = coalesce(r.acked_at, now())"
        " RETURNING acked_at, (xmax = 0) OR acked_at = now() AS fresh", seq, member)
    return row["acked_at"], bool(row["fresh"])


# -- attachments -------------------------------------------------------------------------------

async def insert_attachment(conn: Conn, *, attachment_id: str, channel_id: str, uploader: str, name: str,
                            content_type: str, size: int, sha256: bytes) -> datetime:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO attachments (id, channel_id, uploader, name, content_type, size, sha256)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at",
        attachment_id, channel_id, uploader, name, content_type, size, sha256)


async def attachment(conn: Conn, attachment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, channel_id, uploader, name, content_type, size, sha256, created_at"
                               " FROM attachments WHERE id = $1", attachment_id)


async def orphan_attachments(conn: Conn, older_than_s: float, limit: int = 500) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.id FROM attachments a WHERE a.created_at < now() - make_interval(secs => $1)"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.attachment_id = a.id) LIMIT $2", older_than_s, limit)
    return [r["id"] for r in rows]
