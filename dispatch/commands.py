"""Commands: what dispatchers, units, sensors and timers ask the dispatch core to do.

Each is a frozen dataclass validated at construction, so a command that exists is well formed;
whether the current state allows it is ``decide``'s question. Fields are keyword-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dispatch import _checks as check
from dispatch.capability import Capability
from dispatch.errors import Invalid
from dispatch.incident import MAX_ALARM_LEVEL, MAX_NOTE_CHARS, PRIORITY_HIGHEST, PRIORITY_LOWEST, IncidentNumber
from dispatch.lifecycle import UnitStatus
from geo.coords import Point

MAX_UNITS_PER_DISPATCH = 50
MAX_REASON_CHARS = 500
MAX_ALERTS_PER_LINK = 1000  # alerts one LinkAlerts (and one CreateIncident) names


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base of all commands; ``name`` is the class name, used in error messages."""

    @property
    def name(self) -> str:
        return type(self).__name__


def _reason(value: object) -> str:
    return check.text(value, "reason", max_len=MAX_REASON_CHARS)


def _priority(value: object) -> int:
    return check.integer(value, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)


# --- incidents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateIncident(Command):
    """Open an incident. The id and number come from the store (a uuid, a per-year sequence)."""

    incident_id: str
    number: IncidentNumber
    incident_type: str
    priority: int
    location: Point
    address: str = ""
    zone: str | None = None
    alert_ids: tuple[str, ...] = ()

    # Assignment ids are derived from the incident id ("<id>-A12") and must stay within 128.
    MAX_ID_CHARS: ClassVar[int] = 100

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        if len(self.incident_id) > self.MAX_ID_CHARS:
            raise Invalid(f"incident_id is longer than {self.MAX_ID_CHARS} characters",
                          field="incident_id")
        if not isinstance(self.number, IncidentNumber):
            raise Invalid("number must be an IncidentNumber", field="number")
        check.slug(self.incident_type, "incident_type")
        _priority(self.priority)
        check.point(self.location, "location")
        check.text(self.address, "address", max_len=500)
        if self.zone is not None:
            check.slug(self.zone, "zone")
        check.set_field(self, "alert_ids", check.idents(self.alert_ids, "alert_ids", max_len=MAX_ALERTS_PER_LINK))


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateIncident(Command):
    """Change what is known about an open incident; None leaves a field as it is."""

    incident_id: str
    incident_type: str | None = None
    priority: int | None = None
    location: Point | None = None
    address: str | None = None
    zone: str | None = None

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        if self.incident_type is not None:
            check.slug(self.incident_type, "incident_type")
        if self.priority is not None:
            _priority(self.priority)
        check.optional_point(self.location, "location")
        if self.address is not None:
            check.text(self.address, "address", max_len=500)
        if self.zone is not None:
            check.slug(self.zone, "zone")
        if all(getattr(self, f) is None for f in UPDATABLE_FIELDS):
            raise Invalid("an update must change at least one field")


UPDATABLE_FIELDS = ("incident_type", "priority", "location", "address", "zone")


@dataclass(frozen=True, slots=True, kw_only=True)
class AddNote(Command):
    incident_id: str
    author: str
    text: str

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        check.text(self.author, "author", max_len=200, allow_empty=False)
        check.text(self.text, "text", max_len=MAX_NOTE_CHARS, allow_empty=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkAlert(Command):
    """Attach a correlated sensor alert to an open incident (linking twice changes nothing)."""

    incident_id: str
    alert_id: str

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        check.ident(self.alert_id, "alert_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkAlerts(Command):
    """Attach several correlated alerts to an open incident at once (a sensor storm's alerts of
    one transaction): one fact for the lot. Ids already linked are skipped."""

    incident_id: str
    alert_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        check.set_field(self, "alert_ids", check.idents(self.alert_ids, "alert_ids", max_len=MAX_ALERTS_PER_LINK))
        if not self.alert_ids:
            raise Invalid("alert_ids must name at least one alert", field="alert_ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class RaiseAlarmLevel(Command):
    """Move to a higher alarm level (the next one unless ``to_level`` says which)."""

    incident_id: str
    to_level: int | None = None

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        if self.to_level is not None:
            check.integer(self.to_level, "to_level", lo=2, hi=MAX_ALARM_LEVEL)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseIncident(Command):
    incident_id: str
    disposition: str = ""

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        check.text(self.disposition, "disposition", max_len=MAX_REASON_CHARS)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelIncident(Command):
    incident_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        _reason(self.reason)


# --- assignments ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitRequest:
    """One unit to dispatch, with the plan requirement it fills when the dispatcher knows it."""

    unit_id: str
    capability: Capability | None = None

    def __post_init__(self) -> None:
        check.ident(self.unit_id, "unit_id")
        check.set_field(
            self, "capability", check.optional_member(self.capability, Capability, "capability")
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchUnits(Command):
    """Send units to an incident: all of them or, if any cannot go, none."""

    incident_id: str
    units: tuple[UnitRequest, ...]

    def __post_init__(self) -> None:
        check.ident(self.incident_id, "incident_id")
        units = check.tuple_of(self.units, UnitRequest, "units", max_len=MAX_UNITS_PER_DISPATCH)
        if not units:
            raise Invalid("units must name at least one unit", field="units")
        if len({u.unit_id for u in units}) != len(units):
            raise Invalid("units lists the same unit twice", field="units")
        check.set_field(self, "units", units)

    @classmethod
    def of(cls, incident_id: str, *unit_ids: str) -> DispatchUnits:
        return cls(incident_id=incident_id, units=tuple(UnitRequest(u) for u in unit_ids))


@dataclass(frozen=True, slots=True, kw_only=True)
class _AssignmentCommand(Command):
    assignment_id: str

    def __post_init__(self) -> None:
        check.ident(self.assignment_id, "assignment_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class AcknowledgeAssignment(_AssignmentCommand):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptMutualAid(_AssignmentCommand):
    """The partner agency agrees to send the requested unit: it is dispatched. (Its refusal is
    ``DeclineAssignment`` on the requested assignment.)"""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Withdrawal(_AssignmentCommand):
    """A unit drops out before working the incident. ``replacement_unit_id`` is the next unit
    the caller found with ``recommendation.replacement_for``; the policy decides what to do
    with it (nothing, recommend it, or dispatch it)."""

    replacement_unit_id: str | None = None

    def __post_init__(self) -> None:
        check.ident(self.assignment_id, "assignment_id")
        check.optional_ident(self.replacement_unit_id, "replacement_unit_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclineAssignment(_Withdrawal):
    reason: str = ""

    def __post_init__(self) -> None:
        _Withdrawal.__post_init__(self)
        _reason(self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutAssignment(_Withdrawal):
    """Issued by the scheduler at the acknowledgement deadline."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitEnRoute(_AssignmentCommand):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitOnScene(_AssignmentCommand):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearAssignment(_AssignmentCommand):
    """The unit has finished at the incident and is released from it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelAssignment(_AssignmentCommand):
    """Withdraw a unit before it arrives, or reject a recommended assignment."""

    reason: str = ""

    def __post_init__(self) -> None:
        _AssignmentCommand.__post_init__(self)
        _reason(self.reason)


# --- units ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeUnitStatus(Command):
    """A unit (or a dispatcher for it) reports a status.

    Statuses that belong to an assignment are routed to it: ``en_route`` and ``on_scene`` move
    the unit's assignment; ``available`` while assigned clears it (on scene) or cancels it
    (before arrival). ``dispatched`` cannot be set this way: that is ``DispatchUnits``.
    """

    unit_id: str
    status: UnitStatus

    def __post_init__(self) -> None:
        check.ident(self.unit_id, "unit_id")
        check.set_field(self, "status", check.member(self.status, UnitStatus, "status"))
        if self.status is UnitStatus.DISPATCHED:
            raise Invalid("a unit is dispatched with DispatchUnits, not by a status change",
                          field="status")


COMMAND_TYPES: tuple[type[Command], ...] = (
    CreateIncident,
    UpdateIncident,
    AddNote,
    LinkAlert,
    LinkAlerts,
    RaiseAlarmLevel,
    CloseIncident,
    CancelIncident,
    DispatchUnits,
    AcceptMutualAid,
    AcknowledgeAssignment,
    DeclineAssignment,
    TimeoutAssignment,
    UnitEnRoute,
    UnitOnScene,
    ClearAssignment,
    CancelAssignment,
    ChangeUnitStatus,
)
