"""Correlation: one building's detectors make one incident, distance, time windows, kinds,
escalation, determinism, explanations, the commands it yields, and speed."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dispatch import commands as c
from dispatch.alert_rules import AlertKind, default_alert_rules
from dispatch.correlation import (
    AlertFacts,
    CorrelationPolicy,
    EscalationRule,
    OpenIncident,
    OpenIncidents,
    Reach,
    correlate,
    correlate_all,
    default_policy,
    policy_markdown,
)
from dispatch.errors import Invalid
from dispatch.evolve import handle
from dispatch.incident import IncidentNumber
from dispatch.state import DispatchState
from geo.coords import Point
from tests.dispatch.support import SCENE, T0, at, north_of

ROOT = Path(__file__).resolve().parents[2]


def facts(aid: str, kind: str = "smoke", metres: float = 0.0, seconds: float = 0.0, priority: int | None = None,
          where: Point = SCENE) -> AlertFacts:
    return AlertFacts(aid, kind, north_of(where, metres), at(seconds), priority)


def incident(iid: str, incident_type: str = "alarm_activation", metres: float = 0.0, seconds: float = 0.0,
             priority: int = 3, alerts: int = 1, where: Point = SCENE) -> OpenIncident:
    return OpenIncident(iid, incident_type, north_of(where, metres), at(seconds), priority, alerts, at(seconds))


def opened_by_rules(alert: AlertFacts) -> OpenIncident | None:
    """What the server does on a create: open the incident the alert rules ask for."""
    decision = default_alert_rules().decide(alert.kind)
    if decision.incident_type is None:
        return None
    return OpenIncident(f"I-{alert.alert_id}", decision.incident_type, alert.location, alert.at,
                        decision.priority, 1, alert.at)


def test_five_smoke_detectors_in_one_building_make_one_incident():
    alerts = [facts(f"det-{i}", metres=8.0 * i, seconds=20.0 * i) for i in range(5)]
    outcomes, snapshot = correlate_all(alerts, [], opened_by_rules)
    assert [o.action for o in outcomes] == ["create", "attach", "attach", "attach", "attach"]
    assert {o.incident_id for o in outcomes[1:]} == {"I-det-0"}
    assert len(snapshot) == 1
    final = snapshot.get("I-det-0")
    assert final.alert_count == 5 and final.last_alert_at == at(80)
    # The third detector turns an automatic alarm into a fire, one priority up.
    third = outcomes[2]
    assert third.changed and (third.previous_priority, third.priority) == (3, 2)
    assert (third.previous_incident_type, third.incident_type) == ("alarm_activation", "structure_fire")
    assert "3 alerts reach 3" in third.reason and "rarely all false" in third.reason
    assert not outcomes[3].changed and final.priority == 2 and final.incident_type == "structure_fire"


def test_two_detectors_far_apart_make_two_incidents():
    outcomes, snapshot = correlate_all([facts("a"), facts("b", metres=800, seconds=30)], [], opened_by_rules)
    assert [o.action for o in outcomes] == ["create", "create"]
    assert len(snapshot) == 2
    assert "nearest: I-a at 800 m" in outcomes[1].reason


def test_radius_is_per_kind():
    open_ = [incident("F", "structure_fire"), incident("G", "gunshot")]
    assert correlate(facts("s", "smoke", metres=140), open_).incident_id == "F"
    assert correlate(facts("s", "smoke", metres=160), open_).action == "create"
    assert correlate(facts("g", "gunshot", metres=290), open_).incident_id == "G"
    assert correlate(facts("g", "gunshot", metres=310), open_).action == "create"


def test_time_window_runs_from_the_last_alert():
    open_ = [incident("F", seconds=0)]
    assert correlate(facts("x", seconds=14 * 60), open_).action == "attach"
    assert correlate(facts("x", seconds=16 * 60), open_).action == "create"
    # A later alert moved the window on.
    later = [replace(open_[0], last_alert_at=at(10 * 60))]
    assert correlate(facts("x", seconds=24 * 60), later).action == "attach"
    # An incident opened by a dispatcher (no alert yet) is measured from its creation.
    manual = [replace(open_[0], alert_count=0, last_alert_at=None)]
    assert correlate(facts("x", seconds=16 * 60), manual).action == "create"


def test_a_late_alert_stamped_before_the_incident_still_joins_within_the_window():
    assert correlate(facts("x", seconds=-5 * 60), [incident("F")]).action == "attach"


def test_incompatible_kinds_never_merge():
    open_ = [incident("F", "structure_fire"), incident("M", "medical_emergency")]
    assert correlate(facts("g", "gunshot"), open_).action == "create"
    assert correlate(facts("w", "flood"), open_).action == "create"
    assert correlate(facts("p", "panic"), open_).incident_id == "M"
    assert correlate(facts("gas", "gas"), open_).incident_id == "F"  # gas may join a fire
    weather = correlate(facts("wx", "weather"), open_)
    assert weather.action == "create" and "join no incident type" in weather.reason


def test_the_nearest_wins_then_the_most_recent_then_the_id():
    open_ = [incident("far", metres=100), incident("near", metres=40), incident("other", metres=-60)]
    assert correlate(facts("x"), open_).incident_id == "near"
    tied = [incident("b", metres=50, seconds=0), incident("a", metres=50, seconds=-60),
            incident("c", metres=50, seconds=60)]
    assert correlate(facts("x", seconds=120), tied).incident_id == "c"
    same = [incident("b", metres=50), incident("a", metres=50)]
    assert correlate(facts("x"), same).incident_id == "a"


def test_answers_do_not_depend_on_input_order():
    rng = random.Random(7)
    open_ = [incident(f"I{i}", rng.choice(["structure_fire", "alarm_activation", "gunshot"]),
                      metres=rng.uniform(-400, 400), seconds=rng.uniform(-600, 0)) for i in range(200)]
    alerts = [facts(f"a{i}", rng.choice(["smoke", "gunshot"]), metres=rng.uniform(-400, 400)) for i in range(50)]
    first = [correlate(a, open_) for a in alerts]
    rng.shuffle(open_)
    assert [correlate(a, OpenIncidents(open_)) for a in alerts] == first


def test_escalation_is_capped_at_priority_one_and_fires_once():
    near_cap = incident("G", "gunshot", priority=1, alerts=2)
    out = correlate(facts("x", "gunshot"), [near_cap])
    assert out.priority == 1 and not out.changed
    many = incident("G", "gunshot", priority=2, alerts=5)
    assert correlate(facts("x", "gunshot"), [many]).priority == 2  # the threshold was crossed long ago


def test_an_alert_that_asks_for_more_raises_the_incident():
    out = correlate(facts("x", "gunshot", priority=1), [incident("G", "gunshot", priority=2)])
    assert (out.previous_priority, out.priority) == (2, 1)
    assert "the alert itself asks for priority 1" in out.reason
    assert correlate(facts("x", "gunshot", priority=4), [incident("G", "gunshot", priority=2)]).priority == 2


def test_attach_yields_the_commands_the_dispatch_core_applies():
    state = DispatchState.build()
    state, _ = handle(state, c.CreateIncident(
        incident_id="I-1", number=IncidentNumber(2026, 1), incident_type="alarm_activation", priority=3,
        location=SCENE, alert_ids=("a0", "a1")), T0)
    open_ = [OpenIncident.from_incident(state.incident("I-1"), last_alert_at=T0)]
    out = correlate(facts("a2", metres=10, seconds=30), open_)
    commands = out.commands()
    assert commands == [c.LinkAlert(incident_id="I-1", alert_id="a2"),
                        c.UpdateIncident(incident_id="I-1", incident_type="structure_fire", priority=2)]
    for command in commands:
        state, _ = handle(state, command, at(30))
    assert state.incident("I-1").alert_ids == ("a0", "a1", "a2")
    assert (state.incident("I-1").incident_type, state.incident("I-1").priority) == ("structure_fire", 2)
    assert correlate(facts("z", metres=900), open_).commands() == []


def test_snapshot_updates_touch_only_what_changed():
    snap = OpenIncidents([incident("F"), incident("G", "gunshot")])
    assert correlate(facts("x"), snap).incident_id == "F"
    moved = snap.with_incident(replace(snap.get("F"), location=north_of(SCENE, 5_000)))
    assert correlate(facts("x"), moved).action == "create"
    assert correlate(facts("x"), snap).incident_id == "F"  # the old snapshot is unchanged
    retyped = snap.with_incident(replace(snap.get("F"), incident_type="flood"))
    assert correlate(facts("x"), retyped).action == "create"
    closed = snap.without("F")
    assert len(closed) == 1 and correlate(facts("x"), closed).action == "create"
    assert closed.without("nope") is closed
    with pytest.raises(Invalid, match="listed twice"):
        OpenIncidents([incident("F"), incident("F")])


def test_a_snapshot_changed_many_times_answers_like_one_built_afresh():
    rng = random.Random(3)
    types = ["structure_fire", "alarm_activation", "gunshot"]
    snap = OpenIncidents(incident(f"I{i}", rng.choice(types), metres=rng.uniform(-300, 300)) for i in range(30))
    probes = [facts(f"p{i}", rng.choice(["smoke", "gunshot"]), metres=rng.uniform(-300, 300)) for i in range(20)]
    for step in range(200):
        [correlate(p, snap) for p in probes[:2]]  # build some groups, so changes must keep them right
        action = rng.random()
        iid = f"I{rng.randrange(40)}"
        if action < 0.3:
            snap = snap.without(iid)
        elif action < 0.6 and snap.get(iid) is not None:
            snap = snap.with_incident(replace(snap.get(iid), alert_count=snap.get(iid).alert_count + 1))
        else:
            snap = snap.with_incident(incident(iid, rng.choice(types), metres=rng.uniform(-300, 300)))
        if step % 20 == 0:
            fresh = OpenIncidents(list(snap))
            assert [correlate(p, snap) for p in probes] == [correlate(p, fresh) for p in probes]


def test_a_snapshot_like_an_earlier_one_takes_over_its_unchanged_place_indexes():
    # The next batch reads mostly the same incidents: where a set of types' incidents are the
    # same, at the same places, it keeps the earlier index (and what it measured); anywhere else
    # it builds its own, and every answer is what a snapshot built afresh gives.
    rng = random.Random(11)
    types = ["structure_fire", "alarm_activation", "gunshot"]
    first = OpenIncidents(incident(f"I{i}", rng.choice(types), metres=rng.uniform(-300, 300)) for i in range(30))
    probes = [facts(f"p{i}", rng.choice(["smoke", "gunshot"]), metres=rng.uniform(-300, 300)) for i in range(20)]
    before = [correlate(p, first) for p in probes]
    counted = [replace(i, alert_count=i.alert_count + 1) for i in first]  # no place or type changed
    same = OpenIncidents(counted, like=first)
    assert same._group(("gunshot",)) is first._group(("gunshot",))
    assert [correlate(p, same) for p in probes] == [correlate(p, OpenIncidents(counted)) for p in probes]
    assert [o.action for o in before] == [o.action for o in (correlate(p, same) for p in probes)]
    for step in range(30):
        changed = list(first)
        k = rng.randrange(len(changed))
        if step % 3 == 0:
            changed[k] = replace(changed[k], location=north_of(SCENE, rng.uniform(-300, 300)))
        elif step % 3 == 1:
            changed[k] = replace(changed[k], incident_type=rng.choice(types))
        else:
            del changed[k]
        later = OpenIncidents(changed, like=first)
        assert [correlate(p, later) for p in probes] == [correlate(p, OpenIncidents(changed)) for p in probes]


def test_near_finds_what_measuring_every_incident_finds():
    # Near a point, correlation measures only the grid cells around it; a box too wide for the
    # grid (100 km) measures every incident. Both must find what measuring all of them finds.
    rng = random.Random(5)
    types = ["structure_fire", "alarm_activation", "gunshot"]
    snap = OpenIncidents(
        OpenIncident(f"I{i}", rng.choice(types), Point(SCENE.lat + rng.uniform(-0.05, 0.05),
                                                       SCENE.lon + rng.uniform(-0.1, 0.1)), T0)
        for i in range(400))
    for radius in (0.0, 50.0, 150.0, 1_000.0, 5_000.0, 100_000.0):
        for _ in range(40):
            here = Point(SCENE.lat + rng.uniform(-0.05, 0.05), SCENE.lon + rng.uniform(-0.1, 0.1))
            wanted = rng.sample(types, 2)
            (members, d), = snap.measure(here, wanted)
            everyone = [(members[i], float(d[i])) for i in range(len(members)) if d[i] <= radius]
            near = snap.near(here, wanted, radius)
            assert [i.id for i, _ in near] == [i.id for i, _ in everyone]
            assert [m for _, m in near] == pytest.approx([m for _, m in everyone], rel=1e-12, abs=1e-6)


def test_after_applies_an_attach_and_refuses_anything_else():
    inc = incident("F")
    out = correlate(facts("x", seconds=60), [inc])
    after = inc.after(out, at(60))
    assert after == replace(inc, alert_count=2, last_alert_at=at(60))
    with pytest.raises(Invalid):
        incident("G").after(out, at(60))
    # What the attach changes is checked (the rest was, when the incident was made).
    with pytest.raises(Invalid, match="priority"):
        inc.after(replace(out, priority=9), at(60))
    with pytest.raises(Invalid, match="incident_type"):
        inc.after(replace(out, incident_type="Not A Type"), at(60))
    with pytest.raises(Invalid, match="timezone"):
        inc.after(out, at(60).replace(tzinfo=None))
    with pytest.raises(Invalid, match="alert_count"):
        replace(inc, alert_count=10_000_000).after(out, at(60))


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: AlertFacts("a b", "smoke", SCENE, T0), "alert_id"),
        (lambda: AlertFacts("a", "smoke", SCENE, T0.replace(tzinfo=None)), "timezone-aware"),
        (lambda: AlertFacts("a", "smoke", SCENE, T0, priority=0), "priority"),
        (lambda: OpenIncident("I", "Fire!", SCENE, T0), "incident_type"),
        (lambda: Reach(-1, 60), "radius_m"),
        (lambda: Reach(100, 1e9), "window_s"),
        (lambda: EscalationRule(frozenset({"flood"}), min_alerts=1), "min_alerts"),
        (lambda: EscalationRule("flood", min_alerts=3), "incident_types"),
        (lambda: CorrelationPolicy.from_dict({"kinds": {"smoke": {"radius": 5}}}), "radius_m"),
        (lambda: CorrelationPolicy.from_dict({"kinds": {"tornado": {"radius_m": 5, "window_s": 5}}}), "reach"),
        (lambda: CorrelationPolicy.from_dict({"compatible": {"smoke": "structure_fire"}}), "list"),
        (lambda: CorrelationPolicy.from_dict({"escalation": [{"incident_types": ["x"], "min_alerts": 2,
                                                              "bump": 1}]}), "unknown field"),
        (lambda: CorrelationPolicy.from_dict({"colour": 1}), "unknown field"),
    ],
)
def test_validation(build, words):
    with pytest.raises(Invalid) as err:
        build()
    assert words in err.value.message


def test_settings_naming_unknown_incident_types_are_caught():
    policy = CorrelationPolicy.from_dict({"compatible": {"smoke": ["chimney_fire"]}})
    with pytest.raises(Invalid, match="chimney_fire"):
        policy.check_types(["structure_fire"])


def test_kinds_without_settings_use_the_default_reach_and_their_own_type():
    policy = CorrelationPolicy()
    assert policy.reach_of(AlertKind.SMOKE) == Reach(200, 900)
    assert policy.compatible_types(AlertKind.SMOKE) == frozenset({"alarm_activation"})
    assert correlate(facts("x", metres=190), [incident("F")], policy).action == "attach"


def test_thousands_of_open_incidents_answer_fast():
    rng = random.Random(1)
    types = ["structure_fire", "alarm_activation", "gunshot", "flood", "medical_emergency", "traffic_collision"]
    open_ = OpenIncidents(
        OpenIncident(f"I{i}", rng.choice(types),
                     Point(SCENE.lat + rng.uniform(-0.2, 0.2), SCENE.lon + rng.uniform(-0.4, 0.4)),
                     at(-rng.uniform(0, 3600)), 3, 1, at(-rng.uniform(0, 600)))
        for i in range(5_000)
    )
    kinds = ["smoke", "gunshot", "flood", "medical", "collision"]
    alerts = [AlertFacts(f"a{i}", rng.choice(kinds), Point(SCENE.lat + rng.uniform(-0.2, 0.2),
                                                            SCENE.lon + rng.uniform(-0.4, 0.4)), T0)
              for i in range(1_000)]
    correlate(alerts[0], open_)  # builds the per-type arrays once
    started = time.perf_counter()
    outcomes = [correlate(a, open_) for a in alerts]
    per_alert = (time.perf_counter() - started) / len(alerts)
    assert per_alert < 0.002, f"{per_alert * 1e6:.0f} µs per alert"
    assert {o.action for o in outcomes} == {"attach", "create"}


def test_default_settings_load_and_are_documented():
    policy = default_policy()
    assert policy.reach_of(AlertKind.SMOKE) == Reach(150, 900)
    assert policy.reach_of(AlertKind.GUNSHOT) == Reach(300, 600)
    assert policy.reach_of(AlertKind.FLOOD) == Reach(1000, 7200)
    doc = (ROOT / "docs" / "intake.md").read_text(encoding="utf-8")
    assert policy_markdown(policy) in doc, "update docs/intake.md from dispatch.correlation.policy_markdown"
