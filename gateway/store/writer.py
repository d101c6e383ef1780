"""The store's single writer thread and its group commit.

Producers append items to an in-memory queue (O(1), under a short lock). The writer
thread applies each item as soon as it arrives, inside an open transaction, and
commits that transaction ``commit_interval_ms`` after its first item, or at once
when someone calls :meth:`Writer.flush`. Compressing reading blocks in this thread
spreads the work over the commit interval and keeps it off the producers (zstd
releases the GIL while it compresses).

Durability: a kill -9 or power cut loses at most the items enqueued since the last
group commit; a committed transaction survives (``synchronous=FULL``).

One bad item never stops the writer: its failure is logged (``store_write_failed``)
and counted, and only that item is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import structlog

from gateway.config.models import StoreConfig
from gateway.store.codec import BlockCodec
from gateway.store.errors import StoreClosedError
from gateway.store.records import OutboxMessage, Rollup, RollupColumns
from gateway.store.retention import (
    Eviction,
    enforce_age,
    enforce_size,
    log_evictions,
    release_free_pages,
)

__all__ = ["Writer"]

log = structlog.get_logger(__name__)

_MS = 1e-3


@dataclass(frozen=True, slots=True)
class ReadingsItem:
    """One reading block to encode and insert (arrays owned by the store)."""

    tool: str
    group: str
    timestamps: npt.NDArray[np.int64]
    tags: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]

    kind: ClassVar[str] = "readings"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Encode the block and insert it."""
        data = codec.encode(self.timestamps, self.tags, self.values, self.quality)
        conn.execute(
            "INSERT INTO reading_blocks"
            " (tool, poll_group, t_min, t_max, readings, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                self.tool,
                self.group,
                int(self.timestamps.min()),
                int(self.timestamps.max()),
                int(self.values.size),
                data,
            ),
        )


@dataclass(frozen=True, slots=True)
class MessageItem:
    """One outbox message; ``created_ns`` already filled in."""

    message: OutboxMessage
    created_ns: int

    kind: ClassVar[str] = "message"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Insert the message into the outbox."""
        m = self.message
        conn.execute(
            "INSERT INTO outbox (priority, topic, payload, qos, retain, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (m.priority, m.topic, m.payload, m.qos, int(m.retain), self.created_ns),
        )


@dataclass(frozen=True, slots=True)
class AlertItem:
    """One alert transition for the local history."""

    tool: str
    tag: str
    model: str
    state: str
    severity: str
    ts_ns: int
    payload: bytes

    kind: ClassVar[str] = "alert"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Insert the alert into the history."""
        conn.execute(
            "INSERT INTO alert_history"
            " (tool, tag, model, state, severity, ts_ns, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.tool,
                self.tag,
                self.model,
                self.state,
                self.severity,
                self.ts_ns,
                self.payload,
            ),
        )


@dataclass(frozen=True, slots=True)
class EventItem:
    """One equipment event for the local history."""

    tool: str
    name: str
    ts_ns: int
    payload: bytes

    kind: ClassVar[str] = "event"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Insert the event into the history."""
        conn.execute(
            "INSERT INTO event_history (tool, name, ts_ns, payload)"
            " VALUES (?, ?, ?, ?)",
            (self.tool, self.name, self.ts_ns, self.payload),
        )


ROLLUP_COLUMNS = (
    "tool, tag, hour_ns, count, minimum, maximum, mean, m2, last, last_ns, bad, "
    "max_score"
)


def rollup_from_row(row: tuple[Any, ...]) -> Rollup:
    """Return the roll-up of a row selected as :data:`ROLLUP_COLUMNS` (NULL -> NaN)."""
    tool, tag, hour_ns, count, mn, mx, mean, m2, last, last_ns, bad, score = row
    return Rollup(
        tool=str(tool),
        tag=str(tag),
        hour_ns=int(hour_ns),
        count=int(count),
        minimum=_as_float(mn),
        maximum=_as_float(mx),
        mean=_as_float(mean),
        m2=_as_float(m2),
        last=_as_float(last),
        last_ns=int(last_ns),
        bad=int(bad),
        max_score=_as_float(score),
    )


# Merging in the upsert itself (the pairwise update of merge_rollups, in SQL)
# spares a read of the stored roll-ups: one statement per row, all in C. In a
# DO UPDATE clause a bare column is the stored row's, ``excluded.`` the new one;
# SQLite's two-argument min/max are NULL when either side is, hence coalesce.
_UPSERT_ROLLUP = (
    f"INSERT INTO rollups ({ROLLUP_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tool, tag, hour_ns) DO UPDATE SET"
    " count = count + excluded.count,"
    " minimum = coalesce(min(minimum, excluded.minimum), minimum, excluded.minimum),"
    " maximum = coalesce(max(maximum, excluded.maximum), maximum, excluded.maximum),"
    " mean = CASE WHEN excluded.count = 0 THEN mean"
    "  WHEN count = 0 THEN excluded.mean"
    "  ELSE mean + (excluded.mean - mean) * excluded.count"
    "   / (count + excluded.count) END,"
    " m2 = CASE WHEN excluded.count = 0 THEN m2"
    "  WHEN count = 0 THEN excluded.m2"
    "  ELSE m2 + excluded.m2 + (excluded.mean - mean) * (excluded.mean - mean)"
    "   * count * excluded.count / (count + excluded.count) END,"
    " last = CASE WHEN excluded.last_ns >= last_ns THEN excluded.last ELSE last END,"
    " last_ns = max(last_ns, excluded.last_ns),"
    " bad = bad + excluded.bad,"
    " max_score = coalesce("
    "  max(max_score, excluded.max_score), max_score, excluded.max_score)"
)


@dataclass(frozen=True, slots=True)
class RollupItem:
    """Roll-ups of many tags to merge into the stored ones of the same hour."""

    rollups: RollupColumns

    kind: ClassVar[str] = "rollup"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Insert each roll-up, or merge it into the stored one (see merge_rollups)."""
        r = self.rollups
        conn.executemany(
            _UPSERT_ROLLUP,
            zip(
                itertools.repeat(r.tool),
                r.tags,
                itertools.repeat(r.hour_ns),
                r.count.tolist(),
                _nullables(r.minimum),
                _nullables(r.maximum),
                _nullables(r.mean),
                _nullables(r.m2),
                _nullables(r.last),
                r.last_ns.tolist(),
                r.bad.tolist(),
                _nullables(r.max_score),
                strict=False,  # the repeats are endless; the columns agree
            ),
        )


@dataclass(frozen=True, slots=True)
class StateItem:
    """A state snapshot replacing the one stored under ``key``."""

    key: str
    blob: bytes
    updated_ns: int

    kind: ClassVar[str] = "state"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Upsert the snapshot."""
        conn.execute(
            "INSERT INTO state (key, blob, updated_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET"
            " blob = excluded.blob, updated_ns = excluded.updated_ns",
            (self.key, self.blob, self.updated_ns),
        )


@dataclass(frozen=True, slots=True)
class AckItem:
    """Outbox ids the broker acknowledged, to delete."""

    ids: tuple[int, ...]

    kind: ClassVar[str] = "ack"

    def apply(self, conn: sqlite3.Connection, codec: BlockCodec) -> None:
        """Delete the acknowledged messages (ids already gone are ignored)."""
        conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in self.ids])


Item = (
    ReadingsItem
    | MessageItem
    | AlertItem
    | EventItem
    | RollupItem
    | StateItem
    | AckItem
)


class Writer:
    """Owner of the write connection: queue, group commit, retention.

    Thread-safe: :meth:`submit`, :meth:`flush`, :meth:`stop` and the properties
    may be called from any thread.
    """

    def __init__(self, conn: sqlite3.Connection, config: StoreConfig) -> None:
        """Take ownership of ``conn`` (autocommit mode); call :meth:`start` next."""
        self._conn = conn
        self._config = config
        self._codec = BlockCodec(config.value_format, config.compression_level)
        self._interval_s = config.commit_interval_ms * _MS
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._enqueued = 0  # items ever submitted
        self._done = 0  # items committed, or dropped
        self._flush_target = 0  # commit at once until _done reaches this
        self._retention_requested = 0  # requests ever made
        self._retention_taken = 0  # requests the writer has started on
        self._retention_done = 0  # requests the writer has completed
        self._stopping = False
        self._acking: set[int] = set()
        self._commit_failures = 0
        self.commits = 0
        self.dropped = 0
        self._thread = threading.Thread(
            target=self._run, name="store-writer", daemon=True
        )

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    @property
    def pending(self) -> int:
        """Items submitted and not yet committed (or dropped)."""
        with self._cond:
            return self._enqueued - self._done

    def acking(self) -> frozenset[int]:
        """Outbox ids whose ack is submitted but not yet committed."""
        with self._cond:
            return frozenset(self._acking)

    def submit(self, item: Item) -> None:
        """Queue ``item`` for the next group commit; returns at once.

        Raises:
            StoreClosedError: the writer was closed.
        """
        with self._cond:
            if self._stopping:
                raise StoreClosedError("store is closed")
            if isinstance(item, AckItem):
                self._acking.update(item.ids)
            self._queue.append(item)
            self._enqueued += 1
            if len(self._queue) == 1:
                self._cond.notify()

    def enforce_retention(self, timeout: float) -> bool:
        """Commit, apply the age and size limits now, and wait until that is done.

        Returns False if it took longer than ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._retention_requested += 1
            target = self._retention_requested
            self._cond.notify()
            while self._retention_done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def flush(self, timeout: float) -> bool:
        """Commit now and wait until every item submitted before the call is done.

        Returns True when they were committed (items dropped as bad count as
        done), False on timeout (seconds) or when a commit failed meanwhile.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            failures = self._commit_failures
            self._flush_target = max(self._flush_target, target)
            self._cond.notify()
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return self._commit_failures == failures

    def stop(self, timeout: float) -> bool:
        """Commit what is queued and stop the thread; False if it did not stop.

        Waits at most ``timeout`` seconds. Idempotent.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("store_close_timeout", pending=self.pending, timeout_s=timeout)
            return False
        return True

    def close_connection(self) -> None:
        """Close the write connection; only after :meth:`stop` returned True."""
        self._conn.close()

    def _run(self) -> None:
        """Apply items as they come, commit in groups, enforce retention."""
        try:
            self._loop()
        except BaseException:
            log.exception("store_writer_crashed", pending=self.pending)
            raise

    def _loop(self) -> None:
        txn = _Transaction()
        next_age_check = time.monotonic() + self._config.retention_check_s
        while True:
            work = self._take(txn, next_age_check)
            for item in work.items:
                self._apply(item, txn)
                if txn.open and time.monotonic() >= txn.deadline:
                    self._commit(txn)
            if txn.open and (
                work.flush
                or work.stopping
                or work.retention
                or time.monotonic() >= txn.deadline
            ):
                self._commit(txn)
            if txn.open:
                continue

            self._mark_done(txn.applied)
            now = time.monotonic()
            age_due = work.retention or now >= next_age_check
            if age_due:
                next_age_check = now + self._config.retention_check_s
            if age_due or txn.wrote_since_size_check:
                self._enforce_retention(age=age_due)
                txn.wrote_since_size_check = False
            if work.retention:
                with self._cond:
                    self._retention_done = self._retention_taken
                    self._cond.notify_all()
            # Submissions are refused once stopping is seen, so the queue is empty.
            if work.stopping:
                return

    def _take(self, txn: _Transaction, next_age_check: float) -> _Work:
        """Wait for work, then take everything queued and the pending requests."""
        with self._cond:
            while (
                not self._queue
                and not self._stopping
                and self._retention_taken == self._retention_requested
                and self._flush_target <= self._done
            ):
                wake = txn.deadline if txn.open else next_age_check
                remaining = wake - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            work = _Work(
                items=list(self._queue),
                stopping=self._stopping,
                flush=self._flush_target > self._done,
                retention=self._retention_taken < self._retention_requested,
            )
            self._queue.clear()
            self._retention_taken = self._retention_requested
            return work

    def _apply(self, item: Item, txn: _Transaction) -> None:
        """Write one item into the open transaction; drop it alone if it fails."""
        txn.applied += 1
        if isinstance(item, AckItem):
            # Released after the commit either way: a failed ack is resent.
            txn.acks.extend(item.ids)
        try:
            if not txn.open:
                self._conn.execute("BEGIN")
                txn.begin(time.monotonic() + self._interval_s)
            txn.items += 1
            item.apply(self._conn, self._codec)
        except Exception as exc:
            self.dropped += 1
            log.exception("store_write_failed", kind=item.kind, error=str(exc))
            if txn.open and not self._conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error).
                self._lose(txn, "rolled back by the database", counted=1)
            return
        txn.wrote_since_size_check = True

    def _commit(self, txn: _Transaction) -> None:
        """Commit the open transaction and release the flush waiters."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._lose(txn, str(exc))
            return
        self.commits += 1
        self._finish(txn)

    def _lose(self, txn: _Transaction, error: str, counted: int = 0) -> None:
        """Count the transaction's items as dropped (``counted`` already were)."""
        self.dropped += txn.items - counted
        log.error("store_commit_failed", items=txn.items, error=error)
        with self._cond:
            self._commit_failures += 1
        self._finish(txn)

    def _finish(self, txn: _Transaction) -> None:
        """Mark the transaction's items done and forget the ids it acknowledged."""
        with self._cond:
            self._done = txn.applied
            self._acking.difference_update(txn.acks)
            self._cond.notify_all()
        txn.close()

    def _mark_done(self, applied: int) -> None:
        with self._cond:
            self._done = applied
            self._cond.notify_all()

    def _enforce_retention(self, *, age: bool) -> None:
        """Run the age (when due) and size limits in a transaction of their own."""
        now_ns = time.time_ns()
        evictions: list[Eviction] = []
        try:
            self._conn.execute("BEGIN")
            if age:
                evictions += enforce_age(self._conn, self._config, now_ns)
            evictions += enforce_size(self._conn, self._config, now_ns)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.exception("store_retention_failed", error=str(exc))
            return
        log_evictions(evictions)
        if evictions:
            try:
                release_free_pages(self._conn)
            except sqlite3.Error as exc:
                log.warning("store_vacuum_failed", error=str(exc))

    def _rollback(self) -> None:
        """Roll back whatever is open; the database may already have done so."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")


@dataclass(frozen=True, slots=True)
class _Work:
    """What the writer took from the queue in one round."""

    items: list[Item]
    stopping: bool
    flush: bool
    retention: bool


class _Transaction:
    """Book-keeping of the writer's open transaction."""

    def __init__(self) -> None:
        self.open = False
        self.deadline = math.inf
        self.applied = 0  # items taken from the queue since the writer started
        self.items = 0  # items in the open transaction
        self.acks: list[int] = []
        self.wrote_since_size_check = False

    def begin(self, deadline: float) -> None:
        self.open = True
        self.deadline = deadline

    def close(self) -> None:
        self.open = False
        self.deadline = math.inf
        self.items = 0
        self.acks = []


def _nullables(column: npt.NDArray[np.float64]) -> list[float | None]:
    """Return ``column`` as a list with NaN as None: SQLite stores NaN as NULL."""
    values: list[float | None] = column.tolist()
    if np.isnan(column).any():
        values = [None if x != x else x for x in values]  # NaN is not equal to itself
    return values


def _as_float(x: float | None) -> float:
    return math.nan if x is None else float(x)
