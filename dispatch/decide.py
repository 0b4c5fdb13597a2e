"""``decide(state, command, now) -> events``: every rule about what may happen, and nothing else.

``decide`` never changes the state; it reads a snapshot, checks the command against the
lifecycle tables and the policy, and returns the events that record what happens, in order.
An illegal command raises a ``DomainError`` and produces no event: a command is applied
entirely or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from dispatch import _checks as check
from dispatch import commands as c
from dispatch import events as e
from dispatch.assignment import Assignment
from dispatch.errors import Conflict, Invalid, UnitUnavailable
from dispatch.incident import MAX_ALARM_LEVEL, MAX_ALERTS, MAX_NOTES, Incident
from dispatch.lifecycle import (
    ASSIGNMENT,
    INCIDENT,
    UNIT,
    UNIT_WITH_PATIENT,
    AssignmentStatus,
    IncidentStatus,
    UnitStatus,
)
from dispatch.policy import Replacement
from dispatch.state import DispatchState
from dispatch.unit import Unit

C = TypeVar("C", bound=c.Command)
Handler = Callable[[DispatchState, Any, datetime], list[e.Event]]
_HANDLERS: dict[type[c.Command], Handler] = {}


def decide(state: DispatchState, command: c.Command, now: datetime) -> list[e.Event]:
    """The events that ``command`` causes in ``state`` at ``now``, or a ``DomainError``."""
    check.aware(now, "now")
    handler = _HANDLERS.get(type(command))
    if handler is None:
        raise Invalid(f"unknown command {type(command).__name__}")
    return handler(state, command, now)


def _handles(kind: type[C]) -> Callable[[Callable[[DispatchState, C, datetime], list[e.Event]]],
                                        Callable[[DispatchState, C, datetime], list[e.Event]]]:
    def register(
        fn: Callable[[DispatchState, C, datetime], list[e.Event]],
    ) -> Callable[[DispatchState, C, datetime], list[e.Event]]:
        _HANDLERS[kind] = fn
        return fn

    return register


# --- incidents ------------------------------------------------------------------------------


@_handles(c.CreateIncident)
def _create(state: DispatchState, cmd: c.CreateIncident, now: datetime) -> list[e.Event]:
    if cmd.incident_id in state.incidents:
        raise Conflict(f"incident {cmd.incident_id!r} already exists")
    return [
        e.IncidentCreated(
            at=now,
            incident_id=cmd.incident_id,
            number=cmd.number,
            incident_type=cmd.incident_type,
            priority=cmd.priority,
            location=cmd.location,
            address=cmd.address,
            zone=cmd.zone,
            alert_ids=cmd.alert_ids,
        )
    ]


def _incident(state: DispatchState, incident_id: str, trigger: str, by: str) -> Incident:
    """The incident, after checking that ``trigger`` is allowed in its state."""
    incident = state.incident(incident_id)
    INCIDENT.next(incident.status, trigger, command=by, subject=incident.id)
    return incident


@_handles(c.UpdateIncident)
def _update(state: DispatchState, cmd: c.UpdateIncident, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "update", cmd.name)
    changes = {
        name: value
        for name in c.UPDATABLE_FIELDS
        if (value := getattr(cmd, name)) is not None and value != getattr(incident, name)
    }
    if not changes:
        return []
    return [e.IncidentUpdated(at=now, incident_id=incident.id, **changes)]


@_handles(c.AddNote)
def _note(state: DispatchState, cmd: c.AddNote, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "note", cmd.name)
    if len(incident.notes) >= MAX_NOTES:
        raise Conflict(f"incident {incident.id!r} already has {MAX_NOTES} notes")
    return [e.NoteAdded(at=now, incident_id=incident.id, author=cmd.author, text=cmd.text)]


@_handles(c.LinkAlert)
def _link(state: DispatchState, cmd: c.LinkAlert, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "link_alert", cmd.name)
    if cmd.alert_id in incident.alert_ids:
        return []  # correlation may attach the same alert twice; once is the fact
    return [e.AlertLinked(at=now, incident_id=incident.id, alert_id=cmd.alert_id)]


@_handles(c.LinkAlerts)
def _link_many(state: DispatchState, cmd: c.LinkAlerts, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "link_alert", cmd.name)
    known = set(incident.alert_ids)
    new = tuple(a for a in cmd.alert_ids if a not in known)
    if not new:
        return []
    if len(incident.alert_ids) + len(new) > MAX_ALERTS:
        raise Conflict(f"incident {incident.id!r} already has {len(incident.alert_ids)} alerts"
                       f" (at most {MAX_ALERTS})")
    return [e.AlertsLinked(at=now, incident_id=incident.id, alert_ids=new)]


@_handles(c.RaiseAlarmLevel)
def _raise_alarm(state: DispatchState, cmd: c.RaiseAlarmLevel, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "raise_alarm", cmd.name)
    to_level = cmd.to_level if cmd.to_level is not None else incident.alarm_level + 1
    if to_level > MAX_ALARM_LEVEL:
        raise Conflict(f"incident {incident.id!r} is already at the highest alarm level")
    if to_level <= incident.alarm_level:
        raise Conflict(f"incident {incident.id!r} is already at alarm level {incident.alarm_level}")
    return [
        e.AlarmRaised(
            at=now, incident_id=incident.id, from_level=incident.alarm_level, to_level=to_level
        )
    ]


@_handles(c.CloseIncident)
def _close(state: DispatchState, cmd: c.CloseIncident, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "close", cmd.name)
    active = state.active_assignments_of(incident)
    if active and not state.policy.close_releases_units:
        names = ", ".join(state.unit(a.unit_id).call_sign for a in active)
        raise Conflict(f"incident {incident.id!r} still has units assigned ({names}); clear them first")
    events = _end_all(state, incident, "incident closed", cmd.name, now, keep_patients=True)
    return [*events, e.IncidentClosed(at=now, incident_id=incident.id, disposition=cmd.disposition)]


@_handles(c.CancelIncident)
def _cancel_incident(state: DispatchState, cmd: c.CancelIncident, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "cancel", cmd.name)
    events = _end_all(state, incident, "incident cancelled", cmd.name, now, keep_patients=False)
    return [*events, e.IncidentCancelled(at=now, incident_id=incident.id, reason=cmd.reason)]


def _end_all(
    state: DispatchState, incident: Incident, reason: str, by: str, now: datetime, *,
    keep_patients: bool,
) -> list[e.Event]:
    """End every open assignment of an incident that is closing: on scene → cleared, any
    earlier (including recommended) → cancelled; units go back to available unless they carry
    a patient and ``keep_patients`` says to leave them be."""
    events: list[e.Event] = []
    for a in state.assignments_of(incident):
        if a.status is AssignmentStatus.ON_SCENE:
            events += _end(state, a, "clear", by, now, keep_patients=keep_patients)
        elif ASSIGNMENT.allows(a.status, "cancel"):
            events += _end(state, a, "cancel", by, now, reason=reason, keep_patients=keep_patients)
    return events


# --- assignments ----------------------------------------------------------------------------


@_handles(c.DispatchUnits)
def _dispatch(state: DispatchState, cmd: c.DispatchUnits, now: datetime) -> list[e.Event]:
    incident = _incident(state, cmd.incident_id, "dispatch", cmd.name)
    events = _dispatch_events(state, incident, cmd.units, cmd.name, now)
    if not any(isinstance(ev, e.AssignmentDispatched) for ev in events):
        return events  # only mutual-aid requests: nobody is on the way yet
    return events + _incident_moved(incident, "dispatch", cmd.name, now)


def _dispatch_events(
    state: DispatchState,
    incident: Incident,
    requests: tuple[c.UnitRequest, ...],
    by: str,
    now: datetime,
) -> list[e.Event]:
    # Check every unit before emitting anything: all of them go, or none does. A unit of an
    # agency that is not at home here is requested from that agency instead (mutual aid).
    current = {
        a.unit_id: a
        for a in state.assignments_of(incident)
        if a.active or a.status in (AssignmentStatus.RECOMMENDED, AssignmentStatus.REQUESTED)
    }
    units: list[Unit] = []
    for request in requests:
        unit = state.unit(request.unit_id)
        prior = current.get(unit.id)
        if prior is not None and prior.active:
            raise Conflict(f"{unit.call_sign} is already assigned to incident {incident.id!r}")
        if prior is not None and prior.status is AssignmentStatus.REQUESTED:
            raise Conflict(f"{unit.call_sign} is already requested from its agency for incident {incident.id!r}")
        if unit.status is not UnitStatus.AVAILABLE:
            raise UnitUnavailable(f"{unit.call_sign} is {unit.status.value}, not available")
        units.append(unit)
    due = state.policy.ack_deadline(now)
    events: list[e.Event] = []
    fresh = 0
    for request, unit in zip(requests, units, strict=True):
        prior = current.get(unit.id)
        ask = state.needs_mutual_aid_request(incident.id, unit)
        if prior is not None:  # a recommended assignment is confirmed, keeping its id
            ASSIGNMENT.next(prior.status, "request" if ask else "dispatch", command=by, subject=prior.id)
            assignment_id, capability = prior.id, request.capability or prior.capability
        else:
            assignment_id, capability = incident.next_assignment_id(fresh), request.capability
            fresh += 1
        if ask:
            events.append(
                e.AssignmentMutualAidRequested(
                    at=now,
                    incident_id=incident.id,
                    assignment_id=assignment_id,
                    unit_id=unit.id,
                    agency_id=unit.agency_id,
                    capability=capability,
                    answer_due_at=state.policy.answer_deadline(now),
                )
            )
            continue
        events.append(
            e.AssignmentDispatched(
                at=now,
                incident_id=incident.id,
                assignment_id=assignment_id,
                unit_id=unit.id,
                capability=capability,
                ack_due_at=due,
            )
        )
        events.append(_unit_moved(unit, "dispatch", by, now, incident.id, assignment_id))
    return events


def _assignment(state: DispatchState, assignment_id: str, trigger: str, by: str) -> Assignment:
    """The assignment, after checking that ``trigger`` is allowed in its state."""
    a = state.assignment(assignment_id)
    ASSIGNMENT.next(a.status, trigger, command=by, subject=a.id)
    return a


@_handles(c.AcknowledgeAssignment)
def _acknowledge(state: DispatchState, cmd: c.AcknowledgeAssignment, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "acknowledge", cmd.name)
    return [e.AssignmentAcknowledged(at=now, **_ids(a))]


@_handles(c.AcceptMutualAid)
def _accept_mutual_aid(state: DispatchState, cmd: c.AcceptMutualAid, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "accept", cmd.name)
    incident = _incident(state, a.incident_id, "dispatch", cmd.name)
    unit = state.unit(a.unit_id)
    if unit.status is not UnitStatus.AVAILABLE:
        raise UnitUnavailable(f"{unit.call_sign} is {unit.status.value}, not available; decline the request")
    return [
        e.MutualAidAccepted(at=now, incident_id=incident.id, assignment_id=a.id, unit_id=unit.id,
                            agency_id=unit.agency_id),
        e.AssignmentDispatched(at=now, **_ids(a), capability=a.capability,
                               ack_due_at=state.policy.ack_deadline(now)),
        _unit_moved(unit, "dispatch", cmd.name, now, incident.id, a.id),
        *_incident_moved(incident, "dispatch", cmd.name, now),
    ]


@_handles(c.UnitEnRoute)
def _en_route(state: DispatchState, cmd: c.UnitEnRoute, now: datetime) -> list[e.Event]:
    return _respond(state, _assignment(state, cmd.assignment_id, "respond", cmd.name), cmd.name, now)


def _respond(state: DispatchState, a: Assignment, by: str, now: datetime) -> list[e.Event]:
    ASSIGNMENT.next(a.status, "respond", command=by, subject=a.id)
    unit = state.unit(a.unit_id)
    return [
        e.AssignmentEnRoute(at=now, **_ids(a)),
        _unit_moved(unit, "respond", by, now, a.incident_id, a.id),
    ]


@_handles(c.UnitOnScene)
def _on_scene(state: DispatchState, cmd: c.UnitOnScene, now: datetime) -> list[e.Event]:
    return _arrive(state, _assignment(state, cmd.assignment_id, "arrive", cmd.name), cmd.name, now)


def _arrive(state: DispatchState, a: Assignment, by: str, now: datetime) -> list[e.Event]:
    ASSIGNMENT.next(a.status, "arrive", command=by, subject=a.id)
    incident = _incident(state, a.incident_id, "arrive", by)
    unit = state.unit(a.unit_id)
    return [
        e.AssignmentOnScene(at=now, **_ids(a)),
        _unit_moved(unit, "arrive", by, now, a.incident_id, a.id),
        *_incident_moved(incident, "arrive", by, now),
    ]


@_handles(c.ClearAssignment)
def _clear(state: DispatchState, cmd: c.ClearAssignment, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "clear", cmd.name)
    return _end(state, a, "clear", cmd.name, now)


@_handles(c.CancelAssignment)
def _cancel(state: DispatchState, cmd: c.CancelAssignment, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "cancel", cmd.name)
    return _end(state, a, "cancel", cmd.name, now, reason=cmd.reason) + _release_if_idle(
        state, a, 0, cmd.name, now
    )


@_handles(c.DeclineAssignment)
def _decline(state: DispatchState, cmd: c.DeclineAssignment, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "decline", cmd.name)
    if a.status is AssignmentStatus.REQUESTED:  # the partner agency says no
        agency_id = state.unit(a.unit_id).agency_id
        events: list[e.Event] = [e.AssignmentMutualAidDeclined(at=now, **_ids(a), agency_id=agency_id,
                                                               reason=cmd.reason)]
    else:
        events = _end(state, a, "decline", cmd.name, now, reason=cmd.reason)
    return events + _withdrawn(
        state, a, cmd.replacement_unit_id, state.policy.on_decline, cmd.name, now
    )


@_handles(c.TimeoutAssignment)
def _time_out(state: DispatchState, cmd: c.TimeoutAssignment, now: datetime) -> list[e.Event]:
    a = _assignment(state, cmd.assignment_id, "time_out", cmd.name)
    if not a.overdue(now):
        raise Conflict(f"assignment {a.id!r} is not due to time out until {a.ack_due_at}")
    incident = _incident(state, a.incident_id, "escalate", cmd.name)
    unit = state.unit(a.unit_id)
    if a.status is AssignmentStatus.REQUESTED:
        reason = (f"{unit.agency_id} did not answer the mutual-aid request for {unit.call_sign} "
                  f"within {state.policy.mutual_aid_timeout_s:g} s")
    else:
        reason = f"{unit.call_sign} did not acknowledge within {state.policy.ack_timeout_s:g} s"
    events = _end(state, a, "time_out", cmd.name, now)
    events.append(e.IncidentEscalated(at=now, incident_id=incident.id, assignment_id=a.id, reason=reason))
    return events + _withdrawn(
        state, a, cmd.replacement_unit_id, state.policy.on_timeout, cmd.name, now
    )


def _end(
    state: DispatchState,
    a: Assignment,
    trigger: str,
    by: str,
    now: datetime,
    *,
    reason: str = "",
    keep_patients: bool = False,
) -> list[e.Event]:
    """An assignment reaches a final state, and its unit (if it holds it) is freed."""
    ASSIGNMENT.next(a.status, trigger, command=by, subject=a.id)
    ended: e.AssignmentEvent
    if trigger == "cancel":
        ended = e.AssignmentCancelled(at=now, **_ids(a), reason=reason)
    elif trigger == "decline":
        ended = e.AssignmentDeclined(at=now, **_ids(a), reason=reason)
    else:
        ended = _END_EVENTS[trigger](at=now, **_ids(a))
    events: list[e.Event] = [ended]
    unit = state.unit(a.unit_id)
    holds_unit = a.active and unit.assignment_id == a.id
    if holds_unit and not (keep_patients and unit.status in UNIT_WITH_PATIENT):
        events.append(_unit_moved(unit, "clear", by, now, a.incident_id, a.id))
    return events


_END_EVENTS: dict[str, type[e.AssignmentEvent]] = {
    "clear": e.AssignmentCleared,
    "time_out": e.AssignmentTimedOut,
}


def _withdrawn(
    state: DispatchState,
    a: Assignment,
    replacement_unit_id: str | None,
    mode: Replacement,
    by: str,
    now: datetime,
) -> list[e.Event]:
    """After a decline or timeout: the replacement the policy asks for, then the incident's
    release back to pending if nobody is left on the way."""
    incident = state.incident(a.incident_id)
    replacement = _usable_replacement(state, incident, a, replacement_unit_id)
    events: list[e.Event] = []
    added = 0
    if replacement is not None and mode == "recommend":
        events.append(
            e.AssignmentRecommended(
                at=now,
                incident_id=incident.id,
                assignment_id=incident.next_assignment_id(),
                unit_id=replacement.id,
                capability=a.capability,
            )
        )
    elif replacement is not None and mode == "dispatch":
        request = c.UnitRequest(replacement.id, a.capability)
        sent = _dispatch_events(state, incident, (request,), by, now)
        events += sent
        if any(isinstance(ev, e.AssignmentDispatched) for ev in sent):
            added = 1
            # Pending when only a mutual-aid request was out: now someone is on the way.
            events += _incident_moved(incident, "dispatch", by, now)
    return events + _release_if_idle(state, a, added, by, now)


def _usable_replacement(
    state: DispatchState, incident: Incident, withdrawn: Assignment, unit_id: str | None
) -> Unit | None:
    # The replacement was chosen by the caller from a snapshot; if it is no longer usable the
    # withdrawal still stands (a timeout must never be refused) and simply comes without one.
    unit = state.units.get(unit_id) if unit_id is not None else None
    if unit is None or unit.status is not UnitStatus.AVAILABLE or unit.id == withdrawn.unit_id:
        return None
    for other in state.assignments_of(incident):
        if other.unit_id == unit.id and (other.active or other.status in (
                AssignmentStatus.RECOMMENDED, AssignmentStatus.REQUESTED)):
            return None
    return unit


def _release_if_idle(
    state: DispatchState, withdrawn: Assignment, added: int, by: str, now: datetime
) -> list[e.Event]:
    """Put a dispatched incident back in the queue when its last active assignment ended."""
    incident = state.incident(withdrawn.incident_id)
    if incident.status is not IncidentStatus.DISPATCHED or added:
        return []
    if any(x.id != withdrawn.id for x in state.active_assignments_of(incident)):
        return []
    return _incident_moved(incident, "release", by, now)


# --- units ----------------------------------------------------------------------------------


@_handles(c.ChangeUnitStatus)
def _unit_status(state: DispatchState, cmd: c.ChangeUnitStatus, now: datetime) -> list[e.Event]:
    unit = state.unit(cmd.unit_id)
    if cmd.status is unit.status:
        return []  # field units repeat themselves; the same status twice is one fact
    a = state.assignments.get(unit.assignment_id) if unit.assignment_id is not None else None
    if a is not None and a.active:
        # Statuses that are steps of the assignment move the assignment too.
        if cmd.status is UnitStatus.EN_ROUTE:
            return _respond(state, a, cmd.name, now)
        if cmd.status is UnitStatus.ON_SCENE:
            return _arrive(state, a, cmd.name, now)
        if cmd.status is UnitStatus.AVAILABLE and unit.status not in UNIT_WITH_PATIENT:
            if a.status is AssignmentStatus.ON_SCENE:
                return _end(state, a, "clear", cmd.name, now)
            return _end(
                state, a, "cancel", cmd.name, now, reason="unit reported available"
            ) + _release_if_idle(state, a, 0, cmd.name, now)
        if cmd.status is UnitStatus.AVAILABLE:  # back from hospital: the work is done
            return _end(state, a, "clear", cmd.name, now)
    trigger = UNIT.move_to(
        unit.status, cmd.status, command=cmd.name, subject=unit.id, excluding=frozenset({"dispatch"})
    )
    incident_id = a.incident_id if a is not None else None
    return [_unit_moved(unit, trigger, cmd.name, now, incident_id, unit.assignment_id)]


# --- shared event builders ------------------------------------------------------------------


def _ids(a: Assignment) -> dict[str, str]:
    return {"incident_id": a.incident_id, "assignment_id": a.id, "unit_id": a.unit_id}


def _unit_moved(
    unit: Unit,
    trigger: str,
    by: str,
    now: datetime,
    incident_id: str | None,
    assignment_id: str | None,
) -> e.UnitStatusChanged:
    to = UNIT.next(unit.status, trigger, command=by, subject=unit.id)
    return e.UnitStatusChanged(
        at=now,
        unit_id=unit.id,
        from_status=unit.status,
        to_status=to,
        incident_id=incident_id,
        assignment_id=assignment_id,
    )


def _incident_moved(incident: Incident, trigger: str, by: str, now: datetime) -> list[e.Event]:
    to = INCIDENT.next(incident.status, trigger, command=by, subject=incident.id)
    if to is incident.status:
        return []
    return [
        e.IncidentStatusChanged(
            at=now, incident_id=incident.id, from_status=incident.status, to_status=to
        )
    ]
