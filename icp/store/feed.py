"""Following the event log on one node: NOTIFY wake-ups plus a polling fallback, fanned out.

One `EventFeed` per node reads new rows once and hands each batch, in seq order, to its
subscribers (the WebSocket gateway, webhook dispatcher, live picture). Wake-ups carry no payload;
the feed reads the log itself, so a lost or coalesced notification costs at most one poll
interval. Events this node commits through its group commit are offered straight after COMMIT
(`offer`) and skip the read when nothing of another node's comes before them. The listening
connection is re-established if the database goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from icp.store import eventlog
from icp.store.database import connect
from icp.store.eventlog import RecordedEvent
from icp.tasks import cancel_all

log = logging.getLogger(__name__)
Subscriber = Callable[[list[RecordedEvent]], None]


async def listen(url: str, channel: str, on_notify: Callable[..., None], listening: Callable[[bool], None],
                 *, retry_s: float = 1.0) -> None:
    """LISTEN on ``channel`` on a connection of its own for as long as the calling task runs,
    connecting again after a lost connection; ``listening(True/False)`` follows the state, so the
    caller can catch up on what it may have missed in between."""
    while True:
        conn = None
        try:
            conn = await connect(url, timeout=5)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            await conn.add_listener(channel, on_notify)
            listening(True)
            await lost.wait()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.debug("listener on %s unavailable: %s", channel, exc)
        finally:
            listening(False)
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
        await asyncio.sleep(retry_s)


class EventFeed:
    def __init__(
        self, url: str, pool: asyncpg.Pool, *, poll_interval_s: float = 1.0, page: int = 1000
    ) -> None:
        self._url = url
        self._pool = pool
        self._poll = poll_interval_s
        self._page = page
        self._subscribers: list[Subscriber] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._advanced = asyncio.Condition()
        self.head = 0  # the highest seq handed to subscribers
        self._expected = 0  # the seq this node's committing append ends at, about to be offered
        self.listening = False

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Receive every new batch (synchronously, in order; keep callbacks quick and
        non-blocking). Returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def start(self, after: int | None = None) -> None:
        self.head = await eventlog.head_seq(self._pool) if after is None else after
        self._tasks = [
            asyncio.create_task(self._listen(), name="icp-feed-listen"),
            asyncio.create_task(self._follow(), name="icp-feed-follow"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def poke(self) -> None:
        """Read the log now (e.g. right after this node committed)."""
        self._wake.set()

    async def wait_for(self, seq: int, timeout: float | None = None) -> None:
        """Wait until the feed has delivered ``seq``."""
        async with asyncio.timeout(timeout), self._advanced:
            await self._advanced.wait_for(lambda: self.head >= seq)

    async def _listen(self) -> None:
        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            # The payload is the last seq the committing transaction appended: nothing to read
            # when this node already handed it out or is about to (its own commits are offered
            # as soon as COMMIT returns, which may be after this wake-up arrives).
            if not (payload.isdigit() and int(payload) <= max(self.head, self._expected)):
                self._wake.set()

        def listening(up: bool) -> None:
            self.listening = up
            if up:
                self._wake.set()  # catch up on anything committed while we were not listening

        await listen(self._url, eventlog.EVENTS_CHANNEL, on_notify, listening, retry_s=min(self._poll, 1.0))

    def expect(self, seq: int) -> None:
        """This node is committing an append that ends at ``seq`` and will `offer` it; 0: that
        commit failed (the seqs may yet be another node's, whose wake-ups must be read)."""
        self._expected = seq

    async def offer(self, events: list[RecordedEvent]) -> None:
        """Events this node has just committed (consecutive seqs). When they follow on from what
        the feed has handed out, they go to the subscribers now, without reading them back;
        otherwise (another node's events come first) the feed reads the log."""
        if not events or events[-1].seq <= self.head:
            return
        if events[0].seq != self.head + 1:
            self._wake.set()
            return
        await self._deliver(events)

    async def _deliver(self, batch: list[RecordedEvent]) -> None:
        self.head = batch[-1].seq
        for subscriber in list(self._subscribers):
            try:
                subscriber(batch)
            except Exception:
                log.exception("event feed subscriber failed")
        async with self._advanced:
            self._advanced.notify_all()

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
            try:
                while True:
                    batch = await eventlog.read_after(self._pool, self.head, self._page)
                    # What `offer` handed out while the read was under way is not handed out twice.
                    fresh = [e for e in batch if e.seq > self.head]
                    if fresh:
                        await self._deliver(fresh)
                    if len(batch) < self._page:
                        break
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.debug("event feed poll failed: %s", exc)
