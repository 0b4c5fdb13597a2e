"""Who is acting: principals, roles and what each role implies."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    DISPATCHER = "dispatcher"
    UNIT = "unit"
    AGENCY = "agency"
    SENSOR = "sensor"


# A role also holds the roles it implies: a supervisor can do what a dispatcher can; an
# administrator can do everything. unit, agency and sensor are machine roles of their own.
IMPLIES: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.SUPERVISOR: frozenset({Role.SUPERVISOR, Role.DISPATCHER}),
    Role.DISPATCHER: frozenset({Role.DISPATCHER}),
    Role.UNIT: frozenset({Role.UNIT}),
    Role.AGENCY: frozenset({Role.AGENCY}),
    Role.SENSOR: frozenset({Role.SENSOR}),
}


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise ValueError(f"unknown role {text!r} (one of: {', '.join(r.value for r in Role)})") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``kind`` is ``token``, ``user`` or ``system``."""

    kind: str
    id: str
    name: str
    role: Role
    agency: str | None = None
    unit: str | None = None
    source: str | None = None  # the sensor network a sensor key is bound to

    def has(self, role: Role) -> bool:
        return role in IMPLIES[self.role]

    @property
    def unrestricted(self) -> bool:
        """Sees every agency's data (administrators, and principals bound to no agency)."""
        return self.role is Role.ADMIN or (self.agency is None and self.role is Role.SUPERVISOR)

    def visible_agencies(self) -> list[str] | None:
        """Agencies whose events this principal may read; None means all of them."""
        if self.unrestricted:
            return None
        return [self.agency] if self.agency else []

    def actor(self) -> dict[str, Any]:
        """How this principal is recorded on every event it causes."""
        out: dict[str, Any] = {"kind": self.kind, "id": self.id, "name": self.name, "role": self.role.value}
        if self.agency:
            out["agency"] = self.agency
        if self.unit:
            out["unit"] = self.unit
        if self.source:
            out["source"] = self.source
        return out

    def to_json(self) -> dict[str, Any]:
        return self.actor()


SYSTEM = Principal(kind="system", id="icp", name="ICP", role=Role.ADMIN)
