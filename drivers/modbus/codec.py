"""Modbus data types and byte/word orders, decoded and encoded with numpy.

A value of ``n`` registers has ``2n`` bytes ``A B C D ...`` (``A`` most
significant). On the wire each register is sent high byte first; the order names
where the value's bytes sit in the registers:

- ``ABCD``: big-endian registers in big-endian order (the Modbus default);
- ``CDAB``: the registers in reverse order ("word swap", common on PLCs);
- ``BADC``: the bytes of each register swapped;
- ``DCBA``: both, that is a little-endian value.

For 64-bit values the same names apply to four registers: ``CDAB`` reverses all
four. A 16-bit value is only affected by the byte swap of ``BADC``/``DCBA``.

Everything works on a poll's response bytes as one ``uint8`` array: for each tag
:func:`byte_positions` gives, once at plan time, where its canonical big-endian
bytes sit, so decoding a whole group is one gather per data type, and encoding
(for the simulator) one scatter.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "BIT_TABLES",
    "DATA_TYPES",
    "ORDERS",
    "REGISTER_COUNT",
    "REGISTER_TABLES",
    "DataType",
    "IntArray",
    "Order",
    "Table",
    "byte_positions",
    "from_canonical",
    "to_canonical",
]

Table = Literal["holding", "input", "coil", "discrete_input"]
DataType = Literal[
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

IntArray = npt.NDArray[np.intp]

REGISTER_TABLES: frozenset[str] = frozenset({"holding", "input"})
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
ORDERS: tuple[Order, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
DATA_TYPES: tuple[DataType, ...] = (
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
)

# Registers taken by each fixed-width type (``string`` has its own length).
REGISTER_COUNT: dict[str, int] = {
    "bit": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

# Big-endian numpy types of the numeric register types.
NUMPY_TYPE: dict[str, str] = {
    "int16": ">i2",
    "uint16": ">u2",
    "int32": ">i4",
    "uint32": ">u4",
    "int64": ">i8",
    "uint64": ">u8",
    "float32": ">f4",
    "float64": ">f8",
}

_WIDEST_INTEGER = 8  # bytes
_WORD_SWAPPED = frozenset({"CDAB", "DCBA"})
_BYTE_SWAPPED = frozenset({"BADC", "DCBA"})


def byte_positions(first_byte: IntArray, registers: int, order: Order) -> IntArray:
    """Return where each value's canonical bytes sit in a response buffer.

    Args:
        first_byte: ``(k,)`` offset of each value's first register in the buffer.
        registers: registers per value (1, 2 or 4).
        order: how the value's bytes are laid in its registers.

    Returns:
        ``(k, 2 * registers)`` positions: ``buffer[positions[t]]`` are the bytes
        of value ``t`` most significant first.
    """
    canonical = np.arange(2 * registers)
    word = canonical // 2
    half = canonical % 2
    if order in _WORD_SWAPPED:
        word = registers - 1 - word
    if order in _BYTE_SWAPPED:
        half = 1 - half
    within: IntArray = 2 * word + half
    positions: IntArray = np.asarray(first_byte, dtype=np.intp)[:, None] + within
    return positions


def from_canonical(
    canonical: npt.NDArray[np.uint8], data_type: str
) -> npt.NDArray[np.float64]:
    """Return float64 values of ``(k, width)`` canonical big-endian bytes."""
    raw = np.ascontiguousarray(canonical).view(NUMPY_TYPE[data_type])
    # A device may send any bit pattern: a signalling NaN widens to a quiet NaN
    # (which the pipeline marks bad), not a floating-point warning per poll.
    with np.errstate(invalid="ignore"):
        values: npt.NDArray[np.float64] = raw.reshape(-1).astype(np.float64)
    return values


def to_canonical(values: npt.ArrayLike, data_type: str) -> npt.NDArray[np.uint8]:
    """Return the ``(k, width)`` canonical bytes of ``values`` as ``data_type``.

    Integer types round to the nearest integer and saturate at the type's range;
    NaN becomes 0. Floats are stored as given (NaN and infinities included).
    """
    numpy_type = np.dtype(NUMPY_TYPE[data_type])
    source = np.asarray(values, dtype=np.float64)
    if numpy_type.kind in "iu":
        info = np.iinfo(numpy_type)
        low, high = float(info.min), float(info.max)
        if numpy_type.itemsize == _WIDEST_INTEGER:
            # float64 rounds the 64-bit maximum up past it: clip just inside.
            high = float(np.nextafter(high, 0.0))
        source = np.clip(np.nan_to_num(np.rint(source), nan=0.0), low, high)
    with np.errstate(over="ignore", invalid="ignore"):  # float32 saturates to inf
        encoded = source.astype(numpy_type)
    return encoded.view(np.uint8).reshape(len(source), numpy_type.itemsize)
