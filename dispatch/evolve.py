"""``evolve(state, event) -> state``: apply one recorded fact to a snapshot, nothing more.

Events are facts that ``decide`` already checked, so ``evolve`` does not judge them; it only
writes them down. It is also how the live picture follows the event log, and replaying a log
from an empty state (plus reference data) rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from functools import reduce
from typing import Any

from dispatch import events as e
from dispatch.assignment import Assignment
from dispatch.commands import Command
from dispatch.decide import decide
from dispatch.incident import Incident, Note
from dispatch.lifecycle import AssignmentStatus, IncidentStatus
from dispatch.state import DispatchState

_APPLIERS: dict[type[e.Event], Callable[[DispatchState, Any], DispatchState]] = {}


def evolve(state: DispatchState, event: e.Event) -> DispatchState:
    """The state after ``event``."""
    try:
        apply = _APPLIERS[type(event)]
    except KeyError:
        raise TypeError(f"evolve has no rule for {type(event).__name__}") from None
    return apply(state, event)


def evolve_all(state: DispatchState, events: Iterable[e.Event]) -> DispatchState:
    return reduce(evolve, events, state)


def handle(state: DispatchState, command: Command, now: datetime) -> tuple[DispatchState, list[e.Event]]:
    """``decide`` then ``evolve``: the new state and the events that led to it."""
    events = decide(state, command, now)
    return evolve_all(state, events), events


def _applies(*kinds: type[e.Event]) -> Callable[[Callable[[DispatchState, Any], DispatchState]],
                                               Callable[[DispatchState, Any], DispatchState]]:
    def register(
        fn: Callable[[DispatchState, Any], DispatchState],
    ) -> Callable[[DispatchState, Any], DispatchState]:
        for kind in kinds:
            _APPLIERS[kind] = fn
        return fn

    return register


# --- incidents ------------------------------------------------------------------------------


@_applies(e.IncidentCreated)
def _created(state: DispatchState, ev: e.IncidentCreated) -> DispatchState:
    return state.with_incident(
        Incident(
            id=ev.incident_id,
            number=ev.number,
            incident_type=ev.incident_type,
            priority=ev.priority,
            location=ev.location,
            created_at=ev.at,
            address=ev.address,
            zone=ev.zone,
            alert_ids=ev.alert_ids,
        )
    )


def _change(state: DispatchState, incident_id: str, **changes: Any) -> DispatchState:
    return state.with_incident(replace(state.incident(incident_id), **changes))


@_applies(e.IncidentUpdated)
def _updated(state: DispatchState, ev: e.IncidentUpdated) -> DispatchState:
    changes = {
        name: value
        for name in ("incident_type", "priority", "location", "address", "zone")
        if (value := getattr(ev, name)) is not None
    }
    return _change(state, ev.incident_id, **changes)


@_applies(e.NoteAdded)
def _note(state: DispatchState, ev: e.NoteAdded) -> DispatchState:
    incident = state.incident(ev.incident_id)
    note = Note(at=ev.at, author=ev.author, text=ev.text)
    return _change(state, incident.id, notes=(*incident.notes, note))


@_applies(e.AlertLinked)
def _alert(state: DispatchState, ev: e.AlertLinked) -> DispatchState:
    incident = state.incident(ev.incident_id)
    return _change(state, incident.id, alert_ids=(*incident.alert_ids, ev.alert_id))


@_applies(e.AlertsLinked)
def _alerts(state: DispatchState, ev: e.AlertsLinked) -> DispatchState:
    incident = state.incident(ev.incident_id)
    return _change(state, incident.id, alert_ids=(*incident.alert_ids, *ev.alert_ids))


@_applies(e.IncidentStatusChanged)
def _incident_status(state: DispatchState, ev: e.IncidentStatusChanged) -> DispatchState:
    return _change(state, ev.incident_id, status=ev.to_status)


@_applies(e.AlarmRaised)
def _alarm(state: DispatchState, ev: e.AlarmRaised) -> DispatchState:
    return _change(state, ev.incident_id, alarm_level=ev.to_level)


@_applies(e.IncidentEscalated)
def _escalated(state: DispatchState, ev: e.IncidentEscalated) -> DispatchState:
    return _change(state, ev.incident_id, escalated_at=ev.at)


@_applies(e.MutualAidAccepted)
def _mutual_aid_accepted(state: DispatchState, ev: e.MutualAidAccepted) -> DispatchState:
    return state  # the answer on record; the assignment.dispatched that follows moves the state


@_applies(e.IncidentClosed)
def _closed(state: DispatchState, ev: e.IncidentClosed) -> DispatchState:
    return _change(state, ev.incident_id, status=IncidentStatus.CLOSED, ended_at=ev.at)


@_applies(e.IncidentCancelled)
def _cancelled(state: DispatchState, ev: e.IncidentCancelled) -> DispatchState:
    return _change(state, ev.incident_id, status=IncidentStatus.CANCELLED, ended_at=ev.at)


# --- assignments ----------------------------------------------------------------------------


@_applies(e.AssignmentRecommended, e.AssignmentDispatched, e.AssignmentMutualAidRequested)
def _assigned(
    state: DispatchState,
    ev: e.AssignmentRecommended | e.AssignmentDispatched | e.AssignmentMutualAidRequested,
) -> DispatchState:
    existing = state.assignments.get(ev.assignment_id)
    if existing is None:
        incident = state.incident(ev.incident_id)
        state = _change(state, incident.id, assignment_ids=(*incident.assignment_ids, ev.assignment_id))
        assignment = Assignment(
            id=ev.assignment_id,
            incident_id=ev.incident_id,
            unit_id=ev.unit_id,
            status=ev.status,
            created_at=ev.at,
            capability=ev.capability,
            updated_at=ev.at,
        )
    else:
        assignment = replace(
            existing, status=ev.status, capability=ev.capability or existing.capability,
            updated_at=ev.at,
        )
    if isinstance(ev, e.AssignmentMutualAidRequested):
        assignment = replace(assignment, ack_due_at=ev.answer_due_at)
    if isinstance(ev, e.AssignmentDispatched):
        assignment = replace(assignment, dispatched_at=ev.at, ack_due_at=ev.ack_due_at)
        state = state.with_unit(replace(state.unit(ev.unit_id), assignment_id=ev.assignment_id))
    return state.with_assignment(assignment)


@_applies(
    e.AssignmentAcknowledged,
    e.AssignmentDeclined,
    e.AssignmentMutualAidDeclined,
    e.AssignmentTimedOut,
    e.AssignmentEnRoute,
    e.AssignmentOnScene,
    e.AssignmentCleared,
    e.AssignmentCancelled,
)
def _assignment_moved(state: DispatchState, ev: e.AssignmentEvent) -> DispatchState:
    a = replace(state.assignment(ev.assignment_id), status=ev.status, updated_at=ev.at)
    state = state.with_assignment(a)
    unit = state.unit(ev.unit_id)
    # The unit stops pointing at an assignment that no longer holds it.
    if not a.active and a.status is not AssignmentStatus.RECOMMENDED and unit.assignment_id == a.id:
        state = state.with_unit(replace(unit, assignment_id=None))
    return state


# --- units ----------------------------------------------------------------------------------


@_applies(e.UnitStatusChanged)
def _unit_status(state: DispatchState, ev: e.UnitStatusChanged) -> DispatchState:
    return state.with_unit(replace(state.unit(ev.unit_id), status=ev.to_status))
