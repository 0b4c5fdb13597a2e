"""Benchmark of the road engine: one-to-many ETAs on a 100,000-node city, against pgRouting/PostGIS.

    bash bench/pgrouting_setup.sh      # once: PostgreSQL 15 + PostGIS + pgRouting on 127.0.0.1
    python bench/geo.py                # prints one JSON document

Measures, on a synthetic city of at least ``--nodes`` junctions with ``--units`` units at random
positions: ICP's one-to-many ETA (one incident to every unit, one bounded search) at p50/p99 over
``--incidents`` random incidents; the graph's array memory; the cache's save and load time. In the
same run, the same graph is loaded into PostgreSQL and the same question is asked of pgRouting
(``pgr_dijkstraCost`` one-to-many on the reversed graph, units and incident at their nearest
junctions) and of PostGIS
(straight-line 10 nearest units through a GiST index). On the Helsinki extract it counts how often
the straight-line nearest unit is not the fastest one. Without a reachable PostgreSQL with
pgRouting, the JSON says so and ICP's own figures are still printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from geo.coords import Point  # noqa: E402
from geo.distance import haversine_m  # noqa: E402
from geo.road_graph import RoadNetwork  # noqa: E402
from geo.synthetic_city import CityPlan, synthetic_city  # noqa: E402
from geo.travel import RoadTimer  # noqa: E402

HELSINKI = REPO / "data" / "osm" / "helsinki-center.osm.pbf"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:55432/icpbench"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": len(ms),
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_points(
    rng: np.random.Generator, bbox: tuple[float, float, float, float], n: int
) -> tuple[np.ndarray, np.ndarray]:
    min_lon, min_lat, max_lon, max_lat = bbox
    return rng.uniform(min_lat, max_lat, n), rng.uniform(min_lon, max_lon, n)


def bench_icp(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    out: dict[str, Any] = {}
    started = time.perf_counter()
    net = synthetic_city(CityPlan.for_nodes(args.nodes, seed=args.seed))
    out["build_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    search = net.search
    out["search_graph_build_s"] = round(time.perf_counter() - started, 3)
    out["graph"] = {
        "nodes": net.node_count,
        "links": net.link_count,
        "directed_edges": net.edge_count,
        "search_edges": int(search.matrix.nnz) - 2,
        "array_bytes": net.array_bytes(),
        "array_mb": round(net.array_bytes() / 1e6, 2),
    }
    timer = RoadTimer(net)
    before = rss_bytes()
    started = time.perf_counter()
    _ = timer.snapper.tree
    out["snap_index_build_s"] = round(time.perf_counter() - started, 3)
    out["snap_index_rss_mb"] = round((rss_bytes() - before) / 1e6, 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "city.roads.npz"
        started = time.perf_counter()
        net.save(path)
        out["cache_save_s"] = round(time.perf_counter() - started, 3)
        out["cache_file_mb"] = round(path.stat().st_size / 1e6, 2)
        loads = []
        for _ in range(5):
            started = time.perf_counter()
            RoadNetwork.load(path)
            loads.append(time.perf_counter() - started)
        out["cache_load_s_median"] = round(float(np.median(loads)), 4)
        started = time.perf_counter()
        RoadNetwork.load(path).search  # noqa: B018 - what a restart pays before the first query
        out["cache_load_plus_search_graph_s"] = round(time.perf_counter() - started, 4)

    rng = np.random.default_rng(args.seed + 1)
    bbox = net.bbox()
    ulat, ulon = random_points(rng, bbox, args.units)
    started = time.perf_counter()
    snaps = timer.snapper.snap_many(ulat, ulon, timer.max_snap_m)
    out["snap_units_cold_ms"] = round((time.perf_counter() - started) * 1000, 2)
    timer.snap_origins(ulat, ulon)  # fills the per-position cache
    started = time.perf_counter()
    timer.snap_origins(ulat, ulon)
    out["snap_units_cached_ms"] = round((time.perf_counter() - started) * 1000, 2)

    ilat, ilon = random_points(rng, bbox, args.incidents)
    incidents = [Point(lat=float(a), lon=float(b)) for a, b in zip(ilat, ilon, strict=True)]
    units = [Point(lat=float(a), lon=float(b)) for a, b in zip(ulat, ulon, strict=True)]
    core, full, in_range = [], [], []
    for target in incidents[:5]:  # warm-up
        timer.estimate(target, ulat, ulon, args.max_seconds, snaps)
    for target in incidents:
        started = time.perf_counter()
        est = timer.estimate(target, ulat, ulon, args.max_seconds, snaps)
        core.append(time.perf_counter() - started)
        in_range.append(float((est.eta_s <= args.max_seconds).mean()))
        started = time.perf_counter()
        timer.one_to_many(target, units, args.max_seconds)
        full.append(time.perf_counter() - started)
    out["one_to_many"] = {
        "units": args.units,
        "max_seconds": args.max_seconds,
        "mean_share_of_units_in_range": round(float(np.mean(in_range)), 3),
        "vectorised_core": percentiles(core),
        "protocol_call_incl_snap_cache_and_objects": percentiles(full),
    }
    unbounded = []
    for target in incidents[:50]:
        started = time.perf_counter()
        timer.estimate(target, ulat, ulon, 24 * 3600.0, snaps)
        unbounded.append(time.perf_counter() - started)
    out["one_to_many_whole_city_24h_bound"] = percentiles(unbounded)
    state = {
        "net": net,
        "timer": timer,
        "snaps": snaps,
        "ulat": ulat,
        "ulon": ulon,
        "incidents": incidents,
    }
    return out, state


async def bench_postgres(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    try:
        import asyncpg
    except ImportError:
        return {"available": False, "reason": "asyncpg is not installed"}
    try:
        conn = await asyncpg.connect(args.pg_dsn, timeout=5)
    except Exception as e:  # any failure means "not available", said in the JSON
        return {
            "available": False,
            "reason": f"cannot connect to {args.pg_dsn}: {e!r}; run bench/pgrouting_setup.sh",
        }
    out: dict[str, Any] = {"available": True}
    try:
        versions = await conn.fetchrow(
            "SELECT version() AS pg, postgis_full_version() AS postgis, pgr_version() AS pgr"
        )
        out["versions"] = {
            "postgresql": versions["pg"].split(",")[0],
            "postgis": versions["postgis"].split('"')[1],
            "pgrouting": versions["pgr"],
        }
    except Exception as e:
        await conn.close()
        return {"available": False, "reason": f"PostGIS/pgRouting missing: {e!r}"}
    try:
        out.update(await _pg_queries(conn, args, state))
    finally:
        await conn.close()
    return out


async def _pg_queries(conn: Any, args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    net: RoadNetwork = state["net"]
    timer: RoadTimer = state["timer"]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    await conn.execute(
        """
        DROP TABLE IF EXISTS bench_edges, bench_units;
        CREATE UNLOGGED TABLE bench_edges (
            id bigint PRIMARY KEY, source bigint, target bigint, cost float8, reverse_cost float8);
        CREATE UNLOGGED TABLE bench_units (id int PRIMARY KEY, geom geometry(Point, 4326));
        """
    )
    fwd = np.where(np.isfinite(net.link_fwd_s), net.link_fwd_s, -1.0).astype(float)
    bwd = np.where(np.isfinite(net.link_bwd_s), net.link_bwd_s, -1.0).astype(float)
    records = list(
        zip(
            range(net.link_count),
            net.link_u.tolist(),
            net.link_v.tolist(),
            fwd.tolist(),
            bwd.tolist(),
            strict=True,
        )
    )
    await conn.copy_records_to_table("bench_edges", records=records)
    ulat, ulon = state["ulat"], state["ulon"]
    await conn.executemany(
        "INSERT INTO bench_units VALUES ($1, ST_SetSRID(ST_MakePoint($2, $3), 4326))",
        [(i, float(lo), float(la)) for i, (la, lo) in enumerate(zip(ulat, ulon, strict=True))],
    )
    await conn.execute(
        "CREATE INDEX bench_units_geom ON bench_units USING gist (geom);"
        "ANALYZE bench_edges; ANALYZE bench_units;"
    )
    out["load_s"] = round(time.perf_counter() - started, 2)

    # pgRouting works on vertices: put each unit and incident at the nearer end of its link.
    snaps = state["snaps"]
    unit_nodes = np.where(
        snaps.fraction < 0.5, net.link_u[snaps.link], net.link_v[snaps.link]
    ).astype(np.int64)
    incidents: list[Point] = state["incidents"][: args.pg_incidents]
    # One-to-many on the reversed graph (source and target swapped): one Dijkstra from the
    # incident, as ICP does. (pgRouting's many-to-one form runs one search per unit: ~15 s here.)
    sql = (
        "SELECT end_vid AS unit, agg_cost FROM pgr_dijkstraCost("
        "'SELECT id, target AS source, source AS target, cost, reverse_cost FROM bench_edges', "
        "$1::bigint, $2::bigint[], directed => true)"
    )
    unique_units = sorted(set(unit_nodes.tolist()))
    node_lat = net.node_lat[unit_nodes]
    node_lon = net.node_lon[unit_nodes]
    pgr_times, icp_times, worst_diff = [], [], 0.0
    for target in incidents:
        tsnap = timer.snapper.snap(target)
        assert tsnap is not None
        tnode = int(net.link_u[tsnap.link] if tsnap.fraction < 0.5 else net.link_v[tsnap.link])
        started = time.perf_counter()
        rows = await conn.fetch(sql, tnode, unique_units)
        pgr_times.append(time.perf_counter() - started)
        # ICP, same vertices, unbounded like pgRouting: the answers must agree.
        tpoint = net.node_point(tnode)
        started = time.perf_counter()
        est = timer.estimate(tpoint, node_lat, node_lon, 24 * 3600.0)
        icp_times.append(time.perf_counter() - started)
        pg_cost = {int(r["unit"]): float(r["agg_cost"]) for r in rows}
        for node, eta in zip(unit_nodes.tolist(), est.eta_s.tolist(), strict=True):
            if node == tnode:
                continue
            if node in pg_cost and np.isfinite(eta):
                worst_diff = max(worst_diff, abs(pg_cost[node] - eta))
    out["pgr_dijkstraCost_one_to_many_reversed"] = percentiles(pgr_times)
    out["icp_same_query_unbounded"] = percentiles(icp_times)
    out["max_abs_eta_difference_s"] = round(worst_diff, 3)

    knn_sql = (
        "SELECT id FROM bench_units ORDER BY geom <-> ST_SetSRID(ST_MakePoint($1, $2), 4326) "
        "LIMIT 10"
    )
    knn_times = []
    for target in state["incidents"]:
        started = time.perf_counter()
        await conn.fetch(knn_sql, target.lon, target.lat)
        knn_times.append(time.perf_counter() - started)
    out["postgis_knn_10_gist"] = percentiles(knn_times)
    await conn.execute("DROP TABLE IF EXISTS bench_edges, bench_units")
    return out


def bench_helsinki(args: argparse.Namespace) -> dict[str, Any]:
    net = RoadNetwork.from_pbf(HELSINKI)
    timer = RoadTimer(net)
    rng = np.random.default_rng(args.seed + 2)
    bbox = (24.9352, 60.1642, 24.9534, 60.1791)
    not_fastest, extra = 0, []
    trials = 0
    for _ in range(args.helsinki_incidents):
        ulat, ulon = random_points(rng, bbox, args.helsinki_units)
        tlat, tlon = random_points(rng, bbox, 1)
        target = Point(lat=float(tlat[0]), lon=float(tlon[0]))
        est = timer.estimate(target, ulat, ulon, 3600.0)
        if not est.by_road.all() or not np.isfinite(est.eta_s).any():
            continue
        trials += 1
        nearest = int(np.argmin(haversine_m(target, ulat, ulon)))
        fastest = int(np.argmin(est.eta_s))
        if est.eta_s[nearest] > est.eta_s[fastest] + 1e-6:
            not_fastest += 1
            extra.append(float(est.eta_s[nearest] - est.eta_s[fastest]))
    return {
        "units_per_incident": args.helsinki_units,
        "incidents": trials,
        "straight_line_nearest_is_not_fastest_share": round(not_fastest / max(trials, 1), 3),
        "extra_seconds_when_wrong_median": round(float(np.median(extra)), 1) if extra else 0.0,
        "extra_seconds_when_wrong_p90": round(float(np.percentile(extra, 90)), 1) if extra else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--incidents", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-dsn", default=os.environ.get("ICP_BENCH_PG_DSN", DEFAULT_DSN))
    parser.add_argument("--pg-incidents", type=int, default=10)
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL comparisons")
    parser.add_argument("--helsinki-incidents", type=int, default=1000)
    parser.add_argument("--helsinki-units", type=int, default=20)
    args = parser.parse_args()

    icp, state = bench_icp(args)
    report: dict[str, Any] = {"icp": icp}
    if args.no_pg:
        report["postgres"] = {"available": False, "reason": "--no-pg"}
    else:
        report["postgres"] = asyncio.run(bench_postgres(args, state))
    pg = report["postgres"]
    if pg.get("available"):
        icp_p50 = icp["one_to_many"]["vectorised_core"]["p50_ms"]
        report["ratios"] = {
            "pgrouting_p50_over_icp_same_query_p50": round(
                pg["pgr_dijkstraCost_one_to_many_reversed"]["p50_ms"]
                / pg["icp_same_query_unbounded"]["p50_ms"],
                1,
            ),
            "pgrouting_p50_over_icp_bounded_p50": round(
                pg["pgr_dijkstraCost_one_to_many_reversed"]["p50_ms"] / icp_p50, 1
            ),
            "postgis_knn_p50_over_icp_bounded_p50": round(
                pg["postgis_knn_10_gist"]["p50_ms"] / icp_p50, 2
            ),
        }
    report["helsinki"] = bench_helsinki(args)
    report["targets"] = {
        "one_to_many_p99_ms_at_most": 10.0,
        "graph_array_mb_at_most": 60.0,
        "met": icp["one_to_many"]["vectorised_core"]["p99_ms"] <= 10.0
        and icp["graph"]["array_mb"] <= 60.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
