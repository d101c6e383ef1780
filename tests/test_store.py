"""The local store: readings, outbox, roll-ups, retention, recovery and durability."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from gateway.config.models import StoreConfig
from gateway.store import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_SUMMARY,
    PRIORITY_TELEMETRY,
    OutboxMessage,
    Rollup,
    RollupColumns,
    Store,
    StoreClosedError,
    StoreError,
    merge_rollups,
)

SEED = 1_234
T0_NS = 1_700_000_000_000_000_000
SECOND_NS = 1_000_000_000
HOUR_NS = 3_600 * SECOND_NS
DAY_NS = 24 * HOUR_NS
MIN_MAX_BYTES = 1_000_000
KIB = 1_024
REPO = Path(__file__).resolve().parents[1]
CORRUPT_NAME = re.compile(r"^gateway\.db\.corrupt-\d{8}T\d{6}Z$")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Return a database path in a folder that does not exist yet."""
    return tmp_path / "data" / "gateway.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """Return an open store with default settings, closed after the test."""
    with Store.open(db_path, StoreConfig()) as opened:
        yield opened


def _readings(
    t0_ns: int, steps: int, k: int, rng: np.random.Generator
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    npt.NDArray[np.float64],
    npt.NDArray[np.uint8],
]:
    """Return one poll's arrays: a step per second from ``t0_ns``, tags 0..k-1."""
    timestamps = t0_ns + np.arange(steps, dtype=np.int64) * SECOND_NS
    tags = np.arange(k, dtype=np.int32)
    values = rng.normal(100.0, 0.3, (steps, k))
    quality = rng.integers(0, 2, (steps, k), dtype=np.uint8) * 0x80
    return timestamps, tags, values, quality


def _message(priority: int, n: int, size: int = 8) -> OutboxMessage:
    """Return a message whose payload starts with ``n`` and is ``size`` bytes long."""
    payload = str(n).encode().ljust(size, b".")
    return OutboxMessage(priority, f"edge/site/gw/tool/{n}", payload)


def _quick_check(path: Path) -> str:
    """Return the result of ``PRAGMA quick_check`` on the database at ``path``."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA quick_check").fetchone()[0])
    finally:
        conn.close()


def test_open_creates_folders_and_sets_pragmas(db_path: Path) -> None:
    """Opening creates the parent folder and a WAL database with incremental vacuum."""
    with Store.open(db_path, StoreConfig()):
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
            assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        finally:
            conn.close()


def test_readings_round_trip_in_time_order(store: Store) -> None:
    """Blocks of two poll groups come back in long format, time ordered, as float32."""
    rng = np.random.default_rng(SEED)
    fast = _readings(T0_NS, 10, 4, rng)
    slow = _readings(T0_NS + SECOND_NS // 2, 3, 2, rng)
    store.put_readings("etch-01", "fast", *fast)
    store.put_readings("etch-01", "slow", *slow)
    store.put_readings("etch-02", "fast", *_readings(T0_NS, 5, 5, rng))
    assert store.flush()

    ts, tags, values, quality = store.read_readings("etch-01")

    assert ts.size == 10 * 4 + 3 * 2
    assert bool(np.all(np.diff(ts) >= 0))
    fast_rows = np.isin(ts, fast[0]) & (tags < 4)
    assert np.array_equal(ts[fast_rows], np.repeat(fast[0], 4))
    assert np.array_equal(tags[fast_rows], np.tile(fast[1], 10))
    expected = fast[2].astype(np.float32).astype(np.float64).reshape(-1)
    assert np.array_equal(values[fast_rows], expected)
    assert np.array_equal(quality[fast_rows], fast[3].reshape(-1))
    dtypes = [a.dtype for a in (ts, tags, values, quality)]
    assert dtypes == [np.dtype(t) for t in (np.int64, np.int32, np.float64, np.uint8)]


def test_read_readings_honours_the_time_range(store: Store) -> None:
    """Only readings with start_ns <= t < end_ns are returned."""
    store.put_readings(
        "etch-01", "fast", *_readings(T0_NS, 10, 3, np.random.default_rng(1))
    )
    assert store.flush()

    ts, _, _, _ = store.read_readings(
        "etch-01", start_ns=T0_NS + 2 * SECOND_NS, end_ns=T0_NS + 5 * SECOND_NS
    )

    assert sorted(set(ts.tolist())) == [T0_NS + i * SECOND_NS for i in (2, 3, 4)]
    assert ts.size == 3 * 3
    assert store.read_readings("unknown")[0].size == 0


def test_float64_format_stores_values_losslessly(db_path: Path) -> None:
    """With value_format float64 the stored values are bit-exact, NaN included."""
    arrays = _readings(T0_NS, 6, 3, np.random.default_rng(SEED))
    arrays[2][2, 1] = math.nan
    arrays[2][3, 0] = -math.inf
    with Store.open(db_path, StoreConfig(value_format="float64")) as store:
        store.put_readings("etch-01", "fast", *arrays)
        assert store.flush()

        values = store.read_readings("etch-01")[2]

    assert np.array_equal(values.view(np.uint64), arrays[2].reshape(-1).view(np.uint64))


def test_put_readings_rejects_mismatched_shapes(store: Store) -> None:
    """Arrays whose shapes disagree are refused at once with ValueError."""
    ts, tags, values, quality = _readings(T0_NS, 4, 3, np.random.default_rng(1))

    with pytest.raises(ValueError, match="must both be"):
        store.put_readings("etch-01", "fast", ts, tags, values[:, :2], quality)


def test_tool_stats_count_readings_and_blocks(store: Store) -> None:
    """Per tool, the store reports readings, blocks and the newest timestamp."""
    rng = np.random.default_rng(SEED)
    store.put_readings("etch-01", "fast", *_readings(T0_NS, 10, 4, rng))
    store.put_readings(
        "etch-01", "fast", *_readings(T0_NS + 10 * SECOND_NS, 10, 4, rng)
    )
    assert store.flush()

    stats = store.tool_stats()["etch-01"]

    assert (stats.readings, stats.blocks) == (80, 2)
    assert stats.last_reading_ns == T0_NS + 19 * SECOND_NS
    assert store.stats().readings == 80


def test_outbox_orders_by_priority_then_id(store: Store) -> None:
    """Pending messages come alerts first, then events, summaries, telemetry, FIFO."""
    priorities = [PRIORITY_TELEMETRY, PRIORITY_ALERT, PRIORITY_SUMMARY, PRIORITY_EVENT]
    for n in range(12):
        store.put_message(_message(priorities[n % 4], n))
    assert store.flush()

    rows = store.pending_messages(limit=100)

    assert [(r.priority, r.id) for r in rows] == sorted(
        (r.priority, r.id) for r in rows
    )
    assert [r.payload[:2].rstrip(b".") for r in rows[:3]] == [b"1", b"5", b"9"]
    assert len(store.pending_messages(limit=5)) == 5


def test_outbox_exclude_and_ack(store: Store) -> None:
    """Excluded ids are skipped, and acked messages vanish, even before the commit."""
    for n in range(5):
        store.put_message(_message(PRIORITY_EVENT, n))
    assert store.flush()
    ids = [r.id for r in store.pending_messages(limit=10)]

    assert [r.id for r in store.pending_messages(10, exclude={ids[0]})] == ids[1:]

    store.ack_messages(ids[:2])
    assert [r.id for r in store.pending_messages(10)] == ids[2:]
    assert store.flush()
    assert store.outbox_backlog()[PRIORITY_EVENT][0] == 3


def test_outbox_backlog_counts_and_oldest(store: Store) -> None:
    """The backlog gives per priority the count and the oldest creation time."""
    store.put_message(OutboxMessage(PRIORITY_SUMMARY, "t", b"a", created_ns=T0_NS + 5))
    store.put_message(OutboxMessage(PRIORITY_SUMMARY, "t", b"b", created_ns=T0_NS))
    before = time.time_ns()
    store.put_message(OutboxMessage(PRIORITY_ALERT, "t", b"c"))
    assert store.flush()

    backlog = store.outbox_backlog()

    assert backlog[PRIORITY_SUMMARY] == (2, T0_NS)
    count, oldest = backlog[PRIORITY_ALERT]
    assert count == 1
    assert oldest is not None
    assert oldest >= before
    assert backlog[PRIORITY_TELEMETRY] == (0, None)


def test_message_priority_is_checked(store: Store) -> None:
    """A priority outside 0..3 is refused with ValueError."""
    with pytest.raises(ValueError, match="priority"):
        store.put_message(OutboxMessage(7, "t", b""))


def test_flush_commits_before_the_interval(db_path: Path) -> None:
    """Queued items are invisible to readers until flush commits them."""
    with Store.open(db_path, StoreConfig(commit_interval_ms=10_000)) as store:
        store.put_message(_message(PRIORITY_ALERT, 1))
        time.sleep(0.05)
        assert store.pending_messages(10) == []
        assert store.stats().pending == 1

        assert store.flush()

        assert len(store.pending_messages(10)) == 1
        assert store.stats().pending == 0


def test_group_commit_happens_within_the_interval(db_path: Path) -> None:
    """Without flush, a burst is committed together within the commit interval."""
    interval_ms = 100
    with Store.open(db_path, StoreConfig(commit_interval_ms=interval_ms)) as store:
        commits_before = store.stats().commits
        start = time.monotonic()
        for n in range(50):
            store.put_message(_message(PRIORITY_EVENT, n))
        while len(store.pending_messages(100)) < 50:
            assert time.monotonic() - start < 10 * interval_ms / 1_000
            time.sleep(0.005)

        assert store.stats().commits - commits_before == 1


def test_flush_from_many_threads(store: Store) -> None:
    """Producers on several threads each see their own items committed by flush."""
    results: list[bool] = []

    def produce(offset: int) -> None:
        for n in range(100):
            store.put_message(_message(PRIORITY_SUMMARY, offset + n))
        results.append(store.flush())
        results.append(len(store.pending_messages(1_000)) >= 100)

    threads = [threading.Thread(target=produce, args=(i * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [True] * 8
    assert store.outbox_backlog()[PRIORITY_SUMMARY][0] == 400


async def test_producers_on_the_event_loop(store: Store) -> None:
    """The event loop enqueues without blocking and reads through a worker thread."""
    store.put_message(_message(PRIORITY_ALERT, 1))
    assert await asyncio.to_thread(store.flush)

    rows = await asyncio.to_thread(store.pending_messages, 10)

    assert [r.priority for r in rows] == [PRIORITY_ALERT]


def test_state_is_upserted(store: Store) -> None:
    """A state snapshot replaces the previous one under the same key."""
    store.put_state("etch-01/ewma", b"one")
    store.put_state("etch-01/ewma", b"two")
    assert store.flush()

    assert store.get_state("etch-01/ewma") == b"two"
    assert store.get_state("missing") is None


def test_alert_and_event_history(store: Store) -> None:
    """Alert and event histories are kept per tool, oldest first."""
    store.put_alert(
        "etch-01", "rf_power", "ewma", "raised", "warning", T0_NS + 2, b"{}"
    )
    store.put_alert("etch-01", "rf_power", "ewma", "cleared", "warning", T0_NS + 9, b"")
    store.put_alert("etch-02", "pressure", "ewma", "raised", "critical", T0_NS, b"")
    store.put_event("etch-01", "LotStart", T0_NS, b"{}")
    assert store.flush()

    alerts = store.alert_history("etch-01")

    assert [a.state for a in alerts] == ["raised", "cleared"]
    assert len(store.alert_history()) == 3
    assert [e.name for e in store.event_history("etch-01")] == ["LotStart"]


def _naive_rollup(tool: str, tag: str, chunk: npt.NDArray[np.float64]) -> Rollup:
    """Return the roll-up of one chunk of readings, computed directly."""
    return Rollup(
        tool=tool,
        tag=tag,
        hour_ns=T0_NS,
        count=chunk.size,
        minimum=float(chunk.min()) if chunk.size else math.nan,
        maximum=float(chunk.max()) if chunk.size else math.nan,
        mean=float(chunk.mean()) if chunk.size else math.nan,
        m2=float(((chunk - chunk.mean()) ** 2).sum()) if chunk.size else 0.0,
        last=float(chunk[-1]) if chunk.size else math.nan,
        last_ns=T0_NS + chunk.size,
        bad=1,
        max_score=float(chunk.size),
    )


def test_rollup_merge_matches_the_naive_reference(store: Store) -> None:
    """Partial roll-ups merged in the store equal the statistics of all readings."""
    rng = np.random.default_rng(SEED)
    sizes = [0, 1, 17, 250, 3, 1_000, 0, 42]
    chunks = [rng.normal(1e4, 3.0, size) for size in sizes]
    for chunk in chunks:
        store.put_rollups(_as_columns([_naive_rollup("etch-01", "pressure", chunk)]))
    assert store.flush()

    (stored,) = store.rollups("etch-01")
    everything = np.concatenate(chunks)

    assert stored.count == everything.size
    assert stored.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert stored.variance == pytest.approx(everything.var(), rel=1e-9)
    assert stored.minimum == everything.min()
    assert stored.maximum == everything.max()
    assert stored.last == chunks[sizes.index(max(sizes))][-1]
    assert stored.bad == len(sizes)
    assert stored.max_score == max(sizes)


def _as_columns(rollups: list[Rollup]) -> RollupColumns:
    """Return roll-ups of one tool and hour as columns, in the given order."""
    first = rollups[0]
    return RollupColumns(
        tool=first.tool,
        hour_ns=first.hour_ns,
        tags=tuple(r.tag for r in rollups),
        count=np.array([r.count for r in rollups], np.int64),
        minimum=np.array([r.minimum for r in rollups]),
        maximum=np.array([r.maximum for r in rollups]),
        mean=np.array([r.mean for r in rollups]),
        m2=np.array([r.m2 for r in rollups]),
        last=np.array([r.last for r in rollups]),
        last_ns=np.array([r.last_ns for r in rollups], np.int64),
        bad=np.array([r.bad for r in rollups], np.int64),
        max_score=np.array([r.max_score for r in rollups]),
    )


def test_stored_merge_of_columns_matches_the_merge_of_each_pair(store: Store) -> None:
    """Two windows of 300 tags merge in the store as merge_rollups does each pair."""
    rng = np.random.default_rng(SEED)
    sizes = rng.choice([0, 0, 1, 2, 40], size=(2, 300))
    pairs = [
        [
            _naive_rollup("t", f"x{i}", rng.normal(5.0, 2.0, n))
            for i, n in enumerate(row)
        ]
        for row in sizes
    ]
    store.put_rollups(_as_columns(pairs[0]))
    store.put_rollups(_as_columns(pairs[1]))
    assert store.flush()

    stored = {r.tag: r for r in store.rollups("t")}
    assert len(stored) == 300
    for a, b in zip(*pairs, strict=True):
        expected, got = merge_rollups(a, b), stored[a.tag]
        assert (got.count, got.bad, got.last_ns) == (
            expected.count,
            expected.bad,
            expected.last_ns,
        )
        for name in ("minimum", "maximum", "mean", "m2", "last", "max_score"):
            assert getattr(got, name) == pytest.approx(
                getattr(expected, name), rel=1e-12, nan_ok=True
            ), (a.tag, name)


def test_rollups_of_other_tags_and_hours_are_kept_apart(store: Store) -> None:
    """A window of some tags merges into theirs only; other tags and hours stay."""
    rng = np.random.default_rng(SEED)
    first = [_naive_rollup("etch-01", tag, rng.normal(0, 1, 10)) for tag in "abc"]
    later = [_naive_rollup("etch-01", tag, rng.normal(0, 1, 5)) for tag in "cd"]
    next_hour = _naive_rollup("etch-01", "a", rng.normal(0, 1, 3))
    store.put_rollups(_as_columns(first))
    store.put_rollups(_as_columns(later))
    store.put_rollups(
        _as_columns([dataclasses.replace(next_hour, hour_ns=T0_NS + HOUR_NS)])
    )
    assert store.flush()

    stored = {(r.tag, r.hour_ns): r for r in store.rollups("etch-01")}
    assert sorted(stored) == [
        ("a", T0_NS),
        ("a", T0_NS + HOUR_NS),
        ("b", T0_NS),
        ("c", T0_NS),
        ("d", T0_NS),
    ]
    assert stored[("a", T0_NS)] == first[0]
    assert stored[("c", T0_NS)].count == 15
    assert stored[("c", T0_NS)].mean == pytest.approx(
        merge_rollups(first[2], later[0]).mean, rel=1e-12
    )
    assert stored[("d", T0_NS)] == later[1]
    assert stored[("a", T0_NS + HOUR_NS)].count == 3


def test_merge_with_an_empty_rollup_keeps_the_other() -> None:
    """Merging with a roll-up of no good readings leaves the statistics unchanged."""
    full = _naive_rollup("t", "x", np.array([1.0, 2.0, 4.0]))
    empty = _naive_rollup("t", "x", np.empty(0))

    for merged in (merge_rollups(full, empty), merge_rollups(empty, full)):
        assert (merged.count, merged.mean, merged.m2) == (3, full.mean, full.m2)
        assert (merged.minimum, merged.maximum) == (1.0, 4.0)
        assert merged.bad == 2


def test_size_limit_evicts_raw_readings_first(db_path: Path) -> None:
    """Over max_bytes, the oldest reading blocks go first, counted and logged."""
    config = StoreConfig(max_bytes=MIN_MAX_BYTES, value_format="float64")
    rng = np.random.default_rng(SEED)
    with Store.open(db_path, config) as store:
        store.put_alert("etch-01", "rf", "ewma", "raised", "warning", T0_NS, b"{}")
        store.put_message(_message(PRIORITY_TELEMETRY, 1))
        now = time.time_ns()
        for block in range(12):
            t0 = now - DAY_NS + block * 100 * SECOND_NS
            store.put_readings("etch-01", "fast", *_readings(t0, 100, 250, rng))
        with capture_logs() as logs:
            assert store.enforce_retention()

        stats = store.stats()
        oldest_left = int(store.read_readings("etch-01")[0].min())

        assert stats.used_bytes <= MIN_MAX_BYTES
        assert stats.evictions["readings"] > 0
        assert set(stats.evictions) == {"readings"}
        assert stats.blocks + stats.evictions["readings"] == 12
        assert oldest_left > now - DAY_NS
        assert len(store.alert_history()) == 1
        assert len(store.pending_messages(10)) == 1
    assert db_path.stat().st_size <= MIN_MAX_BYTES
    evicted = [e for e in logs if e["event"] == "store_evicted"]
    assert evicted
    assert evicted[0]["kind"] == "readings"
    assert evicted[0]["reason"] == "size"
    assert evicted[0]["log_level"] == "warning"


def test_size_limit_is_checked_after_commits(db_path: Path) -> None:
    """Without being asked, the writer evicts once a commit takes it over the limit."""
    config = StoreConfig(max_bytes=MIN_MAX_BYTES, value_format="float64")
    rng = np.random.default_rng(SEED)
    with Store.open(db_path, config) as store:
        for block in range(12):
            t0 = T0_NS + block * 100 * SECOND_NS
            store.put_readings("etch-01", "fast", *_readings(t0, 100, 250, rng))
        assert store.flush()
        deadline = time.monotonic() + 10
        while "readings" not in store.stats().evictions:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_size_limit_evicts_alerts_last(db_path: Path) -> None:
    """Telemetry and summaries go before alert messages, and the oldest alerts first."""
    payload_size = 20 * KIB
    with Store.open(db_path, StoreConfig(max_bytes=MIN_MAX_BYTES)) as store:
        for n in range(40):
            store.put_message(_message(PRIORITY_ALERT, n, payload_size))
        for n in range(10):
            store.put_message(_message(PRIORITY_SUMMARY, n, payload_size))
            store.put_message(_message(PRIORITY_TELEMETRY, n, payload_size))
        assert store.enforce_retention()

        stats = store.stats()
        alerts = store.pending_messages(100)
        backlog = store.outbox_backlog()

    assert stats.used_bytes <= MIN_MAX_BYTES
    assert stats.evictions["telemetry"] == 10
    assert stats.evictions["summaries"] == 10
    assert stats.evictions["alerts"] > 0
    assert backlog[PRIORITY_SUMMARY][0] == backlog[PRIORITY_TELEMETRY][0] == 0
    assert len(alerts) == 40 - stats.evictions["alerts"]
    assert alerts[-1].payload.startswith(b"39")


def test_age_limit_deletes_old_reading_blocks(db_path: Path) -> None:
    """Reading blocks older than max_age_days are deleted and counted."""
    rng = np.random.default_rng(SEED)
    now = time.time_ns()
    with Store.open(db_path, StoreConfig(max_age_days=30)) as store:
        store.put_readings("etch-01", "fast", *_readings(now - 40 * DAY_NS, 5, 2, rng))
        store.put_readings("etch-01", "fast", *_readings(now - 1 * DAY_NS, 5, 2, rng))
        assert store.enforce_retention()

        stats = store.stats()
        ts = store.read_readings("etch-01")[0]

    assert stats.evictions == {"readings": 1}
    assert stats.blocks == 1
    assert int(ts.min()) >= now - DAY_NS


def test_evictions_survive_a_restart(db_path: Path) -> None:
    """Eviction counts are kept in the database, not only in memory."""
    rng = np.random.default_rng(SEED)
    old = time.time_ns() - 60 * DAY_NS
    with Store.open(db_path, StoreConfig()) as store:
        store.put_readings("etch-01", "fast", *_readings(old, 5, 2, rng))
        assert store.enforce_retention()

    with Store.open(db_path, StoreConfig()) as store:
        assert store.stats().evictions == {"readings": 1}


def test_garbage_file_is_moved_aside(db_path: Path) -> None:
    """A file that is not a database is moved aside with its WAL; a new one starts."""
    db_path.parent.mkdir(parents=True)
    garbage = b"this is not an SQLite database " * 200
    db_path.write_bytes(garbage)
    db_path.with_name("gateway.db-wal").write_bytes(b"junk")

    with capture_logs() as logs, Store.open(db_path, StoreConfig()) as store:
        store.put_message(_message(PRIORITY_ALERT, 1))
        assert store.flush()
        assert len(store.pending_messages(10)) == 1

    moved = [p for p in db_path.parent.iterdir() if CORRUPT_NAME.match(p.name)]
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage
    assert moved[0].with_name(moved[0].name + "-wal").read_bytes() == b"junk"
    (event,) = [e for e in logs if e["event"] == "store_corrupt_moved_aside"]
    assert event["log_level"] == "error"
    assert event["path"] == str(db_path)
    assert event["moved_to"] == str(moved[0])
    assert event["reason"]


def test_truncated_database_is_moved_aside(db_path: Path) -> None:
    """A real database cut short is detected by quick_check and replaced."""
    rng = np.random.default_rng(SEED)
    with Store.open(db_path, StoreConfig(value_format="float64")) as store:
        for block in range(5):
            t0 = T0_NS + block * 100 * SECOND_NS
            store.put_readings("etch-01", "fast", *_readings(t0, 100, 100, rng))
        for n in range(100):
            store.put_alert("etch-01", "rf", "ewma", "raised", "warning", n, b"x" * 100)
    size = db_path.stat().st_size
    with db_path.open("r+b") as f:
        f.truncate(size // 2)

    with Store.open(db_path, StoreConfig()) as store:
        assert store.stats().blocks == 0
        assert store.alert_history() == []

    moved = [p for p in db_path.parent.iterdir() if CORRUPT_NAME.match(p.name)]
    assert len(moved) == 1
    assert _quick_check(db_path) == "ok"


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database from a newer gateway is not touched: opening raises StoreError."""
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()

    with pytest.raises(StoreError, match="schema version 999"):
        Store.open(db_path, StoreConfig())


def test_bad_item_is_dropped_and_the_writer_goes_on(store: Store) -> None:
    """An item that cannot be written is logged, counted and dropped alone."""
    ts, tags, _, quality = _readings(T0_NS, 1, 1, np.random.default_rng(1))
    unreadable = np.array([["not a number"]])

    with capture_logs() as logs:
        store.put_readings("etch-01", "fast", ts, tags, unreadable, quality)
        store.put_message(_message(PRIORITY_ALERT, 1))
        assert store.flush()

    assert store.stats().dropped == 1
    assert len(store.pending_messages(10)) == 1
    (event,) = [e for e in logs if e["event"] == "store_write_failed"]
    assert event["kind"] == "readings"
    assert event["log_level"] == "error"


def test_use_after_close_raises(db_path: Path) -> None:
    """After close, producers and readers raise StoreClosedError; close twice is ok."""
    store = Store.open(db_path, StoreConfig())
    store.put_message(_message(PRIORITY_ALERT, 1))
    store.close()
    store.close()

    with pytest.raises(StoreClosedError):
        store.put_message(_message(PRIORITY_ALERT, 2))
    with pytest.raises(StoreClosedError):
        store.pending_messages(10)
    with Store.open(db_path, StoreConfig()) as reopened:
        assert len(reopened.pending_messages(10)) == 1
    assert not db_path.with_name("gateway.db-wal").exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from gateway.config.models import StoreConfig
    from gateway.store import OutboxMessage, Store

    store = Store.open(Path(sys.argv[1]), StoreConfig(commit_interval_ms=10_000))
    for n in range(500):
        store.put_message(OutboxMessage(1, "t", b"flushed %d" % n))
    if not store.flush():
        sys.exit(3)
    for n in range(500):
        store.put_message(OutboxMessage(1, "t", b"unflushed %d" % n))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_keeps_every_flushed_message(db_path: Path) -> None:
    """A process killed with SIGKILL after flush loses nothing flushed, file intact."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(db_path)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    with Store.open(db_path, StoreConfig()) as store:
        payloads = [r.payload for r in store.pending_messages(2_000)]

    flushed = [b"flushed %d" % n for n in range(500)]
    assert payloads[:500] == flushed
    assert all(p.startswith(b"unflushed") for p in payloads[500:])
    assert _quick_check(db_path) == "ok"
    assert not any(CORRUPT_NAME.match(p.name) for p in db_path.parent.iterdir())
