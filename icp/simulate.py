"""Simulated field units: N units that drive real roads and work their assignments as crews do.

Each unit is a `FieldUnitClient` on its own link with its own token (minted with the
administrator's token given to `simulate`). An idle unit parks or cruises to a random place near
home; an assigned one acknowledges after a human-like delay, turns out, drives the road route to
the incident at the route's own speed, reports on scene and clears after a while. Positions go out
every ``report_every_s`` wall seconds. ``speed_factor`` compresses simulated time (2.0: everything
happens twice as fast, so reported speeds double too; the server refuses jumps above 90 m/s).
Randomness comes from one `random.Random` per unit seeded with ``seed`` and the unit id, so a run is
repeatable but for network timing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from geo.coords import Point, geodesic_m
from icp.client import ClientError, FieldUnitClient, OpError, OpTimeout, Resync, Unauthorized, http_url, websocket_url

log = logging.getLogger("icp.simulate")

METRES_PER_DEGREE = 111_320.0
FALLBACK_SPEED_MPS = 8.0  # when a route carries no usable time
MAX_JOBS = 8  # assignments waiting for a busy unit
CRUISE_TRIES = 3
MAX_REMEMBERED = 256  # assignment ids remembered per unit (taken, cancelled)
MIN_REPORT_GAP_S = 0.5  # the server's default rate limit per unit


@dataclass(frozen=True, slots=True)
class CrewTiming:
    """How crews behave, in simulated seconds or metres: each (low, high) is drawn uniformly."""

    ack_s: tuple[float, float] = (4.0, 15.0)  # reading the assignment before acknowledging it
    turnout_s: tuple[float, float] = (10.0, 45.0)  # from acknowledged to rolling
    on_scene_s: tuple[float, float] = (180.0, 600.0)
    park_s: tuple[float, float] = (30.0, 180.0)  # an idle spell parked
    cruise_m: tuple[float, float] = (400.0, 2000.0)  # how far from home an idle unit cruises
    cruise_share: float = 0.5  # share of idle spells spent cruising


@dataclass(slots=True)
class SimulationStats:
    units: list[str] = field(default_factory=list)
    positions: int = 0  # sent and answered
    refused_positions: int = 0  # answered accepted=false (rate, jump, clock)
    routes: int = 0
    assignments: int = 0
    acknowledged: int = 0
    on_scene: int = 0
    cleared: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """A road route as a polyline with cumulative distances, driven at its own average speed."""

    points: tuple[Point, ...]
    cumulative_m: tuple[float, ...]
    speed_mps: float

    @property
    def length_m(self) -> float:
        return self.cumulative_m[-1]

    @classmethod
    def from_feature(cls, feature: Mapping[str, Any]) -> Route | None:
        """From the GeoJSON Feature of ``GET /api/v1/geo/route`` (coordinates are [lon, lat])."""
        coordinates = feature.get("geometry", {}).get("coordinates") or []
        points = tuple(Point(lat=float(c[1]), lon=float(c[0])) for c in coordinates)
        if len(points) < 2:
            return None
        cumulative = [0.0]
        for a, b in itertools.pairwise(points):
            cumulative.append(cumulative[-1] + geodesic_m(a, b))
        time_s = float(feature.get("properties", {}).get("time_s") or 0.0)
        speed = cumulative[-1] / time_s if time_s > 0 else FALLBACK_SPEED_MPS
        return cls(points, tuple(cumulative), speed)

    def at(self, distance_m: float) -> tuple[Point, float]:
        """The point ``distance_m`` along the route and the heading there (degrees from north)."""
        d = min(max(distance_m, 0.0), self.length_m)
        i = min(max(bisect.bisect_right(self.cumulative_m, d) - 1, 0), len(self.points) - 2)
        a, b = self.points[i], self.points[i + 1]
        span = self.cumulative_m[i + 1] - self.cumulative_m[i]
        f = (d - self.cumulative_m[i]) / span if span > 0 else 1.0
        return Point(lat=a.lat + (b.lat - a.lat) * f, lon=a.lon + (b.lon - a.lon) * f), bearing_deg(a, b)


def bearing_deg(a: Point, b: Point) -> float:
    phi1, phi2, dl = math.radians(a.lat), math.radians(b.lat), math.radians(b.lon - a.lon)
    x = math.sin(dl) * math.cos(phi2)
    y = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


def offset(p: Point, distance_m: float, bearing: float) -> Point:
    """A point ``distance_m`` from ``p`` (flat-earth: fine for the few kilometres a unit cruises)."""
    b = math.radians(bearing)
    lat = p.lat + distance_m * math.cos(b) / METRES_PER_DEGREE
    lon = p.lon + distance_m * math.sin(b) / (METRES_PER_DEGREE * math.cos(math.radians(p.lat)))
    return Point(lat=lat, lon=lon)


class _Api:
    """The few REST calls the simulator makes, with the administrator's token."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session, self._base = session, base

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._session.request(method, self._base + path, **kwargs) as response:
            if response.status in (401, 403):
                raise Unauthorized(f"{method} {path}: {response.status} (the simulator needs an admin token)")
            if response.status >= 300:
                raise ClientError(f"{method} {path}: {response.status} {(await response.text())[:200]}")
            return await response.json(content_type=None)

    async def route(self, start: Point, end: Point) -> Route | None:
        try:
            feature = await self.call("GET", "/api/v1/geo/route", params={
                "from": f"{start.lat},{start.lon}", "to": f"{end.lat},{end.lon}"})
        except ClientError as exc:
            log.debug("no route from %s to %s: %s", start, end, exc)
            return None
        return Route.from_feature(feature)


# An assignment's steps in order; a job picked up part-way (after a restart) resumes after its status.
STEPS = ("dispatched", "acknowledged", "en_route", "on_scene")


@dataclass(frozen=True, slots=True)
class _Job:
    assignment: str
    incident: str
    status: str = "dispatched"


class SimulatedUnit:
    """One unit's crew and vehicle."""

    def __init__(self, unit_id: str, start: Point, home: Point, client: FieldUnitClient, api: _Api, *,
                 rng: random.Random, speed_factor: float, report_every_s: float, timing: CrewTiming,
                 stats: SimulationStats) -> None:
        self.id, self.position, self.home = unit_id, start, home
        self._client, self._api, self._rng = client, api, rng
        self._factor, self._every, self._timing, self._stats = speed_factor, report_every_s, timing, stats
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(MAX_JOBS)
        self._known: dict[str, None] = {}  # assignments taken (ordered, bounded): seen both live and in a snapshot
        self._cancelled: dict[str, None] = {}  # ordered, bounded
        self._wake = asyncio.Event()  # a job arrived or one was cancelled: stop waiting
        self._last_report = -math.inf

    async def run(self) -> None:
        try:
            async with self._client, asyncio.TaskGroup() as tasks:
                tasks.create_task(self._listen())
                await self._client.wait_connected()
                # Live from the welcome on; what was assigned before it comes from REST. A job seen
                # both ways is taken once.
                await self._catch_up()
                tasks.create_task(self._live())
        except* ClientError as failed:
            # Typically a refused token: this unit stops, the others go on.
            log.error("unit %s stopped: %s", self.id, failed.exceptions[0])

    async def _catch_up(self) -> None:
        try:
            await self._adopt_current()
        except Unauthorized:
            raise
        except ClientError as exc:
            log.warning("unit %s could not read its current assignment: %s", self.id, exc)

    async def _adopt_current(self) -> None:
        unit = await self._api.call("GET", f"/api/v1/units/{self.id}")
        if not unit.get("assignment_id"):
            return
        listing = await self._api.call("GET", "/api/v1/incidents", params={"status": "open", "limit": 500})
        for incident in listing.get("incidents", []):
            for a in incident.get("assignments", []):
                if a.get("id") == unit["assignment_id"] and a.get("status") in STEPS:
                    self._take(_Job(a["id"], incident["id"], a["status"]))

    def _take(self, job: _Job) -> None:
        if job.assignment in self._known:
            return
        _remember(self._known, job.assignment)
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            log.warning("unit %s is too busy for assignment %s", self.id, job.assignment)
        self._wake.set()

    async def _listen(self) -> None:
        async for item in self._client.assignments():
            if isinstance(item, Resync):
                log.warning("unit %s missed events (%s); catching up over REST", self.id, item.reason)
                await self._catch_up()
                continue
            assignment, incident = item.data.get("assignment_id"), item.data.get("incident_id")
            if not isinstance(assignment, str) or not isinstance(incident, str):
                continue
            if item.type == "assignment.dispatched":
                self._take(_Job(assignment, incident))
            elif item.type in ("assignment.cancelled", "assignment.timed_out"):
                _remember(self._cancelled, assignment)
                self._wake.set()

    async def _live(self) -> None:
        while True:
            if not self._jobs.empty():
                await self._work(self._jobs.get_nowait())
            else:
                await self._idle()

    # -- behaviour -------------------------------------------------------------------------------

    async def _idle(self) -> None:
        t = self._timing
        if self._rng.random() < t.cruise_share:
            distance = self._rng.uniform(*t.cruise_m)
            # A random point may lie in water or beyond the road network: try nearer ones.
            for _ in range(CRUISE_TRIES):
                destination = offset(self.home, distance, self._rng.uniform(0.0, 360.0))
                route = await self._route(destination)
                if route is not None:
                    await self._drive(route, None)
                    return
                distance /= 2
        await self._stay(self._rng.uniform(*t.park_s), None)

    async def _work(self, job: _Job) -> None:
        t, c, s = self._timing, self._client, self._stats
        done = STEPS.index(job.status)
        s.assignments += 1
        try:
            if done < 1:
                if not await self._stay(self._rng.uniform(*t.ack_s), job):
                    return
                await c.ack(job.assignment)
                s.acknowledged += 1
            if done < 2:
                if not await self._stay(self._rng.uniform(*t.turnout_s), job):
                    return
                await c.en_route(job.assignment)
            if done < 3:
                incident = await self._api.call("GET", f"/api/v1/incidents/{job.incident}")
                target = Point(lat=float(incident["location"]["lat"]), lon=float(incident["location"]["lon"]))
                route = await self._route(target)
                if route is None:
                    log.warning("unit %s has no road route to incident %s; it reports on scene", self.id, job.incident)
                elif not await self._drive(route, job):
                    return
                await c.on_scene(job.assignment)
                s.on_scene += 1
            if not await self._stay(self._rng.uniform(*t.on_scene_s), job):
                return
            await c.clear(job.assignment)
            s.cleared += 1
        except Unauthorized:
            raise
        except ClientError as exc:
            # Cancelled or reassigned meanwhile, or the link stayed down: the crew gives up this job.
            s.errors += 1
            log.info("unit %s dropped assignment %s: %s", self.id, job.assignment, exc)
        finally:
            self._cancelled.pop(job.assignment, None)

    # -- moving and reporting --------------------------------------------------------------------

    def _interrupted(self, job: _Job | None) -> bool:
        if job is None:
            return not self._jobs.empty()  # an idle spell ends when work arrives
        return job.assignment in self._cancelled

    async def _pause(self, wall_s: float, job: _Job | None) -> None:
        """Sleep up to ``wall_s``; wake early when a job arrives or one is cancelled."""
        self._wake.clear()
        if self._interrupted(job):  # it came before the clear
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wall_s):
                await self._wake.wait()

    async def _stay(self, sim_s: float, job: _Job | None) -> bool:
        """Stay put for ``sim_s`` simulated seconds, reporting; False if interrupted."""
        loop = asyncio.get_running_loop()
        until = loop.time() + sim_s / self._factor
        while (left := until - loop.time()) > 0:
            if self._interrupted(job):
                return False
            await self._report(self.position, None, 0.0)
            await self._pause(min(self._every, left), job)
        return not self._interrupted(job)

    async def _drive(self, route: Route, job: _Job | None) -> bool:
        """Drive the route, reporting every few seconds; False if interrupted before the end."""
        loop = asyncio.get_running_loop()
        travelled, last = 0.0, loop.time()
        while True:
            now = loop.time()
            travelled += route.speed_mps * (now - last) * self._factor  # wall time elapsed, not asked for
            last = now
            self.position, heading = route.at(travelled)
            arrived = travelled >= route.length_m
            await self._report(self.position, heading, 0.0 if arrived else route.speed_mps * self._factor,
                               must=arrived)
            if arrived:
                return True
            if self._interrupted(job):
                return False
            await self._pause(min(self._every, (route.length_m - travelled) / (route.speed_mps * self._factor)), job)

    async def _route(self, destination: Point) -> Route | None:
        route = await self._api.route(self.position, destination)
        if route is not None:
            self._stats.routes += 1
        return route

    async def _report(self, where: Point, heading: float | None, speed: float, *, must: bool = False) -> None:
        """Send a fix; one that would come sooner than the server's rate limit allows is skipped, or
        (``must``: an arrival) delayed."""
        loop = asyncio.get_running_loop()
        wait = self._last_report + MIN_REPORT_GAP_S - loop.time()
        if wait > 0:
            if not must:
                return
            await asyncio.sleep(wait)
        self._last_report = loop.time()
        try:
            answer = await self._client.send_position(where.lat, where.lon, accuracy=5.0,
                                                      heading=None if heading is None else round(heading, 1),
                                                      speed=round(speed, 1), timeout=self._every)
        except OpTimeout:
            return  # the link is down: this fix is stale already, the next one replaces it
        except OpError as exc:
            self._stats.errors += 1
            log.debug("unit %s position refused: %s", self.id, exc)
            return
        if answer.get("accepted", True):
            self._stats.positions += 1
        else:
            self._stats.refused_positions += 1


async def simulate(url: str, token: str, units: int, *, seed: int = 0, speed_factor: float = 1.0,
                   duration: float | None = None, report_every_s: float = 3.0,
                   timing: CrewTiming | None = None, stats: SimulationStats | None = None) -> SimulationStats:
    """Drive up to ``units`` of the server's units (in id order) until ``duration`` seconds have
    passed (None: until cancelled). ``url`` is the server's HTTP base; ``token`` an administrator's.
    Pass ``stats`` to read the counters while it runs or after it was cancelled."""
    if units < 1 or speed_factor <= 0 or report_every_s <= 0:
        raise ValueError("units, speed_factor and report_every_s must be positive")
    stats, base = stats if stats is not None else SimulationStats(), http_url(url)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        api = _Api(session, base)
        sims = [SimulatedUnit(unit_id, start, home,
                              FieldUnitClient(websocket_url(base), unit_token, unit_id=unit_id,
                                              take_messages=False),  # a simulated crew reads nothing
                              api, rng=random.Random(f"{seed}:{unit_id}"), speed_factor=speed_factor,
                              report_every_s=report_every_s, timing=timing or CrewTiming(), stats=stats)
                for unit_id, start, home, unit_token in await _enlist(api, units)]
        stats.units = [s.id for s in sims]
        log.info("simulating %d units: %s", len(sims), ", ".join(stats.units))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration), asyncio.TaskGroup() as tasks:
                for sim in sims:
                    tasks.create_task(sim.run(), name=f"simulated unit {sim.id}")
    return stats


async def _enlist(api: _Api, count: int) -> list[tuple[str, Point, Point, str]]:
    """The first ``count`` units (by id) with a position or a station: id, start, home, a fresh token."""
    roster = (await api.call("GET", "/api/v1/units"))["units"]
    stations = {s["id"]: s for s in (await api.call("GET", "/api/v1/stations")).get("stations", [])}
    out: list[tuple[str, Point, Point, str]] = []
    for unit in sorted(roster, key=lambda u: u["id"]):
        station = stations.get(unit.get("station_id") or "")
        home = _point(station["location"]) if station else None
        start = _point(unit.get("position")) or home
        if start is None:
            continue  # nowhere to put it
        issued = await api.call("POST", "/api/v1/tokens", json={
            "role": "unit", "agency": unit["agency_id"], "unit": unit["id"], "name": "icp simulate"})
        out.append((unit["id"], start, home or start, issued["token"]))
        if len(out) == count:
            break
    return out


def _remember(ids: dict[str, None], one: str) -> None:
    ids[one] = None
    if len(ids) > MAX_REMEMBERED:
        ids.pop(next(iter(ids)))


def _point(raw: Any) -> Point | None:
    if not isinstance(raw, Mapping) or "lat" not in raw or "lon" not in raw:
        return None
    return Point(lat=float(raw["lat"]), lon=float(raw["lon"]))
