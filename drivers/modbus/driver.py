"""The ``modbus`` driver: a tool's registers over Modbus TCP or RTU.

Each poll group is planned once (see :mod:`drivers.modbus.plan`); a poll sends the
plan's requests, gathers the replies into one buffer and decodes it into the batch
with numpy. An exception reply marks only its request's tags bad
(``BAD_DEVICE``; the code is kept in :attr:`ModbusDriver.exception_codes` and
logged when it changes). A unit that stops answering while others on the same
link still do is answered for with exception 0x0B (gateway target device failed
to respond; see :mod:`drivers.modbus.silence`), so only its tags turn bad. Any
other timeout, a reset or a reply out of step ends the session: the supervisor
marks the tool's tags bad and reconnects with the shared backoff.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import structlog

from drivers.base import (
    ConnectionLost,
    Driver,
    DriverSettings,
    PollGroup,
    TagSource,
)
from drivers.batch import ReadingBatch, UInt8Array
from drivers.modbus.config import ModbusSettings, ModbusSource
from drivers.modbus.errors import exception_name
from drivers.modbus.plan import GroupPlan, PlanLimits, Request, plan_group

__all__ = ["ModbusDriver"]

log = structlog.get_logger(__name__)


class _Link(Protocol):
    async def open(self, timeout_s: float) -> None: ...

    async def read(
        self, requests: Sequence[Request], buffer: bytearray
    ) -> UInt8Array: ...

    def close(self) -> None: ...


class ModbusDriver(Driver):
    """A tool read over Modbus TCP or RTU (see the module doc).

    Raises:
        TypeError: ``settings`` or a source is not of this driver's schema.
        ValueError: a tag is wider than one request may read.
    """

    kind: ClassVar[str] = "modbus"
    Settings: ClassVar[type[DriverSettings]] = ModbusSettings
    Source: ClassVar[type[TagSource]] = ModbusSource

    def __init__(
        self,
        tool: str,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> None:
        super().__init__(tool, settings, tag_names, sources, groups)
        self._config: ModbusSettings = settings
        self._plans = {
            group.name: _plan(self._config, [sources[t] for t in group.tags])
            for group in groups
            if group.mode == "read"
        }
        self._buffers = {
            name: bytearray(plan.buffer_size) for name, plan in self._plans.items()
        }
        self._link: _Link | None = None
        self.exception_codes = np.zeros(len(self.tag_names), dtype=np.uint8)
        """Per tag, the exception code of its last read (0 = read fine)."""

    @classmethod
    def check(
        cls,
        settings: Any,
        tag_names: Sequence[str],
        sources: Sequence[Any],
        groups: Sequence[PollGroup],
    ) -> list[tuple[str, str]]:
        """Add a ``(key path, rule)`` pair for each tag too wide for one request."""
        issues = super().check(settings, tag_names, sources, groups)
        if not isinstance(settings, ModbusSettings):
            return issues
        for i, item in enumerate(sources):
            # The loader hands over whole tag entries; the sources are inside.
            source = getattr(item, "source", item)
            if not isinstance(source, ModbusSource):
                continue
            bits = source.data_type == "bool"
            limit = settings.max_bits if bits else settings.max_registers
            if source.width > limit:
                unit = "bits" if bits else "registers"
                issues.append(
                    (
                        f"tags[{i}].source.length",
                        f"{source.width} {unit} exceed the {limit} one request may "
                        "read (driver.max_registers)",
                    )
                )
        return issues

    def plan(self, group: str) -> GroupPlan:
        """Return the request plan of poll group ``group``."""
        return self._plans[group]

    async def connect(self) -> None:
        """Open the TCP connection or the serial port.

        Raises:
            ConnectFailed: it could not be opened within ``connect_timeout_s``.
        """
        config = self._config
        units = {r.unit_id for plan in self._plans.values() for r in plan.requests}
        link: _Link
        if config.transport == "tcp":
            from drivers.modbus.tcp import TcpLink

            link = TcpLink(
                self.tool,
                config.host,
                config.port,
                config.request_timeout_s,
                config.concurrency,
                units,
            )
        else:
            from drivers.modbus.rtu import RtuLink

            link = RtuLink(self.tool, config, units)
        await link.open(config.connect_timeout_s)
        self._link = link

    async def read_group(self, group: PollGroup) -> ReadingBatch:
        """Read one poll of ``group``.

        Raises:
            ConnectionLost: not connected, or the link failed during the poll.
        """
        link = self._link
        if link is None:
            raise ConnectionLost(self.tool, "read without an open connection")
        plan = self._plans[group.name]
        buffer = self._buffers[group.name]
        now_ns = time.time_ns()
        exceptions = await link.read(plan.requests, buffer)
        values, quality = plan.decoder.decode(
            np.frombuffer(buffer, dtype=np.uint8), exceptions
        )
        self._note_exceptions(group, plan, exceptions)
        return ReadingBatch(
            tool=self.tool,
            group=group.name,
            timestamps=np.array([now_ns], dtype=np.int64),
            tags=group.tag_index,
            values=values,
            quality=quality,
        )

    def tag_faults(self) -> dict[str, str]:
        """Tags whose last read was answered with an exception, and its code."""
        return {
            self.tag_names[t]: f"exception 0x{code:02X} {exception_name(code)}"
            for t in np.flatnonzero(self.exception_codes).tolist()
            for code in (int(self.exception_codes[t]),)
        }

    async def close(self) -> None:
        """Close the connection; never raises."""
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _note_exceptions(
        self, group: PollGroup, plan: GroupPlan, exceptions: UInt8Array
    ) -> None:
        codes = exceptions[plan.decoder.request_of]
        tags = group.tag_index
        before = self.exception_codes[tags]
        if np.array_equal(before, codes):
            return
        self.exception_codes[tags] = codes
        for r in np.flatnonzero(exceptions):
            request = plan.requests[int(r)]
            code = int(exceptions[r])
            if np.all(before[plan.decoder.request_of == r] == code):
                continue
            log.warning(
                "modbus_exception_reply",
                tool=self.tool,
                group=group.name,
                request=request.describe(),
                code=code,
                reason=exception_name(code),
            )


def _plan(settings: ModbusSettings, sources: Sequence[ModbusSource]) -> GroupPlan:
    limits = PlanLimits(
        max_registers=settings.max_registers,
        max_bits=settings.max_bits,
        max_gap=settings.max_gap,
        max_gap_bits=settings.max_gap_bits,
    )
    return plan_group(sources, settings.unit_id, settings.order, limits)
