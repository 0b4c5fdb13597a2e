"""Travel estimates: the contract between whatever computes travel times and whoever ranks units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from geo.coords import Point

Method = Literal["road", "straight_line"]


@dataclass(frozen=True, slots=True)
class TravelEstimate:
    """How long one origin takes to reach the target.

    ``in_range`` is False when the origin is beyond the search bound (or cannot reach the target
    on the road network at all); then ``eta_s`` and ``distance_m`` are None. Being out of range
    is an answer, not an error. ``method`` says whether this came from the road network or from
    the straight-line fallback (at ``fallback_speed_mps``), so callers can flag it.
    """

    in_range: bool
    eta_s: float | None
    distance_m: float | None
    method: Method


class TravelTimer(Protocol):
    """One target, many origins: the question "who gets here fastest?"."""

    def one_to_many(
        self, target: Point, origins: Sequence[Point], max_seconds: float
    ) -> list[TravelEstimate]:
        """Estimates for each origin (same order) to reach ``target`` within ``max_seconds``."""
        ...
