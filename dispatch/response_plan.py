"""Response plans ("run cards"): which capabilities, how many, per incident type and alarm level."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from dispatch import _checks as check
from dispatch.capability import Capability
from dispatch.errors import Invalid
from dispatch.incident import MAX_ALARM_LEVEL, PRIORITY_HIGHEST, PRIORITY_LOWEST

MAX_UNITS_PER_REQUIREMENT = 50


@dataclass(frozen=True, slots=True)
class Requirement:
    """``count`` units that each have ``capability``."""

    capability: Capability
    count: int = 1

    def __post_init__(self) -> None:
        check.set_field(self, "capability", check.member(self.capability, Capability, "capability"))
        check.integer(self.count, "count", lo=1, hi=MAX_UNITS_PER_REQUIREMENT)


def merge(requirements: Iterable[Requirement]) -> tuple[Requirement, ...]:
    """Requirements with the same capability summed, in order of first appearance."""
    totals: dict[Capability, int] = {}
    for r in requirements:
        totals[r.capability] = totals.get(r.capability, 0) + r.count
    return tuple(Requirement(cap, n) for cap, n in totals.items())


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """The run card for ``incident_type``, optionally narrowed to a zone and/or a priority.

    ``levels[0]`` is the first alarm; each later level adds its requirements to those before.
    """

    incident_type: str
    levels: tuple[tuple[Requirement, ...], ...]
    zone: str | None = None
    priority: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        check.slug(self.incident_type, "incident_type")
        if self.zone is not None:
            check.slug(self.zone, "zone")
        if self.priority is not None:
            check.integer(self.priority, "priority", lo=PRIORITY_HIGHEST, hi=PRIORITY_LOWEST)
        check.text(self.name, "name", max_len=200)
        levels = check.tuple_of(self.levels, (tuple, list), "levels", max_len=MAX_ALARM_LEVEL)
        if not levels:
            raise Invalid("a plan needs at least one alarm level", field="levels")
        frozen = []
        for i, level in enumerate(levels):
            reqs = check.tuple_of(level, Requirement, f"levels[{i}]", max_len=len(Capability))
            if not reqs:
                raise Invalid(f"alarm level {i + 1} requires nothing", field=f"levels[{i}]")
            if len({r.capability for r in reqs}) != len(reqs):
                raise Invalid(f"alarm level {i + 1} lists a capability twice", field=f"levels[{i}]")
            frozen.append(reqs)
        check.set_field(self, "levels", tuple(frozen))

    @property
    def key(self) -> tuple[str, str | None, int | None]:
        return (self.incident_type, self.zone, self.priority)

    @property
    def max_alarm_level(self) -> int:
        return len(self.levels)

    def requirements(self, alarm_level: int = 1) -> tuple[Requirement, ...]:
        """Everything needed at ``alarm_level``: that level and all below, merged by capability.
        A level beyond the plan's last means everything the plan has."""
        check.integer(alarm_level, "alarm_level", lo=1, hi=MAX_ALARM_LEVEL)
        return merge(r for level in self.levels[:alarm_level] for r in level)

    @property
    def specificity(self) -> int:
        # A zone says more than a priority: the streets of an old town change the apparatus
        # needed more than the urgency does; type alone is the fallback.
        return (2 if self.zone is not None else 0) + (1 if self.priority is not None else 0)

    def matches(self, incident_type: str, zone: str | None, priority: int | None) -> bool:
        return (
            self.incident_type == incident_type
            and (self.zone is None or self.zone == zone)
            and (self.priority is None or self.priority == priority)
        )

    # --- JSON / TOML shape: {"incident_type", "zone", "priority", "name", "levels": [{CAP: n}]}
    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_type": self.incident_type,
            "zone": self.zone,
            "priority": self.priority,
            "name": self.name,
            "levels": [{r.capability.value: r.count for r in level} for level in self.levels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResponsePlan:
        if not isinstance(data, Mapping):
            raise Invalid("a response plan must be an object")
        unknown = sorted(set(data) - {"incident_type", "zone", "priority", "name", "levels"})
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r}", field=unknown[0])
        levels = data.get("levels")
        if not isinstance(levels, list):
            raise Invalid("levels must be a list of {capability: count} objects", field="levels")
        parsed = []
        for i, level in enumerate(levels):
            if not isinstance(level, Mapping):
                raise Invalid("each level must be a {capability: count} object", field=f"levels[{i}]")
            try:
                parsed.append(tuple(Requirement(cap, n) for cap, n in level.items()))
            except Invalid as exc:
                raise Invalid(f"levels[{i}]: {exc.message}", field=f"levels[{i}]") from None
        return cls(
            incident_type=data.get("incident_type"),  # type: ignore[arg-type]  # validated
            levels=tuple(parsed),
            zone=data.get("zone"),
            priority=data.get("priority"),
            name=data.get("name", ""),
        )


@dataclass(frozen=True, slots=True)
class ResponsePlans:
    """A validated set of plans with at most one plan per (type, zone, priority)."""

    plans: tuple[ResponsePlan, ...] = ()

    def __post_init__(self) -> None:
        plans = check.tuple_of(self.plans, ResponsePlan, "plans")
        seen: set[tuple[str, str | None, int | None]] = set()
        for plan in plans:
            if plan.key in seen:
                raise Invalid(f"two plans for {_describe(plan.key)}", field="plans")
            seen.add(plan.key)
        check.set_field(self, "plans", plans)

    def select(
        self, incident_type: str, zone: str | None = None, priority: int | None = None
    ) -> ResponsePlan | None:
        """The most specific plan that matches, or None when the type has no plan at all."""
        best: ResponsePlan | None = None
        for plan in self.plans:
            if plan.matches(incident_type, zone, priority) and (
                best is None or plan.specificity > best.specificity
            ):
                best = plan
        return best

    def for_type(self, incident_type: str) -> tuple[ResponsePlan, ...]:
        return tuple(p for p in self.plans if p.incident_type == incident_type)

    @property
    def incident_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.incident_type for p in self.plans))

    def replacing_type(self, incident_type: str, plans: Iterable[ResponsePlan]) -> ResponsePlans:
        """These plans with every plan of ``incident_type`` replaced (the PUT of one type)."""
        new = tuple(plans)
        for plan in new:
            if plan.incident_type != incident_type:
                raise Invalid(f"a plan for {plan.incident_type!r} is not a plan for {incident_type!r}")
        kept = tuple(p for p in self.plans if p.incident_type != incident_type)
        return ResponsePlans(kept + new)

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.plans]

    @classmethod
    def from_list(cls, items: Iterable[Mapping[str, Any]]) -> ResponsePlans:
        return cls(tuple(ResponsePlan.from_dict(item) for item in items))


def _describe(key: tuple[str, str | None, int | None]) -> str:
    incident_type, zone, priority = key
    out = incident_type
    if zone is not None:
        out += f" in zone {zone}"
    if priority is not None:
        out += f" at priority {priority}"
    return out


@cache
def default_plans() -> ResponsePlans:
    """The plans shipped in ``dispatch/response_plans.toml``."""
    text = resources.files("dispatch").joinpath("response_plans.toml").read_text(encoding="utf-8")
    return ResponsePlans.from_list(tomllib.loads(text)["plans"])
