"""The ``[driver]`` table and the per-tag ``source`` table of a Modbus tool."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from drivers.base import DriverSettings, TagSource
from drivers.modbus.codec import (
    BIT_TABLES,
    REGISTER_COUNT,
    DataType,
    Order,
    Table,
)

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "ModbusSettings",
    "ModbusSource",
    "modicon_reference",
]

# Protocol limits of one read (Modbus Application Protocol v1.1b3, 6.1-6.4).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_ADDRESS = 65535
MAX_UNIT_ID = 255
MAX_CONCURRENCY = 64
MAX_TIMEOUT_S = 60.0
MAX_INTER_FRAME_S = 1.0

# Modicon references: the leading digit names the table, the rest is 1-based.
_MODICON_TABLES: dict[int, Table] = {
    0: "coil",
    1: "discrete_input",
    3: "input",
    4: "holding",
}
_FIVE_DIGIT_LIMIT = 100_000  # 5-digit form: 4xxxx (1..9999)
_FIVE_DIGIT_SPAN = 10_000
_SIX_DIGIT_SPAN = 100_000  # 6-digit form: 4xxxxx (1..65536)


class ModbusSettings(DriverSettings):
    """The ``[driver]`` table of a Modbus tool.

    Attributes:
        kind: ``"modbus"``.
        transport: ``"tcp"`` (Modbus TCP) or ``"rtu"`` (serial line).
        host, port: the TCP endpoint (``transport = "tcp"``).
        device, baudrate, parity, stopbits, bytesize: the serial line
            (``transport = "rtu"``); parity ``"N"``, ``"E"`` or ``"O"``.
        inter_frame_s: silence kept between RTU frames, seconds; default 3.5
            character times (1.75 ms above 19200 baud, as the serial line spec
            says).
        unit_id: the unit id of tags that do not name their own.
        order: byte/word order of tags that do not name their own.
        request_timeout_s: how long one request may wait for its reply.
        connect_timeout_s: how long opening the connection may take.
        concurrency: requests in flight at once on the connection (TCP only;
            many devices take one at a time).
        max_gap: unused registers a merged request may span between two tags.
        max_gap_bits: the same for coils and discrete inputs, in bits.
        max_registers, max_bits: the most one request reads (devices may take
            fewer than the protocol's 125 registers / 2000 bits).
    """

    kind: Literal["modbus"]
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = ""
    port: int = Field(default=502, ge=1, le=65535)
    device: str = ""
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    inter_frame_s: float | None = Field(default=None, ge=0, le=MAX_INTER_FRAME_S)
    unit_id: int = Field(default=1, ge=0, le=MAX_UNIT_ID)
    order: Order = "ABCD"
    request_timeout_s: float = Field(default=1.0, gt=0, le=MAX_TIMEOUT_S)
    connect_timeout_s: float = Field(default=3.0, gt=0, le=MAX_TIMEOUT_S)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    max_gap: int = Field(default=16, ge=0, le=MAX_READ_REGISTERS - 2)
    max_gap_bits: int = Field(default=256, ge=0, le=MAX_READ_BITS - 2)
    max_registers: int = Field(default=MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)
    max_bits: int = Field(default=MAX_READ_BITS, ge=1, le=MAX_READ_BITS)

    @model_validator(mode="after")
    def _transport_complete(self) -> ModbusSettings:
        if self.transport == "tcp" and not self.host:
            raise ValueError("host is required for transport tcp")
        if self.transport == "rtu" and not self.device:
            raise ValueError("device (the serial port) is required for transport rtu")
        if self.transport == "rtu" and self.concurrency != 1:
            raise ValueError("concurrency must be 1 on a serial line (rtu)")
        return self


class ModbusSource(TagSource):
    """Where a tag lives on a Modbus device (its ``source`` table).

    Give either ``address`` (0-based, as on the wire) with ``table``, or
    ``modicon``: a 1-based reference whose leading digit names the table
    (``40001`` or ``400001`` is holding register 0, ``30001`` input register 0,
    ``10001`` discrete input 0, ``1`` coil 0).

    Attributes:
        table: ``holding``, ``input``, ``coil`` or ``discrete_input``.
        address: 0-based register (or bit) address.
        modicon: 1-based reference instead of ``table`` and ``address``.
        unit_id: the device's unit id; default the tool's ``unit_id``.
        type: data type; default ``bool`` on coils and discrete inputs,
            ``uint16`` on registers.
        bit: for ``type = "bit"``, the bit of the register, 0 = least significant.
        length: for ``type = "string"``, its length in registers.
        order: byte/word order; default the tool's ``order``.
    """

    table: Table = "holding"
    address: int = Field(ge=0, le=MAX_ADDRESS)
    modicon: int | None = Field(default=None, ge=1)
    unit_id: int | None = Field(default=None, ge=0, le=MAX_UNIT_ID)
    type: DataType | None = None
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS)
    order: Order | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_modicon(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("modicon") is None:
            return data
        if "address" in data or "table" in data:
            raise ValueError("give either modicon or address/table, not both")
        reference = data["modicon"]
        if not isinstance(reference, int) or isinstance(reference, bool):
            return data  # the field's own check reports it
        table, address = modicon_reference(reference)
        return {**data, "table": table, "address": address}

    @model_validator(mode="after")
    def _type_fits_table(self) -> ModbusSource:
        kind = self.data_type
        if self.table in BIT_TABLES and kind != "bool":
            raise ValueError(f"a {self.table} holds a bool, not {kind}")
        if self.table not in BIT_TABLES and kind == "bool":
            raise ValueError(
                f'a {self.table} register is not a bool: use type = "bit" with bit = n'
            )
        if (kind == "bit") != (self.bit is not None):
            raise ValueError('bit is given exactly when type = "bit"')
        if (kind == "string") != (self.length is not None):
            raise ValueError('length is given exactly when type = "string"')
        if self.address + self.width - 1 > MAX_ADDRESS:
            raise ValueError(f"the tag runs past address {MAX_ADDRESS}")
        return self

    @property
    def data_type(self) -> DataType:
        """The tag's data type, with the table's default filled in."""
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    @property
    def width(self) -> int:
        """Registers (or bits, on bit tables) the tag takes."""
        kind = self.data_type
        if kind == "bool":
            return 1
        if kind == "string":
            return self.length or 1
        return REGISTER_COUNT[kind]


def modicon_reference(reference: int) -> tuple[Table, int]:
    """Return ``(table, 0-based address)`` of a Modicon reference such as 40001.

    Raises:
        ValueError: the leading digit names no table, or the number is 0.
    """
    if reference < _FIVE_DIGIT_SPAN:
        digit, number = 0, reference
    elif reference < _FIVE_DIGIT_LIMIT:
        digit, number = divmod(reference, _FIVE_DIGIT_SPAN)
    else:
        digit, number = divmod(reference, _SIX_DIGIT_SPAN)
    table = _MODICON_TABLES.get(digit)
    if table is None or number < 1 or number > MAX_ADDRESS + 1:
        raise ValueError(
            f"modicon {reference} is not a reference such as 40001 (holding), "
            "30001 (input), 10001 (discrete input) or 1 (coil)"
        )
    return table, number - 1
