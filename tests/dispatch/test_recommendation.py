"""Recommendation: plan filling, mutual aid, stale positions, explanations, determinism, speed."""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch import commands as c
from dispatch.agency import Agency, MutualAidTerms
from dispatch.capability import Capability
from dispatch.errors import Conflict, Invalid, NotFound
from dispatch.evolve import handle
from dispatch.incident import IncidentNumber
from dispatch.recommendation import (
    Recommendation,
    RecommendOptions,
    format_duration,
    recommend,
    recommend_for_incident,
    replacement_for,
)
from dispatch.response_plan import Requirement, ResponsePlan, ResponsePlans
from dispatch.state import DispatchState
from geo.eta import TravelEstimate
from tests.dispatch.support import (
    ESPOO,
    HELSINKI,
    SCENE,
    T0,
    VANTAA,
    FixedSpeedTimer,
    at,
    north_of,
    station,
    unit,
)

AGENCIES = {a.id: a for a in (HELSINKI, ESPOO, VANTAA)}
HOME = {"hki-fire"}


def rec(units, reqs, *, home=HOME, stations=(), timer=None, **options) -> Recommendation:
    return recommend(
        target=SCENE,
        requirements=[Requirement(cap, n) for cap, n in reqs],
        units=units,
        agencies=AGENCIES,
        stations={s.id: s for s in stations},
        home_agency_ids=home,
        timer=timer or FixedSpeedTimer(),
        now=T0,
        options=RecommendOptions(**options) if options else None,
    )


def chosen(r: Recommendation) -> list[tuple[str, str]]:
    return [(p.unit_id, p.capability.value) for p in r.picks]


def test_plan_filled_nearest_first_with_reasons():
    timer = FixedSpeedTimer()
    r = rec(
        [
            unit("e3", "hki-fire", "ENGINE", metres=9000),
            unit("e1", "hki-fire", "ENGINE", metres=2500),
            unit("l1", "hki-fire", "LADDER", metres=3000),
            unit("e2", "hki-fire", "ENGINE", metres=4000),
        ],
        [("ENGINE", 2), ("LADDER", 1)],
        timer=timer,
    )
    assert chosen(r) == [("e1", "ENGINE"), ("e2", "ENGINE"), ("l1", "LADDER")]
    assert r.complete and not r.shortfalls
    assert r.picks[0].reason == "E1 (Helsinki Fire) ENGINE, 4 min 10 s by road, home agency"
    assert r.picks[0].eta_s == pytest.approx(250)
    assert r.picks[0].distance_m == pytest.approx(2500, rel=1e-3)
    assert timer.calls == [4]  # one query for every candidate


@pytest.mark.parametrize(
    ("partner_eta", "winner"),
    [
        (120.0, "e9"),  # 130 s faster: more than the 120 s margin
        (130.0, "e1"),  # exactly 120 s faster: not more than the margin, home keeps it
        (200.0, "e1"),  # 50 s faster: home
        (300.0, "e1"),  # slower
    ],
)
def test_mutual_aid_only_when_faster_by_more_than_the_margin(partner_eta, winner):
    e1 = unit("e1", "hki-fire", "ENGINE", metres=2500)
    e9 = unit("e9", "espoo-fire", "ENGINE", metres=1000)
    timer = FixedSpeedTimer(overrides={e1.position: 250.0, e9.position: partner_eta})
    r = rec([e1, e9], [("ENGINE", 1)], timer=timer)
    assert chosen(r) == [(winner, "ENGINE")]
    pick = r.picks[0]
    assert pick.mutual_aid is (winner == "e9")
    if winner == "e9":
        assert pick.reason == (
            "E9 (Espoo Fire) ENGINE, 2 min by road, mutual aid from Espoo Fire: "
            "2 min 10 s faster than E1 of Helsinki Fire (4 min 10 s); margin 2 min"
        )


def test_mutual_aid_fills_what_home_cannot_whatever_the_margin():
    r = rec(
        [unit("e1", "hki-fire", "ENGINE", metres=500),
         unit("l7", "espoo-fire", "LADDER", metres=6000)],
        [("ENGINE", 1), ("LADDER", 1)],
    )
    assert chosen(r) == [("e1", "ENGINE"), ("l7", "LADDER")]
    assert r.picks[1].reason == (
        "L7 (Espoo Fire) LADDER, 10 min by road, "
        "mutual aid from Espoo Fire: no home-agency LADDER within 12 min"
    )


def test_partners_lend_only_what_their_terms_say_and_strangers_nothing():
    r = rec(
        [
            unit("hz1", "espoo-fire", "HAZMAT", metres=300),  # Espoo does not lend HAZMAT
            unit("e5", "vantaa-fire", "ENGINE", metres=100),  # Vantaa has no terms at all
            unit("e1", "hki-fire", "ENGINE", metres=5000),
        ],
        [("ENGINE", 1), ("HAZMAT", 1)],
    )
    assert chosen(r) == [("e1", "ENGINE")]
    (short,) = r.shortfalls
    assert (short.capability, short.missing) == (Capability.HAZMAT, 1)
    assert short.reason == "no unit with HAZMAT is available"


def test_two_home_agencies_share_the_easier_terms():
    strict = Agency("hki-ems", "Helsinki EMS", "ems",
                    mutual_aid=(MutualAidTerms("espoo-fire", frozenset({"ENGINE"}), 600),))
    agencies = {**AGENCIES, strict.id: strict}
    r = recommend(
        target=SCENE, requirements=[Requirement("ENGINE")],
        units=[unit("e1", "hki-fire", "ENGINE", metres=2500),
               unit("e9", "espoo-fire", "ENGINE", metres=1000)],
        agencies=agencies, stations={}, home_agency_ids={"hki-fire", "hki-ems"},
        timer=FixedSpeedTimer(), now=T0,
    )
    assert chosen(r) == [("e9", "ENGINE")]  # Helsinki Fire's 120 s margin applies, not 600 s


def test_without_a_jurisdiction_every_agency_serves():
    r = rec(
        [unit("e5", "vantaa-fire", "ENGINE", metres=100), unit("e1", "hki-fire", "ENGINE", metres=900)],
        [("ENGINE", 1)],
        home=set(),
    )
    assert chosen(r) == [("e5", "ENGINE")]
    assert r.picks[0].reason.endswith("no agency's jurisdiction contains the incident")
    assert not r.picks[0].mutual_aid


def test_stale_positions_use_the_station_and_say_so():
    central = station("st1", "hki-fire", 3000, "Central")
    old = T0 - timedelta(minutes=20)
    r = rec(
        [
            unit("e1", "hki-fire", "ENGINE", metres=500, station="st1", position_at=old),
            unit("e2", "hki-fire", "ENGINE", station="st1"),  # never reported a position
            unit("e3", "hki-fire", "ENGINE", metres=4000, position_at=old),  # stale, no station
            unit("e4", "hki-fire", "ENGINE", metres=3500, station="st1",
                 position_at=T0 - timedelta(minutes=4)),  # fresh enough
        ],
        [("ENGINE", 4)],
        stations=[central],
    )
    reasons = {p.unit_id: p.reason for p in r.picks}
    flags = {p.unit_id: p.from_station for p in r.picks}
    assert reasons["e1"] == (
        "E1 (Helsinki Fire) ENGINE, 5 min by road from station Central (position 20 min old), "
        "home agency"
    )
    assert reasons["e2"] == (
        "E2 (Helsinki Fire) ENGINE, 5 min by road from station Central (no position reported), "
        "home agency"
    )
    assert reasons["e3"] == (
        "E3 (Helsinki Fire) ENGINE, 6 min 40 s by road from a stale position 20 min old, home agency"
    )
    assert reasons["e4"] == "E4 (Helsinki Fire) ENGINE, 5 min 50 s by road, home agency"
    assert flags == {"e1": True, "e2": True, "e3": False, "e4": False}
    assert chosen(r)[:2] == [("e1", "ENGINE"), ("e2", "ENGINE")]  # tie at the station: by id


def test_unavailable_and_excluded_units_are_skipped_and_named():
    units = [
        unit("e1", "hki-fire", "ENGINE", metres=100, status="on_scene"),
        unit("e2", "hki-fire", "ENGINE", metres=200, status="out_of_service"),
        unit("e3", "hki-fire", "ENGINE", metres=300),
    ]
    r = recommend(target=SCENE, requirements=[Requirement("ENGINE")], units=units,
                  agencies=AGENCIES, stations={}, home_agency_ids=HOME, timer=FixedSpeedTimer(),
                  now=T0, exclude={"e3"})
    assert r.picks == ()
    assert r.shortfalls[0].reason == (
        "no unit with ENGINE is available (E1 is on_scene, E2 is out_of_service, E3 is excluded)"
    )


def test_shortfall_names_the_nearest_beyond_the_limit():
    r = rec(
        [unit("l7", "espoo-fire", "LADDER", metres=8400), unit("l8", "espoo-fire", "LADDER", metres=9000)],
        [("LADDER", 1)],
    )
    assert r.picks == ()
    (short,) = r.shortfalls
    assert short.reason == "no LADDER within 12 min; nearest is L7 of Espoo Fire at 14 min"
    assert (short.nearest_unit_id, short.nearest_eta_s) == ("l7", pytest.approx(840))


def test_out_of_range_units_are_listed_as_such():
    far = unit("l9", "espoo-fire", "LADDER", metres=30_000)  # 50 min away, beyond the search
    unreachable = unit("l4", "hki-fire", "LADDER", metres=100)  # an island, say
    timer = FixedSpeedTimer(overrides={unreachable.position: None})
    r = rec([far, unreachable], [("LADDER", 1)], timer=timer)
    assert r.shortfalls[0].reason == (
        "no LADDER within 12 min; L4 of Helsinki Fire, L9 of Espoo Fire are out of range "
        "(beyond 24 min)"
    )


def test_partial_fill_and_units_needed_elsewhere():
    r = rec(
        [unit("q1", "hki-fire", "ENGINE,LADDER", metres=1000), unit("e1", "hki-fire", "ENGINE", metres=2000)],
        [("ENGINE", 2), ("LADDER", 1)],
    )
    assert chosen(r) == [("e1", "ENGINE"), ("q1", "LADDER")]
    (short,) = r.shortfalls
    assert (short.capability, short.missing) == (Capability.ENGINE, 1)
    assert short.reason == (
        "only 1 of 2 ENGINE within 12 min; Q1 of Helsinki Fire is needed for other requirements"
    )


def test_a_quint_goes_where_it_saves_the_most():
    r = rec(
        [
            unit("q1", "hki-fire", "ENGINE,LADDER", metres=1000),
            unit("e1", "hki-fire", "ENGINE", metres=2000),
            unit("l1", "hki-fire", "LADDER", metres=3000),
        ],
        [("ENGINE", 1), ("LADDER", 1)],
    )
    # Q1 as the engine would make the ladder wait 5 min; as the ladder, everyone is faster.
    assert chosen(r) == [("e1", "ENGINE"), ("q1", "LADDER")]
    assert r.picks[0].reason.endswith("home agency; Q1, nearer, is picked for LADDER")


def test_one_unit_fills_at_most_one_requirement():
    r = rec([unit("q1", "hki-fire", "ENGINE,LADDER", metres=1000)], [("ENGINE", 1), ("LADDER", 1)])
    assert len(r.picks) == 1 and len(r.shortfalls) == 1


def test_straight_line_estimates_are_flagged():
    timer = FixedSpeedTimer(method="straight_line")
    r = rec([unit("e1", "hki-fire", "ENGINE", metres=600), unit("l1", "hki-fire", "LADDER", metres=9000)],
            [("ENGINE", 1), ("LADDER", 1)], timer=timer)
    assert r.picks[0].straight_line and r.picks[0].to_dict()["straight_line"] is True
    assert "1 min straight-line estimate" in r.picks[0].reason
    assert r.shortfalls[0].reason.endswith("at 15 min (straight-line estimate)")


def test_one_query_with_distinct_origins_only():
    st1 = station("st1", "hki-fire", 2000)
    timer = FixedSpeedTimer()
    units = [unit(f"e{i}", "hki-fire", "ENGINE", station="st1") for i in range(5)]
    r = rec(units, [("ENGINE", 2)], stations=[st1], timer=timer)
    assert timer.calls == [1]
    assert chosen(r) == [("e0", "ENGINE"), ("e1", "ENGINE")]  # equal ETAs: by unit id


def test_units_already_assigned_fill_first():
    units = [
        replace(unit("e1", "hki-fire", "ENGINE", metres=9000), status="en_route"),
        unit("e2", "hki-fire", "ENGINE", metres=1000),
        unit("e3", "hki-fire", "ENGINE", metres=2000),
    ]
    r = recommend(target=SCENE, requirements=[Requirement("ENGINE", 2)], units=units,
                  agencies=AGENCIES, stations={}, home_agency_ids=HOME, timer=FixedSpeedTimer(),
                  now=T0, assigned={"e1": Capability.ENGINE})
    assert chosen(r) == [("e1", "ENGINE"), ("e2", "ENGINE")]
    assert r.picks[0].already_assigned
    assert r.picks[0].reason == "E1 (Helsinki Fire) ENGINE, already assigned (en_route)"
    assert [p.unit_id for p in r.new_picks] == ["e2"]


def test_recommendation_is_json_ready():
    r = rec([unit("e1", "hki-fire", "ENGINE", metres=600)], [("ENGINE", 1), ("LADDER", 1)])
    data = json.loads(json.dumps(r.to_dict()))
    assert data["complete"] is False
    assert data["picks"][0]["unit_id"] == "e1" and data["picks"][0]["capability"] == "ENGINE"
    assert data["shortfalls"][0]["capability"] == "LADDER"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (45.4, "45 s"), (60, "1 min"), (250, "4 min 10 s"), (720, "12 min"),
     (3600, "1 h"), (3900, "1 h 5 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_options_are_validated():
    with pytest.raises(Invalid, match="search_s"):
        RecommendOptions(max_travel_s=600, search_s=300)
    with pytest.raises(Invalid, match="max_travel_s"):
        RecommendOptions(max_travel_s=0)


def test_a_timer_that_drops_estimates_is_caught():
    class Broken:
        def one_to_many(self, target, origins, max_seconds):
            return [TravelEstimate(True, 1.0, 1.0, "road")]

    with pytest.raises(ValueError, match="number of estimates"):
        rec([unit("e1", "hki-fire", "ENGINE", metres=10), unit("e2", "hki-fire", "ENGINE", metres=20)],
            [("ENGINE", 1)], timer=Broken())


# --- determinism and optimality -------------------------------------------------------------

POOL = [
    unit("e1", "hki-fire", "ENGINE", metres=2500),
    unit("e2", "hki-fire", "ENGINE", metres=2500),  # ties with e1
    unit("q1", "hki-fire", "ENGINE,LADDER", metres=1500),
    unit("e9", "espoo-fire", "ENGINE", metres=1000),
    unit("l7", "espoo-fire", "LADDER", metres=4000),
    unit("r1", "hki-fire", "RESCUE,ENGINE", metres=3000),
    unit("r2", "hki-fire", "RESCUE", metres=3000),  # ties with r1
    unit("m1", "vantaa-fire", "ENGINE", metres=100),
    unit("l8", "espoo-fire", "LADDER", metres=9000),
    unit("e7", "hki-fire", "ENGINE", metres=8000, status="dispatched"),
]
POOL_REQS = [("ENGINE", 3), ("LADDER", 2), ("RESCUE", 1)]


@settings(max_examples=60, deadline=None)
@given(st.permutations(POOL))
def test_same_answer_whatever_the_input_order(units):
    assert rec(units, POOL_REQS) == rec(POOL, POOL_REQS)


CAPS = ["ENGINE", "LADDER", "RESCUE", "ALS"]


def _best_possible(reqs, units, eta):
    """(slots filled, requirements covered, total ETA) of the best assignment, exhaustively."""
    slots = [cap for cap, n in reqs for _ in range(n)]
    best = (0, 0, 0.0)

    def go(i, used, cost):
        nonlocal best
        if i == len(units):
            score = (len(used), len({slots[j] for j in used}), cost)
            if (score[0], score[1], -score[2]) > (best[0], best[1], -best[2]):
                best = score
            return
        go(i + 1, used, cost)
        tried = set()
        for j, cap in enumerate(slots):
            if j not in used and cap in units[i].capabilities and cap not in tried:
                tried.add(cap)
                go(i + 1, used | {j}, cost + eta[units[i].id])

    go(0, frozenset(), 0.0)
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from(CAPS), min_size=1, max_size=3), st.integers(100, 7000)),
        min_size=1,
        max_size=6,
    ),
    st.dictionaries(st.sampled_from(CAPS), st.integers(1, 2), min_size=1),
)
def test_fills_the_most_slots_covering_the_most_needs_at_the_least_time(specs, plan):
    units = [unit(f"u{i}", "hki-fire", ",".join(sorted(caps)), metres=m)
             for i, (caps, m) in enumerate(specs)]
    eta = {u.id: m / 10 for u, (_, m) in zip(units, specs, strict=True)}
    r = rec(units, list(plan.items()))
    filled, covered, cost = _best_possible(list(plan.items()), units, eta)
    assert len(r.picks) == filled
    assert len({p.capability for p in r.picks}) == covered
    assert sum(p.eta_s for p in r.picks) == pytest.approx(cost)
    assert sum(s.missing for s in r.shortfalls) == sum(plan.values()) - filled


def test_two_thousand_candidates_rank_in_a_few_milliseconds():
    rng = random.Random(5)
    agencies = ["hki-fire", "espoo-fire", "vantaa-fire"]
    caps = ["ENGINE", "LADDER", "RESCUE", "ALS", "BLS", "TANKER"]
    units = [
        unit(f"u{i:04d}", rng.choice(agencies), ",".join(rng.sample(caps, 2)),
             metres=rng.uniform(100, 15_000))
        for i in range(2000)
    ]
    timer = FixedSpeedTimer()
    answers = {}

    class Precomputed:  # the travel query is not what is being timed
        def one_to_many(self, target, origins, max_seconds):
            key = (len(origins), max_seconds)
            if key not in answers:
                answers[key] = timer.one_to_many(target, origins, max_seconds)
            return answers[key]

    reqs = [("ENGINE", 8), ("LADDER", 3), ("RESCUE", 2), ("ALS", 2), ("BLS", 2), ("TANKER", 1)]
    rec(units, reqs, timer=Precomputed())  # warm up
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        r = rec(units, reqs, timer=Precomputed())
        runs.append(time.perf_counter() - start)
    assert r.complete
    # ~3 ms on a laptop; the bound leaves room for slow CI machines.
    assert statistics.median(runs) < 0.030


# --- from a dispatch state --------------------------------------------------------------------

PLANS = ResponsePlans((
    ResponsePlan("structure_fire", ((Requirement("ENGINE", 2),), (Requirement("LADDER", 1),))),
))


def _state() -> DispatchState:
    s = DispatchState.build(
        agencies=AGENCIES.values(),
        units=[
            unit("e1", "hki-fire", "ENGINE", metres=1000),
            unit("e2", "hki-fire", "ENGINE", metres=2000),
            unit("e3", "hki-fire", "ENGINE", metres=3000),
            unit("l1", "hki-fire", "LADDER", metres=4000),
        ],
    )
    s, _ = handle(s, c.CreateIncident(incident_id="I1", number=IncidentNumber(2026, 5),
                                      incident_type="structure_fire", priority=2, location=SCENE), T0)
    return s


def _for(s: DispatchState, incident_id: str = "I1") -> Recommendation:
    return recommend_for_incident(s, incident_id, plans=PLANS, timer=FixedSpeedTimer(), now=at(10),
                                  home_agency_ids=HOME)


def test_recommend_for_an_incident_counts_its_units_and_alarm_level():
    s = _state()
    assert chosen(_for(s)) == [("e1", "ENGINE"), ("e2", "ENGINE")]
    s, _ = handle(s, c.DispatchUnits(incident_id="I1", units=(c.UnitRequest("e1", "ENGINE"),)), at(5))
    r = _for(s)
    assert [(p.unit_id, p.already_assigned) for p in r.picks] == [("e1", True), ("e2", False)]
    s, _ = handle(s, c.RaiseAlarmLevel(incident_id="I1"), at(6))
    assert ("l1", "LADDER") in chosen(_for(s))


def test_replacement_skips_units_that_already_withdrew():
    s = _state()
    s, _ = handle(s, c.DispatchUnits(incident_id="I1", units=(c.UnitRequest("e1", "ENGINE"),
                                                                c.UnitRequest("e2", "ENGINE"))), at(1))
    s, _ = handle(s, c.DeclineAssignment(assignment_id="I1-A2"), at(2))
    kwargs = {"plans": PLANS, "timer": FixedSpeedTimer(), "now": at(90), "home_agency_ids": HOME}
    # E1 times out: E2 declined earlier, so E3 is next.
    assert replacement_for(s, "I1-A1", **kwargs) == "e3"
    s, _ = handle(s, c.TimeoutAssignment(assignment_id="I1-A1", replacement_unit_id="e3"), at(90))
    assert s.assignments["I1-A3"].unit_id == "e3"
    assert s.assignments["I1-A3"].status == "recommended"


def test_recommend_for_incident_errors():
    s = _state()
    with pytest.raises(NotFound):
        recommend_for_incident(s, "I1", plans=ResponsePlans(), timer=FixedSpeedTimer(), now=T0,
                               home_agency_ids=HOME)
    s, _ = handle(s, c.CloseIncident(incident_id="I1"), at(1))
    with pytest.raises(Conflict, match="closed"):
        _for(s)


def test_north_of_helper_is_metric():
    # The scenarios above assume 1 km north is 100 s at the timer's 10 m/s.
    (est,) = FixedSpeedTimer().one_to_many(SCENE, [north_of(SCENE, 1000)], 1000)
    assert est.eta_s == pytest.approx(100, rel=1e-3)


def test_a_unit_nowhere_cannot_be_ranked_and_is_named():
    r = rec([unit("e4", "hki-fire", "ENGINE")], [("ENGINE", 1)])  # no position, no station
    assert r.shortfalls[0].reason == "no unit with ENGINE is available (E4 is without a known location)"
