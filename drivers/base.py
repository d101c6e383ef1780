"""The driver contract: what every protocol driver implements.

A driver talks to one tool. The daemon's supervisor owns its life cycle:

1. ``await driver.connect()``: open the session (bounded by the driver's own timeouts).
2. ``await driver.acquire(sink)``: deliver :class:`ReadingBatch`es to ``sink`` until
   cancelled, or raise :class:`DriverError` when the link fails.
3. ``await driver.close()``: release the session; always called, never raises.

The supervisor reports the link state, marks the tool's tags bad while the link is
down, and reconnects with the shared backoff policy. A driver never retries a lost
connection by itself, and never polls a group faster than its configured interval.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from drivers.batch import Int32Array, ReadingBatch

__all__ = [
    "BatchSink",
    "ConnectFailed",
    "ConnectionLost",
    "Driver",
    "DriverError",
    "DriverSettings",
    "EquipmentEvent",
    "PollGroup",
    "PollStats",
    "TagSource",
]


@dataclass(frozen=True, slots=True)
class EquipmentEvent:
    """Something the tool reported by itself: a collection event or an alarm.

    Attributes:
        tool: the tool's id.
        kind: ``"event"`` (a collection event with its reports) or ``"alarm"``.
        ts_ns: when the gateway received it, ns since the Unix epoch.
        code: the event's id (CEID) or the alarm's (ALID).
        name: the event's name, or the alarm's text (ALTX).
        state: for an alarm, ``"set"`` or ``"cleared"``; ``""`` for an event.
        severity: for an alarm, ``"info"``, ``"warning"`` or ``"critical"``
            (from its category); ``""`` for an event.
        data: JSON-ready details: an event's reports, an alarm's code byte.
    """

    tool: str
    kind: Literal["event", "alarm"]
    ts_ns: int
    code: int
    name: str
    state: Literal["set", "cleared", ""] = ""
    severity: Literal["info", "warning", "critical", ""] = ""
    data: dict[str, Any] = field(default_factory=dict)


BatchSink = Callable[[ReadingBatch | EquipmentEvent], Awaitable[None]]
"""Where a driver hands its batches and events; awaiting it applies backpressure.

Numeric values a tool pushes (report values, subscription updates) go in as
batches of the group they belong to; equipment events go in as themselves.
"""


class DriverError(Exception):
    """A fault on the link to a tool; the supervisor reconnects after it."""

    def __init__(self, tool: str, detail: str) -> None:
        super().__init__(f"{tool}: {detail}")
        self.tool = tool
        self.detail = detail


class ConnectFailed(DriverError):
    """The session to the tool could not be opened."""


class ConnectionLost(DriverError):
    """An open session to the tool failed."""


class DriverSettings(BaseModel):
    """Base of each driver's ``[driver]`` table schema; unknown keys are errors.

    ``kind`` selects the driver; each driver narrows it to its own ``Literal``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: str


class TagSource(BaseModel):
    """Base of each driver's per-tag ``source`` table schema (address, signal...)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Tags read together on one interval.

    Attributes:
        name: the group's name, unique within the tool.
        interval_s: seconds between polls (a poll never starts sooner); for a
            ``subscribe`` group, the sampling interval asked of the tool.
        tags: indices of the group's tags in the tool's tag list.
        mode: ``"read"`` (polled by :meth:`Driver.acquire`) or ``"subscribe"``
            (pushed by the tool; only drivers listing it in ``modes`` take it).
    """

    name: str
    interval_s: float
    tags: tuple[int, ...]
    mode: Literal["read", "subscribe"] = "read"
    tag_index: Int32Array = field(init=False, repr=False, compare=False)
    """The group's tag indices as the int32 array batches carry (read-only)."""

    def __post_init__(self) -> None:
        # Made once: every batch of the group carries it, at every poll.
        index = np.asarray(self.tags, dtype=np.int32)
        index.flags.writeable = False
        object.__setattr__(self, "tag_index", index)


@dataclass(slots=True)
class PollStats:
    """Counters of one driver's acquisition, read by status and metrics."""

    polls: int = 0
    overruns: int = 0
    readings: int = 0
    last_poll_ns: int = 0
    per_group_overruns: dict[str, int] = field(default_factory=dict)


class Driver(abc.ABC):
    """One tool's protocol session.

    Subclasses set ``kind``, ``Settings`` and ``Source`` (the pydantic schemas of
    the tool file's ``[driver]`` table and of each tag's ``source`` table) and
    implement :meth:`connect`, :meth:`read_group` and :meth:`close`. Drivers whose
    tool pushes data (subscriptions, event reports) override :meth:`acquire`.
    """

    kind: ClassVar[str]
    Settings: ClassVar[type[DriverSettings]]
    Source: ClassVar[type[TagSource]]
    modes: ClassVar[frozenset[str]] = frozenset({"read"})

    def __init__(
        self,
        tool: str,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> None:
        """Keep the tool's tables.

        Raises:
            TypeError: ``settings`` or a source is not of this driver's schema.
        """
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{tool}: settings must be {self.Settings.__name__}")
        if not all(isinstance(source, self.Source) for source in sources):
            raise TypeError(f"{tool}: every tag source must be {self.Source.__name__}")
        self.tool = tool
        self.settings = settings
        self.tag_names = tuple(tag_names)
        self.sources = tuple(sources)
        self.groups = tuple(groups)
        self.stats = PollStats()

    @classmethod
    def check(
        cls,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> list[tuple[str, str]]:
        """Return ``(key path, rule)`` pairs for rules that span settings and tags.

        The key path is relative to the tool file, such as ``driver.faults[1].tag``.
        The schema checks each table alone; this catches what only the whole tool
        shows (a fault naming a tag that does not exist, a subscribe group on a
        driver that cannot subscribe). Subclasses extend the base's list.
        """
        return [
            (f"poll_groups[{g}].mode", f"the {cls.kind} driver cannot {group.mode}")
            for g, group in enumerate(groups)
            if group.mode not in cls.modes
        ]

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the session to the tool; raise :class:`ConnectFailed` if it fails."""

    @abc.abstractmethod
    async def read_group(self, group: PollGroup) -> ReadingBatch:
        """Read one poll of ``group``; raise :class:`ConnectionLost` if the link fails.

        Tags the tool refuses are returned with a bad quality code, not raised.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session; must not raise."""

    def tag_faults(self) -> dict[str, str]:
        """Return the tags the tool refused at their last read, with its answer.

        Keys are tag names, values what the tool said in its protocol's words
        (``"exception 0x02 illegal data address"``, ``"BadNodeIdUnknown"``).
        Tags bad for a lost link are not listed: the connection state says so.
        Drivers whose protocol gives no per-tag answer return nothing.
        """
        return {}

    async def acquire(self, sink: BatchSink) -> None:
        """Poll every ``read`` group on its interval and hand each batch to ``sink``.

        Drivers that take ``subscribe`` groups override this to run both.

        Returns only by cancellation; a :class:`DriverError` from any group ends
        all of them and propagates to the supervisor.
        """
        # The first link fault ends every group's loop; it is raised bare, not in
        # the TaskGroup's ExceptionGroup, so the supervisor sees the DriverError.
        try:
            async with asyncio.TaskGroup() as tasks:
                for group in self.groups:
                    if group.mode != "read":
                        continue
                    tasks.create_task(
                        self._poll_loop(group, sink),
                        name=f"{self.kind}[{self.tool}].poll[{group.name}]",
                    )
        except* DriverError as faults:
            raise faults.exceptions[0] from None

    async def _poll_loop(self, group: PollGroup, sink: BatchSink) -> None:
        # Ticks are laid on the monotonic clock from the loop's start. A poll that
        # runs past the next tick makes that tick (and any others it covers) be
        # skipped and counted, so a slow tool is never polled back to back. Each
        # driver bounds a single read with its own request timeout.
        interval = group.interval_s
        start = time.monotonic()
        tick = 0
        while True:
            batch = await self.read_group(group)
            self.stats.polls += 1
            self.stats.readings += batch.size
            self.stats.last_poll_ns = time.time_ns()
            await sink(batch)

            now = time.monotonic()
            next_tick = int((now - start) // interval) + 1
            skipped = next_tick - tick - 1
            if skipped > 0:
                self.stats.overruns += skipped
                overruns = self.stats.per_group_overruns
                overruns[group.name] = overruns.get(group.name, 0) + skipped
            tick = next_tick
            await asyncio.sleep(max(0.0, start + tick * interval - time.monotonic()))
