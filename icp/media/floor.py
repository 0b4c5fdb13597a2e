"""Floor control for push-to-talk talkgroups (radio / 3GPP MCPTT style), pure and synchronous.

One speaker at a time. A request for a free floor is granted; for a taken floor it pre-empts the
holder when it ranks higher (a dispatcher over a unit, an emergency call over everyone), and is
otherwise queued — or denied when queueing is off or the queue is full. When the holder releases
(or leaves, or runs past the maximum talk time) the floor passes to the best waiting request:
highest rank first, then first come. Time is passed in; every call returns the effects to carry
out (grant, deny, queue, revoke, announce the speaker), in order.

The moves are a transition table (``TABLE``): the floor's state and what happened give the
action; the action's outcome decides the next state (taken again when someone was waiting).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from types import MappingProxyType


class Rank(IntEnum):
    """Who outranks whom on the floor."""

    MEMBER = 1      # field units and other members
    DISPATCHER = 2  # dispatchers and supervisors pre-empt members
    EMERGENCY = 3   # an emergency call pre-empts everyone, and nobody pre-empts it


class FloorState(StrEnum):
    IDLE = "idle"
    TAKEN = "taken"


class Trigger(StrEnum):
    REQUEST = "request"            # someone asks for the floor
    RELEASE = "release"            # someone lets go (or withdraws a waiting request)
    LEAVE = "leave"                # a member leaves the talkgroup (or its connection drops)
    TICK = "tick"                  # time passes: the holder may have talked too long


# (state, trigger) → action. Missing pairs are no-ops (a release of a free floor changes nothing).
TABLE = MappingProxyType({
    FloorState.IDLE: MappingProxyType({Trigger.REQUEST: "grant"}),
    FloorState.TAKEN: MappingProxyType({
        Trigger.REQUEST: "arbitrate",  # the holder again, pre-empt, queue or deny
        Trigger.RELEASE: "let_go",     # the holder: pass on; a waiting member: withdraw
        Trigger.LEAVE: "let_go",
        Trigger.TICK: "expire",        # past the talk time: revoke and pass on
    }),
})


@dataclass(frozen=True, slots=True)
class Request:
    member: str
    rank: Rank
    at: datetime


@dataclass(frozen=True, slots=True)
class Granted:
    member: str
    rank: Rank
    until: datetime  # the talk-time limit


@dataclass(frozen=True, slots=True)
class Denied:
    member: str
    reason: str


@dataclass(frozen=True, slots=True)
class Queued:
    member: str
    position: int  # 1 = next


@dataclass(frozen=True, slots=True)
class Revoked:
    member: str
    reason: str
    by: str | None = None  # who pre-empted, if anyone


@dataclass(frozen=True, slots=True)
class Speaker:
    """Tell every member who speaks now (None: nobody)."""

    member: str | None
    rank: Rank | None = None


Effect = Granted | Denied | Queued | Revoked | Speaker


@dataclass(frozen=True, slots=True)
class FloorPolicy:
    max_talk_s: float = 30.0
    emergency_max_talk_s: float = 120.0
    queue: bool = True
    max_queue: int = 16

    def limit(self, rank: Rank, now: datetime) -> datetime:
        seconds = self.emergency_max_talk_s if rank is Rank.EMERGENCY else self.max_talk_s
        return now + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Floor:
    """A talkgroup's floor. Immutable: every step returns the next floor and its effects."""

    policy: FloorPolicy = field(default_factory=FloorPolicy)
    holder: Request | None = None
    until: datetime | None = None
    waiting: tuple[Request, ...] = ()

    @property
    def state(self) -> FloorState:
        return FloorState.TAKEN if self.holder is not None else FloorState.IDLE

    # -- the steps -------------------------------------------------------------------------------
    def request(self, member: str, rank: Rank, now: datetime) -> tuple[Floor, list[Effect]]:
        return self._step(Trigger.REQUEST, Request(member, rank, now), now)

    def release(self, member: str, now: datetime) -> tuple[Floor, list[Effect]]:
        return self._step(Trigger.RELEASE, Request(member, Rank.MEMBER, now), now)

    def leave(self, member: str, now: datetime) -> tuple[Floor, list[Effect]]:
        return self._step(Trigger.LEAVE, Request(member, Rank.MEMBER, now), now)

    def tick(self, now: datetime) -> tuple[Floor, list[Effect]]:
        return self._step(Trigger.TICK, None, now)

    def _step(self, trigger: Trigger, req: Request | None, now: datetime) -> tuple[Floor, list[Effect]]:
        action = TABLE[self.state].get(trigger)
        if action is None:
            if trigger is Trigger.RELEASE or trigger is Trigger.LEAVE:
                return self._withdraw(req.member if req else "")  # maybe a waiting request
            return self, []
        handler = getattr(self, f"_{action}")
        floor, effects = handler(req, now)
        assert isinstance(floor, Floor)
        return floor, effects

    # -- the actions -----------------------------------------------------------------------------
    def _grant(self, req: Request, now: datetime) -> tuple[Floor, list[Effect]]:
        until = self.policy.limit(req.rank, now)
        floor = replace(self, holder=req, until=until, waiting=tuple(w for w in self.waiting if w.member != req.member))
        return floor, [Granted(req.member, req.rank, until), Speaker(req.member, req.rank)]

    def _arbitrate(self, req: Request, now: datetime) -> tuple[Floor, list[Effect]]:
        holder = self.holder
        assert holder is not None
        if req.member == holder.member:  # asking again (or raising the rank to emergency)
            if req.rank > holder.rank:
                return self._grant(req, now)
            assert self.until is not None
            return self, [Granted(holder.member, holder.rank, self.until)]
        if req.rank > holder.rank:
            floor, effects = replace(self, holder=None, until=None)._grant(req, now)
            # The pre-empted speaker waits to speak again, ahead of its rank's newer requests.
            floor = replace(floor, waiting=(*floor.waiting, Request(holder.member, holder.rank, holder.at)))
            return floor, [Revoked(holder.member, f"pre-empted by a {req.rank.name.lower()} request",
                                   by=req.member), *effects]
        if not self.policy.queue:
            return self, [Denied(req.member, f"{holder.member} has the floor")]
        if any(w.member == req.member for w in self.waiting):
            return self, [Queued(req.member, self._position(req.member))]
        if len(self.waiting) >= self.policy.max_queue:
            return self, [Denied(req.member, "the queue for the floor is full")]
        floor = replace(self, waiting=(*self.waiting, req))
        return floor, [Queued(req.member, floor._position(req.member))]

    def _let_go(self, req: Request, now: datetime) -> tuple[Floor, list[Effect]]:
        assert self.holder is not None
        if req.member != self.holder.member:
            return self._withdraw(req.member)
        return replace(self, holder=None, until=None)._pass_on(now)

    def _expire(self, req: Request | None, now: datetime) -> tuple[Floor, list[Effect]]:
        assert self.holder is not None and self.until is not None
        if now < self.until:
            return self, []
        member = self.holder.member
        floor, effects = replace(self, holder=None, until=None)._pass_on(now)
        return floor, [Revoked(member, "maximum talk time reached"), *effects]

    def _pass_on(self, now: datetime) -> tuple[Floor, list[Effect]]:
        if not self.waiting:
            return self, [Speaker(None)]
        best = self._ordered()[0]
        return self._grant(Request(best.member, best.rank, best.at), now)

    def _withdraw(self, member: str) -> tuple[Floor, list[Effect]]:
        if not any(w.member == member for w in self.waiting):
            return self, []
        return replace(self, waiting=tuple(w for w in self.waiting if w.member != member)), []

    # -- queue order -----------------------------------------------------------------------------
    def _ordered(self) -> list[Request]:
        return sorted(self.waiting, key=lambda w: (-w.rank, w.at))

    def _position(self, member: str) -> int:
        return next(i for i, w in enumerate(self._ordered(), start=1) if w.member == member)
