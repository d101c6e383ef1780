"""SECS-II items (SEMI E5): encoding, strict decoding, and a columnar fast path.

An item is a format byte, one to three length bytes and a body. The format byte is
``format_code << 2 | n``, where ``n`` is the number of big-endian length bytes. The
length counts body bytes, except for a list, where it counts the items that follow.

Decoded items are :class:`Item` records holding plain values: a tuple of items
for a list, ``bytes`` for Binary, ``str`` for ASCII and JIS-8, and a 1-D numpy
array (native byte order) for Boolean and every numeric format, since E5 lets one
item carry several values of its type. Anything malformed raises :class:`FrameError`
and nothing else.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Format",
    "FrameError",
    "Item",
    "Value",
    "decode",
    "decode_scalar_list",
    "encode",
    "id_of",
    "numeric_value",
    "scalar_list",
    "to_json",
]

MAX_LENGTH = (1 << 24) - 1  # three length bytes
# Lists nested deeper than any GEM message needs are refused, so a hostile body
# cannot exhaust the interpreter's stack.
MAX_DEPTH = 32
_MIN_ITEM_BYTES = 2  # a format byte and one length byte


class FrameError(ValueError):
    """A SECS-II item or HSMS frame is malformed or truncated."""


class Format(enum.IntEnum):
    """E5 format codes (octal in the standard)."""

    L = 0o00
    B = 0o10
    BOOLEAN = 0o11
    A = 0o20
    J = 0o21
    I8 = 0o30
    I1 = 0o31
    I2 = 0o32
    I4 = 0o34
    F8 = 0o40
    F4 = 0o44
    U8 = 0o50
    U1 = 0o51
    U2 = 0o52
    U4 = 0o54


# Wire dtype (big-endian) and native dtype of each array format.
_WIRE_DTYPES: dict[Format, np.dtype[Any]] = {
    Format.BOOLEAN: np.dtype("u1"),
    Format.I1: np.dtype("i1"),
    Format.I2: np.dtype(">i2"),
    Format.I4: np.dtype(">i4"),
    Format.I8: np.dtype(">i8"),
    Format.U1: np.dtype("u1"),
    Format.U2: np.dtype(">u2"),
    Format.U4: np.dtype(">u4"),
    Format.U8: np.dtype(">u8"),
    Format.F4: np.dtype(">f4"),
    Format.F8: np.dtype(">f8"),
}
_NATIVE_DTYPES: dict[Format, np.dtype[Any]] = {
    fmt: np.dtype(bool) if fmt is Format.BOOLEAN else dtype.newbyteorder("=")
    for fmt, dtype in _WIRE_DTYPES.items()
}
_INTEGER_FORMATS = frozenset(
    {
        Format.I1,
        Format.I2,
        Format.I4,
        Format.I8,
        Format.U1,
        Format.U2,
        Format.U4,
        Format.U8,
    }
)
_FORMATS = {int(fmt): fmt for fmt in Format}

# JIS-8 (JIS X 0201): ASCII in the low half, half-width katakana at 0xA1-0xDF.
_KATAKANA_FIRST, _KATAKANA_LAST = 0xA1, 0xDF
_HALFWIDTH_KATAKANA = 0xFF61
_JIS8_DECODE = {b: chr(b) for b in range(0x80)} | {
    b: chr(_HALFWIDTH_KATAKANA + b - _KATAKANA_FIRST)
    for b in range(_KATAKANA_FIRST, _KATAKANA_LAST + 1)
}
_JIS8_ENCODE = {ch: b for b, ch in _JIS8_DECODE.items()}

Value: TypeAlias = "tuple[Item, ...] | bytes | str | npt.NDArray[Any]"


@dataclass(frozen=True, slots=True, eq=False)
class Item:
    """One SECS-II item: its format and its decoded value.

    Build items with the class methods (``Item.U4(10)``, ``Item.L(...)``).
    Equality compares formats and values, element by element for arrays.
    """

    format: Format
    value: Value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        if other.format != self.format:
            return False
        if isinstance(self.value, np.ndarray):
            return isinstance(other.value, np.ndarray) and np.array_equal(
                self.value, other.value, equal_nan=self.value.dtype.kind == "f"
            )
        return self.value == other.value

    def __hash__(self) -> int:
        return hash((self.format, encode(self)))

    def __repr__(self) -> str:
        if isinstance(self.value, tuple):
            inner = " ".join(repr(item) for item in self.value)
            return f"<L[{len(self.value)}] {inner}>"
        if isinstance(self.value, np.ndarray):
            return f"<{self.format.name} {' '.join(map(str, self.value.tolist()))}>"
        return f"<{self.format.name} {self.value!r}>"

    # Constructors, named after SML.

    @classmethod
    def L(cls, *items: Item) -> Item:  # noqa: N802 - SML names
        """A list of ``items``."""
        return cls(Format.L, tuple(items))

    @classmethod
    def B(cls, *values: int) -> Item:  # noqa: N802
        """A Binary item of bytes ``values``."""
        return cls(Format.B, bytes(values))

    @classmethod
    def A(cls, text: str) -> Item:  # noqa: N802
        """An ASCII item."""
        return cls(Format.A, text)

    @classmethod
    def J(cls, text: str) -> Item:  # noqa: N802
        """A JIS-8 item."""
        return cls(Format.J, text)

    @classmethod
    def array(cls, fmt: Format, values: Iterable[Any] | npt.ArrayLike) -> Item:
        """A Boolean or numeric item of ``values`` (any count, also zero)."""
        return cls(fmt, np.asarray(values, dtype=_NATIVE_DTYPES[fmt]).reshape(-1))

    @classmethod
    def BOOLEAN(cls, *values: bool) -> Item:  # noqa: N802
        return cls.array(Format.BOOLEAN, values)

    @classmethod
    def U1(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.U1, values)

    @classmethod
    def U2(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.U2, values)

    @classmethod
    def U4(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.U4, values)

    @classmethod
    def U8(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.U8, values)

    @classmethod
    def I1(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.I1, values)

    @classmethod
    def I2(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.I2, values)

    @classmethod
    def I4(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.I4, values)

    @classmethod
    def I8(cls, *values: int) -> Item:  # noqa: N802
        return cls.array(Format.I8, values)

    @classmethod
    def F4(cls, *values: float) -> Item:  # noqa: N802
        return cls.array(Format.F4, values)

    @classmethod
    def F8(cls, *values: float) -> Item:  # noqa: N802
        return cls.array(Format.F8, values)

    # Accessors that check the shape a message expects.

    @property
    def items(self) -> tuple[Item, ...]:
        """The list's items; :class:`FrameError` if this is not a list."""
        if not isinstance(self.value, tuple):
            raise FrameError(f"expected a list, got {self.format.name}")
        return self.value

    def fields(self, count: int) -> tuple[Item, ...]:
        """The items of a list of exactly ``count``; :class:`FrameError` otherwise."""
        items = self.items
        if len(items) != count:
            raise FrameError(f"expected a list of {count}, got {len(items)}")
        return items

    def scalar(self) -> Any:
        """The single value of a Binary/Boolean/numeric item, as a Python value."""
        value = self.value
        if isinstance(value, bytes) and len(value) == 1:
            return value[0]
        if isinstance(value, np.ndarray) and value.size == 1:
            return value[0].item()
        raise FrameError(f"expected one value, got {self!r}")

    @property
    def text(self) -> str:
        """The string of an ASCII or JIS-8 item; :class:`FrameError` otherwise."""
        if not isinstance(self.value, str):
            raise FrameError(f"expected text, got {self.format.name}")
        return self.value


def id_of(item: Item) -> int | str:
    """Return an ID (SVID, CEID, RPTID, VID, ALID...) normalised to ``int`` or ``str``.

    Any integer format is accepted (equipment encodes IDs in the smallest type that
    fits, whatever the standard declares), and ASCII: digits become an ``int``.
    """
    if item.format in _INTEGER_FORMATS:
        return int(item.scalar())
    if item.format is Format.A:
        text = item.text
        return int(text) if text.isdigit() else text
    raise FrameError(f"expected an ID (integer or ASCII), got {item!r}")


# Encoding.


def _length_header(fmt: Format, length: int) -> bytes:
    if length > MAX_LENGTH:
        raise ValueError(f"item of {length} exceeds the SECS-II maximum {MAX_LENGTH}")
    if length <= 0xFF:
        return struct.pack(">BB", fmt << 2 | 1, length)
    if length <= 0xFFFF:
        return struct.pack(">BH", fmt << 2 | 2, length)
    return struct.pack(">B", fmt << 2 | 3) + length.to_bytes(3, "big")


def _encode_into(item: Item, out: list[bytes]) -> None:
    value = item.value
    if isinstance(value, tuple):
        out.append(_length_header(Format.L, len(value)))
        for child in value:
            _encode_into(child, out)
        return
    if isinstance(value, str):
        body = (
            value.encode("ascii", "strict")
            if item.format is Format.A
            else _encode_jis8(value)
        )
    elif isinstance(value, bytes):
        body = value
    else:
        body = value.astype(_WIRE_DTYPES[item.format]).tobytes()
    out.append(_length_header(item.format, len(body)))
    out.append(body)


def _encode_jis8(text: str) -> bytes:
    try:
        return bytes(_JIS8_ENCODE[ch] for ch in text)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} has no JIS-8 code") from None


def encode(item: Item | None) -> bytes:
    """Return the wire bytes of ``item`` (``b""`` for a header-only message).

    Raises:
        ValueError: a value does not fit its format (non-ASCII text in ``A``, an
            item longer than 2**24 - 1 bytes).
    """
    if item is None:
        return b""
    out: list[bytes] = []
    _encode_into(item, out)
    return b"".join(out)


# Decoding.


def _decode_at(data: bytes, pos: int, depth: int) -> tuple[Item, int]:
    end = len(data)
    if pos >= end:
        raise FrameError(f"truncated: item expected at byte {pos}")
    format_byte = data[pos]
    n = format_byte & 0x03
    if n == 0:
        raise FrameError(f"format byte 0x{format_byte:02X} at {pos} has no length")
    fmt = _FORMATS.get(format_byte >> 2)
    if fmt is None:
        raise FrameError(f"unknown format code 0o{format_byte >> 2:o} at byte {pos}")
    if pos + 1 + n > end:
        raise FrameError(f"truncated: length of the item at byte {pos}")
    length = int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
    pos += 1 + n

    if fmt is Format.L:
        if depth >= MAX_DEPTH:
            raise FrameError(f"lists nested deeper than {MAX_DEPTH}")
        if length * _MIN_ITEM_BYTES > end - pos:
            raise FrameError(f"truncated: list of {length} items at byte {pos}")
        children = []
        for _ in range(length):
            child, pos = _decode_at(data, pos, depth + 1)
            children.append(child)
        return Item(fmt, tuple(children)), pos

    if pos + length > end:
        raise FrameError(
            f"truncated: {fmt.name} of {length} bytes at byte {pos}, {end - pos} left"
        )
    body = data[pos : pos + length]
    pos += length
    if fmt is Format.B:
        return Item(fmt, body), pos
    if fmt is Format.A:
        return Item(fmt, body.decode("latin-1")), pos
    if fmt is Format.J:
        try:
            return Item(fmt, "".join(_JIS8_DECODE[b] for b in body)), pos
        except KeyError as exc:
            raise FrameError(f"byte 0x{exc.args[0]:02X} is not JIS-8") from None
    wire = _WIRE_DTYPES[fmt]
    if length % wire.itemsize:
        raise FrameError(
            f"{fmt.name} body of {length} bytes is not a multiple of {wire.itemsize}"
        )
    values = np.frombuffer(body, dtype=wire).astype(_NATIVE_DTYPES[fmt])
    return Item(fmt, values), pos


def decode(data: bytes) -> Item | None:
    """Decode a message body: ``None`` for an empty one, else exactly one item.

    Raises:
        FrameError: the body is malformed, truncated, or has bytes left over.
    """
    if not data:
        return None
    item, pos = _decode_at(bytes(data), 0, 0)
    if pos != len(data):
        raise FrameError(f"{len(data) - pos} byte(s) after the item")
    return item


# The columnar fast path: a list of single numeric values, all of one format, is a
# fixed-stride record array on the wire. S1F4 replies nearly always look like this.
_SCALAR_FORMAT_BYTES = {
    (fmt << 2 | 1): (fmt, dtype) for fmt, dtype in _WIRE_DTYPES.items()
}


def _list_count(data: bytes) -> tuple[int, int]:
    if len(data) < _MIN_ITEM_BYTES or data[0] >> 2 != Format.L or not data[0] & 3:
        raise FrameError("expected a list")
    n = data[0] & 3
    if len(data) < 1 + n:
        raise FrameError("truncated: list length")
    return int.from_bytes(data[1 : 1 + n], "big"), 1 + n


def decode_scalar_list(
    data: bytes,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Decode a list of values (an S1F4 body) into float64 values and a valid mask.

    Each element that is a single number or Boolean gives its value; anything else
    (an empty item for an unknown ID, text, a list, several values) gives NaN and
    ``False``. A list whose items share one numeric format is read in one numpy
    step without creating an object per value.

    Raises:
        FrameError: the body is not one well-formed list.
    """
    count, start = _list_count(data)
    first = data[start] if start < len(data) else None
    if first in _SCALAR_FORMAT_BYTES:
        _, wire = _SCALAR_FORMAT_BYTES[first]
        stride = 2 + wire.itemsize
        if len(data) == start + count * stride:
            record = np.dtype([("f", "u1"), ("n", "u1"), ("v", wire)])
            rows = np.frombuffer(data, dtype=record, offset=start, count=count)
            if np.all(rows["f"] == first) and np.all(rows["n"] == wire.itemsize):
                values = rows["v"].astype(np.float64)
                return values, np.ones(count, dtype=bool)
    return _decode_scalar_list_slow(data)


def _decode_scalar_list_slow(
    data: bytes,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    item = decode(data)
    if item is None:
        raise FrameError("expected a list, got an empty body")
    items = item.items
    values = np.full(len(items), np.nan)
    valid = np.zeros(len(items), dtype=bool)
    for i, element in enumerate(items):
        number = numeric_value(element)
        if number is not None:
            values[i] = number
            valid[i] = True
    return values, valid


def numeric_value(item: Item) -> float | None:
    """Return the single number (or Boolean as 0/1) of ``item``, else ``None``."""
    value = item.value
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value[0])
    return None


def to_json(item: Item | None) -> Any:
    """Return ``item`` as JSON-ready values: lists, numbers, strings, hex for B.

    A single-valued array becomes a scalar, several values a list.
    """
    if item is None:
        return None
    value = item.value
    if isinstance(value, tuple):
        return [to_json(child) for child in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value
    as_list = value.tolist()
    if item.format in (Format.F4, Format.F8):
        as_list = [_finite_or_none(x) for x in as_list]
    return as_list[0] if len(as_list) == 1 else as_list


def _finite_or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None


def scalar_list(fmt: Format, values: Sequence[int]) -> Item:
    """A list of single-valued ``fmt`` items (a list of IDs)."""
    return Item.L(*(Item.array(fmt, (value,)) for value in values))
