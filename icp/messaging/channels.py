"""Channels and who belongs to them: ids, kinds and the membership rules, as pure functions (no I/O).

A channel's audience is described by a `Channel` value (agencies, units, members); a principal by a
`Member`. Whether a member reads or writes a channel is decided here and only here, for the REST
API, the gateway's operations (against rows read from the database) and live delivery (against the
node's live picture) alike.

Channel ids (1–128 characters, the id rule of the protocol):

- ``incident:<incident id>`` — the incident's channel: dispatchers and supervisors of the agencies
  the incident belongs to (its jurisdictions and the creator's agency), and the units whose
  assignment to it is active (dispatched, acknowledged, en route, on scene) together with their
  agencies' dispatchers. A unit whose assignment ends leaves; a mutual-aid request that is not yet
  accepted makes nobody a member.
- ``agency:<agency id>`` — the agency's dispatchers, supervisors and units.
- ``broadcast:<agency id>`` — supervisor broadcast: the agency's supervisors write, its units (and
  dispatchers) read.
- ``talkgroup:<agency id>:<name>`` — owned by an agency (its dispatchers and supervisors are members,
  its supervisors manage it); members are listed agencies (their dispatchers and units) and units.
- ``direct:<hash>`` — two principals.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from icp.auth.principal import Principal, Role

EVERYONE = "*"  # an incident that belongs to no agency in particular is everyone's
MAX_CHANNEL_ID = 128
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_MEMBER = re.compile(r"(unit|user|token):[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class ChannelKind(StrEnum):
    INCIDENT = "incident"
    AGENCY = "agency"
    BROADCAST = "broadcast"
    TALKGROUP = "talkgroup"
    DIRECT = "direct"


# Kinds with a row in the `channels` table; the others are derived.
DEFINED_KINDS = frozenset({ChannelKind.TALKGROUP, ChannelKind.DIRECT})


class ChannelIdError(ValueError):
    """Not a channel id this server knows how to read."""


def parse_channel_id(channel_id: str) -> tuple[ChannelKind, str]:
    """``(kind, rest)`` of a channel id; `ChannelIdError` when it names no kind of channel."""
    if not isinstance(channel_id, str) or not _IDENT.fullmatch(channel_id):
        raise ChannelIdError("a channel id is 1 to 128 letters, digits, '.', '_', ':' or '-'")
    prefix, _, rest = channel_id.partition(":")
    try:
        kind = ChannelKind(prefix)
    except ValueError:
        raise ChannelIdError(f"unknown kind of channel {prefix[:20]!r}") from None
    if not rest or not _IDENT.fullmatch(rest):
        raise ChannelIdError(f"a {kind.value} channel id is {kind.value}:<id>")
    if kind is ChannelKind.TALKGROUP and (rest.count(":") != 1 or not _SLUG.fullmatch(rest.split(":")[1])):
        raise ChannelIdError("a talkgroup id is talkgroup:<agency id>:<name>")
    return kind, rest


def talkgroup_id(agency_id: str, name: str) -> str:
    if not _SLUG.fullmatch(name):
        raise ChannelIdError("a talkgroup name is 1 to 40 lowercase letters, digits, '_' or '-'")
    channel_id = f"talkgroup:{agency_id}:{name}"
    parse_channel_id(channel_id)
    return channel_id


def direct_id(a: str, b: str) -> str:
    """The one channel between two members, whoever opens it."""
    first, second = sorted((a, b))
    return "direct:" + hashlib.sha256(f"{first}\n{second}".encode()).hexdigest()[:32]


def valid_member_key(key: str) -> bool:
    return isinstance(key, str) and len(key) <= 200 and _MEMBER.fullmatch(key) is not None


def member_key(who: Principal) -> str:
    """Who a principal is as a channel member: a unit's terminals share the unit's membership."""
    if who.role is Role.UNIT and who.unit:
        return f"unit:{who.unit}"
    return f"{who.kind}:{who.id}"


@dataclass(frozen=True, slots=True)
class Member:
    """What membership depends on, for one principal."""

    key: str
    role: Role
    agency: str | None = None
    unit: str | None = None
    unrestricted: bool = False

    @classmethod
    def of(cls, who: Principal, unit_agency: str | None = None) -> Member:
        """``unit_agency``: the agency the unit belongs to now (else the token's)."""
        agency = (unit_agency or who.agency) if who.role is Role.UNIT else who.agency
        return cls(member_key(who), who.role, agency, who.unit if who.role is Role.UNIT else None,
                   who.unrestricted)

    @property
    def messaging(self) -> bool:
        """Agencies' machines and sensors take no part in messaging."""
        return self.role not in (Role.AGENCY, Role.SENSOR) and (self.role is not Role.UNIT or self.unit is not None)

    @property
    def supervises(self) -> bool:
        return self.role in (Role.SUPERVISOR, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel and its audience. For incident channels ``agencies`` are the member agencies
    (home ∪ those of units actively assigned) and ``units`` the actively assigned units; for
    talkgroups the listed agencies and units; for direct channels ``members`` the two keys."""

    id: str
    kind: ChannelKind
    name: str = ""
    agency_id: str | None = None
    incident_id: str | None = None
    agencies: frozenset[str] = frozenset()
    units: frozenset[str] = frozenset()
    members: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        """The event-log subject of its messages: an incident's messages sit on the incident's timeline."""
        if self.kind is ChannelKind.INCIDENT:
            return f"incident/{self.incident_id}"
        return f"channel/{self.id}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "kind": self.kind.value, "name": self.name or self.id}
        if self.agency_id is not None:
            out["agency_id"] = self.agency_id
        if self.incident_id is not None:
            out["incident_id"] = self.incident_id
        if self.kind is ChannelKind.TALKGROUP:
            out["agencies"] = sorted(self.agencies)
            out["units"] = sorted(self.units)
        if self.kind is ChannelKind.DIRECT:
            out["members"] = list(self.members)
        return out


def incident_channel_id(incident_id: str) -> str:
    return f"{ChannelKind.INCIDENT.value}:{incident_id}"


def incident_channel(incident_id: str, home: Iterable[str], active: Iterable[tuple[str, str]]) -> Channel:
    """The channel of an incident whose home agencies are ``home`` and whose active assignments
    are ``(unit id, unit agency)`` pairs."""
    pairs = list(active)
    return Channel(incident_channel_id(incident_id), ChannelKind.INCIDENT, f"incident {incident_id}",
                   incident_id=incident_id, agencies=frozenset(home) | {a for _, a in pairs},
                   units=frozenset(u for u, _ in pairs))


def agency_channel(kind: ChannelKind, agency_id: str, agency_name: str = "") -> Channel:
    label = agency_name or agency_id
    name = f"{label}" if kind is ChannelKind.AGENCY else f"{label} broadcast"
    return Channel(f"{kind.value}:{agency_id}", kind, name, agency_id=agency_id)


def can_read(channel: Channel, member: Member) -> bool:
    if not member.messaging:
        return False
    kind = channel.kind
    if kind is ChannelKind.DIRECT:
        return member.key in channel.members
    if member.unrestricted:
        return True
    if member.role is Role.UNIT:
        if kind is ChannelKind.INCIDENT:
            return member.unit in channel.units
        if kind in (ChannelKind.AGENCY, ChannelKind.BROADCAST):
            return member.agency is not None and member.agency == channel.agency_id
        return member.unit in channel.units or (member.agency is not None and member.agency in channel.agencies)
    if member.agency is None:
        return False
    if kind is ChannelKind.INCIDENT:
        return member.agency in channel.agencies or EVERYONE in channel.agencies
    if kind in (ChannelKind.AGENCY, ChannelKind.BROADCAST):
        return member.agency == channel.agency_id
    return member.agency == channel.agency_id or member.agency in channel.agencies


def can_write(channel: Channel, member: Member) -> bool:
    """Members write, except on a broadcast channel, where only supervisors (and administrators) do."""
    if not can_read(channel, member):
        return False
    return channel.kind is not ChannelKind.BROADCAST or member.supervises


def can_manage(channel: Channel, member: Member) -> bool:
    """Who changes a talkgroup: supervisors of its agency, and administrators."""
    if channel.kind is not ChannelKind.TALKGROUP:
        return False
    return member.unrestricted or (member.role is Role.SUPERVISOR and member.agency == channel.agency_id)
