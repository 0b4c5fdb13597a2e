"""Event log benchmark: append throughput (batches, group commit) and latency at a steady rate.

    python bench/eventlog.py [--seconds 10] [--database-url URL]

Without --database-url it starts a private embedded PostgreSQL (fsync on, synchronous_commit on,
exactly as `icp serve` runs it) in a temporary directory. Prints one JSON document:

- batch_500_events_per_s       events/s appended in transactions of 500 (target ≥ 30,000)
- group_commit_events_per_s    events/s from 200 concurrent single-event callers (target ≥ 10,000)
- latency_at_1000_per_s_ms     p50/p99/max of append latency with an open-loop 1,000 events/s
                               arrival rate, measured from each event's scheduled time
                               (target p99 ≤ 20 ms)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatch.intervals import percentile
from icp.config import Settings
from icp.store import database, eventlog, migrations
from icp.store.embedded import EmbeddedCluster
from icp.store.group_commit import GroupCommitter

PAYLOAD = {"kind": "smoke", "source": "sensor-net-7", "severity": "severe", "location": {"lat": 60.17, "lon": 24.94},
           "note": "bench event with a realistic small payload"}


def event(i: int) -> eventlog.NewEvent:
    return eventlog.NewEvent("bench.event", f"bench:{i % 1000}", PAYLOAD | {"i": i}, visibility=("fire", "ems"))



async def bench_batches(pool, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [event(n + k) for k in range(500)]
        async with pool.acquire() as conn, conn.transaction():
            await eventlog.append(conn, batch)
        n += 500
    elapsed = time.perf_counter() - started
    return {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed)}


async def bench_group_commit(pool, seconds: float, callers: int = 200) -> dict[str, float]:  # type: ignore[no-untyped-def]
    committer = GroupCommitter(pool)
    committer.start()
    count = 0
    deadline = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        nonlocal count
        i = k
        while time.perf_counter() < deadline:
            await committer.append(event(i))
            count += 1
            i += callers

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    elapsed = time.perf_counter() - started
    stats = committer.stats
    await committer.stop()
    return {"callers": callers, "events": count, "seconds": round(elapsed, 2),
            "events_per_s": round(count / elapsed), "transactions": stats.transactions,
            "mean_events_per_transaction": round(stats.events / max(stats.transactions, 1), 1)}


async def bench_latency(pool, seconds: float, rate: int = 1000) -> dict[str, float]:  # type: ignore[no-untyped-def]
    committer = GroupCommitter(pool)
    committer.start()
    latencies: list[float] = []
    tasks = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    total = int(seconds * rate)

    async def one(i: int, due: float) -> None:
        await committer.append(event(i))
        latencies.append((loop.time() - due) * 1000)

    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    await committer.stop()
    return {"rate_per_s": rate, "events": len(latencies), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 99) or 0.0, 2), "max_ms": round(max(latencies), 2)}


async def run(url: str, seconds: float) -> dict[str, object]:
    conn = await database.connect(url)
    try:
        await migrations.migrate(conn)
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    pool = await database.create_pool(url, Settings(pool_min=4, pool_max=8))
    try:
        batches = await bench_batches(pool, seconds)
        group = await bench_group_commit(pool, seconds)
        latency = await bench_latency(pool, seconds)
        verify_conn = await database.connect(url)
        try:
            started = time.perf_counter()
            verified = await eventlog.verify(verify_conn)
            verify_s = time.perf_counter() - started
        finally:
            await verify_conn.close()
    finally:
        await pool.close()
    return {
        "benchmark": "eventlog",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "postgresql": version,
                    "fsync": fsync, "synchronous_commit": sync_commit},
        "batch_500": batches,
        "group_commit_200_callers": group,
        "latency_at_1000_per_s": latency,
        "verify": {"events": verified.checked, "ok": verified.ok, "seconds": round(verify_s, 2),
                   "events_per_s": round(verified.checked / verify_s)},
        "targets": {
            "batch_500_events_per_s": {"target": 30000, "measured": batches["events_per_s"],
                                       "met": batches["events_per_s"] >= 30000},
            "group_commit_events_per_s": {"target": 10000, "measured": group["events_per_s"],
                                          "met": group["events_per_s"] >= 10000},
            "p99_ms_at_1000_per_s": {"target": 20, "measured": latency["p99_ms"], "met": latency["p99_ms"] <= 20},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    parser.add_argument("--database-url", help="use this PostgreSQL instead of a private embedded one "
                        "(the benchmark creates tables in it)")
    args = parser.parse_args()
    if args.database_url:
        result = asyncio.run(run(args.database_url, args.seconds))
    else:
        base = Path(tempfile.mkdtemp(prefix="icp-bench-"))
        try:
            with EmbeddedCluster(base / "pg") as cluster:
                result = asyncio.run(run(cluster.url(), args.seconds))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
