"""Media benchmark (issue 11): talkgroup listeners and recorded 1:1 calls on one `icp serve` node.

    python bench/media.py [--listeners 100] [--calls 25] [--seconds 15] [--workers 4]
    python bench/media.py --listeners 10 --calls 4 --seconds 5      # a quick run

Setup (over REST, as an administrator): one agency and as many units as the phases need, a token
per unit. The node offers host candidates on 127.0.0.1 (`media_host_addresses`), records every
call and transmission, and lets the floor be held for the whole run.

Phase `talkgroup`: `--listeners` field units (the SDK's `MediaUnitClient`, listen-only peers) in
`--workers` processes join the agency's talkgroup; one speaker in this process joins, takes the
floor and sends a tone in bursts (0.3 s loud, 0.7 s silent). Every listener notes when each burst
starts in what it receives; the latency of a burst is that time less the time the speaker's track
produced its first loud frame (time.monotonic: one clock for every process on the machine). It
includes both clients' codecs and jitter buffers; `added_vs_one_listener` subtracts the same
measurement with a single listener, which is what the number of listeners costs. Target: p99 added
latency ≤ 150 ms with ≥ 100 listeners.

Phase `calls`: `--calls` pairs of units call each other (ring, accept, both join with a tone) and
hold for `--seconds`; every party counts the audio frames it receives (50 a second when nothing is
lost). The calls are then hung up and their recordings counted. Target: ≥ 25 concurrent recorded
calls with every party receiving ≥ 90 % of its frames.

Figures (JSON on stdout): latencies, frame rates, the server's CPU (cores, and per stream), its
event-loop lag and mixer lag as the node measures them (`GET /api/v1/media/stats`), PostgreSQL's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, gather_limited, unit_tokens
from bench.gateway import CpuMeter, machine, ms_summary, settle

AGENCY = "bench"
TALKGROUP = f"agency:{AGENCY}"
LOUD = 0.5
THRESHOLD = 0.05
BURST_S = 0.3  # loud for this long ...
GAP_S = 0.7  # ... then silent for this long, so a late burst is never taken for the next one
TARGETS = {"talkgroup_listeners": 100, "added_p99_ms": 150, "recorded_calls": 25}


# -- worker processes -------------------------------------------------------------------------------

async def _worker(spec: dict[str, Any]) -> None:
    from icp.client.media import MediaUnitClient, ToneTrack
    from icp.media.ice import use_host_addresses

    use_host_addresses("127.0.0.1")
    url, mode = spec["url"], spec["mode"]
    clients = [MediaUnitClient(url, t, receipt_interval=None) for t in spec["tokens"]]
    for c in clients:
        c.start()
    await asyncio.gather(*(c.wait_connected(30) for c in clients))
    peers: list[Any] = []
    onsets: list[list[float]] = []
    if mode == "listen":
        for i, c in enumerate(clients):
            found: list[float] = []
            onsets.append(found)
            state = {"loud": False}

            def on_audio(at: float, frame: Any, found: list[float] = found, state: dict[str, bool] = state) -> None:
                from icp.client.media import level
                loud = level(frame) > THRESHOLD
                if loud and not state["loud"]:
                    found.append(at)
                state["loud"] = loud

            peer = await c.join(TALKGROUP, audio=None, timeout=60)
            peer.on_audio = on_audio
            peers.append(peer)
            if i % 10 == 9:
                await asyncio.sleep(0.05)
    else:  # calls: clients pair up, the first of each pair calls the second
        async def pair(a: MediaUnitClient, b: MediaUnitClient, b_unit: str) -> list[Any]:
            call = await a.call(f"unit:{b_unit}")
            await b.media_frame("rtc.ring", where={"call": call["id"]}, timeout=30)
            await b.accept(call["id"])
            return list(await asyncio.gather(a.join(call["room"], audio=ToneTrack(440), timeout=60),
                                             b.join(call["room"], audio=ToneTrack(660), timeout=60)))

        pairs = [(clients[i], clients[i + 1], spec["units"][i + 1]) for i in range(0, len(clients), 2)]
        for group in await gather_limited(4, [pair(a, b, u) for a, b, u in pairs]):
            peers += group
    print(json.dumps({"ready": len(peers)}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    marks: list[int] = []
    marked = stopped = time.monotonic()
    while line := (await reader.readline()).decode().strip():
        if line == "mark":
            marks, marked = [p.frames for p in peers], time.monotonic()
            print(json.dumps({"marked": marked}), flush=True)
        elif line == "stop":
            stopped = time.monotonic()
            break
    window = max(1e-3, stopped - marked)
    result: dict[str, Any] = {"rates": [(p.frames - (marks[i] if marks else 0)) / window for i, p in enumerate(peers)],
                              "onsets": onsets}
    if mode == "calls":
        for c in clients[::2]:
            for room in list(c.peers):
                with contextlib.suppress(Exception):
                    await c.hangup(room)
        await asyncio.sleep(1.0)
    print(json.dumps(result), flush=True)
    for c in clients:
        with contextlib.suppress(Exception):
            await c.close()


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", json.dumps(spec), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024)
        return cls(proc)

    async def line(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"a worker ended early (exit {await self.proc.wait()})")
        return dict(json.loads(raw))

    async def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 30)
        if self.proc.returncode is None:
            self.proc.kill()


def _clients_cpu(procs: list[Worker]) -> float:
    """CPU seconds of the client processes (the workers and this one)."""
    total = 0.0
    for pid in [os.getpid(), *(w.proc.pid for w in procs)]:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _split(items: list[Any], n: int, *, even: bool = False) -> list[list[Any]]:
    size = -(-len(items) // n)
    if even and size % 2:
        size += 1
    return [items[i:i + size] for i in range(0, len(items), size) if items[i:i + size]]


# -- phases ---------------------------------------------------------------------------------------------

async def _units(api: Api, prefix: str, n: int) -> tuple[list[str], list[str]]:
    ids = [f"{prefix}{i}" for i in range(n)]
    return ids, await unit_tokens(api, AGENCY, ids, concurrency=8, staffing=2)


async def talkgroup(server: Server, api: Api, listeners: int, seconds: float, workers: int, tag: str
                    ) -> dict[str, Any]:
    from icp.client.media import MediaUnitClient, ToneTrack
    from icp.media.ice import use_host_addresses

    use_host_addresses("127.0.0.1")
    _, tokens = await _units(api, f"L{tag}-", listeners)
    _, (speaker_token,) = await _units(api, f"S{tag}-", 1)
    started = time.monotonic()
    procs = [await Worker.start({"url": server.base, "mode": "listen", "tokens": part})
             for part in _split(tokens, workers)]
    ready = 0
    for w in procs:
        ready += (await w.line())["ready"]
    joined_s = time.monotonic() - started
    tone = ToneTrack(440, amplitude=0.0)
    onsets: list[float] = []
    previous = {"amp": 0.0}

    def sent(at: float, amplitude: float) -> None:
        if amplitude > 0 and previous["amp"] == 0:
            onsets.append(at)
        previous["amp"] = amplitude

    tone.on_sent = sent
    async with MediaUnitClient(server.base, speaker_token, receipt_interval=None) as speaker:
        await speaker.wait_connected(30)
        await speaker.join(TALKGROUP, audio=tone, timeout=60)
        granted = await speaker.request_floor(TALKGROUP)
        assert granted["outcome"] == "granted", granted
        await asyncio.sleep(1.0)
        await api.call("GET", "/api/v1/media/stats?reset=1")  # the loop's lag from here on
        meter, clients0 = CpuMeter(server), _clients_cpu(procs)
        for w in procs:
            await w.say("mark")
            await w.line()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tone.amplitude = LOUD
            await asyncio.sleep(BURST_S)
            tone.amplitude = 0.0
            await asyncio.sleep(GAP_S)
        cpu = meter.read()
        cpu["clients_cores"] = round((_clients_cpu(procs) - clients0) / cpu["seconds"], 3)
        stats = await api.call("GET", "/api/v1/media/stats")
        for w in procs:
            await w.say("stop")
        results = [await w.line() for w in procs]
        await speaker.release_floor(TALKGROUP)
    for w in procs:
        await w.finish()
    latencies, lost = [], 0
    heard = [o for r in results for o in r["onsets"]]
    for sent_at in onsets[:-1]:  # the last burst may be cut by the stop
        for found in heard:
            first = next((t for t in found if sent_at <= t < sent_at + BURST_S + GAP_S - 0.05), None)
            if first is None:
                lost += 1
            else:
                latencies.append((first - sent_at) * 1000)
    rates = [f for r in results for f in r["rates"]]
    room = next((r for r in stats["rooms"] if r["room"] == TALKGROUP), {})
    return {"listeners": ready, "joined_in_s": round(joined_s, 1), "bursts": max(0, len(onsets) - 1),
            "latency_ms": ms_summary(latencies), "bursts_lost": lost,
            "frames_per_listener_per_s": ms_summary(rates),
            "cpu": cpu, "server_cores_per_listener": round(cpu["server_cores"] / max(1, ready), 4),
            "server_loop_lag": stats["loop_lag"], "forwarded_packets": room.get("forwarded"),
            "dropped_to_listeners": room.get("dropped_out")}


async def calls(server: Server, api: Api, pairs: int, seconds: float, workers: int) -> dict[str, Any]:
    ids, tokens = await _units(api, "C-", 2 * pairs)
    started = time.monotonic()
    specs = list(zip(_split(ids, workers, even=True), _split(tokens, workers, even=True), strict=True))
    procs = [await Worker.start({"url": server.base, "mode": "calls", "tokens": t, "units": u}) for u, t in specs]
    ready = 0
    for w in procs:
        ready += (await w.line())["ready"]
    connected_s = time.monotonic() - started
    await asyncio.sleep(1.0)
    await api.call("GET", "/api/v1/media/stats?reset=1")
    meter, clients0 = CpuMeter(server), _clients_cpu(procs)
    for w in procs:
        await w.say("mark")
        await w.line()
    await asyncio.sleep(seconds)
    cpu = meter.read()
    cpu["clients_cores"] = round((_clients_cpu(procs) - clients0) / cpu["seconds"], 3)
    stats = await api.call("GET", "/api/v1/media/stats")
    for w in procs:
        await w.say("stop")
    results = [await w.line() for w in procs]
    for w in procs:
        await w.finish()
    rates = [f for r in results for f in r["rates"]]
    recordings: list[dict[str, Any]] = []
    for _ in range(50):
        recordings = [r for r in (await api.call("GET", "/api/v1/recordings?limit=500"))["recordings"]
                      if r["kind"] == "call"]
        if len(recordings) >= pairs:
            break
        await asyncio.sleep(0.2)
    good = sum(1 for rate in rates if rate >= 45)
    return {"calls": pairs, "parties": ready, "connected_in_s": round(connected_s, 1),
            "frames_per_party_per_s": ms_summary(rates), "parties_receiving_90pct": good,
            "recordings": len(recordings),
            "recording_duration_s": ms_summary([r["duration_s"] for r in recordings]),
            "cpu": cpu, "server_cores_per_stream": round(cpu["server_cores"] / max(1, 2 * pairs), 4),
            "server_loop_lag": stats["loop_lag"]}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = {"ICP_MEDIA_HOST_ADDRESSES": "127.0.0.1", "ICP_MEDIA_PTT_MAX_TALK_S": "3600",
                "ICP_MEDIA_MAX_PARTICIPANTS": str(max(32, args.listeners + 2))}
    out: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with Server("media", settings=settings, nofile=8192) as server:
        async with aiohttp.ClientSession() as http:
            api = Api(http, server.base, server.admin)
            await api.call("POST", "/api/v1/agencies", {"id": AGENCY, "name": "Bench", "kind": "fire"})
            await settle(server)
            if args.listeners:
                out["talkgroup_one_listener"] = await talkgroup(server, api, 1, min(args.seconds, 8), 1, "a")
                await settle(server)
                out["talkgroup"] = await talkgroup(server, api, args.listeners, args.seconds, args.workers, "b")
                one = out["talkgroup_one_listener"]["latency_ms"].get("p99")
                many = out["talkgroup"]["latency_ms"].get("p99")
                out["talkgroup"]["added_vs_one_listener_p99_ms"] = (round(many - one, 2)
                                                                    if one is not None and many is not None else None)
                await settle(server)
            if args.calls:
                out["calls"] = await calls(server, api, args.calls, args.seconds, args.workers)
    tg, cl = out.get("talkgroup", {}), out.get("calls", {})
    out["targets"] = {
        "talkgroup_listeners": {"target": TARGETS["talkgroup_listeners"], "measured": tg.get("listeners")},
        "added_p99_ms": {"target": TARGETS["added_p99_ms"], "measured": tg.get("added_vs_one_listener_p99_ms"),
                         "end_to_end_p99_ms": tg.get("latency_ms", {}).get("p99")},
        "recorded_calls": {"target": TARGETS["recorded_calls"], "measured": cl.get("calls"),
                           "recordings": cl.get("recordings"),
                           "parties_receiving_90pct": cl.get("parties_receiving_90pct")},
    }
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listeners", type=int, default=100)
    p.add_argument("--calls", type=int, default=25)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:
        asyncio.run(_worker(json.loads(arguments.worker)))
    else:
        print(json.dumps(asyncio.run(main(arguments)), indent=2))
