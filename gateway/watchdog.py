"""The service watchdog: ping systemd only while the daemon makes progress.

Two things must hold for a ``WATCHDOG=1`` ping:

- the event loop runs: the pings come from a task on the loop, so a loop stuck
  in a blocking call sends none;
- the pipeline moves: every :class:`Probe` that has work waiting must have
  finished some of it within ``stall_s``. A stage whose queue holds work that
  nobody takes (a pipeline task that no longer consumes, a store writer that no
  longer commits) withholds the pings, and systemd restarts the service after
  ``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway.sdnotify import Notifier

__all__ = ["Probe", "ProgressMonitor", "run_watchdog"]

log = structlog.get_logger(__name__)

# systemd advises pinging at half the timeout; a quarter leaves room for a
# loaded machine delaying the loop.
PINGS_PER_TIMEOUT = 4


@dataclass(frozen=True, slots=True)
class Probe:
    """One pipeline stage seen from outside.

    Attributes:
        name: the stage, as logged (``pipeline``, ``store``).
        waiting: how much work waits for the stage now.
        done: how much work the stage has finished so far; only ever grows.
    """

    name: str
    waiting: Callable[[], int]
    done: Callable[[], int]


@dataclass(slots=True)
class _Track:
    done: int
    progress_at: float


class ProgressMonitor:
    """Tell which stages hold waiting work they have not advanced for ``stall_s``.

    A stage with nothing waiting is idle, never stalled.
    """

    def __init__(self, probes: Sequence[Probe], stall_s: float) -> None:
        self.probes = tuple(probes)
        self.stall_s = stall_s
        now = time.monotonic()
        self._tracks = {p.name: _Track(p.done(), now) for p in self.probes}

    def stalled(self, now: float | None = None) -> list[str]:
        """Return the names of stalled stages (monotonic ``now``, seconds)."""
        now = time.monotonic() if now is None else now
        stalled = []
        for probe in self.probes:
            track = self._tracks[probe.name]
            done = probe.done()
            if done != track.done or probe.waiting() == 0:
                track.done = done
                track.progress_at = now
            elif now - track.progress_at >= self.stall_s:
                stalled.append(probe.name)
        return stalled


async def run_watchdog(
    notifier: Notifier, monitor: ProgressMonitor, timeout_s: float
) -> None:
    """Ping every ``timeout_s / 4`` while nothing is stalled; runs until cancelled."""
    interval = timeout_s / PINGS_PER_TIMEOUT
    withheld: list[str] = []
    while True:
        stalled = monitor.stalled()
        if not stalled:
            if withheld:
                log.warning("watchdog_resumed", stages=withheld)
                withheld = []
            notifier.watchdog()
        elif stalled != withheld:
            withheld = stalled
            log.error(
                "watchdog_withheld",
                stages=stalled,
                stall_s=monitor.stall_s,
                action="systemd restarts the service unless the stage recovers",
            )
        await asyncio.sleep(interval)
