"""The live picture: this node's in-memory dispatch state, rebuilt at start, kept current from the log.

Recommendations read it, never the database, so they are fast; the database stays the truth (a
command re-reads what it changes under row locks). Every node applies the same log events with
the same `evolve`, so all nodes converge; an event that does not fit (the picture missed
something) triggers a rebuild rather than a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import asyncpg

from dispatch import events as dev
from dispatch._checks import derived
from dispatch.errors import DomainError
from dispatch.evolve import evolve
from dispatch.incident import Incident
from dispatch.lifecycle import OPEN_INCIDENT
from dispatch.policy import DispatchPolicy
from dispatch.response_plan import ResponsePlans, default_plans
from dispatch.state import DispatchState
from icp import dispatch_store as store
from icp.store.eventlog import RecordedEvent

log = logging.getLogger(__name__)

# Reference-data events carry the whole record; domain events carry what evolve needs.
AGENCY_SAVED = "agency.saved"
STATION_SAVED = "station.saved"
UNIT_SAVED = "unit.saved"
PLANS_UPDATED = "response_plans.updated"
# The event types `_apply_one` changes the picture for.
_PICTURE_EVENTS = frozenset({AGENCY_SAVED, STATION_SAVED, UNIT_SAVED, PLANS_UPDATED, *dev.EVENT_TYPES})
ALERT_LINKED = dev.AlertLinked.type
ALERTS_LINKED = dev.AlertsLinked.type
_INCIDENT_FIELDS = tuple(f.name for f in fields(Incident))  # the order `derived` takes them in
_INCIDENT_VALUES = attrgetter(*_INCIDENT_FIELDS)
_ALERT_IDS = _INCIDENT_FIELDS.index("alert_ids")


def _with_alerts(incident: Incident, alert_ids: tuple[str, ...]) -> Incident:
    """``incident`` with ``alert_ids`` appended to its alerts, as `evolve` makes it for an
    ``AlertLinked`` or ``AlertsLinked``, without checking every field (and the whole alert list)
    again: the event is a fact `decide` checked."""
    values = list(_INCIDENT_VALUES(incident))
    values[_ALERT_IDS] = (*incident.alert_ids, *alert_ids)
    return derived(Incident, *values)


class LivePicture:
    def __init__(self, policy: DispatchPolicy) -> None:
        self.policy = policy
        self.state = DispatchState(policy=policy)
        self.plans: ResponsePlans = default_plans()
        self.incident_agencies: dict[str, list[str]] = {}
        self.applied_seq = 0  # the log position this picture reflects
        self._pool: asyncpg.Pool | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._buffer: list[RecordedEvent] | None = None
        # Set by the position hub: folds accepted fixes into `state` (they are batched).
        self.pending_positions: Callable[[], None] = lambda: None

    async def rebuild(self, pool: asyncpg.Pool) -> None:
        """Load the picture from one consistent snapshot, remembering the log seq it reflects;
        events arriving meanwhile are held back and applied after, those already in the
        snapshot skipped. (Subscribe to the feed first, then rebuild: nothing falls between.)"""
        self._pool = pool
        self._buffer = []
        try:
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                head = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
                agencies, stations = await store.load_reference(conn)
                units, incidents, assignments, agency_ids = await store.load_open(conn)
                plans = await store.load_plans(conn)
            self.state = DispatchState(
                agencies={a.id: a for a in agencies}, stations={s.id: s for s in stations},
                units={u.id: u for u in units}, incidents={i.id: i for i in incidents},
                assignments={a.id: a for a in assignments}, policy=self.policy,
            )
            self.incident_agencies = agency_ids
            self.plans = plans
            self.applied_seq = head
        finally:
            held, self._buffer = self._buffer, None
            self.apply(held)
        log.info("live picture: %d agencies, %d units, %d open incidents", len(agencies), len(units),
                 sum(1 for i in incidents if i.status in OPEN_INCIDENT))

    def _rebuild_soon(self, why: str) -> None:
        if self._pool is None or (self._rebuilding is not None and not self._rebuilding.done()):
            return
        log.warning("live picture out of step (%s); rebuilding from the database", why)
        self._rebuilding = asyncio.get_running_loop().create_task(self.rebuild(self._pool))

    # -- following the log --------------------------------------------------------------------------
    def apply(self, batch: Sequence[RecordedEvent]) -> None:
        """Feed subscriber: apply each event of the batch in order.

        A run of alert links (the bulk of a sensor storm) is applied as one change to the
        incidents: each link only appends an id to its incident's alert list, so the incident is
        copied without validating that whole list again, and the incident map is copied once
        per run rather than once per link (`evolve` would do both per event; the result is the
        same, which a test holds)."""
        if self._buffer is not None:
            self._buffer.extend(batch)
            return
        linked: dict[str, Incident] = {}
        try:
            for recorded in batch:
                if recorded.seq <= self.applied_seq:
                    continue
                try:
                    if recorded.type == ALERT_LINKED or recorded.type == ALERTS_LINKED:
                        self._link(linked, recorded.data)
                    elif recorded.type in _PICTURE_EVENTS:
                        if linked:
                            self._commit_links(linked)
                        self._apply_one(recorded.type, recorded.data)
                    # Anything else (an alert received, a message) leaves the picture as it is,
                    # and does not break the run of links either.
                except (DomainError, KeyError, ValueError, TypeError) as exc:
                    self._rebuild_soon(f"{recorded.type} at seq {recorded.seq}: {exc}")
                    return
                self.applied_seq = recorded.seq
        finally:
            if linked:
                self._commit_links(linked)

    def _link(self, linked: dict[str, Incident], data: Mapping[str, Any]) -> None:
        incident_id = data["incident_id"]
        alert_ids = tuple(data["alert_ids"]) if "alert_ids" in data else (data["alert_id"],)
        if not all(isinstance(a, str) for a in alert_ids):
            raise TypeError("alert ids must be strings")
        incident = linked.get(incident_id) or self.state.incidents[incident_id]
        linked[incident_id] = _with_alerts(incident, alert_ids)
        if "agency_ids" in data:
            self.incident_agencies[incident_id] = list(data["agency_ids"])

    def _commit_links(self, linked: dict[str, Incident]) -> None:
        self.state = replace(self.state, incidents=MappingProxyType({**self.state.incidents, **linked}))
        linked.clear()

    def _apply_one(self, type_: str, data: Mapping[str, Any]) -> None:
        if type_ == AGENCY_SAVED:
            self.state = self.state.with_agency(store.agency_from(data["agency"]))
        elif type_ == STATION_SAVED:
            self.state = self.state.with_station(store.station_from(data["station"]))
        elif type_ == UNIT_SAVED:
            self.state = self.state.with_unit(store.unit_from(data["unit"]))
        elif type_ == PLANS_UPDATED:
            from dispatch.response_plan import ResponsePlan

            self.plans = self.plans.replacing_type(
                data["incident_type"], [ResponsePlan.from_dict(p) for p in data["plans"]]
            )
        elif type_ in dev.EVENT_TYPES:
            event = dev.event_from_dict({"type": type_, **{k: v for k, v in data.items() if k != "agency_ids"}})
            if isinstance(event, dev.IncidentEvent) and "agency_ids" in data:
                self.incident_agencies[event.incident_id] = list(data["agency_ids"])
            self.state = evolve(self.state, event)
            if isinstance(event, (dev.IncidentClosed, dev.IncidentCancelled)):
                self._forget(event.incident_id)

    def _forget(self, incident_id: str) -> None:
        """Drop a finished incident (and its finished assignments) from memory."""
        incident = self.state.incidents.get(incident_id)
        if incident is None or any(a.active for a in self.state.assignments_of(incident)):
            return  # units still work it (e.g. transporting): keep until they clear
        held = {u.assignment_id for u in self.state.units.values() if u.assignment_id}
        if held & set(incident.assignment_ids):
            return
        self.state = replace(
            self.state,
            incidents={k: v for k, v in self.state.incidents.items() if k != incident_id},
            assignments={k: v for k, v in self.state.assignments.items() if v.incident_id != incident_id},
        )
        self.incident_agencies.pop(incident_id, None)

    # -- questions ------------------------------------------------------------------------------------
    def open_incidents(self) -> list[Any]:
        return [i for i in self.state.incidents.values() if i.status in OPEN_INCIDENT]
