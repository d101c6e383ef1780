"""Builders of OPC UA tools, simulators and drivers for the OPC UA tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from drivers.base import EquipmentEvent
from drivers.batch import ReadingBatch
from drivers.opcua import OpcUaDriver, OpcUaSettings, OpcUaSource
from drivers.opcua.simulator import OpcUaSimulator
from drivers.signals import SignalSpec
from drivers.simulation import Simulation
from gateway.config.models import PollGroupConfig, TagConfig, ToolConfig
from gateway.pipeline import tool_driver

WAIT_S = 10.0


def opcua_tool(
    tags: dict[str, dict[str, Any]],
    groups: Sequence[tuple[str, str, float, Sequence[str]]],
    tool_id: str = "litho-test",
    **driver: Any,
) -> ToolConfig:
    """Return a tool file of ``tags`` (name -> source table) in ``groups``.

    ``groups`` are ``(name, mode, interval_s, tag names)``; ``driver`` holds the
    ``[driver]`` keys besides ``kind`` and ``endpoint`` (security defaults to None).
    """
    driver.setdefault("security_policy", "None")
    settings = OpcUaSettings(
        kind="opcua", endpoint="opc.tcp://127.0.0.1:4840", **driver
    )
    return ToolConfig(
        id=tool_id,
        driver=settings,
        poll_groups=tuple(
            PollGroupConfig(
                name=name, mode=mode, interval_s=interval, tags=tuple(names)
            )  # type: ignore[arg-type]
            for name, mode, interval, names in groups
        ),
        tags=tuple(
            TagConfig(name=name, source=OpcUaSource(**source))
            for name, source in tags.items()
        ),
    )


def flat_simulation(
    tool: ToolConfig, step_s: float = 0.05, noise: float = 0.0
) -> Simulation:
    """Return a noiseless simulation: tag ``i`` holds ``10 * (i + 1)``."""
    return Simulation(
        seed=1,
        step_s=step_s,
        signals={
            tag.name: SignalSpec(level=10.0 * (i + 1), noise=noise)
            for i, tag in enumerate(tool.tags)
        },
    )


def driver_for(tool: ToolConfig, simulator: OpcUaSimulator) -> OpcUaDriver:
    """Return a driver of ``tool`` pointed at ``simulator``."""
    return tool_driver(OpcUaDriver, tool, simulator.driver_settings())


class Collector:
    """A sink that keeps every batch, and lets a test wait for some."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self.events: list[EquipmentEvent] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, item: ReadingBatch | EquipmentEvent) -> None:
        if isinstance(item, EquipmentEvent):
            self.events.append(item)
        else:
            self.batches.append(item)
        async with self._arrived:
            self._arrived.notify_all()

    def of(self, group: str) -> list[ReadingBatch]:
        """Return the batches of ``group`` so far."""
        return [b for b in self.batches if b.group == group]

    async def wait_for(self, group: str, count: int, timeout_s: float = WAIT_S) -> None:
        """Wait until ``count`` batches of ``group`` arrived (``TimeoutError`` else)."""
        await self.wait_until(lambda: len(self.of(group)) >= count, timeout_s)

    async def wait_until(
        self, condition: Callable[[], bool], timeout_s: float = WAIT_S
    ) -> None:
        """Wait until ``condition()`` holds after an arrival (else ``TimeoutError``)."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(condition)


async def read_once(driver: OpcUaDriver) -> ReadingBatch:
    """Connect ``driver``, read its first poll group once, and close it."""
    await driver.connect()
    try:
        return await driver.read_group(driver.groups[0])
    finally:
        await driver.close()
