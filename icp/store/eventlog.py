"""The event log: ordered, hash-chained, append-only — ICP's audit trail, outbox and replay source.

Ordering. Appends take a transaction-level advisory lock and assign ``seq`` inside it, so the
transaction holding seq N+1 cannot begin its append before the one holding N has committed (and
become visible). A reader that asks for "seq > N" can therefore never skip a row that commits late.

Hash chain. ``hash = sha256(prev_hash || canonical(event))`` where ``canonical`` is the JSON of
the envelope (seq, at, type, subject, visibility, actor, data) with sorted keys, no spaces, UTF-8,
and integral numbers written as integers. jsonb rewrites numbers and key order; the canonical form
is defined on values, not on text, so a row read back hashes the same as the row written.

Wake-ups. Each appending transaction sends ``NOTIFY icp_events`` with the seq of its last event as
the payload; readers then read the log (a reader that already has that seq need not). A slow poll
covers a lost notification (see `icp.store.feed`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

from icp import jsontext

EVENTS_CHANNEL = "icp_events"
APPEND_LOCK_KEY = 0x1C9_0002
GENESIS_HASH = bytes(32)
PUBLIC = "*"  # visibility entry meaning "every principal"
MAX_EVENT_BYTES = 256 * 1024  # bound on one event's canonical encoding


class EventError(ValueError):
    """An event cannot be recorded as given (not JSON, too large, malformed fields)."""


# -- canonical encoding ----------------------------------------------------------------------

def _normalise(value: Any) -> Any:
    """The JSON value in its canonical Python form (raises EventError for non-JSON values)."""
    # Exact types first: events are mostly plain dicts, lists and strings, and an isinstance
    # test against the Mapping ABC costs more than the rest of the walk.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return _normalise_mapping(value)
    if kind is list or kind is tuple:
        return [_normalise(item) for item in value]
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, (bool, str, int)):  # subclasses (an enum of strings, say)
        return value
    if isinstance(value, Mapping):
        return _normalise_mapping(value)
    if isinstance(value, (list, tuple)):
        return [_normalise(item) for item in value]
    raise EventError(f"event data must be JSON values, got {type(value).__name__}")


def plain_float(value: float | int) -> bool:
    """Whether a number (as `json_number` gives it) is written alike by orjson and Python's json:
    an integer, zero, or a float of magnitude 1e-4 or more (see `NewEvent.checked`)."""
    return type(value) is int or value == 0 or abs(value) >= 1e-4


def json_number(value: float) -> float | int:
    """A float in its canonical form: an integral one as the integer jsonb gives back."""
    if not math.isfinite(value):
        raise EventError("event data must not contain NaN or infinity")
    if value.is_integer():
        # Via the shortest decimal repr: jsonb keeps 1e+20 as 100000000000000000000, which
        # must not hash differently from the float that produced it.
        return int(Decimal(repr(value)))
    return value


def _normalise_mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise EventError(f"event data keys must be strings, got {type(key).__name__}")
        # Most members are plain strings, integers or null: kept as they are without a call.
        kind = type(item)
        out[key] = item if kind is str or kind is int or kind is bool or item is None else _normalise(item)
    return out


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value (see the module docstring)."""
    return _canonical(_normalise(value))


# A NUL character in the JSON text: "\u0000" after an even number of backslashes (a string holding
# a backslash and "u0000" is written "\\u0000", which is no NUL).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _canonical(normalised: Any) -> str:
    text = jsontext.canonical_finite(normalised)  # _normalise refused NaN and infinities
    if "\\u0000" in text and _NUL.search(text):
        raise EventError("event data must not contain NUL characters")
    return text


def format_at(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The C string encoder json.dumps uses for ensure_ascii=False: same output, a fraction of the cost.
_jstr = json.encoder.encode_basestring


def _envelope(
    seq: int, at_text: str, type_: str, subject: str, visibility: Sequence[str], actor_json: str,
    data_json: str,
) -> bytes:
    # Keys in sorted order, values canonical: equal to canonical_json() of the whole envelope,
    # without encoding data twice (a test holds the two equal).
    return (
        '{"actor":' + actor_json
        + ',"at":"' + at_text
        + '","data":' + data_json
        + ',"seq":' + str(seq)
        + ',"subject":' + _jstr(subject)
        + ',"type":' + _jstr(type_)
        + ',"visibility":[' + ",".join(_jstr(v) for v in sorted(visibility))
        + "]}"
    ).encode("utf-8")


def chain_hash(prev_hash: bytes, envelope: bytes) -> bytes:
    return hashlib.sha256(prev_hash + envelope).digest()


# -- events ----------------------------------------------------------------------------------

SYSTEM_ACTOR: Mapping[str, Any] = {"kind": "system", "id": "icp"}


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``visibility`` lists the agency ids that may see it (``"*"``: all).

    ``plain``: ``data`` is already in the form `_normalise` gives (a dict of strings, integers,
    booleans, nulls, finite non-integral floats — `json_number` — and lists and string-keyed
    dicts of those), so `encode` writes it as it is, without walking it. Only for data ICP builds
    itself on its busiest paths (intake's events); a wrong claim would change the event's hash
    from what `icp audit verify` recomputes, which the tests of those paths check.

    ``checked``: with ``plain``, the producer also checked that no float in ``data`` is under
    1e-4 in magnitude (`plain_float`: orjson writes those unlike Python's json) and that no string
    holds a NUL character (jsonb refuses it), so the canonical text is orjson's as it is, without
    searching it for either (which cost as much as writing a large event).
    """

    type: str
    subject: str
    data: Mapping[str, Any]
    actor: Mapping[str, Any] = field(default_factory=lambda: dict(SYSTEM_ACTOR))
    visibility: tuple[str, ...] = (PUBLIC,)
    plain: bool = False
    checked: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not 1 <= len(self.type) <= 100:
            raise EventError("event type must be a string of 1..100 characters")
        if not isinstance(self.subject, str) or len(self.subject) > 200:
            raise EventError("event subject must be a string of at most 200 characters")
        if type(self.data) is not dict and not isinstance(self.data, Mapping):
            raise EventError("event data must be a JSON object")
        if self.plain and type(self.data) is not dict:
            raise EventError("plain event data must be a dict")
        if self.checked and not self.plain:
            raise EventError("only plain event data can be checked")
        visibility = self.visibility
        if type(visibility) is not tuple:
            if isinstance(visibility, str):
                raise EventError("event visibility must be a sequence of agency ids")
            visibility = tuple(visibility)
            object.__setattr__(self, "visibility", visibility)
        if not all(isinstance(v, str) for v in visibility):
            raise EventError("event visibility must be a sequence of agency ids")


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event ready to append: its canonical texts, and its actor and data in the form a read of
    the stored row gives back (JSON values: lists, integral floats as ints), so the node that
    wrote it can hand it on without reading it back (`EventFeed.offer`)."""

    event: NewEvent
    actor_json: str
    data_json: str
    actor: Mapping[str, Any]
    data: Mapping[str, Any]


def _encoded_actor(actor: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    normalised = _normalise(actor)
    return _canonical(normalised), normalised


@functools.lru_cache(maxsize=1024)
def _cached_actor(items: tuple[tuple[str, Any], ...]) -> tuple[str, Mapping[str, Any]]:
    return _encoded_actor(dict(items))


def encode(event: NewEvent | EncodedEvent) -> EncodedEvent:
    """Validate and encode an event before any transaction starts (so bad input fails alone);
    an event already encoded is returned as it is."""
    if isinstance(event, EncodedEvent):
        return event
    data = event.data if event.plain else _normalise(event.data)
    data_json = jsontext.canonical_checked(data) if event.checked else _canonical(data)
    if len(data_json) > MAX_EVENT_BYTES:
        raise EventError(f"event data is larger than {MAX_EVENT_BYTES} bytes")
    try:  # the few principals acting at any time repeat: encode each once
        actor_json, actor = _cached_actor(tuple(sorted(event.actor.items())))
    except TypeError:  # unhashable values (nested objects): no caching
        actor_json, actor = _encoded_actor(event.actor)
    return EncodedEvent(event, actor_json, data_json, actor, data)


class RecordedEvent(NamedTuple):
    """An event as the log holds it. A named tuple rather than a frozen dataclass: every
    appended event makes one, and a tuple is made in a third of the time."""

    seq: int
    at: datetime
    type: str
    subject: str
    visibility: tuple[str, ...]
    actor: Mapping[str, Any]
    data: Mapping[str, Any]
    prev_hash: bytes
    hash: bytes

    def to_wire(self) -> dict[str, Any]:
        """The JSON shape clients see (no hashes: they are for auditors)."""
        return {
            "seq": self.seq,
            "at": format_at(self.at),
            "type": self.type,
            "subject": self.subject,
            "actor": dict(self.actor),
            "data": dict(self.data),
        }

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> RecordedEvent:
        return cls(
            seq=row["seq"], at=row["at"], type=row["type"], subject=row["subject"],
            visibility=tuple(row["visibility"]), actor=row["actor"], data=row["data"],
            prev_hash=bytes(row["prev_hash"]), hash=bytes(row["hash"]),
        )


# -- appending -------------------------------------------------------------------------------

_COLUMNS = ("seq", "at", "type", "subject", "visibility", "actor", "data", "prev_hash", "hash")


async def append(
    conn: asyncpg.Connection, events: Iterable[NewEvent | EncodedEvent], *, now: datetime | None = None
) -> list[RecordedEvent]:
    """Append events inside the caller's open transaction; they commit with it.

    Call this last in the transaction: the append lock is held until commit, which is what makes
    commit order equal seq order, and every other appender waits for it.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("eventlog.append must run inside a transaction")
    encoded = [encode(e) for e in events]
    if not encoded:
        return []
    # One round trip (migration 0012): the lock, then the head read after it (so it sees the
    # previous holder's), then the wake-up with the seq this append will end at (NOTIFY is
    # delivered at commit, wherever it is sent in the transaction).
    head = await conn.fetchrow("SELECT head_seq, head_hash FROM icp_event_head_locked($1, $2, $3)",
                               APPEND_LOCK_KEY, EVENTS_CHANNEL, len(encoded))
    seq, prev = (head["head_seq"], bytes(head["head_hash"])) if head["head_seq"] is not None else (0, GENESIS_HASH)
    at = now or datetime.now(UTC)
    at_text = format_at(at)
    records: list[tuple[Any, ...]] = []
    recorded: list[RecordedEvent] = []
    for item in encoded:
        seq += 1
        ev = item.event
        digest = chain_hash(prev, _envelope(seq, at_text, ev.type, ev.subject, ev.visibility,
                                            item.actor_json, item.data_json))
        visibility = sorted(ev.visibility)
        records.append((seq, at, ev.type, ev.subject, visibility, item.actor_json,
                        item.data_json, prev, digest))
        recorded.append(RecordedEvent(seq, at, ev.type, ev.subject, tuple(visibility),
                                      item.actor, item.data, prev, digest))
        prev = digest
    if len(records) == 1:
        await conn.execute(
            "INSERT INTO events (seq, at, type, subject, visibility, actor, data, prev_hash, hash)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", *records[0]
        )
    else:
        await conn.copy_records_to_table("events", records=records, columns=_COLUMNS)
    return recorded


async def append_committed(pool: asyncpg.Pool, events: Sequence[NewEvent]) -> list[RecordedEvent]:
    """Append events in a transaction of their own and return them once committed."""
    encoded = [encode(e) for e in events]
    async with pool.acquire() as conn, conn.transaction():
        return await append(conn, encoded)


# -- reading ---------------------------------------------------------------------------------

def visibility_filter(agencies: Sequence[str] | None) -> tuple[str, list[Any]]:
    """SQL condition (using $3) limiting rows to what a principal with these agencies may see;
    None means unrestricted (administrators)."""
    if agencies is None:
        return "TRUE", []
    return "visibility && $3::text[]", [[PUBLIC, *agencies]]


async def read_after(
    conn: asyncpg.Connection | asyncpg.Pool, after: int, limit: int = 1000,
    agencies: Sequence[str] | None = None,
) -> list[RecordedEvent]:
    """Events with seq > after, in order, at most ``limit``, visible to ``agencies``."""
    condition, extra = visibility_filter(agencies)
    rows = await conn.fetch(
        f"SELECT * FROM events WHERE seq > $1 AND {condition} ORDER BY seq LIMIT $2",
        after, limit, *extra,
    )
    return [RecordedEvent.from_row(r) for r in rows]


async def head_seq(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


# -- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    head_hash: bytes
    broken_seq: int | None = None
    reason: str | None = None


async def iter_events(conn: asyncpg.Connection, batch: int = 5000) -> AsyncIterator[asyncpg.Record]:
    last = 0
    while True:
        rows = await conn.fetch(
            "SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", last, batch
        )
        if not rows:
            return
        for row in rows:
            yield row
        last = rows[-1]["seq"]


async def verify(conn: asyncpg.Connection) -> VerifyResult:
    """Walk the whole log; report the first seq where the chain does not hold."""
    expected_seq, prev, checked = 1, GENESIS_HASH, 0
    async for row in iter_events(conn):
        seq = row["seq"]
        problem = None
        if seq != expected_seq:
            problem = f"seq {expected_seq} is missing (next row is {seq})"
            seq = expected_seq
        elif bytes(row["prev_hash"]) != prev:
            problem = "prev_hash does not match the hash of the previous event"
        else:
            try:
                envelope = _envelope(
                    seq, format_at(row["at"]), row["type"], row["subject"], row["visibility"],
                    canonical_json(row["actor"]), canonical_json(row["data"]),
                )
            except EventError as exc:
                problem = f"the row cannot be encoded: {exc}"
            else:
                if chain_hash(prev, envelope) != bytes(row["hash"]):
                    problem = "the row's content does not match its hash (altered)"
        if problem:
            return VerifyResult(False, checked, seq - 1, prev, seq, problem)
        prev = bytes(row["hash"])
        checked += 1
        expected_seq += 1
    return VerifyResult(True, checked, expected_seq - 1, prev)
