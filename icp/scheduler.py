"""Durable timers: rows with a ``due_at``, claimed by every node with FOR UPDATE SKIP LOCKED.

A deadline (an assignment's acknowledgement, for now) is written in the same transaction as what
set it, so a restart loses none; two nodes never fire one twice because a claimed row is locked
until the transaction that handles it commits, and SKIP LOCKED lets the other node move on.
A timer whose handling fails is retried with a growing delay; one that finds its work already
done (the unit acknowledged in the meantime) is simply dropped.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from dispatch import commands as cmd
from dispatch.errors import DomainError, IllegalTransition, NotFound
from icp import dispatch_store as store
from icp.auth.principal import SYSTEM
from icp.dispatch_service import DispatchService
from icp.intake.service import AUTO_DISPATCH
from icp.store.feed import EventFeed
from icp.tasks import cancel_all

log = logging.getLogger(__name__)
CLAIM_BATCH = 20
MAX_ATTEMPTS = 10
MAX_WAITS = 240  # sweeps a timer may wait for the live picture (a minute at the default interval)


class RetryLater(Exception):
    """The timer's work cannot be done yet (e.g. the live picture has not seen the incident)."""


class TimerScheduler:
    def __init__(self, pool: asyncpg.Pool, service: DispatchService, feed: EventFeed, *,
                 interval_s: float = 0.25) -> None:
        self._pool = pool
        self._service = service
        self._feed = feed
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self.fired = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="icp-timers")

    async def stop(self) -> None:
        await cancel_all([self._task])

    async def _loop(self) -> None:
        while True:
            try:
                handled = await self.run_due()
            except Exception as exc:  # the database may be away; try again shortly
                log.debug("timer sweep failed: %s", exc)
                handled = 0
            if handled < CLAIM_BATCH:
                await asyncio.sleep(self._interval)

    async def run_due(self, now: datetime | None = None) -> int:
        """Handle every timer due now (one batch); return how many were claimed."""
        now = now or datetime.now(UTC)
        last_seq = 0
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, kind, ref, attempts FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2"
                " FOR UPDATE SKIP LOCKED", now, CLAIM_BATCH,
            )
            for row in rows:
                try:
                    async with conn.transaction():  # a savepoint: one failing timer fails alone
                        last_seq = max(last_seq, await self._fire(conn, row["kind"], row["ref"], now))
                        await conn.execute("DELETE FROM timers WHERE id = $1", row["id"])
                except (IllegalTransition, NotFound) as exc:
                    log.info("timer %s %s no longer applies: %s", row["kind"], row["ref"], exc)
                    await conn.execute("DELETE FROM timers WHERE id = $1", row["id"])
                except (RetryLater, DomainError, asyncpg.PostgresError) as exc:
                    attempts = row["attempts"] + 1
                    waiting = isinstance(exc, RetryLater)
                    if not waiting:
                        log.warning("timer %s %s failed (attempt %d): %s", row["kind"], row["ref"], attempts, exc)
                    if attempts >= (MAX_WAITS if waiting else MAX_ATTEMPTS):
                        await conn.execute("DELETE FROM timers WHERE id = $1", row["id"])
                    else:
                        # Waiting for this node's picture to catch up is not a failure: look again
                        # at the next sweep (a backoff here left a loaded node's auto-dispatch
                        # seconds late); failures back off.
                        delay = self._interval if waiting else min(60.0, 0.2 * 2**attempts)
                        await conn.execute(
                            "UPDATE timers SET attempts = $2, due_at = $3 WHERE id = $1",
                            row["id"], attempts, now + timedelta(seconds=delay),
                        )
        self.fired += len(rows)
        if last_seq:
            self._feed.poke()
        return len(rows)

    async def _fire(self, conn: asyncpg.Connection, kind: str, ref: str, now: datetime) -> int:
        if kind == AUTO_DISPATCH:
            return await self._auto_dispatch(conn, ref, now)
        if kind != store.ACK_TIMEOUT:
            raise NotFound("timer kind", kind)
        policy = self._service.live.policy
        replacement = self._service.replacement(ref, now) if policy.on_timeout != "none" else None
        outcome = await self._service.run(
            conn, cmd.TimeoutAssignment(assignment_id=ref, replacement_unit_id=replacement), SYSTEM, now=now
        )
        return outcome.last_seq

    async def _auto_dispatch(self, conn: asyncpg.Connection, incident_id: str, now: datetime) -> int:
        """Dispatch the recommendation for an incident the alert rules marked for it; when nobody
        can go, say so on the incident for the dispatcher who picks it up."""
        service = self._service
        if incident_id not in service.live.state.incidents:
            raise RetryLater(incident_id)
        rec = await service.recommend(incident_id, now=now)
        picks = rec.new_picks
        if picks:
            command: cmd.Command = cmd.DispatchUnits(
                incident_id=incident_id, units=tuple(cmd.UnitRequest(p.unit_id, p.capability) for p in picks))
        else:
            reasons = "; ".join(s.reason for s in rec.shortfalls) or "no units are needed"
            command = cmd.AddNote(incident_id=incident_id, author="ICP auto-dispatch",
                                  text=f"Automatic dispatch found no unit to send: {reasons}")
        return (await service.run(conn, command, SYSTEM, now=now)).last_seq
