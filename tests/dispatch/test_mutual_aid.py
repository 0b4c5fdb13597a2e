"""Mutual aid in the core: a partner agency's unit is requested, and goes only when its agency
accepts; a refusal or silence moves on to the next candidate."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dispatch import commands as c
from dispatch import events as e
from dispatch.agency import Agency, MutualAidTerms
from dispatch.capability import Capability
from dispatch.errors import Conflict, IllegalTransition, UnitUnavailable
from dispatch.evolve import handle
from dispatch.incident import IncidentNumber
from dispatch.lifecycle import AssignmentStatus, IncidentStatus, UnitStatus
from dispatch.policy import DispatchPolicy
from dispatch.recommendation import recommend_for_incident
from dispatch.response_plan import default_plans
from dispatch.state import DispatchState
from tests.dispatch.support import SCENE, FixedSpeedTimer, at, unit

CREATE = c.CreateIncident(incident_id="I1", number=IncidentNumber(2026, 1), incident_type="structure_fire",
                          priority=2, location=SCENE)


def city(*, automatic: bool = False, home: tuple[str, ...] = ("hf",), **policy: object) -> DispatchState:
    terms = MutualAidTerms("vf", frozenset({Capability.ENGINE}), automatic=automatic)
    state = DispatchState.build(
        agencies=[Agency("hf", "Helsinki Fire", "fire", mutual_aid=(terms,)),
                  Agency("vf", "Vantaa Fire", "fire")],
        units=[unit("e1", "hf", "ENGINE", metres=3000), unit("v1", "vf", "ENGINE", metres=1000),
               unit("v2", "vf", "ENGINE", metres=2000)],
        policy=DispatchPolicy(**policy),  # type: ignore[arg-type]
    )
    state, _ = handle(state, CREATE, at(0))
    return replace(state, home_agencies={"I1": home} if home else {})


def step(state: DispatchState, command: c.Command, t: float) -> tuple[DispatchState, list[e.Event]]:
    return handle(state, command, at(t))


def test_a_partner_unit_is_requested_not_dispatched():
    s, events = step(city(), c.DispatchUnits.of("I1", "v1"), 10)
    assert [type(ev) for ev in events] == [e.AssignmentMutualAidRequested]
    req = events[0]
    assert isinstance(req, e.AssignmentMutualAidRequested)
    assert (req.agency_id, req.unit_id, req.answer_due_at) == ("vf", "v1", at(130))
    assert s.assignments["I1-A1"].status is AssignmentStatus.REQUESTED
    assert s.units["v1"].status is UnitStatus.AVAILABLE  # its agency has not said yes yet
    assert s.incidents["I1"].status is IncidentStatus.PENDING


def test_acceptance_dispatches_the_unit():
    s, _ = step(city(), c.DispatchUnits.of("I1", "v1"), 10)
    s, events = step(s, c.AcceptMutualAid(assignment_id="I1-A1"), 20)
    assert [ev.type for ev in events] == [
        "assignment.mutual_aid_accepted", "assignment.dispatched", "unit.status_changed", "incident.status_changed"]
    assert s.assignments["I1-A1"].status is AssignmentStatus.DISPATCHED
    assert s.assignments["I1-A1"].ack_due_at == at(80)
    assert s.units["v1"].status is UnitStatus.DISPATCHED and s.units["v1"].assignment_id == "I1-A1"
    assert s.incidents["I1"].status is IncidentStatus.DISPATCHED


def test_home_and_partner_units_in_one_dispatch():
    s, events = step(city(), c.DispatchUnits.of("I1", "e1", "v1"), 10)
    assert [ev.type for ev in events] == [
        "assignment.dispatched", "unit.status_changed", "assignment.mutual_aid_requested", "incident.status_changed"]
    assert s.incidents["I1"].status is IncidentStatus.DISPATCHED


def test_a_refusal_moves_to_the_next_candidate():
    s, _ = step(city(on_decline="dispatch"), c.DispatchUnits.of("I1", "v1"), 10)
    s, events = step(s, c.DeclineAssignment(assignment_id="I1-A1", reason="all engines busy",
                                            replacement_unit_id="v2"), 20)
    assert [ev.type for ev in events] == ["assignment.mutual_aid_declined", "assignment.mutual_aid_requested"]
    declined = events[0]
    assert isinstance(declined, e.AssignmentMutualAidDeclined)
    assert (declined.agency_id, declined.reason) == ("vf", "all engines busy")
    assert s.assignments["I1-A1"].status is AssignmentStatus.DECLINED
    assert s.assignments["I1-A2"].status is AssignmentStatus.REQUESTED
    assert s.assignments["I1-A2"].unit_id == "v2"


def test_silence_times_out_only_at_the_deadline_and_escalates():
    s, _ = step(city(on_timeout="dispatch"), c.DispatchUnits.of("I1", "v1"), 10)
    with pytest.raises(Conflict):
        step(s, c.TimeoutAssignment(assignment_id="I1-A1"), 100)
    s, events = step(s, c.TimeoutAssignment(assignment_id="I1-A1", replacement_unit_id="e1"), 130)
    assert [ev.type for ev in events] == [
        "assignment.timed_out", "incident.escalated", "assignment.dispatched", "unit.status_changed",
        "incident.status_changed"]
    escalated = events[1]
    assert isinstance(escalated, e.IncidentEscalated)
    assert "did not answer the mutual-aid request for" in escalated.reason
    assert s.units["e1"].status is UnitStatus.DISPATCHED  # the home engine went instead


def test_automatic_aid_dispatches_directly():
    s, events = step(city(automatic=True), c.DispatchUnits.of("I1", "v1"), 10)
    assert events[0].type == "assignment.dispatched"
    assert s.units["v1"].status is UnitStatus.DISPATCHED


def test_an_incident_without_a_home_agency_dispatches_directly():
    s, events = step(city(home=()), c.DispatchUnits.of("I1", "v1"), 10)
    assert events[0].type == "assignment.dispatched"
    assert s.units["v1"].status is UnitStatus.DISPATCHED


def test_a_recommended_partner_unit_confirmed_becomes_a_request_with_its_id():
    s, _ = step(city(on_decline="recommend"), c.DispatchUnits.of("I1", "e1"), 10)
    s, events = step(s, c.DeclineAssignment(assignment_id="I1-A1", replacement_unit_id="v1"), 20)
    assert "assignment.recommended" in [ev.type for ev in events]
    s, events = step(s, c.DispatchUnits.of("I1", "v1"), 30)
    assert [ev.type for ev in events] == ["assignment.mutual_aid_requested"]
    assert s.assignments["I1-A2"].status is AssignmentStatus.REQUESTED


def test_refusals_of_impossible_answers():
    s, _ = step(city(), c.DispatchUnits.of("I1", "v1", "e1"), 10)
    with pytest.raises(Conflict, match="already requested"):
        step(s, c.DispatchUnits.of("I1", "v1"), 11)
    with pytest.raises(IllegalTransition):
        step(s, c.AcceptMutualAid(assignment_id="I1-A2"), 12)  # e1's: dispatched, not requested
    busy = s.with_unit(replace(s.units["v1"], status=UnitStatus.OUT_OF_SERVICE))
    with pytest.raises(UnitUnavailable):
        step(busy, c.AcceptMutualAid(assignment_id="I1-A1"), 12)


def test_closing_the_incident_withdraws_open_requests():
    s, _ = step(city(), c.DispatchUnits.of("I1", "v1"), 10)
    s, events = step(s, c.CloseIncident(incident_id="I1"), 20)
    assert [ev.type for ev in events] == ["assignment.cancelled", "incident.closed"]
    assert s.assignments["I1-A1"].status is AssignmentStatus.CANCELLED
    with pytest.raises(IllegalTransition):
        step(s, c.AcceptMutualAid(assignment_id="I1-A1"), 30)


def test_a_request_counts_as_filling_its_requirement():
    s, _ = step(city(), c.DispatchUnits(incident_id="I1", units=(c.UnitRequest("v1", Capability.ENGINE),)), 10)
    rec = recommend_for_incident(s, "I1", plans=default_plans(), timer=FixedSpeedTimer(), now=at(11),
                                 home_agency_ids=["hf"])
    v1 = next(p for p in rec.picks if p.unit_id == "v1")
    assert v1.already_assigned and v1.capability is Capability.ENGINE
    assert "v1" not in {p.unit_id for p in rec.new_picks}
