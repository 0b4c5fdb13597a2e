"""Real-time gateway benchmark (issue 7): one `icp serve` node, load from separate processes.

    python bench/gateway.py [--phases a,b,c,d] [--connections 10000] [--subscribers 5000] [--seconds 10]
    python bench/gateway.py --connections 500 --subscribers 200 --seconds 3      # a quick run, < 1 min

The server is one process (embedded PostgreSQL, fsync on) on a private data directory, started
with a raised file-descriptor limit. The WebSocket clients live in `--workers` generator processes
(bench/gateway_worker.py, a minimal asyncio client), so their CPU never sits on the server's
event loop; this process only seeds over REST, posts the commands that are timed, and reads the
server's /proc figures. Setup: one agency, one unit per unit connection with its own unit token
(minted over POST /api/v1/tokens), and `--console-tokens` dispatcher tokens that the console
subscribers share round-robin. Prints one JSON document:

- a  `--connections` unit connections (hello with the unit's token) held open idle: the server's
     RSS (VmRSS) before and after → memory per connection (target ≤ 30 KiB), and its idle CPU
- b  `--position-units` units (default 1.2 × connections) each reporting a position every 0.5 s
     (the server's per-unit minimum; `time` never closer than 0.5 s to the previous report;
     ~16 m/s of movement): accepted and refused answers per second over `--seconds` after a
     warm-up, and the server's CPU (target ≥ 20,000 accepted/s, so ≥ 10,000 units are needed). A
     unit with 2 reports unanswered skips its turn, so an overloaded server is measured, not buried
- c  `--subscribers` console connections (dispatchers of the agency, `subscribe` events); each of
     `--fanout-events` notes posted over REST is timed from just before its POST to each
     subscriber's receipt of the event frame; p50/p99/max over all deliveries (target p99 ≤ 250 ms)
- d  at light load (`--dispatch-units` units connected): POST /incidents/{id}/assignments → the
     unit's socket receives `assignment.dispatched`, `--samples` times (target p99 ≤ 50 ms)

Each phase closes its connections and waits for the server to go quiet before the next one.
Receive times are time.time() in the generator processes, post times time.time() here: one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, gather_limited
from dispatch.intervals import percentile

WORKER = Path(__file__).resolve().with_name("gateway_worker.py")
AGENCY = "bench"
CITY = (60.15, 24.90)  # where incidents open
TARGETS = {"memory_per_connection_kib": 30, "positions_per_s": 20_000, "fanout_p99_ms": 250, "dispatch_p99_ms": 50}


def ms_summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), 2),
            "p99": round(percentile(values, 99) or 0.0, 2), "max": round(max(values), 2), "min": round(min(values), 2)}


# -- the server under test ------------------------------------------------------------------------

class CpuMeter:
    """Server and PostgreSQL CPU over an interval, as a share of one core."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.t0, self.cpu0, self.pg0 = time.monotonic(), server.cpu_s(), server.pg_cpu()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        pg1 = self.server.pg_cpu()
        pg = sum(v - self.pg0.get(pid, 0.0) for pid, v in pg1.items())
        return {"seconds": round(wall, 2),
                "server_cores": round((self.server.cpu_s() - self.cpu0) / wall, 3),
                "postgres_cores": round(pg / wall, 3)}


async def settle(server: Server, idle_cores: float = 0.15, limit_s: float = 90.0) -> float:
    """Wait until the server's CPU stays under ``idle_cores`` for half a second; return the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        meter = CpuMeter(server)
        await asyncio.sleep(0.5)
        if meter.read()["server_cores"] < idle_cores:
            break
    return round(time.monotonic() - started, 2)


async def websocket_gauge(http: aiohttp.ClientSession, base: str) -> int | None:
    try:
        async with http.get(f"{base}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("icp_websocket_connections "):
                    return int(float(line.split()[1]))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return None


# -- the generator processes ------------------------------------------------------------------------

class Workers:
    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, n: int, port: int, nofile: int) -> None:
        env = {**os.environ, "BENCH_NOFILE": str(nofile)}
        for _ in range(n):
            self.procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), "127.0.0.1", str(port), env=env, limit=1 << 28,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))

    async def call(self, i: int, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(cmd) + "\n").encode())
        try:
            async with asyncio.timeout(timeout):
                await proc.stdin.drain()
                line = await proc.stdout.readline()
        except TimeoutError:
            raise RuntimeError(f"worker {i}: no answer to {cmd['cmd']!r} within {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"worker {i} exited (code {await proc.wait()}) during {cmd['cmd']!r}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok", False):
            raise RuntimeError(f"worker {i}: {cmd['cmd']}: {answer.get('error')}")
        return answer

    async def each(self, make: Callable[[int], dict[str, Any] | None], timeout: float) -> list[dict[str, Any]]:
        jobs = [(i, make(i)) for i in range(len(self.procs))]
        return list(await asyncio.gather(*(self.call(i, cmd, timeout) for i, cmd in jobs if cmd is not None)))

    async def connect(self, tokens: list[str], units: list[str] | None, *, subscribe: list[str] | None = None,
                      only: int | None = None, concurrency: int = 24) -> dict[str, Any]:
        """Open one connection per token, spread over the workers (or on worker ``only``)."""
        started = time.perf_counter()
        k = len(self.procs)

        def share(i: int) -> dict[str, Any] | None:
            if only is not None and i != only:
                return None
            part = slice(None) if only is not None else slice(i, None, k)
            return {"cmd": "connect", "tokens": tokens[part], "units": units[part] if units else None,
                    "subscribe": subscribe, "concurrency": concurrency, "timeout": 60}

        parts = await self.each(share, timeout=900)
        failures: dict[str, int] = {}
        for p in parts:
            for key, n in p["failures"].items():
                failures[key] = failures.get(key, 0) + n
        connected = sum(p["connected"] for p in parts)
        seconds = time.perf_counter() - started
        return {"asked": len(tokens), "connected": connected, "failed": sum(p["failed"] for p in parts),
                "failures": dict(list(failures.items())[:5]), "seconds": round(seconds, 2),
                "per_s": round(connected / seconds, 1) if seconds else None}

    async def status(self) -> dict[str, Any]:
        parts = await self.each(lambda i: {"cmd": "status"}, timeout=60)
        errors: dict[str, int] = {}
        for p in parts:
            for key, n in p["errors"].items():
                errors[key] = errors.get(key, 0) + n
        return {"open": sum(p["open"] for p in parts), "lost": sum(p["lost"] for p in parts),
                "closed_by_server": sum(p["closed_by_server_count"] for p in parts),
                "close_samples": [s for p in parts for s in p["closed_by_server"]][:5], "error_frames": errors,
                "generator_cpu_s": round(sum(p["cpu_s"] for p in parts), 2),
                "generator_rss_mib": round(sum(p["rss_kib"] for p in parts) / 1024, 1)}

    async def close(self, *, abort: bool = False) -> dict[str, Any]:
        parts = await self.each(lambda i: {"cmd": "close", "abort": abort, "timeout": 20}, timeout=120)
        return {"closed": sum(p["closed"] for p in parts),
                "aborted_after_timeout": sum(p["aborted_after_timeout"] for p in parts),
                "seconds": max((p["seconds"] for p in parts), default=0.0)}

    async def records(self) -> list[list[Any]]:
        parts = await self.each(lambda i: {"cmd": "collect"}, timeout=120)
        return [r for p in parts for r in p["records"]]

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                with_suppressed(proc.stdin.close)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with_suppressed(proc.kill)
                await proc.wait()
        self.procs = []


def with_suppressed(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(OSError, ProcessLookupError, RuntimeError):
        fn()


# -- the phases ---------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, http: aiohttp.ClientSession) -> None:
        self.args, self.server, self.http = args, server, http
        self.admin = Api(http, server.base, server.admin)
        self.dispatcher: Api | None = None
        self.units: list[str] = []
        self.unit_tokens: list[str] = []
        self.console_tokens: list[str] = []
        self.d_units: list[str] = []
        self.d_tokens: list[str] = []
        self.workers = Workers()

    async def setup(self) -> dict[str, Any]:
        args, phases = self.args, self.args.phases
        n_units = max([args.connections] * ("a" in phases) + [args.position_units] * ("b" in phases) + [0])
        started = time.perf_counter()
        await self.admin.call("POST", "/api/v1/agencies", {"id": AGENCY, "name": "Bench", "kind": "fire"})

        async def unit(uid: str) -> None:
            await self.admin.call("POST", "/api/v1/units", {"id": uid, "call_sign": uid, "agency_id": AGENCY,
                                                            "capabilities": ["ENGINE"], "staffing": 4})

        async def token(role: str, unit: str | None = None) -> str:
            body = {"role": role, "agency": AGENCY, "name": f"bench {role} {unit or ''}".strip()}
            if unit:
                body["unit"] = unit
            return str((await self.admin.call("POST", "/api/v1/tokens", body))["token"])

        self.units = [f"U{i:05d}" for i in range(n_units)]
        self.d_units = [f"D{i:02d}" for i in range(args.dispatch_units if "d" in phases else 0)]
        await gather_limited(args.rest_concurrency, [unit(u) for u in self.units + self.d_units])
        units_s = time.perf_counter() - started
        t = time.perf_counter()
        self.unit_tokens = await gather_limited(args.rest_concurrency, [token("unit", u) for u in self.units])
        self.d_tokens = await gather_limited(args.rest_concurrency, [token("unit", u) for u in self.d_units])
        tokens_s = time.perf_counter() - t
        n_console = max(1, min(args.console_tokens, args.subscribers if "c" in phases else 1))
        self.console_tokens = await gather_limited(args.rest_concurrency, [token("dispatcher")
                                                                           for _ in range(n_console)])
        self.dispatcher = Api(self.http, self.server.base, self.console_tokens[0])
        await self.workers.start(args.workers, self.server.port,
                                 max(n_units, args.subscribers) // args.workers + 1024)
        return {"units": len(self.units) + len(self.d_units), "units_s": round(units_s, 1),
                "unit_tokens": len(self.unit_tokens) + len(self.d_tokens), "unit_tokens_s": round(tokens_s, 1),
                "dispatcher_tokens": len(self.console_tokens), "seconds": round(time.perf_counter() - started, 1),
                "token_binding": "one unit token per unit connection (each bound to its own unit); console "
                                 f"subscribers share {len(self.console_tokens)} dispatcher tokens round-robin"}

    async def _cleanup(self, out: dict[str, Any], *, abort: bool = False) -> None:
        out["status_before_close"] = await self.workers.status()
        out["close"] = await self.workers.close(abort=abort)
        out["settle_s"] = await settle(self.server)
        out["server_websockets_after_close"] = await websocket_gauge(self.http, self.server.base)

    async def phase_a(self) -> dict[str, Any]:
        n = self.args.connections
        out: dict[str, Any] = {"connections": n}
        out["settle_before_s"] = await settle(self.server)
        rss0 = self.server.rss_kib()
        out["connect"] = await self.workers.connect(self.unit_tokens[:n], self.units[:n])
        await settle(self.server, limit_s=30)
        meter = CpuMeter(self.server)
        await asyncio.sleep(self.args.hold)
        out["idle_cpu"] = meter.read()
        rss1 = self.server.rss_kib()
        out["server_websockets"] = await websocket_gauge(self.http, self.server.base)
        held = out["connect"]["connected"]
        await self._cleanup(out)
        rss2 = self.server.rss_kib()
        per = (rss1 - rss0) / held if held else None
        out |= {"rss_kib": {"before": rss0, "open": rss1, "after_close": rss2},
                "per_connection_kib": round(per, 2) if per is not None else None,
                "still_open_after_hold": out["status_before_close"]["open"]}
        return out

    async def phase_b(self) -> dict[str, Any]:
        args = self.args
        n = args.position_units
        out: dict[str, Any] = {"units": n, "interval_s": 0.5, "offered_per_s": n * 2, "window_s": args.seconds,
                               "warmup_s": args.warmup}
        await settle(self.server)
        out["connect"] = await self.workers.connect(self.unit_tokens[:n], self.units[:n])
        await settle(self.server, limit_s=30)
        start = time.time() + 1.0
        job = asyncio.ensure_future(self.workers.each(lambda i: {
            "cmd": "positions", "start": start, "warmup": args.warmup, "seconds": args.seconds, "interval": 0.5,
            "max_outstanding": 2, "seed": i}, timeout=args.warmup + args.seconds + 120))
        try:
            await asyncio.sleep(max(0.0, start + args.warmup - time.time()))
            meter = CpuMeter(self.server)
            with self.server.profiled(args.profile):
                await asyncio.sleep(max(0.0, start + args.warmup + args.seconds - time.time()))
            out["cpu_in_window"] = meter.read()
            out["rss_kib_in_window"] = self.server.rss_kib()
        finally:
            parts = await job
        reasons: dict[str, int] = {}
        for p in parts:
            for key, v in p["refused_reasons"].items():
                reasons[key] = reasons.get(key, 0) + v
        total = {k: sum(p[k] for p in parts) for k in ("sent", "sent_in_window", "skipped", "accepted_in_window",
                                                       "refused_in_window", "answers", "unanswered_at_end",
                                                       "late_ticks")}
        out |= {"totals": total, "refused_reasons": reasons,
                "accepted_per_s": round(total["accepted_in_window"] / args.seconds, 1),
                "refused_per_s": round(total["refused_in_window"] / args.seconds, 1),
                "sent_per_s": round(total["sent_in_window"] / args.seconds, 1)}
        if n * 2 < TARGETS["positions_per_s"]:
            out["note"] = (f"{n} units at 2 reports/s offer {n * 2}/s, below the target: the target needs "
                           f"at least {TARGETS['positions_per_s'] // 2} units")
        await self._cleanup(out, abort=True)
        return out

    async def phase_c(self) -> dict[str, Any]:
        args = self.args
        assert self.dispatcher is not None
        n = args.subscribers
        out: dict[str, Any] = {"subscribers": n, "events": args.fanout_events, "spacing_s": args.fanout_spacing}
        incident = await self.dispatcher.call("POST", "/api/v1/incidents", {
            "type": "structure_fire", "priority": 2, "location": {"lat": CITY[0], "lon": CITY[1]}})
        await settle(self.server)
        tokens = [self.console_tokens[i % len(self.console_tokens)] for i in range(n)]
        out["connect"] = await self.workers.connect(tokens, None, subscribe=["events"])
        connected = out["connect"]["connected"]
        await settle(self.server, limit_s=30)
        await self.workers.each(lambda i: {"cmd": "record", "on": True}, timeout=30)
        sent_at: dict[int, float] = {}
        post_ms: list[float] = []
        meter = CpuMeter(self.server)
        for k in range(args.fanout_events):
            sent_at[k] = time.time()
            t = time.perf_counter()
            await self.dispatcher.call("POST", f"/api/v1/incidents/{incident['id']}/notes",
                                       {"text": f"fan-out #m{k}#"})
            post_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(args.fanout_spacing)
        out["cpu_while_posting"] = meter.read()
        expected = connected * args.fanout_events
        records: list[list[Any]] = []
        deadline = time.monotonic() + 30
        while True:
            records += await self.workers.records()
            got = sum(1 for r in records if r[2] is not None)
            if got >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await self.workers.each(lambda i: {"cmd": "record", "on": False}, timeout=30)
        delays = [(r[3] - sent_at[r[2]]) * 1000 for r in records if r[2] in sent_at]
        per_event = {}
        for k in sent_at:
            ds = [(r[3] - sent_at[k]) * 1000 for r in records if r[2] == k]
            per_event[k] = round(percentile(ds, 99) or 0.0, 1) if ds else None
        out |= {"delivery_ms": ms_summary(delays), "deliveries": len(delays), "expected_deliveries": expected,
                "missing": expected - len(delays), "post_ms": ms_summary(post_ms),
                "p99_ms_per_event": list(per_event.values())}
        await self._cleanup(out)
        return out

    async def phase_d(self) -> dict[str, Any]:
        args = self.args
        assert self.dispatcher is not None
        out: dict[str, Any] = {"units_connected": len(self.d_units), "samples": args.samples}
        incidents = [await self.dispatcher.call("POST", "/api/v1/incidents", {
            "type": "structure_fire", "priority": 2, "location": {"lat": CITY[0] + i * 1e-4, "lon": CITY[1]}})
            for i in range(args.samples)]
        await settle(self.server)
        out["connect"] = await self.workers.connect(self.d_tokens, self.d_units, only=0)
        await self.workers.call(0, {"cmd": "record", "on": True}, timeout=30)
        sent_at: dict[str, float] = {}
        post_ms: list[float] = []
        errors: list[str] = []
        for i, incident in enumerate(incidents):
            unit = self.d_units[i % len(self.d_units)]
            sent_at[incident["id"]] = time.time()
            t = time.perf_counter()
            try:
                await self.dispatcher.call("POST", f"/api/v1/incidents/{incident['id']}/assignments",
                                           {"units": [unit]})
                post_ms.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.05)
                await self.dispatcher.call("POST", f"/api/v1/incidents/{incident['id']}/close",
                                           {"disposition": "bench"})
            except RuntimeError as exc:
                errors.append(str(exc)[:200])
            await asyncio.sleep(0.05)
        records: list[list[Any]] = []
        deadline = time.monotonic() + 10
        while True:
            records += (await self.workers.call(0, {"cmd": "collect"}, timeout=30))["records"]
            got = {r[1] for r in records if r[0] == "assignment.dispatched"}
            if len(got) >= len(sent_at) - len(errors) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await self.workers.call(0, {"cmd": "record", "on": False}, timeout=30)
        delays = [(r[3] - sent_at[r[1]]) * 1000 for r in records if r[0] == "assignment.dispatched" and r[1] in sent_at]
        out |= {"delivery_ms": ms_summary(delays), "post_ms": ms_summary(post_ms), "errors": errors[:5],
                "error_count": len(errors), "missing": len(sent_at) - len(errors) - len(delays)}
        await self._cleanup(out)
        return out


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def put(name: str, phase: str, measured: Any, ok: Callable[[float], bool]) -> None:
        if phase in results and "error" not in results[phase]:
            out[name] = {"target": TARGETS[name], "measured": measured,
                         "met": measured is not None and ok(measured)}

    a, b, c, d = (results.get(k, {}) for k in ("a_connections", "b_positions", "c_fanout", "d_dispatch"))
    put("memory_per_connection_kib", "a_connections", a.get("per_connection_kib"),
        lambda v: v <= TARGETS["memory_per_connection_kib"] and a["connect"]["failed"] == 0)
    put("positions_per_s", "b_positions", b.get("accepted_per_s"), lambda v: v >= TARGETS["positions_per_s"])
    put("fanout_p99_ms", "c_fanout", c.get("delivery_ms", {}).get("p99"),
        lambda v: v <= TARGETS["fanout_p99_ms"] and c["missing"] == 0)
    put("dispatch_p99_ms", "d_dispatch", d.get("delivery_ms", {}).get("p99"),
        lambda v: v <= TARGETS["dispatch_p99_ms"] and d["missing"] == 0)
    return out


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
        bench = Bench(args, server, http)
        try:
            results["setup"] = await bench.setup()
            for key, name, phase in (("a", "a_connections", bench.phase_a), ("b", "b_positions", bench.phase_b),
                                     ("c", "c_fanout", bench.phase_c), ("d", "d_dispatch", bench.phase_d)):
                if key not in args.phases:
                    continue
                print(f"gateway bench: phase {key} …", file=sys.stderr, flush=True)
                try:
                    results[name] = await phase()
                except Exception as exc:  # one phase failing still reports the others
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
                    try:
                        await bench.workers.close(abort=True)
                    except Exception as cleanup_exc:
                        results[name]["cleanup_error"] = str(cleanup_exc)[:300]
            results["generators"] = await bench.workers.status()
        finally:
            await bench.workers.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an ICP setting for the server under test, e.g. gc_threshold=50000 (repeatable)")
    parser.add_argument("--phases", default="a,b,c,d", help="which of a,b,c,d to run")
    parser.add_argument("--connections", type=int, default=10_000, help="(a) idle unit connections")
    parser.add_argument("--position-units", type=int, default=None,
                        help="(b) units reporting every 0.5 s (default 1.2 × --connections)")
    parser.add_argument("--seconds", type=float, default=10.0, help="(b) measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="(b) reporting before the window opens")
    parser.add_argument("--hold", type=float, default=3.0, help="(a) seconds the connections are held idle")
    parser.add_argument("--subscribers", type=int, default=5000, help="(c) console subscribers")
    parser.add_argument("--fanout-events", type=int, default=20, help="(c) notes posted, one at a time")
    parser.add_argument("--fanout-spacing", type=float, default=0.5, help="(c) seconds between notes")
    parser.add_argument("--samples", type=int, default=60, help="(d) dispatches timed")
    parser.add_argument("--dispatch-units", type=int, default=4, help="(d) units connected")
    parser.add_argument("--console-tokens", type=int, default=100, help="dispatcher tokens the subscribers share")
    parser.add_argument("--workers", type=int, default=4, help="generator processes")
    parser.add_argument("--profile", metavar="FILE", help="(b) py-spy the server in the window")
    parser.add_argument("--rest-concurrency", type=int, default=32, help="parallel REST calls while seeding")
    args = parser.parse_args()
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases <= {"a", "b", "c", "d"}:
        parser.error("--phases takes a comma-separated subset of a,b,c,d")
    if args.position_units is None:
        args.position_units = round(args.connections * 1.2)

    started = time.perf_counter()
    info = machine()
    nofile = max(args.connections, args.position_units, args.subscribers) + 4096
    extra = dict(item.split("=", 1) for item in args.server_setting)
    server = Server("gateway", nofile=nofile, settings={
        "ICP_MAX_POSITION_AGE_S": "86400", **{"ICP_" + k.upper(): v for k, v in extra.items()}})
    code = None
    try:
        server.start()
        info["server_max_open_files"] = server.max_open_files()
        results = asyncio.run(run(args, server))
    finally:
        code = server.stop()
        log = server.log_summary()
        server.log_path.unlink(missing_ok=True)
    checks = targets(results)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "benchmark": "gateway", "command": " ".join(["python", "bench/gateway.py", *sys.argv[1:]]),
        "machine": info,
        "sizes": {"connections": args.connections, "position_units": args.position_units,
                  "subscribers": args.subscribers, "fanout_events": args.fanout_events, "samples": args.samples,
                  "seconds": args.seconds, "generator_processes": args.workers, "phases": sorted(args.phases)},
        **results,
        "server": {"pid_exit_code": code, "log": log},
        "targets": checks,
        "met": bool(checks) and all(t["met"] for t in checks.values()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
