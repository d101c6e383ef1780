"""The reading block codec: one poll's columnar arrays to compressed bytes and back.

A block is ``steps`` sampling instants by ``k`` tags. The encoded form is a fixed
header followed by one zstd frame holding four sections:

1. timestamps: int64 ``(steps,)``, the first value then the differences, so a
   regular poll interval becomes a run of one repeated number;
2. tags: int32 ``(k,)``, delta-encoded the same way (usually a run of ones);
3. values: stored column-major (one tag's series contiguous), each value XORed
   with the same tag's previous step, then byte-shuffled (all first bytes, then all
   second bytes, ...). Successive readings of a smooth sensor share their sign,
   exponent and leading mantissa bits, so the high byte planes become near-constant
   and zstd's entropy coder squeezes them;
4. quality: uint8, column-major, as is.

Values are kept as float32 (7 significant digits, more than any process sensor
delivers) or float64 (lossless), as ``value_format`` says. The transforms work on
the bit patterns, so NaN and infinity survive, and decoding float64 blocks is exact.
The header names the format, so a block decodes without knowing the configuration
it was written under.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zstandard

__all__ = [
    "Block",
    "BlockCodec",
    "CodecError",
    "ValueFormat",
    "decode_block",
]

ValueFormat = Literal["float32", "float64"]

_MAGIC = b"EGRB"
_VERSION = 1
# magic, version, value format code, reserved, steps, k
_HEADER = struct.Struct("<4sBBHII")

_FORMAT_CODES: dict[ValueFormat, int] = {"float32": 1, "float64": 2}
# format code -> (stored float dtype, unsigned integer dtype of the same width)
_FORMAT_DTYPES: dict[int, tuple[np.dtype[Any], np.dtype[Any]]] = {
    1: (np.dtype(np.float32), np.dtype(np.uint32)),
    2: (np.dtype(np.float64), np.dtype(np.uint64)),
}

_TIMESTAMP_BYTES = 8
_TAG_BYTES = 4


class CodecError(ValueError):
    """Bytes that are not a reading block this codec can decode."""


@dataclass(frozen=True, slots=True)
class Block:
    """The decoded arrays of one reading block, shaped as in a ``ReadingBatch``.

    Attributes:
        timestamps: int64 ``(steps,)``, nanoseconds since the Unix epoch, UTC.
        tags: int32 ``(k,)``, tag indices.
        values: float64 ``(steps, k)``.
        quality: uint8 ``(steps, k)``.
    """

    timestamps: npt.NDArray[np.int64]
    tags: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]


class BlockCodec:
    """Encoder of reading blocks at one value format and zstd level.

    An instance holds a zstd compression context, which is not thread-safe: use one
    instance per thread. Compression releases the GIL.
    """

    def __init__(self, value_format: ValueFormat = "float32", level: int = 3) -> None:
        """Build an encoder; ``level`` is the zstd level (1 fastest, 19 smallest).

        Raises:
            ValueError: ``value_format`` is neither ``float32`` nor ``float64``.
        """
        if value_format not in _FORMAT_CODES:
            raise ValueError(
                f"value_format must be float32 or float64, not {value_format!r}"
            )
        self.value_format: ValueFormat = value_format
        self.level = level
        self._format_code = _FORMAT_CODES[value_format]
        self._compressor = zstandard.ZstdCompressor(level=level)

    def encode(
        self,
        timestamps: npt.ArrayLike,
        tags: npt.ArrayLike,
        values: npt.ArrayLike,
        quality: npt.ArrayLike,
    ) -> bytes:
        """Return the encoded block of ``steps x k`` readings.

        Args:
            timestamps: int64 ``(steps,)``, nanoseconds.
            tags: int32 ``(k,)``.
            values: float ``(steps, k)``; under float32 format, magnitudes beyond
                float32's range become infinities.
            quality: uint8 ``(steps, k)``.

        Raises:
            ValueError: the shapes do not agree.
        """
        ts = np.asarray(timestamps, dtype=np.int64).reshape(-1)
        tag_array = np.asarray(tags, dtype=np.int32).reshape(-1)
        steps, k = ts.size, tag_array.size
        value_array = np.asarray(values)
        quality_array = np.asarray(quality, dtype=np.uint8)
        if value_array.shape != (steps, k) or quality_array.shape != (steps, k):
            raise ValueError(
                f"values {value_array.shape} and quality {quality_array.shape} "
                f"must both be ({steps}, {k})"
            )

        float_dtype, bits_dtype = _FORMAT_DTYPES[self._format_code]
        width = float_dtype.itemsize
        n = steps * k
        raw = np.empty(
            _TIMESTAMP_BYTES * steps + _TAG_BYTES * k + (width + 1) * n, dtype=np.uint8
        )

        # Sections are written straight into one buffer: no intermediate joins.
        offset = _put_deltas(raw, 0, ts.view(np.uint64))
        offset = _put_deltas(raw, offset, tag_array.view(np.uint32))

        # Beyond float32's range a value becomes an infinity, as documented.
        with np.errstate(over="ignore"):
            series = value_array.T.astype(float_dtype, order="C")  # (k, steps)
        bits = series.view(bits_dtype)
        if steps > 1:
            bits[:, 1:] ^= bits[:, :-1]
        planes = raw[offset : offset + width * n].reshape(width, n)
        planes[...] = bits.reshape(-1).view(np.uint8).reshape(n, width).T
        offset += width * n

        raw[offset:].reshape(k, steps)[...] = quality_array.T
        header = _HEADER.pack(_MAGIC, _VERSION, self._format_code, 0, steps, k)
        return header + self._compressor.compress(raw.data)


def decode_block(data: bytes) -> Block:
    """Return the arrays of an encoded block (values always as float64).

    Raises:
        CodecError: ``data`` is not a block of a known version, or is damaged.
    """
    if len(data) < _HEADER.size:
        raise CodecError(f"block of {len(data)} bytes is shorter than its header")
    magic, version, code, _, steps, k = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION or code not in _FORMAT_DTYPES:
        raise CodecError(
            f"not a reading block (magic {magic!r}, version {version}, format {code})"
        )
    float_dtype, bits_dtype = _FORMAT_DTYPES[code]
    width = float_dtype.itemsize
    n = steps * k
    expected = _TIMESTAMP_BYTES * steps + _TAG_BYTES * k + (width + 1) * n
    try:
        raw_bytes = zstandard.ZstdDecompressor().decompress(
            memoryview(data)[_HEADER.size :], max_output_size=expected
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"block payload does not decompress: {exc}") from exc
    if len(raw_bytes) != expected:
        raise CodecError(
            f"block payload is {len(raw_bytes)} bytes, expected {expected}"
        )
    raw = np.frombuffer(raw_bytes, dtype=np.uint8)

    offset = _TIMESTAMP_BYTES * steps
    timestamps = _undo_deltas(raw[:offset].view(np.uint64)).view(np.int64)
    tags = _undo_deltas(raw[offset : offset + _TAG_BYTES * k].view(np.uint32))
    offset += _TAG_BYTES * k

    planes = raw[offset : offset + width * n].reshape(width, n)
    bits = np.ascontiguousarray(planes.T).view(bits_dtype).reshape(k, steps)
    if steps > 1:
        np.bitwise_xor.accumulate(bits, axis=1, out=bits)
    values = bits.view(float_dtype).T.astype(np.float64, order="C")
    offset += width * n

    quality = np.ascontiguousarray(raw[offset:].reshape(k, steps).T)
    return Block(
        timestamps=timestamps,
        tags=tags.view(np.int32),
        values=values,
        quality=quality,
    )


def _put_deltas(
    raw: npt.NDArray[np.uint8],
    offset: int,
    column: npt.NDArray[np.unsignedinteger[npt.NBitBase]],
) -> int:
    """Write ``column`` as first value plus wrapping differences; return the new end."""
    size = column.size * column.itemsize
    out = raw[offset : offset + size].view(column.dtype)
    if column.size:
        out[0] = column[0]
        np.subtract(column[1:], column[:-1], out=out[1:])
    return offset + size


def _undo_deltas(deltas: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return the running sum of ``deltas``, wrapping like the encoder's differences."""
    return np.cumsum(deltas, dtype=deltas.dtype)
