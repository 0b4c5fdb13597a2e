"""The EIDO view of an incident: NENA's required keys and prologues, references that resolve,
PIDF-LO with latitude first, UTC times, emergency resources per dispatched unit, notes bounded
and escaped, determinism and JSON-readiness."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]  # no stubs published
import pytest

from dispatch.agency import Agency, AgencyKind
from dispatch.assignment import Assignment
from dispatch.capability import Capability
from dispatch.incident import Incident, IncidentNumber, Note
from dispatch.lifecycle import AssignmentStatus, IncidentStatus, UnitStatus
from dispatch.state import DispatchState
from dispatch.unit import Unit
from geo.coords import Point
from icp.webhooks.eido import incident_eido, state_eido, tracking_id

SENDER = "dispatch.example.org"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HELSINKI = Point(lat=60.1699, lon=24.9384)
TRACKING = f"urn:emergency:uid:incidentid:INC-1:{SENDER}"
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PROLOGUE = ("$id", "lastUpdateTimeStamp", "updatedByAgencyReference")
# Required properties per component, from NENA's EIDO 1.0 schema.
REQUIRED = {
    "agencyComponent": ("agencyRoleDescriptionRegistryText", "agencyType"),
    "agentComponent": ("agentRoleRegistryText", "agencyReference"),
    "locationComponent": ("locationTypeDescriptionRegistryText",),
    "notesComponent": ("notesActionComments",),
    "emergencyResourceComponent": (
        "agentReference", "emergencyResourceTypeCommonRegistryText", "primaryUnitStatusRegistryText",
        "resourceAttributeRegistryText", "secondaryUnitStatusRegistryText",
    ),
    "dispatchComponent": (),
}


def _assignment(aid: str, unit: str, status: AssignmentStatus, minutes: int, *, dispatched: bool = True,
                capability: Capability | None = None) -> Assignment:
    return Assignment(
        id=aid, incident_id="INC-1", unit_id=unit, status=status, created_at=T0,
        capability=capability,
        dispatched_at=T0 + timedelta(minutes=1) if dispatched else None,
        updated_at=T0 + timedelta(minutes=minutes),
    )


def _state(
    notes: tuple[Note, ...] = (), zone: str | None = "central", address: str = "Mannerheimintie 1"
) -> DispatchState:
    agencies = [
        Agency(id="hki-fire", name="Helsinki Fire & Rescue", kind=AgencyKind.FIRE),
        Agency(id="hki-ems", name="Helsinki EMS", kind=AgencyKind.EMS),
        Agency(id="police", name="Police", kind=AgencyKind.POLICE),
    ]
    assignments = [
        _assignment("INC-1-A1", "E1", AssignmentStatus.ON_SCENE, 9, capability=Capability.ENGINE),
        _assignment("INC-1-A2", "M1", AssignmentStatus.EN_ROUTE, 4),
        _assignment("INC-1-A3", "L1", AssignmentStatus.RECOMMENDED, 0, dispatched=False),
        _assignment("INC-1-A4", "E2", AssignmentStatus.DECLINED, 2),
    ]
    units = [
        Unit(id="E1", call_sign="Engine 1", agency_id="hki-fire", capabilities=frozenset({Capability.ENGINE}),
             status=UnitStatus.ON_SCENE, assignment_id="INC-1-A1"),
        Unit(id="E2", call_sign="Engine 2", agency_id="hki-fire", capabilities=frozenset({Capability.ENGINE})),
        Unit(id="L1", call_sign="Ladder 1", agency_id="hki-fire", capabilities=frozenset({Capability.LADDER})),
        Unit(id="M1", call_sign="Medic 1", agency_id="hki-ems",
             capabilities=frozenset({Capability.BLS, Capability.ALS}),
             status=UnitStatus.EN_ROUTE, assignment_id="INC-1-A2"),
    ]
    incident = Incident(
        id="INC-1", number=IncidentNumber(2026, 123), incident_type="structure_fire", priority=1,
        location=HELSINKI, created_at=T0, status=IncidentStatus.ACTIVE, address=address, zone=zone,
        notes=notes, assignment_ids=tuple(a.id for a in assignments),
    )
    return DispatchState.build(agencies=agencies, units=units, incidents=[incident], assignments=assignments)


def _eido(state: DispatchState | None = None, **kwargs: Any) -> dict[str, Any]:
    return state_eido(state or _state(), "INC-1", sender=SENDER, updated_at=kwargs.pop("updated_at", T0), **kwargs)


def _components(eido: dict[str, Any]) -> list[dict[str, Any]]:
    out = [eido, eido["incidentComponent"]]
    for key in REQUIRED:
        out.extend(eido.get(key, []))
    return out


def test_top_level_shape() -> None:
    eido = _eido()
    assert eido["$id"] == TRACKING == tracking_id("INC-1", SENDER)
    assert eido["eidoVersion"] == "1.0"
    assert eido["issuingElementIdentification"] == SENDER
    assert eido["updatedByAgencyReference"] == {"$ref": SENDER}
    assert eido["lastUpdateTimeStamp"] == "2026-03-01T12:00:00.000Z"
    assert eido["agencyComponent"][0]["$id"] == SENDER
    assert eido["agencyComponent"][0]["incidentOwningAgencyIndicator"] is True


def test_every_component_has_the_prologue_and_its_required_keys() -> None:
    eido = _eido(_state(notes=(Note(at=T0, author="alice", text="smoke"),)))
    for component in _components(eido):
        for key in PROLOGUE:
            assert key in component, (key, component.get("$id"))
    for key, required in REQUIRED.items():
        assert eido[key], key
        for component in eido[key]:
            for field in required:
                assert field in component, (key, field)
    assert "incidentTypeCommonRegistryText" in eido["incidentComponent"]


def test_ids_are_unique_and_every_reference_resolves() -> None:
    eido = _eido(_state(notes=(Note(at=T0, author="alice", text="a"), Note(at=T0, author="bob", text="b"))))
    ids = [c["$id"] for c in _components(eido)]
    assert len(ids) == len(set(ids))

    def refs(value: Any) -> list[str]:
        if isinstance(value, dict):
            own = [value["$ref"]] if "$ref" in value else []
            return own + [r for v in value.values() for r in refs(v)]
        if isinstance(value, list):
            return [r for v in value for r in refs(v)]
        return []

    found = refs(eido)
    assert found and set(found) <= set(ids)


def test_incident_component() -> None:
    inc = _eido()["incidentComponent"]
    assert inc["internalIncidentId"] == "2026-000123"
    assert inc["incidentTypeInternalCode"] == inc["incidentTypeCommonRegistryText"] == "structure_fire"
    assert inc["incidentStatusInternalText"] == ["active"]
    assert inc["incidentPriorityInternalText"] == "1"
    assert inc["beatOrDispatchGroupText"] == "central"
    assert "beatOrDispatchGroupText" not in _eido(_state(zone=None))["incidentComponent"]


def test_location_is_pidf_lo_with_latitude_first() -> None:
    [location] = _eido()["locationComponent"]
    assert location["locationTypeDescriptionRegistryText"] == "Incident"
    assert location["locationDescriptionText"] == "Mannerheimintie 1"
    root = SafeET.fromstring(location["locationByValue"].encode())
    gml = "{http://www.opengis.net/gml}"
    point = root.find(f".//{gml}Point")
    assert point is not None and point.get("srsName") == "urn:ogc:def:crs:EPSG::4326"
    pos = root.find(f".//{gml}pos")
    assert pos is not None and pos.text == "60.1699 24.9384"
    assert Point.from_latlon_text(pos.text) == HELSINKI
    assert root.get("entity") == f"pres:INC-1@{SENDER}"
    assert "locationDescriptionText" not in _eido(_state(address=""))["locationComponent"][0]


def test_times_are_iso_8601_utc() -> None:
    helsinki_time = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    eido = _eido(_state(notes=(Note(at=T0 + timedelta(seconds=30), author="alice", text="x"),)),
                 updated_at=helsinki_time)
    assert eido["lastUpdateTimeStamp"] == "2026-03-01T12:00:00.123Z"
    for component in _components(eido):
        assert UTC_TIME.fullmatch(component["lastUpdateTimeStamp"]), component["$id"]
    assert eido["notesComponent"][0]["lastUpdateTimeStamp"] == "2026-03-01T12:00:30.000Z"


def test_dispatched_units_are_emergency_resources_with_their_status_here() -> None:
    eido = _eido()
    resources = {r["emergencyResourceName"]: r for r in eido["emergencyResourceComponent"]}
    assert set(resources) == {"Engine 1", "Medic 1", "Engine 2"}  # Ladder 1 was only recommended
    engine = resources["Engine 1"]
    assert engine["$id"] == f"urn:icp:{SENDER}:unit:E1"
    assert engine["primaryUnitStatusRegistryText"] == "OnScene"
    assert engine["unitStatusInternal"] == ["on_scene"]
    assert engine["emergencyResourceTypeInternalText"] == "ENGINE"
    assert engine["activeOnIncidentId"] == TRACKING
    assert engine["lastUpdateTimeStamp"] == "2026-03-01T12:09:00.000Z"
    medic = resources["Medic 1"]
    assert medic["resourceAttributeInternalText"] == ["ALS", "BLS"]
    assert medic["emergencyResourceTypeInternalText"] == "ALS"  # no plan capability: the first, sorted
    assert medic["primaryUnitStatusRegistryText"] == "Enroute"
    declined = resources["Engine 2"]
    assert declined["unitStatusInternal"] == ["declined"] and "activeOnIncidentId" not in declined


def test_agencies_and_dispatches_cover_the_units_that_responded() -> None:
    eido = _eido()
    agencies = {a["$id"]: a for a in eido["agencyComponent"]}
    fire, ems = f"urn:icp:{SENDER}:agency:hki-fire", f"urn:icp:{SENDER}:agency:hki-ems"
    assert set(agencies) == {SENDER, fire, ems}  # the police took no part
    assert agencies[fire]["agencyType"] == ["fire"]
    assert agencies[fire]["agencyRoleDescriptionRegistryText"] == ["Responding"]
    assert json.loads(agencies[fire]["agencyJcard"])[1][1] == ["fn", {}, "text", "Helsinki Fire & Rescue"]
    dispatches = {d["agencyReference"]["$ref"]: d for d in eido["dispatchComponent"]}
    assert set(dispatches) == {fire, ems}
    assert [r["$ref"] for r in dispatches[fire]["emergencyResourceReference"]] == [
        f"urn:icp:{SENDER}:unit:E1", f"urn:icp:{SENDER}:unit:E2"]


def test_a_unit_dispatched_twice_appears_once_with_its_latest_assignment() -> None:
    state = _state()
    again = _assignment("INC-1-A5", "E2", AssignmentStatus.DISPATCHED, 12)
    incident = state.incident("INC-1")
    state = state.with_assignment(again).with_incident(
        replace(incident, assignment_ids=(*incident.assignment_ids, again.id)))
    resources = [r for r in _eido(state)["emergencyResourceComponent"] if r["emergencyResourceName"] == "Engine 2"]
    assert len(resources) == 1 and resources[0]["unitStatusInternal"] == ["dispatched"]


def test_no_resources_no_dispatch_components() -> None:
    state = _state()
    bare = replace(state.incident("INC-1"), assignment_ids=())
    eido = incident_eido(bare, assignments={}, units={}, agencies={}, sender=SENDER, updated_at=T0)
    assert "emergencyResourceComponent" not in eido and "dispatchComponent" not in eido
    assert [a["$id"] for a in eido["agencyComponent"]] == [SENDER]


def test_notes_are_escaped_attributed_and_bounded() -> None:
    notes = tuple(Note(at=T0 + timedelta(minutes=i), author="alice" if i % 2 else "Bob Smith", text=f"note {i}")
                  for i in range(30))
    notes = (Note(at=T0, author="alice", text="<script>alert('x')</script> & more"), *notes[1:])
    eido = _eido(_state(notes=notes), max_notes=5)
    kept = eido["notesComponent"]
    assert [n["notesActionComments"] for n in kept] == [f"note {i}" for i in range(25, 30)]
    assert [n["$id"].rsplit(":", 1)[1] for n in kept] == ["26", "27", "28", "29", "30"]  # positions stay stable
    assert eido["incidentComponent"]["notesReference"] == [{"$ref": n["$id"]} for n in kept]
    agents = {a["$id"]: a for a in eido["agentComponent"]}
    assert set(agents) == {f"urn:icp:{SENDER}:agent:alice", f"urn:icp:{SENDER}:agent:Bob%20Smith"}
    assert json.loads(agents[f"urn:icp:{SENDER}:agent:Bob%20Smith"]["agentJcard"])[1][1][3] == "Bob Smith"
    first = _eido(_state(notes=notes), max_notes=30)["notesComponent"][0]
    assert first["notesActionComments"] == "&lt;script&gt;alert('x')&lt;/script&gt; &amp; more"
    assert "notesComponent" not in _eido(_state(notes=notes), max_notes=0)
    assert len(_eido(_state(notes=notes))["notesComponent"]) == 20  # the default bound


def test_deterministic_and_json_ready() -> None:
    state = _state(notes=(Note(at=T0, author="alice", text="ä ✓"),))
    a, b = _eido(state), _eido(state)
    assert a == b
    text = json.dumps(a, sort_keys=True)
    assert json.loads(text) == a
    assert text == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("sender", ["", "Dispatch.Example.org", "has space.org", "-bad.org", "a..b"])
def test_sender_must_be_a_domain_name(sender: str) -> None:
    with pytest.raises(ValueError, match="domain name"):
        state_eido(_state(), "INC-1", sender=sender, updated_at=T0)


def test_naive_times_and_dangling_references_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        state_eido(_state(), "INC-1", sender=SENDER, updated_at=datetime(2026, 3, 1, 12, 0))
    state = _state()
    with pytest.raises(ValueError, match="unit 'M1'"):
        incident_eido(state.incident("INC-1"), assignments=state.assignments,
                      units={k: v for k, v in state.units.items() if k != "M1"},
                      agencies=state.agencies, sender=SENDER, updated_at=T0)
