"""The pure path end to end: a sensor body → report → alert rules → correlation → dispatch core,
as the server wires it (without HTTP or a database): a confident gunshot is dispatched at once,
a second shot nearby joins the same incident, a reading under its threshold opens nothing."""

from __future__ import annotations

import json

from dispatch import commands as c
from dispatch.agency import Agency
from dispatch.alert_rules import default_alert_rules
from dispatch.correlation import AlertFacts, OpenIncident, OpenIncidents, correlate
from dispatch.evolve import handle
from dispatch.incident import IncidentNumber
from dispatch.lifecycle import AssignmentStatus
from dispatch.recommendation import recommend_for_incident
from dispatch.response_plan import default_plans
from dispatch.state import DispatchState
from icp.intake.native import parse_native
from icp.intake.registry import InMemorySensorRegistry, SensorRecord
from icp.intake.report import AlertReport, IntakeConfig
from icp.intake.sensorthings import parse_observation
from tests.dispatch.support import HKI_EMS, SCENE, T0, FixedSpeedTimer, at, north_of, unit
from tests.icp.intake import HELSINKI_AREA

POLICE = Agency("hki-police", "Helsinki Police", "police")
CONFIG = IntakeConfig(service_area=HELSINKI_AREA)


def city() -> DispatchState:
    return DispatchState.build(
        agencies=[POLICE, HKI_EMS],
        units=[
            unit("p1", "hki-police", "PATROL", metres=400),
            unit("p2", "hki-police", "PATROL", metres=900),
            unit("p3", "hki-police", "PATROL", metres=5_000),
            unit("m1", "hki-ems", "ALS", metres=1_200),
        ],
    )


def shot(ident: str, metres: float, seconds: float) -> AlertReport:
    where = north_of(SCENE, metres)
    body = {"source": "acoustic-net", "id": ident, "kind": "gunshot", "time": at(seconds).isoformat(),
            "location": {"type": "Point", "coordinates": [where.lon, where.lat]}, "certainty": "Likely"}
    return parse_native(json.dumps(body).encode(), CONFIG, now=at(seconds))


def take(state: DispatchState, snapshot: OpenIncidents, report: AlertReport, alert_id: str, n: int):
    """What the intake service does with one stored alert; returns the new state and snapshot."""
    assert report.actionable
    decision = default_alert_rules().decide(report.kind, report.severity, report.urgency, report.certainty)
    assert decision.opens_incident
    alert = AlertFacts(alert_id, report.kind, report.location, report.sent, decision.priority)
    outcome = correlate(alert, snapshot)
    if outcome.action == "attach":
        for command in outcome.commands():
            state, _ = handle(state, command, report.sent)
        return state, snapshot.with_incident(snapshot.get(outcome.incident_id).after(outcome, report.sent)), outcome
    incident_id = f"I-{n}"
    state, _ = handle(state, c.CreateIncident(
        incident_id=incident_id, number=IncidentNumber(2026, n), incident_type=decision.incident_type,
        priority=decision.priority, location=report.location, alert_ids=(alert_id,)), report.sent)
    if decision.auto_dispatch:
        rec = recommend_for_incident(state, incident_id, plans=default_plans(), timer=FixedSpeedTimer(),
                                     now=report.sent, home_agency_ids=("hki-police", "hki-ems"))
        command = c.DispatchUnits(incident_id=incident_id,
                                  units=tuple(c.UnitRequest(p.unit_id, p.capability) for p in rec.new_picks))
        state, _ = handle(state, command, report.sent)
    opened = OpenIncident.from_incident(state.incident(incident_id), last_alert_at=report.sent)
    return state, snapshot.with_incident(opened), outcome


def test_a_confident_gunshot_is_dispatched_and_the_next_shot_joins_it():
    state, snapshot = city(), OpenIncidents()
    state, snapshot, first = take(state, snapshot, shot("shot-1", 0, 0), "al-1", 1)
    assert first.action == "create"
    incident = state.incident("I-1")
    assert (incident.incident_type, incident.priority) == ("gunshot", 1)
    dispatched = {a.unit_id: a.status for a in state.assignments_of(incident)}
    # The run card: two patrols and a paramedic unit, the nearest ones, without a dispatcher.
    assert dispatched == {"p1": AssignmentStatus.DISPATCHED, "p2": AssignmentStatus.DISPATCHED,
                          "m1": AssignmentStatus.DISPATCHED}

    state, snapshot, second = take(state, snapshot, shot("shot-2", 120, 40), "al-2", 2)
    assert second.action == "attach" and second.incident_id == "I-1"
    assert state.incident("I-1").alert_ids == ("al-1", "al-2")
    assert len(state.incidents) == 1

    state, snapshot, third = take(state, snapshot, shot("shot-3", 60, 70), "al-3", 3)
    assert third.action == "attach" and state.incident("I-1").priority == 1  # already at the top


def test_a_reading_under_its_threshold_opens_nothing():
    registry = InMemorySensorRegistry(datastreams={"g": SensorRecord("g", location=SCENE,
                                                                     observed_property="water_level")})
    body = {"Datastream": {"@iot.id": "g"}, "phenomenonTime": T0.isoformat(), "result": 0.4}
    report = parse_observation(json.dumps(body), source="river-net", registry=registry, config=CONFIG)
    assert report.below_threshold and not report.actionable
