"""Console benchmark: the dispatcher console in headless Chromium while 1,000 units report every second.

    python bench/console.py [--units 1000] [--minutes 10] [--interval 1.0]

A server (embedded PostgreSQL, the Helsinki road network so the map draws real streets), one
agency with ``--units`` units, each on its own WebSocket in load-generator processes
(bench/gateway_worker.py) reporting a position every ``--interval`` seconds; Debian's Chromium
(Playwright, ``executable_path``; nothing downloaded) logged in as a dispatcher at 1366×768 with
the map showing every unit. Prints one JSON document:

- batch_ms       main-thread time per position batch: applying it (web/js/app.js onPositions)
                 plus the map frame drawn after it (web/js/perf.js), p50/p95/max over the run
                 (target p95 ≤ 16 ms: one frame at 60 Hz)
- handler_ms, draw_ms   the two parts on their own
- heap_mib       the page's JS heap after a forced collection, each minute; growth = last − first
                 sample after the first minute (target: no growth)
- dom_nodes      the document's node count at the same moments (a leak of elements shows here)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, unit_tokens
from bench.gateway import Workers
from dispatch.intervals import percentile
from icp.resources import resource_dir

AGENCY = "bench-fire"
PASSWORD = "bench-console-password"
CHROMIUM = os.environ.get("ICP_CHROMIUM", "/usr/bin/chromium")
# Central Helsinki, inside the shipped extract (south, west, height, width in degrees): every unit
# moves on streets the map draws, and the map (fitted to the units) shows them all.
BOX = (60.1625, 24.930, 0.012, 0.022)


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(values), "p50": round(statistics.median(values), 2), "p95": round(percentile(values, 95), 2),
            "max": round(max(values), 2)}


def prepare(data: Path) -> None:
    """The Helsinki extract as the road network, as `icp demo` uses it."""
    extract = next(resource_dir("data").rglob("*.osm.pbf"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICP_")} | {"ICP_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "-m", "icp.cli", "roads", "import", str(extract)], env=env, check=True,
                   capture_output=True, timeout=600)


async def setup(server: Server, args: argparse.Namespace, http: aiohttp.ClientSession) -> list[str]:
    admin = Api(http, server.base, server.admin)
    await admin.call("POST", "/api/v1/agencies", {"id": AGENCY, "name": "Bench Fire", "kind": "fire"})
    tokens = await unit_tokens(admin, AGENCY, [f"U{i:04d}" for i in range(args.units)])
    await asyncio.to_thread(
        subprocess.run, [*server.icp, "user", "create", "--username", "bench", "--role", "dispatcher", "--agency",
                         AGENCY, "--password-stdin"], input=PASSWORD, env=server.env, text=True, check=True,
        capture_output=True, timeout=120)
    return tokens


def browse(base: str, seconds: float, stop_at: float, out: dict[str, Any]) -> None:
    """Run in a thread: Playwright's sync API drives Chromium while the event loop feeds the load."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(base + "/")
            page.fill("#login-username", "bench")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("#conn-status.online")
            cdp = context.new_cdp_session(page)
            cdp.send("HeapProfiler.enable")
            samples: list[dict[str, float]] = []
            started = time.time()
            next_sample = started
            while time.time() < stop_at:
                if time.time() >= next_sample:
                    cdp.send("HeapProfiler.collectGarbage")
                    heap = cdp.send("Runtime.getHeapUsage")
                    nodes = page.evaluate("document.getElementsByTagName('*').length")
                    samples.append({"t_s": round(time.time() - started, 1),
                                    "heap_mib": round(heap["usedSize"] / 2**20, 2), "dom_nodes": nodes})
                    next_sample += 60
                time.sleep(1)
            perf = page.evaluate("({batches: window.__icpPerf.batches, handlers: window.__icpPerf.handlers,"
                                 " draws: window.__icpPerf.draws})")
            out.update(samples=samples, perf=perf)
        finally:
            browser.close()


async def run(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        tokens = await setup(server, args, http)
    workers = Workers()
    await workers.start(2, server.port, args.units + 1024)
    try:
        connected = await workers.connect(tokens, [f"U{i:04d}" for i in range(args.units)])
        seconds = args.minutes * 60
        start = time.time() + 2
        job = asyncio.ensure_future(workers.each(lambda i: {
            "cmd": "positions", "start": start, "warmup": 0, "seconds": seconds + 30, "interval": args.interval,
            "max_outstanding": 2, "seed": i, "box": BOX}, timeout=seconds + 300))
        browser: dict[str, Any] = {}
        await asyncio.sleep(5)  # positions flowing before the console opens
        await asyncio.to_thread(browse, server.base, seconds, time.time() + seconds, browser)
        parts = await job
    finally:
        for proc in workers.procs:
            proc.kill()
    perf = browser["perf"]
    samples = browser["samples"]
    after_first = [s for s in samples if s["t_s"] >= 60] or samples
    growth = round(after_first[-1]["heap_mib"] - after_first[0]["heap_mib"], 2) if after_first else None
    accepted = sum(p["accepted_in_window"] for p in parts)
    return {
        "units": args.units, "interval_s": args.interval, "minutes": args.minutes,
        "connected": connected["connected"], "positions_accepted_per_s": round(accepted / (seconds + 30), 1),
        "batch_ms": summary(perf["batches"]), "handler_ms": summary(perf["handlers"]),
        "draw_ms": summary(perf["draws"]),
        "heap_mib": samples, "heap_growth_mib_after_first_minute": growth,
        "targets": {"batch_p95_ms": {"target": 16, "measured": summary(perf["batches"])["p95"]},
                    "heap_growth": {"target": "none", "measured_mib": growth}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    with Server("console", prepare=prepare, nofile=args.units + 4096) as server:
        result = asyncio.run(run(server, args))
    result["machine"] = machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
