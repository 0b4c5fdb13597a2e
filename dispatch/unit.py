"""Units: the vehicles and crews that respond, with their status and last known position."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from dispatch import _checks as check
from dispatch.capability import Capability
from dispatch.errors import Invalid
from dispatch.lifecycle import UnitStatus
from geo.coords import Point


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit as the dispatch core sees it.

    ``assignment_id`` is the active assignment the unit is working, kept by ``evolve`` from the
    assignment events. ``position`` and ``position_at`` come together or not at all: a position
    without a time cannot be judged fresh or stale.
    """

    id: str
    call_sign: str
    agency_id: str
    capabilities: frozenset[Capability]
    station_id: str | None = None
    status: UnitStatus = UnitStatus.AVAILABLE
    position: Point | None = None
    position_at: datetime | None = None
    staffing: int = 0
    assignment_id: str | None = None

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        check.text(self.call_sign, "call_sign", max_len=32, allow_empty=False)
        check.ident(self.agency_id, "agency_id")
        caps = check.members(self.capabilities, Capability, "capabilities", min_len=1)
        check.set_field(self, "capabilities", caps)
        check.optional_ident(self.station_id, "station_id")
        check.set_field(self, "status", check.member(self.status, UnitStatus, "status"))
        check.optional_point(self.position, "position")
        check.optional_aware(self.position_at, "position_at")
        if (self.position is None) != (self.position_at is None):
            raise Invalid("position and position_at must be given together", field="position_at")
        check.integer(self.staffing, "staffing", lo=0, hi=100)
        check.optional_ident(self.assignment_id, "assignment_id")

    def with_position(self, position: Point, at: datetime) -> Unit:
        """The unit after a position report (positions are a stream, not log events)."""
        return replace(self, position=position, position_at=at)
