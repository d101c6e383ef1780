"""Building blocks of the Modbus tests: tool files, simulations, servers, drivers.

A tool is written as a real tool file and loaded with the real loader, so every
test also goes through the driver's schemas. Servers listen on 127.0.0.1 with an
ephemeral port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.simulator import ModbusSimulator
from drivers.simulation import Simulation
from gateway.config import load_config
from gateway.config.models import ToolConfig
from gateway.pipeline import tool_driver

__all__ = [
    "LOOPBACK",
    "RegisterServer",
    "driver_of",
    "load_tool",
    "served",
    "simulation_of",
]

LOOPBACK = "127.0.0.1"
MAIN = '[gateway]\nsite = "fab-t"\nid = "gw-t"\n'


def load_tool(directory: Path, text: str, name: str = "mb-01") -> ToolConfig:
    """Write ``text`` as ``tools/<name>.toml`` in ``directory`` and load it."""
    folder = directory / f"config-{name}"
    (folder / "tools").mkdir(parents=True, exist_ok=True)
    (folder / "gateway.toml").write_text(MAIN)
    (folder / "tools" / f"{name}.toml").write_text(text)
    [tool] = load_config(folder).tools
    return tool


def simulation_of(levels: dict[str, float], **extra: Any) -> Simulation:
    """Return a simulation in which each tag holds a constant ``level``."""
    signals = {name: {"level": level} for name, level in levels.items()}
    return Simulation.model_validate({"signals": signals, **extra})


def driver_of(tool: ToolConfig, settings: Any | None = None) -> ModbusDriver:
    """Return the tool's driver, with ``settings`` in place of the tool's own."""
    return tool_driver(ModbusDriver, tool, settings)


@contextlib.asynccontextmanager
async def served(
    tool: ToolConfig, simulation: Simulation, **options: Any
) -> AsyncIterator[tuple[ModbusSimulator, ModbusDriver]]:
    """Serve ``tool`` from a simulator and yield it with a connected driver."""
    async with ModbusSimulator(tool, simulation, LOOPBACK, 0, **options) as simulator:
        driver = driver_of(tool, simulator.driver_settings())
        await driver.connect()
        try:
            yield simulator, driver
        finally:
            await driver.close()


class RegisterServer:
    """A plain pymodbus server holding given register words (the test oracle)."""

    def __init__(self, holding: Sequence[int], bits: Sequence[bool] = ()) -> None:
        coils = list(bits) + [False] * (-len(bits) % 16) if bits else [False] * 16
        self.device = SimDevice(
            1,
            simdata=(
                [SimData(0, values=coils, datatype=DataType.BITS)],
                [SimData(0, values=coils, datatype=DataType.BITS)],
                [SimData(0, values=list(holding), datatype=DataType.REGISTERS)],
                [SimData(0, values=list(holding), datatype=DataType.REGISTERS)],
            ),
        )
        self.server: ModbusTcpServer | None = None
        self.port = 0

    async def __aenter__(self) -> RegisterServer:
        self.server = ModbusTcpServer(self.device, address=(LOOPBACK, 0))
        await self.server.serve_forever(background=True)
        listener: Any = self.server.transport
        self.port = int(listener.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.server is not None:
            await self.server.shutdown()
            await asyncio.sleep(0)
