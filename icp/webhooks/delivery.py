"""Delivering webhooks: per-endpoint lanes, leases, retries, dead letters.

- **Lanes**: each endpoint is worked by one lane (an asyncio task) on the node holding its lease
  (``lease_owner``/``lease_until`` on the endpoint row, renewed while working). A lane sends its
  pending deliveries strictly in seq order (FIFO per endpoint) and waits for each answer, so a
  slow or dead endpoint holds up only itself. A node that dies leaves its leases to expire; another
  node takes over, resending at most what was in flight (at-least-once, same ``webhook-id``).
- **Retries** are rows: a failed delivery stays ``pending`` with a later ``due_at`` (the retry
  schedule, with jitter); the lane keeps waiting for a short delay, otherwise it lets the lease go
  and the claim loop picks the endpoint up when the delivery is due. ``410 Gone`` disables the
  endpoint; an exhausted schedule dead-letters the delivery (status ``dead``, a
  ``webhook.dead_lettered`` event) and the lane moves on to the next.
- **Records**: each attempt is logged (status code, latency, error). Successes are written in
  batches with ``synchronous_commit`` off — losing one in a crash only means a repeat, which
  at-least-once allows; failures are written before the lane goes on, so a schedule is never
  shortened by a lost record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from icp.auth.sealing import SecretBox
from icp.store.eventlog import NewEvent
from icp.webhooks import signing
from icp.webhooks.endpoints import signing_secrets
from icp.webhooks.outbox import IncidentView, fan_out
from icp.webhooks.retry import RetrySchedule, retry_after_s
from icp.webhooks.ssrf import AllowList, BlockedDestination, guarded_connector

log = logging.getLogger(__name__)

LANE_BATCH = 100
MAX_ERROR_CHARS = 300
SYSTEM_ACTOR = {"kind": "system", "id": "icp", "name": "ICP webhooks", "role": "admin"}
Announce = Callable[[Sequence[NewEvent]], Awaitable[Any]]


@dataclass
class Attempt:
    delivery_id: int
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    outcome: str  # delivered | pending | dead
    due_at: datetime
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Lane:
    endpoint_id: str
    agency_id: str
    url: str
    secrets: list[str]
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # new deliveries fanned out for it
    recheck: bool = False  # the endpoint changed (paused, deleted): look at its row now


class Deliverer:
    """The webhook engine of one node: fan-out, claim loop, lanes and the attempt recorder."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, incident_view: IncidentView, announce: Announce, *,
                 allow: AllowList, schedule: RetrySchedule, timeout_s: float = 10.0, lease_s: float = 30.0,
                 poll_s: float = 1.0, node: str | None = None, rng: random.Random | None = None) -> None:
        self._pool, self._box, self._incident_view, self._announce = pool, box, incident_view, announce
        self.allow, self.schedule = allow, schedule
        self.timeout_s, self.lease_s, self.poll_s = timeout_s, lease_s, poll_s
        self.node = node or f"node-{secrets.token_hex(4)}"
        self._rng = rng or random.Random()
        self.lanes: dict[str, Lane] = {}
        self._fanout_wake, self._claim_wake, self._record_wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
        # False once a fan-out found no endpoint: then commits do not wake it (a transaction each,
        # for nothing); it looks again every poll interval, and at once when this node's API
        # changes an endpoint (`kick`). An endpoint made on another node waits at most one poll.
        self._listening = True
        self._records: list[Attempt] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self.sent = self.delivered = self.failed = self.dead = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        # No redirects are followed and no proxy is taken from the environment: both would lead
        # a request somewhere the SSRF guard did not agree to.
        self._session = aiohttp.ClientSession(
            connector=guarded_connector(self.allow, limit=0), trust_env=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False)
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in (
            ("webhook-fanout", self._fanout_loop()), ("webhook-claim", self._claim_loop()),
            ("webhook-recorder", self._record_loop()))]

    async def stop(self) -> None:
        self._stopping = True
        lanes = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for task in [*lanes, *self._tasks]:
            task.cancel()
        for task in [*lanes, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._flush()
        with contextlib.suppress(Exception):  # let the leases go at once: another node may go on
            await self._pool.execute("UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL"
                                     " WHERE lease_owner = $1", self.node)
        if self._session is not None:
            await self._session.close()

    def wake(self, *_: Any) -> None:
        """New events were committed (the event feed calls this)."""
        if self._listening:
            self._fanout_wake.set()

    def kick(self, endpoint_id: str | None = None) -> None:
        """Something may be due now (a manual retry, a resumed endpoint), or an endpoint changed."""
        self._listening = True  # an endpoint may exist now: fan out at the next commit again
        self._fanout_wake.set()
        lane = self.lanes.get(endpoint_id) if endpoint_id else None
        if lane is not None:
            lane.recheck = True
            lane.wake.set()
        self._claim_wake.set()

    # -- fan-out --------------------------------------------------------------------------------
    async def _fanout_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fanout_wake.wait(), self.poll_s)
            self._fanout_wake.clear()
            try:
                while True:
                    async with self._pool.acquire() as conn, conn.transaction():
                        step = await fan_out(conn, self._incident_view)
                    self._listening = step is not None
                    if step is None:
                        break
                    consumed, touched = step
                    for endpoint_id in touched:  # a running lane takes them; otherwise claim it
                        lane = self.lanes.get(endpoint_id)
                        if lane is not None:
                            lane.wake.set()
                        else:
                            self._claim_wake.set()
                    if consumed == 0:
                        break
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("webhook fan-out failed, retrying: %s", exc)

    # -- claiming endpoints -----------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_wake.wait(), self.poll_s)
            self._claim_wake.clear()
            try:
                await self.claim()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("webhook claim failed, retrying: %s", exc)

    async def claim(self) -> int:
        """Lease every active endpoint whose oldest pending delivery is due and that no live lease
        holds; start a lane for each."""
        rows = await self._pool.fetch(
            "UPDATE webhook_endpoints e SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)"
            " WHERE e.status = 'active' AND NOT (e.id = ANY($3::text[]))"
            "   AND (e.lease_until IS NULL OR e.lease_until < now() OR e.lease_owner = $1)"
            "   AND (SELECT d.due_at FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending'"
            "        ORDER BY d.seq LIMIT 1) <= now()"
            " RETURNING e.id, e.agency_id, e.url, e.secret, e.previous_secret, e.previous_until",
            self.node, self.lease_s, list(self.lanes))
        now = datetime.now(UTC)
        for row in rows:
            keys = signing_secrets(self._box, row["id"], row["secret"], row["previous_secret"],
                                   row["previous_until"], now)
            lane = Lane(row["id"], row["agency_id"], row["url"], keys)
            self.lanes[lane.endpoint_id] = lane
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"webhook-lane-{lane.endpoint_id}")
        return len(rows)

    # -- a lane ---------------------------------------------------------------------------------
    async def _run_lane(self, lane: Lane) -> None:
        last: Attempt | None = None
        try:
            last = await self._lane(lane)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook lane %s failed", lane.endpoint_id)
        finally:
            # The lane stays registered (so the claim loop does not start another for the same
            # endpoint) until its records are written and its lease is let go: a successor must
            # not resend what this one delivered.
            try:
                if not self._stopping:
                    with contextlib.suppress(Exception):
                        if last is not None:
                            await last.done
                        await self._pool.execute(
                            "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL"
                            " WHERE id = $1 AND lease_owner = $2", lane.endpoint_id, self.node)
            finally:
                self.lanes.pop(lane.endpoint_id, None)
                self._claim_wake.set()  # more may have been fanned out meanwhile

    async def _lane(self, lane: Lane) -> Attempt | None:
        """Work one endpoint while it has deliveries, and a while after (an idle lane waits for
        the next fan-out instead of being claimed afresh for every event)."""
        after = 0
        last: Attempt | None = None
        renewed, idle_since = -1e9, None
        while not self._stopping:
            if lane.recheck or time.monotonic() - renewed > self.lease_s / 3:
                if lane.recheck and last is not None:
                    # A retry or replay put older deliveries back: start from the oldest again,
                    # once what this lane sent is on record (so nothing is sent twice).
                    await last.done
                    after = 0
                lane.recheck = False
                status = await self._pool.fetchval(
                    "UPDATE webhook_endpoints SET lease_until = now() + make_interval(secs => $3)"
                    " WHERE id = $1 AND lease_owner = $2 RETURNING status", lane.endpoint_id, self.node, self.lease_s)
                if status != "active":
                    return last  # lease lost, paused, disabled or deleted
                renewed = time.monotonic()
            lane.wake.clear()
            rows = await self._pool.fetch(
                "SELECT id, seq, msg_id, body, attempts, retry_base, due_at FROM webhook_deliveries"
                " WHERE endpoint_id = $1 AND status = 'pending' AND seq > $2 ORDER BY seq LIMIT $3",
                lane.endpoint_id, after, LANE_BATCH)
            if not rows:
                now = time.monotonic()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since > self.lease_s / 3:
                    return last  # idle long enough: let the endpoint go
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), self.poll_s)
                continue
            idle_since = None
            for row in rows:
                attempts, due = row["attempts"], row["due_at"]
                while True:
                    wait = (due - datetime.now(UTC)).total_seconds()
                    if wait > 0:
                        if wait > self.lease_s / 3:
                            return last  # let go; the claim loop comes back when it is due
                        await asyncio.sleep(wait)
                    result = await self._attempt(lane, row["id"], row["msg_id"], row["body"], attempts + 1,
                                                 attempts - row["retry_base"] + 1)
                    last = result
                    attempts += 1
                    if result.outcome == "pending":
                        await result.done  # a failure is on record before its retry is waited for
                        due = result.due_at
                        continue
                    if result.outcome == "gone":
                        await self._disable(lane, result)
                        return last
                    break
                after = row["seq"]
        return last

    async def _attempt(self, lane: Lane, delivery_id: int, message_id: str, body: bytes, attempt: int,
                       made: int) -> Attempt:
        assert self._session is not None
        now = datetime.now(UTC)
        headers = signing.headers(lane.secrets, message_id, int(now.timestamp()), body)
        headers["user-agent"] = "ICP-Webhooks/1"
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        self.sent += 1
        try:
            async with self._session.post(lane.url, data=body, headers=headers, allow_redirects=False) as resp:
                code = resp.status
                if code == 429 or code >= 500:
                    retry_after = retry_after_s(resp.headers.get("Retry-After"), now)
        except BlockedDestination as exc:
            error = f"blocked: {exc}"
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        latency = (time.perf_counter() - started) * 1000
        if error is not None:
            error = error[:MAX_ERROR_CHARS]
        done = datetime.now(UTC)
        if code is not None and 200 <= code < 300:
            self.delivered += 1
            return self._record(Attempt(delivery_id, attempt, now, code, latency, None, "delivered", done))
        self.failed += 1
        if code == 410:
            return self._record(Attempt(delivery_id, attempt, now, code, latency, "410 Gone: endpoint disabled",
                                        "gone", done))
        if error is None:
            error = f"HTTP {code}" + (" (redirects are not followed)" if code and 300 <= code < 400 else "")
        delay = self.schedule.delay_after(made, self._rng)
        if delay is None:
            self.dead += 1
            attempt_rec = self._record(Attempt(delivery_id, attempt, now, code, latency, error, "dead", done))
            await self._dead_letter(lane, delivery_id, attempt, code, error)
            return attempt_rec
        if retry_after is not None:  # the receiver asked for a pause (scaled like the schedule)
            delay = max(delay, retry_after * self.schedule.time_scale)
        return self._record(Attempt(delivery_id, attempt, now, code, latency, error, "pending",
                                    done + timedelta(seconds=delay)))

    # -- records and announcements -------------------------------------------------------------------
    def _record(self, attempt: Attempt) -> Attempt:
        # The recorder writes whatever gathered while it was busy with the previous batch, so
        # records batch themselves under load and go out at once when it is quiet.
        self._records.append(attempt)
        self._record_wake.set()
        return attempt

    async def _record_loop(self) -> None:
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            await asyncio.sleep(0)  # let other lanes add theirs: one transaction for many
            try:
                await self._flush()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("recording webhook attempts failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                self._record_wake.set()

    async def _flush(self) -> None:
        batch, self._records = self._records, []
        if not batch:
            return
        status = ["pending" if a.outcome == "gone" else a.outcome for a in batch]
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit TO off")
                await conn.execute(
                    "UPDATE webhook_deliveries d SET status = r.status, attempts = r.attempt, due_at = r.due_at,"
                    " last_attempt_at = r.at, last_status = r.code, last_error = r.error,"
                    " delivered_at = CASE WHEN r.status = 'delivered' THEN r.at ELSE d.delivered_at END"
                    " FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[],"
                    "             $6::int[], $7::text[]) AS r(id, attempt, status, due_at, at, code, error)"
                    " WHERE d.id = r.id AND d.attempts < r.attempt",
                    [a.delivery_id for a in batch], [a.attempt for a in batch], status, [a.due_at for a in batch],
                    [a.at for a in batch], [a.status_code for a in batch], [a.error for a in batch])
                await conn.execute(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, latency_ms, error)"
                    " SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::real[],"
                    "                      $6::text[]) ON CONFLICT DO NOTHING",
                    [a.delivery_id for a in batch], [a.attempt for a in batch], [a.at for a in batch],
                    [a.status_code for a in batch], [a.latency_ms for a in batch], [a.error for a in batch])
        except BaseException:
            self._records[:0] = batch  # kept for the next try
            raise
        for a in batch:
            if not a.done.done():
                a.done.set_result(None)

    async def _dead_letter(self, lane: Lane, delivery_id: int, attempt: int, code: int | None, error: str) -> None:
        row = await self._pool.fetchrow("SELECT seq, event_type FROM webhook_deliveries WHERE id = $1", delivery_id)
        data = {"endpoint_id": lane.endpoint_id, "delivery_id": delivery_id, "attempts": attempt,
                "last_status": code, "last_error": error, "url": lane.url,
                "seq": row["seq"] if row else None, "event_type": row["event_type"] if row else None}
        await self._announce([NewEvent("webhook.dead_lettered", f"webhook/{lane.endpoint_id}", data,
                                       actor=SYSTEM_ACTOR, visibility=(lane.agency_id,))])

    async def _disable(self, lane: Lane, result: Attempt) -> None:
        await result.done
        reason = f"the receiver answered 410 Gone at {result.at.isoformat()}"
        changed = await self._pool.fetchval(
            "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2, updated_at = now()"
            " WHERE id = $1 AND status = 'active' RETURNING true", lane.endpoint_id, reason)
        if changed:
            await self._announce([NewEvent("webhook.endpoint_disabled", f"webhook/{lane.endpoint_id}",
                                           {"endpoint_id": lane.endpoint_id, "url": lane.url, "reason": reason},
                                           actor=SYSTEM_ACTOR, visibility=(lane.agency_id,))])
