"""Delivered and read receipts: confirmed by clients as cursors, written in batches, told to senders.

A client confirms, per channel, the last message it received (``delivered``) and read (``read``);
both only move forward. The node keeps the newest confirmation of each (member, channel) in memory
and writes them every ``flush_s`` in one statement that advances the cursors, records a receipt
row for every message they newly cover and publishes those receipts with NOTIFY ``icp_receipts``
(`store.flush_cursors`: PostgreSQL builds the payloads, at most ~7 KB each, so the node's event
loop does no per-receipt work to write them). Every node hands what it hears to the senders
connected to it, and skips the rest unread. Receipts are state, not history: they stay out of the
event log.

Bounds: at most ``max_pending`` (member, channel) confirmations wait for a flush; beyond that new
ones are dropped (the next confirmation of the same cursor carries them anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from icp.messaging import store
from icp.store.feed import listen
from icp.tasks import cancel_all

log = logging.getLogger(__name__)

RECEIPTS_CHANNEL = "icp_receipts"
MAX_PAYLOAD = 7000  # NOTIFY allows 8000 bytes


def decode_payload(payload: str, wanted: Callable[[str], bool] = lambda sender: True
                   ) -> list[tuple[str, dict[str, Any]]]:
    """(sender, receipt) pairs from a NOTIFY payload, for the senders ``wanted``; anything malformed
    is skipped."""
    try:
        items = json.loads(payload)
    except ValueError:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, list) and len(item) == 6 and isinstance(item[0], str) and wanted(item[0]):
            sender, channel, seq, member, delivered, read = item
            receipt: dict[str, Any] = {"channel": channel, "seq": seq, "member": member}
            if delivered:
                receipt["delivered_at"] = delivered
            if read:
                receipt["read_at"] = read
            out.append((str(sender), receipt))
    return out


class ReceiptBook:
    def __init__(self, pool: asyncpg.Pool, url: str, deliver: Callable[[str, dict[str, Any]], None], *,
                 wanted: Callable[[str], bool] = lambda sender: True, flush_s: float = 0.25,
                 max_pending: int = 100_000) -> None:
        self._pool = pool
        self._url = url
        self._deliver = deliver  # (sender, receipt): to the sender's connections on this node
        self._wanted = wanted  # whether a sender has connections on this node
        self.flush_s = flush_s
        self.max_pending = max_pending
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._writing: dict[tuple[str, str], list[int]] = {}  # the batch being written now
        self._tasks: list[asyncio.Task[None]] = []
        self.flushed = 0
        self.listening = False

    def confirm(self, member: str, channel_id: str, delivered: int, read: int) -> None:
        """Note a client's confirmation (written at the next flush)."""
        key = (member, channel_id)
        held = self._pending.get(key)
        if held is None:
            if len(self._pending) >= self.max_pending:
                return
            self._pending[key] = [delivered, read]
        else:
            held[0], held[1] = max(held[0], delivered), max(held[1], read)

    def unwritten(self, member: str, channel_id: str) -> int:
        """The delivery cursor confirmed on this node and not written yet (0: none)."""
        key = (member, channel_id)
        return max(self._pending.get(key, (0,))[0], self._writing.get(key, (0,))[0])

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_loop(), name="icp-receipts-flush"),
                       asyncio.create_task(self._listen(), name="icp-receipts-listen")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()  # what clients confirmed before the node stopped

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("writing receipts failed (kept for the next try): %s", exc)

    async def flush(self) -> int:
        """Write what was confirmed; returns how many receipts that recorded."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        self._writing = pending
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                recorded = await store.flush_cursors(conn, ((m, c, d, r) for (m, c), (d, r) in pending.items()),
                                                     notify=RECEIPTS_CHANNEL, payload_bytes=MAX_PAYLOAD)
        except BaseException:
            for (m, c), (d, r) in pending.items():  # keep them for the next flush
                self.confirm(m, c, d, r)
            raise
        finally:
            self._writing = {}
        self.flushed += recorded
        return recorded

    async def _listen(self) -> None:
        def on_notify(_conn: object, _pid: object, _channel: object, payload: object) -> None:
            for sender, receipt in decode_payload(str(payload), self._wanted):
                self._deliver(sender, receipt)

        def listening(up: bool) -> None:
            self.listening = up

        await listen(self._url, RECEIPTS_CHANNEL, on_notify, listening)
