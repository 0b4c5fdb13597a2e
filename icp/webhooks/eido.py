"""An incident as an EIDO (NENA-STA-021 Emergency Incident Data Object, ``eidoVersion`` 1.0).

The field names follow NENA's EIDO JSON schema (the OpenAPI document in NENA911/EIDO-JSON):
the object's ``$id`` is the incident tracking identifier, every data component carries the
common prologue (``$id``, ``lastUpdateTimeStamp``, ``updatedByAgencyReference``), components
point at each other with ``{"$ref": <$id>}``, and locations travel as PIDF-LO by value.

Where the schema asks for a value from a NENA registry (incident type, unit status, agency role)
ICP has no authoritative mapping, so it fills the registry field with its best equivalent and
always puts its own code in the matching ``…Internal…`` field, which the schema provides for
exactly that. The view is deterministic: the same state and arguments give the same JSON.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from dispatch.agency import Agency
from dispatch.assignment import Assignment
from dispatch.capability import Capability
from dispatch.incident import Incident, Note
from dispatch.lifecycle import AssignmentStatus
from dispatch.state import DispatchState
from dispatch.unit import Unit
from geo.coords import Point

V = TypeVar("V")
Prologue = Callable[[str, str], dict[str, Any]]

EIDO_VERSION = "1.0"
# Notes are up to 10,000 characters and an incident keeps up to 2,000 of them; a webhook carries
# the latest few so that a payload stays in the tens of kilobytes. The rest are in the API.
MAX_NOTES = 20

# Registry texts (see the module docstring): ICP's reading, with its own codes beside them.
ROLE_DISPATCHING = "Dispatching"
ROLE_RESPONDING = "Responding"
LOCATION_TYPE_INCIDENT = "Incident"
SENDER_AGENCY_TYPE = "psap"
_RESOURCE_TYPE: Mapping[Capability, str] = {
    Capability.ENGINE: "Engine",
    Capability.LADDER: "Ladder",
    Capability.RESCUE: "Rescue",
    Capability.TANKER: "Tanker",
    Capability.HAZMAT: "Hazmat",
    Capability.COMMAND: "Command",
    Capability.ALS: "ALS Ambulance",
    Capability.BLS: "BLS Ambulance",
    Capability.PATROL: "Patrol",
    Capability.UTILITY: "Utility",
}
_UNIT_STATUS: Mapping[AssignmentStatus, str] = {
    AssignmentStatus.RECOMMENDED: "Recommended",
    AssignmentStatus.DISPATCHED: "Dispatched",
    AssignmentStatus.ACKNOWLEDGED: "Acknowledged",
    AssignmentStatus.EN_ROUTE: "Enroute",
    AssignmentStatus.ON_SCENE: "OnScene",
    AssignmentStatus.CLEARED: "Cleared",
    AssignmentStatus.DECLINED: "Declined",
    AssignmentStatus.TIMED_OUT: "NoResponse",
    AssignmentStatus.CANCELLED: "Cancelled",
}

_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def tracking_id(incident_id: str, sender: str) -> str:
    """The incident tracking identifier (NENA-STA-010 form): stable for the incident's lifetime,
    so a receiver files every update under the same key."""
    return f"urn:emergency:uid:incidentid:{incident_id}:{sender}"


def state_eido(state: DispatchState, incident_id: str, *, sender: str, updated_at: datetime,
               max_notes: int = MAX_NOTES) -> dict[str, Any]:
    """``incident_eido`` for an incident of a dispatch state snapshot."""
    return incident_eido(
        state.incident(incident_id),
        assignments=state.assignments,
        units=state.units,
        agencies=state.agencies,
        sender=sender,
        updated_at=updated_at,
        max_notes=max_notes,
    )


def incident_eido(
    incident: Incident,
    *,
    assignments: Mapping[str, Assignment],
    units: Mapping[str, Unit],
    agencies: Mapping[str, Agency],
    sender: str,
    updated_at: datetime,
    max_notes: int = MAX_NOTES,
) -> dict[str, Any]:
    """The EIDO of ``incident`` as a JSON-ready dict.

    ``sender`` is this ICP's identifier, a domain name (``dispatch.example.org``): it names the
    dispatching agency and the issuing element and scopes every other identifier. ``updated_at``
    is the time of the latest change the view includes (the triggering event's time): the EIDO's
    ``lastUpdateTimeStamp``. The mappings are the state's (only the incident's entries are read).
    Units that were dispatched appear as emergency resources with their status on this incident;
    recommendations never dispatched do not.
    """
    if not isinstance(sender, str) or not _DOMAIN.fullmatch(sender):
        raise ValueError(f"sender must be a lower-case domain name such as dispatch.example.org, got {sender!r}")
    if isinstance(max_notes, bool) or not isinstance(max_notes, int) or max_notes < 0:
        raise ValueError("max_notes must be a count (>= 0)")
    now = _time(updated_at)
    tracking = tracking_id(incident.id, sender)
    own = f"urn:icp:{sender}:incident:{incident.id}"
    me = _ref(sender)

    def prologue(component_id: str, at: str) -> dict[str, Any]:
        return {"$id": component_id, "lastUpdateTimeStamp": at, "updatedByAgencyReference": me}

    # Emergency resources: the latest dispatched assignment of each unit on this incident.
    latest: dict[str, Assignment] = {}
    for aid in incident.assignment_ids:
        assignment = _lookup(assignments, aid, "assignment")
        if assignment.dispatched_at is not None:
            latest[assignment.unit_id] = assignment
    resources: list[dict[str, Any]] = []
    by_agency: dict[str, list[tuple[str, str]]] = {}
    for assignment in latest.values():
        unit = _lookup(units, assignment.unit_id, "unit")
        resource = _resource(unit, assignment, sender, tracking, prologue)
        resources.append(resource)
        by_agency.setdefault(unit.agency_id, []).append((resource["$id"], resource["lastUpdateTimeStamp"]))

    involved = sorted(by_agency)
    agency_components = [
        {
            **prologue(sender, now),
            "agencyRoleDescriptionRegistryText": [ROLE_DISPATCHING],
            "agencyType": [SENDER_AGENCY_TYPE],
            "incidentOwningAgencyIndicator": True,
        }
    ]
    dispatch_components = []
    for agency_id in involved:
        agency = _lookup(agencies, agency_id, "agency")
        agency_ref = _agency_id(agency.id, sender)
        agency_components.append(
            {
                **prologue(agency_ref, now),
                "agencyJcard": _jcard(agency.name),
                "agencyRoleDescriptionRegistryText": [ROLE_RESPONDING],
                "agencyType": [agency.kind.value],
                "incidentOwningAgencyIndicator": False,
            }
        )
        dispatched = by_agency[agency_id]
        dispatch_components.append(
            {
                **prologue(f"{own}:dispatch:{agency.id}", max(at for _, at in dispatched)),
                "agencyReference": _ref(agency_ref),
                "emergencyResourceReference": [_ref(rid) for rid, _ in dispatched],
            }
        )

    location_id = f"{own}:location"
    location: dict[str, Any] = {
        **prologue(location_id, now),
        "locationTypeDescriptionRegistryText": LOCATION_TYPE_INCIDENT,
        "locationByValue": pidf_lo(incident.location, entity=f"pres:{incident.id}@{sender}", at=updated_at),
    }
    if incident.address:
        location["locationDescriptionText"] = incident.address

    first_kept = max(0, len(incident.notes) - max_notes)
    notes, agents = _notes(incident.notes, first_kept, own, sender, prologue)

    incident_component: dict[str, Any] = {
        **prologue(f"{own}:incident", now),
        "incidentTypeCommonRegistryText": incident.incident_type,
        "incidentTypeInternalCode": incident.incident_type,
        "incidentStatusInternalText": [incident.status.value],
        "internalIncidentId": str(incident.number),
        "incidentPriorityInternalText": str(incident.priority),
        "locationReference": [_ref(location_id)],
        "notesReference": [_ref(n["$id"]) for n in notes],
    }
    if incident.zone is not None:
        incident_component["beatOrDispatchGroupText"] = incident.zone

    eido: dict[str, Any] = {
        **prologue(tracking, now),
        "eidoVersion": EIDO_VERSION,
        "issuingElementIdentification": sender,
        "incidentComponent": incident_component,
        "locationComponent": [location],
        "agencyComponent": agency_components,
    }
    if agents:
        eido["agentComponent"] = agents
    if dispatch_components:
        eido["dispatchComponent"] = dispatch_components
    if resources:
        eido["emergencyResourceComponent"] = resources
    if notes:
        eido["notesComponent"] = notes
    return eido


def pidf_lo(point: Point, *, entity: str, at: datetime) -> str:
    """A PIDF-LO document (RFC 4119, RFC 5491) with ``point`` as a GML point: ``gml:pos`` is
    written latitude first, the axis order of EPSG:4326."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10"'
        f' xmlns:gml="http://www.opengis.net/gml" entity={quoteattr(entity)}>'
        '<tuple id="incident"><status><gp:geopriv><gp:location-info>'
        '<gml:Point srsName="urn:ogc:def:crs:EPSG::4326">'
        f"<gml:pos>{point.lat!r} {point.lon!r}</gml:pos>"
        "</gml:Point></gp:location-info><gp:usage-rules/></gp:geopriv></status>"
        f"<timestamp>{escape(_time(at))}</timestamp></tuple></presence>"
    )


def _resource(unit: Unit, assignment: Assignment, sender: str, tracking: str, prologue: Prologue) -> dict[str, Any]:
    capability = assignment.capability or min(unit.capabilities)
    at = assignment.updated_at or assignment.dispatched_at or assignment.created_at
    resource: dict[str, Any] = {
        **prologue(f"urn:icp:{sender}:unit:{unit.id}", _time(at)),
        "emergencyResourceName": unit.call_sign,
        "emergencyResourceTypeCommonRegistryText": _RESOURCE_TYPE[capability],
        "emergencyResourceTypeInternalText": capability.value,
        "resourceAttributeRegistryText": [],
        "resourceAttributeInternalText": sorted(c.value for c in unit.capabilities),
        "primaryUnitStatusRegistryText": _UNIT_STATUS[assignment.status],
        "secondaryUnitStatusRegistryText": [],
        "unitStatusInternal": [assignment.status.value],
        # ICP does not track crew members, so the required list of agents is empty.
        "agentReference": [],
    }
    if assignment.active:
        resource["activeOnIncidentId"] = tracking
    return resource


def _notes(
    notes: tuple[Note, ...], first: int, own: str, sender: str, prologue: Prologue
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    components: list[dict[str, Any]] = []
    agents: dict[str, dict[str, Any]] = {}
    for index in range(first, len(notes)):
        note = notes[index]
        agent_id = f"urn:icp:{sender}:agent:{quote(note.author, safe='')}"
        if agent_id not in agents:
            agents[agent_id] = {
                **prologue(agent_id, _time(note.at)),
                "agentJcard": _jcard(note.author),
                "agentRoleRegistryText": [ROLE_DISPATCHING],
                "agencyReference": _ref(sender),
            }
        components.append(
            {
                # Numbered by position in the incident, so a note keeps its $id across updates.
                **prologue(f"{own}:note:{index + 1}", _time(note.at)),
                # The schema's notes are HTML5: plain text is escaped, never interpreted.
                "notesActionComments": html.escape(note.text, quote=False),
                "agentReference": _ref(agent_id),
            }
        )
    return components, [agents[k] for k in sorted(agents)]


def _agency_id(agency_id: str, sender: str) -> str:
    return f"urn:icp:{sender}:agency:{agency_id}"


def _ref(component_id: str) -> dict[str, str]:
    return {"$ref": component_id}


def _jcard(name: str) -> str:
    # jCard (RFC 7095): the schema carries contact cards as JSON text; ICP knows only the name.
    return json.dumps(["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", name]]], ensure_ascii=False)


def _time(at: datetime) -> str:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("EIDO times must be timezone-aware datetimes")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lookup(items: Mapping[str, V], key: str, kind: str) -> V:
    try:
        return items[key]
    except KeyError:
        raise ValueError(f"the incident refers to {kind} {key!r}, which is not in the given {kind} map") from None
