"""The event log on a real PostgreSQL: ordering under concurrency, group commit, the hash chain."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from datetime import UTC, datetime

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icp.config import Settings
from icp.store import database, eventlog
from icp.store.eventlog import EventError, NewEvent
from icp.store.feed import EventFeed
from icp.store.group_commit import GroupCommitter, Overloaded, Staged

# jsonb refuses NUL characters and lone surrogates, and so does the event log.
json_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | json_text
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
async def pool(db_url: str):  # type: ignore[no-untyped-def]
    p = await database.create_pool(db_url, Settings(pool_min=2, pool_max=20))
    yield p
    await p.close()


async def test_append_assigns_consecutive_seqs_and_chains_hashes(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        first = await eventlog.append(conn, [NewEvent("test.a", "s:1", {"n": 1})])
    async with conn.transaction():
        more = await eventlog.append(conn, [NewEvent("test.b", "s:2", {"n": i}) for i in range(3)])
    events = first + more
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].prev_hash == eventlog.GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    stored = await eventlog.read_after(conn, 0)
    assert [(e.seq, e.hash) for e in stored] == [(e.seq, e.hash) for e in events]
    assert (await eventlog.verify(conn)).ok


@pytest.mark.parametrize("visibility", [("fire", "ems"), (), ('a"b', "c\\d", "e,f", "NULL", "{g}", " h ")])
async def test_visibility_is_stored_exactly_as_given(conn: asyncpg.Connection,
                                                     visibility: tuple[str, ...]) -> None:
    async with conn.transaction():
        written = await eventlog.append(conn, [NewEvent("test.vis", "s", {}, visibility=visibility)])
    assert written[0].visibility == tuple(sorted(visibility))
    assert tuple(await conn.fetchval("SELECT visibility FROM events WHERE seq = $1", written[0].seq)) == tuple(
        sorted(visibility))


async def test_append_outside_a_transaction_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(RuntimeError, match="inside a transaction"):
        await eventlog.append(conn, [NewEvent("test.a", "s", {})])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": float("nan")}, "NaN"),
        ({"x": datetime.now(UTC)}, "JSON values"),
        ({"x": "nul\x00byte"}, "NUL"),
        ({"nul\x00key": 1}, "NUL"),
        ({"x": "a backslash, then a NUL: \\\x00"}, "NUL"),
        ({1: "x"}, "keys must be strings"),
        ({"x": "y" * (eventlog.MAX_EVENT_BYTES + 1)}, "larger than"),
    ],
)
def test_unencodable_events_are_refused(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(EventError, match=message):
        eventlog.encode(NewEvent("test.a", "s", data))


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "C:\\u0000\\x", "\\\\\\\\u0000"])
def test_text_that_only_looks_like_an_escaped_nul_is_kept(text: str) -> None:
    # A backslash followed by "u0000" is ordinary text (JSON writes it "\\u0000"): found by hypothesis.
    assert json.loads(eventlog.canonical_json({"x": text, text: 1})) == {"x": text, text: 1}


@pytest.mark.parametrize("kwargs", [{"type": ""}, {"type": "x" * 101}, {"subject": "s" * 201},
                                    {"visibility": "agency-1"}])
def test_malformed_events_are_refused(kwargs: dict) -> None:  # type: ignore[type-arg]
    fields = {"type": "test.a", "subject": "s", "data": {}} | kwargs
    with pytest.raises(EventError):
        NewEvent(**fields)


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_canonical_form_is_stable_under_json_round_trip(value: object) -> None:
    import json

    text = eventlog.canonical_json({"v": value})
    assert eventlog.canonical_json(json.loads(text)) == text


async def test_values_rewritten_by_jsonb_still_verify(conn: asyncpg.Connection) -> None:
    # jsonb rewrites 1e+20 as an integer, reorders keys and normalises escapes.
    tricky = {"big": 1e20, "tiny": 1.5e-10, "one": 1.0, "z": 1, "a": [0.1, -0.0, "ä€😀"], "esc": "\"\\\n"}
    async with conn.transaction():
        await eventlog.append(conn, [NewEvent("test.tricky", "s", tricky, visibility=("b", "a"))])
    result = await eventlog.verify(conn)
    assert result.ok, result.reason


async def _tamper(conn: asyncpg.Connection, sql: str) -> None:
    await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
    await conn.execute(sql)
    await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")


@pytest.mark.parametrize(
    "sql, seq, reason",
    [
        ("UPDATE events SET data = '{\"n\": 999}' WHERE seq = 4", 4, "altered"),
        ("UPDATE events SET actor = '{\"kind\": \"user\", \"id\": \"mallory\"}' WHERE seq = 3", 3, "altered"),
        ("UPDATE events SET visibility = '{}' WHERE seq = 5", 5, "altered"),
        ("DELETE FROM events WHERE seq = 6", 6, "missing"),
        ("UPDATE events SET prev_hash = hash WHERE seq = 2", 2, "prev_hash"),
    ],
)
async def test_tampering_is_reported_at_the_first_broken_seq(
    conn: asyncpg.Connection, sql: str, seq: int, reason: str
) -> None:
    async with conn.transaction():
        await eventlog.append(conn, [NewEvent("test.n", f"s:{i}", {"n": i}) for i in range(8)])
    assert (await eventlog.verify(conn)).ok
    await _tamper(conn, sql)
    result = await eventlog.verify(conn)
    assert not result.ok
    assert result.broken_seq == seq
    assert reason in (result.reason or "")
    assert result.checked == seq - 1


async def test_concurrent_appenders_never_let_a_polling_reader_miss_a_row(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Many writers (group commit and direct transactions of varied sizes) race while a reader
    polls "seq > last": the reader must see every seq exactly once, in order."""
    committer = GroupCommitter(pool)
    committer.start()
    rng = random.Random(7)
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        reader_conn = await database.connect(db_url)
        last = 0
        try:
            while True:
                batch = await eventlog.read_after(reader_conn, last, 50)
                seen.extend(e.seq for e in batch)
                if batch:
                    last = batch[-1].seq
                elif done.is_set():
                    return
                await asyncio.sleep(0)
        finally:
            await reader_conn.close()

    async def single(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        await committer.append(NewEvent("test.single", f"s:{i}", {"i": i}))

    async def direct(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        async with pool.acquire() as c, c.transaction():
            # Work before the append widens the window in which a commit could overtake.
            await c.execute("SELECT pg_sleep($1)", rng.random() * 0.005)
            await eventlog.append(c, [NewEvent("test.direct", f"d:{i}", {"k": k}) for k in range(1 + i % 7)])

    read_task = asyncio.create_task(reader())
    writers = [single(i) for i in range(400)] + [direct(i) for i in range(60)]
    rng.shuffle(writers)
    await asyncio.gather(*writers)
    done.set()
    await read_task
    await committer.stop()
    total = 400 + sum(1 + i % 7 for i in range(60))
    assert seen == list(range(1, total + 1))
    assert (await eventlog.verify(await database.connect(db_url))).ok


async def test_group_commit_callers_return_only_after_commit(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    committer = GroupCommitter(pool)
    committer.start()
    gate = asyncio.Event()

    async def held_open(c: asyncpg.Connection) -> Staged[None]:
        await gate.wait()  # keeps the shared transaction uncommitted
        return Staged(None, [NewEvent("test.held", "s", {})])

    try:
        first = asyncio.create_task(committer.submit(held_open))
        await asyncio.sleep(0.1)  # the committer is now inside the transaction
        waiting = [asyncio.create_task(committer.append(NewEvent("test.w", "s", {"i": i}))) for i in range(50)]
        await asyncio.sleep(0.3)
        assert not first.done()
        assert not any(t.done() for t in waiting), "a caller returned before its event committed"
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
        gate.set()
        await asyncio.gather(first, *waiting)
        assert await conn.fetchval("SELECT count(*) FROM events") == 51
    finally:
        gate.set()
        await committer.stop()


async def test_group_commit_coalesces_concurrent_callers(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    committer = GroupCommitter(pool)
    committer.start()
    try:
        recorded = await asyncio.gather(
            *(committer.append(NewEvent("test.c", f"s:{i}", {"i": i})) for i in range(200))
        )
    finally:
        await committer.stop()
    assert sorted(r.seq for r in recorded) == list(range(1, 201))
    assert committer.stats.events == 200
    assert committer.stats.transactions < 50, "concurrent callers must share transactions"
    assert (await eventlog.verify(conn)).ok


async def test_a_failing_unit_fails_alone(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    committer = GroupCommitter(pool)
    committer.start()

    async def good(c: asyncpg.Connection) -> Staged[str]:
        await c.execute("CREATE TABLE IF NOT EXISTS gc_probe (v int)")
        await c.execute("INSERT INTO gc_probe VALUES (1)")
        return Staged("ok", [NewEvent("test.good", "s", {})])

    async def bad(c: asyncpg.Connection) -> Staged[str]:
        await c.execute("INSERT INTO gc_probe VALUES (2)")
        await c.execute("SELECT 1/0")
        return Staged("never", [NewEvent("test.bad", "s", {})])

    async def bad_event(c: asyncpg.Connection) -> Staged[str]:
        await c.execute("INSERT INTO gc_probe VALUES (3)")
        return Staged("never", [NewEvent("test.bad", "s", {"x": float("inf")})])

    try:
        await committer.submit(good)  # creates the table
        results = await asyncio.gather(
            committer.submit(good), committer.submit(bad), committer.submit(bad_event),
            committer.submit(good), return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert results[0][0] == "ok" and results[3][0] == "ok"  # type: ignore[index]
    assert isinstance(results[1], asyncpg.DivisionByZeroError)
    assert isinstance(results[2], EventError)
    assert sorted(await conn.fetchval("SELECT array_agg(v) FROM gc_probe")) == [1, 1, 1]
    assert [e.type for e in await eventlog.read_after(conn, 0)] == ["test.good"] * 3


async def test_a_cancelled_caller_withdraws_nothing_and_disturbs_nobody(pool: asyncpg.Pool,
                                                                      conn: asyncpg.Connection) -> None:
    committer = GroupCommitter(pool)
    committer.start()
    gate = asyncio.Event()

    async def slow(c: asyncpg.Connection) -> Staged[str]:
        await gate.wait()  # holds the transaction open while the others queue
        return Staged("slow", [NewEvent("test.slow", "s", {})])

    async def good(c: asyncpg.Connection) -> Staged[str]:
        return Staged("ok", [NewEvent("test.good", "s", {})])

    async def bad(c: asyncpg.Connection) -> Staged[str]:
        await c.execute("SELECT 1/0")
        return Staged("never", [])

    try:
        first = asyncio.create_task(committer.submit(slow))
        await asyncio.sleep(0.05)
        cancelled = [asyncio.create_task(committer.submit(w)) for w in (good, bad)]
        kept = asyncio.create_task(committer.submit(good))
        await asyncio.sleep(0.01)
        for task in cancelled:
            task.cancel()
        gate.set()
        assert (await first)[0] == "slow" and (await kept)[0] == "ok"
        assert all(t.cancelled() for t in cancelled)
    finally:
        await committer.stop()
    # The cancelled caller's good work committed all the same; the failing one failed alone.
    assert [e.type for e in await eventlog.read_after(conn, 0)] == ["test.slow", "test.good", "test.good"]


async def test_many_units_queued_at_once_answer_together_in_order(pool: asyncpg.Pool,
                                                                   conn: asyncpg.Connection) -> None:
    # One submission of many payloads has one outcome per payload, in order, even when the lots
    # split it (max_batch 3); none is an empty list at once; a cancelled caller withdraws nothing.
    committer = GroupCommitter(pool, max_batch=3)
    committer.start()
    gate = asyncio.Event()

    async def work(c: asyncpg.Connection, items: list[int]) -> list[Staged[int]]:
        if 0 in items:
            await gate.wait()  # holds the transaction open while the others queue
        return [Staged(v * 10, [NewEvent("test.many", f"v:{v}", {"v": v})]) for v in items]

    try:
        assert await committer.submit_batched_all(work, []) == []
        held = asyncio.create_task(committer.submit_batched_all(work, [0]))
        await asyncio.sleep(0.05)
        seven = asyncio.create_task(committer.submit_batched_all(work, list(range(1, 8))))
        withdrawn = asyncio.create_task(committer.submit_batched_all(work, [8, 9]))
        await asyncio.sleep(0.01)
        withdrawn.cancel()
        gate.set()
        assert [r[0] for r in await held] == [0]
        outcomes = await seven
        assert [r[0] for r in outcomes] == [10, 20, 30, 40, 50, 60, 70]
        assert [e.data["v"] for r in outcomes for e in r[1]] == list(range(1, 8))
        assert withdrawn.cancelled()
    finally:
        await committer.stop()
    assert committer.stats.transactions >= 4  # [0], then seven in lots of three, then [8, 9]
    assert [e.data["v"] for e in await eventlog.read_after(conn, 0)] == list(range(10))


async def test_group_commit_queue_is_bounded(pool: asyncpg.Pool) -> None:
    committer = GroupCommitter(pool, max_queue=5)
    committer.start()
    try:
        results = await asyncio.gather(
            *(committer.append(NewEvent("test.q", "s", {"i": i})) for i in range(50)),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert any(isinstance(r, Overloaded) for r in results)
    assert any(isinstance(r, eventlog.RecordedEvent) for r in results)


async def test_visibility_filter(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await eventlog.append(conn, [
            NewEvent("test.v", "s", {"n": 1}, visibility=(eventlog.PUBLIC,)),
            NewEvent("test.v", "s", {"n": 2}, visibility=("fire",)),
            NewEvent("test.v", "s", {"n": 3}, visibility=("police",)),
            NewEvent("test.v", "s", {"n": 4}, visibility=()),
        ])
    seen = lambda events: [e.data["n"] for e in events]  # noqa: E731
    assert seen(await eventlog.read_after(conn, 0, agencies=None)) == [1, 2, 3, 4]
    assert seen(await eventlog.read_after(conn, 0, agencies=["fire"])) == [1, 2]
    assert seen(await eventlog.read_after(conn, 0, agencies=[])) == [1]


async def _listening_feed(pool: asyncpg.Pool, db_url: str) -> tuple[EventFeed, list[int]]:
    """A started feed with a 30 s poll (so only wake-ups make it read), once it is listening, and
    the seqs it hands out."""
    feed = EventFeed(db_url, pool, poll_interval_s=30)
    got: list[int] = []
    feed.subscribe(lambda batch: got.extend(e.seq for e in batch))
    await feed.start()
    for _ in range(100):
        if feed.listening:
            return feed, got
        await asyncio.sleep(0.05)
    await feed.stop()
    raise AssertionError("the feed did not start listening within 5 s")


async def test_feed_wakes_on_notify_without_waiting_for_the_poll(pool: asyncpg.Pool, db_url: str) -> None:
    feed, got = await _listening_feed(pool, db_url)
    try:
        recorded = await eventlog.append_committed(pool, [NewEvent("test.f", "s", {"i": i}) for i in range(3)])
        await feed.wait_for(recorded[-1].seq, timeout=3)  # far below the 30 s poll
    finally:
        await feed.stop()
    assert got == [1, 2, 3]


async def test_feed_skips_wake_ups_for_its_own_commit_in_flight_and_reads_once_it_failed(pool: asyncpg.Pool,
                                                                                         db_url: str) -> None:
    feed, got = await _listening_feed(pool, db_url)
    try:
        # This node's committer says it is committing up to seq 1 and will offer it: the wake-up
        # for seq 1 is not read (here another writer's seq 1 stands in for the node's own).
        feed.expect(1)
        await eventlog.append_committed(pool, [NewEvent("test.f", "s", {"i": 1})])
        with pytest.raises(TimeoutError):
            await feed.wait_for(1, timeout=0.5)
        # That commit failed after all: the next wake-up is read, with what was skipped.
        feed.expect(0)
        await eventlog.append_committed(pool, [NewEvent("test.f", "s", {"i": 2})])
        await feed.wait_for(2, timeout=3)
    finally:
        await feed.stop()
    assert got == [1, 2]


async def test_feed_polling_covers_lost_wakeups(pool: asyncpg.Pool) -> None:
    # The listener can never connect here, so only the slow poll can deliver.
    feed = EventFeed("postgresql://nobody@/nowhere?host=/nonexistent", pool, poll_interval_s=0.2)
    got: list[int] = []
    feed.subscribe(lambda batch: got.extend(e.seq for e in batch))
    await feed.start()
    try:
        recorded = await eventlog.append_committed(pool, [NewEvent("test.f", "s", {})])
        await feed.wait_for(recorded[-1].seq, timeout=5)
        assert not feed.listening
    finally:
        await feed.stop()
    assert got == [1]


async def test_recorded_events_equal_what_a_read_of_the_row_gives_back(conn: asyncpg.Connection) -> None:
    # The writing node hands its events on without reading them back: they must be the same values.
    data = {"t": (1, 2.0, "x"), "big": 1e20, "f": 1.5, "nested": {"b": [True, None], "a": -0.0}}
    async with conn.transaction():
        written = await eventlog.append(conn, [NewEvent("test.same", "s", data, actor={"kind": "unit", "id": "E1"},
                                                        visibility=("fire", "ems"))])
    [read] = await eventlog.read_after(conn, 0)
    assert written == [read]
    assert written[0].data == {"t": [1, 2, "x"], "big": 10**20, "f": 1.5, "nested": {"b": [True, None], "a": 0}}


async def test_feed_hands_on_offered_events_once_and_in_order(pool: asyncpg.Pool) -> None:
    # No listener can connect and the poll is slow: what arrives quickly was offered, not read.
    feed = EventFeed("postgresql://nobody@/nowhere?host=/nonexistent", pool, poll_interval_s=30)
    got: list[int] = []
    feed.subscribe(lambda batch: got.extend(e.seq for e in batch))
    committer = GroupCommitter(pool)
    committer.on_recorded = feed.offer
    committer.start()
    await feed.start()
    try:
        first = await committer.append_many([NewEvent("test.o", "s", {"i": i}) for i in range(3)])
        await feed.wait_for(first[-1].seq, timeout=2)
        # Another writer's event comes between: the next offer does not follow on, so the feed reads.
        await eventlog.append_committed(pool, [NewEvent("test.other", "s", {})])
        last = await committer.append(NewEvent("test.o", "s", {"i": 3}))
        await feed.wait_for(last.seq, timeout=2)
        await feed.offer([last])  # already handed out: ignored
    finally:
        await feed.stop()
        await committer.stop()
    assert got == [1, 2, 3, 4, 5]


def test_canonical_form_survives_a_jsonb_round_trip(db_url: str) -> None:
    """Any JSON value, stored as jsonb and read back, encodes to the same canonical text."""
    from hypothesis import HealthCheck

    async def round_trip(values: list[object]) -> list[tuple[str, str]]:
        c = await database.connect(db_url)
        try:
            out = []
            for value in values:
                text = eventlog.canonical_json({"v": value})
                back = await c.fetchval("SELECT $1::jsonb", text)
                out.append((text, eventlog.canonical_json(back)))
            return out
        finally:
            await c.close()

    @given(st.lists(json_values, min_size=1, max_size=20))
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(values: list[object]) -> None:
        for written, read in asyncio.run(round_trip(values)):
            assert read == written

    check()


def test_envelope_is_the_canonical_json_of_the_whole_event() -> None:
    at = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)
    actor = {"kind": "user", "id": "7", "name": "Äli \"quoted\"", "role": "dispatcher"}
    data = {"b": [1.0, 2.5, "ß\n"], "a": {"z": None, "y": True}}
    envelope = eventlog._envelope(
        42, eventlog.format_at(at), "incident.created", "incident:7\u2028", ("police", "fire"),
        eventlog.canonical_json(actor), eventlog.canonical_json(data),
    )
    whole = eventlog.canonical_json({
        "seq": 42, "at": "2026-11-21T12:00:00.123456Z", "type": "incident.created", "subject": "incident:7\u2028",
        "visibility": ["fire", "police"], "actor": actor, "data": data,
    })
    assert envelope == whole.encode("utf-8")


async def test_batched_work_shares_statements_and_a_bad_item_fails_alone(pool: asyncpg.Pool,
                                                                        conn: asyncpg.Connection) -> None:
    committer = GroupCommitter(pool)
    committer.start()
    calls: list[int] = []

    async def insert_all(c: asyncpg.Connection, values: list[int]) -> list[Staged[int]]:
        calls.append(len(values))
        await c.execute("CREATE TABLE IF NOT EXISTS gc_many (v int CHECK (v >= 0))")
        await c.executemany("INSERT INTO gc_many VALUES ($1)", [(v,) for v in values])
        return [Staged(v * 10, [NewEvent("test.many", "s", {"v": v})]) for v in values]

    try:
        await committer.submit_batched(insert_all, 0)  # creates the table
        results = await asyncio.gather(*(committer.submit_batched(insert_all, v) for v in (1, 2, -3, 4)),
                                       return_exceptions=True)
    finally:
        await committer.stop()
    assert [r[0] if isinstance(r, tuple) else "failed" for r in results] == [10, 20, "failed", 40]
    assert isinstance(results[2], asyncpg.CheckViolationError)
    assert calls[1] == 4  # the four were offered together first…
    assert sorted(await conn.fetchval("SELECT array_agg(v) FROM gc_many")) == [0, 1, 2, 4]  # …then one by one
    assert sorted(e.data["v"] for e in await eventlog.read_after(conn, 0)) == [0, 1, 2, 4]


def test_checked_plain_data_is_written_as_the_canonical_form_says() -> None:
    # A producer that checked its data (no float under 1e-4 in magnitude, no NUL) gets orjson's
    # text as it is: the same text, and so the same hash, as the searched path gives.
    data = {"b": [1, "x", {"lat": 60.1699, "lon": 24.9384, "n": None}], "a": 0.5, "z": True}
    checked = eventlog.encode(NewEvent("test.checked", "s", data, plain=True, checked=True))
    searched = eventlog.encode(NewEvent("test.checked", "s", data, plain=True))
    assert checked.data_json == searched.data_json == eventlog.canonical_json(data)
    assert [eventlog.plain_float(x) for x in (0.0, 1e-4, -2.5, 60, 5e-05, -1e-7)] == [True] * 4 + [False] * 2
    with pytest.raises(EventError, match="only plain"):
        NewEvent("test.checked", "s", data, checked=True)
