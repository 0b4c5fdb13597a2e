"""The `icp` command line: serve, demo, migrate, token, user, audit, db."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from icp.config import ConfigError, Settings, load_settings
from icp.store import database, migrations
from icp.store.embedded import EmbeddedCluster, EmbeddedError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command failed for a reason the operator can act on; printed without a traceback."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "database_url", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_migrate", False):
        overrides["auto_migrate"] = False
    return load_settings(**overrides)


def _with_database(
    args: argparse.Namespace, action: Callable[[asyncpg.Connection, Settings], Awaitable[int]]
) -> int:
    """Run ``action`` on the configured database (holding the embedded cluster meanwhile),
    applying pending migrations first unless --no-migrate."""
    settings = _settings(args)

    async def run(url: str) -> int:
        conn = await database.connect(url)
        try:
            if settings.auto_migrate:
                await migrations.migrate(conn)
            return await action(conn, settings)
        finally:
            await conn.close()

    with database.database_url(settings) as url:
        return asyncio.run(run(url))


# -- commands --------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from icp.server import serve

    serve(_settings(args))
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    args.no_migrate = True  # this command reports what it applies itself

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        applied = await migrations.migrate(conn)
        if applied:
            for m in applied:
                print(f"applied {m.label}")
        else:
            print("the database is up to date")
        return EXIT_OK

    return _with_database(args, action)


def cmd_token_create(args: argparse.Namespace) -> int:
    from icp.auth import credentials

    expires_in = credentials.parse_duration(args.expires_in) if args.expires_in else None

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        issued = await credentials.create_token(
            conn, args.role, agency=args.agency, unit=args.unit, name=args.name or "",
            expires_in=expires_in, source=args.source,
        )
        print(issued.secret)
        note = f"token {issued.id} ({args.role})"
        if issued.expires_at:
            note += f", expires {issued.expires_at.isoformat(timespec='seconds')}"
        print(f"{note}; it is shown only once", file=sys.stderr)
        return EXIT_OK

    return _with_database(args, action)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from icp.auth import credentials

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        if not await credentials.revoke_token(conn, args.id):
            raise CommandError(f"no active token with id {args.id}")
        print(f"token {args.id} revoked")
        return EXIT_OK

    return _with_database(args, action)


def cmd_user_create(args: argparse.Namespace) -> int:
    from icp.auth import credentials

    if not args.password_stdin:
        raise CommandError("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        user_id = await credentials.create_user(conn, args.username, password, args.role, agency=args.agency)
        print(f"user {args.username} created (id {user_id}, role {args.role})")
        return EXIT_OK

    return _with_database(args, action)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from icp.store import eventlog

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        result = await eventlog.verify(conn)
        if result.ok:
            print(f"ok: {result.checked} events, chain intact; head seq {result.head_seq} "
                  f"hash {result.head_hash.hex()}")
            return EXIT_OK
        print(f"BROKEN at seq {result.broken_seq}: {result.reason} "
              f"({result.checked} events before it are intact)")
        return EXIT_FAILURE

    return _with_database(args, action)


def cmd_roads_import(args: argparse.Namespace) -> int:
    from geo.road_graph import RoadNetworkError
    from icp.geography import ROADS_IMPORTED, import_roads
    from icp.store import eventlog

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        try:
            manifest = await asyncio.to_thread(import_roads, Path(args.file), settings.data_dir)
        except (RoadNetworkError, OSError) as exc:
            raise CommandError(f"cannot import {args.file}: {exc}") from None
        async with conn.transaction():  # on the record, and a wake-up for running nodes to reload
            await eventlog.append(conn, [eventlog.NewEvent(ROADS_IMPORTED, "roads", manifest.to_json())])
        print(f"imported {manifest.source}: {manifest.nodes} junctions, {manifest.links} road links, "
              f"{manifest.addresses} addresses → {settings.data_dir / 'roads'}")
        return EXIT_OK

    return _with_database(args, action)


def cmd_areas_import(args: argparse.Namespace) -> int:
    from geo.geojson import GeometryError
    from icp.geography import GeographyError, parse_area_file, store_areas

    async def action(conn: asyncpg.Connection, settings: Settings) -> int:
        try:
            document = parse_area_file(Path(args.file))
            areas, warnings, _ = await store_areas(conn, document, agency=args.agency, kind=args.kind,
                                                   repair=args.repair)
        except (GeometryError, GeographyError, OSError) as exc:
            raise CommandError(f"{args.file}: {exc}") from None
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"imported {len(areas)} area(s) for agency {args.agency}: {', '.join(a.id for a in areas)}")
        return EXIT_OK

    return _with_database(args, action)


def cmd_simulate(args: argparse.Namespace) -> int:
    from icp.simulate import SimulationStats, simulate

    stats = SimulationStats()  # read after Ctrl-C too
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulate(args.url, args.token, args.units, seed=args.seed, speed_factor=args.speed,
                             duration=args.duration, stats=stats))
    print(json.dumps(dataclasses.asdict(stats)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from icp.demo.run import DemoError, DemoOptions, DemoSummary, print_summary, run_demo

    options = DemoOptions(seed=args.seed, duration_s=args.duration, speed=args.speed,
                          alert_interval_s=args.alert_interval, dispatch_after_s=args.dispatch_after,
                          password=args.password, feed=not args.no_feed, autopilot=not args.no_autopilot)
    summary = DemoSummary()  # filled while it runs, printed however it ends
    try:
        asyncio.run(run_demo(_settings(args), options, summary=summary))
    except DemoError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    print_summary(summary)
    return EXIT_OK


def cmd_db_url(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.database_url:
        print(settings.database_url)
        return EXIT_OK
    cluster = EmbeddedCluster(settings.pgdata)
    print(cluster.url())
    if not cluster.is_running():
        print("(the embedded cluster is not running now; `icp serve` starts it)", file=sys.stderr)
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (ICP_DATA_DIR)")
    p.add_argument("--database-url", help="external PostgreSQL URL (ICP_DATABASE_URL)")
    p.add_argument("--no-migrate", action="store_true",
                   help="do not apply pending migrations first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icp",
        description="ICP — Integrated Communications Platform, an emergency dispatch server. "
        "Settings come from ICP_* environment variables and the TOML file named by ICP_CONFIG.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="run a node (starts the embedded PostgreSQL when no "
                       "ICP_DATABASE_URL is set)", description="Run an ICP node.")
    _common(p)
    p.add_argument("--host", help="listen address (ICP_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (ICP_PORT, default 8080)")
    p.add_argument("--workers", type=int, help="node processes on this address, one per core (ICP_WORKERS, "
                   "default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending migrations",
                       description="Apply pending migrations to the configured database.")
    _common(p)
    p.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="bearer tokens", description="Manage bearer tokens.")
    token_sub = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = token_sub.add_parser("create", help="create a token and print it (once)",
                             description="Create a bearer token; it is printed once on stdout.")
    _common(p)
    p.add_argument("--role", required=True,
                   help="admin, supervisor, dispatcher, unit, agency or sensor")
    p.add_argument("--agency", help="bind the token to an agency id")
    p.add_argument("--unit", help="bind the token to a unit id")
    p.add_argument("--name", help="a label for the token (who or what holds it)")
    p.add_argument("--source", help="bind a sensor key to a sensor network: its native alerts must name "
                   "this source, and its SensorThings observations are filed under it")
    p.add_argument("--expires-in", help="lifetime such as 3600, 30m, 12h or 90d (default: none)")
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser("revoke", help="revoke a token by id", description="Revoke a token.")
    _common(p)
    p.add_argument("id", type=int, help="the token id printed when it was created")
    p.set_defaults(func=cmd_token_revoke)

    user = sub.add_parser("user", help="console users", description="Manage console users.")
    user_sub = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = user_sub.add_parser("create", help="create a user",
                            description="Create a console user; the password is read from stdin.")
    _common(p)
    p.add_argument("--username", required=True)
    p.add_argument("--role", required=True,
                   help="admin, supervisor, dispatcher, unit, agency or sensor")
    p.add_argument("--agency", help="the user's agency id")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_user_create)

    audit = sub.add_parser("audit", help="the event log's hash chain",
                           description="Audit the event log.")
    audit_sub = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = audit_sub.add_parser("verify", help="verify the hash chain; exit 1 at the first break",
                             description="Verify the event log's hash chain from the first event.")
    _common(p)
    p.set_defaults(func=cmd_audit_verify)

    roads = sub.add_parser("roads", help="the road network", description="The road network.")
    roads_sub = roads.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = roads_sub.add_parser(
        "import", help="build the road network and gazetteer from an OpenStreetMap extract",
        description="Build the road network (travel times, routes) and the offline gazetteer "
        "(geocoding) from an OpenStreetMap .osm.pbf extract into ICP_DATA_DIR/roads. Running "
        "nodes on this data directory reload them.")
    _common(p)
    p.add_argument("file", help="an OpenStreetMap extract (.osm.pbf)")
    p.set_defaults(func=cmd_roads_import)

    areas = sub.add_parser("areas", help="jurisdictions, zones, beats, geofences",
                           description="Agency areas.")
    areas_sub = areas.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = areas_sub.add_parser(
        "import", help="import areas from a GeoJSON Feature or FeatureCollection",
        description="Import polygons from GeoJSON ([lon, lat]) as areas of an agency. All or "
        "nothing: the first bad feature stops the import and names it.")
    _common(p)
    p.add_argument("file", help="a GeoJSON file")
    p.add_argument("--agency", required=True, help="the agency the areas belong to")
    p.add_argument("--kind", required=True, choices=["jurisdiction", "zone", "beat", "geofence"])
    p.add_argument("--repair", action="store_true",
                   help="repair invalid (e.g. self-intersecting) polygons instead of refusing them; "
                   "each repair is reported")
    p.set_defaults(func=cmd_areas_import)

    p = sub.add_parser(
        "simulate", help="drive the server's units with simulated field crews",
        description="Connect N simulated field units to a running server: they report positions while "
        "moving along real roads, acknowledge assignments, drive there, arrive and clear. The token must be "
        "an administrator's (the simulator mints a unit token for each unit).")
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", required=True, help="an administrator's bearer token")
    p.add_argument("--units", type=int, default=10, help="how many units to drive (in id order)")
    p.add_argument("--seed", type=int, default=0, help="makes the crews' choices repeatable")
    p.add_argument("--speed", type=float, default=1.0, help="time factor (2 = twice as fast as real time)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "demo", help="serve a live demo city: Helsinki roads, agencies, ~30 units, sensors and alerts",
        description="Start a node on a fresh demo database (in ICP_DATA_DIR/demo), seed the Helsinki demo city "
        "(fire, EMS, police, utilities and a neighbouring city's fire service for mutual aid, areas, stations, "
        "units, sensors), and run simulated crews, a sensor feed and an autopilot dispatcher so that the city "
        "lives on its own. Prints the console's URL and logins; Ctrl-C stops everything.")
    _common(p)
    p.add_argument("--host", help="listen address (ICP_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (ICP_PORT, default 8080)")
    p.add_argument("--seed", type=int, default=0, help="makes the city's story repeatable (default 0)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--speed", type=float, default=1.0, help="crews' time factor (2 = twice as fast)")
    p.add_argument("--alert-interval", type=float, default=12.0, help="mean seconds between sensor scenarios")
    p.add_argument("--dispatch-after", type=float, default=20.0,
                   help="the autopilot dispatches incidents still pending after this many seconds")
    p.add_argument("--password", help="the console users' password (default: a random one, printed)")
    p.add_argument("--no-feed", action="store_true", help="no sensor feed (alerts come only from you)")
    p.add_argument("--no-autopilot", action="store_true", help="no automatic dispatching, answering or closing")
    p.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="the database", description="Database information.")
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = db_sub.add_parser("url", help="print the connection URL of the database in use",
                          description="Print the connection URL of the database in use.")
    _common(p)
    p.set_defaults(func=cmd_db_url)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (CommandError, ConfigError, EmbeddedError, migrations.MigrationError) as exc:
        print(f"icp: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # credential and duration validation
        print(f"icp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"icp: error: database: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
