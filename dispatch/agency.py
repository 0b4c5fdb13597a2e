"""Agencies, their mutual-aid terms, and their stations."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dispatch import _checks as check
from dispatch.capability import Capability
from dispatch.errors import Invalid
from geo.coords import Point


class AgencyKind(StrEnum):
    FIRE = "fire"
    EMS = "ems"
    POLICE = "police"
    UTILITY = "utility"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class MutualAidTerms:
    """What ``partner_id`` lends to the agency holding these terms.

    A partner unit is preferred over the home agency's own only when it is faster by more than
    ``margin_s``: crossing a border has costs (radio, command, reimbursement) that a few seconds
    do not justify. When the home agency cannot fill a requirement at all, the margin does not
    matter.

    ``automatic``: an automatic-aid agreement — the partner's units are dispatched directly. By
    default a partner's unit is *requested* and goes only when the partner agency accepts.
    """

    partner_id: str
    capabilities: frozenset[Capability]
    margin_s: float = 120.0
    automatic: bool = False

    def __post_init__(self) -> None:
        check.ident(self.partner_id, "partner_id")
        caps = check.members(self.capabilities, Capability, "capabilities", min_len=1)
        check.set_field(self, "capabilities", caps)
        check.set_field(self, "margin_s", check.seconds(self.margin_s, "margin_s", hi=3600.0))
        if not isinstance(self.automatic, bool):
            raise Invalid("automatic must be true or false", field="automatic")


@dataclass(frozen=True, slots=True)
class Agency:
    id: str
    name: str
    kind: AgencyKind
    mutual_aid: tuple[MutualAidTerms, ...] = ()

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        check.text(self.name, "name", max_len=200, allow_empty=False)
        check.set_field(self, "kind", check.member(self.kind, AgencyKind, "kind"))
        terms = check.tuple_of(self.mutual_aid, MutualAidTerms, "mutual_aid", max_len=200)
        partners = [t.partner_id for t in terms]
        if self.id in partners:
            raise Invalid("an agency cannot be its own mutual-aid partner", field="mutual_aid")
        if len(set(partners)) != len(partners):
            raise Invalid("mutual_aid lists the same partner twice", field="mutual_aid")
        check.set_field(self, "mutual_aid", terms)

    def terms_with(self, partner_id: str) -> MutualAidTerms | None:
        for terms in self.mutual_aid:
            if terms.partner_id == partner_id:
                return terms
        return None


@dataclass(frozen=True, slots=True)
class Station:
    id: str
    agency_id: str
    name: str
    location: Point

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        check.ident(self.agency_id, "agency_id")
        check.text(self.name, "name", max_len=200, allow_empty=False)
        check.point(self.location, "location")
