"""Unit positions (AVL) on a node: filtered, applied to the live picture, written in batches,
shared with the other nodes and fanned out to consoles.

Positions are a stream, not log events: each accepted report updates the live picture at once
(recommendations use it), is buffered and written every ``flush_interval_s`` with two pipelined
statements (the history row and the unit's last position), and is handed to this node's
subscribers. Other nodes pick it up by reading the history table after the last id they saw, so
a console on node B sees a unit connected to node A.

Filtering, per unit: reports older than the last accepted one are ignored; more than one per
``min_interval_s`` is dropped (rate); a jump implying more than ``max_speed_mps`` is refused
(GPS glitch); a time too far in the future is refused (a clock is wrong).

Stale detection: a unit on duty whose last position is older than ``stale_after_s`` is announced
once with a ``unit.position_stale`` event (a meaningful change, so it goes to the log); the node
that claims the (unit, last fix) row announces it, so several nodes do not repeat it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from dispatch.lifecycle import UnitStatus
from geo.coords import Point, haversine_m
from icp.live import LivePicture
from icp.store.eventlog import NewEvent
from icp.tasks import cancel_all

log = logging.getLogger(__name__)
Subscriber = Callable[[list[dict[str, Any]]], None]
OFF_DUTY = frozenset({UnitStatus.OFF_DUTY, UnitStatus.OUT_OF_SERVICE})  # silent by design


@dataclass(frozen=True, slots=True)
class Fix:
    unit_id: str
    at: datetime
    lat: float
    lon: float
    accuracy: float | None = None
    heading: float | None = None
    speed: float | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit_id, "lat": self.lat, "lon": self.lon, "time": self.at.isoformat()}
        for name in ("accuracy", "heading", "speed"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out


class PositionHub:
    def __init__(self, pool: asyncpg.Pool, live: LivePicture, *, flush_interval_s: float = 0.25,
                 min_interval_s: float = 0.5, max_speed_mps: float = 90.0, max_future_s: float = 30.0,
                 max_buffer: int = 100_000, stale_after_s: float = 300.0, stale_check_s: float = 5.0,
                 announce: Callable[[list[NewEvent]], Awaitable[Any]] | None = None) -> None:
        self._pool = pool
        self._live = live
        self.stale_after_s = stale_after_s
        self.stale_check_s = stale_check_s
        self._announce = announce
        self._next_stale_check = 0.0
        self.node = uuid.uuid4().hex[:12]
        self.flush_interval_s = flush_interval_s
        self.min_interval_s = min_interval_s
        self.max_speed_mps = max_speed_mps
        self.max_future_s = max_future_s
        self.max_buffer = max_buffer
        self._last: dict[str, Fix] = {}
        # Fixes not yet in the live picture: applied together every flush, because each change of
        # the picture copies its units mapping (O(fleet)), which per fix would cap ingest.
        self._to_picture: dict[str, Fix] = {}
        live.pending_positions = self.apply_to_picture  # readers of positions see every accepted fix
        self._pending: list[Fix] = []
        self._subscribers: list[Subscriber] = []
        self._seen_id = 0
        self._task: asyncio.Task[None] | None = None
        self.accepted = self.refused = 0

    # -- taking reports --------------------------------------------------------------------------
    def report(self, fix: Fix, now: datetime | None = None) -> tuple[bool, str]:
        """Accept or refuse one report (``(accepted, reason)``); never blocks."""
        now = now or datetime.now(UTC)
        if fix.at - now > timedelta(seconds=self.max_future_s):
            return self._no("the time is in the future (check the device clock)")
        last = self._last.get(fix.unit_id) or self._from_picture(fix.unit_id)
        if last is not None:
            elapsed = (fix.at - last.at).total_seconds()
            if elapsed <= 0:
                return self._no("older than the last accepted position")
            if elapsed < self.min_interval_s:
                return self._no("more often than allowed")
            moved = haversine_m(last, fix)
            if moved / elapsed > self.max_speed_mps:
                return self._no(f"an impossible jump ({moved:.0f} m in {elapsed:.1f} s)")
        if len(self._pending) >= self.max_buffer:
            return self._no("the position buffer is full; try again shortly")
        self._accept(fix)
        self._pending.append(fix)
        self.accepted += 1
        return True, "accepted"

    def _no(self, reason: str) -> tuple[bool, str]:
        self.refused += 1
        return False, reason

    def _from_picture(self, unit_id: str) -> Fix | None:
        unit = self._live.state.units.get(unit_id)
        if unit is None or unit.position is None or unit.position_at is None:
            return None
        return Fix(unit_id, unit.position_at, unit.position.lat, unit.position.lon)

    def _accept(self, fix: Fix) -> None:
        self._last[fix.unit_id] = fix
        self._to_picture[fix.unit_id] = fix
        if not self._subscribers:  # no console on this node follows positions
            return
        batch = [fix.to_wire()]
        for subscriber in list(self._subscribers):
            try:
                subscriber(batch)
            except Exception:
                log.exception("position subscriber failed")

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    # -- writing and sharing ----------------------------------------------------------------------
    async def start(self) -> None:
        self._seen_id = int(await self._pool.fetchval("SELECT coalesce(max(id), 0) FROM unit_positions"))
        self._task = asyncio.create_task(self._loop(), name="icp-positions")

    async def stop(self) -> None:
        await cancel_all([self._task])
        with contextlib.suppress(Exception):
            await self.flush()  # nothing accepted is dropped on a clean stop

    def apply_to_picture(self) -> None:
        """Put the accepted fixes into the live picture (one copy of the units for all of them)."""
        if not self._to_picture:
            return
        pending, self._to_picture = self._to_picture, {}
        state = self._live.state
        units = dict(state.units)
        for unit_id, fix in pending.items():
            unit = units.get(unit_id)
            if unit is not None and (unit.position_at is None or unit.position_at < fix.at):
                units[unit_id] = unit.with_position(Point(fix.lat, fix.lon), fix.at)
        self._live.state = replace(state, units=units)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.apply_to_picture()
            try:
                await self.flush()
                await self._follow_others()
                if self._announce is not None and time.monotonic() >= self._next_stale_check:
                    self._next_stale_check = time.monotonic() + self.stale_check_s
                    await self.announce_stale()
            except Exception as exc:  # the database may be away: keep the buffer, try again
                log.warning("position flush failed (kept for the next round): %s", exc)

    async def announce_stale(self, now: datetime | None = None) -> list[str]:
        """Announce the units (on duty, with a position) that went silent; return their ids."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.stale_after_s)
        silent = [u for u in self._live.state.units.values()
                  if u.position_at is not None and u.position_at < cutoff and u.status not in OFF_DUTY]
        if not silent or self._announce is None:
            return []
        rows = await self._pool.fetch(
            "INSERT INTO position_stale (unit_id, position_at) SELECT * FROM unnest($1::text[], $2::timestamptz[])"
            " ON CONFLICT (unit_id) DO UPDATE SET position_at = EXCLUDED.position_at, noted_at = now()"
            " WHERE position_stale.position_at < EXCLUDED.position_at RETURNING unit_id",
            [u.id for u in silent], [u.position_at for u in silent])
        claimed = {r["unit_id"] for r in rows}
        events = [NewEvent("unit.position_stale", f"unit/{u.id}", {
            "unit_id": u.id, "call_sign": u.call_sign, "last_position_at": u.position_at.isoformat(),  # type: ignore[union-attr]
            "age_s": round((now - u.position_at).total_seconds()),  # type: ignore[operator]
        }, visibility=(u.agency_id,)) for u in silent if u.id in claimed]
        if events:
            await self._announce(events)
        return sorted(claimed)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        latest: dict[str, Fix] = {}
        for fix in pending:
            latest[fix.unit_id] = fix
        newest = sorted(latest.values(), key=lambda f: f.unit_id)  # one lock order for every node
        try:
            # Two statements whatever the number of fixes: on a loop busy with thousands of
            # sockets every round trip waits its turn, and a statement per fix took seconds.
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO unit_positions (unit_id, at, lat, lon, accuracy, heading, speed, node)"
                    " SELECT u, a, la, lo, ac, h, sp, $8 FROM unnest($1::text[], $2::timestamptz[], $3::float8[],"
                    " $4::float8[], $5::float8[], $6::float8[], $7::float8[]) AS f(u, a, la, lo, ac, h, sp)",
                    [f.unit_id for f in pending], [f.at for f in pending], [f.lat for f in pending],
                    [f.lon for f in pending], [f.accuracy for f in pending], [f.heading for f in pending],
                    [f.speed for f in pending], self.node)
                await conn.execute(
                    "UPDATE units SET doc = units.doc || jsonb_build_object('position', jsonb_build_object("
                    "'lat', f.la, 'lon', f.lo), 'position_at', f.at_text)"
                    " FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::timestamptz[])"
                    " AS f(id, la, lo, at_text, at)"
                    " WHERE units.id = f.id"
                    " AND (units.doc->>'position_at' IS NULL OR (units.doc->>'position_at')::timestamptz < f.at)",
                    [f.unit_id for f in newest], [f.lat for f in newest], [f.lon for f in newest],
                    [f.at.isoformat() for f in newest], [f.at for f in newest])
        except BaseException:
            self._pending = pending + self._pending  # keep them for the next round
            raise

    async def _follow_others(self) -> None:
        rows = await self._pool.fetch(
            "SELECT id, unit_id, at, lat, lon, accuracy, heading, speed FROM unit_positions"
            " WHERE id > $1 AND node <> $2 ORDER BY id LIMIT 5000", self._seen_id, self.node)
        for row in rows:
            fix = Fix(row["unit_id"], row["at"], row["lat"], row["lon"], row["accuracy"], row["heading"], row["speed"])
            last = self._last.get(fix.unit_id)
            if last is None or fix.at > last.at:
                self._accept(fix)
        if rows:
            self._seen_id = rows[-1]["id"]
