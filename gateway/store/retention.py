"""Retention: bound the database by age and by size, oldest and cheapest data first.

Raw reading blocks older than ``max_age_days`` are deleted. When the pages in use
exceed ``max_bytes``, rows are evicted kind by kind in :data:`EVICTION_ORDER`
(oldest first within a kind) until the database is back under
:data:`TARGET_FRACTION` of the limit, so that the next few commits do not trigger
another eviction straight away. Every evicted row is counted per kind in the
``evictions`` table. The functions here run inside the writer's transaction; the
caller commits, releases the free pages and logs what was evicted.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import structlog

from gateway.config.models import StoreConfig
from gateway.store.db import used_bytes
from gateway.store.records import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_SUMMARY,
    PRIORITY_TELEMETRY,
)

__all__ = [
    "EVICTION_ORDER",
    "ROLLUP_KEEP_NS",
    "TARGET_FRACTION",
    "Eviction",
    "enforce_age",
    "enforce_size",
    "log_evictions",
    "release_free_pages",
]

log = structlog.get_logger(__name__)

NS_PER_DAY = 86_400 * 1_000_000_000
# Roll-ups of the last week are the local history an operator looks at first.
ROLLUP_KEEP_NS = 7 * NS_PER_DAY
# Evict down to this fraction of max_bytes, not just under it.
TARGET_FRACTION = 0.9
# Rows examined per eviction round before the used size is measured again.
EVICT_BATCH_ROWS = 1_000
# Fixed bytes per roll-up row (key and twelve numbers), for choosing how many to drop.
ROLLUP_ROW_BYTES = 120


@dataclass(frozen=True, slots=True)
class Eviction:
    """Rows of one kind evicted for one reason (``age`` or ``size``)."""

    kind: str
    rows: int
    reason: str


@dataclass(frozen=True, slots=True)
class Victims:
    """One kind of evictable row: where it lives and how to find the oldest first.

    ``where`` may use the named parameter ``:rollup_cutoff`` (nanoseconds).
    ``size`` is an SQL expression estimating a row's bytes.
    """

    kind: str
    table: str
    where: str
    order: str
    size: str


def _outbox(kind: str, priority: int) -> Victims:
    return Victims(
        kind,
        "outbox",
        f"priority = {priority}",
        "id",
        "length(payload) + length(topic)",
    )


EVICTION_ORDER: tuple[Victims, ...] = (
    Victims("readings", "reading_blocks", "1", "t_max, id", "length(data)"),
    _outbox("telemetry", PRIORITY_TELEMETRY),
    Victims(
        "rollups",
        "rollups",
        "hour_ns < :rollup_cutoff",
        "hour_ns, id",
        f"{ROLLUP_ROW_BYTES} + length(tool) + length(tag)",
    ),
    _outbox("summaries", PRIORITY_SUMMARY),
    Victims("event_history", "event_history", "1", "ts_ns, id", "length(payload)"),
    Victims("alert_history", "alert_history", "1", "ts_ns, id", "length(payload)"),
    _outbox("events", PRIORITY_EVENT),
    _outbox("alerts", PRIORITY_ALERT),
)


def enforce_age(
    conn: sqlite3.Connection, config: StoreConfig, now_ns: int
) -> list[Eviction]:
    """Delete reading blocks whose newest reading is older than ``max_age_days``.

    Returns what was evicted (nothing or one entry).
    """
    cutoff = now_ns - int(config.max_age_days * NS_PER_DAY)
    deleted = conn.execute("DELETE FROM reading_blocks WHERE t_max < ?", (cutoff,))
    return _record(conn, "readings", deleted.rowcount, "age")


def enforce_size(
    conn: sqlite3.Connection, config: StoreConfig, now_ns: int
) -> list[Eviction]:
    """Evict rows in :data:`EVICTION_ORDER` while the database is over ``max_bytes``.

    Returns what was evicted, per kind. Logs ``store_full`` at ERROR when even
    evicting everything evictable does not bring the size under the limit.
    """
    used = used_bytes(conn)
    if used <= config.max_bytes:
        return []
    target = int(config.max_bytes * TARGET_FRACTION)
    evictions: list[Eviction] = []
    for victims in EVICTION_ORDER:
        rows, used = _evict(conn, victims, used, target, now_ns - ROLLUP_KEEP_NS)
        evictions += _record(conn, victims.kind, rows, "size")
        if used <= target:
            break
    if used > config.max_bytes:
        log.error("store_full", used_bytes=used, max_bytes=config.max_bytes)
    return evictions


def _evict(
    conn: sqlite3.Connection, victims: Victims, used: int, target: int, cutoff: int
) -> tuple[int, int]:
    """Delete the oldest rows of one kind until ``used`` <= ``target`` or none remain.

    Returns the rows deleted and the used bytes afterwards.
    """
    select = (
        f"SELECT id, {victims.size} FROM {victims.table} WHERE {victims.where} "
        f"ORDER BY {victims.order} LIMIT {EVICT_BATCH_ROWS}"
    )
    delete = f"DELETE FROM {victims.table} WHERE id = ?"
    evicted = 0
    while used > target:
        batch: list[tuple[int]] = []
        freed = 0
        candidates = conn.execute(select, {"rollup_cutoff": cutoff}).fetchall()
        for row_id, size in candidates:
            batch.append((row_id,))
            freed += size
            if freed >= used - target:
                break
        if not batch:
            break
        conn.executemany(delete, batch)
        evicted += len(batch)
        used = used_bytes(conn)
    return evicted, used


def release_free_pages(conn: sqlite3.Connection) -> None:
    """Return the free pages to the file system, so the file shrinks.

    Runs outside a transaction (it commits one that is open).
    """
    # The pragma frees one page per step; execute() steps a statement that yields
    # no rows only once, while executescript() runs it to completion.
    conn.executescript("PRAGMA incremental_vacuum;")


def log_evictions(evictions: list[Eviction]) -> None:
    """Log each eviction (at WARNING: retention dropped data to stay in bounds)."""
    for eviction in evictions:
        log.warning(
            "store_evicted",
            kind=eviction.kind,
            rows=eviction.rows,
            reason=eviction.reason,
        )


def _record(
    conn: sqlite3.Connection, kind: str, rows: int, reason: str
) -> list[Eviction]:
    """Count ``rows`` evictions of ``kind`` in the ``evictions`` table."""
    if rows <= 0:
        return []
    conn.execute(
        "INSERT INTO evictions (kind, rows) VALUES (?, ?) "
        "ON CONFLICT (kind) DO UPDATE SET rows = rows + excluded.rows",
        (kind, rows),
    )
    return [Eviction(kind, rows, reason)]
