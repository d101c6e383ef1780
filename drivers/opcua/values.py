"""DataValues to columns: numbers, OPC UA status codes, timestamps, quality codes.

asyncua decodes each DataValue into a Python object; this is the one place those
are walked, writing straight into preallocated arrays. Everything after it works on
whole columns.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from asyncua import ua

from drivers.batch import (
    BAD_COMM,
    BAD_CONFIG,
    BAD_DEVICE,
    GOOD,
    UNCERTAIN,
    Float64Array,
    Int64Array,
    UInt8Array,
)

__all__ = [
    "BAD_TYPE",
    "NUMERIC_DATA_TYPES",
    "UInt32Array",
    "columns",
    "quality_of",
    "row_timestamp",
    "status_name",
]

UInt32Array = npt.NDArray[np.uint32]

NUMERIC_DATA_TYPES = frozenset(
    {
        ua.ObjectIds.Boolean,
        ua.ObjectIds.SByte,
        ua.ObjectIds.Byte,
        ua.ObjectIds.Int16,
        ua.ObjectIds.UInt16,
        ua.ObjectIds.Int32,
        ua.ObjectIds.UInt32,
        ua.ObjectIds.Int64,
        ua.ObjectIds.UInt64,
        ua.ObjectIds.Float,
        ua.ObjectIds.Double,
        ua.ObjectIds.Number,
        ua.ObjectIds.Integer,
        ua.ObjectIds.UInteger,
    }
)
"""DataType NodeIds (namespace 0) of variables read as numbers."""

BAD_TYPE = ua.StatusCodes.BadTypeMismatch
"""Status code kept for a value that arrived good but is not a number."""

# StatusCode severity is in its two top bits: 00 good, 01 uncertain, 1x bad.
_SEVERITY_SHIFT = 30
_UNCERTAIN = 1
# Bad codes that mean the server lost its own link to the value, not a refusal.
_COMM_CODES = np.array(
    [
        ua.StatusCodes.BadCommunicationError,
        ua.StatusCodes.BadNoCommunication,
        ua.StatusCodes.BadNotConnected,
        ua.StatusCodes.BadDeviceFailure,
        ua.StatusCodes.BadSensorFailure,
        ua.StatusCodes.BadOutOfService,
        ua.StatusCodes.BadWaitingForInitialData,
        ua.StatusCodes.BadTimeout,
    ],
    dtype=np.uint32,
)
_STATUS_MASK = np.uint32(0xFFFF0000)  # the low 16 bits are info bits, not the code
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_NS_PER_US = 1000


def columns(
    results: Sequence[ua.DataValue],
) -> tuple[Float64Array, UInt32Array, Int64Array]:
    """Return the values, status codes and timestamps of ``results`` as arrays.

    A value that is good but not a Boolean or number (a string, an array) gets
    NaN and status ``BadTypeMismatch``. The timestamp is the source timestamp when
    present, else the server's, else 0 (the caller fills in the receive time).
    """
    n = len(results)
    values = np.full(n, np.nan)
    codes = np.zeros(n, dtype=np.uint32)
    stamps = np.zeros(n, dtype=np.int64)
    for i, data in enumerate(results):
        code = data.StatusCode.value if data.StatusCode is not None else 0
        value = data.Value.Value if data.Value is not None else None
        if isinstance(value, bool | int | float) and not isinstance(
            value, ua.StatusCode
        ):
            values[i] = value
        elif code >> _SEVERITY_SHIFT < 2:
            code = BAD_TYPE
        codes[i] = code
        stamp = data.SourceTimestamp or data.ServerTimestamp
        if stamp is not None:
            stamps[i] = _ns(stamp)
    return values, codes, stamps


def quality_of(codes: UInt32Array) -> UInt8Array:
    """Map OPC UA status codes to the gateway's quality codes, element-wise.

    Good is ``GOOD``, uncertain ``UNCERTAIN``; bad is ``BAD_CONFIG`` for a type
    mismatch, ``BAD_COMM`` for the server's own communication faults, else
    ``BAD_DEVICE``. The full status code is kept by the driver beside the batch.
    """
    severity = codes >> _SEVERITY_SHIFT
    quality = np.full(codes.shape, BAD_DEVICE, dtype=np.uint8)
    quality[severity == 0] = GOOD
    quality[severity == _UNCERTAIN] = UNCERTAIN
    masked = codes & _STATUS_MASK
    quality[np.isin(masked, _COMM_CODES)] = BAD_COMM
    quality[masked == BAD_TYPE] = BAD_CONFIG
    return quality


def row_timestamp(stamps: Int64Array, receive_ns: int) -> int:
    """Return one row's timestamp: the latest reading's, or the receive time."""
    latest = int(stamps.max()) if stamps.size else 0
    return latest if latest > 0 else receive_ns


def status_name(code: int) -> str:
    """Return a status code's name, such as ``BadNodeIdUnknown``."""
    name: str = ua.StatusCode(int(code) & 0xFFFF0000).name
    return name


def _ns(stamp: datetime.datetime) -> int:
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    delta = stamp - _EPOCH
    return (
        delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
    ) * _NS_PER_US
