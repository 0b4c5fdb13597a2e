"""Running the demo: a node on a fresh database, the city seeded, crews and sensors at work.

The demo keeps to its own data directory (``ICP_DATA_DIR/demo``) and, with the embedded
PostgreSQL, its own database (``icp_demo``), made afresh on every start so that ``--seed`` replays
the same city; it never touches the data of ``icp serve``. Given an external database
(``ICP_DATABASE_URL``), it insists that the database holds no agencies yet.

Order of things: import the Helsinki roads (once; cached in the data directory), start the node
in this process, create the credentials directly in the database (an administrator's token to
seed with, the sensor key, the console users), seed the city over REST, print the URL and the
logins, then run the unit simulator, the sensor feed and the autopilot until ``duration`` passes
or SIGINT/SIGTERM arrives. Shutdown is the reverse: the clients stop first, then the node (which
closes WebSockets with 1001 and drains its writers), then the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
from aiohttp import web

from icp.app import create_app
from icp.auth import credentials
from icp.config import Settings
from icp.demo import city
from icp.demo.autopilot import Autopilot, AutopilotStats
from icp.demo.feed import FeedStats, SensorFeed
from icp.demo.rest import Rest
from icp.geography import import_roads, read_manifest
from icp.resources import resource_dir
from icp.simulate import CrewTiming, SimulationStats, simulate
from icp.store import database, migrations
from icp.store.embedded import EmbeddedCluster

log = logging.getLogger("icp.demo")

DEMO_DATABASE = "icp_demo"
EXTRACT = "helsinki-center.osm.pbf"
# Crews work quicker than real ones so that the city turns over within minutes.
DEMO_TIMING = CrewTiming(ack_s=(3.0, 10.0), turnout_s=(5.0, 20.0), on_scene_s=(60.0, 180.0), park_s=(20.0, 90.0),
                         cruise_m=(300.0, 1200.0))


class DemoError(RuntimeError):
    """The demo cannot start as asked; the message says why."""


@dataclass
class DemoOptions:
    seed: int = 0
    duration_s: float | None = None
    speed: float = 1.0
    alert_interval_s: float = 12.0
    dispatch_after_s: float = 20.0
    password: str | None = None
    feed: bool = True
    autopilot: bool = True
    simulate: bool = True


@dataclass
class DemoSummary:
    url: str = ""
    seeded: dict[str, int] = field(default_factory=dict)
    feed: FeedStats = field(default_factory=FeedStats)
    autopilot: AutopilotStats = field(default_factory=AutopilotStats)
    simulation: SimulationStats = field(default_factory=SimulationStats)
    incidents: int = 0
    dispatched_incidents: int = 0
    assignments: int = 0

    def to_json(self) -> dict[str, Any]:
        sim = asdict(self.simulation)
        sim["units"] = len(self.simulation.units)
        return {"url": self.url, "seeded": self.seeded, "feed": self.feed.to_json(),
                "autopilot": asdict(self.autopilot), "simulation": sim, "incidents": self.incidents,
                "dispatched_incidents": self.dispatched_incidents, "assignments": self.assignments}


def demo_settings(settings: Settings) -> Settings:
    """The demo's own data directory beside the node's (``…/demo``), with quick timers."""
    data_dir = settings.data_dir if settings.data_dir.name == "demo" else settings.data_dir / "demo"
    return settings.replace(data_dir=data_dir, event_poll_interval_s=min(settings.event_poll_interval_s, 0.5))


def ensure_roads(data_dir: Path) -> None:
    """Import the shipped Helsinki extract into ``data_dir/roads`` unless that very file is there."""
    pbf = resource_dir("data") / "osm" / EXTRACT
    manifest = read_manifest(data_dir)
    if manifest is not None and manifest.source == EXTRACT:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    log.info("importing the roads of %s", pbf.name)
    import_roads(pbf, data_dir)


@contextlib.asynccontextmanager
async def demo_database(settings: Settings) -> AsyncIterator[str]:
    """A migrated, empty database for the demo, held for the duration."""
    if settings.database_url:
        conn = await database.connect(settings.database_url)
        try:
            await migrations.migrate(conn)
            if await conn.fetchval("SELECT count(*) FROM agencies"):
                raise DemoError("the configured database already holds agencies; `icp demo` needs an empty one "
                                "(or no ICP_DATABASE_URL, to use its own embedded database)")
        finally:
            await conn.close()
        yield settings.database_url
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cluster = EmbeddedCluster(settings.pgdata)
    await asyncio.to_thread(cluster.hold)
    try:
        admin = await asyncpg.connect(cluster.url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
        finally:
            await admin.close()
        url = cluster.url(DEMO_DATABASE)
        conn = await database.connect(url)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await asyncio.to_thread(cluster.release)


@dataclass
class Credentials:
    admin: str
    sensor: str
    partners: dict[str, str]
    password: str


async def make_credentials(url: str, password: str) -> Credentials:
    conn = await database.connect(url)
    try:
        admin = await credentials.create_token(conn, "admin", name="icp demo: seeding and autopilot")
        sensor = await credentials.create_token(conn, "sensor", name="icp demo: sensor feed")
        partner = await credentials.create_token(conn, "dispatcher", agency="espoo-fire",
                                                 name="icp demo: neighbouring city's autopilot")
        for username, role, agency, _ in city.USERS:
            await credentials.create_user(conn, username, password, role, agency=agency)
    finally:
        await conn.close()
    return Credentials(admin.secret, sensor.secret, {"espoo-fire": partner.secret}, password)


def banner(url: str, password: str, out: TextIO) -> None:
    lines = [f"ICP demo city is running: {url}",
             f"  dispatcher login: dispatcher / {password}   ({city.USERS[0][3]})"]
    for username, _, _, who in city.USERS[1:]:
        lines.append(f"  also: {username} / {password}   ({who})")
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), file=out, flush=True)


async def run_demo(settings: Settings, options: DemoOptions, *, out: TextIO = sys.stdout,
                   summary: DemoSummary | None = None) -> DemoSummary:
    """Run the demo until ``options.duration_s`` passes or SIGINT/SIGTERM; returns what happened."""
    summary = summary if summary is not None else DemoSummary()
    settings = demo_settings(settings)
    await asyncio.to_thread(ensure_roads, settings.data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        async with demo_database(settings) as url:
            node = settings.replace(database_url=url)
            runner = web.AppRunner(create_app(node), handle_signals=False, access_log=None,
                                   shutdown_timeout=node.shutdown_timeout_s)
            await runner.setup()
            try:
                site = web.TCPSite(runner, node.host, node.port, reuse_port=node.reuse_port)
                try:
                    await site.start()
                except OSError as exc:
                    raise DemoError(f"cannot listen on {node.host}:{node.port}: {exc.strerror or exc}") from None
                host = "127.0.0.1" if node.host in ("0.0.0.0", "") else node.host
                base = f"http://{'[' + host + ']' if ':' in host else host}:{node.port}"
                summary.url = base + "/"
                await _live(base, url, options, summary, stop, out)
            finally:
                await runner.cleanup()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return summary


async def _live(base: str, url: str, options: DemoOptions, summary: DemoSummary, stop: asyncio.Event,
                out: TextIO) -> None:
    password = options.password or secrets.token_urlsafe(9)
    creds = await make_credentials(url, password)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        admin = Rest(session, base, creds.admin)
        summary.seeded = await city.seed(admin)
        banner(summary.url, password, out)
        tasks: list[asyncio.Task[Any]] = []
        if options.simulate:
            tasks.append(asyncio.create_task(simulate(
                base, creds.admin, len(city.UNITS), seed=options.seed, speed_factor=options.speed,
                timing=DEMO_TIMING, stats=summary.simulation), name="simulator"))
        if options.feed:
            feed = SensorFeed(Rest(session, base, creds.sensor), admin, seed=options.seed,
                              interval_s=options.alert_interval_s, stats=summary.feed)
            tasks.append(asyncio.create_task(feed.run(), name="sensor feed"))
        if options.autopilot:
            pilot = Autopilot(admin, {a: Rest(session, base, t) for a, t in creds.partners.items()},
                              dispatch_after_s=options.dispatch_after_s, stats=summary.autopilot)
            tasks.append(asyncio.create_task(pilot.run(), name="autopilot"))
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([waiter, *tasks], timeout=options.duration_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and not task.cancelled() and task.exception() is not None:
                    log.error("the demo's %s stopped: %r", task.get_name(), task.exception())
        finally:
            for task in (waiter, *tasks):
                task.cancel()
            await asyncio.gather(waiter, *tasks, return_exceptions=True)
        await _count(url, summary)


async def _count(url: str, summary: DemoSummary) -> None:
    conn = await database.connect(url)
    try:
        summary.incidents = await conn.fetchval("SELECT count(*) FROM incidents")
        summary.dispatched_incidents = await conn.fetchval(
            "SELECT count(DISTINCT incident_id) FROM assignments WHERE doc->>'dispatched_at' IS NOT NULL")
        summary.assignments = await conn.fetchval("SELECT count(*) FROM assignments")
    finally:
        await conn.close()


def print_summary(summary: DemoSummary, out: TextIO = sys.stdout) -> None:
    print(json.dumps(summary.to_json()), file=out, flush=True)
