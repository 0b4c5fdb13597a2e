"""decide/evolve: scenarios, policies, errors, and round trips through the event log's JSON."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch import commands as c
from dispatch import events as e
from dispatch.agency import Agency, Station
from dispatch.decide import decide
from dispatch.errors import Conflict, DomainError, IllegalTransition, Invalid, NotFound, UnitUnavailable
from dispatch.evolve import evolve, evolve_all, handle
from dispatch.incident import MAX_ALERTS, IncidentNumber
from dispatch.lifecycle import (
    ACTIVE_ASSIGNMENT,
    UNIT_WITH_PATIENT,
    AssignmentStatus,
    IncidentStatus,
    UnitStatus,
)
from dispatch.policy import DispatchPolicy
from dispatch.state import DispatchState
from geo.coords import Point
from tests.dispatch.support import SCENE, T0, at, unit


def world(policy: DispatchPolicy | None = None) -> DispatchState:
    return DispatchState.build(
        agencies=[Agency("hf", "Helsinki Fire", "fire"), Agency("he", "Helsinki EMS", "ems")],
        stations=[Station("s1", "hf", "Central", Point(60.18, 24.94))],
        units=[
            unit("e1", "hf", "ENGINE", station="s1"),
            unit("e2", "hf", "ENGINE", station="s1"),
            unit("e3", "hf", "ENGINE", station="s1"),
            unit("m1", "he", "ALS,BLS"),
        ],
        policy=policy,
    )


CREATE = c.CreateIncident(
    incident_id="I1",
    number=IncidentNumber(2026, 123),
    incident_type="structure_fire",
    priority=2,
    location=SCENE,
    address="Mannerheimintie 1",
    alert_ids=("alert-1",),
)


def run(state: DispatchState, *steps: tuple[c.Command, float]) -> tuple[DispatchState, list[e.Event]]:
    log: list[e.Event] = []
    for command, t in steps:
        state, events = handle(state, command, at(t))
        log += events
    return state, log


def types(events: list[e.Event]) -> list[str]:
    return [ev.type for ev in events]


def test_full_life_of_an_incident():
    s, log = run(
        world(),
        (CREATE, 0),
        (c.DispatchUnits.of("I1", "e1", "m1"), 30),
        (c.AcknowledgeAssignment(assignment_id="I1-A1"), 40),
        (c.UnitEnRoute(assignment_id="I1-A1"), 90),
        (c.UnitOnScene(assignment_id="I1-A1"), 400),
        (c.ChangeUnitStatus(unit_id="m1", status="en_route"), 100),
        (c.ChangeUnitStatus(unit_id="m1", status="on_scene"), 500),
        (c.ChangeUnitStatus(unit_id="m1", status="transporting"), 900),
        (c.ClearAssignment(assignment_id="I1-A1"), 1200),
        (c.CloseIncident(incident_id="I1", disposition="fire out"), 1300),
    )
    assert types(log) == [
        "incident.created",
        "assignment.dispatched", "unit.status_changed",
        "assignment.dispatched", "unit.status_changed",
        "incident.status_changed",
        "assignment.acknowledged",
        "assignment.en_route", "unit.status_changed",
        "assignment.on_scene", "unit.status_changed", "incident.status_changed",
        "assignment.en_route", "unit.status_changed",
        "assignment.on_scene", "unit.status_changed",
        "unit.status_changed",
        "assignment.cleared", "unit.status_changed",
        # Closing: the ambulance's assignment is cleared but, carrying a patient, it stays
        # transporting until it reports free.
        "assignment.cleared",
        "incident.closed",
    ]
    incident = s.incidents["I1"]
    assert incident.status is IncidentStatus.CLOSED
    assert incident.ended_at == at(1300)
    assert s.units["e1"].status is UnitStatus.AVAILABLE
    assert s.units["m1"].status is UnitStatus.TRANSPORTING
    assert s.units["m1"].assignment_id is None
    s, log = run(s, (c.ChangeUnitStatus(unit_id="m1", status="available"), 2000))
    assert s.units["m1"].status is UnitStatus.AVAILABLE
    assert types(log) == ["unit.status_changed"]


def test_created_incident_carries_everything():
    s, (ev,) = run(world(), (CREATE, 0))
    incident = s.incidents["I1"]
    assert isinstance(ev, e.IncidentCreated)
    assert str(incident.number) == "2026-000123"
    assert incident.status is IncidentStatus.PENDING
    assert incident.alert_ids == ("alert-1",)
    assert incident.created_at == T0
    assert ev.subject == "incident/I1"
    with pytest.raises(Conflict):
        decide(s, CREATE, at(1))


def test_dispatch_is_all_or_nothing():
    s, _ = run(world(), (CREATE, 0), (c.ChangeUnitStatus(unit_id="e2", status="out_of_service"), 0))
    with pytest.raises(UnitUnavailable, match="E2 is out_of_service") as info:
        decide(s, c.DispatchUnits.of("I1", "e1", "e2"), at(10))
    assert info.value.code == "unit_unavailable"
    with pytest.raises(NotFound) as nf:
        decide(s, c.DispatchUnits.of("I1", "e1", "ghost"), at(10))
    assert nf.value.code == "not_found"
    s, _ = run(s, (c.DispatchUnits.of("I1", "e1"), 10))
    with pytest.raises(Conflict, match="already assigned"):
        decide(s, c.DispatchUnits.of("I1", "e1"), at(20))


def test_ack_deadline_and_timeout_escalates():
    policy = DispatchPolicy(ack_timeout_s=45, on_timeout="none")
    s, log = run(world(policy), (CREATE, 0), (c.DispatchUnits.of("I1", "e1"), 10))
    dispatched = log[1]
    assert isinstance(dispatched, e.AssignmentDispatched)
    assert dispatched.ack_due_at == at(55) == policy.ack_deadline(at(10))
    assert s.assignments["I1-A1"].ack_due_at == at(55)
    assert not s.assignments["I1-A1"].overdue(at(54))
    with pytest.raises(Conflict, match="not due"):
        decide(s, c.TimeoutAssignment(assignment_id="I1-A1"), at(54))
    events = decide(s, c.TimeoutAssignment(assignment_id="I1-A1"), at(55))
    assert types(events) == [
        "assignment.timed_out", "unit.status_changed", "incident.escalated",
        "incident.status_changed",
    ]
    escalated = events[2]
    assert isinstance(escalated, e.IncidentEscalated)
    assert escalated.reason == "E1 did not acknowledge within 45 s"
    s = evolve_all(s, events)
    assert s.incidents["I1"].status is IncidentStatus.PENDING  # back to the queue
    assert s.incidents["I1"].escalated_at == at(55)
    assert s.units["e1"].status is UnitStatus.AVAILABLE


def test_timeout_after_acknowledgement_is_illegal():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1"), 0),
               (c.AcknowledgeAssignment(assignment_id="I1-A1"), 5))
    with pytest.raises(IllegalTransition, match="is acknowledged; cannot time out"):
        decide(s, c.TimeoutAssignment(assignment_id="I1-A1"), at(600))


@pytest.mark.parametrize("mode", ["none", "recommend", "dispatch"])
def test_timeout_replacement_follows_policy(mode):
    s, _ = run(world(DispatchPolicy(on_timeout=mode)), (CREATE, 0),
               (c.DispatchUnits(incident_id="I1", units=(c.UnitRequest("e1", "ENGINE"),)), 0))
    events = decide(s, c.TimeoutAssignment(assignment_id="I1-A1", replacement_unit_id="e2"), at(60))
    s2 = evolve_all(s, events)
    if mode == "none":
        assert "I1-A2" not in s2.assignments
        assert s2.incidents["I1"].status is IncidentStatus.PENDING
    elif mode == "recommend":
        a2 = s2.assignments["I1-A2"]
        assert (a2.status, a2.unit_id, a2.capability) == (AssignmentStatus.RECOMMENDED, "e2", "ENGINE")
        assert s2.units["e2"].status is UnitStatus.AVAILABLE  # a proposal reserves nothing
        assert s2.incidents["I1"].status is IncidentStatus.PENDING
        # The dispatcher confirms: the same assignment is dispatched.
        s3, _ = run(s2, (c.DispatchUnits.of("I1", "e2"), 70))
        assert s3.assignments["I1-A2"].status is AssignmentStatus.DISPATCHED
        assert s3.assignments["I1-A2"].capability == "ENGINE"
        assert s3.units["e2"].assignment_id == "I1-A2"
        assert s3.incidents["I1"].assignment_ids == ("I1-A1", "I1-A2")
    else:
        assert types(events) == [
            "assignment.timed_out", "unit.status_changed", "incident.escalated",
            "assignment.dispatched", "unit.status_changed",
        ]
        assert s2.units["e2"].status is UnitStatus.DISPATCHED
        assert s2.incidents["I1"].status is IncidentStatus.DISPATCHED


def test_stale_replacement_does_not_block_the_timeout():
    s, _ = run(world(DispatchPolicy(on_timeout="dispatch")), (CREATE, 0),
               (c.DispatchUnits.of("I1", "e1", "e2"), 0))
    events = decide(s, c.TimeoutAssignment(assignment_id="I1-A1", replacement_unit_id="e2"), at(60))
    assert types(events) == ["assignment.timed_out", "unit.status_changed", "incident.escalated"]


def test_decline_with_recommended_replacement_and_reject():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1"), 0))
    s, log = run(s, (c.DeclineAssignment(assignment_id="I1-A1", reason="flat tyre",
                                         replacement_unit_id="e3"), 5))
    assert types(log) == [
        "assignment.declined", "unit.status_changed", "assignment.recommended",
        "incident.status_changed",
    ]
    assert log[0].reason == "flat tyre"  # type: ignore[attr-defined]
    s, log = run(s, (c.CancelAssignment(assignment_id="I1-A2", reason="dispatcher prefers E2"), 9))
    assert types(log) == ["assignment.cancelled"]
    assert s.units["e3"].status is UnitStatus.AVAILABLE


def test_close_refused_while_units_assigned_when_policy_says_so():
    s, _ = run(world(DispatchPolicy(close_releases_units=False)), (CREATE, 0),
               (c.DispatchUnits.of("I1", "e1"), 0))
    with pytest.raises(Conflict, match=r"still has units assigned \(E1\)"):
        decide(s, c.CloseIncident(incident_id="I1"), at(100))
    s, _ = run(s, (c.CancelAssignment(assignment_id="I1-A1"), 50),
               (c.CloseIncident(incident_id="I1"), 100))
    assert s.incidents["I1"].status is IncidentStatus.CLOSED


def test_close_releases_every_unit_by_default():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1", "e2", "e3"), 0),
               (c.UnitOnScene(assignment_id="I1-A1"), 100), (c.UnitEnRoute(assignment_id="I1-A2"), 30))
    s, log = run(s, (c.CloseIncident(incident_id="I1"), 500))
    statuses = {a.unit_id: a.status for a in s.assignments.values()}
    assert statuses == {"e1": "cleared", "e2": "cancelled", "e3": "cancelled"}
    assert all(u.status is UnitStatus.AVAILABLE and u.assignment_id is None for u in s.units.values())
    assert types(log)[-1] == "incident.closed"


def test_cancel_incident_only_before_arrival():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1"), 0))
    s2, log = run(s, (c.CancelIncident(incident_id="I1", reason="duplicate of I0"), 5))
    assert types(log) == ["assignment.cancelled", "unit.status_changed", "incident.cancelled"]
    assert s2.units["e1"].status is UnitStatus.AVAILABLE
    s3, _ = run(s, (c.UnitOnScene(assignment_id="I1-A1"), 60))
    with pytest.raises(IllegalTransition, match="CancelIncident: incident 'I1' is active; cannot cancel"):
        decide(s3, c.CancelIncident(incident_id="I1"), at(70))


def test_unit_status_routes_through_its_assignment():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1", "e2"), 0))
    s, log = run(s, (c.ChangeUnitStatus(unit_id="e1", status="en_route"), 10))
    assert types(log) == ["assignment.en_route", "unit.status_changed"]
    # Available while en route: the unit was recalled, so its assignment is cancelled.
    s, log = run(s, (c.ChangeUnitStatus(unit_id="e1", status="available"), 20))
    assert types(log) == ["assignment.cancelled", "unit.status_changed"]
    s, log = run(s, (c.ChangeUnitStatus(unit_id="e2", status="on_scene"), 30),
                 (c.ChangeUnitStatus(unit_id="e2", status="available"), 40))
    assert types(log)[-2:] == ["assignment.cleared", "unit.status_changed"]
    with pytest.raises(IllegalTransition, match="ChangeUnitStatus: unit 'e3' is available; cannot change to on_scene"):
        decide(s, c.ChangeUnitStatus(unit_id="e3", status="on_scene"), at(50))
    # Repeating a status is a no-op, not an error.
    assert decide(s, c.ChangeUnitStatus(unit_id="e3", status="available"), at(50)) == []


def test_busy_unit_cannot_go_out_of_service():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1"), 0))
    with pytest.raises(IllegalTransition, match="is dispatched; cannot change to out_of_service"):
        decide(s, c.ChangeUnitStatus(unit_id="e1", status="out_of_service"), at(5))


def test_release_only_when_no_unit_is_left():
    s, _ = run(world(), (CREATE, 0), (c.DispatchUnits.of("I1", "e1", "e2"), 0))
    s, log = run(s, (c.CancelAssignment(assignment_id="I1-A1"), 5))
    assert "incident.status_changed" not in types(log)
    s, log = run(s, (c.DeclineAssignment(assignment_id="I1-A2"), 6))
    assert types(log)[-1] == "incident.status_changed"
    assert s.incidents["I1"].status is IncidentStatus.PENDING


def test_incident_chores():
    s, _ = run(world(), (CREATE, 0))
    s, log = run(
        s,
        (c.UpdateIncident(incident_id="I1", priority=1, address="Mannerheimintie 1"), 1),
        (c.AddNote(incident_id="I1", author="disp-7", text="second caller: flames visible"), 2),
        (c.LinkAlert(incident_id="I1", alert_id="alert-2"), 3),
        (c.LinkAlert(incident_id="I1", alert_id="alert-2"), 4),
        (c.RaiseAlarmLevel(incident_id="I1"), 5),
    )
    assert types(log) == [
        "incident.updated", "incident.note_added", "incident.alert_linked", "incident.alarm_raised",
    ]
    updated = log[0]
    assert isinstance(updated, e.IncidentUpdated)
    assert updated.priority == 1 and updated.address is None  # unchanged fields are not repeated
    incident = s.incidents["I1"]
    assert (incident.priority, incident.alarm_level) == (1, 2)
    assert incident.notes[0].text == "second caller: flames visible"
    assert incident.alert_ids == ("alert-1", "alert-2")
    assert decide(s, c.UpdateIncident(incident_id="I1", priority=1), at(6)) == []
    with pytest.raises(Conflict, match="already at alarm level 2"):
        decide(s, c.RaiseAlarmLevel(incident_id="I1", to_level=2), at(6))
    s, _ = run(s, (c.RaiseAlarmLevel(incident_id="I1", to_level=5), 7))
    with pytest.raises(Conflict, match="highest"):
        decide(s, c.RaiseAlarmLevel(incident_id="I1"), at(8))


def test_link_alerts_adds_the_new_ids_in_order_as_one_fact():
    s, _ = run(world(), (CREATE, 0), (c.LinkAlert(incident_id="I1", alert_id="alert-2"), 1))
    events = decide(s, c.LinkAlerts(incident_id="I1", alert_ids=("alert-4", "alert-2", "alert-3")), at(2))
    assert events == [e.AlertsLinked(at=at(2), incident_id="I1", alert_ids=("alert-4", "alert-3"))]
    s = evolve_all(s, events)
    assert s.incidents["I1"].alert_ids == ("alert-1", "alert-2", "alert-4", "alert-3")
    assert decide(s, c.LinkAlerts(incident_id="I1", alert_ids=("alert-3", "alert-1")), at(3)) == []
    with pytest.raises(Invalid, match="same id twice"):
        c.LinkAlerts(incident_id="I1", alert_ids=("a", "a"))
    with pytest.raises(Invalid, match="at least one"):
        c.LinkAlerts(incident_id="I1", alert_ids=())
    with pytest.raises(Invalid):
        c.LinkAlerts(incident_id="I1", alert_ids=tuple(f"a{n}" for n in range(c.MAX_ALERTS_PER_LINK + 1)))
    closed, _ = run(s, (c.CloseIncident(incident_id="I1"), 4))
    with pytest.raises(IllegalTransition, match="LinkAlerts: incident 'I1' is closed"):
        decide(closed, c.LinkAlerts(incident_id="I1", alert_ids=("alert-9",)), at(5))


def test_link_alerts_keeps_an_incident_within_its_bound():
    s, _ = run(world(), (CREATE, 0))
    full = (*s.incidents["I1"].alert_ids, *(f"x{n}" for n in range(MAX_ALERTS - 2)))
    s = replace(s, incidents={"I1": replace(s.incidents["I1"], alert_ids=full)})
    assert len(decide(s, c.LinkAlerts(incident_id="I1", alert_ids=("y1",)), at(1))[0].alert_ids) == 1
    with pytest.raises(Conflict, match="at most 10000"):
        decide(s, c.LinkAlerts(incident_id="I1", alert_ids=("y1", "y2")), at(1))


def test_notes_after_close_but_no_updates():
    s, _ = run(world(), (CREATE, 0), (c.CloseIncident(incident_id="I1"), 5),
               (c.AddNote(incident_id="I1", author="d", text="report filed"), 6))
    assert len(s.incidents["I1"].notes) == 1
    with pytest.raises(IllegalTransition, match="UpdateIncident: incident 'I1' is closed"):
        decide(s, c.UpdateIncident(incident_id="I1", priority=1), at(7))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: c.CreateIncident(incident_id="bad id", number=IncidentNumber(2026, 1),
                                  incident_type="fire", priority=1, location=SCENE), "incident_id"),
        (lambda: c.CreateIncident(incident_id="I9", number=IncidentNumber(2026, 1),
                                  incident_type="fire", priority=6, location=SCENE), "priority"),
        (lambda: c.CreateIncident(incident_id="I9", number=IncidentNumber(2026, 1),
                                  incident_type="Structure Fire", priority=1, location=SCENE),
         "incident_type"),
        (lambda: c.UpdateIncident(incident_id="I1"), None),
        (lambda: c.DispatchUnits(incident_id="I1", units=()), "units"),
        (lambda: c.DispatchUnits.of("I1", "e1", "e1"), "units"),
        (lambda: c.ChangeUnitStatus(unit_id="e1", status="dispatched"), "status"),
        (lambda: c.ChangeUnitStatus(unit_id="e1", status="flying"), "status"),
        (lambda: c.AddNote(incident_id="I1", author="d", text="   "), "text"),
        (lambda: c.AddNote(incident_id="I1", author="d", text="x" * 10_001), "text"),
        (lambda: c.RaiseAlarmLevel(incident_id="I1", to_level=9), "to_level"),
    ],
)
def test_commands_are_validated_at_construction(make, field):
    with pytest.raises(Invalid) as info:
        make()
    assert info.value.code == "invalid"
    assert info.value.field == field


def test_decide_requires_aware_time():
    from datetime import datetime

    with pytest.raises(Invalid, match="timezone-aware"):
        decide(world(), CREATE, datetime(2026, 1, 1))


def test_errors_have_stable_codes():
    assert {cls.code for cls in (Invalid, NotFound, Conflict, UnitUnavailable, IllegalTransition)} == {
        "invalid", "not_found", "conflict", "unit_unavailable", "illegal_transition",
    }
    err = NotFound("unit", "x")
    assert err.to_dict() == {"code": "not_found", "message": "unit 'x' does not exist"}


# --- round trips ----------------------------------------------------------------------------

STORY = (
    (CREATE, 0),
    (c.LinkAlert(incident_id="I1", alert_id="alert-7"), 1),
    (c.LinkAlerts(incident_id="I1", alert_ids=("alert-8", "alert-9")), 2),
    (c.DispatchUnits(incident_id="I1", units=(c.UnitRequest("e1", "ENGINE"), c.UnitRequest("m1"))), 20),
    (c.TimeoutAssignment(assignment_id="I1-A2", replacement_unit_id="e2"), 90),
    (c.DispatchUnits.of("I1", "e2"), 95),
    (c.UnitEnRoute(assignment_id="I1-A1"), 100),
    (c.UnitOnScene(assignment_id="I1-A1"), 400),
    (c.UpdateIncident(incident_id="I1", location=Point(60.171, 24.941), zone="kamppi"), 410),
    (c.RaiseAlarmLevel(incident_id="I1"), 420),
    (c.AddNote(incident_id="I1", author="d", text="roof collapsed"), 430),
    (c.CloseIncident(incident_id="I1", disposition="extinguished"), 2000),
)


def test_events_survive_json_and_replay_to_the_same_state():
    start = world()
    final, log = run(start, *STORY)
    wire = [json.loads(json.dumps(ev.to_dict())) for ev in log]
    back = [e.event_from_dict(d) for d in wire]
    assert back == log
    assert evolve_all(start, back) == final
    assert {ev.type for ev in log} >= {"assignment.recommended", "incident.escalated"}


def test_every_event_type_is_produced_registered_and_round_trips():
    _, story = run(world(), *STORY)
    _, other = run(
        world(),
        (CREATE, 0),
        (c.DispatchUnits.of("I1", "e1", "e2", "m1"), 1),
        (c.AcknowledgeAssignment(assignment_id="I1-A1"), 2),
        (c.DeclineAssignment(assignment_id="I1-A2", reason="no crew"), 3),
        (c.CancelAssignment(assignment_id="I1-A3"), 4),
        (c.UnitOnScene(assignment_id="I1-A1"), 5),
        (c.ClearAssignment(assignment_id="I1-A1"), 6),
        (c.CreateIncident(incident_id="I2", number=IncidentNumber(2026, 124),
                          incident_type="flood", priority=3, location=SCENE), 7),
        (c.CancelIncident(incident_id="I2", reason="duplicate"), 8),
    )
    start = replace(world(), home_agencies={"I1": ("hf",)})  # so he's m1 is mutual aid at I1
    _, aid = run(
        start,
        (CREATE, 0),
        (c.DispatchUnits.of("I1", "m1"), 1),
        (c.AcceptMutualAid(assignment_id="I1-A1"), 2),
        (c.DispatchUnits.of("I1", "e1"), 3),
        (c.CancelAssignment(assignment_id="I1-A1"), 4),
        (c.DispatchUnits.of("I1", "m1"), 5),
        (c.DeclineAssignment(assignment_id="I1-A3", reason="busy"), 6),
    )
    log = story + other + aid
    assert {ev.type for ev in log} == set(e.EVENT_TYPES)
    assert len(e.EVENT_TYPES) == 23
    for ev in log:
        assert e.EVENT_TYPES[ev.type] is type(ev)
        assert e.event_from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


@pytest.mark.parametrize(
    "data",
    [
        {"type": "incident.nope"},
        {"type": "incident.closed", "incident_id": "I1"},  # no "at"
        {"type": "incident.closed", "incident_id": "I1", "at": "2026-01-01T00:00:00"},  # naive
        {"type": "incident.closed", "incident_id": "I1", "at": "2026-01-01T00:00:00Z", "x": 1},
        {"type": "incident.created", "incident_id": "I1", "at": "2026-01-01T00:00:00Z",
         "number": "26-1", "incident_type": "fire", "priority": 1, "location": {"lat": 1, "lon": 2}},
        {"type": "incident.updated", "incident_id": "I1", "at": "2026-01-01T00:00:00Z",
         "location": {"lat": 91, "lon": 2}},
    ],
)
def test_bad_event_json_is_invalid(data):
    with pytest.raises(Invalid):
        e.event_from_dict(data)


def test_evolve_refuses_unknown_events():
    class Stray(e.Event):
        type = "stray"

    with pytest.raises(TypeError):
        evolve(world(), Stray(at=T0))


def test_states_are_snapshots():
    s0 = world()
    s1, _ = run(s0, (CREATE, 0))
    assert "I1" not in s0.incidents and "I1" in s1.incidents
    with pytest.raises(TypeError):
        s1.incidents["I2"] = s1.incidents["I1"]  # type: ignore[index]
    moved = s1.with_unit_position("e1", Point(60.2, 24.9), at(3))
    assert moved.units["e1"].position == Point(60.2, 24.9)
    assert s1.units["e1"].position is None


def test_build_checks_references():
    with pytest.raises(Invalid, match="agency 'nope'"):
        DispatchState.build(units=[unit("e1", "nope", "ENGINE")])


# --- random command sequences keep the invariants -------------------------------------------

_UNITS = ("e1", "e2", "e3", "m1")
_INCIDENTS = ("I1", "I2")
_ASSIGNMENTS = tuple(f"{i}-A{n}" for i in _INCIDENTS for n in range(1, 5))
_ids = st.sampled_from


def _create(i: str) -> c.Command:
    return replace(CREATE, incident_id=i, alert_ids=())


COMMANDS = st.one_of(
    st.builds(lambda i, us: c.DispatchUnits.of(i, *us), _ids(_INCIDENTS),
              st.lists(_ids(_UNITS), min_size=1, max_size=2, unique=True)),
    st.builds(lambda a: c.AcknowledgeAssignment(assignment_id=a), _ids(_ASSIGNMENTS)),
    st.builds(lambda a, r: c.DeclineAssignment(assignment_id=a, replacement_unit_id=r),
              _ids(_ASSIGNMENTS), st.none() | _ids(_UNITS)),
    st.builds(lambda a, r: c.TimeoutAssignment(assignment_id=a, replacement_unit_id=r),
              _ids(_ASSIGNMENTS), st.none() | _ids(_UNITS)),
    st.builds(lambda a: c.UnitEnRoute(assignment_id=a), _ids(_ASSIGNMENTS)),
    st.builds(lambda a: c.UnitOnScene(assignment_id=a), _ids(_ASSIGNMENTS)),
    st.builds(lambda a: c.ClearAssignment(assignment_id=a), _ids(_ASSIGNMENTS)),
    st.builds(lambda a: c.CancelAssignment(assignment_id=a), _ids(_ASSIGNMENTS)),
    # Ending an incident is one branch of many, so sequences live long enough to be interesting.
    st.builds(lambda kind, i: kind(incident_id=i),
              _ids([c.CloseIncident, c.CancelIncident, c.RaiseAlarmLevel]), _ids(_INCIDENTS)),
    st.builds(lambda u, s: c.ChangeUnitStatus(unit_id=u, status=s), _ids(_UNITS),
              _ids([s for s in UnitStatus if s is not UnitStatus.DISPATCHED])),
)


def check_invariants(s: DispatchState) -> None:
    for u in s.units.values():
        if u.assignment_id is not None:
            a = s.assignments[u.assignment_id]
            assert a.active and a.unit_id == u.id
        else:
            assert u.status in (UnitStatus.AVAILABLE, UnitStatus.OUT_OF_SERVICE, UnitStatus.OFF_DUTY,
                                *UNIT_WITH_PATIENT)
    for a in s.assignments.values():
        if a.status in ACTIVE_ASSIGNMENT:
            assert s.units[a.unit_id].assignment_id == a.id
            assert s.incidents[a.incident_id].status in (IncidentStatus.DISPATCHED, IncidentStatus.ACTIVE)
    for i in s.incidents.values():
        active = s.active_assignments_of(i)
        if i.status is IncidentStatus.DISPATCHED:
            assert active and all(a.status is not AssignmentStatus.ON_SCENE for a in active)
        if i.status in (IncidentStatus.PENDING, IncidentStatus.CLOSED, IncidentStatus.CANCELLED):
            assert not active


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(COMMANDS, max_size=50), st.booleans())
def test_random_sequences_keep_invariants_and_replay(commands, releases):
    start = world(DispatchPolicy(on_timeout="dispatch", on_decline="recommend",
                                 close_releases_units=releases))
    start, log = run(start, *((_create(i), 0) for i in _INCIDENTS))
    s = start
    for n, command in enumerate(commands):
        now = at(100 * n)
        try:
            events = decide(s, command, now)
        except DomainError:
            continue  # refused commands change nothing
        s = evolve_all(s, events)
        log += events
        check_invariants(s)
    assert evolve_all(world(start.policy), [e.event_from_dict(ev.to_dict()) for ev in log]) == s


def test_every_command_has_a_rule():
    from dispatch.decide import _HANDLERS

    assert set(_HANDLERS) == set(c.COMMAND_TYPES)

    class Stray(c.Command):
        pass

    with pytest.raises(Invalid, match="unknown command Stray"):
        decide(world(), Stray(), T0)
