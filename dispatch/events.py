"""Events: the facts ``decide`` produces, ``evolve`` applies and the event log stores.

Each event is a frozen dataclass with a stable ``type`` string (``assignment.timed_out``), the
time it happened (``at``) and the ids it concerns. ``to_dict()`` gives its JSON form and
``event_from_dict`` reads it back, so the log can be replayed into a state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar

from dispatch import _checks as check
from dispatch import codec
from dispatch.capability import Capability
from dispatch.errors import Invalid
from dispatch.incident import MAX_ALARM_LEVEL, MAX_ALERTS, MAX_NOTE_CHARS, IncidentNumber
from dispatch.lifecycle import AssignmentStatus, IncidentStatus, UnitStatus
from geo.coords import Point


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    type: ClassVar[str]
    at: datetime

    def __post_init__(self) -> None:
        check.aware(self.at, "at")

    @property
    def subject(self) -> str:
        """What the event is about, as the log's ``subject`` column: ``incident/ID`` or ``unit/ID``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **codec.encode_fields(self)}


# --- incidents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentEvent(Event):
    incident_id: str

    def __post_init__(self) -> None:
        Event.__post_init__(self)
        check.ident(self.incident_id, "incident_id")

    @property
    def subject(self) -> str:
        return f"incident/{self.incident_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentCreated(IncidentEvent):
    type: ClassVar[str] = "incident.created"
    number: IncidentNumber
    incident_type: str
    priority: int
    location: Point
    address: str = ""
    zone: str | None = None
    alert_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentUpdated(IncidentEvent):
    """Only the fields that changed are set; the others are None."""

    type: ClassVar[str] = "incident.updated"
    incident_type: str | None = None
    priority: int | None = None
    location: Point | None = None
    address: str | None = None
    zone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteAdded(IncidentEvent):
    type: ClassVar[str] = "incident.note_added"
    author: str
    text: str

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        check.text(self.text, "text", max_len=MAX_NOTE_CHARS, allow_empty=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertLinked(IncidentEvent):
    type: ClassVar[str] = "incident.alert_linked"
    alert_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsLinked(IncidentEvent):
    """Several alerts joined the incident at once (`LinkAlerts`), in this order."""

    type: ClassVar[str] = "incident.alerts_linked"
    alert_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        check.set_field(self, "alert_ids", check.idents(self.alert_ids, "alert_ids", max_len=MAX_ALERTS))


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentStatusChanged(IncidentEvent):
    """A move caused by the incident's assignments (first dispatch, first arrival, release)."""

    type: ClassVar[str] = "incident.status_changed"
    from_status: IncidentStatus
    to_status: IncidentStatus

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        check.set_field(self, "from_status", check.member(self.from_status, IncidentStatus, "from_status"))
        check.set_field(self, "to_status", check.member(self.to_status, IncidentStatus, "to_status"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmRaised(IncidentEvent):
    type: ClassVar[str] = "incident.alarm_raised"
    from_level: int
    to_level: int

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        check.integer(self.from_level, "from_level", lo=1, hi=MAX_ALARM_LEVEL)
        check.integer(self.to_level, "to_level", lo=1, hi=MAX_ALARM_LEVEL)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentEscalated(IncidentEvent):
    """Supervisors' attention needed: a unit did not acknowledge in time."""

    type: ClassVar[str] = "incident.escalated"
    reason: str
    assignment_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentClosed(IncidentEvent):
    type: ClassVar[str] = "incident.closed"
    disposition: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentCancelled(IncidentEvent):
    type: ClassVar[str] = "incident.cancelled"
    reason: str = ""


# --- assignments ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentEvent(IncidentEvent):
    """An assignment moved; ``status`` is the state it is in after this event."""

    status: ClassVar[AssignmentStatus]
    assignment_id: str
    unit_id: str

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        check.ident(self.assignment_id, "assignment_id")
        check.ident(self.unit_id, "unit_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentRecommended(AssignmentEvent):
    """The system proposes a unit (after a decline or timeout); a dispatcher confirms it."""

    type: ClassVar[str] = "assignment.recommended"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.RECOMMENDED
    capability: Capability | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentDispatched(AssignmentEvent):
    type: ClassVar[str] = "assignment.dispatched"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.DISPATCHED
    capability: Capability | None = None
    ack_due_at: datetime

    def __post_init__(self) -> None:
        AssignmentEvent.__post_init__(self)
        check.aware(self.ack_due_at, "ack_due_at")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentMutualAidRequested(AssignmentEvent):
    """A partner agency is asked to send its unit; ``agency_id`` is that agency, which answers
    before ``answer_due_at`` or the request times out."""

    type: ClassVar[str] = "assignment.mutual_aid_requested"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.REQUESTED
    agency_id: str
    capability: Capability | None = None
    answer_due_at: datetime

    def __post_init__(self) -> None:
        AssignmentEvent.__post_init__(self)
        check.ident(self.agency_id, "agency_id")
        check.aware(self.answer_due_at, "answer_due_at")


@dataclass(frozen=True, slots=True, kw_only=True)
class MutualAidAccepted(IncidentEvent):
    """The partner agency said yes; an ``assignment.dispatched`` for the same assignment follows.
    The assignment's state is moved by that event, so this one is a record of the answer."""

    type: ClassVar[str] = "assignment.mutual_aid_accepted"
    assignment_id: str
    unit_id: str
    agency_id: str

    def __post_init__(self) -> None:
        IncidentEvent.__post_init__(self)
        for name in ("assignment_id", "unit_id", "agency_id"):
            check.ident(getattr(self, name), name)


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentMutualAidDeclined(AssignmentEvent):
    type: ClassVar[str] = "assignment.mutual_aid_declined"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.DECLINED
    agency_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        AssignmentEvent.__post_init__(self)
        check.ident(self.agency_id, "agency_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentAcknowledged(AssignmentEvent):
    type: ClassVar[str] = "assignment.acknowledged"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.ACKNOWLEDGED


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentDeclined(AssignmentEvent):
    type: ClassVar[str] = "assignment.declined"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.DECLINED
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentTimedOut(AssignmentEvent):
    type: ClassVar[str] = "assignment.timed_out"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.TIMED_OUT


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentEnRoute(AssignmentEvent):
    type: ClassVar[str] = "assignment.en_route"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.EN_ROUTE


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentOnScene(AssignmentEvent):
    type: ClassVar[str] = "assignment.on_scene"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.ON_SCENE


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentCleared(AssignmentEvent):
    type: ClassVar[str] = "assignment.cleared"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.CLEARED


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignmentCancelled(AssignmentEvent):
    type: ClassVar[str] = "assignment.cancelled"
    status: ClassVar[AssignmentStatus] = AssignmentStatus.CANCELLED
    reason: str = ""


# --- units ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitStatusChanged(Event):
    """``incident_id``/``assignment_id`` say which assignment caused the change, if any."""

    type: ClassVar[str] = "unit.status_changed"
    unit_id: str
    from_status: UnitStatus
    to_status: UnitStatus
    incident_id: str | None = None
    assignment_id: str | None = None

    def __post_init__(self) -> None:
        Event.__post_init__(self)
        check.ident(self.unit_id, "unit_id")
        check.set_field(self, "from_status", check.member(self.from_status, UnitStatus, "from_status"))
        check.set_field(self, "to_status", check.member(self.to_status, UnitStatus, "to_status"))

    @property
    def subject(self) -> str:
        return f"unit/{self.unit_id}"


EVENT_TYPES: Mapping[str, type[Event]] = MappingProxyType(
    {
        cls.type: cls
        for cls in (
            IncidentCreated,
            IncidentUpdated,
            NoteAdded,
            AlertLinked,
            AlertsLinked,
            IncidentStatusChanged,
            AlarmRaised,
            IncidentEscalated,
            IncidentClosed,
            IncidentCancelled,
            AssignmentRecommended,
            AssignmentDispatched,
            AssignmentMutualAidRequested,
            MutualAidAccepted,
            AssignmentMutualAidDeclined,
            AssignmentAcknowledged,
            AssignmentDeclined,
            AssignmentTimedOut,
            AssignmentEnRoute,
            AssignmentOnScene,
            AssignmentCleared,
            AssignmentCancelled,
            UnitStatusChanged,
        )
    }
)


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Read an event back from ``to_dict()`` output (e.g. the log's ``type`` + ``data``)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise Invalid("an event needs a string 'type'", field="type")
    cls = EVENT_TYPES.get(data["type"])
    if cls is None:
        raise Invalid(f"unknown event type {data['type'][:60]!r}", field="type")
    return codec.decode(cls, {k: v for k, v in data.items() if k != "type"})
