"""Domain values are validated at construction; incident numbers format and parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatch.agency import Agency, MutualAidTerms, Station
from dispatch.capability import Capability
from dispatch.codec import decode, encode
from dispatch.commands import DispatchUnits, UnitRequest
from dispatch.errors import Invalid
from dispatch.incident import IncidentNumber
from dispatch.lifecycle import UnitStatus
from dispatch.policy import DispatchPolicy
from dispatch.unit import Unit
from geo.coords import Point
from tests.dispatch.support import T0


@pytest.mark.parametrize(
    ("year", "seq", "text"),
    [(2026, 123, "2026-000123"), (2026, 1, "2026-000001"), (1999, 1_234_567, "1999-1234567")],
)
def test_incident_numbers_format_and_parse(year, seq, text):
    number = IncidentNumber(year, seq)
    assert str(number) == text
    assert IncidentNumber.parse(text) == number
    assert IncidentNumber.parse(f" {text} ") == number


@pytest.mark.parametrize("text", ["2026-123", "26-000123", "2026000123", "2026-0000a1", "", "2026-000000"])
def test_bad_incident_numbers(text):
    with pytest.raises(Invalid):
        IncidentNumber.parse(text)


def test_incident_numbers_sort_by_year_then_sequence():
    assert sorted([IncidentNumber(2026, 2), IncidentNumber(2025, 9), IncidentNumber(2026, 1)]) == [
        IncidentNumber(2025, 9), IncidentNumber(2026, 1), IncidentNumber(2026, 2),
    ]


def test_unit_coerces_strings_and_checks_rules():
    u = Unit("e1", "E1", "hf", {"ENGINE", "RESCUE"}, status="en_route", staffing=4)
    assert u.capabilities == {Capability.ENGINE, Capability.RESCUE}
    assert u.status is UnitStatus.EN_ROUTE
    with pytest.raises(Invalid, match="capabilities"):
        Unit("e1", "E1", "hf", {"BOAT"})
    with pytest.raises(Invalid, match="at least 1"):
        Unit("e1", "E1", "hf", set())
    with pytest.raises(Invalid, match="together"):
        Unit("e1", "E1", "hf", {"ENGINE"}, position=Point(60, 24))
    with pytest.raises(Invalid, match="timezone-aware"):
        Unit("e1", "E1", "hf", {"ENGINE"}, position=Point(60, 24), position_at=datetime(2026, 1, 1))
    with pytest.raises(Invalid, match="staffing"):
        Unit("e1", "E1", "hf", {"ENGINE"}, staffing=-1)


def test_agency_rules():
    with pytest.raises(Invalid, match="kind"):
        Agency("a", "A", "army")
    with pytest.raises(Invalid, match="own"):
        Agency("a", "A", "fire", (MutualAidTerms("a", frozenset({"ENGINE"})),))
    with pytest.raises(Invalid, match="twice"):
        Agency("a", "A", "fire", (MutualAidTerms("b", frozenset({"ENGINE"})),
                                  MutualAidTerms("b", frozenset({"LADDER"}))))
    with pytest.raises(Invalid, match="margin_s"):
        MutualAidTerms("b", frozenset({"ENGINE"}), margin_s=-5)
    with pytest.raises(Invalid, match="name"):
        Station("s", "a", "  ", Point(60, 24))


def test_policy_rules_and_deadline():
    assert DispatchPolicy(ack_timeout_s=90).ack_deadline(T0).isoformat() == "2026-03-01T12:01:30+00:00"
    with pytest.raises(Invalid):
        DispatchPolicy(on_timeout="panic")  # type: ignore[arg-type]
    with pytest.raises(Invalid):
        DispatchPolicy(ack_timeout_s=0)


def test_codec_round_trips_nested_commands():
    cmd = DispatchUnits(incident_id="I1", units=(UnitRequest("e1", "ENGINE"), UnitRequest("m1")))
    data = encode(cmd)
    assert data == {"incident_id": "I1", "units": [{"unit_id": "e1", "capability": "ENGINE"},
                                                   {"unit_id": "m1", "capability": None}]}
    assert decode(DispatchUnits, data) == cmd
    with pytest.raises(Invalid) as info:
        decode(DispatchUnits, {"incident_id": "I1", "units": [{"unit_id": "bad id"}]})
    assert info.value.field == "units[0].unit_id"


def test_codec_encodes_sets_sorted():
    u = Unit("e1", "E1", "hf", {"RESCUE", "ENGINE", "ALS"})
    assert encode(u)["capabilities"] == ["ALS", "ENGINE", "RESCUE"]


@pytest.mark.parametrize("ids", [("a b",), ("",), ("a", "/x"), ("ok", "x\x00y"), ("a" * 129,), ("-lead",)])
def test_id_lists_refuse_any_bad_member(ids: tuple[str, ...]) -> None:
    from dispatch import _checks

    with pytest.raises(Invalid):
        _checks.idents(ids, "alert_ids")


def test_id_lists_accept_good_members() -> None:
    from dispatch import _checks

    assert _checks.idents(("a", "b-1", "c:2", "A" * 128), "alert_ids") == ("a", "b-1", "c:2", "A" * 128)


def test_derived_values_hold_what_they_were_given_and_nothing_less() -> None:
    from dispatch import _checks
    from dispatch.correlation import OpenIncident

    when = datetime(2026, 3, 1, 12, tzinfo=UTC)
    values = ("I-1", "structure_fire", Point(60.17, 24.94), when, 2, 5, when)
    made = _checks.derived(OpenIncident, *values)
    assert made == OpenIncident(*values) and hash(made) == hash(OpenIncident(*values))
    with pytest.raises(AttributeError):
        made.priority = 1  # type: ignore[misc]  # still frozen
    with pytest.raises(TypeError, match="derived_OpenIncident"):  # one value short
        _checks.derived(OpenIncident, *values[:6])
    # A subclass's fields include its base's (its own __slots__ name only its own).
    from dispatch import events as dev

    linked = _checks.derived(dev.AlertsLinked, when, "I-1", ("AL-1", "AL-2"))
    assert linked == dev.AlertsLinked(at=when, incident_id="I-1", alert_ids=("AL-1", "AL-2"))
