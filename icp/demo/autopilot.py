"""The demo's autopilot: what the city's dispatchers would do when nobody sits at the console.

Every couple of seconds it looks at the open incidents through the public API and

- dispatches the recommendation for an incident still pending after ``dispatch_after_s`` (sensor
  rules already dispatch smoke alarms and confident gunshots at once; everything else waits for a
  person first, so a dispatcher at the console gets there before the autopilot does);
- answers a mutual-aid request as the partner agency's dispatcher after ``answer_after_s``
  (accepting it: neighbours help);
- closes an incident once every unit on it has cleared.

It acts with tokens like any client: an administrator's for the city, and a dispatcher's of the
partner agency for mutual-aid answers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from icp.demo.rest import Rest, RestError

log = logging.getLogger("icp.demo.autopilot")

LIVE = {"requested", "dispatched", "acknowledged", "en_route", "on_scene"}
RETRY_S = 20.0


@dataclass
class AutopilotStats:
    dispatched: int = 0  # dispatch commands it gave
    units_sent: int = 0
    aid_accepted: int = 0
    closed: int = 0
    errors: int = 0


class Autopilot:
    def __init__(self, admin: Rest, partners: dict[str, Rest], *, dispatch_after_s: float = 20.0,
                 answer_after_s: float = 8.0, interval_s: float = 2.0, stats: AutopilotStats | None = None) -> None:
        self.admin, self.partners = admin, partners
        self.dispatch_after_s, self.answer_after_s, self.interval_s = dispatch_after_s, answer_after_s, interval_s
        self.stats = stats if stats is not None else AutopilotStats()
        self._tried: dict[str, float] = {}
        self._units: dict[str, str] = {}  # unit id -> agency id

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except (RestError, OSError) as exc:
                self.stats.errors += 1
                log.warning("autopilot: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def step(self) -> None:
        if not self._units:
            roster = await self.admin.call("GET", "/api/v1/units")
            self._units = {u["id"]: u["agency_id"] for u in roster["units"]}
        listing = await self.admin.call("GET", "/api/v1/incidents?limit=500")
        now = datetime.now(UTC)
        clock = asyncio.get_running_loop().time()
        for incident in listing["incidents"]:
            assignments: list[dict[str, Any]] = incident.get("assignments", [])
            for a in assignments:
                asked = a.get("updated_at") or a["created_at"]
                if a["status"] == "requested" and _age(asked, now) >= self.answer_after_s:
                    await self._answer(a)
            live = [a for a in assignments if a["status"] in LIVE]
            if incident["status"] == "pending" and not live:
                if (_age(incident["created_at"], now) >= self.dispatch_after_s
                        and clock - self._tried.get(incident["id"], -RETRY_S) >= RETRY_S):
                    self._tried[incident["id"]] = clock
                    await self._dispatch(incident["id"])
            elif not live and any(a["status"] == "cleared" for a in assignments):
                await self._close(incident["id"])

    async def _dispatch(self, incident_id: str) -> None:
        rec = await self.admin.call("POST", f"/api/v1/incidents/{incident_id}/recommendation")
        picks = [{"unit_id": p["unit_id"], **({"capability": p["capability"]} if p.get("capability") else {})}
                 for p in rec.get("picks", []) if not p.get("already_assigned")]
        if not picks:
            return
        try:
            await self.admin.call("POST", f"/api/v1/incidents/{incident_id}/assignments", json={"units": picks})
        except RestError as exc:
            if exc.status != 409:  # a unit went meanwhile: the next round recommends again
                raise
            return
        self.stats.dispatched += 1
        self.stats.units_sent += len(picks)
        log.info("autopilot dispatched %s to incident %s", ", ".join(p["unit_id"] for p in picks), incident_id)

    async def _answer(self, assignment: dict[str, Any]) -> None:
        partner = self.partners.get(self._units.get(assignment["unit_id"], ""))
        if partner is None:
            return
        try:
            await partner.call("POST", f"/api/v1/assignments/{assignment['id']}/accept")
        except RestError as exc:
            if exc.status not in (404, 409):  # answered meanwhile (by a person, or timed out)
                raise
            return
        self.stats.aid_accepted += 1
        log.info("autopilot accepted mutual aid %s (%s)", assignment["id"], assignment["unit_id"])

    async def _close(self, incident_id: str) -> None:
        try:
            await self.admin.call("POST", f"/api/v1/incidents/{incident_id}/close",
                                  json={"disposition": "handled; all units cleared"})
        except RestError as exc:
            if exc.status not in (404, 409):
                raise
            return
        self.stats.closed += 1


def _age(iso: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(iso.replace("Z", "+00:00"))).total_seconds()
