"""The demo's sensor feed: realistic alerts in the formats real networks send, every few seconds.

Scenarios, each a short story told through ICP's intake endpoints:

- a smoke cluster: detectors on several floors of one building go off seconds apart (native JSON);
  the first opens an automatic fire alarm, the rest attach to it, and the third upgrades it to a
  structure fire (the correlation rules), or it stays one false alarm;
- a gunshot: one to three acoustic sensors report the same shot (native JSON);
- a flood: a water-level gauge crosses its threshold (an OGC SensorThings Observation, placed by
  the sensor registry), and reports again a little higher;
- a collision: a traffic camera's analytics report a crash at its junction (native JSON);
- a weather warning for the whole city (CAP 1.2 XML), which informs and opens no incident.

The choice of scenario, place and wording comes from one `random.Random(seed)`, so ``--seed`` gives
the same city story every run (wall-clock timing and the server's ids aside). When many incidents
are open the feed sends only informational alerts, so the fleet is not swamped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

from icp.demo import city
from icp.demo.rest import Rest, RestError

log = logging.getLogger("icp.demo.feed")

# The first scenarios of every run, so that even a one-minute run shows each kind; then weighted.
OPENING = ("smoke", "gunshot", "collision", "weather", "flood")
WEIGHTS = {"smoke": 4, "gunshot": 2, "collision": 3, "flood": 1, "weather": 1, "camera": 1}
INFORMATIONAL = ("weather", "camera")
WEATHER = [
    ("Wind warning", "Severe", "Gusts of 25 m/s along the coast this evening. Secure loose objects."),
    ("Heavy rain warning", "Moderate", "30 mm of rain within six hours; underpasses may flood."),
    ("Slippery roads warning", "Moderate", "Freezing rain makes pavements and roads very slippery."),
    ("Thunderstorm warning", "Severe", "Thunderstorms with hail and gusts over 20 m/s are likely."),
]


@dataclass
class FeedStats:
    scenarios: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def to_json(self) -> dict[str, object]:
        return {"scenarios": dict(self.scenarios), "alerts": self.alerts, "outcomes": dict(self.outcomes),
                "errors": self.errors}


class SensorFeed:
    """Posts the scenarios to the node with a sensor key; ``admin`` only counts open incidents."""

    def __init__(self, sensor: Rest, admin: Rest, *, seed: int, interval_s: float = 12.0, max_open: int = 10,
                 stats: FeedStats | None = None) -> None:
        self.sensor, self.admin, self.rng = sensor, admin, random.Random(f"feed:{seed}")
        self.interval_s, self.max_open = interval_s, max_open
        self.stats = stats if stats is not None else FeedStats()
        self._n = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self.rng.getrandbits(32):08x}-{self._n}"

    async def run(self) -> None:
        """Scenario after scenario until cancelled; follow-up alerts of a scenario run alongside."""
        try:
            for n in range(1_000_000):
                kind = OPENING[n] if n < len(OPENING) else self._pick()
                if kind not in INFORMATIONAL and await self._busy():
                    kind = self.rng.choice(INFORMATIONAL)
                self.stats.scenarios[kind] += 1
                self._spawn(self._scenario(kind))
                await asyncio.sleep(self.interval_s * self.rng.uniform(0.6, 1.4))
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _pick(self) -> str:
        kinds = list(WEIGHTS)
        return self.rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]

    async def _busy(self) -> bool:
        try:
            listing = await self.admin.call("GET", "/api/v1/incidents?limit=500")
        except (RestError, OSError):
            return False
        return len(listing.get("incidents", [])) >= self.max_open

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _scenario(self, kind: str) -> Awaitable[None]:
        scenarios: dict[str, Callable[[], Awaitable[None]]] = {
            "smoke": self.smoke_cluster, "gunshot": self.gunshot, "collision": self.collision,
            "flood": self.flood, "weather": self.weather, "camera": self.camera}
        return scenarios[kind]()

    async def _post(self, path: str, *, json: object = None, data: bytes | None = None,
                    content_type: str | None = None) -> None:
        try:
            outcome = await self.sensor.call("POST", path, json=json, data=data, content_type=content_type)
        except (RestError, OSError) as exc:
            self.stats.errors += 1
            log.warning("the feed's alert was refused: %s", exc)
            return
        self.stats.alerts += 1
        self.stats.outcomes[str(outcome.get("outcome"))] += 1

    @staticmethod
    def _now(offset_s: float = 0.0) -> str:
        return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="seconds").replace("+00:00", "Z")

    # -- the scenarios ---------------------------------------------------------------------------

    async def smoke_cluster(self) -> None:
        b = self.rng.randrange(len(city.BUILDINGS))
        building = city.BUILDINGS[b]
        floors = [1, 2, 3]
        self.rng.shuffle(floors)
        count = self.rng.choice((1, 3, 3, 2))  # a lone detector is often a false alarm
        event = self._id("smoke")
        for n, floor in enumerate(floors[:count]):
            if n:
                await asyncio.sleep(self.rng.uniform(3.0, 8.0))
            await self._post("/api/v1/alerts", json={
                "source": "smoke-net", "id": f"{event}/f{floor}", "kind": "smoke", "time": self._now(),
                "location": {"lat": building.lat + 0.00002 * floor, "lon": building.lon},
                "severity": "Severe" if n else "Moderate", "certainty": "Observed",
                "headline": f"Smoke detected, floor {floor}",
                "description": f"Detector smoke-b{b + 1}-f{floor}, {building.label}",
                "data": {"sensor": f"smoke-b{b + 1}-f{floor}", "floor": floor,
                         "obscuration_pct_m": round(self.rng.uniform(2.0, 9.0), 1)}})

    async def gunshot(self) -> None:
        spot = self.rng.choice(city.GUNSHOT_SPOTS)
        lat = spot.lat + self.rng.uniform(-0.0003, 0.0003)
        lon = spot.lon + self.rng.uniform(-0.0005, 0.0005)
        shots = self.rng.randint(1, 4)
        event = self._id("shot")
        sensors = self.rng.sample(range(1, len(city.GUNSHOT_SENSORS) + 1), k=self.rng.randint(1, 3))
        for n, sensor in enumerate(sensors):
            if n:
                await asyncio.sleep(self.rng.uniform(0.3, 1.5))
            await self._post("/api/v1/alerts", json={
                "source": "acoustic-net", "id": f"{event}/acoustic-{sensor}", "kind": "gunshot", "time": self._now(),
                "location": {"lat": round(lat, 6), "lon": round(lon, 6)}, "severity": "Severe",
                "certainty": "Likely",
                "headline": f"{shots} impulsive sound(s) classified as gunfire near {spot.label}",
                "data": {"sensor": f"acoustic-{sensor}", "rounds": shots,
                         "confidence": round(self.rng.uniform(0.75, 0.98), 2)}})

    async def collision(self) -> None:
        n = self.rng.randrange(len(city.TRAFFIC_CAMERAS))
        camera = city.TRAFFIC_CAMERAS[n]
        severe = self.rng.random() < 0.35
        vehicles = self.rng.randint(2, 3)
        await self._post("/api/v1/alerts", json={
            "source": "traffic-cameras", "id": self._id("crash"), "kind": "collision", "time": self._now(),
            "location": camera.location, "severity": "Severe" if severe else "Moderate", "certainty": "Likely",
            "headline": f"Collision detected at {camera.label}",
            "description": f"{vehicles} vehicles stopped in the junction"
                           + (", a person on the road" if severe else ""),
            "data": {"camera": f"camera-{n + 1}", "vehicles": vehicles}})

    async def camera(self) -> None:
        camera = self.rng.choice(city.TRAFFIC_CAMERAS)
        await self._post("/api/v1/alerts", json={
            "source": "traffic-cameras", "id": self._id("video"), "kind": "camera", "time": self._now(),
            "location": camera.location, "severity": "Minor", "certainty": "Possible",
            "headline": f"Unusual crowd at {camera.label}", "description": "video analytics: crowd density high"})

    async def flood(self) -> None:
        n = self.rng.randrange(len(city.FLOOD_SENSORS))
        level = round(self.rng.uniform(2.1, 2.9), 2)
        for reading in range(2):
            if reading:
                await asyncio.sleep(self.rng.uniform(6.0, 12.0))
                level = round(level + self.rng.uniform(0.2, 0.6), 2)
            await self._post("/api/v1/sensorthings/v1.1/Observations", json={
                "@iot.id": self._id(f"obs-flood-{n + 1}"), "phenomenonTime": self._now(), "result": level,
                "Datastream": {"@iot.id": f"flood-{n + 1}-level"}})

    async def weather(self) -> None:
        event, severity, description = self.rng.choice(WEATHER)
        await self._post("/api/v1/alerts/cap", data=cap_warning(self._id("fmi-demo"), event, severity, description,
                                                                 self._now(), self._now(6 * 3600)),
                         content_type="application/cap+xml")


def cap_warning(identifier: str, event: str, severity: str, description: str, sent: str, expires: str) -> bytes:
    """A CAP 1.2 weather warning for central Helsinki (the polygon is ``lat,lon`` pairs, as CAP writes)."""
    sent_cap, expires_cap = (t.replace("Z", "+00:00") for t in (sent, expires))
    polygon = "60.160,24.930 60.160,24.960 60.182,24.960 60.182,24.930 60.160,24.930"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{escape(identifier)}</identifier>
  <sender>warnings@weather.demo.icp</sender>
  <sent>{sent_cap}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>en-GB</language>
    <category>Met</category>
    <event>{escape(event)}</event>
    <urgency>Expected</urgency>
    <severity>{escape(severity)}</severity>
    <certainty>Likely</certainty>
    <expires>{expires_cap}</expires>
    <senderName>Demo weather service</senderName>
    <headline>{escape(event)} for Helsinki</headline>
    <description>{escape(description)}</description>
    <area>
      <areaDesc>Helsinki city centre</areaDesc>
      <polygon>{polygon}</polygon>
    </area>
  </info>
</alert>
""".encode()
