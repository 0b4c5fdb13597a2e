"""Dispatch policy: the knobs an operator sets, read by ``decide`` (acknowledgement, closing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from dispatch import _checks as check
from dispatch.errors import Invalid

# What happens when a unit declines or fails to acknowledge: nothing more, propose the next unit
# to the dispatcher (an assignment in state "recommended"), or dispatch it straight away.
Replacement = Literal["none", "recommend", "dispatch"]
_REPLACEMENTS = ("none", "recommend", "dispatch")


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """``ack_timeout_s``: how long a dispatched unit has to acknowledge; ``mutual_aid_timeout_s``:
    how long a partner agency has to answer a mutual-aid request.

    ``close_releases_units``: closing an incident with units still assigned cancels (before
    arrival) or clears (on scene) those assignments and returns the units to available, except
    units transporting or at hospital, which keep their status until they report free. When
    False, closing is refused while any assignment is active, so each unit is cleared by hand.
    """

    ack_timeout_s: float = 60.0
    mutual_aid_timeout_s: float = 120.0
    on_timeout: Replacement = "recommend"
    on_decline: Replacement = "recommend"
    close_releases_units: bool = True

    def __post_init__(self) -> None:
        check.set_field(
            self, "ack_timeout_s", check.seconds(self.ack_timeout_s, "ack_timeout_s", lo=1, hi=3600)
        )
        check.set_field(self, "mutual_aid_timeout_s", check.seconds(
            self.mutual_aid_timeout_s, "mutual_aid_timeout_s", lo=1, hi=86400))
        for name in ("on_timeout", "on_decline"):
            if getattr(self, name) not in _REPLACEMENTS:
                raise Invalid(f"{name} must be one of {', '.join(_REPLACEMENTS)}", field=name)
        if not isinstance(self.close_releases_units, bool):
            raise Invalid("close_releases_units must be true or false", field="close_releases_units")

    def ack_deadline(self, dispatched_at: datetime) -> datetime:
        """When an assignment dispatched at ``dispatched_at`` times out if not acknowledged."""
        return check.aware(dispatched_at, "dispatched_at") + timedelta(seconds=self.ack_timeout_s)

    def answer_deadline(self, requested_at: datetime) -> datetime:
        """When a mutual-aid request made at ``requested_at`` times out if the partner is silent."""
        return check.aware(requested_at, "requested_at") + timedelta(seconds=self.mutual_aid_timeout_s)
