"""Messaging benchmark (issue 9): incident channels full of online members on one `icp serve` node.

    python bench/messaging.py [--channels 100] [--members 20] [--rate 300] [--seconds 10]
    python bench/messaging.py --channels 20 --members 10 --rate 50 --seconds 3      # a quick run

Setup (over REST, as an administrator): one agency; `--channels` incidents, each opened by the
agency's dispatcher and given `--members` units of its own (dispatched to it, so its channel's
members are exactly those units: no dispatcher is connected, the dispatcher would belong to every
channel); one unit token per unit. The server acknowledges nothing by itself (`ack_timeout_s` is
raised to an hour so assignments stay active throughout).

Load: every unit holds one WebSocket in one of `--workers` generator processes (the minimal client
of bench/gateway_worker.py, driven by this file in `--worker` mode). For `--warmup` + `--seconds`
the generators post `--rate` messages a second in total (`message.send`, open loop, spread evenly
over time and at random over the units, each into its own incident's channel), and — as the SDK
does — every connection confirms what it received with one `message.receipt` notification every
`--receipt-interval` seconds. Each message's text carries a mark; the generators note when each was
sent, answered (`ok`: durable) and received by every other member (the sender's own copy is not
counted). Times are time.time() in the generators: one clock.

Figures (JSON on stdout): deliveries per second over the measured window (target ≥ 5,000/s), the
send → delivered latency of the messages sent in the window, over every delivery (target p99 ≤
100 ms), send → ok latency, messages that never arrived, and the server's and PostgreSQL's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, gather_limited, unit_tokens
from bench.gateway import CpuMeter, Workers, machine, ms_summary, settle
from bench.gateway_worker import Conn, raise_nofile, serve_commands
from bench.gateway_worker import Worker as ConnectionWorker

AGENCY = "bench"
TARGETS = {"deliveries_per_s": 5000, "delivered_p99_ms": 100}
MARK_RE = re.compile(rb"#m(\d+)#")
SEQ_RE = re.compile(rb'"seq":(\d+)')
CHANNEL_RE = re.compile(rb'"channel":"([^"]+)"')
REF_RE = re.compile(rb'"ref":"s(\d+)"')


# -- the generator processes (`--worker`) -----------------------------------------------------------

class MessageWorker(ConnectionWorker):
    """Holds connections (gateway_worker's client), sends messages, confirms receipts, notes times."""

    def __init__(self, host: str, port: int, index: int) -> None:
        super().__init__(host, port)
        self.index = index
        self.channel_of: dict[str, str] = {}  # unit → its incident channel
        self.sent: dict[int, float] = {}  # mark → when sent
        self.sender: dict[int, Conn] = {}
        self.answered: dict[int, float] = {}  # mark → when the ok arrived
        self.deliveries: list[tuple[int, float]] = []
        self.echoes = 0
        self.receipt_frames = 0
        self.confirm: dict[Conn, dict[str, int]] = {}  # what each connection has yet to confirm

    def on_text(self, conn: Conn, payload: bytes, now: float) -> None:
        head = payload[:16]
        if head.startswith(b'{"op":"message"'):
            mark = MARK_RE.search(payload)
            if mark is None:
                return
            m = int(mark.group(1))
            if self.sender.get(m) is conn:
                self.echoes += 1
            else:
                self.deliveries.append((m, now))
            seq, channel = SEQ_RE.search(payload), CHANNEL_RE.search(payload)
            if seq and channel:
                pending = self.confirm.setdefault(conn, {})
                pending[channel.group(1).decode()] = int(seq.group(1))
        elif head.startswith(b'{"op":"ok"'):
            ref = REF_RE.search(payload[:40])
            if ref is not None:
                self.answered[int(ref.group(1))] = now
        elif head.startswith(b'{"op":"receipts"'):
            self.receipt_frames += 1
        else:
            super().on_text(conn, payload, now)

    async def load(self, start: float, seconds: float, rate: float, receipt_interval: float,
                   seed: int) -> dict[str, Any]:
        conns = sorted((c for c in self.conns if c.unit in self.channel_of), key=lambda c: c.unit or "")
        rng = random.Random(f"{seed}:{self.index}")
        end = start + seconds
        tick = 0.01
        slots = max(1, round(receipt_interval / tick))
        groups = [conns[i::slots] for i in range(slots)]
        sent = late = n = 0
        next_tick = start
        while next_tick < end:
            delay = next_tick - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -tick:
                late += 1
            due = int((time.time() - start) * rate)
            while sent < due:
                conn = rng.choice(conns)
                if conn.transport is not None and not conn.transport.is_closing():
                    m = self.index * 1_000_000_000 + sent
                    self.sent[m], self.sender[m] = time.time(), conn
                    conn.send(b'{"op":"message.send","id":"s%d","channel":"%s","text":"#m%d# bench message %d"}'
                              % (m, self.channel_of[conn.unit or ""].encode(), m, sent))
                sent += 1
            if receipt_interval > 0:
                for conn in groups[n % slots]:
                    pending = self.confirm.pop(conn, None)
                    if pending:
                        conn.send(json.dumps({"op": "message.receipt", "receipts": [
                            {"channel": c, "delivered": s} for c, s in pending.items()]}).encode())
            n += 1
            next_tick = start + n * tick
        await asyncio.sleep(3.0)  # what is still on its way
        return {"connections": len(conns), "sent": sent, "answered": len(self.answered), "late_ticks": late,
                "deliveries": len(self.deliveries), "echoes": self.echoes, "receipt_frames": self.receipt_frames}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        if name == "channels":
            self.channel_of.update(cmd["channels"])
            return {"units": len(self.channel_of)}
        if name == "load":
            return await self.load(cmd["start"], cmd["seconds"], cmd["rate"], cmd["receipt_interval"],
                                   int(cmd.get("seed", 0)))
        if name == "collect":
            out = {"sent": list(self.sent.items()), "answered": list(self.answered.items()),
                   "deliveries": self.deliveries}
            self.sent, self.answered, self.deliveries, self.sender = {}, {}, [], {}
            return out
        return await super().handle(cmd)


async def worker_main(host: str, port: int, index: int) -> None:
    await serve_commands(MessageWorker(host, port, index))


SELF = str(Path(__file__).resolve())


class MessageWorkers(Workers):
    async def start(self, n: int, port: int, nofile: int) -> None:
        env = {**os.environ, "BENCH_NOFILE": str(nofile)}
        for i in range(n):
            self.procs.append(await asyncio.create_subprocess_exec(
                sys.executable, SELF, "--worker", "127.0.0.1", str(port), str(i), env=env,
                limit=1 << 28, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))


# -- the benchmark ------------------------------------------------------------------------------------

async def setup(args: argparse.Namespace, server: Server, http: aiohttp.ClientSession
                ) -> tuple[list[str], list[str], dict[str, str], dict[str, Any]]:
    admin = Api(http, server.base, server.admin)
    started = time.perf_counter()
    await admin.call("POST", "/api/v1/agencies", {"id": AGENCY, "name": "Bench", "kind": "fire"})
    dispatcher = Api(http, server.base, str((await admin.call("POST", "/api/v1/tokens", {
        "role": "dispatcher", "agency": AGENCY, "name": "bench dispatcher"}))["token"]))
    units = [f"U{c:03d}-{m:02d}" for c in range(args.channels) for m in range(args.members)]

    async def incident(c: int) -> str:
        created = await dispatcher.call("POST", "/api/v1/incidents", {
            "type": "structure_fire", "priority": 2, "location": {"lat": 60.15 + c * 1e-4, "lon": 24.9},
            "address": f"bench {c}"})
        members = units[c * args.members:(c + 1) * args.members]
        await dispatcher.call("POST", f"/api/v1/incidents/{created['id']}/assignments", {"units": members})
        return str(created["id"])

    tokens = await unit_tokens(admin, AGENCY, units, concurrency=args.rest_concurrency)
    incidents = await gather_limited(8, [incident(c) for c in range(args.channels)])
    channel_of = {u: f"incident:{incidents[i // args.members]}" for i, u in enumerate(units)}
    return units, tokens, channel_of, {"units": len(units), "incidents": len(incidents),
                                       "seconds": round(time.perf_counter() - started, 1)}


async def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    results: dict[str, Any] = {}
    workers = MessageWorkers()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
        try:
            units, tokens, channel_of, results["setup"] = await setup(args, server, http)
            await workers.start(args.workers, server.port, len(units) // args.workers + 1024)
            results["connect"] = await workers.connect(tokens, units)
            await workers.each(lambda i: {"cmd": "channels", "channels": channel_of}, timeout=60)
            results["settle_s"] = await settle(server)
            start = time.time() + 1.0
            window = (start + args.warmup, start + args.warmup + args.seconds)

            async def measure() -> dict[str, float]:
                await asyncio.sleep(window[0] - time.time())
                meter = CpuMeter(server)
                await asyncio.sleep(window[1] - time.time())
                return meter.read()

            cpu_task = asyncio.create_task(measure())
            per_worker = args.rate / args.workers
            loads = await workers.each(lambda i: {
                "cmd": "load", "start": start, "seconds": args.warmup + args.seconds, "rate": per_worker,
                "receipt_interval": args.receipt_interval, "seed": args.seed}, timeout=args.warmup + args.seconds + 120)
            results["cpu"] = await cpu_task
            parts = await workers.each(lambda i: {"cmd": "collect"}, timeout=120)
            results["load"] = {k: sum(p[k] for p in loads) for k in loads[0] if isinstance(loads[0][k], int)}
            results.update(figures(parts, window, args.members))
            results["generators"] = await workers.status()
            await workers.close()
        finally:
            await workers.stop()
    return results


def figures(parts: list[dict[str, Any]], window: tuple[float, float], members: int) -> dict[str, Any]:
    sent = {int(m): t for p in parts for m, t in p["sent"]}
    answered = {int(m): t for p in parts for m, t in p["answered"]}
    deliveries = [(int(m), t) for p in parts for m, t in p["deliveries"]]
    in_window = {m for m, t in sent.items() if window[0] <= t < window[1]}
    seconds = window[1] - window[0]
    delivered_in_window = sum(1 for _, t in deliveries if window[0] <= t < window[1])
    latencies = [(t - sent[m]) * 1000 for m, t in deliveries if m in in_window]
    per_message: dict[int, int] = {}
    for m, _ in deliveries:
        if m in in_window:
            per_message[m] = per_message.get(m, 0) + 1
    expected = len(in_window) * (members - 1)
    return {
        "window_s": round(seconds, 2),
        "messages_sent_in_window": len(in_window),
        "messages_per_s": round(len(in_window) / seconds, 1),
        "deliveries_in_window": delivered_in_window,
        "deliveries_per_s": round(delivered_in_window / seconds, 1),
        "send_to_delivered_ms": ms_summary(latencies),
        "send_to_ok_ms": ms_summary([(answered[m] - sent[m]) * 1000 for m in in_window if m in answered]),
        "unanswered": len(in_window - answered.keys()),
        "deliveries_expected": expected,
        "deliveries_missing": expected - len(latencies),
        "messages_short_of_members": sum(1 for m in in_window if per_message.get(m, 0) < members - 1),
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    if "deliveries_per_s" not in results:
        return {}
    p99 = results["send_to_delivered_ms"].get("p99")
    return {
        "deliveries_per_s": {"target": TARGETS["deliveries_per_s"], "measured": results["deliveries_per_s"],
                             "met": results["deliveries_per_s"] >= TARGETS["deliveries_per_s"]},
        "delivered_p99_ms": {"target": TARGETS["delivered_p99_ms"], "measured": p99,
                             "met": p99 is not None and p99 <= TARGETS["delivered_p99_ms"]
                             and results["deliveries_missing"] == 0},
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        raise_nofile(int(os.environ.get("BENCH_NOFILE", "20000")))
        asyncio.run(worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=100, help="incident channels")
    parser.add_argument("--members", type=int, default=20, help="online members (units) per channel")
    parser.add_argument("--rate", type=float, default=300.0, help="messages posted per second, in total")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before the window opens")
    parser.add_argument("--receipt-interval", type=float, default=1.0,
                        help="each connection confirms what it received this often (0: never), as the SDK does")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rest-concurrency", type=int, default=16, help="parallel REST calls while seeding")
    parser.add_argument("--server-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an ICP setting for the server under test, e.g. pool_max=30 (repeatable)")
    args = parser.parse_args()
    if args.members < 2 or args.channels < 1 or args.rate <= 0:
        parser.error("--members must be ≥ 2, --channels ≥ 1 and --rate positive")

    started = time.perf_counter()
    info = machine()
    extra = dict(item.split("=", 1) for item in args.server_setting)
    server = Server("messaging", nofile=args.channels * args.members + 4096, settings={
        "ICP_ACK_TIMEOUT_S": "3600", "ICP_MAX_POSITION_AGE_S": "86400",
        **{"ICP_" + k.upper(): v for k, v in extra.items()}})
    code = None
    try:
        server.start()
        results = asyncio.run(run(args, server))
    finally:
        code = server.stop()
        log = server.log_summary()
        server.log_path.unlink(missing_ok=True)
    checks = targets(results)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps({
        "benchmark": "messaging", "command": " ".join(["python", "bench/messaging.py", *sys.argv[1:]]),
        "machine": info,
        "sizes": {"channels": args.channels, "members_per_channel": args.members, "rate_per_s": args.rate,
                  "seconds": args.seconds, "warmup": args.warmup, "receipt_interval": args.receipt_interval,
                  "generator_processes": args.workers},
        **results,
        "server": {"exit_code": code, "log": log},
        "targets": checks,
        "met": bool(checks) and all(t["met"] for t in checks.values()),
        "wall_s": round(time.perf_counter() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
