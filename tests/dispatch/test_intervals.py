"""Standards intervals from an incident's events, and their percentiles."""

from __future__ import annotations

import pytest

from dispatch import commands as c
from dispatch.agency import Agency
from dispatch.errors import Invalid
from dispatch.evolve import handle
from dispatch.incident import IncidentNumber
from dispatch.intervals import IntervalStats, incident_intervals, percentile, report
from dispatch.state import DispatchState
from tests.dispatch.support import SCENE, at, unit


def _log(*steps):
    s = DispatchState.build(
        agencies=[Agency("hf", "Helsinki Fire", "fire")],
        units=[unit(u, "hf", "ENGINE", metres=1000) for u in ("e1", "e2", "e3")],
    )
    log = []
    for command, t in steps:
        s, events = handle(s, command, at(t))
        log += events
    return log


CREATE = c.CreateIncident(incident_id="I1", number=IncidentNumber(2026, 9), incident_type="flood",
                          priority=2, location=SCENE)


def test_alarm_processing_turnout_travel_and_first_arrival():
    log = _log(
        (CREATE, 0),
        (c.DispatchUnits.of("I1", "e1", "e2"), 75),
        (c.UnitEnRoute(assignment_id="I1-A1"), 135),
        (c.UnitEnRoute(assignment_id="I1-A2"), 155),
        (c.UnitOnScene(assignment_id="I1-A2"), 455),
        (c.UnitOnScene(assignment_id="I1-A1"), 495),
        (c.DispatchUnits.of("I1", "e3"), 500),
        (c.UnitOnScene(assignment_id="I1-A3"), 800),  # never reported en route
    )
    result = incident_intervals(log)
    assert result.incident_id == "I1"
    assert result.alarm_processing_s == 75
    assert result.first_arrival_s == 455
    by_unit = {a.unit_id: a for a in result.assignments}
    assert (by_unit["e1"].turnout_s, by_unit["e1"].travel_s, by_unit["e1"].response_s) == (60, 360, 420)
    assert (by_unit["e2"].turnout_s, by_unit["e2"].travel_s) == (80, 300)
    assert (by_unit["e3"].turnout_s, by_unit["e3"].travel_s, by_unit["e3"].response_s) == (None, None, 300)
    assert result.to_dict()["assignments"][0]["assignment_id"] == "I1-A1"


def test_an_incident_nobody_reached():
    result = incident_intervals(_log((CREATE, 0), (c.CancelIncident(incident_id="I1"), 30)))
    assert (result.alarm_processing_s, result.first_arrival_s, result.assignments) == (None, None, ())


def test_events_of_two_incidents_are_refused():
    log = _log((CREATE, 0))
    other = _log((c.CreateIncident(incident_id="I2", number=IncidentNumber(2026, 10),
                                   incident_type="flood", priority=2, location=SCENE), 0))
    with pytest.raises(Invalid, match="mixed"):
        incident_intervals(log + other)
    with pytest.raises(Invalid):
        incident_intervals([])


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 90, 7.0),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50, 5),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9),
        ([10, 1, 9, 2, 8, 3, 7, 4, 6, 5], 90, 9),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 90, 10),
        ([3, 1, 2], 100, 3),
    ],
)
def test_nearest_rank_percentile(values, p, expected):
    assert percentile(values, p) == expected


def test_percentile_bounds():
    with pytest.raises(Invalid):
        percentile([1.0], 0)


def test_report_aggregates_many_incidents():
    incidents = []
    for n in range(10):
        log = _log(
            (CREATE, 0),
            (c.DispatchUnits.of("I1", "e1"), 10 * (n + 1)),
            (c.UnitEnRoute(assignment_id="I1-A1"), 10 * (n + 1) + 60),
            (c.UnitOnScene(assignment_id="I1-A1"), 10 * (n + 1) + 60 + 100 * (n + 1)),
        )
        incidents.append(incident_intervals(log))
    r = report(incidents)
    assert r.alarm_processing == IntervalStats(10, 50, 90)
    assert r.turnout == IntervalStats(10, 60, 60)
    assert r.travel == IntervalStats(10, 500, 900)
    assert r.first_arrival.count == 10
    assert r.to_dict()["travel"] == {"count": 10, "p50_s": 500, "p90_s": 900}
