"""The gateway's local store: readings, outbox, histories, roll-ups and state.

Writes go through one writer thread with group commit (see
:mod:`gateway.store.writer`); every ``put_*`` returns at once. Reads run on the
calling thread over a connection of its own; in WAL mode readers never block the
writer, but a read does block its thread, so call readers from the event loop
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from gateway.config.models import StoreConfig
from gateway.store.codec import decode_block
from gateway.store.db import SCHEMA_VERSION, connect_reader, open_writer, used_bytes
from gateway.store.errors import StoreClosedError, StoreError
from gateway.store.records import (
    PRIORITY_ALERT,
    PRIORITY_TELEMETRY,
    AlertRecord,
    EventRecord,
    OutboxMessage,
    OutboxRow,
    Rollup,
    RollupColumns,
    StoreStats,
    ToolStoreStats,
)
from gateway.store.writer import (
    ROLLUP_COLUMNS,
    AckItem,
    AlertItem,
    EventItem,
    MessageItem,
    ReadingsItem,
    RollupItem,
    StateItem,
    Writer,
    rollup_from_row,
)

__all__ = ["Readings", "Store", "StoreReader"]

Readings = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    npt.NDArray[np.float64],
    npt.NDArray[np.uint8],
]

_NS_MIN = -(2**63)
_NS_MAX = 2**63 - 1


class StoreReader:
    """Read access to a store that another process (the daemon) may be writing.

    ``edge-gateway status`` uses it; it never creates, migrates or moves a file.
    """

    _writer: Writer | None = None

    def __init__(self, path: Path) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> StoreReader:
        """Open the existing database at ``path`` for reading.

        Raises:
            StoreError: there is no database at ``path``, or it cannot be read.
        """
        if not path.is_file():
            raise StoreError(f"no store at {path}")
        reader = cls(path)
        try:
            version = reader._reader().execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            reader.close()
            raise StoreError(f"cannot read store {path}: {exc}") from exc
        if version != SCHEMA_VERSION:
            reader.close()
            raise StoreError(
                f"store {path} has schema version {version}, this gateway reads "
                f"{SCHEMA_VERSION} (a daemon still creating it shows 0)"
            )
        return reader

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Close every read connection. Idempotent."""
        with self._readers_lock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    # Readers --------------------------------------------------------------------

    def pending_messages(
        self, limit: int, exclude: Collection[int] = ()
    ) -> list[OutboxRow]:
        """Return up to ``limit`` unacknowledged messages, by priority then age.

        Messages whose ids are in ``exclude`` (those in flight) or whose ack is
        queued are left out.

        Raises:
            StoreClosedError: the store is closed.
        """
        skip = set(exclude) | (self._writer.acking() if self._writer else set())
        rows = self._reader().execute(
            "SELECT id, priority, topic, payload, qos, retain, created_ns FROM outbox"
            " ORDER BY priority, id LIMIT ?",
            (limit + len(skip),),
        )
        out: list[OutboxRow] = []
        for row_id, priority, topic, payload, qos, retain, created_ns in rows:
            if row_id in skip:
                continue
            out.append(
                OutboxRow(
                    row_id,
                    priority,
                    topic,
                    bytes(payload),
                    qos,
                    bool(retain),
                    created_ns,
                )
            )
            if len(out) >= limit:
                break
        return out

    def outbox_backlog(self) -> dict[int, tuple[int, int | None]]:
        """Return ``priority -> (messages queued, oldest creation time in ns)``.

        Priorities with no message map to ``(0, None)``.

        Raises:
            StoreClosedError: the store is closed.
        """
        backlog: dict[int, tuple[int, int | None]] = dict.fromkeys(
            range(PRIORITY_ALERT, PRIORITY_TELEMETRY + 1), (0, None)
        )
        rows = self._reader().execute(
            "SELECT priority, count(*), min(created_ns) FROM outbox GROUP BY priority"
        )
        for priority, count, oldest in rows:
            backlog[priority] = (count, oldest)
        return backlog

    def read_readings(
        self, tool: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> Readings:
        """Return the tool's stored readings with ``start_ns <= t < end_ns``.

        Long format, ordered by time (stable, so by tag within one instant of a
        block): timestamps int64 ``(n,)`` in nanoseconds, tags int32 ``(n,)``,
        values float64 ``(n,)``, quality uint8 ``(n,)``. Readings not yet
        committed are not included.

        Raises:
            StoreClosedError: the store is closed.
            CodecError: a stored block is damaged.
        """
        start = _NS_MIN if start_ns is None else start_ns
        end = _NS_MAX if end_ns is None else end_ns
        rows = self._reader().execute(
            "SELECT t_min, t_max, data FROM reading_blocks"
            " WHERE tool = ? AND t_min < ? AND t_max >= ? ORDER BY t_min, id",
            (tool, end, start),
        )
        parts = [
            _long_format(t_min, t_max, data, start, end) for t_min, t_max, data in rows
        ]
        if not parts:
            return (
                np.empty(0, np.int64),
                np.empty(0, np.int32),
                np.empty(0, np.float64),
                np.empty(0, np.uint8),
            )
        ts, tags, values, quality = (
            np.concatenate(column) for column in zip(*parts, strict=True)
        )
        # Blocks of one poll group arrive in order: sort only when groups overlap.
        if ts.size > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            order = np.argsort(ts, kind="stable")
            ts, tags, values, quality = (
                ts[order],
                tags[order],
                values[order],
                quality[order],
            )
        return ts, tags, values, quality

    def get_state(self, key: str) -> bytes | None:
        """Return the state snapshot stored under ``key``, or None.

        Raises:
            StoreClosedError: the store is closed.
        """
        row = (
            self._reader()
            .execute("SELECT blob FROM state WHERE key = ?", (key,))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def rollups(self, tool: str) -> list[Rollup]:
        """Return the tool's hourly roll-ups, by tag then hour.

        Raises:
            StoreClosedError: the store is closed.
        """
        rows = self._reader().execute(
            f"SELECT {ROLLUP_COLUMNS} FROM rollups"
            " WHERE tool = ? ORDER BY tag, hour_ns",
            (tool,),
        )
        return [rollup_from_row(row) for row in rows]

    def alert_history(self, tool: str | None = None) -> list[AlertRecord]:
        """Return the stored alert transitions (of ``tool``, or all), oldest first.

        Raises:
            StoreClosedError: the store is closed.
        """
        where, args = ("WHERE tool = ?", (tool,)) if tool is not None else ("", ())
        rows = self._reader().execute(
            "SELECT id, tool, tag, model, state, severity, ts_ns, payload"
            f" FROM alert_history {where} ORDER BY ts_ns, id",
            args,
        )
        return [
            AlertRecord(i, t, tag, m, st, sev, ts, bytes(p))
            for i, t, tag, m, st, sev, ts, p in rows
        ]

    def event_history(self, tool: str | None = None) -> list[EventRecord]:
        """Return the stored equipment events (of ``tool``, or all), oldest first.

        Raises:
            StoreClosedError: the store is closed.
        """
        where, args = ("WHERE tool = ?", (tool,)) if tool is not None else ("", ())
        rows = self._reader().execute(
            f"SELECT id, tool, name, ts_ns, payload FROM event_history {where}"
            " ORDER BY ts_ns, id",
            args,
        )
        return [EventRecord(i, t, n, ts, bytes(p)) for i, t, n, ts, p in rows]

    def tool_stats(self) -> dict[str, ToolStoreStats]:
        """Return, per tool with stored readings, readings, blocks and newest time.

        Raises:
            StoreClosedError: the store is closed.
        """
        rows = self._reader().execute(
            "SELECT tool, sum(readings), count(*), max(t_max) FROM reading_blocks"
            " GROUP BY tool"
        )
        return {
            tool: ToolStoreStats(readings=readings, blocks=blocks, last_reading_ns=last)
            for tool, readings, blocks, last in rows
        }

    def stats(self) -> StoreStats:
        """Return the store's sizes (bytes), eviction counts and writer activity.

        Raises:
            StoreClosedError: the store is closed.
        """
        conn = self._reader()
        blocks, readings = conn.execute(
            "SELECT count(*), coalesce(sum(readings), 0) FROM reading_blocks"
        ).fetchone()
        evictions = dict(conn.execute("SELECT kind, rows FROM evictions").fetchall())
        return StoreStats(
            file_bytes=_file_size(self.path),
            wal_bytes=_file_size(self.path.with_name(self.path.name + "-wal")),
            used_bytes=used_bytes(conn),
            evictions=evictions,
            blocks=blocks,
            readings=readings,
            commits=self._writer.commits if self._writer else 0,
            pending=self._writer.pending if self._writer else 0,
            dropped=self._writer.dropped if self._writer else 0,
        )

    def _reader(self) -> sqlite3.Connection:
        """Return this thread's read connection, opening it on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        with self._readers_lock:
            if self._closed:
                raise StoreClosedError("store is closed")
            if conn is None:
                conn = connect_reader(self.path)
                self._readers.append(conn)
                self._local.conn = conn
        return conn


class Store(StoreReader):
    """One SQLite database in WAL mode, written by one thread with group commit.

    Open with :meth:`open`; close with :meth:`close` (or use as a context manager).
    Producers may call the ``put_*`` methods from any thread or the event loop;
    they only queue, and raise :class:`StoreClosedError` after :meth:`close`.
    """

    def __init__(self, path: Path, config: StoreConfig, writer: Writer) -> None:
        """Use :meth:`open`; this wires an already opened writer."""
        super().__init__(path)
        self.config = config
        self._writer: Writer = writer

    @classmethod
    def open(  # type: ignore[override]
        cls, path: Path, config: StoreConfig
    ) -> Store:
        """Open or create the database at ``path`` and start the writer thread.

        Parent folders are created. A damaged file is moved aside to
        ``<name>.corrupt-<UTC time>`` and a fresh database started (logged at
        ERROR as ``store_corrupt_moved_aside``).

        Raises:
            StoreError: the database cannot be opened, or has a newer schema.
        """
        writer = Writer(open_writer(path), config)
        writer.start()
        return cls(path, config, writer)

    def __enter__(self) -> Store:
        return self

    @property
    def writer_progress(self) -> tuple[int, int]:
        """``(items waiting to be committed, commits plus items dropped so far)``.

        Cheap (no SQL): the service watchdog reads it every few seconds.
        """
        return self._writer.pending, self._writer.commits + self._writer.dropped

    # Producers ------------------------------------------------------------------

    def put_readings(
        self,
        tool: str,
        group: str,
        timestamps: npt.NDArray[np.int64],
        tags: npt.NDArray[np.int32],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
    ) -> None:
        """Queue one poll's readings, stored as one compressed block.

        The store takes ownership of the arrays: the caller must not change them
        afterwards (they are not copied). Shapes as in a ``ReadingBatch``:
        timestamps ``(steps,)`` in nanoseconds, tags ``(k,)``, values and quality
        ``(steps, k)``. An empty batch is ignored.

        Raises:
            ValueError: the shapes do not agree.
            StoreClosedError: the store is closed.
        """
        steps, k = np.shape(timestamps), np.shape(tags)
        if len(steps) != 1 or len(k) != 1:
            raise ValueError("timestamps and tags must be one-dimensional")
        shape = (steps[0], k[0])
        if np.shape(values) != shape or np.shape(quality) != shape:
            raise ValueError(
                f"values {np.shape(values)} and quality {np.shape(quality)} "
                f"must both be {shape}"
            )
        if steps[0] and k[0]:
            self._writer.submit(
                ReadingsItem(tool, group, timestamps, tags, values, quality)
            )

    def put_message(self, message: OutboxMessage) -> None:
        """Queue an MQTT message for the publisher (``created_ns`` 0 means now).

        Raises:
            ValueError: the priority is not one of the ``PRIORITY_*`` constants.
            StoreClosedError: the store is closed.
        """
        if not PRIORITY_ALERT <= message.priority <= PRIORITY_TELEMETRY:
            raise ValueError(f"priority must be 0..3, not {message.priority}")
        created_ns = message.created_ns or time.time_ns()
        self._writer.submit(MessageItem(message, created_ns))

    def put_alert(
        self,
        tool: str,
        tag: str,
        model: str,
        state: str,
        severity: str,
        ts_ns: int,
        payload: bytes,
    ) -> None:
        """Queue an alert transition for the local alert history (``ts_ns`` in ns).

        Raises:
            StoreClosedError: the store is closed.
        """
        self._writer.submit(
            AlertItem(tool, tag, model, state, severity, ts_ns, payload)
        )

    def put_event(self, tool: str, name: str, ts_ns: int, payload: bytes) -> None:
        """Queue an equipment event for the local event history (``ts_ns`` in ns).

        Raises:
            StoreClosedError: the store is closed.
        """
        self._writer.submit(EventItem(tool, name, ts_ns, payload))

    def put_rollups(self, rollups: RollupColumns) -> None:
        """Queue statistics to merge into their tags' roll-ups of one hour.

        ``m2`` is the sum of squared deviations from ``mean`` over ``count`` good
        readings; see :class:`~gateway.store.records.Rollup`. Merging several
        partial roll-ups of the same hour gives the statistics of all of them.

        Raises:
            StoreClosedError: the store is closed.
        """
        self._writer.submit(RollupItem(rollups))

    def put_state(self, key: str, blob: bytes) -> None:
        """Queue a state snapshot to replace the one stored under ``key``.

        Raises:
            StoreClosedError: the store is closed.
        """
        self._writer.submit(StateItem(key, blob, time.time_ns()))

    def ack_messages(self, ids: Sequence[int]) -> None:
        """Queue the deletion of outbox messages the broker acknowledged.

        Until the deletion is committed, :meth:`pending_messages` leaves them out.

        Raises:
            StoreClosedError: the store is closed.
        """
        if ids:
            self._writer.submit(AckItem(tuple(ids)))

    def enforce_retention(self, timeout: float = 60.0) -> bool:
        """Commit, then apply the age and size limits now rather than on schedule.

        Blocks until done; returns False if that took longer than ``timeout``
        seconds. The writer also does this every ``retention_check_s`` seconds
        (and checks the size limit after every commit) on its own.

        Raises:
            StoreClosedError: the store is closed.
        """
        if self._closed:
            raise StoreClosedError("store is closed")
        return self._writer.enforce_retention(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit now; block until everything queued before the call is committed.

        Returns False if that took longer than ``timeout`` seconds or a commit
        failed (the items are then counted in ``stats().dropped``).
        """
        return self._writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close every connection.

        Waits at most ``timeout`` seconds for the writer. Idempotent.
        """
        if self._closed:
            return
        super().close()
        stopped = self._writer.stop(timeout)
        # Closed last, the writer's connection checkpoints and removes the WAL.
        if stopped:
            self._writer.close_connection()


def _long_format(t_min: int, t_max: int, data: bytes, start: int, end: int) -> Readings:
    """Decode a block into long-format columns, keeping ``start <= t < end``."""
    block = decode_block(data)
    steps, k = block.values.shape
    columns: Readings = (
        np.repeat(block.timestamps, k),
        np.tile(block.tags, steps),
        block.values.reshape(-1),
        block.quality.reshape(-1),
    )
    if start <= t_min and t_max < end:
        return columns
    keep = (columns[0] >= start) & (columns[0] < end)
    return columns[0][keep], columns[1][keep], columns[2][keep], columns[3][keep]


def _file_size(path: Path) -> int:
    """Return the size of ``path`` in bytes, 0 if it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
