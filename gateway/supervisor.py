"""Keeps one tool's driver running: connect, acquire, and reconnect with backoff."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import structlog

from drivers.base import BatchSink, Driver, DriverError
from drivers.batch import BAD_COMM, ReadingBatch
from gateway.backoff import Backoff
from gateway.config.models import BackoffConfig

__all__ = ["LinkState", "ToolSupervisor"]

log = structlog.get_logger(__name__)

LinkState = Literal["connecting", "up", "down"]


class ToolSupervisor:
    """Run ``driver`` until cancelled; one tool's faults never reach another.

    Every failure of the driver, including a bug that raises something other than
    :class:`DriverError`, ends the session: the group's tags are marked bad
    (``BAD_COMM``), and the next attempt waits for the shared backoff. A session
    that stayed up for ``backoff.max_s`` resets the backoff.
    """

    def __init__(self, driver: Driver, sink: BatchSink, backoff: BackoffConfig) -> None:
        self.driver = driver
        self.sink = sink
        self.state: LinkState = "connecting"
        self.since_ns = time.time_ns()
        self.reconnects = 0
        self.last_error = ""
        self._backoff = Backoff(backoff)

    @property
    def tool(self) -> str:
        """The supervised tool's id."""
        return self.driver.tool

    async def run(self) -> None:
        """Connect, acquire and reconnect forever; returns only by cancellation."""
        while True:
            started = time.monotonic()
            await self._session()
            if time.monotonic() - started >= self._backoff.config.max_s:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info(
                "tool_reconnect_scheduled", tool=self.tool, retry_in=round(delay, 2)
            )
            await asyncio.sleep(delay)
            self.reconnects += 1

    async def _session(self) -> None:
        driver = self.driver
        self._set_state("connecting")
        try:
            await driver.connect()
            self._set_state("up")
            log.info("tool_connected", tool=self.tool, driver=driver.kind)
            await driver.acquire(self.sink)
        except DriverError as exc:
            self.last_error = exc.detail
            log.warning("tool_link_failed", tool=self.tool, error=exc.detail)
        except Exception as exc:  # a driver bug must not stop the other tools
            self.last_error = repr(exc)
            log.exception("tool_driver_crashed", tool=self.tool)
        finally:
            await driver.close()
        self._set_state("down")
        await self._mark_bad()

    async def _mark_bad(self) -> None:
        now = time.time_ns()
        for group in self.driver.groups:
            await self.sink(
                ReadingBatch.all_bad(
                    self.tool, group.name, now, group.tag_index, BAD_COMM
                )
            )

    def _set_state(self, state: LinkState) -> None:
        if state != self.state:
            self.state = state
            self.since_ns = time.time_ns()
