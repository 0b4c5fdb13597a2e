"""Correlation: attach a new alert to the open incident it belongs to, or say a new one is needed.

An alert joins an open incident when three things hold: the incident's type is one the alert's
kind may join (a smoke alert may join a structure fire, never a flood), the incident is within
the kind's radius, and its last alert (or its creation, when it has none) is within the kind's
time window of the alert. Among several such incidents the nearest wins (then the most recently
alerted, then the smallest id), so the answer is deterministic. More alerts on one incident
raise its priority by the escalation rules. Every answer carries a reason a dispatcher can read.

Distances are haversine metres. An alert measures only the incidents in the grid cells around it
(`geo.distance.PointGrid`, cells as tall as its kind's radius), so a city with thousands of open
incidents answers in microseconds; the nearest incident at any distance, named when an alert
opens a new one, is measured over all of them at once (`geo.distance.PointArrays`).
Settings ship in ``dispatch/alert_rules.toml`` and are documented in ``docs/intake.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, lru_cache
from types import MappingProxyType
from typing import Any, Literal, overload

from dispatch import _checks as check
from dispatch.alert_rules import AlertKind, AlertRules, default_alert_rules, shipped_settings
from dispatch.commands import Command, LinkAlert, UpdateIncident
from dispatch.errors import Invalid
from dispatch.incident import PRIORITY_HIGHEST, PRIORITY_LOWEST, Incident
from dispatch.response_plan import default_plans
from geo.coords import EARTH_RADIUS_M, Point
from geo.distance import FloatArray, PointArrays, PointGrid

MAX_RADIUS_M = 100_000.0
MAX_WINDOW_S = 7 * 86_400.0
MAX_ESCALATION_RULES = 100
_M_PER_DEG_LAT = EARTH_RADIUS_M * math.pi / 180.0
_MAX_FOUND = 4096  # places remembered per group of incident types
_MAX_ALERT_COUNT = 10_000_000
_MIN_CELL_LEVEL = -16  # cells of ~1.7 m: a radius of 0 still gets a grid of finite size


@dataclass(frozen=True, slots=True)
class Reach:
    """How far in space (metres) and time (seconds) an alert of one kind looks for its incident."""

    radius_m: float
    window_s: float

    def __post_init__(self) -> None:
        for name, hi in (("radius_m", MAX_RADIUS_M), ("window_s", MAX_WINDOW_S)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
                raise Invalid(f"{name} must be a number in 0..{hi:g}, got {value!r}", field=name)
            check.set_field(self, name, float(value))

    def describe(self) -> str:
        return _describe(self.radius_m, self.window_s)


@dataclass(frozen=True, slots=True)
class EscalationRule:
    """When an incident of one of ``incident_types`` reaches ``min_alerts`` linked alerts, raise
    its priority by ``raise_by`` (never past 1) and, if given, change its type."""

    incident_types: frozenset[str]
    min_alerts: int
    raise_by: int = 1
    change_type_to: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.incident_types, str) or not isinstance(self.incident_types, Iterable):
            raise Invalid("incident_types must be a list of incident types", field="incident_types")
        types = frozenset(check.slug(t, "incident_types") for t in self.incident_types)
        if not types:
            raise Invalid("incident_types must name at least one type", field="incident_types")
        check.set_field(self, "incident_types", types)
        check.integer(self.min_alerts, "min_alerts", lo=2, hi=10_000)
        check.integer(self.raise_by, "raise_by", lo=0, hi=PRIORITY_LOWEST - PRIORITY_HIGHEST)
        if self.change_type_to is not None:
            check.slug(self.change_type_to, "change_type_to")
        check.text(self.note, "note", max_len=300)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EscalationRule:
        known = {"incident_types", "min_alerts", "raise_by", "change_type_to", "note"}
        unknown = sorted(set(data) - known) if isinstance(data, Mapping) else ["(not an object)"]
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r} in an escalation rule", field=unknown[0])
        return cls(
            incident_types=data.get("incident_types", ()),
            min_alerts=data.get("min_alerts", 0),
            raise_by=data.get("raise_by", 1),
            change_type_to=data.get("change_type_to") or None,
            note=data.get("note", ""),
        )


@dataclass(frozen=True, slots=True)
class CorrelationPolicy:
    """Per-kind reach and compatibility, the fallback reach, and the escalation rules.

    ``compatible[kind]`` lists the incident types an alert of that kind may join; a kind not
    listed may join only the type its own alert rule opens (see `compatible_types`).
    """

    default: Reach = Reach(200.0, 900.0)
    reach: Mapping[AlertKind, Reach] = field(default_factory=dict)
    compatible: Mapping[AlertKind, frozenset[str]] = field(default_factory=dict)
    escalation: tuple[EscalationRule, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.default, Reach):
            raise Invalid("default must be a Reach", field="default")
        reach = {check.member(k, AlertKind, "reach"): v for k, v in self.reach.items()}
        if not all(isinstance(v, Reach) for v in reach.values()):
            raise Invalid("reach values must be Reach(radius_m, window_s)", field="reach")
        compatible = {
            check.member(k, AlertKind, "compatible"): frozenset(check.slug(t, "compatible") for t in v)
            for k, v in self.compatible.items()
        }
        check.set_field(self, "reach", MappingProxyType(reach))
        check.set_field(self, "compatible", MappingProxyType(compatible))
        check.set_field(
            self, "escalation",
            check.tuple_of(self.escalation, EscalationRule, "escalation", max_len=MAX_ESCALATION_RULES),
        )

    def reach_of(self, kind: AlertKind) -> Reach:
        return self.reach.get(kind, self.default)

    def compatible_types(self, kind: AlertKind, rules: AlertRules | None = None) -> frozenset[str]:
        """The incident types an alert of ``kind`` may join."""
        if kind in self.compatible:
            return self.compatible[kind]
        own = (rules or default_alert_rules()).decide(kind).incident_type
        return frozenset() if own is None else frozenset({own})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorrelationPolicy:
        """From the ``[correlation]`` table's shape (see ``dispatch/alert_rules.toml``)."""
        if not isinstance(data, Mapping):
            raise Invalid("correlation settings must be an object")
        unknown = sorted(set(data) - {"default", "kinds", "compatible", "escalation"})
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r} in correlation settings", field=unknown[0])
        default = _reach(data.get("default", {"radius_m": 200, "window_s": 900}), "default")
        kinds = data.get("kinds", {})
        compatible = data.get("compatible", {})
        escalation = data.get("escalation", [])
        if not isinstance(kinds, Mapping) or not isinstance(compatible, Mapping) or not isinstance(escalation, list):
            raise Invalid("kinds and compatible must be tables and escalation a list of tables")
        for name, types in compatible.items():
            if isinstance(types, str) or not isinstance(types, list):
                raise Invalid(f"compatible.{name} must be a list of incident types", field=f"compatible.{name}")
        return cls(
            default=default,
            reach={k: _reach(v, f"kinds.{k}") for k, v in kinds.items()},
            compatible={k: frozenset(v) for k, v in compatible.items()},
            escalation=tuple(EscalationRule.from_dict(e) for e in escalation),
        )

    def check_types(self, known: Iterable[str]) -> None:
        """Raise ``Invalid`` if a compatibility or escalation names an incident type not in ``known``."""
        known_set = frozenset(known)
        named = {t for types in self.compatible.values() for t in types}
        for rule in self.escalation:
            named |= rule.incident_types
            if rule.change_type_to is not None:
                named.add(rule.change_type_to)
        missing = sorted(named - known_set)
        if missing:
            raise Invalid(f"correlation settings name {missing[0]!r}, which has no response plan")


def _reach(data: object, where: str) -> Reach:
    if not isinstance(data, Mapping) or set(data) - {"radius_m", "window_s"}:
        raise Invalid(f"{where} must be {{radius_m, window_s}}", field=where)
    return Reach(data.get("radius_m", -1), data.get("window_s", -1))


@cache
def default_policy() -> CorrelationPolicy:
    """The correlation settings shipped in ``dispatch/alert_rules.toml``."""
    policy = CorrelationPolicy.from_dict(shipped_settings()["correlation"])
    policy.check_types(default_plans().incident_types)
    return policy


# --- the inputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What correlation needs of a new alert. ``priority`` is what its alert rule asked for."""

    alert_id: str
    kind: AlertKind
    location: Point
    at: datetime
    priority: int | None = None

    def __post_init__(self) -> None:
        check.ident(self.alert_id, "alert_id")
        check.set_field(self, "kind", check.member(self.kind, AlertKind, "kind"))
        check.point(self.location, "location")
        check.aware(self.at, "at")
        if self.priority is not None:
            check.integer(self.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)


@dataclass(frozen=True, slots=True)
class OpenIncident:
    """An open incident as correlation sees it (the live picture keeps these current)."""

    id: str
    incident_type: str
    location: Point
    created_at: datetime
    priority: int = 3
    alert_count: int = 0
    last_alert_at: datetime | None = None

    def __post_init__(self) -> None:
        check.ident(self.id, "id")
        check.slug(self.incident_type, "incident_type")
        check.point(self.location, "location")
        check.aware(self.created_at, "created_at")
        check.integer(self.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)
        check.integer(self.alert_count, "alert_count", lo=0, hi=_MAX_ALERT_COUNT)
        check.optional_aware(self.last_alert_at, "last_alert_at")

    @property
    def reference_time(self) -> datetime:
        """The time the window is measured from: the last alert, else the creation."""
        return self.last_alert_at if self.last_alert_at is not None else self.created_at

    @classmethod
    def from_incident(cls, incident: Incident, last_alert_at: datetime | None = None) -> OpenIncident:
        return cls(
            id=incident.id,
            incident_type=incident.incident_type,
            location=incident.location,
            created_at=incident.created_at,
            priority=incident.priority,
            alert_count=len(incident.alert_ids),
            last_alert_at=last_alert_at,
        )

    def after(self, outcome: Correlation, at: datetime) -> OpenIncident:
        """This incident once ``outcome`` (an attach to it) has been applied."""
        if outcome.action != "attach" or outcome.incident_id != self.id:
            raise Invalid(f"the correlation does not attach to incident {self.id!r}")
        incident_type = outcome.incident_type or self.incident_type
        if incident_type != self.incident_type:
            check.slug(incident_type, "incident_type")
        priority = self.priority if outcome.priority is None else check.integer(
            outcome.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)
        count = check.integer(self.alert_count + 1, "alert_count", lo=0, hi=_MAX_ALERT_COUNT)
        check.aware(at, "at")
        latest = at if self.last_alert_at is None or at > self.last_alert_at else self.last_alert_at
        # Only what changed is checked: nearly every alert of a storm makes one of these.
        return check.derived(OpenIncident, self.id, incident_type, self.location, self.created_at, priority, count,
                             latest)


class _Group:
    """The incidents of one set of types: their ids, with their places as arrays (to measure all
    of them) and as grids (to measure those near a point), each made when first asked."""

    __slots__ = ("_arrays", "_found", "_grids", "ids", "locations")

    def __init__(self, ids: tuple[str, ...], locations: list[Point]) -> None:
        self.ids, self.locations = ids, locations
        self._arrays: PointArrays | None = None
        self._grids: dict[int, PointGrid] = {}
        # What `within` found, by place and radius: a detector reports from one place again and
        # again, and the group's places do not change while it lives.
        self._found: dict[tuple[float, float, float], list[tuple[int, float]] | None] = {}

    @property
    def arrays(self) -> PointArrays:
        if self._arrays is None:
            self._arrays = PointArrays.of(self.locations)
        return self._arrays

    def within(self, point: Point, radius_m: float) -> list[tuple[int, float]] | None:
        """Members within ``radius_m`` of ``point`` from a grid whose cells are as tall as the
        radius (to the next power of two degrees, so few grids serve every kind's radius)."""
        key = (point.lat, point.lon, radius_m)
        if key in self._found:
            return self._found[key]
        if len(self._found) >= _MAX_FOUND:
            self._found.clear()
        found = self._found[key] = self._measure_near(point, radius_m)
        return found

    def _measure_near(self, point: Point, radius_m: float) -> list[tuple[int, float]] | None:
        level = max(_MIN_CELL_LEVEL, math.ceil(math.log2(max(radius_m, 1.0) / _M_PER_DEG_LAT)))
        grid = self._grids.get(level)
        if grid is None:
            grid = self._grids[level] = PointGrid(self.locations, 2.0 ** level)
        return grid.within(point, radius_m)


class OpenIncidents:
    """An immutable snapshot of open incidents, with their places indexed per set of incident
    types an alert may join (a grid to find those near an alert, arrays to measure them all).

    Build it once from the live picture and replace it as incidents change (`with_incident`,
    `without`). A change shares the incidents and most of the id index: changes since the last
    copy sit in a small index of their own over a shared base, which is merged into a new base
    once it holds `_MERGE_AFTER` incidents (so a batch of hundreds of alerts copies the index a
    few times, not once per alert). An attach that moves no incident and keeps its type keeps
    every place index (they hold ids, read back through the id index); anything else drops those
    of the types it touches, rebuilt when next asked. Alerts handled one after another (a batch)
    must see the incidents the earlier ones opened, so the caller adds each new incident before
    correlating the next alert (`correlate_all` does).
    """

    __slots__ = ("_base", "_groups", "_like", "_top")
    _MERGE_AFTER = 64

    def __init__(self, incidents: Iterable[OpenIncident] = (), *, like: OpenIncidents | None = None) -> None:
        """``like``: an earlier snapshot of mostly the same incidents (the previous batch's), whose
        place indexes are taken over, with what they have measured, wherever the same incidents
        of a set of types sit at the same places in the same order."""
        by_id: dict[str, OpenIncident] = {}
        for incident in incidents:
            if not isinstance(incident, OpenIncident):
                raise Invalid("open incidents must be OpenIncident values")
            if incident.id in by_id:
                raise Invalid(f"incident {incident.id!r} is listed twice")
            by_id[incident.id] = incident
        # Neither dict is changed once a snapshot holds it; snapshots derived from this one share them.
        self._base: dict[str, OpenIncident] = by_id
        self._top: dict[str, OpenIncident] = {}
        self._groups: dict[tuple[str, ...], _Group] = {}  # built on first use, by sorted types
        self._like: dict[tuple[str, ...], _Group] = {} if like is None else {**like._like, **like._groups}

    def _all(self) -> dict[str, OpenIncident]:
        return {**self._base, **self._top} if self._top else self._base

    def __len__(self) -> int:
        top = self._top
        return len(self._base) + sum(1 for k in top if k not in self._base) if top else len(self._base)

    def __iter__(self) -> Iterator[OpenIncident]:
        return iter(self._all().values())

    def get(self, incident_id: str) -> OpenIncident | None:
        found = self._top.get(incident_id)
        return found if found is not None else self._base.get(incident_id)

    def _derived(self, base: dict[str, OpenIncident], top: dict[str, OpenIncident],
                 touched: frozenset[str]) -> OpenIncidents:
        out = OpenIncidents.__new__(OpenIncidents)
        if len(top) >= self._MERGE_AFTER:
            base, top = {**base, **top}, {}
        out._base, out._top = base, top
        # An attach (nothing touched) shares the place indexes themselves: a group made later by
        # either snapshot holds the same incidents at the same places, valid for both.
        out._groups = self._groups if not touched else {k: g for k, g in self._groups.items() if touched.isdisjoint(k)}
        out._like = self._like
        return out

    def with_incident(self, incident: OpenIncident) -> OpenIncidents:
        """A snapshot with ``incident`` added, or replacing the one with its id."""
        if not isinstance(incident, OpenIncident):
            raise Invalid("open incidents must be OpenIncident values")
        old = self.get(incident.id)
        if old is not None and old.incident_type == incident.incident_type and old.location == incident.location:
            touched: frozenset[str] = frozenset()  # an attach: same type, same place
        elif old is not None:
            touched = frozenset((old.incident_type, incident.incident_type))
        else:
            touched = frozenset((incident.incident_type,))
        return self._derived(self._base, {**self._top, incident.id: incident}, touched)

    def without(self, incident_id: str) -> OpenIncidents:
        """A snapshot without the incident (closed or cancelled); unknown ids change nothing."""
        old = self.get(incident_id)
        if old is None:
            return self
        return self._derived({k: v for k, v in self._all().items() if k != incident_id}, {},
                             frozenset((old.incident_type,)))

    def _group(self, types: tuple[str, ...]) -> _Group | None:
        group = self._groups.get(types)
        if group is None:
            wanted = set(types)
            # In type order, each type's incidents in snapshot order.
            members = sorted((i for i in self if i.incident_type in wanted),
                             key=lambda i: i.incident_type)
            if not members:
                return None
            ids, locations = tuple(i.id for i in members), [i.location for i in members]
            like = self._like.get(types)
            group = self._groups[types] = (like if like is not None and like.ids == ids and like.locations == locations
                                           else _Group(ids, locations))
        return group

    def measure(self, point: Point, types: Iterable[str]) -> list[tuple[Sequence[OpenIncident], FloatArray]]:
        """The incidents of ``types`` (by type name, then snapshot order) with their distances from
        ``point`` (metres), as one group (none when there are no such incidents)."""
        group = self._group(_types_key(types))
        if group is None:
            return []
        return [(_Members(group.ids, self), group.arrays.haversine_m(point))]

    def near(self, point: Point, types: Iterable[str], radius_m: float) -> list[tuple[OpenIncident, float]]:
        """Incidents of ``types`` within ``radius_m`` of ``point``, with their distances (metres),
        in the order `measure` lists them."""
        group = self._group(_types_key(types))
        if group is None:
            return []
        found = group.within(point, radius_m)
        if found is None:  # too wide a box for the grid: measure every member
            return _within([(_Members(group.ids, self), group.arrays.haversine_m(point))], radius_m)
        # `_member` inline: a detector's alert has a dozen incidents of its types within reach.
        ids, top, base = group.ids, self._top, self._base
        if not top:
            return [(base[ids[k]], d) for k, d in found]
        get = top.get
        return [(get(i) or base[i], d) for k, d in found for i in (ids[k],)]

    def _member(self, incident_id: str) -> OpenIncident:
        """An incident a place index names (it is in the snapshot: the index was built from it)."""
        found = self._top.get(incident_id)
        return found if found is not None else self._base[incident_id]

    def nearest(self, point: Point, types: Iterable[str]) -> tuple[OpenIncident, float] | None:
        """The nearest incident of ``types`` at any distance."""
        return _nearest(self.measure(point, types))


def _types_key(types: Iterable[str]) -> tuple[str, ...]:
    """The key of a set of incident types' group: the types sorted, once per set of a policy's."""
    return _sorted_types(types) if isinstance(types, frozenset) else tuple(sorted(set(types)))


@lru_cache(maxsize=256)
def _sorted_types(types: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(types))


class _Members(Sequence[OpenIncident]):
    """A group's incidents, looked up by id only when asked (most alerts look at a few)."""

    __slots__ = ("_ids", "_snapshot")

    def __init__(self, ids: tuple[str, ...], snapshot: OpenIncidents) -> None:
        self._ids, self._snapshot = ids, snapshot

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, i: int) -> OpenIncident: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[OpenIncident]: ...

    def __getitem__(self, i: int | slice) -> OpenIncident | Sequence[OpenIncident]:
        if isinstance(i, slice):
            return tuple(self._snapshot._member(x) for x in self._ids[i])
        return self._snapshot._member(self._ids[i])


def _within(
    measured: Sequence[tuple[Sequence[OpenIncident], FloatArray]], radius_m: float
) -> list[tuple[OpenIncident, float]]:
    out = []
    for incidents, d in measured:
        for i in (d <= radius_m).nonzero()[0].tolist():
            out.append((incidents[i], float(d[i])))
    return out


def _nearest(measured: Sequence[tuple[Sequence[OpenIncident], FloatArray]]) -> tuple[OpenIncident, float] | None:
    best: tuple[OpenIncident, float] | None = None
    for incidents, d in measured:
        i = int(d.argmin())
        if best is None or float(d[i]) < best[1]:
            best = (incidents[i], float(d[i]))
    return best


# --- the answer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Correlation:
    """The decision for one alert.

    ``attach``: link the alert to ``incident_id``; ``priority`` and ``incident_type`` are the
    incident's values after this alert (changed when ``changed`` is true). ``create``: open a new
    incident (its type and priority come from the alert rules). ``reason`` explains either.
    """

    action: Literal["attach", "create"]
    alert_id: str
    reason: str
    incident_id: str | None = None
    distance_m: float | None = None
    priority: int | None = None
    previous_priority: int | None = None
    incident_type: str | None = None
    previous_incident_type: str | None = None

    @property
    def changed(self) -> bool:
        return self.action == "attach" and (
            self.priority != self.previous_priority or self.incident_type != self.previous_incident_type
        )

    def commands(self) -> list[Command]:
        """The dispatch commands that carry out an attach (link, then any priority or type change).

        A create needs an incident id and number from the store, so the caller builds its
        ``CreateIncident`` itself (with ``alert_ids=(alert_id,)``).
        """
        if self.action != "attach" or self.incident_id is None:
            return []
        out: list[Command] = [LinkAlert(incident_id=self.incident_id, alert_id=self.alert_id)]
        if self.changed:
            out.append(
                UpdateIncident(
                    incident_id=self.incident_id,
                    priority=self.priority if self.priority != self.previous_priority else None,
                    incident_type=(
                        self.incident_type if self.incident_type != self.previous_incident_type else None
                    ),
                )
            )
        return out


def correlate(
    alert: AlertFacts,
    incidents: OpenIncidents | Iterable[OpenIncident],
    policy: CorrelationPolicy | None = None,
    rules: AlertRules | None = None,
) -> Correlation:
    """Attach ``alert`` to the best matching open incident, or answer that a new one is needed.

    ``rules`` (the alert rules, defaults if None) name the type a kind joins when ``policy``
    lists no compatibility for it.
    """
    policy = policy or default_policy()
    snapshot = incidents if isinstance(incidents, OpenIncidents) else OpenIncidents(incidents)
    types = policy.compatible_types(alert.kind, rules)
    reach = policy.reach_of(alert.kind)
    if not types:  # (a StrEnum member formats as its value)
        return Correlation("create", alert.alert_id, f"{alert.kind} alerts join no incident type; a new incident")

    # Nearest first; then the most recently alerted; then the id, so ties are stable. The window
    # is checked as a span of reference times, so a candidate out of time costs two comparisons
    # (a detector's alert often has a dozen incidents of its type within reach).
    window = _window(reach.window_s)
    at = alert.at
    earliest, latest = at - window, at + window
    best: OpenIncident | None = None
    best_distance, best_ref, matched = 0.0, at, 0
    for incident, distance in snapshot.near(alert.location, types, reach.radius_m):
        ref = incident.last_alert_at if incident.last_alert_at is not None else incident.created_at
        if not earliest <= ref <= latest:
            continue
        matched += 1
        if best is None or distance < best_distance or (distance == best_distance and (
                ref > best_ref or (ref == best_ref and incident.id < best.id))):
            best, best_distance, best_ref = incident, distance, ref
    if best is None:
        nearest = snapshot.nearest(alert.location, types)
        return Correlation("create", alert.alert_id, _miss_reason(alert, nearest, types, reach))

    gap = abs((at - best_ref).total_seconds())
    return _attach(alert, best, best_distance, gap, matched, reach, policy)


def _attach(
    alert: AlertFacts,
    incident: OpenIncident,
    distance: float,
    gap: float,
    n_matches: int,
    reach: Reach,
    policy: CorrelationPolicy,
) -> Correlation:
    count = incident.alert_count + 1
    raise_by = 0
    new_type = incident.incident_type
    why: list[str] = []
    for rule in policy.escalation:
        # Fires once, on the alert that reaches the threshold, so later alerts do not keep
        # pushing the priority up (and a dispatcher's own change is not fought).
        if incident.incident_type in rule.incident_types and incident.alert_count < rule.min_alerts <= count:
            raise_by += rule.raise_by
            if rule.change_type_to is not None and new_type == incident.incident_type:
                new_type = rule.change_type_to
            note = f" ({rule.note})" if rule.note else ""
            why.append(f"{count} alerts reach {rule.min_alerts}{note}")
    priority = max(PRIORITY_HIGHEST, incident.priority - raise_by)
    if alert.priority is not None and alert.priority < priority:
        priority = alert.priority
        why.append(f"the alert itself asks for priority {alert.priority}")

    reason = (
        f"{alert.kind} alert {_metres(distance)} from incident {incident.id} ({incident.incident_type}), "
        f"{_duration(gap)} from its last alert, within {reach.describe()}"
    )
    if n_matches > 1:
        reason += f"; nearest of {n_matches} matching incidents"
    changes = []
    if priority != incident.priority:
        changes.append(f"priority {incident.priority} → {priority}")
    if new_type != incident.incident_type:
        changes.append(f"type {incident.incident_type} → {new_type}")
    if changes:
        reason += f"; {', '.join(changes)}: {'; '.join(why)}"
    # Every value is the policy's or a checked incident's; an attach is made for most alerts of a storm.
    return check.derived(Correlation, "attach", alert.alert_id, reason, incident.id, distance, priority,
                         incident.priority, new_type, incident.incident_type)


def _miss_reason(
    alert: AlertFacts, nearest: tuple[OpenIncident, float] | None, types: frozenset[str], reach: Reach
) -> str:
    names = "/".join(sorted(types))
    reason = f"no open {names} incident within {reach.describe()} of this {alert.kind} alert; a new incident"
    if nearest is not None:
        incident, distance = nearest
        gap = abs((alert.at - incident.reference_time).total_seconds())
        reason += f" (nearest: {incident.id} at {_metres(distance)}, {_duration(gap)} from its last alert)"
    return reason


def _metres(m: float) -> str:
    return f"{m:.0f} m" if m < 10_000 else f"{m / 1000:.1f} km"


@lru_cache(maxsize=256)
def _describe(radius_m: float, window_s: float) -> str:
    """A reach in words, written once per reach (every attach's reason names it)."""
    return f"{_metres(radius_m)} / {_duration(window_s)}"


@lru_cache(maxsize=256)
def _window(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def correlate_all(
    alerts: Sequence[AlertFacts],
    incidents: OpenIncidents | Iterable[OpenIncident],
    new_incident: Callable[[AlertFacts], OpenIncident | None],
    policy: CorrelationPolicy | None = None,
    rules: AlertRules | None = None,
) -> tuple[list[Correlation], OpenIncidents]:
    """Correlate ``alerts`` in order, each seeing the incidents the ones before it opened.

    ``new_incident(alert) -> OpenIncident | None`` is called for each ``create`` to make the
    incident the caller will open (None: the caller opens none, e.g. the rules record only).
    Returns the decisions and the snapshot after them. A batch of five detectors in one
    building thus yields one create and four attaches.
    """
    snapshot = incidents if isinstance(incidents, OpenIncidents) else OpenIncidents(incidents)
    out = []
    for alert in alerts:
        outcome = correlate(alert, snapshot, policy, rules)
        if outcome.action == "attach" and outcome.incident_id is not None:
            current = snapshot.get(outcome.incident_id)
            if current is not None:
                snapshot = snapshot.with_incident(current.after(outcome, alert.at))
        else:
            made = new_incident(alert)
            if made is not None:
                snapshot = snapshot.with_incident(made)
        out.append(outcome)
    return out, snapshot



def policy_markdown(policy: CorrelationPolicy, rules: AlertRules | None = None) -> str:
    """The correlation settings as Markdown tables, as ``docs/intake.md`` shows them."""
    lines = [
        "| Alert kind | Radius | Time window | Joins open incidents of type |",
        "| --- | --- | --- | --- |",
    ]
    for kind in AlertKind:
        reach = policy.reach_of(kind)
        types = ", ".join(sorted(policy.compatible_types(kind, rules))) or "(none: opens no incident)"
        lines.append(f"| {kind.value} | {_metres(reach.radius_m)} | {_duration(reach.window_s)} | {types} |")
    lines += [
        "",
        "| Incident types | At linked alerts | Priority | Type becomes | Why |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in policy.escalation:
        lines.append(
            f"| {', '.join(sorted(rule.incident_types))} | {rule.min_alerts} | +{rule.raise_by} (at most 1) | "
            f"{rule.change_type_to or '(unchanged)'} | {rule.note} |"
        )
    return "\n".join(lines) + "\n"
