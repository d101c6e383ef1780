"""The one reconnect policy: capped, jittered exponential backoff.

Every driver supervisor and the MQTT publisher wait ``Backoff.next_delay()`` between
attempts, so a recovering tool or broker never sees a fleet of gateways reconnect in
lock step.
"""

from __future__ import annotations

import random

from gateway.config.models import BackoffConfig

__all__ = ["Backoff"]

# Past this many doublings every delay is at the cap; stops float overflow.
_MAX_EXPONENT = 64


class Backoff:
    """Delays of ``initial * multiplier**n`` seconds, capped at ``max_s``.

    Each delay is drawn uniformly from ``[d * (1 - jitter), d]`` ("equal jitter"
    on the downside only), so the cap is never exceeded and two clients that
    failed together drift apart. :meth:`reset` after a connection proved stable.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Return the delay before the next attempt, in seconds, and count it."""
        config = self.config
        exponent = min(self.attempts, _MAX_EXPONENT)
        base = min(config.max_s, config.initial_s * config.multiplier**exponent)
        self.attempts += 1
        return base * (1.0 - config.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from ``initial_s``."""
        self.attempts = 0
