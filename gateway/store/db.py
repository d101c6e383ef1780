"""Opening the SQLite database: integrity check, pragmas, schema and migrations.

A file that is not a database, or fails ``PRAGMA quick_check``, is moved aside
(with its ``-wal`` and ``-shm`` files) and a fresh database is started: a gateway
that refuses to start over a damaged history file loses the readings of today to
protect those of last week. Any other failure to open (permissions, a locked or
missing disk) is raised, since moving the file would not cure it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.store.errors import StoreError

__all__ = [
    "SCHEMA_VERSION",
    "connect_reader",
    "open_writer",
    "used_bytes",
]

log = structlog.get_logger(__name__)

# Large pages keep the overflow chains of multi-megabyte reading blocks short.
PAGE_SIZE = 16_384
# Wait this long for a lock held by another connection (WAL checkpoint, recovery).
BUSY_TIMEOUT_MS = 5_000
# After a checkpoint the WAL file is truncated to this size, bounding its disk use.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# SQLite's primary result codes that mean "the file's content is damaged".
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_PRIMARY_CODE_MASK = 0xFF
# quick_check lists at most this many problems in the log.
_REPORTED_PROBLEMS = 3
_AUTO_VACUUM_INCREMENTAL = 2
_SIDE_FILES = ("-wal", "-shm")
_SQLITE_MAGIC = b"SQLite format 3\x00"

# MIGRATIONS[i] takes the schema from version i to version i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE reading_blocks (
            id INTEGER PRIMARY KEY,
            tool TEXT NOT NULL,
            poll_group TEXT NOT NULL,
            t_min INTEGER NOT NULL,
            t_max INTEGER NOT NULL,
            readings INTEGER NOT NULL,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX reading_blocks_by_tool ON reading_blocks (tool, t_min)",
        "CREATE INDEX reading_blocks_by_age ON reading_blocks (t_max)",
        # AUTOINCREMENT: an id is never reused, so an ack can never hit a newer row.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            priority INTEGER NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            created_ns INTEGER NOT NULL
        )""",
        "CREATE INDEX outbox_by_priority ON outbox (priority, id)",
        """CREATE TABLE alert_history (
            id INTEGER PRIMARY KEY,
            tool TEXT NOT NULL,
            tag TEXT NOT NULL,
            model TEXT NOT NULL,
            state TEXT NOT NULL,
            severity TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX alert_history_by_tool ON alert_history (tool, ts_ns)",
        """CREATE TABLE event_history (
            id INTEGER PRIMARY KEY,
            tool TEXT NOT NULL,
            name TEXT NOT NULL,
            ts_ns INTEGER NOT NULL,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX event_history_by_tool ON event_history (tool, ts_ns)",
        # REAL columns are nullable: SQLite stores NaN as NULL.
        """CREATE TABLE rollups (
            id INTEGER PRIMARY KEY,
            tool TEXT NOT NULL,
            tag TEXT NOT NULL,
            hour_ns INTEGER NOT NULL,
            count INTEGER NOT NULL,
            minimum REAL,
            maximum REAL,
            mean REAL,
            m2 REAL,
            last REAL,
            last_ns INTEGER NOT NULL,
            bad INTEGER NOT NULL,
            max_score REAL,
            UNIQUE (tool, tag, hour_ns)
        )""",
        "CREATE INDEX rollups_by_hour ON rollups (hour_ns)",
        """CREATE TABLE state (
            key TEXT PRIMARY KEY,
            blob BLOB NOT NULL,
            updated_ns INTEGER NOT NULL
        )""",
        """CREATE TABLE evictions (
            kind TEXT PRIMARY KEY,
            rows INTEGER NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def open_writer(path: Path) -> sqlite3.Connection:
    """Open (creating or recovering if needed) the database for its one writer.

    The connection is in autocommit mode (the writer issues ``BEGIN``/``COMMIT``)
    and may be handed to another thread.

    Raises:
        StoreError: the database cannot be opened, or was written by a newer
            schema version than this gateway knows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        problem = _integrity_problem(path)
        if problem is not None:
            _move_aside(path, problem)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        _configure(conn)
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """Open a read-only connection to the database (one per reading thread).

    Raises:
        StoreError: the database cannot be opened.
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path} for reading: {exc}") from exc
    return conn


def used_bytes(conn: sqlite3.Connection) -> int:
    """Return the bytes of the pages that hold data (excluding free pages)."""
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((page_count - free) * page_size)


def _integrity_problem(path: Path) -> str | None:
    """Return why the file is not a sound database, or None if it is."""
    # Decided before SQLite opens the file: on close it would delete a -wal file
    # that is evidence of what went wrong.
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_MAGIC))
    if header and header != _SQLITE_MAGIC[: len(header)]:
        return "file is not a database (no SQLite header)"
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & _PRIMARY_CODE_MASK in _CORRUPTION_CODES:
            return str(exc)
        raise StoreError(f"cannot check store {path}: {exc}") from exc
    finally:
        conn.close()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(row[0]) for row in rows[:_REPORTED_PROBLEMS])


def _move_aside(path: Path, reason: str) -> Path:
    """Rename the database and its side files to ``<name>.corrupt-<UTC time>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    attempt = 1
    while target.exists():
        attempt += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{attempt}")
    path.rename(target)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    log.error(
        "store_corrupt_moved_aside", path=str(path), moved_to=str(target), reason=reason
    )
    return target


def _configure(conn: sqlite3.Connection) -> None:
    """Set the connection's pragmas; page size and auto-vacuum only on a new file."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    is_new = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0
    if is_new:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"the store's file system does not support WAL ({mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    if auto_vacuum != _AUTO_VACUUM_INCREMENTAL:
        log.warning("store_without_incremental_vacuum", auto_vacuum=auto_vacuum)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one transaction per step."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, newer than this gateway's "
            f"{SCHEMA_VERSION}; upgrade the gateway or move the file away"
        )
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("store_schema_migrated", path=str(path), version=step + 1)
