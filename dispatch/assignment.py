"""Assignments: one unit working one incident, from recommendation to clearing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatch import _checks as check
from dispatch.capability import Capability
from dispatch.lifecycle import ACTIVE_ASSIGNMENT, AssignmentStatus


@dataclass(frozen=True, slots=True)
class Assignment:
    """Incident × unit. ``capability`` is the plan requirement the unit fills, when known, so a
    replacement after a decline or timeout can be sought for the same need."""

    id: str
    incident_id: str
    unit_id: str
    status: AssignmentStatus
    created_at: datetime
    capability: Capability | None = None
    dispatched_at: datetime | None = None
    ack_due_at: datetime | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        check.ident(self.incident_id, "incident_id")
        check.ident(self.unit_id, "unit_id")
        check.set_field(self, "status", check.member(self.status, AssignmentStatus, "status"))
        check.aware(self.created_at, "created_at")
        cap = check.optional_member(self.capability, Capability, "capability")
        check.set_field(self, "capability", cap)
        check.optional_aware(self.dispatched_at, "dispatched_at")
        check.optional_aware(self.ack_due_at, "ack_due_at")
        check.optional_aware(self.updated_at, "updated_at")

    @property
    def active(self) -> bool:
        """True while the assignment holds its unit (dispatched … on scene)."""
        return self.status in ACTIVE_ASSIGNMENT

    def overdue(self, now: datetime) -> bool:
        """True when still unacknowledged (or, for a mutual-aid request, unanswered) at or after
        its deadline; ``ack_due_at`` holds whichever deadline the assignment is waiting on."""
        return (
            self.status in (AssignmentStatus.DISPATCHED, AssignmentStatus.REQUESTED)
            and self.ack_due_at is not None
            and now >= self.ack_due_at
        )
