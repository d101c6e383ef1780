"""Request planning: a poll group's tags merged into the fewest Modbus reads.

Per unit id and table, tags are sorted by address and merged greedily into one
read while the read stays within the protocol limit (125 registers, 2000 bits, or
the device's own lower limit) and the unused span between two tags is at most the
configured gap. Reading a gap costs a few bytes; a request costs a round trip.

The plan is made once per poll group when the driver is built (so at start and on
reload), never per poll. It also lays the poll's responses end to end in one byte
buffer and holds a :class:`Decoder` that turns that buffer into the batch columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.batch import BAD_DEVICE, GOOD, Float64Array, UInt8Array
from drivers.modbus.codec import (
    BIT_TABLES,
    REGISTER_COUNT,
    IntArray,
    Order,
    Table,
    byte_positions,
    from_canonical,
)
from drivers.modbus.config import ModbusSource

__all__ = [
    "FUNCTION_CODES",
    "Decoder",
    "GroupPlan",
    "PlanLimits",
    "Request",
    "TagSpan",
    "plan_group",
    "plan_requests",
]

# Read function codes per table.
FUNCTION_CODES: dict[str, int] = {
    "coil": 1,
    "discrete_input": 2,
    "holding": 3,
    "input": 4,
}
_BITS_PER_BYTE = 8


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """How far requests may be merged (see :class:`ModbusSettings`)."""

    max_registers: int = 125
    max_bits: int = 2000
    max_gap: int = 16
    max_gap_bits: int = 256


@dataclass(frozen=True, slots=True)
class TagSpan:
    """What one tag of a group reads: ``count`` registers (or bits) at ``address``."""

    column: int
    unit_id: int
    table: Table
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Request:
    """One read on the wire, and where its response goes in the poll's buffer.

    Attributes:
        unit_id, table, address, count: the read (``count`` registers or bits).
        offset: first byte of the response data in the poll's buffer.
    """

    unit_id: int
    table: Table
    address: int
    count: int
    offset: int = 0

    @property
    def function_code(self) -> int:
        """The read's Modbus function code (1 to 4)."""
        return FUNCTION_CODES[self.table]

    @property
    def byte_count(self) -> int:
        """Bytes of data in the response (the PDU's byte count field)."""
        if self.table in BIT_TABLES:
            return (self.count + _BITS_PER_BYTE - 1) // _BITS_PER_BYTE
        return 2 * self.count

    def describe(self) -> str:
        """Return a one-line description for messages: unit, table, range."""
        last = self.address + self.count - 1
        return f"unit {self.unit_id} {self.table} {self.address}..{last}"


def plan_requests(
    spans: Sequence[TagSpan], limits: PlanLimits
) -> tuple[list[Request], IntArray, IntArray]:
    """Merge ``spans`` into requests.

    Returns:
        The requests (with buffer offsets laid end to end), and per span (in the
        order given) the index of its request and its start within it (registers
        or bits from the request's address).

    Raises:
        ValueError: one tag alone is wider than a request may be.
    """
    request_of = np.zeros(len(spans), dtype=np.intp)
    start_in = np.zeros(len(spans), dtype=np.intp)
    requests: list[Request] = []
    offset = 0
    keys = sorted({(span.unit_id, span.table) for span in spans})
    for unit_id, table in keys:
        bits = table in BIT_TABLES
        limit = limits.max_bits if bits else limits.max_registers
        gap = limits.max_gap_bits if bits else limits.max_gap
        members = sorted(
            (
                i
                for i, s in enumerate(spans)
                if (s.unit_id, s.table) == (unit_id, table)
            ),
            key=lambda i: (spans[i].address, spans[i].count),
        )
        first = end = -1
        pending: list[int] = []
        for i in members:
            span = spans[i]
            if span.count > limit:
                raise ValueError(
                    f"a tag of {span.count} at {table} {span.address} exceeds the "
                    f"{limit} a request may read"
                )
            new_end = max(end, span.address + span.count)
            if pending and span.address - end <= gap and new_end - first <= limit:
                end = new_end
                pending.append(i)
                continue
            if pending:
                _assign(spans, pending, request_of, start_in, len(requests), first)
                offset = _close(requests, unit_id, table, first, end, offset)
            first, end, pending = span.address, span.address + span.count, [i]
        if pending:
            _assign(spans, pending, request_of, start_in, len(requests), first)
            offset = _close(requests, unit_id, table, first, end, offset)
    return requests, request_of, start_in


def _assign(
    spans: Sequence[TagSpan],
    members: list[int],
    request_of: IntArray,
    start_in: IntArray,
    request: int,
    first: int,
) -> None:
    for i in members:
        request_of[i] = request
        start_in[i] = spans[i].address - first


def _close(
    requests: list[Request],
    unit_id: int,
    table: Table,
    first: int,
    end: int,
    offset: int,
) -> int:
    request = Request(unit_id, table, first, end - first, offset)
    requests.append(request)
    return offset + request.byte_count


@dataclass(frozen=True, slots=True)
class _TypedColumns:
    """Columns of one data type and byte order, and their bytes in the buffer."""

    data_type: str
    columns: IntArray
    positions: IntArray  # (k, width) canonical byte positions


@dataclass(frozen=True, slots=True)
class _BitColumns:
    """Columns read as single bits: the byte each is in and its shift."""

    columns: IntArray
    byte: IntArray
    shift: npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class _StringColumns:
    """A string column: its bytes in the buffer."""

    column: int
    start: int
    stop: int
    swap_bytes: bool


class Decoder:
    """Turns a poll's response buffer into the group's values and quality.

    Built once per group from the plan; :meth:`decode` is a handful of numpy
    gathers whatever the number of tags. A string tag is read as ASCII text and
    its value is the number the text spells (NaN, with ``BAD_DEVICE``, if none).
    """

    def __init__(
        self,
        typed: list[_TypedColumns],
        bits: _BitColumns,
        strings: list[_StringColumns],
        request_of: IntArray,
        size: int,
    ) -> None:
        self._typed = typed
        self._bits = bits
        self._strings = strings
        self.request_of = request_of
        self.size = size

    def decode(
        self, buffer: npt.NDArray[np.uint8], exceptions: UInt8Array
    ) -> tuple[Float64Array, UInt8Array]:
        """Return ``(1, k)`` values and quality of one poll.

        Args:
            buffer: the poll's response bytes, laid out as the plan says.
            exceptions: per request, the Modbus exception code (0 = answered).
        """
        values = np.empty(self.size, dtype=np.float64)
        for typed in self._typed:
            values[typed.columns] = from_canonical(
                buffer[typed.positions], typed.data_type
            )
        bits = self._bits
        if bits.columns.size:
            values[bits.columns] = (buffer[bits.byte] >> bits.shift) & 1
        failed = exceptions[self.request_of] != 0
        quality = np.where(failed, np.uint8(BAD_DEVICE), np.uint8(GOOD))
        for string in self._strings:
            text = bytes(buffer[string.start : string.stop])
            values[string.column], ok = _parse_text(text, string.swap_bytes)
            if not ok:
                quality[string.column] = BAD_DEVICE
        values[failed] = np.nan
        return values[None, :], quality[None, :]


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The requests of one poll group and the decoder of their responses."""

    requests: tuple[Request, ...]
    decoder: Decoder
    buffer_size: int


def plan_group(
    sources: Sequence[ModbusSource],
    default_unit: int,
    default_order: Order,
    limits: PlanLimits,
) -> GroupPlan:
    """Plan one poll group whose tags (in column order) have ``sources``.

    Raises:
        ValueError: a tag is wider than one request may read.
    """
    spans = [
        TagSpan(
            column,
            default_unit if source.unit_id is None else source.unit_id,
            source.table,
            source.address,
            source.width,
        )
        for column, source in enumerate(sources)
    ]
    requests, request_of, start_in = plan_requests(spans, limits)
    offsets = np.array([requests[r].offset for r in request_of], dtype=np.intp)
    typed: dict[tuple[str, Order], list[int]] = {}
    bit_columns: list[int] = []
    bit_bytes: list[int] = []
    bit_shifts: list[int] = []
    strings: list[_StringColumns] = []
    for column, source in enumerate(sources):
        kind = source.data_type
        order = source.order or default_order
        first = int(offsets[column])
        start = int(start_in[column])
        if kind == "bool":
            bit_columns.append(column)
            bit_bytes.append(first + start // _BITS_PER_BYTE)
            bit_shifts.append(start % _BITS_PER_BYTE)
        elif kind == "bit":
            # Registers travel high byte first: bits 8-15 are in the first byte
            # (the second when the order swaps the bytes of a register).
            bit = source.bit or 0
            low, high = byte_positions(np.array([first + 2 * start]), 1, order)[0][::-1]
            bit_columns.append(column)
            bit_bytes.append(int(high) if bit >= _BITS_PER_BYTE else int(low))
            bit_shifts.append(bit % _BITS_PER_BYTE)
        elif kind == "string":
            begin = first + 2 * start
            strings.append(
                _StringColumns(
                    column, begin, begin + 2 * source.width, order in ("BADC", "DCBA")
                )
            )
        else:
            typed.setdefault((kind, order), []).append(column)
    typed_columns = [
        _TypedColumns(
            kind,
            np.array(columns, dtype=np.intp),
            byte_positions(
                offsets[columns] + 2 * start_in[columns], REGISTER_COUNT[kind], order
            ),
        )
        for (kind, order), columns in typed.items()
    ]
    bits = _BitColumns(
        np.array(bit_columns, dtype=np.intp),
        np.array(bit_bytes, dtype=np.intp),
        np.array(bit_shifts, dtype=np.uint8),
    )
    size = requests[-1].offset + requests[-1].byte_count if requests else 0
    decoder = Decoder(typed_columns, bits, strings, request_of, len(sources))
    return GroupPlan(tuple(requests), decoder, size)


def _parse_text(text: bytes, swap_bytes: bool) -> tuple[float, bool]:
    """Return the number a register string spells, and whether it spelled one."""
    if swap_bytes:
        swapped = bytearray(text)
        swapped[0::2], swapped[1::2] = text[1::2], text[0::2]
        text = bytes(swapped)
    cleaned = text.split(b"\x00", 1)[0].strip()
    try:
        return float(cleaned.decode("ascii")), True
    except (UnicodeDecodeError, ValueError):
        return float("nan"), False
