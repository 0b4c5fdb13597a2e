"""The dispatch state: an immutable snapshot of agencies, stations, units, incidents, assignments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from dispatch.agency import Agency, Station
from dispatch.assignment import Assignment
from dispatch.errors import Invalid, NotFound
from dispatch.incident import Incident
from dispatch.policy import DispatchPolicy
from dispatch.unit import Unit
from geo.coords import Point

V = TypeVar("V")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def _frozen(items: Mapping[str, V]) -> Mapping[str, V]:
    # A proxy made here is owned by the state; anything else is copied so that the caller's
    # dict cannot change a snapshot behind its back.
    if isinstance(items, MappingProxyType):
        return items
    return MappingProxyType(dict(items))


def _with(items: Mapping[str, V], key: str, value: V) -> Mapping[str, V]:
    # Copy-on-write: one dict copy per change. For a city's live picture (thousands of units,
    # hundreds of open incidents) that is tens of microseconds, and every old snapshot stays valid.
    new = dict(items)
    new[key] = value
    return MappingProxyType(new)


@dataclass(frozen=True, slots=True)
class DispatchState:
    """Everything ``decide`` reads and ``evolve`` writes. Never mutated: updates make a new one.

    Construct it with ``DispatchState.build(...)``, which checks that references resolve (a
    unit's agency and station exist); the direct constructor trusts its input, so ``evolve``
    stays cheap.
    """

    agencies: Mapping[str, Agency] = field(default_factory=_empty)
    stations: Mapping[str, Station] = field(default_factory=_empty)
    units: Mapping[str, Unit] = field(default_factory=_empty)
    incidents: Mapping[str, Incident] = field(default_factory=_empty)
    assignments: Mapping[str, Assignment] = field(default_factory=_empty)
    policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    # Incident id → the agencies whose jurisdiction holds it (the caller's geography knows them).
    # A unit of any other agency is mutual aid there, and is requested rather than dispatched
    # unless its agency's terms say automatic aid. An incident missing here has no home agency.
    home_agencies: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        for name in ("agencies", "stations", "units", "incidents", "assignments", "home_agencies"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @classmethod
    def build(
        cls,
        *,
        agencies: Iterable[Agency] = (),
        stations: Iterable[Station] = (),
        units: Iterable[Unit] = (),
        incidents: Iterable[Incident] = (),
        assignments: Iterable[Assignment] = (),
        policy: DispatchPolicy | None = None,
    ) -> DispatchState:
        """A state from lists of values, with every cross-reference checked."""
        state = cls(
            agencies=_by_id(agencies, "agency"),
            stations=_by_id(stations, "station"),
            units=_by_id(units, "unit"),
            incidents=_by_id(incidents, "incident"),
            assignments=_by_id(assignments, "assignment"),
            policy=policy or DispatchPolicy(),
        )
        state.check_references()
        return state

    def check_references(self) -> None:
        """Raise ``Invalid`` if any id in the snapshot points at nothing."""
        for station in self.stations.values():
            _need(self.agencies, station.agency_id, f"station {station.id}: agency")
        for unit in self.units.values():
            _need(self.agencies, unit.agency_id, f"unit {unit.id}: agency")
            if unit.station_id is not None:
                _need(self.stations, unit.station_id, f"unit {unit.id}: station")
            if unit.assignment_id is not None:
                _need(self.assignments, unit.assignment_id, f"unit {unit.id}: assignment")
        for agency in self.agencies.values():
            for terms in agency.mutual_aid:
                _need(self.agencies, terms.partner_id, f"agency {agency.id}: mutual-aid partner")
        for incident in self.incidents.values():
            for aid in incident.assignment_ids:
                _need(self.assignments, aid, f"incident {incident.id}: assignment")
        for a in self.assignments.values():
            _need(self.incidents, a.incident_id, f"assignment {a.id}: incident")
            _need(self.units, a.unit_id, f"assignment {a.id}: unit")

    # --- lookups that raise the domain's NotFound ------------------------------------------
    def incident(self, incident_id: str) -> Incident:
        return _get(self.incidents, incident_id, "incident")

    def unit(self, unit_id: str) -> Unit:
        return _get(self.units, unit_id, "unit")

    def assignment(self, assignment_id: str) -> Assignment:
        return _get(self.assignments, assignment_id, "assignment")

    def assignments_of(self, incident: Incident) -> list[Assignment]:
        return [self.assignments[aid] for aid in incident.assignment_ids]

    def active_assignments_of(self, incident: Incident) -> list[Assignment]:
        return [a for a in self.assignments_of(incident) if a.active]

    def needs_mutual_aid_request(self, incident_id: str, unit: Unit) -> bool:
        """Whether sending ``unit`` to the incident asks its agency first: it is not of a home
        agency, and no home agency holds automatic-aid terms with its agency."""
        home = self.home_agencies.get(incident_id, ())
        if not home or unit.agency_id in home:
            return False
        for agency_id in home:
            agency = self.agencies.get(agency_id)
            terms = agency.terms_with(unit.agency_id) if agency is not None else None
            if terms is not None and terms.automatic:
                return False
        return True

    # --- copy-on-write updates ---------------------------------------------------------------
    def with_agency(self, agency: Agency) -> DispatchState:
        return replace(self, agencies=_with(self.agencies, agency.id, agency))

    def with_station(self, station: Station) -> DispatchState:
        return replace(self, stations=_with(self.stations, station.id, station))

    def with_unit(self, unit: Unit) -> DispatchState:
        return replace(self, units=_with(self.units, unit.id, unit))

    def with_incident(self, incident: Incident) -> DispatchState:
        return replace(self, incidents=_with(self.incidents, incident.id, incident))

    def with_assignment(self, assignment: Assignment) -> DispatchState:
        return replace(self, assignments=_with(self.assignments, assignment.id, assignment))

    def with_unit_position(self, unit_id: str, position: Point, at: datetime) -> DispatchState:
        """Record a position report (the AVL stream updates state without log events)."""
        return self.with_unit(self.unit(unit_id).with_position(position, at))


def _by_id(values: Iterable[Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for value in values:
        if value.id in out:
            raise Invalid(f"{kind} {value.id!r} is listed twice")
        out[value.id] = value
    return out


def _need(items: Mapping[str, Any], key: str, what: str) -> None:
    if key not in items:
        raise Invalid(f"{what} {key!r} does not exist")


def _get(items: Mapping[str, V], key: str, kind: str) -> V:
    try:
        return items[key]
    except KeyError:
        raise NotFound(kind, key) from None
