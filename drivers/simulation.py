"""Protocol simulators: a simulated tool served over a real protocol socket.

A simulation file describes a tool's behaviour without any protocol in it::

    seed = 7
    step_s = 0.1                      # sampling grid that keys the noise

    [signals.chamber_pressure]        # one SignalSpec per tag name
    level = 12.0
    noise = 0.05

    [[faults]]                        # FaultSpec entries, as the simulated driver's
    kind = "step"
    tag = "chamber_pressure"
    at_s = 20
    duration_s = 8
    magnitude = 1.5

A protocol simulator (:class:`ToolSimulator`) serves those signals in the shape a
real tool file expects: the Modbus simulator lays them out at the tag map's
registers, the OPC UA one as the configured nodes, the HSMS one as status variables.
The gateway's driver then reads them across a real socket exactly as it would read
the tool. Simulation time starts when the simulator starts.
"""

from __future__ import annotations

import abc
import importlib
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.base import DriverSettings
from drivers.batch import Float64Array, UInt8Array
from drivers.signals import FaultSpec, SignalGenerator, SignalSpec

if TYPE_CHECKING:
    from gateway.config.models import ToolConfig

__all__ = [
    "SIMULATOR_KINDS",
    "Simulation",
    "SimulationError",
    "ToolSimulator",
    "load_simulation",
    "simulator_class",
]

_SIMULATORS: dict[str, str] = {
    "hsms": "drivers.secs.simulator:HsmsSimulator",
    "modbus": "drivers.modbus.simulator:ModbusSimulator",
    "opcua": "drivers.opcua.simulator:OpcUaSimulator",
}
"""Driver kind -> ``module:Class`` of the simulator that speaks its protocol."""

SIMULATOR_KINDS = tuple(sorted(_SIMULATORS))


class SimulationError(ValueError):
    """A simulation file is unreadable or invalid; the message is one line."""


class Simulation(BaseModel):
    """A simulated tool: seeded signals per tag name, and scheduled faults."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seed: int = 0
    step_s: float = Field(default=0.1, gt=0, le=3600)
    signals: dict[str, SignalSpec] = Field(min_length=1)
    faults: tuple[FaultSpec, ...] = ()

    def generator(self, tag_names: tuple[str, ...] | None = None) -> SignalGenerator:
        """Return a generator of ``tag_names`` (default: every signal, in order).

        Raises:
            SimulationError: a name has no signal, or a fault names an unknown tag.
        """
        names = tuple(self.signals) if tag_names is None else tag_names
        missing = [name for name in names if name not in self.signals]
        if missing:
            raise SimulationError(f"no signal for tag(s) {', '.join(missing)}")
        try:
            return SignalGenerator(
                self.seed,
                names,
                [self.signals[name] for name in names],
                self.faults,
                step_s=self.step_s,
            )
        except ValueError as exc:
            raise SimulationError(str(exc)) from None


def load_simulation(path: Path) -> Simulation:
    """Read and validate a simulation file.

    Raises:
        SimulationError: ``path: key.path: rule`` for the first problem found.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SimulationError(f"{path}: {exc}") from None
    # TOML arrays arrive as lists; the strict schema takes the faults as a tuple.
    if isinstance(document.get("faults"), list):
        document["faults"] = tuple(document["faults"])
    try:
        return Simulation.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(file)"
        raise SimulationError(f"{path}: {where}: {first['msg']}") from None


class ToolSimulator(abc.ABC):
    """A tool's protocol endpoint on ``host``, serving a :class:`Simulation`.

    Subclasses set ``kind`` (the driver kind they answer) and implement
    :meth:`start`, :meth:`stop` and :meth:`driver_settings`. ``port=0`` binds an
    ephemeral port; :attr:`port` is the bound one after :meth:`start`.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        tool: ToolConfig,
        simulation: Simulation,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tool = tool
        self.simulation = simulation
        self.host = host
        self.port = port
        self.generator = simulation.generator(tuple(tag.name for tag in tool.tags))
        self._start = time.monotonic()

    @abc.abstractmethod
    async def start(self) -> None:
        """Start serving; return once the endpoint accepts connections."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving and drop every connection; must not raise."""

    @abc.abstractmethod
    def driver_settings(self) -> DriverSettings:
        """Return the tool's ``[driver]`` settings pointed at this simulator."""

    def elapsed_s(self) -> float:
        """Seconds of simulation time (since the simulator was created)."""
        return time.monotonic() - self._start

    def sample_now(
        self, tags: np.ndarray[Any, np.dtype[np.intp]] | None = None
    ) -> tuple[Float64Array, UInt8Array]:
        """Return the current raw values and quality of ``tags`` (default all), 1-D."""
        values, quality = self.generator.sample(np.array([self.elapsed_s()]), tags=tags)
        return values[0], quality[0]

    def disconnected(self) -> bool:
        """Whether a scheduled ``disconnect`` fault is on now."""
        return self.generator.disconnect_end(self.elapsed_s()) is not None

    async def __aenter__(self) -> ToolSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def simulator_class(kind: str) -> type[ToolSimulator]:
    """Return the simulator class for driver ``kind``; ``KeyError`` if none."""
    module_name, _, class_name = _SIMULATORS[kind].partition(":")
    cls: type[ToolSimulator] = getattr(importlib.import_module(module_name), class_name)
    return cls
