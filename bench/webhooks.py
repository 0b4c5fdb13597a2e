"""Webhook delivery benchmark against a running `icp serve`: deliveries/s to local receivers and the
first-attempt latency after commit, with 10 healthy endpoints and 1 failing one.

    python bench/webhooks.py [--burst-events 1000] [--rate 50] [--seconds 10]

The server (embedded PostgreSQL, fsync on), the receivers and this client are separate processes.
Every event (a note on an incident) goes to all 11 endpoints of one agency; the healthy receivers
check each signature (HMAC, as a receiver must) and note the arrival time. Prints one JSON
document:

- throughput_deliveries_per_s  ``--burst-events`` events are committed while the endpoints are
                               paused, then all are resumed: healthy deliveries ÷ time from the
                               resume to the last arrival (target ≥ 1,000/s)
- latency_ms                   at a steady ``--rate`` events/s for ``--seconds``: arrival minus the
                               moment the event's POST was *sent* (an upper bound of "after commit"),
                               p50/p99/max over every healthy first attempt (target p99 ≤ 200 ms)
- failing_endpoint             requests the black-hole endpoint received (it never answers within
                               the 10 s timeout), to show it was being tried meanwhile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, free_port, gather_limited
from dispatch.intervals import percentile
from icp.webhooks import signing

HEALTHY = 10
# Notes spread over incidents as a busy centre's would be (an incident's notes are part of it, so
# one incident with thousands of notes would measure that, not the webhooks).
NOTES_PER_INCIDENT = 50


# -- the receivers (a process of their own) ---------------------------------------------------------

def receiver_main(port: int) -> None:
    secrets: dict[str, str] = {}
    arrivals: list[tuple[str, str, float]] = []
    state = {"failing": 0, "bad": 0}

    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        now = time.time()
        if name == "fail":
            state["failing"] += 1
            await asyncio.sleep(60)  # a black hole: the sender's timeout ends it
            return web.Response(status=504)
        try:
            signing.verify([secrets[name]], request.headers, body, now=int(now))
        except (KeyError, signing.SignatureError):
            state["bad"] += 1
            return web.Response(status=401)
        arrivals.append((name, json.loads(body)["data"].get("text", ""), now))
        return web.Response(status=204)

    async def configure(request: web.Request) -> web.Response:
        secrets.update(await request.json())
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, **state})

    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    app.router.add_post("/configure", configure)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the client -------------------------------------------------------------------------------------

async def run(server: Server, receivers: str, args: argparse.Namespace) -> dict[str, Any]:
    agency = server.token("agency", "--agency", "bench-fire")
    dispatcher = server.token("dispatcher", "--agency", "bench-fire")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(limit=64)) as http:
        admin = Api(http, server.base, server.admin)
        await admin.call("POST", "/api/v1/agencies", {"id": "bench-fire", "name": "Bench Fire", "kind": "fire"})
        hooks = Api(http, server.base, agency)
        made: dict[str, str] = {}
        endpoint_ids: list[str] = []
        for name in [str(i) for i in range(HEALTHY)] + ["fail"]:
            endpoint = await hooks.call("POST", "/api/v1/agencies/bench-fire/webhooks",
                                        {"url": f"{receivers}/hook/{name}", "events": ["incident.note_added"]})
            made[name] = endpoint["secret"]
            endpoint_ids.append(endpoint["id"])
        async with http.post(f"{receivers}/configure", json=made) as r:
            assert r.status == 204
        api = Api(http, server.base, dispatcher)
        incidents = [(await api.call("POST", "/api/v1/incidents", {
            "type": "structure_fire", "priority": 2, "location": {"lat": 60.17, "lon": 24.94}}))["id"]
            for _ in range((args.burst_events + args.rate * args.seconds) // NOTES_PER_INCIDENT + 1)]
        sent_at: dict[str, float] = {}  # note text → when its POST was sent
        counter = 0

        async def note() -> None:
            nonlocal counter
            counter += 1
            text = f"note {counter}"
            sent_at[text] = time.time()
            await api.call("POST", f"/api/v1/incidents/{incidents[counter // NOTES_PER_INCIDENT]}/notes",
                           {"text": text})

        # Steady rate first (the latency figure), on an idle system.
        steady_start = time.time()
        tasks = []
        for i in range(args.rate * args.seconds):
            target = steady_start + i / args.rate
            await asyncio.sleep(max(0.0, target - time.time()))
            tasks.append(asyncio.create_task(note()))
        await asyncio.gather(*tasks)
        steady_sent = dict(sent_at)
        await asyncio.sleep(2)
        # Then the burst (the throughput figure): the events are committed while the endpoints are
        # paused (deliveries queue up), then all are resumed at once and the queue drains.
        for endpoint_id in endpoint_ids:
            await hooks.call("PATCH", f"/api/v1/agencies/bench-fire/webhooks/{endpoint_id}", {"status": "paused"})
        posted = time.time()
        await gather_limited(32, [note() for _ in range(args.burst_events)])
        post_s = time.time() - posted
        await asyncio.sleep(2)  # fan-out done
        burst_start = time.time()
        for endpoint_id in endpoint_ids:
            await hooks.call("PATCH", f"/api/v1/agencies/bench-fire/webhooks/{endpoint_id}", {"status": "active"})
        expected = HEALTHY * args.burst_events
        deadline = time.time() + 120
        while True:
            async with http.get(f"{receivers}/stats") as r:
                stats = await r.json()
            burst = [a for a in stats["arrivals"] if a[2] >= burst_start]
            if len(burst) >= expected or time.time() > deadline:
                break
            await asyncio.sleep(0.2)
    latencies = [(t - steady_sent[text]) * 1000 for _, text, t in stats["arrivals"] if text in steady_sent]
    burst_end = max((a[2] for a in burst), default=burst_start)
    return {
        "endpoints": {"healthy": HEALTHY, "failing": 1},
        "throughput_deliveries_per_s": round(len(burst) / (burst_end - burst_start), 1),
        "burst": {"events": args.burst_events, "deliveries_expected": expected, "deliveries_seen": len(burst),
                  "drain_seconds": round(burst_end - burst_start, 2), "events_posted_in_s": round(post_s, 2)},
        "latency_ms": {"rate_events_per_s": args.rate, "deliveries_per_s": args.rate * HEALTHY,
                       "samples": len(latencies),
                       "p50": round(percentile(latencies, 50), 1) if latencies else None,
                       "p99": round(percentile(latencies, 99), 1) if latencies else None,
                       "max": round(max(latencies), 1) if latencies else None},
        "failing_endpoint_requests": stats["failing"],
        "bad_signatures": stats["bad"],
        "server_cpu_s": round(server.cpu_s(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst-events", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=50, help="events/s in the latency phase (x10 deliveries)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)  # internal: run the receivers
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver)
        return
    port = free_port()
    receivers = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    try:
        with Server("webhooks", settings={"ICP_WEBHOOK_ALLOW": "loopback"}) as server:
            result = asyncio.run(run(server, f"http://127.0.0.1:{port}", args))
    finally:
        receivers.kill()  # its black hole holds requests open: no graceful wait
        receivers.wait(timeout=10)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
