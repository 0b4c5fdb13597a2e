"""Every legal and illegal transition of the three lifecycles, against an independent list.

The expected transitions are written out here by hand, not read from the tables, so a change to
a table that nobody meant fails a test. Each machine is then exercised twice: directly through
``Lifecycle.next`` for every (state, trigger) pair, and through ``decide`` with the commands
that fire those triggers.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from dispatch import commands as c
from dispatch.agency import Agency, Station
from dispatch.assignment import Assignment
from dispatch.decide import decide
from dispatch.errors import IllegalTransition
from dispatch.events import AssignmentEvent, IncidentCancelled, IncidentClosed, UnitStatusChanged
from dispatch.evolve import evolve_all
from dispatch.incident import Incident, IncidentNumber
from dispatch.lifecycle import (
    ASSIGNMENT,
    INCIDENT,
    UNIT,
    AssignmentStatus,
    IncidentStatus,
    Lifecycle,
    UnitStatus,
)
from dispatch.state import DispatchState
from geo.coords import Point
from tests.dispatch.support import SCENE, T0, at, unit

EXPECTED_INCIDENT = {
    ("pending", "update", "pending"),
    ("pending", "note", "pending"),
    ("pending", "link_alert", "pending"),
    ("pending", "raise_alarm", "pending"),
    ("pending", "escalate", "pending"),
    ("pending", "dispatch", "dispatched"),
    ("pending", "close", "closed"),
    ("pending", "cancel", "cancelled"),
    ("dispatched", "update", "dispatched"),
    ("dispatched", "note", "dispatched"),
    ("dispatched", "link_alert", "dispatched"),
    ("dispatched", "raise_alarm", "dispatched"),
    ("dispatched", "escalate", "dispatched"),
    ("dispatched", "dispatch", "dispatched"),
    ("dispatched", "arrive", "active"),
    ("dispatched", "release", "pending"),
    ("dispatched", "close", "closed"),
    ("dispatched", "cancel", "cancelled"),
    ("active", "update", "active"),
    ("active", "note", "active"),
    ("active", "link_alert", "active"),
    ("active", "raise_alarm", "active"),
    ("active", "escalate", "active"),
    ("active", "dispatch", "active"),
    ("active", "arrive", "active"),
    ("active", "close", "closed"),
    ("closed", "note", "closed"),
    ("cancelled", "note", "cancelled"),
}

EXPECTED_UNIT = {
    ("available", "dispatch", "dispatched"),
    ("available", "go_out_of_service", "out_of_service"),
    ("available", "go_off_duty", "off_duty"),
    ("dispatched", "respond", "en_route"),
    ("dispatched", "arrive", "on_scene"),
    ("dispatched", "clear", "available"),
    ("en_route", "arrive", "on_scene"),
    ("en_route", "clear", "available"),
    ("on_scene", "transport", "transporting"),
    ("on_scene", "clear", "available"),
    ("transporting", "reach_hospital", "at_hospital"),
    ("transporting", "clear", "available"),
    ("at_hospital", "clear", "available"),
    ("out_of_service", "return_to_service", "available"),
    ("out_of_service", "go_off_duty", "off_duty"),
    ("off_duty", "go_on_duty", "available"),
    ("off_duty", "go_out_of_service", "out_of_service"),
}

EXPECTED_ASSIGNMENT = {
    ("recommended", "dispatch", "dispatched"),
    ("recommended", "request", "requested"),
    ("recommended", "cancel", "cancelled"),
    ("requested", "accept", "dispatched"),
    ("requested", "decline", "declined"),
    ("requested", "time_out", "timed_out"),
    ("requested", "cancel", "cancelled"),
    ("dispatched", "acknowledge", "acknowledged"),
    ("dispatched", "decline", "declined"),
    ("dispatched", "time_out", "timed_out"),
    ("dispatched", "respond", "en_route"),
    ("dispatched", "arrive", "on_scene"),
    ("dispatched", "cancel", "cancelled"),
    ("acknowledged", "respond", "en_route"),
    ("acknowledged", "arrive", "on_scene"),
    ("acknowledged", "decline", "declined"),
    ("acknowledged", "cancel", "cancelled"),
    ("en_route", "arrive", "on_scene"),
    ("en_route", "cancel", "cancelled"),
    ("on_scene", "clear", "cleared"),
}

MACHINES = [
    pytest.param(INCIDENT, EXPECTED_INCIDENT, id="incident"),
    pytest.param(UNIT, EXPECTED_UNIT, id="unit"),
    pytest.param(ASSIGNMENT, EXPECTED_ASSIGNMENT, id="assignment"),
]


def _table(machine):
    return {(s.value, t, to.value) for s, row in machine.table.items() for t, to in row.items()}


@pytest.mark.parametrize(("machine", "expected"), MACHINES)
def test_table_is_exactly_the_expected_list(machine, expected):
    assert _table(machine) == expected


def _all_pairs(machine, expected):
    legal = {(f, t): to for f, t, to in expected}
    triggers = sorted({t for _, t, _ in expected})
    for state in machine.states:
        for trigger in triggers:
            yield machine, state, trigger, legal.get((state.value, trigger))


ALL_PAIRS = [
    pytest.param(m, s, t, to, id=f"{m.name}-{s.value}-{t}")
    for param in MACHINES
    for m, s, t, to in _all_pairs(*param.values)
]


@pytest.mark.parametrize(("machine", "state", "trigger", "to"), ALL_PAIRS)
def test_every_state_trigger_pair(machine, state, trigger, to):
    if to is not None:
        assert machine.next(state, trigger, command="Test").value == to
        assert machine.allows(state, trigger)
    else:
        with pytest.raises(IllegalTransition) as info:
            machine.next(state, trigger, command="SomeCommand", subject="X1")
        err = info.value
        assert err.code == "illegal_transition"
        assert state.value in str(err) and "SomeCommand" in str(err) and "'X1'" in str(err)
        assert not machine.allows(state, trigger)


def test_terminal_states():
    assert INCIDENT.terminal == {IncidentStatus.CLOSED, IncidentStatus.CANCELLED}
    assert UNIT.terminal == frozenset()
    assert ASSIGNMENT.terminal == {
        AssignmentStatus.CLEARED,
        AssignmentStatus.DECLINED,
        AssignmentStatus.TIMED_OUT,
        AssignmentStatus.CANCELLED,
    }


def test_a_table_with_a_missing_state_is_rejected_at_construction():
    with pytest.raises(ValueError, match="every state"):
        Lifecycle(
            name="broken",
            initial=UnitStatus.AVAILABLE,
            table={UnitStatus.AVAILABLE: {}},
            descriptions={UnitStatus.AVAILABLE: "x"},
        )


# --- the same machines, driven through decide ----------------------------------------------

STATION = Station("st1", "hki-fire", "Central", Point(60.18, 24.94))


def _world(incident_status: str, assignment_status: str | None) -> DispatchState:
    """An incident in ``incident_status`` with, optionally, one assignment in
    ``assignment_status`` whose unit's status is consistent with it; plus a free unit E2."""
    a_status = AssignmentStatus(assignment_status) if assignment_status else None
    unit_status = {
        AssignmentStatus.DISPATCHED: UnitStatus.DISPATCHED,
        AssignmentStatus.ACKNOWLEDGED: UnitStatus.DISPATCHED,
        AssignmentStatus.EN_ROUTE: UnitStatus.EN_ROUTE,
        AssignmentStatus.ON_SCENE: UnitStatus.ON_SCENE,
    }.get(a_status, UnitStatus.AVAILABLE)
    holds = a_status is not None and unit_status is not UnitStatus.AVAILABLE
    e1 = replace(unit("e1", "hki-fire", "ENGINE", station="st1"), status=unit_status,
                 assignment_id="I1-A1" if holds else None)
    e2 = unit("e2", "hki-fire", "ENGINE", station="st1")
    assignments = []
    if a_status is not None:
        assignments.append(
            Assignment(id="I1-A1", incident_id="I1", unit_id="e1", status=a_status, created_at=T0,
                       dispatched_at=T0, ack_due_at=T0 + timedelta(seconds=60))
        )
    incident = Incident(
        id="I1", number=IncidentNumber(2026, 1), incident_type="structure_fire", priority=2,
        location=SCENE, created_at=T0, status=IncidentStatus(incident_status),
        assignment_ids=tuple(a.id for a in assignments),
    )
    return DispatchState.build(agencies=[Agency("hki-fire", "Helsinki Fire", "fire")],
                               stations=[STATION], units=[e1, e2], incidents=[incident],
                               assignments=assignments)


# Which command fires which assignment trigger (independent of decide's code).
ASSIGNMENT_COMMANDS = {
    "acknowledge": c.AcknowledgeAssignment(assignment_id="I1-A1"),
    "decline": c.DeclineAssignment(assignment_id="I1-A1", reason="engine fault"),
    "time_out": c.TimeoutAssignment(assignment_id="I1-A1"),
    "respond": c.UnitEnRoute(assignment_id="I1-A1"),
    "arrive": c.UnitOnScene(assignment_id="I1-A1"),
    "clear": c.ClearAssignment(assignment_id="I1-A1"),
    "cancel": c.CancelAssignment(assignment_id="I1-A1"),
}


def _incident_status_for(a: AssignmentStatus) -> str:
    if a is AssignmentStatus.ON_SCENE:
        return "active"
    if a in (AssignmentStatus.DISPATCHED, AssignmentStatus.ACKNOWLEDGED, AssignmentStatus.EN_ROUTE):
        return "dispatched"
    return "dispatched" if a is not AssignmentStatus.RECOMMENDED else "pending"


ASSIGNMENT_CASES = [
    pytest.param(state, trigger, id=f"{state.value}-{trigger}")
    for state in AssignmentStatus
    for trigger in ASSIGNMENT_COMMANDS
]


@pytest.mark.parametrize(("state", "trigger"), ASSIGNMENT_CASES)
def test_assignment_commands_in_every_state(state, trigger):
    world = _world(_incident_status_for(state), state.value)
    command = ASSIGNMENT_COMMANDS[trigger]
    expected = {(f, t): to for f, t, to in EXPECTED_ASSIGNMENT}.get((state.value, trigger))
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            decide(world, command, at(120))
        assert f"is {state.value};" in str(info.value)
        assert str(info.value).startswith(type(command).__name__)
        return
    events = decide(world, command, at(120))
    first = events[0]
    assert isinstance(first, AssignmentEvent)
    assert first.status.value == expected
    after = evolve_all(world, events)
    assert after.assignments["I1-A1"].status.value == expected
    if not after.assignments["I1-A1"].active:
        assert after.units["e1"].assignment_id is None
        assert after.units["e1"].status is UnitStatus.AVAILABLE


UNIT_TARGETS = [s for s in UnitStatus if s is not UnitStatus.DISPATCHED]
UNIT_CASES = [
    pytest.param(f, t, id=f"{f.value}-to-{t.value}") for f in UnitStatus for t in UNIT_TARGETS
]


@pytest.mark.parametrize(("from_status", "target"), UNIT_CASES)
def test_change_unit_status_without_assignment(from_status, target):
    world = _world("pending", None)
    world = world.with_unit(replace(world.units["e1"], status=from_status))
    command = c.ChangeUnitStatus(unit_id="e1", status=target)
    legal = {(f, to) for f, _, to in EXPECTED_UNIT if to != "dispatched"}
    if from_status is target:
        assert decide(world, command, T0) == []
    elif (from_status.value, target.value) in legal:
        (event,) = decide(world, command, T0)
        assert isinstance(event, UnitStatusChanged)
        assert (event.from_status, event.to_status) == (from_status, target)
    else:
        with pytest.raises(IllegalTransition) as info:
            decide(world, command, T0)
        assert f"is {from_status.value};" in str(info.value)
        assert "ChangeUnitStatus" in str(info.value)


INCIDENT_COMMANDS = {
    "update": c.UpdateIncident(incident_id="I1", priority=1),
    "note": c.AddNote(incident_id="I1", author="d1", text="caller reports smoke"),
    "link_alert": c.LinkAlert(incident_id="I1", alert_id="alert-9"),
    "raise_alarm": c.RaiseAlarmLevel(incident_id="I1"),
    "dispatch": c.DispatchUnits.of("I1", "e2"),
    "close": c.CloseIncident(incident_id="I1"),
    "cancel": c.CancelIncident(incident_id="I1"),
}
_ASSIGNMENT_FOR_INCIDENT = {
    "pending": None, "dispatched": "dispatched", "active": "on_scene",
    "closed": "cleared", "cancelled": "cancelled",
}
INCIDENT_CASES = [
    pytest.param(s, t, id=f"{s.value}-{t}") for s in IncidentStatus for t in INCIDENT_COMMANDS
]


@pytest.mark.parametrize(("state", "trigger"), INCIDENT_CASES)
def test_incident_commands_in_every_state(state, trigger):
    world = _world(state.value, _ASSIGNMENT_FOR_INCIDENT[state.value])
    command = INCIDENT_COMMANDS[trigger]
    expected = {(f, t): to for f, t, to in EXPECTED_INCIDENT}.get((state.value, trigger))
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            decide(world, command, at(5))
        assert f"is {state.value};" in str(info.value)
        assert str(info.value).startswith(type(command).__name__)
        return
    events = decide(world, command, at(5))
    assert events
    after = evolve_all(world, events)
    assert after.incidents["I1"].status.value == expected
    if trigger in ("close", "cancel"):
        assert isinstance(events[-1], IncidentClosed | IncidentCancelled)
        assert not after.active_assignments_of(after.incidents["I1"])
