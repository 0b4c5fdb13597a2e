"""Response plans: the shipped defaults, selection by specificity, alarm levels, validation."""

from __future__ import annotations

import json

import pytest

from dispatch.capability import Capability
from dispatch.errors import Invalid
from dispatch.response_plan import Requirement, ResponsePlan, ResponsePlans, default_plans

SHIPPED_TYPES = {
    "structure_fire", "vehicle_fire", "medical_emergency", "cardiac_arrest", "traffic_collision",
    "gas_leak", "flood", "gunshot", "alarm_activation", "utility_outage",
}


def plan(zone=None, priority=None, engines=1, name=""):
    return ResponsePlan("structure_fire", ((Requirement("ENGINE", engines),),), zone=zone,
                        priority=priority, name=name)


def test_defaults_cover_every_shipped_type():
    plans = default_plans()
    assert set(plans.incident_types) == SHIPPED_TYPES
    for incident_type in SHIPPED_TYPES:
        generic = plans.select(incident_type)
        assert generic is not None and generic.zone is None and generic.priority is None
        assert generic.name
        assert generic.max_alarm_level >= 2  # every card has somewhere to escalate to


def test_default_structure_fire_card():
    card = default_plans().select("structure_fire")
    assert card is not None
    first = {r.capability.value: r.count for r in card.requirements(1)}
    assert first == {"ENGINE": 3, "LADDER": 1, "RESCUE": 1, "COMMAND": 1, "ALS": 1}
    second = {r.capability.value: r.count for r in card.requirements(2)}
    assert second["ENGINE"] == 5 and second["LADDER"] == 2 and second["TANKER"] == 1
    # Beyond the last level: everything the card has.
    assert card.requirements(5) == card.requirements(card.max_alarm_level)


def test_priority_one_medical_gets_paramedics():
    plans = default_plans()
    urgent = plans.select("medical_emergency", priority=1)
    routine = plans.select("medical_emergency", priority=3)
    assert urgent is not None and routine is not None
    assert Capability.ALS in {r.capability for r in urgent.requirements()}
    assert {r.capability for r in routine.requirements()} == {Capability.BLS}


@pytest.mark.parametrize(
    ("zone", "priority", "expected"),
    [
        (None, None, "generic"),
        ("harbour", None, "zone"),
        (None, 1, "priority"),
        ("harbour", 1, "zone+priority"),
        ("harbour", 2, "zone"),
        ("suburb", 1, "priority"),
        ("suburb", 3, "generic"),
    ],
)
def test_the_most_specific_plan_wins(zone, priority, expected):
    plans = ResponsePlans((
        plan(name="generic"),
        plan(zone="harbour", name="zone"),
        plan(priority=1, name="priority"),
        plan(zone="harbour", priority=1, name="zone+priority"),
    ))
    chosen = plans.select("structure_fire", zone, priority)
    assert chosen is not None and chosen.name == expected


def test_no_plan_for_an_unknown_type_or_only_narrower_plans():
    plans = ResponsePlans((plan(zone="harbour"),))
    assert plans.select("flood") is None
    assert plans.select("structure_fire", "suburb") is None


def test_levels_add_up_and_merge_by_capability():
    p = ResponsePlan("x", (
        (Requirement("ENGINE", 2), Requirement("LADDER")),
        (Requirement("ENGINE", 1), Requirement("HAZMAT")),
    ))
    assert p.requirements(1) == (Requirement("ENGINE", 2), Requirement("LADDER", 1))
    assert p.requirements(2) == (
        Requirement("ENGINE", 3), Requirement("LADDER", 1), Requirement("HAZMAT", 1),
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"incident_type": "fire", "levels": [{"ENGINE": 0}]}, "levels[0]"),
        ({"incident_type": "fire", "levels": [{"BOAT": 1}]}, "levels[0]"),
        ({"incident_type": "fire", "levels": [{"ENGINE": "2"}]}, "levels[0]"),
        ({"incident_type": "fire", "levels": []}, "levels"),
        ({"incident_type": "fire", "levels": [{}]}, "levels[0]"),
        ({"incident_type": "fire", "levels": "ENGINE"}, "levels"),
        ({"incident_type": "Fire!", "levels": [{"ENGINE": 1}]}, "incident_type"),
        ({"incident_type": "fire", "priority": 0, "levels": [{"ENGINE": 1}]}, "priority"),
        ({"incident_type": "fire", "levels": [{"ENGINE": 1}], "extra": 1}, "extra"),
        ({"incident_type": "fire", "levels": [{"ENGINE": 1}] * 6}, "levels"),
    ],
)
def test_bad_plans_are_rejected(data, field):
    with pytest.raises(Invalid) as info:
        ResponsePlan.from_dict(data)
    assert info.value.field == field


def test_duplicate_plans_are_rejected():
    with pytest.raises(Invalid, match="two plans for structure_fire in zone harbour"):
        ResponsePlans((plan(zone="harbour"), plan(zone="harbour", engines=2)))


def test_json_round_trip_and_replacing_one_type():
    plans = default_plans()
    again = ResponsePlans.from_list(json.loads(json.dumps(plans.to_list())))
    assert again == plans
    new = plans.replacing_type("flood", [ResponsePlan.from_dict(
        {"incident_type": "flood", "levels": [{"RESCUE": 2}]}
    )])
    flood = new.select("flood")
    assert flood is not None and flood.requirements() == (Requirement("RESCUE", 2),)
    assert new.for_type("gas_leak") == plans.for_type("gas_leak")
    with pytest.raises(Invalid):
        plans.replacing_type("flood", [plan()])
