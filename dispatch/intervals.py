"""Standards intervals (NFPA 1710 style): alarm processing, turnout, travel, and their percentiles.

From one incident's events, in log order:

- **alarm processing**: incident created → first unit dispatched;
- **turnout** (per assignment): dispatched → en route;
- **travel** (per assignment): en route → on scene;
- **response** (per assignment): dispatched → on scene, measurable even when a unit never
  reported en route;
- **first arrival** (per incident): created → first unit on scene.

Percentiles use the nearest-rank method, so every reported figure is an observed interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatch import codec
from dispatch import events as e
from dispatch.errors import Invalid


@dataclass(frozen=True, slots=True)
class AssignmentIntervals:
    assignment_id: str
    unit_id: str
    turnout_s: float | None
    travel_s: float | None
    response_s: float | None


@dataclass(frozen=True, slots=True)
class IncidentIntervals:
    incident_id: str
    alarm_processing_s: float | None
    first_arrival_s: float | None
    assignments: tuple[AssignmentIntervals, ...]

    def to_dict(self) -> dict[str, Any]:
        return codec.encode_fields(self)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def incident_intervals(events: Iterable[e.Event]) -> IncidentIntervals:
    """The intervals of one incident from its events in log order (other events are ignored).

    Only the first time each step happens counts: a unit re-dispatched after a decline gets a
    new assignment, and so its own intervals.
    """
    incident_id: str | None = None
    created: datetime | None = None
    first_dispatch: datetime | None = None
    first_arrival: datetime | None = None
    steps: dict[str, dict[str, datetime]] = {}
    units: dict[str, str] = {}
    for ev in events:
        if not isinstance(ev, e.IncidentEvent):
            continue
        if incident_id is None:
            incident_id = ev.incident_id
        elif ev.incident_id != incident_id:
            raise Invalid(f"events of incidents {incident_id!r} and {ev.incident_id!r} are mixed")
        if isinstance(ev, e.IncidentCreated):
            created = created or ev.at
        elif isinstance(ev, (e.AssignmentDispatched, e.AssignmentEnRoute, e.AssignmentOnScene)):
            units[ev.assignment_id] = ev.unit_id
            steps.setdefault(ev.assignment_id, {}).setdefault(ev.type, ev.at)
            if isinstance(ev, e.AssignmentDispatched) and first_dispatch is None:
                first_dispatch = ev.at
            if isinstance(ev, e.AssignmentOnScene) and first_arrival is None:
                first_arrival = ev.at
    if incident_id is None:
        raise Invalid("no incident events to measure")
    per_assignment = []
    for aid, at in steps.items():
        dispatched = at.get(e.AssignmentDispatched.type)
        en_route = at.get(e.AssignmentEnRoute.type)
        on_scene = at.get(e.AssignmentOnScene.type)
        per_assignment.append(
            AssignmentIntervals(
                assignment_id=aid,
                unit_id=units[aid],
                turnout_s=_seconds(dispatched, en_route),
                travel_s=_seconds(en_route, on_scene),
                response_s=_seconds(dispatched, on_scene),
            )
        )
    return IncidentIntervals(
        incident_id=incident_id,
        alarm_processing_s=_seconds(created, first_dispatch),
        first_arrival_s=_seconds(created, first_arrival),
        assignments=tuple(per_assignment),
    )


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100]; None for no values."""
    if not 0 < p <= 100:
        raise Invalid(f"percentile must be in (0, 100], got {p}")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class IntervalStats:
    count: int
    p50_s: float | None
    p90_s: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> IntervalStats:
        return cls(len(values), percentile(values, 50), percentile(values, 90))


@dataclass(frozen=True, slots=True)
class IntervalReport:
    alarm_processing: IntervalStats
    turnout: IntervalStats
    travel: IntervalStats
    response: IntervalStats
    first_arrival: IntervalStats

    def to_dict(self) -> dict[str, Any]:
        return codec.encode_fields(self)


def report(incidents: Iterable[IncidentIntervals]) -> IntervalReport:
    """p50 and p90 of every interval over many incidents (missing intervals are skipped)."""
    items = list(incidents)

    def present(values: Iterable[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    per_unit = [a for i in items for a in i.assignments]
    return IntervalReport(
        alarm_processing=IntervalStats.of(present(i.alarm_processing_s for i in items)),
        turnout=IntervalStats.of(present(a.turnout_s for a in per_unit)),
        travel=IntervalStats.of(present(a.travel_s for a in per_unit)),
        response=IntervalStats.of(present(a.response_s for a in per_unit)),
        first_arrival=IntervalStats.of(present(i.first_arrival_s for i in items)),
    )
