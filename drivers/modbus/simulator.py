"""A simulated tool served over Modbus TCP (or RTU) by pymodbus's server.

The tool file's tag map says where each tag lives; the simulation file's signals
say how it moves. :class:`ModbusSimulator` lays every tag at its registers in its
data type and byte/word order, refreshes them from the signal generator whenever
the simulation's sampling step advances, and serves them with pymodbus's
``SimDevice`` datastore (the API that replaces the deprecated server contexts).

Faults can be scripted while it runs: exception replies for a range of
addresses, slow replies, silent units (answered only after ``silence_s``, too late
for any client), and dropped connections; a ``disconnect`` fault of the
simulation file drops and refuses connections during its window. Every request
received is counted per unit id and function code (:attr:`ModbusSimulator.requests`).
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.transaction import TransactionManager

from drivers.base import DriverSettings
from drivers.modbus.codec import (
    BIT_TABLES,
    REGISTER_COUNT,
    IntArray,
    Order,
    Table,
    byte_positions,
    to_canonical,
)
from drivers.modbus.config import ModbusSettings, ModbusSource
from drivers.simulation import Simulation, ToolSimulator

if TYPE_CHECKING:
    from gateway.config.models import ToolConfig

__all__ = ["ExceptionFault", "ModbusSimulator"]

_TABLE_OF_FUNCTION: dict[int, Table] = {
    1: "coil",
    2: "discrete_input",
    3: "holding",
    4: "input",
}
_TABLE_ORDER: tuple[Table, ...] = ("coil", "discrete_input", "holding", "input")
_BITS_PER_REGISTER = 16
# pymodbus needs at least one block per table; a table without tags gets 16 bits
# (or one invalid register) at the top of the address space.
_UNUSED_BIT_BLOCK = 65_520
_REQUEST_LOG_SIZE = 100_000
_PIPELINE_BUFFER_BYTES = 65_536
_STRING_FORMAT = "{:.6g}"
_SILENCE_S = 30.0


@dataclass(slots=True)
class ExceptionFault:
    """Answer reads that touch ``first..last`` of ``table`` with exception ``code``.

    ``None`` for ``unit_id`` or ``table`` matches any; ``times`` bounds how many
    requests it answers (``None``: until cleared).
    """

    code: int
    unit_id: int | None = None
    table: Table | None = None
    first: int = 0
    last: int = 65_535
    times: int | None = None

    def matches(self, unit_id: int, table: Table, address: int, count: int) -> bool:
        """Whether a read of ``count`` at ``address`` falls under this fault."""
        return (
            (self.unit_id is None or self.unit_id == unit_id)
            and (self.table is None or self.table == table)
            and address <= self.last
            and address + count - 1 >= self.first
            and (self.times is None or self.times > 0)
        )


class _TableImage:
    """One table of one unit: its tags' layout and the current register values."""

    def __init__(
        self,
        table: Table,
        columns: list[int],
        sources: list[ModbusSource],
        default_order: Order,
    ) -> None:
        self.table = table
        self.columns = np.array(columns, dtype=np.intp)
        bits = table in BIT_TABLES
        first = min(s.address for s in sources)
        end = max(s.address + s.width for s in sources)
        if bits:
            first -= first % _BITS_PER_REGISTER
            end += -end % _BITS_PER_REGISTER
        self.first = first
        self.size = end - first  # registers, or bits on a bit table
        self.step = -1
        self._bits_at = np.array([s.address - first for s in sources], dtype=np.intp)
        self._typed: list[tuple[str, IntArray, IntArray]] = []
        self._register_bits: list[tuple[int, int, int]] = []  # local, byte, shift
        self._strings: list[tuple[int, int, int, bool]] = []  # local, start, stop, swap
        if not bits:
            self._lay_out_registers(sources, default_order)

    def _lay_out_registers(self, sources: list[ModbusSource], default: Order) -> None:
        typed: dict[tuple[str, Order], list[int]] = {}
        for local, source in enumerate(sources):
            order = source.order or default
            start = 2 * (source.address - self.first)
            kind: str = source.data_type
            if kind == "bit":
                bit = source.bit or 0
                high, low = byte_positions(np.array([start]), 1, order)[0]
                byte = high if bit >= 8 else low
                self._register_bits.append((local, int(byte), bit % 8))
            elif kind == "string":
                stop = start + 2 * source.width
                self._strings.append((local, start, stop, order in ("BADC", "DCBA")))
            else:
                typed.setdefault((kind, order), []).append(local)
        for (kind, order), locals_ in typed.items():
            starts = 2 * (np.array([sources[i].address for i in locals_]) - self.first)
            positions = byte_positions(starts, REGISTER_COUNT[kind], order)
            self._typed.append((kind, np.array(locals_, dtype=np.intp), positions))

    def registers(self, values: npt.NDArray[np.float64]) -> list[int]:
        """Return the table's register words for the tags' ``values``."""
        if self.table in BIT_TABLES:
            bits = np.zeros(self.size, dtype=bool)
            bits[self._bits_at] = np.nan_to_num(values) != 0
            packed = np.packbits(bits, bitorder="little").view("<u2")
            words: list[int] = packed.tolist()
            return words
        image = np.zeros(2 * self.size, dtype=np.uint8)
        for kind, locals_, positions in self._typed:
            image[positions] = to_canonical(values[locals_], kind)
        for local, byte, shift in self._register_bits:
            if np.nan_to_num(values[local]) != 0:
                image[byte] |= np.uint8(1 << shift)
        for local, start, stop, swap in self._strings:
            text = _STRING_FORMAT.format(values[local]).encode("ascii")
            field = np.zeros(stop - start, dtype=np.uint8)
            field[: len(text)] = np.frombuffer(text[: stop - start], dtype=np.uint8)
            if swap:
                field = field.reshape(-1, 2)[:, ::-1].reshape(-1)
            image[start:stop] = field
        return list(image.view(">u2").tolist())

    def block(self) -> SimData:
        """Return the pymodbus data block serving this table."""
        if self.table in BIT_TABLES:
            return SimData(
                self.first, values=[False] * self.size, datatype=DataType.BITS
            )
        return SimData(
            self.first, count=self.size, values=0, datatype=DataType.REGISTERS
        )


class _PipelinedHandler(ServerRequestHandler):
    """A server connection that answers every request of a pipelined burst.

    pymodbus 3.16's server decodes one frame per chunk received and answers the
    last decoded request only, so a client with several requests in flight (the
    driver's ``concurrency``) loses replies. This handler decodes every frame of
    a chunk and answers each one, in its own task, possibly out of order, which
    Modbus TCP allows (replies are matched by transaction id). pymodbus's server
    also drops its receive buffer past 260 bytes (21 pipelined reads); this one
    takes up to 64 KiB.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)  # type: ignore[no-untyped-call]
        self._answering: set[asyncio.Task[None]] = set()
        # pymodbus drops everything received once more than one frame's worth
        # (260 bytes) is waiting: room for a full window of requests instead.
        self.max_buffer_size = _PIPELINE_BUFFER_BYTES

    def callback_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                cut = TransactionManager.callback_data(self, data[used:], addr)
            except ModbusIOException:
                # The parent answers an undecodable frame with an exception.
                return super().callback_data(data[used:], addr) + used
            if cut == 0:
                break
            used += cut
            if self.last_pdu is not None:
                task = self.loop.create_task(self._answer(self.last_pdu, addr))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        self.last_pdu = None
        return used

    async def _answer(self, request: ModbusPDU, addr: tuple[str, int] | None) -> None:
        try:
            response = await request.datastore_update(
                self.server.context, request.dev_id
            )
        except NoSuchIdException:
            response = ExceptionResponse(
                request.function_code, ExcCodes.GATEWAY_NO_RESPONSE
            )
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        if self.transport is not None:
            self.server_send(response, addr)  # type: ignore[no-untyped-call]


class _PipelinedTcpServer(ModbusTcpServer):
    """pymodbus's TCP server with connections that answer pipelined requests."""

    def callback_new_connection(self) -> ServerRequestHandler:
        return _PipelinedHandler(
            self, self.trace_packet, self.trace_pdu, self.trace_connect
        )


class ModbusSimulator(ToolSimulator):
    """Serve a simulated tool's tag map over Modbus TCP, or RTU on ``serial_device``.

    Args:
        tool: the tool file (a ``modbus`` tool): its tags' sources are the map.
        simulation: the signals and faults.
        host, port: where to listen (TCP); ``port=0`` picks a free one.
        serial_device: serve Modbus RTU on this serial port instead of TCP.
        baudrate: the serial line's speed.

    Raises:
        TypeError: the tool is not a ``modbus`` tool.
        SimulationError: a tag has no signal in the simulation.
    """

    kind: ClassVar[str] = "modbus"

    def __init__(
        self,
        tool: ToolConfig,
        simulation: Simulation,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        serial_device: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        super().__init__(tool, simulation, host, port)
        settings = tool.driver
        if not isinstance(settings, ModbusSettings):
            raise TypeError(f"{tool.id}: the Modbus simulator needs a modbus tool")
        self.settings = settings
        self.serial_device = serial_device
        self.baudrate = baudrate
        self.requests: Counter[tuple[int, int]] = Counter()
        """Requests received, per (unit id, function code)."""
        self.request_log: deque[tuple[int, int, int, int]] = deque(
            maxlen=_REQUEST_LOG_SIZE
        )
        """The latest requests: (unit id, function code, address, count)."""
        self.exception_faults: list[ExceptionFault] = []
        self.reply_delay_s = 0.0
        self.silent_units: set[int] = set()
        """Unit ids that do not answer: on TCP their replies are held back
        ``silence_s``; on a serial line they never come (a late frame there
        would collide with the next request's)."""
        self.silence_s = _SILENCE_S
        self._images = self._lay_out(tool)
        self._server: ModbusBaseServer | None = None

    def _lay_out(self, tool: ToolConfig) -> dict[tuple[int, Table], _TableImage]:
        grouped: dict[tuple[int, Table], list[int]] = {}
        for column, tag in enumerate(tool.tags):
            source: ModbusSource = tag.source
            unit = self.settings.unit_id if source.unit_id is None else source.unit_id
            grouped.setdefault((unit, source.table), []).append(column)
        return {
            key: _TableImage(
                key[1],
                columns,
                [tool.tags[c].source for c in columns],
                self.settings.order,
            )
            for key, columns in grouped.items()
        }

    def _devices(self) -> list[SimDevice]:
        devices = []
        for unit in sorted({unit for unit, _ in self._images}):
            blocks: list[list[SimData]] = []
            for table in _TABLE_ORDER:
                image = self._images.get((unit, table))
                if image is not None:
                    blocks.append([image.block()])
                elif table in BIT_TABLES:
                    blocks.append(
                        [
                            SimData(
                                _UNUSED_BIT_BLOCK,
                                values=[False] * 16,
                                datatype=DataType.BITS,
                            )
                        ]
                    )
                else:
                    blocks.append([SimData(0, datatype=DataType.INVALID)])
            devices.append(
                SimDevice(
                    unit,
                    simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                    action=functools.partial(self._on_request, unit),
                )
            )
        return devices

    async def start(self) -> None:
        """Start serving; returns once the port (or serial device) is open.

        Raises:
            OSError: the address or device cannot be opened.
        """
        server: ModbusBaseServer
        if self.serial_device is not None:
            server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=self.serial_device,
                baudrate=self.baudrate,
                trace_pdu=self._trace_pdu,
                ignore_missing_devices=True,  # a silent unit sends nothing
            )
        else:
            server = _PipelinedTcpServer(
                self._devices(),
                address=(self.host, self.port),
                trace_pdu=self._trace_pdu,
                trace_connect=self._trace_connect,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self.serial_device is None:
            listener: Any = server.transport
            self.port = int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def driver_settings(self) -> DriverSettings:
        """Return the tool's ``[driver]`` settings pointed at this simulator."""
        if self.serial_device is not None:
            update: dict[str, Any] = {
                "transport": "rtu",
                "device": self.serial_device,
                "baudrate": self.baudrate,
                "concurrency": 1,
            }
        else:
            update = {"transport": "tcp", "host": self.host, "port": self.port}
        return self.settings.model_copy(update=update)

    # scripted faults

    def inject_exception(
        self,
        code: int,
        *,
        table: Table | None = None,
        address: int = 0,
        count: int = 65_536,
        unit_id: int | None = None,
        times: int | None = None,
    ) -> ExceptionFault:
        """Answer reads touching ``count`` items from ``address`` with ``code``."""
        fault = ExceptionFault(
            code, unit_id, table, address, address + count - 1, times
        )
        self.exception_faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every scripted fault: exceptions, reply delay, silent units."""
        self.exception_faults.clear()
        self.reply_delay_s = 0.0
        self.silent_units.clear()

    def drop_connections(self) -> int:
        """Close every client connection now; return how many were open."""
        server = self._server
        if server is None:
            return 0
        connections = list(server.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)

    # pymodbus callbacks

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests[(pdu.dev_id, pdu.function_code)] += 1
            self.request_log.append(
                (pdu.dev_id, pdu.function_code, pdu.address, pdu.count)
            )
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        if connected and self.disconnected():
            self.drop_connections()

    async def _on_request(
        self,
        unit_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the tool is read-only
        if self.disconnected():
            self.drop_connections()
            return ExcCodes.DEVICE_FAILURE
        for fault in self.exception_faults:
            if fault.matches(unit_id, table, address, count):
                if fault.times is not None:
                    fault.times -= 1
                return ExcCodes(fault.code)
        if unit_id in self.silent_units:
            if self.serial_device is not None:
                raise NoSuchIdException(f"unit {unit_id} is silent")
            await asyncio.sleep(self.silence_s)
        if self.reply_delay_s > 0:
            await asyncio.sleep(self.reply_delay_s)
        self._refresh(unit_id, table, registers)
        return None

    def _refresh(self, unit_id: int, table: Table, registers: list[int]) -> None:
        image = self._images.get((unit_id, table))
        if image is None:
            return
        step = round(self.elapsed_s() / self.simulation.step_s)
        if step == image.step:
            return
        image.step = step
        values, _ = self.sample_now(image.columns)
        words = image.registers(values)
        registers[: len(words)] = words
