"""Self-limits: the daemon's own warning when a figure nears its configured limit.

Each check names a figure (resident memory, outbox backlog, pipeline queue),
its value and its limit. Passing ``warn_fraction`` of the limit logs one
WARNING (``self_limit_near``) with the figures, repeated every
``REPEAT_S`` while it lasts; falling back under it logs ``self_limit_cleared``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

__all__ = ["LimitWatch"]

log = structlog.get_logger(__name__)

# While a figure stays near its limit, the warning is repeated this often (s).
REPEAT_S = 600.0


@dataclass(slots=True)
class _Near:
    since: float
    logged_at: float


class LimitWatch:
    """Compare figures with their limits and log when they come near."""

    def __init__(self, warn_fraction: float) -> None:
        self.warn_fraction = warn_fraction
        self._near: dict[str, _Near] = {}

    @property
    def near(self) -> list[str]:
        """Names of the figures near their limits now."""
        return sorted(self._near)

    def check(
        self, figures: Mapping[str, tuple[float, float]], now: float | None = None
    ) -> list[str]:
        """Check ``{name: (value, limit)}``; return the names near their limits."""
        now = time.monotonic() if now is None else now
        for name, (value, limit) in figures.items():
            near = limit > 0 and value >= self.warn_fraction * limit
            state = self._near.get(name)
            if near and (state is None or now - state.logged_at >= REPEAT_S):
                log.warning(
                    "self_limit_near",
                    figure=name,
                    value=value,
                    limit=limit,
                    share=round(value / limit, 3),
                    warn_at=self.warn_fraction,
                )
                since = state.since if state else now
                self._near[name] = _Near(since=since, logged_at=now)
            elif not near and state is not None:
                del self._near[name]
                log.info("self_limit_cleared", figure=name, value=value, limit=limit)
        return self.near
