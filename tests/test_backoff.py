"""The shared reconnect policy: capped, jittered exponential backoff."""

from __future__ import annotations

import math
import random

import pytest

from gateway.backoff import Backoff
from gateway.config.models import BackoffConfig

SEED = 20240601
MANY_ATTEMPTS = 5_000


def _backoff(**fields: float) -> Backoff:
    return Backoff(BackoffConfig(**fields), rng=random.Random(SEED))


def test_without_jitter_delays_grow_by_the_multiplier_until_the_cap() -> None:
    """With no jitter the delays are initial * multiplier**n, then the cap."""
    backoff = _backoff(initial_s=0.5, max_s=10.0, multiplier=2.0, jitter=0.0)

    delays = [backoff.next_delay() for _ in range(8)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_jittered_delays_stay_within_the_downside_band() -> None:
    """Each jittered delay lies in [d * (1 - jitter), d] for the unjittered d."""
    config = BackoffConfig(initial_s=0.2, max_s=30.0, multiplier=3.0, jitter=0.4)
    backoff = Backoff(config, rng=random.Random(SEED))

    for attempt in range(40):
        nominal = min(config.max_s, config.initial_s * config.multiplier**attempt)
        delay = backoff.next_delay()
        assert nominal * (1.0 - config.jitter) <= delay <= nominal


def test_jitter_spreads_delays_of_clients_that_failed_together() -> None:
    """Two clients with different random streams do not wait the same delays."""
    config = BackoffConfig(initial_s=1.0, max_s=60.0, jitter=0.5)
    first = Backoff(config, rng=random.Random(1))
    second = Backoff(config, rng=random.Random(2))

    pairs = [(first.next_delay(), second.next_delay()) for _ in range(10)]

    assert any(a != b for a, b in pairs)


def test_the_cap_is_never_exceeded() -> None:
    """No delay is above max_s, whatever the multiplier and jitter."""
    backoff = _backoff(initial_s=1.0, max_s=7.5, multiplier=10.0, jitter=1.0)

    assert max(backoff.next_delay() for _ in range(200)) <= 7.5


def test_reset_starts_again_from_the_initial_delay() -> None:
    """After reset the next delay is the initial one again."""
    backoff = _backoff(initial_s=0.25, max_s=5.0, multiplier=2.0, jitter=0.0)
    for _ in range(6):
        backoff.next_delay()

    backoff.reset()

    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.25


def test_attempts_count_every_delay_handed_out() -> None:
    """The attempt counter rises by one per delay."""
    backoff = _backoff()

    for expected in range(1, 6):
        backoff.next_delay()
        assert backoff.attempts == expected


def test_thousands_of_attempts_neither_overflow_nor_leave_the_band() -> None:
    """After thousands of failures the delay is still finite and at the cap band."""
    backoff = _backoff(initial_s=0.5, max_s=30.0, multiplier=10.0, jitter=0.2)

    delays = [backoff.next_delay() for _ in range(MANY_ATTEMPTS)]

    assert all(math.isfinite(delay) for delay in delays)
    assert all(30.0 * 0.8 <= delay <= 30.0 for delay in delays[-100:])


def test_same_seed_gives_the_same_delays() -> None:
    """The policy is deterministic for a given random stream."""
    first = _backoff(jitter=0.5)
    second = _backoff(jitter=0.5)

    assert [first.next_delay() for _ in range(20)] == [
        second.next_delay() for _ in range(20)
    ]


@pytest.mark.parametrize("multiplier", [1.0, 1.5, 2.0, 10.0])
def test_delays_never_shrink_without_jitter(multiplier: float) -> None:
    """Without jitter the sequence is non-decreasing for every allowed multiplier."""
    backoff = _backoff(initial_s=0.1, max_s=100.0, multiplier=multiplier, jitter=0.0)

    delays = [backoff.next_delay() for _ in range(50)]

    assert delays == sorted(delays)
