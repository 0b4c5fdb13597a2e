"""Recommendation: fill a response plan with the units that get there fastest, and say why.

The rules, in the order they apply:

1. **Candidates** are units that are available, not excluded, have at least one required
   capability, and belong to an agency that may serve the incident: a *home* agency (one whose
   jurisdiction contains the incident, given by the caller) or a *mutual-aid partner* of a home
   agency for the capabilities its terms lend. When no jurisdiction contains the incident every
   agency counts as home.
2. **Origin**: a unit's last position if it is at most ``max_position_age_s`` old, otherwise
   (or without any position) its home station, and the pick says so. A stale position is used
   only when the unit has no station.
3. **One travel query** for all candidates (distinct origins only), bounded by ``search_s``
   (twice ``max_travel_s`` by default) so a shortfall can name the nearest unit beyond the limit.
   Only units within ``max_travel_s`` are picked.
4. **Ranking** within a requirement: by effective ETA, where a mutual-aid unit's ETA counts
   ``margin_s`` more (so it wins only when faster by more than the margin), then home before
   mutual aid, then unit id. A home agency that cannot fill a requirement is simply outranked
   by nobody, so partners fill it whatever the margin.
5. **One unit, one requirement**, matched as a whole: as many requirement slots as possible are
   filled; among such fillings, those giving every requirement at least one unit before any gets
   a second (two engines and no ladder is worse than an engine and a ladder); and among those,
   the one with the least total effective ETA (a min-cost assignment, computed by successive
   shortest paths over the handful of requirement nodes). So a quint (ENGINE + LADDER) goes
   where it saves the most time, usually the scarce LADDER, and no unpicked unit could take a
   pick's place in the same requirement and arrive sooner. When a nearer unit was used for
   another requirement, the pick's reason says so.
6. Units already working the incident fill requirements first (the capability they were
   dispatched for, else the first open requirement they can fill, in plan order).

The result is deterministic for the same inputs, whatever the order of ``units``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dispatch import _checks as check
from dispatch import codec
from dispatch.agency import Agency, Station
from dispatch.capability import Capability
from dispatch.errors import Conflict, NotFound
from dispatch.lifecycle import FILLING_ASSIGNMENT, OPEN_INCIDENT, AssignmentStatus, UnitStatus
from dispatch.response_plan import Requirement, ResponsePlans, merge
from dispatch.state import DispatchState
from dispatch.unit import Unit
from geo.coords import Point
from geo.eta import Method, TravelTimer

_NAMED = 3  # units named in one shortfall reason before "and N more"


@dataclass(frozen=True, slots=True)
class RecommendOptions:
    max_travel_s: float = 720.0
    search_s: float | None = None
    max_position_age_s: float = 300.0

    def __post_init__(self) -> None:
        check.set_field(self, "max_travel_s", check.seconds(self.max_travel_s, "max_travel_s", lo=1))
        if self.search_s is not None:
            search = check.seconds(self.search_s, "search_s", lo=self.max_travel_s)
            check.set_field(self, "search_s", search)
        age = check.seconds(self.max_position_age_s, "max_position_age_s")
        check.set_field(self, "max_position_age_s", age)

    @property
    def search_bound_s(self) -> float:
        return self.search_s if self.search_s is not None else 2 * self.max_travel_s


@dataclass(frozen=True, slots=True)
class Pick:
    """One unit chosen for one requirement. ``eta_s`` is None for a unit already assigned."""

    capability: Capability
    unit_id: str
    call_sign: str
    agency_id: str
    agency_name: str
    eta_s: float | None
    distance_m: float | None
    method: Method | None
    from_station: bool
    mutual_aid: bool
    already_assigned: bool
    reason: str

    @property
    def straight_line(self) -> bool:
        return self.method == "straight_line"

    def to_dict(self) -> dict[str, Any]:
        return {**codec.encode_fields(self), "straight_line": self.straight_line}


@dataclass(frozen=True, slots=True)
class Shortfall:
    """``missing`` units of ``capability`` could not be found, and why."""

    capability: Capability
    missing: int
    reason: str
    nearest_unit_id: str | None = None
    nearest_eta_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return codec.encode_fields(self)


@dataclass(frozen=True, slots=True)
class Recommendation:
    requirements: tuple[Requirement, ...]
    picks: tuple[Pick, ...]
    shortfalls: tuple[Shortfall, ...]

    @property
    def complete(self) -> bool:
        return not self.shortfalls

    @property
    def new_picks(self) -> tuple[Pick, ...]:
        """The picks still to dispatch (not already working the incident)."""
        return tuple(p for p in self.picks if not p.already_assigned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirements": [codec.encode_fields(r) for r in self.requirements],
            "picks": [p.to_dict() for p in self.picks],
            "shortfalls": [s.to_dict() for s in self.shortfalls],
            "complete": self.complete,
        }


def format_duration(seconds: float) -> str:
    """``45 s``, ``4 min 10 s``, ``12 min``, ``1 h 5 min``: how dispatchers say it."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class _Candidate:
    """A unit being considered (internal and mutable: built once per call, never shared)."""

    __slots__ = (
        "caps", "distance", "eta", "from_station", "margins", "method", "note", "origin",
        "pickable", "slot", "unit",
    )

    def __init__(self, unit: Unit, caps: list[Capability], margins: Mapping[Capability, float | None],
                 origin: Point, from_station: bool, note: str) -> None:
        self.unit = unit
        self.caps = caps  # required capabilities it may fill, in plan order
        self.margins = margins  # None: home agency; a number: mutual aid with that margin
        self.origin = origin
        self.from_station = from_station
        self.note = note  # how its origin was chosen, when that is worth saying
        self.eta: float = 0.0
        self.distance: float | None = None
        self.method: Method = "road"
        self.pickable = False
        self.slot = 0  # index of its origin in the travel query

    def cost(self, cap: Capability) -> float:
        """Effective ETA for ``cap``: a mutual-aid unit carries its margin."""
        return self.eta + (self.margins[cap] or 0.0)

    def key(self, cap: Capability) -> tuple[float, int, str]:
        """Rank within a requirement: effective ETA, then home before partner, then id."""
        return (self.cost(cap), 0 if self.margins[cap] is None else 1, self.unit.id)


# A requirement's candidates, sorted by rank: (key, candidate).
_Pool = list[tuple[tuple[float, int, str], _Candidate]]


def recommend(
    *,
    target: Point,
    requirements: Sequence[Requirement],
    units: Iterable[Unit],
    agencies: Mapping[str, Agency],
    stations: Mapping[str, Station],
    home_agency_ids: Collection[str],
    timer: TravelTimer,
    now: datetime,
    options: RecommendOptions | None = None,
    assigned: Mapping[str, Capability | None] | None = None,
    exclude: Collection[str] = (),
) -> Recommendation:
    """Rank ``units`` for ``requirements`` at ``target`` (see the module docstring for the rules).

    ``assigned`` maps units already working the incident to the capability they were sent for
    (None if unknown); ``exclude`` names units never to pick (e.g. those that declined).
    """
    check.aware(now, "now")
    opts = options or RecommendOptions()
    reqs = merge(requirements)
    order = {r.capability: i for i, r in enumerate(reqs)}
    remaining = {r.capability: r.count for r in reqs}
    assigned = assigned or {}
    home = frozenset(home_agency_ids)
    access = _access(home, agencies, frozenset(order))
    cutoff = now - timedelta(seconds=opts.max_position_age_s)
    excluded = frozenset(exclude)

    candidates: list[_Candidate] = []
    already: list[Unit] = []
    idle: dict[Capability, list[Unit]] = {}  # capable units that cannot go, for shortfall reasons
    for unit in units:
        if unit.id in assigned:
            already.append(unit)
            continue
        if unit.capabilities.isdisjoint(order):
            continue
        margins = access.get(unit.agency_id) if home else access[""]
        if margins is None:
            continue
        caps = [cap for cap in order if cap in unit.capabilities and cap in margins]
        if not caps:
            continue
        if unit.status is not UnitStatus.AVAILABLE or unit.id in excluded:
            for cap in caps:
                idle.setdefault(cap, []).append(unit)
            continue
        located = _origin(unit, stations, cutoff, now)
        if located is None:
            for cap in caps:
                idle.setdefault(cap, []).append(unit)
            continue
        candidates.append(_Candidate(unit, caps, margins, *located))

    # One travel query; units sharing a station share an origin.
    slot: dict[Point, int] = {}
    for cand in candidates:
        cand.slot = slot.setdefault(cand.origin, len(slot))
    estimates = timer.one_to_many(target, list(slot), opts.search_bound_s) if slot else []
    if len(estimates) != len(slot):
        raise ValueError("the travel timer returned a different number of estimates than origins")

    pools: dict[Capability, _Pool] = {c: [] for c in order}
    beyond_search: dict[Capability, list[_Candidate]] = {c: [] for c in order}
    for cand in candidates:
        est = estimates[cand.slot]
        cand.method, cand.distance = est.method, est.distance_m
        if not est.in_range or est.eta_s is None:
            for cap in cand.caps:
                beyond_search[cap].append(cand)
            continue
        cand.eta = est.eta_s
        cand.pickable = est.eta_s <= opts.max_travel_s
        for cap in cand.caps:
            pools[cap].append((cand.key(cap), cand))
    for pool in pools.values():
        pool.sort(key=lambda item: item[0])

    picks: list[tuple[int, Pick]] = []
    # Units already on the incident count first.
    for unit in sorted(already, key=lambda u: u.id):
        fills = _already_fills(unit, assigned[unit.id], remaining, order)
        if fills is None:
            continue
        remaining[fills] -= 1
        picks.append((order[fills], _assigned_pick(unit, fills, agencies)))

    taken = _match(pools, remaining, order)
    for cand, cap in _picked(taken, candidates):
        why = _tag(cand, cap, pools[cap], taken, home, agencies, opts)
        why += _nearer(cand, cap, pools[cap], taken)
        picks.append((order[cap], _pick(cand, cap, agencies, why)))

    shortfalls = [
        _shortfall(r, remaining[r.capability], pools[r.capability], beyond_search[r.capability],
                   idle.get(r.capability, []), taken, agencies, opts, excluded)
        for r in reqs
        if remaining[r.capability] > 0
    ]
    picks.sort(key=lambda item: (item[0], not item[1].already_assigned, item[1].eta_s or 0.0,
                                 item[1].unit_id))
    return Recommendation(reqs, tuple(p for _, p in picks), tuple(shortfalls))


def _access(
    home: frozenset[str], agencies: Mapping[str, Agency], needed: frozenset[Capability]
) -> dict[str, dict[Capability, float | None]]:
    """Agency id → the required capabilities it may provide → None (home) or the margin."""
    if not home:
        return {"": dict.fromkeys(needed)}  # no jurisdiction: everyone serves as home
    access: dict[str, dict[Capability, float | None]] = {h: dict.fromkeys(needed) for h in home}
    for h in sorted(home):
        agency = agencies.get(h)
        for terms in agency.mutual_aid if agency is not None else ():
            if terms.partner_id in home:
                continue
            lent = access.setdefault(terms.partner_id, {})
            for cap in terms.capabilities & needed:
                # Two home agencies may both have terms with the partner: the easier one applies.
                prev = lent.get(cap)
                lent[cap] = terms.margin_s if prev is None else min(prev, terms.margin_s)
    return access


def _origin(
    unit: Unit, stations: Mapping[str, Station], cutoff: datetime, now: datetime
) -> tuple[Point, bool, str] | None:
    """Where to measure from: (point, from_station, note), or None if the unit is nowhere."""
    if unit.position is not None and unit.position_at is not None and unit.position_at >= cutoff:
        return unit.position, False, ""
    station = stations.get(unit.station_id) if unit.station_id is not None else None
    age = (
        f"position {format_duration((now - unit.position_at).total_seconds())} old"
        if unit.position_at is not None
        else "no position reported"
    )
    if station is not None:
        return station.location, True, f"from station {station.name} ({age})"
    if unit.position is not None:
        return unit.position, False, f"from a stale {age}"
    return None


def _already_fills(
    unit: Unit,
    hint: Capability | None,
    remaining: Mapping[Capability, int],
    order: Mapping[Capability, int],
) -> Capability | None:
    if hint is not None and remaining.get(hint, 0) > 0:
        return hint
    return next((c for c in order if c in unit.capabilities and remaining[c] > 0), None)


def _match(
    pools: Mapping[Capability, _Pool], remaining: dict[Capability, int], order: Mapping[Capability, int]
) -> dict[str, Capability]:
    """Unit id → the requirement it fills: maximum slots filled, then least total cost.

    Successive shortest paths on a graph whose only inner nodes are the requirements: entering
    requirement ``c`` costs the best free unit's effective ETA for ``c``, and passing from ``c``
    to ``d`` moves a unit already picked for ``c`` over to ``d`` (its cost for ``d`` minus its
    cost for ``c``). Each round adds one unit along the cheapest path that ends at a requirement
    still short, preferring one that has no unit yet (as if its first slot carried a bonus larger
    than any travel time), until no requirement can gain one. With ten capabilities the graph
    is tiny; the pools are sorted once, and a cursor per pool finds the best free unit in
    amortised constant time.
    """
    at: dict[Capability, list[_Candidate]] = {c: [] for c in order}
    taken: dict[str, Capability] = {}
    cursor = dict.fromkeys(order, 0)
    covered: set[Capability] = set()

    def best_free(cap: Capability) -> _Candidate | None:
        pool, i = pools[cap], cursor[cap]
        while i < len(pool) and (not pool[i][1].pickable or pool[i][1].unit.id in taken):
            i += 1
        cursor[cap] = i
        return pool[i][1] if i < len(pool) else None

    while any(n > 0 for n in remaining.values()):
        dist: dict[Capability, float] = {}
        via: dict[Capability, tuple[Capability | None, _Candidate]] = {}
        for cap in order:
            free = best_free(cap)
            if free is not None:
                dist[cap], via[cap] = free.cost(cap), (None, free)
        for _ in range(len(order)):  # Bellman-Ford: no negative cycles arise in this scheme
            changed = False
            for here in order:
                if here not in dist:
                    continue
                for unit in at[here]:
                    for there in unit.caps:
                        d = dist[here] + unit.cost(there) - unit.cost(here)
                        if there is not here and d < dist.get(there, math.inf) - 1e-9:
                            dist[there], via[there], changed = d, (here, unit), True
            if not changed:
                break
        ends = [c for c in order if remaining[c] > 0 and c in dist]
        if not ends:
            break
        end = min(ends, key=lambda c: (c in covered, dist[c], order[c]))
        remaining[end] -= 1
        covered.add(end)
        cap = end
        while True:  # walk the path back, moving each unit one requirement along
            came_from, cand = via[cap]
            if came_from is not None:
                at[came_from].remove(cand)
            at[cap].append(cand)
            taken[cand.unit.id] = cap
            if came_from is None:
                break
            cap = came_from
    return taken


def _picked(
    taken: Mapping[str, Capability], candidates: Sequence[_Candidate]
) -> list[tuple[_Candidate, Capability]]:
    return [(cand, taken[cand.unit.id]) for cand in candidates if cand.unit.id in taken]


def _nearer(cand: _Candidate, cap: Capability, pool: _Pool, taken: Mapping[str, Capability]) -> str:
    """Name a better-ranked unit for this requirement that was used for another one."""
    mine = cand.key(cap)
    for key, other in pool:
        if key >= mine:
            break
        used_for = taken.get(other.unit.id)
        if used_for is not None and used_for is not cap and other.eta < cand.eta:
            return f"; {other.unit.call_sign}, nearer, is picked for {used_for.value}"
    return ""


def _travel(cand: _Candidate) -> str:
    how = "straight-line estimate" if cand.method == "straight_line" else "by road"
    text = f"{format_duration(cand.eta)} {how}"
    return f"{text} {cand.note}" if cand.note else text


def _agency_name(agencies: Mapping[str, Agency], agency_id: str) -> str:
    agency = agencies.get(agency_id)
    return agency.name if agency is not None else agency_id


def _tag(
    cand: _Candidate,
    cap: Capability,
    pool: _Pool,
    taken: Mapping[str, Capability],
    home: frozenset[str],
    agencies: Mapping[str, Agency],
    opts: RecommendOptions,
) -> str:
    """Why this unit's agency: home, no jurisdiction, or mutual aid (and why it beat home)."""
    if not home:
        return "no agency's jurisdiction contains the incident"
    margin = cand.margins[cap]
    if margin is None:
        return "home agency"
    partner = _agency_name(agencies, cand.unit.agency_id)
    homes = [c for _, c in pool if c.margins[cap] is None and c.pickable]
    # The matching is optimal, so any home unit left unpicked is slower by at least the margin.
    spare = next((c for c in homes if c.unit.id not in taken), None)
    within = format_duration(opts.max_travel_s)
    if spare is None and homes:
        return f"mutual aid from {partner}: every home-agency {cap.value} within {within} is picked"
    if spare is None:
        return f"mutual aid from {partner}: no home-agency {cap.value} within {within}"
    return (
        f"mutual aid from {partner}: {format_duration(spare.eta - cand.eta)} faster than "
        f"{spare.unit.call_sign} of {_agency_name(agencies, spare.unit.agency_id)} "
        f"({format_duration(spare.eta)}); margin {format_duration(margin)}"
    )


def _pick(cand: _Candidate, cap: Capability, agencies: Mapping[str, Agency], tag: str) -> Pick:
    unit = cand.unit
    name = _agency_name(agencies, unit.agency_id)
    return Pick(
        capability=cap,
        unit_id=unit.id,
        call_sign=unit.call_sign,
        agency_id=unit.agency_id,
        agency_name=name,
        eta_s=cand.eta,
        distance_m=cand.distance,
        method=cand.method,
        from_station=cand.from_station,
        mutual_aid=cand.margins[cap] is not None,
        already_assigned=False,
        reason=f"{unit.call_sign} ({name}) {cap.value}, {_travel(cand)}, {tag}",
    )


def _assigned_pick(unit: Unit, cap: Capability, agencies: Mapping[str, Agency]) -> Pick:
    name = _agency_name(agencies, unit.agency_id)
    return Pick(
        capability=cap,
        unit_id=unit.id,
        call_sign=unit.call_sign,
        agency_id=unit.agency_id,
        agency_name=name,
        eta_s=None,
        distance_m=None,
        method=None,
        from_station=False,
        mutual_aid=False,
        already_assigned=True,
        reason=f"{unit.call_sign} ({name}) {cap.value}, already assigned ({unit.status.value})",
    )


def _names(units: Sequence[Unit], agencies: Mapping[str, Agency], what: str) -> str:
    shown = ", ".join(
        f"{u.call_sign} of {_agency_name(agencies, u.agency_id)}" for u in units[:_NAMED]
    )
    more = f" and {len(units) - _NAMED} more" if len(units) > _NAMED else ""
    verb = "is" if len(units) == 1 else "are"
    return f"{shown}{more} {verb} {what}"


def _shortfall(
    req: Requirement,
    missing: int,
    pool: _Pool,
    beyond_search: list[_Candidate],
    idle: list[Unit],
    taken: Mapping[str, Capability],
    agencies: Mapping[str, Agency],
    opts: RecommendOptions,
    excluded: Collection[str],
) -> Shortfall:
    cap = req.capability
    within = format_duration(opts.max_travel_s)
    filled = req.count - missing
    if not pool and not beyond_search:
        reason = f"no unit with {cap.value} is available"
        if idle:
            busy = sorted(idle, key=lambda u: u.id)
            shown = ", ".join(f"{u.call_sign} is {_idle_state(u, excluded)}" for u in busy[:_NAMED])
            more = f" and {len(busy) - _NAMED} more" if len(busy) > _NAMED else ""
            reason += f" ({shown}{more})"
        return Shortfall(cap, missing, reason)
    head = f"no {cap.value}" if filled == 0 else f"only {filled} of {req.count} {cap.value}"
    parts = [f"{head} within {within}"]
    elsewhere = sorted(
        (c.unit for _, c in pool if c.pickable and taken.get(c.unit.id, cap) is not cap),
        key=lambda u: u.id,
    )
    if elsewhere:
        parts.append(_names(elsewhere, agencies, "needed for other requirements"))
    farther = sorted((c for _, c in pool if not c.pickable), key=lambda c: (c.eta, c.unit.id))
    nearest = farther[0] if farther else None
    if nearest is not None:
        how = " (straight-line estimate)" if nearest.method == "straight_line" else ""
        parts.append(
            f"nearest is {nearest.unit.call_sign} of "
            f"{_agency_name(agencies, nearest.unit.agency_id)} at {format_duration(nearest.eta)}{how}"
        )
    if beyond_search:
        far = sorted((c.unit for c in beyond_search), key=lambda u: u.id)
        parts.append(
            _names(far, agencies, f"out of range (beyond {format_duration(opts.search_bound_s)})")
        )
    return Shortfall(
        cap,
        missing,
        "; ".join(parts),
        nearest_unit_id=nearest.unit.id if nearest else None,
        nearest_eta_s=nearest.eta if nearest else None,
    )


def _idle_state(unit: Unit, excluded: Collection[str]) -> str:
    if unit.status is not UnitStatus.AVAILABLE:
        return unit.status.value
    return "excluded" if unit.id in excluded else "without a known location"


# --- the same, read from a dispatch state -----------------------------------------------------


def recommend_for_incident(
    state: DispatchState,
    incident_id: str,
    *,
    plans: ResponsePlans,
    timer: TravelTimer,
    now: datetime,
    home_agency_ids: Collection[str],
    options: RecommendOptions | None = None,
    exclude: Collection[str] = (),
    ignoring_assignment: str | None = None,
) -> Recommendation:
    """Recommend for an open incident: its plan at its alarm level, its location, the units
    already working it, and never a unit that already declined or timed out on it."""
    incident = state.incident(incident_id)
    if incident.status not in OPEN_INCIDENT:
        raise Conflict(f"incident {incident.id!r} is {incident.status.value}")
    plan = plans.select(incident.incident_type, incident.zone, incident.priority)
    if plan is None:
        raise NotFound("response plan", incident.incident_type)
    history = state.assignments_of(incident)
    assigned = {a.unit_id: a.capability for a in history
                if a.status in FILLING_ASSIGNMENT and a.id != ignoring_assignment}
    withdrawn = {
        a.unit_id
        for a in history
        if a.status in (AssignmentStatus.DECLINED, AssignmentStatus.TIMED_OUT)
        or a.id == ignoring_assignment
    }
    return recommend(
        target=incident.location,
        requirements=plan.requirements(min(incident.alarm_level, plan.max_alarm_level)),
        units=state.units.values(),
        agencies=state.agencies,
        stations=state.stations,
        home_agency_ids=home_agency_ids,
        timer=timer,
        now=now,
        options=options,
        assigned=assigned,
        exclude=withdrawn | set(exclude),
    )


def replacement_for(
    state: DispatchState,
    assignment_id: str,
    *,
    plans: ResponsePlans,
    timer: TravelTimer,
    now: datetime,
    home_agency_ids: Collection[str],
    options: RecommendOptions | None = None,
) -> str | None:
    """The unit to propose when ``assignment_id`` is declined or times out: the best new pick
    for the capability it was filling (or, if unknown, any capability its unit had)."""
    a = state.assignment(assignment_id)
    rec = recommend_for_incident(
        state,
        a.incident_id,
        plans=plans,
        timer=timer,
        now=now,
        home_agency_ids=home_agency_ids,
        options=options,
        ignoring_assignment=a.id,
    )
    wanted = {a.capability} if a.capability is not None else state.unit(a.unit_id).capabilities
    for pick in rec.new_picks:
        if pick.capability in wanted:
            return pick.unit_id
    return None
