"""The records that go into the store and come out of it, and the roll-up merge."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "PRIORITY_ALERT",
    "PRIORITY_EVENT",
    "PRIORITY_SUMMARY",
    "PRIORITY_TELEMETRY",
    "AlertRecord",
    "EventRecord",
    "OutboxMessage",
    "OutboxRow",
    "Rollup",
    "RollupColumns",
    "StoreStats",
    "ToolStoreStats",
    "merge_rollups",
]


# Outbox priorities: lower is published first and evicted last.
PRIORITY_ALERT = 0
PRIORITY_EVENT = 1
PRIORITY_SUMMARY = 2
PRIORITY_TELEMETRY = 3


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """An MQTT message a producer hands to the store for publishing.

    Attributes:
        priority: one of the ``PRIORITY_*`` constants.
        topic: the full MQTT topic.
        payload: the message body.
        qos: MQTT quality of service.
        retain: the MQTT retain flag.
        created_ns: creation time, nanoseconds since the Unix epoch; 0 means
            "now", filled in when the message is enqueued.
    """

    priority: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    created_ns: int = 0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored outbox message, as the publisher reads it; ``id`` is for the ack."""

    id: int
    priority: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_ns: int


@dataclass(frozen=True, slots=True)
class Rollup:
    """One tag's statistics over one UTC hour.

    ``mean`` and ``m2`` (the sum of squared deviations from the mean) are over the
    ``count`` good readings; ``minimum``, ``maximum``, ``mean`` and ``last`` are
    NaN when there were none. ``bad`` counts readings of bad quality, ``max_score``
    is the highest anomaly score seen (NaN if none), times are nanoseconds.
    """

    tool: str
    tag: str
    hour_ns: int
    count: int
    minimum: float
    maximum: float
    mean: float
    m2: float
    last: float
    last_ns: int
    bad: int
    max_score: float

    @property
    def variance(self) -> float:
        """Population variance of the good readings; NaN when there were none."""
        return self.m2 / self.count if self.count else math.nan


@dataclass(frozen=True, slots=True, eq=False)
class RollupColumns:
    """Roll-ups of many tags of one tool over (part of) one UTC hour, as columns.

    Column ``i`` is tag ``tags[i]``; each statistic means what :class:`Rollup`'s
    does. One window's summaries of a poll group give one of these, so a wide
    group costs one store item per window, not one per tag; the store merges each
    column into the stored roll-up as :func:`merge_rollups` does.
    """

    tool: str
    hour_ns: int
    tags: tuple[str, ...]
    count: npt.NDArray[np.int64]
    minimum: npt.NDArray[np.float64]
    maximum: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    m2: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    last_ns: npt.NDArray[np.int64]
    bad: npt.NDArray[np.int64]
    max_score: npt.NDArray[np.float64]

    def take(self, columns: npt.NDArray[np.intp]) -> RollupColumns:
        """Return the roll-ups of ``columns`` only, in that order."""
        return RollupColumns(
            tool=self.tool,
            hour_ns=self.hour_ns,
            tags=tuple(self.tags[c] for c in columns),
            count=self.count[columns],
            minimum=self.minimum[columns],
            maximum=self.maximum[columns],
            mean=self.mean[columns],
            m2=self.m2[columns],
            last=self.last[columns],
            last_ns=self.last_ns[columns],
            bad=self.bad[columns],
            max_score=self.max_score[columns],
        )

    def rollup(self, i: int) -> Rollup:
        """Return column ``i`` as one :class:`Rollup`."""
        return Rollup(
            tool=self.tool,
            tag=self.tags[i],
            hour_ns=self.hour_ns,
            count=int(self.count[i]),
            minimum=float(self.minimum[i]),
            maximum=float(self.maximum[i]),
            mean=float(self.mean[i]),
            m2=float(self.m2[i]),
            last=float(self.last[i]),
            last_ns=int(self.last_ns[i]),
            bad=int(self.bad[i]),
            max_score=float(self.max_score[i]),
        )


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert transition kept in the local history (times in nanoseconds)."""

    id: int
    tool: str
    tag: str
    model: str
    state: str
    severity: str
    ts_ns: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One equipment event kept in the local history (time in nanoseconds)."""

    id: int
    tool: str
    name: str
    ts_ns: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ToolStoreStats:
    """Stored raw readings of one tool; ``last_reading_ns`` is the newest timestamp."""

    readings: int
    blocks: int
    last_reading_ns: int | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """The store's size and activity.

    Attributes:
        file_bytes: size of the database file on disk.
        wal_bytes: size of the write-ahead log on disk.
        used_bytes: bytes in pages holding data (file pages minus free pages).
        evictions: rows evicted by retention since the database was created, by
            kind (``readings``, ``telemetry``, ``rollups``, ``summaries``,
            ``event_history``, ``alert_history``, ``events``, ``alerts``).
        blocks: stored reading blocks.
        readings: readings in those blocks.
        commits: group commits since the store was opened.
        pending: items enqueued and not yet committed.
        dropped: items dropped since the store was opened because writing them
            failed (each was logged as ``store_write_failed``).
    """

    file_bytes: int
    wal_bytes: int
    used_bytes: int
    evictions: dict[str, int]
    blocks: int
    readings: int
    commits: int
    pending: int
    dropped: int


def merge_rollups(a: Rollup, b: Rollup) -> Rollup:
    """Return the roll-up of the readings of ``a`` and ``b`` together (keys from ``a``).

    Mean and M2 follow the pairwise update of Chan, Golub and LeVeque, "Updating
    Formulae and a Pairwise Algorithm for Computing Sample Variances" (1979):
    with ``d = mean_b - mean_a`` and ``n = n_a + n_b``, ``mean = mean_a + d n_b / n``
    and ``M2 = M2_a + M2_b + d² n_a n_b / n``.
    """
    n = a.count + b.count
    if b.count == 0:
        mean, m2 = a.mean, a.m2
    elif a.count == 0:
        mean, m2 = b.mean, b.m2
    else:
        delta = b.mean - a.mean
        mean = a.mean + delta * b.count / n
        m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / n
    later = b if b.last_ns >= a.last_ns else a
    return Rollup(
        tool=a.tool,
        tag=a.tag,
        hour_ns=a.hour_ns,
        count=n,
        minimum=_nan_aware(min, a.minimum, b.minimum),
        maximum=_nan_aware(max, a.maximum, b.maximum),
        mean=mean,
        m2=m2,
        last=later.last,
        last_ns=later.last_ns,
        bad=a.bad + b.bad,
        max_score=_nan_aware(max, a.max_score, b.max_score),
    )


def _nan_aware(pick: Callable[[float, float], float], x: float, y: float) -> float:
    """Return ``pick(x, y)``, ignoring a NaN side (NaN only if both are NaN)."""
    if math.isnan(x):
        return y
    if math.isnan(y):
        return x
    return float(pick(x, y))
