"""The columnar reading batch every driver delivers, and the quality codes in it.

One poll of one poll group is one :class:`ReadingBatch`: ``steps`` rows (one per
sampling instant) by ``k`` columns (one per tag of the group). Nothing here creates a
Python object per reading; a batch is four numpy arrays and two names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BAD",
    "BAD_COMM",
    "BAD_CONFIG",
    "BAD_DEVICE",
    "BAD_NOT_A_NUMBER",
    "BAD_NO_VALUE",
    "BAD_OUT_OF_RANGE",
    "GOOD",
    "UNCERTAIN",
    "ReadingBatch",
    "is_bad",
    "is_good",
]

# Quality codes (uint8). The two high bits give the class, as in OPC UA's
# StatusCode severity: 00 good, 01 uncertain, 10 bad. The low six bits say why.
GOOD = 0x00
UNCERTAIN = 0x40
BAD = 0x80
BAD_COMM = 0x81  # no answer from the tool: timeout, connection lost
BAD_DEVICE = 0x82  # the tool answered with an error for this tag
BAD_CONFIG = 0x83  # the tag cannot be read as configured
BAD_OUT_OF_RANGE = 0x84  # outside the tag's configured validity limits
BAD_NOT_A_NUMBER = 0x85  # NaN or infinity
BAD_NO_VALUE = 0x86  # the tool delivered nothing for this instant (dropout)

_CLASS_MASK = 0xC0

Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
Float64Array = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]


def is_good(quality: UInt8Array) -> npt.NDArray[np.bool_]:
    """Return a mask of the readings whose quality class is good."""
    mask: npt.NDArray[np.bool_] = (quality & _CLASS_MASK) == GOOD
    return mask


def is_bad(quality: UInt8Array) -> npt.NDArray[np.bool_]:
    """Return a mask of the readings whose quality class is bad."""
    mask: npt.NDArray[np.bool_] = (quality & _CLASS_MASK) == BAD
    return mask


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """Readings of one poll group of one tool, as columns.

    Attributes:
        tool: the tool id the readings came from.
        group: the poll group's name.
        timestamps: int64 ``(steps,)``, nanoseconds since the Unix epoch, UTC.
        tags: int32 ``(k,)``, indices of the columns' tags in the tool's tag list.
        values: float64 ``(steps, k)``, raw values as read (before scale/offset).
        quality: uint8 ``(steps, k)``, one of the quality codes of this module.
    """

    tool: str
    group: str
    timestamps: Int64Array
    tags: Int32Array
    values: Float64Array
    quality: UInt8Array

    def __post_init__(self) -> None:
        steps, k = len(self.timestamps), len(self.tags)
        if self.values.shape != (steps, k) or self.quality.shape != (steps, k):
            raise ValueError(
                f"batch {self.tool}/{self.group}: values {self.values.shape} and "
                f"quality {self.quality.shape} must both be ({steps}, {k})"
            )

    @property
    def size(self) -> int:
        """Number of readings (steps x tags)."""
        return int(self.values.size)

    @classmethod
    def all_bad(
        cls,
        tool: str,
        group: str,
        timestamp_ns: int,
        tags: Int32Array,
        code: int = BAD_COMM,
    ) -> ReadingBatch:
        """Return a one-step batch marking every tag of a group bad with ``code``."""
        k = len(tags)
        return cls(
            tool=tool,
            group=group,
            timestamps=np.array([timestamp_ns], dtype=np.int64),
            tags=tags,
            values=np.full((1, k), np.nan),
            quality=np.full((1, k), code, dtype=np.uint8),
        )
