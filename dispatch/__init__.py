"""Dispatch domain core: pure, synchronous, deterministic (no I/O, no clocks).

The two functions the rest of ICP relies on are ``decide(state, command, now) -> events`` and
``evolve(state, event) -> state``; ``recommend`` ranks units for a plan. See
``docs/dispatch-domain.md`` for the model and ``docs/lifecycles.md`` for the state machines.
"""

from dispatch.decide import decide
from dispatch.errors import Conflict, DomainError, IllegalTransition, Invalid, NotFound, UnitUnavailable
from dispatch.events import EVENT_TYPES, Event, event_from_dict
from dispatch.evolve import evolve, evolve_all, handle
from dispatch.policy import DispatchPolicy
from dispatch.recommendation import (
    Recommendation,
    RecommendOptions,
    recommend,
    recommend_for_incident,
    replacement_for,
)
from dispatch.response_plan import ResponsePlan, ResponsePlans, default_plans
from dispatch.state import DispatchState

__all__ = [
    "EVENT_TYPES",
    "Conflict",
    "DispatchPolicy",
    "DispatchState",
    "DomainError",
    "Event",
    "IllegalTransition",
    "Invalid",
    "NotFound",
    "RecommendOptions",
    "Recommendation",
    "ResponsePlan",
    "ResponsePlans",
    "UnitUnavailable",
    "decide",
    "default_plans",
    "event_from_dict",
    "evolve",
    "evolve_all",
    "handle",
    "recommend",
    "recommend_for_incident",
    "replacement_for",
]
