"""Dispatch benchmark through HTTP against a running `icp serve`: recommendation latency and
dispatch commands/s, on a synthetic city of ≥ 100,000 junctions with 2,000 units.

    python bench/dispatch.py [--nodes 100000] [--units 2000] [--incidents 300] [--concurrency 16]

The server is a separate process (embedded PostgreSQL, fsync on) on a private data directory;
this process is the client. Prints one JSON document:

- recommendation_ms   p50/p99/max client-side latency of POST /incidents/{id}/recommendation,
                      one request at a time (target p99 ≤ 25 ms)
- dispatch_per_s      POST /incidents/{id}/assignments (one unit each) completed per second with
                      `--concurrency` clients in parallel
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Api, Server, gather_limited
from dispatch.intervals import percentile
from geo.synthetic_city import CityPlan, synthetic_city
from icp.geography import install_network

CAPABILITY_MIX = [["ENGINE"]] * 6 + [["LADDER"]] + [["BLS"]] * 5 + [["ALS", "BLS"]] * 3 + [["PATROL"]] * 5 \
    + [["RESCUE"], ["COMMAND"], ["TANKER"], ["HAZMAT"], ["UTILITY"]]
AGENCY_OF = {"ENGINE": "fire", "LADDER": "fire", "RESCUE": "fire", "COMMAND": "fire", "TANKER": "fire",
             "HAZMAT": "fire", "BLS": "ems", "ALS": "ems", "PATROL": "police", "UTILITY": "utility"}
INCIDENT_TYPES = ["structure_fire", "medical_emergency", "cardiac_arrest", "traffic_collision", "gunshot"]


async def run(base: str, token: str, net: Any, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    min_lon, min_lat, max_lon, max_lat = net.bbox()
    box = [[min_lon, min_lat], [max_lon, min_lat], [max_lon, max_lat], [min_lon, max_lat], [min_lon, min_lat]]

    def somewhere() -> dict[str, float]:
        node = rng.randrange(net.node_count)
        return {"lat": float(net.node_lat[node]), "lon": float(net.node_lon[node])}

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
        api = Api(http, base, token)
        started = time.perf_counter()
        for agency in ("fire", "ems", "police", "utility"):
            await api.call("POST", "/api/v1/agencies", {"id": agency, "name": agency.title(), "kind": agency})
            await api.call("POST", f"/api/v1/agencies/{agency}/areas?kind=jurisdiction", {
                "type": "Feature", "id": f"{agency}-city", "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [box]}})
        stations = [(f"st-{a}-{i}", a) for a in ("fire", "ems", "police", "utility") for i in range(12)]
        await gather_limited(args.concurrency, [api.call("POST", "/api/v1/stations", {
            "id": sid, "agency_id": agency, "name": sid, "location": somewhere()}) for sid, agency in stations])
        units = []
        for i in range(args.units):
            caps = CAPABILITY_MIX[i % len(CAPABILITY_MIX)]
            agency = AGENCY_OF[caps[0]]
            units.append({"id": f"U{i:05d}", "call_sign": f"{caps[0][:1]}{i}", "agency_id": agency,
                          "capabilities": caps, "station_id": f"st-{agency}-{i % 12}", "staffing": 2})
        await gather_limited(args.concurrency, [api.call("POST", "/api/v1/units", u) for u in units])
        now = datetime.now(UTC).isoformat()
        await gather_limited(args.concurrency, [
            api.call("PATCH", f"/api/v1/units/{u['id']}", {"position": {**somewhere(), "time": now}}) for u in units])
        incidents = await gather_limited(args.concurrency, [api.call("POST", "/api/v1/incidents", {
            "type": INCIDENT_TYPES[i % len(INCIDENT_TYPES)], "priority": 1 + i % 3, "location": somewhere()})
            for i in range(args.incidents)])
        seed_s = time.perf_counter() - started

        # Recommendation latency, one at a time (what a dispatcher waits for).
        for incident in incidents[:20]:  # warm-up
            await api.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation")
        latencies, picks, shortfalls = [], 0, 0
        for round_ in range(args.rounds):
            for incident in incidents:
                t = time.perf_counter()
                rec = await api.call("POST", f"/api/v1/incidents/{incident['id']}/recommendation")
                latencies.append((time.perf_counter() - t) * 1000)
                if round_ == 0:
                    picks += len(rec["picks"])
                    shortfalls += len(rec["shortfalls"])

        # Dispatch throughput: each incident gets one distinct available unit.
        free = [u["id"] for u in units]
        rng.shuffle(free)
        jobs = list(zip((i["id"] for i in incidents), free, strict=False))
        t = time.perf_counter()
        results = await gather_limited(args.concurrency, [
            api.call("POST", f"/api/v1/incidents/{iid}/assignments", {"units": [uid]}) for iid, uid in jobs])
        dispatch_s = time.perf_counter() - t
        assert all(r["status"] == "dispatched" for r in results)

    return {
        "recommendation_ms": {"requests": len(latencies), "p50": round(statistics.median(latencies), 2),
                              "p99": round(percentile(latencies, 99) or 0.0, 2), "max": round(max(latencies), 2),
                              "mean_picks": round(picks / len(incidents), 2),
                              "mean_shortfalls": round(shortfalls / len(incidents), 2)},
        "dispatch": {"commands": len(jobs), "concurrency": args.concurrency, "seconds": round(dispatch_s, 2),
                     "per_s": round(len(jobs) / dispatch_s, 1)},
        "seeding_s": round(seed_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--incidents", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="recommendation passes over all incidents")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    net = synthetic_city(CityPlan.for_nodes(args.nodes, seed=args.seed))
    with Server("dispatch", settings={"ICP_MAX_POSITION_AGE_S": "86400"},
                prepare=lambda data: install_network(net, data, source=f"synthetic-{args.nodes}")) as server:
        figures = asyncio.run(run(server.base, server.admin, net, args))
    result = {
        "benchmark": "dispatch",
        "city": {"junctions": net.node_count, "links": net.link_count, "units": args.units,
                 "incidents": args.incidents},
        "machine": {"cpus": os.cpu_count()},
        **figures,
        "targets": {"recommendation_p99_ms": {"target": 25, "measured": figures["recommendation_ms"]["p99"],
                                              "met": figures["recommendation_ms"]["p99"] <= 25}},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
