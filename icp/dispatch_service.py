"""Dispatch commands against the database: lock, decide, write the rows, set timers, log — atomically.

Every dispatch write goes through `DispatchService.run`: inside the caller's transaction it locks
the aggregates the command touches (`dispatch_store.lock`), builds a state from them plus the
live picture's reference data, asks the pure core to `decide`, `evolve`s the result, writes the
changed rows, keeps the acknowledgement timers in step and appends the events to the log — all
or nothing. Authorization that depends on data (which agency an incident or unit belongs to) is
checked here, against the locked rows, not against a possibly stale picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dispatch import commands as cmd
from dispatch import events as dev
from dispatch._checks import slug
from dispatch.agency import Agency
from dispatch.decide import decide
from dispatch.errors import Invalid
from dispatch.evolve import evolve_all
from dispatch.incident import Incident
from dispatch.lifecycle import AssignmentStatus
from dispatch.recommendation import Recommendation, RecommendOptions, recommend_for_incident, replacement_for
from dispatch.state import DispatchState
from dispatch.unit import Unit
from geo.coords import Point
from icp import dispatch_store as store
from icp.auth.principal import Principal, Role
from icp.errors import Problem, forbidden, not_found
from icp.geography import Geography
from icp.live import LivePicture
from icp.store import eventlog
from icp.store.eventlog import NewEvent, RecordedEvent
from icp.store.feed import EventFeed

EVERYONE = eventlog.PUBLIC
# Commands whose events change only the incident (never an assignment or a unit).
INCIDENT_ONLY = (cmd.LinkAlert, cmd.AddNote, cmd.UpdateIncident, cmd.RaiseAlarmLevel)


# -- who may see and do what ---------------------------------------------------------------------

def sees_incident(who: Principal, agency_ids: Collection[str]) -> bool:
    return who.unrestricted or EVERYONE in agency_ids or (who.agency is not None and who.agency in agency_ids)


def partners_lending_to(agencies: dict[str, Agency] | Any, agency_id: str | None) -> set[str]:
    agency = agencies.get(agency_id) if agency_id else None
    return {t.partner_id for t in agency.mutual_aid} if agency is not None else set()


def may_dispatch(who: Principal, unit: Unit, agencies: Any) -> bool:
    """A dispatcher commands the units of their own agency and of partners that lend to it."""
    if who.unrestricted:
        return True
    return unit.agency_id == who.agency or unit.agency_id in partners_lending_to(agencies, who.agency)


def sees_unit(who: Principal, unit: Unit, agencies: Any) -> bool:
    if who.role is Role.UNIT:
        return who.unit == unit.id
    return may_dispatch(who, unit, agencies)


@dataclass
class Outcome:
    """What a command did: the domain events, as recorded in the log, and the state after."""

    events: list[dev.Event] = field(default_factory=list)
    recorded: list[RecordedEvent] = field(default_factory=list)
    staged: list[NewEvent] = field(default_factory=list)  # when run(log=False): for the caller to append
    state: DispatchState | None = None
    incident_agencies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        return self.recorded[-1].seq if self.recorded else 0


class DispatchService:
    def __init__(self, live: LivePicture, geography: Geography, options: RecommendOptions) -> None:
        self.live = live
        self.geography = geography
        self.options = options

    # -- the one write path ------------------------------------------------------------------------
    async def run(
        self, conn: asyncpg.Connection, command: cmd.Command, who: Principal, *, now: datetime | None = None,
        new_incident_agencies: list[str] | None = None, log: bool = True, authorize: bool = True,
    ) -> Outcome:
        """Execute ``command`` in the caller's open transaction. With ``log=False`` the events are
        returned in ``staged`` for the caller to append (group commit appends a batch at once).
        ``authorize=False`` is for the server's own logic acting on a principal's behalf (intake
        correlating a sensor's alert); ``who`` is still recorded as the actor."""
        now = now or datetime.now(UTC)
        incident_ids = {v for v in (getattr(command, "incident_id", None),) if v}
        assignment_ids = {v for v in (getattr(command, "assignment_id", None),) if v}
        unit_ids = {v for v in (getattr(command, "unit_id", None), getattr(command, "replacement_unit_id", None)) if v}
        if isinstance(command, cmd.DispatchUnits):
            unit_ids.update(r.unit_id for r in command.units)
        incident_only = isinstance(command, INCIDENT_ONLY)
        held = await store.lock(conn, incident_ids=incident_ids, unit_ids=unit_ids, assignment_ids=assignment_ids,
                                incident_only=incident_only)
        if isinstance(command, cmd.CreateIncident):
            held.incident_agencies[command.incident_id] = list(new_incident_agencies or [EVERYONE])
        if authorize:
            self._authorize(who, command, held)
        state = DispatchState(
            agencies=self.live.state.agencies, stations=self.live.state.stations, units=held.units,
            incidents=held.incidents, assignments=held.assignments, policy=self.live.policy,
            home_agencies={iid: tuple(self.home_agencies(inc)) for iid, inc in held.incidents.items()},
        )
        events = decide(state, command, now)
        after = evolve_all(state, events)
        agencies = held.incident_agencies
        for ev in events:  # a partner's unit joining shares the incident with its agency
            if isinstance(ev, dev.AssignmentDispatched | dev.AssignmentRecommended | dev.AssignmentMutualAidRequested):
                unit_agency = after.units[ev.unit_id].agency_id
                if EVERYONE not in agencies[ev.incident_id] and unit_agency not in agencies[ev.incident_id]:
                    agencies[ev.incident_id] = [*agencies[ev.incident_id], unit_agency]
        await self._write(conn, state, after, agencies, events)
        entries = [self.log_event(ev, after, agencies, who) for ev in events]
        if not log:
            return Outcome(events, [], entries, after, agencies)
        return Outcome(events, await eventlog.append(conn, entries), [], after, agencies)

    def _authorize(self, who: Principal, command: cmd.Command, held: store.Locked) -> None:
        incident_id = getattr(command, "incident_id", None)
        if isinstance(command, cmd.CreateIncident):
            return
        answer = self._mutual_aid_answer(command, held)
        if who.role is Role.UNIT:
            # A field unit acts only on its own assignments and its own status.
            assignment_id = getattr(command, "assignment_id", None)
            own = (assignment_id in held.assignments and held.assignments[assignment_id].unit_id == who.unit) or (
                isinstance(command, cmd.ChangeUnitStatus) and command.unit_id == who.unit)
            if not own or isinstance(command, cmd.CancelAssignment) or answer is not None:
                raise forbidden("a unit acts only on its own assignments and status")
            return
        if answer is not None and not who.unrestricted and who.agency != answer:
            # Whether to lend a unit is the lending agency's decision, nobody else's.
            raise forbidden(f"only agency {answer} answers a mutual-aid request for its unit")
        if incident_id is None and (assignment_id := getattr(command, "assignment_id", None)):
            incident_id = held.assignments[assignment_id].incident_id if assignment_id in held.assignments else None
        if incident_id is not None and (
            incident_id not in held.incidents or not sees_incident(who, held.incident_agencies.get(incident_id, []))
        ):
            raise not_found(f"incident {incident_id}")
        if isinstance(command, cmd.DispatchUnits):
            for request in command.units:
                unit = held.units.get(request.unit_id)
                if unit is None or not may_dispatch(who, unit, self.live.state.agencies):
                    raise Problem(403, "forbidden", f"unit {request.unit_id} is not one your agency may dispatch")
        if isinstance(command, cmd.ChangeUnitStatus):
            unit = held.units.get(command.unit_id)
            if unit is None or not may_dispatch(who, unit, self.live.state.agencies):
                raise not_found(f"unit {command.unit_id}")

    @staticmethod
    def _mutual_aid_answer(command: cmd.Command, held: store.Locked) -> str | None:
        """The agency that must be the one answering, when ``command`` answers a mutual-aid request."""
        assignment = held.assignments.get(getattr(command, "assignment_id", None) or "")
        if assignment is None or assignment.status is not AssignmentStatus.REQUESTED:
            return None
        if not isinstance(command, cmd.AcceptMutualAid | cmd.DeclineAssignment):
            return None
        unit = held.units.get(assignment.unit_id)
        return unit.agency_id if unit is not None else None

    async def _write(self, conn: asyncpg.Connection, before: DispatchState, after: DispatchState,
                     agencies: dict[str, list[str]], events: Iterable[dev.Event]) -> None:
        for incident_id, incident in after.incidents.items():
            if before.incidents.get(incident_id) != incident:
                await store.save_incident(conn, incident, agencies[incident_id])
        for assignment_id, assignment in after.assignments.items():
            if before.assignments.get(assignment_id) != assignment:
                await store.save_assignment(conn, assignment)
        for unit_id, unit in after.units.items():
            if before.units.get(unit_id) != unit:
                await store.save_unit(conn, unit)
        for ev in events:  # one deadline per assignment: the unit's acknowledgement or the partner's answer
            if isinstance(ev, dev.AssignmentDispatched):
                await store.set_timer(conn, store.ACK_TIMEOUT, ev.assignment_id, ev.ack_due_at)
            elif isinstance(ev, dev.AssignmentMutualAidRequested):
                await store.set_timer(conn, store.ACK_TIMEOUT, ev.assignment_id, ev.answer_due_at)
            elif isinstance(ev, dev.AssignmentEvent):
                await store.clear_timer(conn, store.ACK_TIMEOUT, ev.assignment_id)

    @staticmethod
    def log_event(ev: dev.Event, after: DispatchState, agencies: dict[str, list[str]], who: Principal, *,
                  plain: bool = False) -> NewEvent:
        """The log's form of a domain event: its fields, the agencies that may see it, and who
        caused it. ``plain``: the caller knows the fields are plain JSON values (see `NewEvent`)."""
        data = {k: v for k, v in ev.to_dict().items() if k != "type"}
        if isinstance(ev, dev.IncidentEvent):
            visible = agencies.get(ev.incident_id, [EVERYONE])
            data["agency_ids"] = list(visible)
        else:  # unit events: the unit's agency, and the agencies of the incident it works
            unit = after.units.get(getattr(ev, "unit_id", ""))
            incident_id = getattr(ev, "incident_id", None)
            visible = sorted({*(agencies.get(incident_id, []) if incident_id else []),
                              *([unit.agency_id] if unit else [])}) or [EVERYONE]
        return NewEvent(ev.type, ev.subject, data, actor=who.actor(), visibility=tuple(visible), plain=plain)

    # -- composite commands ---------------------------------------------------------------------------
    async def create_incident(
        self, conn: asyncpg.Connection, who: Principal, *, incident_type: str, priority: int, location: Point,
        address: str = "", zone: str | None = None, alert_ids: tuple[str, ...] = (), now: datetime | None = None,
        log: bool = True, authorize: bool = True,
    ) -> Outcome:
        now = now or datetime.now(UTC)
        if not self.live.plans.for_type(incident_type):
            raise Problem(422, "validation_failed", f"unknown incident type {incident_type!r}; known: "
                          + ", ".join(self.live.plans.incident_types))
        agency_ids, zone = self.placement(location, who, zone)
        number = await store.next_incident_number(conn, now.year)
        command = cmd.CreateIncident(
            incident_id=str(number), number=number, incident_type=incident_type, priority=priority,
            location=location, address=address, zone=zone, alert_ids=alert_ids,
        )
        return await self.run(conn, command, who, now=now, new_incident_agencies=agency_ids, log=log,
                              authorize=authorize)

    def placement(self, location: Point, who: Principal, zone: str | None = None) -> tuple[list[str], str | None]:
        """Who a new incident at ``location`` belongs to (the jurisdictions holding it and the
        creator's agency; everyone when none), and its zone (the first zone area holding it)."""
        areas = self.geography.areas
        home = set(areas.jurisdiction_of(location))
        agency_ids = sorted({*home, *([who.agency] if who.agency else [])}) or [EVERYONE]
        if zone is None:
            zones = [a.id for a in areas.containing(location, kind="zone")]
            zone = next((z for z in zones if _slug_ok(z)), None)
        return agency_ids, zone

    def home_agencies(self, incident: Incident) -> list[str]:
        return sorted(set(self.geography.areas.jurisdiction_of(incident.location)))

    async def recommend(self, incident_id: str, *, now: datetime | None = None) -> Recommendation:
        """From the live picture (no database): run off the loop, it is CPU work."""
        self.live.pending_positions()
        state = self.live.state
        incident = state.incident(incident_id)
        return await asyncio.to_thread(
            recommend_for_incident, state, incident_id, plans=self.live.plans, timer=self.geography.timer,
            now=now or datetime.now(UTC), home_agency_ids=self.home_agencies(incident), options=self.options,
        )

    def replacement(self, assignment_id: str, now: datetime) -> str | None:
        self.live.pending_positions()
        state = self.live.state
        if assignment_id not in state.assignments:
            return None
        incident = state.incident(state.assignments[assignment_id].incident_id)
        return replacement_for(state, assignment_id, plans=self.live.plans, timer=self.geography.timer,
                               now=now, home_agency_ids=self.home_agencies(incident), options=self.options)


def _slug_ok(value: str) -> bool:
    """Whether an area id can serve as an incident zone (the domain's slug rule, not a copy)."""
    try:
        slug(value, "zone")
    except Invalid:
        return False
    return True


# -- transactions for HTTP writes: idempotency keys, deadlock retry, read-your-writes ---------------

MAX_IDEMPOTENCY_KEY = 200


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()


@dataclass(frozen=True)
class Written:
    status: int
    body: Any
    replayed: bool = False
    last_seq: int = 0


async def transact(
    pool: asyncpg.Pool, feed: EventFeed, who: Principal, work: Callable[[asyncpg.Connection], Awaitable[Written]],
    *, idempotency_key: str | None = None, fingerprint: bytes = b"",
) -> Written:
    """Run ``work`` in a transaction (retried on deadlock). With an idempotency key, the first
    answer is stored in the same transaction and a repeat gets it again, never a second effect.
    Returns once this node's live picture has seen the write (read-your-writes)."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise Problem(400, "invalid_request", f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    principal_key = f"{who.kind}:{who.id}"
    for attempt in range(4):
        try:
            async with pool.acquire() as conn, conn.transaction():
                if idempotency_key is not None:
                    fresh = await conn.fetchval(
                        "INSERT INTO idempotency_keys (principal, key, request_hash, status, body)"
                        " VALUES ($1, $2, $3, 0, 'null') ON CONFLICT DO NOTHING RETURNING true",
                        principal_key, idempotency_key, fingerprint,
                    )
                    if not fresh:
                        row = await conn.fetchrow(
                            "SELECT request_hash, status, body FROM idempotency_keys WHERE principal = $1 AND key = $2",
                            principal_key, idempotency_key,
                        )
                        if bytes(row["request_hash"]) != fingerprint:
                            raise Problem(422, "idempotency_key_reused",
                                          "this Idempotency-Key was used for a different request")
                        return Written(row["status"], row["body"], replayed=True)
                written = await work(conn)
                if idempotency_key is not None:
                    await conn.execute(
                        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE principal = $1 AND key = $2",
                        principal_key, idempotency_key, written.status, json.dumps(written.body),
                    )
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == 3:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    if written.last_seq:
        feed.poke()
        with contextlib.suppress(TimeoutError):  # committed; the picture catches up on the next poll
            await feed.wait_for(written.last_seq, timeout=5)
    return written
