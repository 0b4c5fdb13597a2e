"""Writing messages: many senders share one transaction, and each returns once its message is durable.

One writer task per node takes every message queued (up to ``max_batch``) and, in one transaction:
takes the event log's append lock first, looks up the batch's (sender, client id) pairs among the
messages already written — under the lock, so a resend racing the first send on another node
finds it committed or not at all — appends a `message.sent` event per new message (the event's
seq is the message's id and its place in the channel), indexes them in `messages`, and commits.
Every caller is answered after COMMIT. A resend gets the first message back, marked duplicate; a
client id reused for a different message is refused.

Bounds: at most ``max_batch`` messages per transaction, ``max_queue`` waiting (then `Overloaded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from icp.errors import Problem
from icp.store import eventlog
from icp.store.eventlog import NewEvent
from icp.store.group_commit import Overloaded

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Written:
    """A message as stored: its seq (id and order), channel, time, and whether it was there already."""

    seq: int
    channel_id: str
    at: datetime
    duplicate: bool = False


@dataclass(slots=True)
class Outgoing:
    channel_id: str
    sender: str
    client_id: str
    fingerprint: bytes
    priority: str
    attachment_id: str | None
    event: NewEvent
    encoded: Any = None
    future: asyncio.Future[Written] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def client_id_reused() -> Problem:
    return Problem(409, "conflict", "this client id was used for a different message")


class MessageWriter:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 1000, max_queue: int = 50_000,
                 on_commit: Callable[[int], None] | None = None) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._queue: list[Outgoing] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_commit = on_commit
        self.transactions = 0
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="icp-message-writer")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def write(self, out: Outgoing) -> Written:
        """Queue one message; return it once committed (or found already written)."""
        if self._closing:
            raise Overloaded("the node is shutting down")
        if self._task is None:
            raise RuntimeError("MessageWriter.start() was not called")
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"{len(self._queue)} messages are waiting to be written")
        out.encoded = eventlog.encode(out.event)  # bad data fails here, alone
        self._queue.append(out)
        self._wake.set()
        return await asyncio.shield(out.future)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(0)  # let the senders made runnable with this one join the batch
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            try:
                await self._commit(batch)
            except Exception as exc:
                log.warning("writing %d messages failed: %s", len(batch), exc)
                for out in batch:
                    if not out.future.done():
                        out.future.set_exception(exc)

    async def _commit(self, batch: list[Outgoing]) -> None:
        answers: list[tuple[Outgoing, Written | Exception]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            # The append lock is taken first, then the look-up, which must see every send
            # committed before this one: one round trip (migration 0013).
            rows = await conn.fetch(
                "SELECT m_seq AS seq, m_channel_id AS channel_id, m_sender AS sender, m_client_id AS client_id,"
                " m_request_hash AS request_hash, m_at AS at FROM icp_messages_seen_locked($1, $2, $3)",
                eventlog.APPEND_LOCK_KEY, [o.sender for o in batch], [o.client_id for o in batch])
            known = {(r["sender"], r["client_id"]): r for r in rows}
            fresh: list[Outgoing] = []
            first: dict[tuple[str, str], Outgoing] = {}
            repeats: list[tuple[Outgoing, Outgoing]] = []
            for out in batch:
                key = (out.sender, out.client_id)
                row = known.get(key)
                if row is not None:
                    same = bytes(row["request_hash"]) == out.fingerprint
                    answers.append((out, Written(row["seq"], row["channel_id"], row["at"], duplicate=True)
                                    if same else client_id_reused()))
                elif key in first:
                    repeats.append((out, first[key]))
                else:
                    first[key] = out
                    fresh.append(out)
            recorded = await eventlog.append(conn, [o.encoded for o in fresh])
            if fresh:
                pairs = list(zip(fresh, recorded, strict=True))
                await conn.execute(
                    "INSERT INTO messages (seq, channel_id, sender, client_id, request_hash, priority, attachment_id,"
                    " at) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[],"
                    " $6::text[], $7::text[], $8::timestamptz[])",
                    [ev.seq for _, ev in pairs], [o.channel_id for o, _ in pairs], [o.sender for o, _ in pairs],
                    [o.client_id for o, _ in pairs], [o.fingerprint for o, _ in pairs],
                    [o.priority for o, _ in pairs], [o.attachment_id for o, _ in pairs], [ev.at for _, ev in pairs])
        written = {id(o): Written(ev.seq, o.channel_id, ev.at) for o, ev in zip(fresh, recorded, strict=True)}
        for out in fresh:
            answers.append((out, written[id(out)]))
        for out, original in repeats:
            w = written[id(original)]
            answers.append((out, Written(w.seq, w.channel_id, w.at, duplicate=True)
                            if out.fingerprint == original.fingerprint else client_id_reused()))
        for out, answer in answers:
            if out.future.done():
                continue
            if isinstance(answer, Exception):
                out.future.set_exception(answer)
            else:
                out.future.set_result(answer)
        self.transactions += 1
        self.written += len(fresh)
        if self._on_commit is not None and fresh:
            with contextlib.suppress(Exception):
                self._on_commit(recorded[-1].seq)
