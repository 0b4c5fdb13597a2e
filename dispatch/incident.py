"""Incidents, their human numbers (``2026-000123``) and their notes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from dispatch import _checks as check
from dispatch.errors import Invalid
from dispatch.lifecycle import IncidentStatus
from geo.coords import Point

PRIORITY_HIGHEST = 1
PRIORITY_LOWEST = 5
MAX_ALARM_LEVEL = 5
MAX_NOTE_CHARS = 10_000
MAX_NOTES = 2_000
MAX_ALERTS = 10_000  # bound on an incident's alert list

_NUMBER = re.compile(r"(\d{4})-(\d{6,9})")


@dataclass(frozen=True, slots=True, order=True)
class IncidentNumber:
    """The number people say on the radio: the year and a sequence, written ``2026-000123``.

    The sequence is allocated by the store (a database sequence per year); the domain only
    formats and parses it. Six digits are always written, more when a year needs them.
    """

    year: int
    sequence: int

    def __post_init__(self) -> None:
        check.integer(self.year, "year", lo=1970, hi=9999)
        check.integer(self.sequence, "sequence", lo=1, hi=999_999_999)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.sequence:06d}"

    @classmethod
    def parse(cls, text: str) -> IncidentNumber:
        match = _NUMBER.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise Invalid(f"incident number must look like 2026-000123, got {str(text)[:30]!r}",
                          field="number")
        return cls(year=int(match[1]), sequence=int(match[2]))


@dataclass(frozen=True, slots=True)
class Note:
    at: datetime
    author: str
    text: str

    def __post_init__(self) -> None:
        check.aware(self.at, "at")
        check.text(self.author, "author", max_len=200, allow_empty=False)
        check.text(self.text, "text", max_len=MAX_NOTE_CHARS, allow_empty=False)


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident as the dispatch core tracks it.

    ``incident_type`` is a response-plan key (``structure_fire``); ``zone`` optionally narrows
    the plan; ``priority`` runs from 1 (most urgent) to 5. ``assignment_ids`` lists every
    assignment ever made for the incident, in order, including finished ones.
    """

    id: str
    number: IncidentNumber
    incident_type: str
    priority: int
    location: Point
    created_at: datetime
    status: IncidentStatus = IncidentStatus.PENDING
    address: str = ""
    zone: str | None = None
    alarm_level: int = 1
    notes: tuple[Note, ...] = ()
    alert_ids: tuple[str, ...] = ()
    assignment_ids: tuple[str, ...] = ()
    escalated_at: datetime | None = None
    ended_at: datetime | None = None

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        if not isinstance(self.number, IncidentNumber):
            raise Invalid("number must be an IncidentNumber", field="number")
        check.slug(self.incident_type, "incident_type")
        check.integer(self.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)
        check.point(self.location, "location")
        check.aware(self.created_at, "created_at")
        check.set_field(self, "status", check.member(self.status, IncidentStatus, "status"))
        check.text(self.address, "address", max_len=500)
        if self.zone is not None:
            check.slug(self.zone, "zone")
        check.integer(self.alarm_level, "alarm_level", lo=1, hi=MAX_ALARM_LEVEL)
        check.set_field(self, "notes", check.tuple_of(self.notes, Note, "notes", max_len=MAX_NOTES))
        check.set_field(self, "alert_ids", check.idents(self.alert_ids, "alert_ids", max_len=MAX_ALERTS))
        check.set_field(self, "assignment_ids", check.idents(self.assignment_ids, "assignment_ids"))
        check.optional_aware(self.escalated_at, "escalated_at")
        check.optional_aware(self.ended_at, "ended_at")

    def next_assignment_id(self, offset: int = 0) -> str:
        """The id of the next assignment (``offset`` more for several at once): derived from the
        incident, so ``decide`` needs no id generator and replaying it gives the same ids."""
        return f"{self.id}-A{len(self.assignment_ids) + 1 + offset}"
