"""Alert rules: the shipped table, first-match semantics, validation, and the documented copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.alert_rules import (
    AlertKind,
    AlertRule,
    AlertRules,
    Certainty,
    Severity,
    Urgency,
    default_alert_rules,
    normalise,
    rules_markdown,
)
from dispatch.errors import Invalid
from dispatch.response_plan import ResponsePlan, ResponsePlans, default_plans

ROOT = Path(__file__).resolve().parents[2]


def test_every_kind_gets_an_answer_and_every_type_has_a_plan():
    rules = default_alert_rules()
    plan_types = set(default_plans().incident_types)
    for kind in AlertKind:
        decision = rules.decide(kind)
        assert decision.kind is kind and 1 <= decision.priority <= 5
        assert decision.incident_type is None or decision.incident_type in plan_types
    assert rules.incident_types <= plan_types


@pytest.mark.parametrize(
    ("kind", "severity", "certainty", "incident_type", "priority", "auto"),
    [
        ("gunshot", "Unknown", "Observed", "gunshot", 1, True),
        ("gunshot", "Severe", "Likely", "gunshot", 1, True),
        ("gunshot", "Severe", "Possible", "gunshot", 2, False),
        ("gunshot", "Severe", "Unknown", "gunshot", 2, False),
        ("smoke", "Unknown", "Observed", "alarm_activation", 3, True),
        ("smoke", "Unknown", "Possible", "alarm_activation", 3, False),
        ("fire", "Extreme", "Observed", "structure_fire", 1, False),
        ("fire", "Minor", "Observed", "structure_fire", 2, False),
        ("flood", "Severe", "Observed", "flood", 2, False),
        ("panic", "Severe", "Observed", "medical_emergency", 2, False),
        ("weather", "Extreme", "Observed", None, 4, False),
        ("camera", "Severe", "Observed", None, 3, False),
    ],
)
def test_shipped_decisions(kind, severity, certainty, incident_type, priority, auto):
    d = default_alert_rules().decide(kind, severity, Urgency.IMMEDIATE, certainty)
    assert (d.incident_type, d.priority, d.auto_dispatch) == (incident_type, priority, auto)
    assert d.opens_incident is (incident_type is not None)
    assert kind in d.reason and f"rule {d.rule_index + 1}" in d.reason


def test_reasons_say_what_and_why():
    d = default_alert_rules().decide("gunshot", certainty="likely")
    assert d.reason.startswith("gunshot alert (severity Unknown, urgency Unknown, certainty Likely): rule 1")
    assert "dispatched automatically" in d.reason and "every second counts" in d.reason


@pytest.mark.parametrize(
    ("enum", "text", "member"),
    [
        (Certainty, "very likely", Certainty.LIKELY),  # CAP 1.0's word, read as CAP 1.2 says
        (Certainty, "OBSERVED", Certainty.OBSERVED),
        (Severity, " severe ", Severity.SEVERE),
        (AlertKind, "Utility Outage", AlertKind.UTILITY_OUTAGE),
        (Urgency, "soon", None),
        (Urgency, 3, None),
    ],
)
def test_normalise(enum, text, member):
    assert normalise(enum, text) is member


def test_unrecognised_values_count_as_unknown():
    assert default_alert_rules().decide("gunshot", certainty="Dunno").priority == 2
    with pytest.raises(Invalid):
        default_alert_rules().decide("tornado")


def _rule(**kw) -> AlertRule:
    base = {"kind": "smoke", "incident_type": "alarm_activation"}
    return AlertRule.from_dict({**base, **kw})


def _table(*extra: AlertRule) -> AlertRules:
    defaults = default_alert_rules().rules
    return AlertRules(tuple(extra) + defaults)


def test_first_match_wins_and_conditions_combine():
    special = _rule(severity=["Extreme"], urgency=["Immediate"], priority=1, auto_dispatch=True)
    rules = _table(special)
    assert rules.decide("smoke", "Extreme", "Immediate").priority == 1
    assert rules.decide("smoke", "Extreme", "Expected").priority == 3


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"priority": 0}, "priority"),
        ({"incident_type": "Structure Fire"}, "incident_type"),
        ({"incident_type": "", "auto_dispatch": True}, "cannot dispatch"),
        ({"severity": "Severe"}, "list"),
        ({"certainty": ["Sure"]}, "Observed"),
        ({"colour": "red"}, "unknown field"),
        ({"kind": "tornado"}, "kind"),
        ({"auto_dispatch": "yes"}, "true or false"),
    ],
)
def test_rule_validation(data, words):
    with pytest.raises(Invalid) as err:
        _rule(**data)
    assert words in err.value.message


def test_table_validation():
    without_catch_all = [r for r in default_alert_rules().rules if not (r.kind is AlertKind.FLOOD and r.unconditional)]
    with pytest.raises(Invalid, match="must end with a rule without conditions"):
        AlertRules(tuple(without_catch_all))
    with pytest.raises(Invalid, match="hides the rules after it"):
        _table(_rule(), _rule(certainty=["Observed"]))
    with pytest.raises(Invalid, match=r"rules\[0\]"):
        AlertRules.from_list([{"kind": "smoke"}])


def test_rules_opening_a_type_without_a_plan_are_caught():
    rules = _table(_rule(incident_type="chimney_fire", severity=["Extreme"]))
    with pytest.raises(Invalid, match="chimney_fire"):
        rules.check_plans(default_plans())
    chimney = ResponsePlan("chimney_fire", default_plans().plans[0].levels[:1])
    rules.check_plans(ResponsePlans((*default_plans().plans, chimney)))


def test_round_trip_through_the_table_shape():
    rules = default_alert_rules()
    assert AlertRules.from_list(rules.to_list()) == rules


def test_docs_show_the_shipped_rules():
    doc = (ROOT / "docs" / "intake.md").read_text(encoding="utf-8")
    assert rules_markdown(default_alert_rules()) in doc, "update docs/intake.md from alert_rules.rules_markdown"
