"""The incident, unit and assignment lifecycles as transition tables: the one authority on moves.

Each table maps a state to the triggers allowed in it and the state each trigger leads to, in
the manner of ``h11/_state.py``. ``decide`` asks a table before emitting any event, and
``docs/lifecycles.md`` is generated from these tables (``python -m dispatch.docs_gen``), so the
code, the checks and the documentation cannot drift apart. A trigger that maps a state to itself
is allowed there without changing it (adding a note, dispatching more units).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Generic, TypeVar

from dispatch.errors import IllegalTransition


class IncidentStatus(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    ACTIVE = "active"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class UnitStatus(StrEnum):
    AVAILABLE = "available"
    DISPATCHED = "dispatched"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    TRANSPORTING = "transporting"
    AT_HOSPITAL = "at_hospital"
    OUT_OF_SERVICE = "out_of_service"
    OFF_DUTY = "off_duty"


class AssignmentStatus(StrEnum):
    RECOMMENDED = "recommended"
    REQUESTED = "requested"
    DISPATCHED = "dispatched"
    ACKNOWLEDGED = "acknowledged"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    CLEARED = "cleared"
    DECLINED = "declined"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Lifecycle(Generic[S]):
    """One state machine: its states, its initial state and its transition table."""

    name: str
    initial: S
    table: Mapping[S, Mapping[str, S]]
    descriptions: Mapping[S, str]

    def __post_init__(self) -> None:
        states = set(type(self.initial))
        # Every state has a row and a description, and every target is a state: a typo in a
        # table must fail at import, not at three in the morning.
        if set(self.table) != states or set(self.descriptions) != states:
            raise ValueError(f"{self.name} lifecycle must list every state exactly once")
        for row in self.table.values():
            if not set(row.values()) <= states:
                raise ValueError(f"{self.name} lifecycle has a target outside its states")
        frozen = {s: MappingProxyType(dict(row)) for s, row in self.table.items()}
        object.__setattr__(self, "table", MappingProxyType(frozen))

    @property
    def states(self) -> tuple[S, ...]:
        return tuple(type(self.initial))

    @property
    def triggers(self) -> tuple[str, ...]:
        """All triggers, in order of first appearance in the table."""
        seen: dict[str, None] = {}
        for row in self.table.values():
            seen.update(dict.fromkeys(row))
        return tuple(seen)

    @property
    def terminal(self) -> frozenset[S]:
        """States with no way out but notes and other self-loops."""
        return frozenset(s for s, row in self.table.items() if all(t == s for t in row.values()))

    def allows(self, state: S, trigger: str) -> bool:
        return trigger in self.table[state]

    def next(self, state: S, trigger: str, *, command: str, subject: str = "") -> S:
        """The state ``trigger`` leads to from ``state``, or ``IllegalTransition``."""
        try:
            return self.table[state][trigger]
        except KeyError:
            raise IllegalTransition(
                machine=self.name,
                state=state.value,
                trigger=trigger.replace("_", " "),
                command=command,
                subject=subject,
            ) from None

    def move_to(
        self,
        state: S,
        target: S,
        *,
        command: str,
        subject: str = "",
        excluding: frozenset[str] = frozenset(),
    ) -> str:
        """The trigger that moves ``state`` to ``target``, for commands that name a target state
        rather than an action (a unit reporting a status), or ``IllegalTransition``."""
        for trigger, to in self.table[state].items():
            if to == target and trigger not in excluding:
                return trigger
        raise IllegalTransition(
            machine=self.name,
            state=state.value,
            trigger=f"change to {target.value}",
            command=command,
            subject=subject,
        )


def _stay(state: S, *triggers: str) -> dict[str, S]:
    return dict.fromkeys(triggers, state)


_I = IncidentStatus
# What a dispatcher may do to any open incident without moving it.
_OPEN_CHORES = ("update", "note", "link_alert", "raise_alarm", "escalate")

INCIDENT: Lifecycle[IncidentStatus] = Lifecycle(
    name="incident",
    initial=_I.PENDING,
    table={
        _I.PENDING: {
            **_stay(_I.PENDING, *_OPEN_CHORES),
            "dispatch": _I.DISPATCHED,
            "close": _I.CLOSED,
            "cancel": _I.CANCELLED,
        },
        _I.DISPATCHED: {
            **_stay(_I.DISPATCHED, *_OPEN_CHORES, "dispatch"),
            "arrive": _I.ACTIVE,
            # The last active assignment was declined, timed out or cancelled: back to the queue.
            "release": _I.PENDING,
            "close": _I.CLOSED,
            "cancel": _I.CANCELLED,
        },
        _I.ACTIVE: {
            # Once someone is on scene the incident is real: it is closed, never cancelled.
            **_stay(_I.ACTIVE, *_OPEN_CHORES, "dispatch", "arrive"),
            "close": _I.CLOSED,
        },
        # Notes stay possible after the end: reports and follow-ups are written then.
        _I.CLOSED: _stay(_I.CLOSED, "note"),
        _I.CANCELLED: _stay(_I.CANCELLED, "note"),
    },
    descriptions={
        _I.PENDING: "created, no unit dispatched (or every dispatched unit withdrew)",
        _I.DISPATCHED: "at least one unit dispatched, none on scene yet",
        _I.ACTIVE: "at least one unit has arrived on scene",
        _I.CLOSED: "handled and closed by a dispatcher",
        _I.CANCELLED: "withdrawn before anyone arrived (duplicate, false report)",
    },
)

_U = UnitStatus
UNIT: Lifecycle[UnitStatus] = Lifecycle(
    name="unit",
    initial=_U.AVAILABLE,
    table={
        _U.AVAILABLE: {
            "dispatch": _U.DISPATCHED,
            "go_out_of_service": _U.OUT_OF_SERVICE,
            "go_off_duty": _U.OFF_DUTY,
        },
        _U.DISPATCHED: {"respond": _U.EN_ROUTE, "arrive": _U.ON_SCENE, "clear": _U.AVAILABLE},
        _U.EN_ROUTE: {"arrive": _U.ON_SCENE, "clear": _U.AVAILABLE},
        _U.ON_SCENE: {"transport": _U.TRANSPORTING, "clear": _U.AVAILABLE},
        _U.TRANSPORTING: {"reach_hospital": _U.AT_HOSPITAL, "clear": _U.AVAILABLE},
        _U.AT_HOSPITAL: {"clear": _U.AVAILABLE},
        # A unit with an assignment cannot drop out of service: the assignment is cancelled
        # or cleared first, so no incident silently loses a unit.
        _U.OUT_OF_SERVICE: {"return_to_service": _U.AVAILABLE, "go_off_duty": _U.OFF_DUTY},
        _U.OFF_DUTY: {"go_on_duty": _U.AVAILABLE, "go_out_of_service": _U.OUT_OF_SERVICE},
    },
    descriptions={
        _U.AVAILABLE: "in service and free to take an assignment",
        _U.DISPATCHED: "assigned to an incident, not yet moving",
        _U.EN_ROUTE: "travelling to the incident",
        _U.ON_SCENE: "at the incident",
        _U.TRANSPORTING: "carrying a patient to hospital",
        _U.AT_HOSPITAL: "handing over a patient at hospital",
        _U.OUT_OF_SERVICE: "on duty but unable to respond (repair, restocking)",
        _U.OFF_DUTY: "not staffed",
    },
)

_A = AssignmentStatus
ASSIGNMENT: Lifecycle[AssignmentStatus] = Lifecycle(
    name="assignment",
    initial=_A.RECOMMENDED,
    table={
        _A.RECOMMENDED: {"dispatch": _A.DISPATCHED, "request": _A.REQUESTED, "cancel": _A.CANCELLED},
        # A partner agency's unit goes only when that agency says yes (mutual aid).
        _A.REQUESTED: {
            "accept": _A.DISPATCHED,
            "decline": _A.DECLINED,
            "time_out": _A.TIMED_OUT,
            "cancel": _A.CANCELLED,
        },
        _A.DISPATCHED: {
            "acknowledge": _A.ACKNOWLEDGED,
            "decline": _A.DECLINED,
            "time_out": _A.TIMED_OUT,
            # A unit that reports moving (or arriving) has evidently received the call.
            "respond": _A.EN_ROUTE,
            "arrive": _A.ON_SCENE,
            "cancel": _A.CANCELLED,
        },
        _A.ACKNOWLEDGED: {
            "respond": _A.EN_ROUTE,
            "arrive": _A.ON_SCENE,
            "decline": _A.DECLINED,
            "cancel": _A.CANCELLED,
        },
        _A.EN_ROUTE: {"arrive": _A.ON_SCENE, "cancel": _A.CANCELLED},
        _A.ON_SCENE: {"clear": _A.CLEARED},
        _A.CLEARED: {},
        _A.DECLINED: {},
        _A.TIMED_OUT: {},
        _A.CANCELLED: {},
    },
    descriptions={
        _A.RECOMMENDED: "proposed by the system (e.g. after a timeout), awaiting a dispatcher",
        _A.REQUESTED: "asked of a partner agency under mutual aid, awaiting its answer",
        _A.DISPATCHED: "sent to the unit, awaiting its acknowledgement",
        _A.ACKNOWLEDGED: "the unit confirmed it received the assignment",
        _A.EN_ROUTE: "the unit is travelling to the incident",
        _A.ON_SCENE: "the unit has arrived",
        _A.CLEARED: "the unit finished its work at the incident",
        _A.DECLINED: "the unit (or, for mutual aid, its agency) refused the assignment",
        _A.TIMED_OUT: "no acknowledgement (or mutual-aid answer) before the deadline",
        _A.CANCELLED: "withdrawn by a dispatcher or by closing the incident",
    },
)

MACHINES: tuple[Lifecycle[IncidentStatus], Lifecycle[UnitStatus], Lifecycle[AssignmentStatus]] = (
    INCIDENT,
    UNIT,
    ASSIGNMENT,
)

OPEN_INCIDENT: frozenset[IncidentStatus] = frozenset(INCIDENT.states) - INCIDENT.terminal
# An active assignment holds its unit; a recommended one does not reserve anything yet.
ACTIVE_ASSIGNMENT: frozenset[AssignmentStatus] = frozenset(
    {_A.DISPATCHED, _A.ACKNOWLEDGED, _A.EN_ROUTE, _A.ON_SCENE}
)
# Assignments that fill a plan requirement: active ones, and requests awaiting a partner's answer
# (recommending another unit for the same need meanwhile would ask twice).
FILLING_ASSIGNMENT: frozenset[AssignmentStatus] = ACTIVE_ASSIGNMENT | {_A.REQUESTED}
# Statuses in which a unit is still busy with a patient when its incident is closed.
UNIT_WITH_PATIENT: frozenset[UnitStatus] = frozenset({_U.TRANSPORTING, _U.AT_HOSPITAL})
