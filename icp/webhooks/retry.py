"""The retry schedule of webhook deliveries: how long to wait before each attempt, with jitter.

Pure and deterministic given the random generator, so the delivery engine's tests can replay a
schedule exactly and shrink it with ``time_scale``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Immediately, then backing off to six-hourly: nine attempts over about 10.7 hours. An agency
# endpoint down longer than that gets the message from the dead-letter queue, not from retries.
DEFAULT_DELAYS: tuple[float, ...] = (0, 5, 30, 120, 600, 1800, 3600, 10800, 21600)
DEFAULT_JITTER = 0.1
MAX_ATTEMPTS = 100
MAX_DELAY_S = 7 * 24 * 3600.0

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TOKEN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """``delays[n]`` is the wait before attempt ``n + 1``, so there are ``len(delays)`` attempts.

    Each wait is spread by ±``jitter`` (a fraction) so that endpoints failing together are not
    retried in lockstep, then multiplied by ``time_scale`` (tests use 0.001).
    """

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = DEFAULT_JITTER
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        delays = tuple(self.delays)
        if not 1 <= len(delays) <= MAX_ATTEMPTS:
            raise ValueError(f"a retry schedule needs 1-{MAX_ATTEMPTS} delays, got {len(delays)}")
        for d in delays:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= MAX_DELAY_S:
                raise ValueError(f"retry delays must be 0-{MAX_DELAY_S:.0f} seconds, got {d!r}")
        object.__setattr__(self, "delays", tuple(float(d) for d in delays))
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter < 1):
            raise ValueError(f"retry jitter must be a fraction in [0, 1), got {self.jitter!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale)
                and self.time_scale > 0):
            raise ValueError(f"retry time_scale must be a positive number, got {self.time_scale!r}")

    @classmethod
    def parse(cls, text: str, *, jitter: float = DEFAULT_JITTER, time_scale: float = 1.0) -> RetrySchedule:
        """A schedule from configuration text such as ``"0,5s,30s,2m,10m,30m,1h,3h,6h"``
        (units s, m, h, d; a bare number is seconds)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a retry schedule must list at least one delay, e.g. '0,5s,30s,2m'")
        delays = []
        for token in text.split(","):
            match = _TOKEN.fullmatch(token.strip())
            if match is None:
                raise ValueError(f"retry delay {token.strip()[:20]!r} must be a number with an optional s/m/h/d unit")
            delays.append(float(match[1]) * _UNITS[match[2]])
        return cls(delays=tuple(delays), jitter=jitter, time_scale=time_scale)

    @property
    def attempts(self) -> int:
        """How many attempts a message gets before it is dead-lettered."""
        return len(self.delays)

    def delay_after(self, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait before the next attempt when ``attempt`` attempts have been made
        (0: the first delivery), or None when the schedule is exhausted (dead letter)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be a count of attempts made (>= 0), got {attempt!r}")
        if attempt >= len(self.delays):
            return None
        base = self.delays[attempt]
        spread = rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return base * (1.0 + spread) * self.time_scale

    def __str__(self) -> str:
        return ",".join(_format_delay(d) for d in self.delays)


def _format_delay(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds else "0"


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), capped at
    ``MAX_DELAY_S``; None when absent or unreadable. The engine waits the longer of this and the
    schedule's delay."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_DELAY_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means "-0000"
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_DELAY_S)
