"""Group commit: many concurrent writers share one transaction, and each returns once durable.

Without it, N concurrent callers appending one event each pay N commits (N fsyncs) in a row,
serialised by the append lock. Here a single committer task takes everything queued, runs it in
one transaction and resolves every caller's future after COMMIT returns; while it commits, the
next batch accumulates. A unit of work that fails (its own SQL raises) is rolled back to its
savepoint and fails alone; the rest of the batch commits. If the commit itself fails, every caller
in the batch gets the error and nothing of the batch is written.

Bounds: at most ``max_batch`` units per transaction, at most ``max_queue`` waiting; beyond that
`submit` raises `Overloaded` at once instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from icp.store import eventlog
from icp.store.eventlog import NewEvent, RecordedEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_RELEASE_S = 1.0  # how long the committer keeps its connection with nothing to commit


class Overloaded(RuntimeError):
    """The commit queue is full; the caller should retry later (HTTP 503 + Retry-After)."""


class _Retry(Exception):
    """A lot of batched work run without a savepoint failed: run the batch again with them."""


@dataclass(frozen=True, slots=True)
class Staged(Generic[T]):
    """What a unit of work produced: a result for its caller and the events it records."""

    result: T
    events: Sequence[NewEvent | eventlog.EncodedEvent]  # work may encode its own (eventlog.encode)


Work = Callable[[asyncpg.Connection], Awaitable[Staged[T]]]
# Work that handles many items at once (few statements for the lot): returns one Staged per item,
# in order, or raises; then each item is retried alone so a bad one fails by itself.
BatchWork = Callable[[asyncpg.Connection, list[Any]], Awaitable[list[Staged[Any]]]]


class _Waiter(Protocol):
    """Where a unit's outcome goes: an `asyncio.Future`, or its place in a `_Together`."""

    def done(self) -> bool: ...

    def set_result(self, result: tuple[Any, list[RecordedEvent]], /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


_PENDING: Any = object()


class _Together:
    """The outcomes of many units queued at once (`submit_batched_all`), in order, behind one
    future: the last outcome wakes the caller. A future per unit, gathered, cost a future and a
    wake-up of the event loop for each of a storm's alerts."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, n: int) -> None:
        self.future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.outcomes: list[Any] = [_PENDING] * n
        self.left = n

    def settle(self, index: int, outcome: Any) -> None:
        if self.future.done() or self.outcomes[index] is not _PENDING:
            return  # the caller was cancelled, or this unit has its outcome
        self.outcomes[index] = outcome
        self.left -= 1
        if not self.left:
            self.future.set_result(self.outcomes)


class _Place:
    """One unit's place in a `_Together`, taking its outcome as a future would."""

    __slots__ = ("_index", "_together")

    def __init__(self, together: _Together, index: int) -> None:
        self._together, self._index = together, index

    def done(self) -> bool:
        return self._together.future.done() or self._together.outcomes[self._index] is not _PENDING

    def set_result(self, result: tuple[Any, list[RecordedEvent]], /) -> None:
        self._together.settle(self._index, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._together.settle(self._index, exception)


@dataclass(slots=True)
class _Item:
    work: Work[Any] | None
    events: list[eventlog.EncodedEvent]
    future: _Waiter
    batch_work: BatchWork | None = None
    payload: Any = None


_Results = list[tuple[_Item, Any, list[eventlog.EncodedEvent]]]


@dataclass
class GroupCommitStats:
    transactions: int = 0
    units: int = 0
    events: int = 0
    failed_units: int = 0
    last_batch: int = 0


class GroupCommitter:
    """One per node. ``start()`` before use, ``stop()`` drains what is queued and ends."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 2000,
        max_queue: int = 100_000,
        on_commit: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_commit = on_commit
        # Told of every committed batch's events, in seq order (the node's event feed).
        self.on_recorded: Callable[[list[RecordedEvent]], Awaitable[None]] | None = None
        # Told, before COMMIT, the seq an append ends at (0: it did not commit after all), so the
        # feed does not read back what it is about to be handed.
        self.on_appended: Callable[[int], None] | None = None
        # Held from one batch to the next while work keeps coming (no pool reset per batch).
        self._conn: asyncpg.Connection | None = None
        self.stats = GroupCommitStats()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="icp-group-commit")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._release()

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- callers -------------------------------------------------------------------------------
    async def submit(self, work: Work[T]) -> tuple[T, list[RecordedEvent]]:
        """Run ``work`` in a shared transaction; return its result and recorded events once
        committed. Cancelling the caller does not withdraw work already queued."""
        return await self._enqueue(work, [])

    async def submit_batched(self, work: BatchWork, payload: Any) -> tuple[Any, list[RecordedEvent]]:
        """Like `submit`, but ``work`` receives every queued payload of the same work at once."""
        return await self._enqueue(None, [], batch_work=work, payload=payload)

    async def submit_batched_all(self, work: BatchWork, payloads: Sequence[Any]) -> list[Any]:
        """Queue many payloads at once (so they share one transaction); one result or exception
        per payload, in order."""
        if not payloads:
            return []
        self._check_open(len(payloads))
        together = _Together(len(payloads))
        self._queue += [_Item(None, [], _Place(together, n), work, payload) for n, payload in enumerate(payloads)]
        self._wake.set()
        # Awaited directly, as `_enqueue` awaits its future: a cancelled caller withdraws nothing.
        return await together.future

    async def append(self, event: NewEvent) -> RecordedEvent:
        """Append one event; return it once it is durable."""
        _, recorded = await self._enqueue(None, [eventlog.encode(event)])
        return recorded[0]

    async def append_many(self, events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append events atomically (all in one transaction, consecutive seqs)."""
        _, recorded = await self._enqueue(None, [eventlog.encode(e) for e in events])
        return recorded

    def _check_open(self, adding: int) -> None:
        if self._closing:
            raise Overloaded("the node is shutting down")
        if self._task is None:
            raise RuntimeError("GroupCommitter.start() was not called")
        if len(self._queue) + adding > self._max_queue:
            raise Overloaded(f"{len(self._queue)} writes are waiting to commit")

    async def _enqueue(
        self, work: Work[Any] | None, events: list[eventlog.EncodedEvent], *, batch_work: BatchWork | None = None,
        payload: Any = None,
    ) -> tuple[Any, list[RecordedEvent]]:
        self._check_open(1)
        future: asyncio.Future[tuple[Any, list[RecordedEvent]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(_Item(work, events, future, batch_work, payload))
        self._wake.set()
        # Awaited directly (asyncio.shield costs as much again per caller): a cancelled caller
        # cancels only its own future; its work stays queued and commits, and the committer
        # hands results only to futures not yet done.
        return await future

    # -- the committer ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                if self._conn is None:
                    await self._wake.wait()
                else:
                    # Between two batches the connection is kept (a reset on every return to the
                    # pool cost a round trip in the gap while callers were answered); after a
                    # quiet second it goes back.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), IDLE_RELEASE_S)
                    if not self._queue:
                        await self._release()
                        continue
                # Let every task made runnable with this one queue its work too: concurrent
                # callers then share the transaction instead of trickling into the next ones.
                await asyncio.sleep(0)
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                await self._commit(batch)
            except Exception as exc:  # the batch fails as a whole; callers see the cause
                log.warning("group commit of %d units failed: %s", len(batch), exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _one(self, conn: asyncpg.Connection, item: _Item, run: Work[Any], results: _Results) -> None:
        try:
            async with conn.transaction():  # a savepoint: this unit fails alone
                staged = await run(conn)
                encoded = [eventlog.encode(e) for e in staged.events]
        except Exception as exc:
            self.stats.failed_units += 1
            if not item.future.done():  # its caller may have been cancelled
                item.future.set_exception(exc)
            return
        results.append((item, staged.result, encoded))

    async def _transaction(self, conn: asyncpg.Connection, batch: list[_Item], *, direct: bool
                           ) -> tuple[_Results, list[RecordedEvent]]:
        results: _Results = []
        async with conn.transaction():
            groups: dict[BatchWork, list[_Item]] = {}
            for item in batch:
                if item.batch_work is not None:
                    groups.setdefault(item.batch_work, []).append(item)
                elif item.work is None:
                    results.append((item, None, item.events))
                else:
                    await self._one(conn, item, item.work, results)
            if direct and len(groups) == 1 and not results:
                # The whole transaction is one lot of batched work (the usual case under sensor
                # load): no savepoint around it (two round trips fewer). If it fails, the
                # transaction is rolled back and run again with savepoints.
                [(work, items)] = groups.items()
                try:
                    staged = await work(conn, [i.payload for i in items])
                    encoded = [[eventlog.encode(e) for e in s.events] for s in staged]
                except Exception as exc:
                    raise _Retry from exc
                results.extend((item, s.result, evs) for item, s, evs in zip(items, staged, encoded, strict=True))
            else:
                for work, items in groups.items():
                    await self._many(conn, work, items, results, split=not direct)
            recorded = await eventlog.append(conn, [e for _, _, evs in results for e in evs])
            if recorded and self.on_appended is not None:
                self.on_appended(recorded[-1].seq)
        return results, recorded

    async def _many(self, conn: asyncpg.Connection, work: BatchWork, items: list[_Item], results: _Results, *,
                    split: bool = False) -> None:
        try:
            if split:  # the lot already failed once
                raise _Retry
            async with conn.transaction():
                staged = await work(conn, [i.payload for i in items])
                encoded = [[eventlog.encode(e) for e in s.events] for s in staged]
        except Exception:
            # Something in the lot failed: take them one by one, so only the culprit fails.
            for item in items:

                async def alone(c: asyncpg.Connection, payload: Any = item.payload) -> Staged[Any]:
                    return (await work(c, [payload]))[0]

                await self._one(conn, item, alone, results)
            return
        results.extend((item, s.result, evs) for item, s, evs in zip(items, staged, encoded, strict=True))

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await self._pool.acquire()
        conn = self._conn
        try:
            try:
                results, recorded = await self._transaction(conn, batch, direct=True)
            except _Retry:
                # The lot failed outside a savepoint: again, each unit on its own savepoint.
                results, recorded = await self._transaction(conn, batch, direct=False)
        except BaseException:
            if self.on_appended is not None:
                self.on_appended(0)
            await self._release()  # the pool resets it, or drops it if it is broken
            raise
        # Committed: hand each caller its own slice of the recorded events.
        position = 0
        for item, result, events in results:
            mine = recorded[position : position + len(events)]
            position += len(events)
            if not item.future.done():
                item.future.set_result((result, mine))
        elapsed = time.perf_counter() - started
        self.stats.transactions += 1
        self.stats.units += len(results)
        self.stats.events += len(recorded)
        self.stats.last_batch = len(batch)
        if self._on_commit is not None:
            with contextlib.suppress(Exception):
                self._on_commit(len(batch), len(recorded), elapsed)
        if self.on_recorded is not None and recorded:
            try:
                await self.on_recorded(recorded)
            except Exception:  # committed all the same; the feed reads the log on its next wake-up
                log.exception("handing committed events on failed")
