"""The webhook retry schedule: defaults, parsing configuration text, jitter bounds, determinism,
exhaustion (dead letter), time scaling and Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from icp.webhooks.retry import DEFAULT_DELAYS, MAX_DELAY_S, RetrySchedule, retry_after_s

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_default_schedule() -> None:
    s = RetrySchedule()
    assert s.delays == (0, 5, 30, 120, 600, 1800, 3600, 10800, 21600)
    assert s.attempts == 9 and s.jitter == 0.1 and s.time_scale == 1.0
    assert str(s) == "0,5s,30s,2m,10m,30m,1h,3h,6h"


def test_parse_the_configuration_form() -> None:
    s = RetrySchedule.parse("0,5s,30s,2m,10m,30m,1h,3h,6h")
    assert s.delays == DEFAULT_DELAYS
    assert RetrySchedule.parse(" 0 , 1.5s, 2 m ,1d").delays == (0.0, 1.5, 120.0, 86400.0)
    assert RetrySchedule.parse("10").delays == (10.0,)
    assert RetrySchedule.parse(str(s)) == s
    scaled = RetrySchedule.parse("1s,2s", jitter=0.0, time_scale=0.001)
    assert scaled.jitter == 0.0 and scaled.time_scale == 0.001


@pytest.mark.parametrize("text", ["", " ", "5x", "1,,2", "-5", "1h30m", "abc", "8d", ",".join(["1"] * 101)])
def test_parse_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        RetrySchedule.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delays": ()},
        {"delays": (-1,)},
        {"delays": (MAX_DELAY_S + 1,)},
        {"delays": (True,)},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"time_scale": 0},
        {"time_scale": float("inf")},
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(**kwargs)  # type: ignore[arg-type]


def test_delay_after_walks_the_schedule_then_dead_letters() -> None:
    s = RetrySchedule(jitter=0.0)
    rng = random.Random(1)
    assert [s.delay_after(n, rng) for n in range(9)] == [float(d) for d in DEFAULT_DELAYS]
    assert s.delay_after(9, rng) is None
    assert s.delay_after(1000, rng) is None
    with pytest.raises(ValueError):
        s.delay_after(-1, rng)


def test_jitter_stays_within_its_fraction_and_zero_stays_zero() -> None:
    s = RetrySchedule()
    rng = random.Random(7)
    assert s.delay_after(0, rng) == 0.0
    samples = [s.delay_after(6, rng) or 0.0 for _ in range(2000)]
    assert all(3240.0 <= d <= 3960.0 for d in samples)
    assert max(samples) - min(samples) > 500  # actually spread, not a constant


def test_deterministic_given_the_generator() -> None:
    s = RetrySchedule()
    a = [s.delay_after(n, random.Random(42)) for n in range(10)]
    b = [s.delay_after(n, random.Random(42)) for n in range(10)]
    assert a == b


def test_time_scale_shrinks_every_delay() -> None:
    s = RetrySchedule(jitter=0.0, time_scale=0.001)
    rng = random.Random(0)
    assert s.delay_after(8, rng) == pytest.approx(21.6)
    assert s.delay_after(1, rng) == pytest.approx(0.005)


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after_s(None, NOW) is None
    assert retry_after_s("", NOW) is None
    assert retry_after_s("120", NOW) == 120.0
    assert retry_after_s("99999999", NOW) == MAX_DELAY_S
    date = (NOW + timedelta(minutes=5)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_s(date, NOW) == 300.0
    past = (NOW - timedelta(minutes=5)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_s(past, NOW) == 0.0
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s("-5", NOW) is None
