"""The status report: one JSON-ready document for ``status``, metrics and scripts.

The running daemon builds it from its live state and the store's figures and
serves it on its status socket; when the daemon is down, ``edge-gateway status``
builds the same document from the store (the last snapshot the daemon saved,
plus the store's own figures). ``source`` says which.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.payloads import iso_utc
from gateway.store import AlertRecord, StoreReader, StoreStats, ToolStoreStats

__all__ = [
    "PRIORITY_NAMES",
    "REPORT_SCHEMA",
    "STATUS_KEY",
    "STATUS_PERIOD_S",
    "StoreFigures",
    "build_report",
    "process_figures",
    "read_store_figures",
    "snapshot_is_fresh",
]

REPORT_SCHEMA = "edge-gateway/status-report/1"
# The daemon's snapshot in the store, written every STATUS_PERIOD_S seconds.
STATUS_KEY = "status/daemon"
STATUS_PERIOD_S = 5.0
# A snapshot older than this many periods means the daemon is not running.
STALE_PERIODS = 3
PRIORITY_NAMES = {0: "alerts", 1: "events", 2: "summaries", 3: "telemetry"}
_NS_PER_S = 1_000_000_000
_BYTES_PER_KB = 1024
_PROC_STATUS = "/proc/self/status"


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the store knows: backlog, sizes, stored readings, active alerts."""

    backlog: dict[int, tuple[int, int | None]]
    stats: StoreStats
    tools: dict[str, ToolStoreStats]
    active_alerts: dict[str, list[dict[str, str]]]
    snapshot: bytes | None


def read_store_figures(store: StoreReader) -> StoreFigures:
    """Read the store's figures (blocking: call off the event loop).

    Raises:
        StoreError: the store cannot be read.
    """
    return StoreFigures(
        backlog=store.outbox_backlog(),
        stats=store.stats(),
        tools=store.tool_stats(),
        active_alerts=_active_alerts(store.alert_history()),
        snapshot=store.get_state(STATUS_KEY),
    )


def _active_alerts(history: list[AlertRecord]) -> dict[str, list[dict[str, str]]]:
    """Return, per tool, the alerts whose last transition was a raise."""
    latest: dict[tuple[str, str, str], AlertRecord] = {}
    for record in history:
        latest[(record.tool, record.tag, record.model)] = record
    active: dict[str, list[dict[str, str]]] = {}
    for (tool, tag, model), record in latest.items():
        if record.state == "raised":
            active.setdefault(tool, []).append(
                {
                    "tag": tag,
                    "model": model,
                    "severity": record.severity,
                    "since": iso_utc(record.ts_ns),
                }
            )
    return active


def process_figures() -> dict[str, float | int]:
    """Return this process's resident memory (bytes) and CPU time (seconds)."""
    times = os.times()
    return {
        "rss_bytes": _rss_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        * _BYTES_PER_KB,
        "cpu_seconds": round(times.user + times.system, 3),
        "threads": _threads(),
    }


def _proc_status_field(name: str) -> str | None:
    try:
        with open(_PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    value = _proc_status_field("VmRSS")  # "123456 kB"
    return int(value.split()[0]) * _BYTES_PER_KB if value else 0


def _threads() -> int:
    value = _proc_status_field("Threads")
    return int(value) if value else 0


def snapshot_is_fresh(snapshot: dict[str, Any], now_ns: int) -> bool:
    """Whether a stored snapshot comes from a daemon that is still running."""
    updated = int(snapshot.get("updated_ns", 0))
    fresh = now_ns - updated < STALE_PERIODS * STATUS_PERIOD_S * _NS_PER_S
    return bool(snapshot.get("running")) and fresh


def build_report(
    config: GatewayConfig,
    live: dict[str, Any],
    figures: StoreFigures,
    *,
    running: bool,
    source: str,
) -> dict[str, Any]:
    """Return the report; ``live`` is the daemon's state (or its last snapshot)."""
    now = time.time_ns()
    # A stopped daemon's last snapshot still tells when each tool last polled.
    live_tools = live.get("tools", {})
    tools = {}
    for tool in config.tools:
        state = live_tools.get(tool.id, {})
        kept = figures.tools.get(tool.id)
        tools[tool.id] = {
            "enabled": tool.enabled,
            "driver": tool.kind,
            "state": state.get("state", "stopped") if running else "stopped",
            "since": _iso(state.get("since_ns")),
            "last_poll": _iso(state.get("last_poll_ns")),
            "last_good_poll": _iso(state.get("last_good_ns")),
            "readings_per_s": state.get("readings_per_s", 0.0) if running else 0.0,
            "bad_share": state.get("bad_share", 0.0),
            "readings": state.get("readings", 0),
            "readings_stored": kept.readings if kept else 0,
            "last_reading_stored": _iso(kept.last_reading_ns if kept else None),
            "reconnects": state.get("reconnects", 0),
            "last_error": state.get("last_error", ""),
            "active_alerts": figures.active_alerts.get(tool.id, []),
            # What the tool answered for the tags it refused (live only).
            "tag_faults": state.get("tag_faults", {}) if running else {},
            "tag_faults_total": state.get("tag_faults_total", 0) if running else 0,
        }
    stats = figures.stats
    return {
        "schema": REPORT_SCHEMA,
        "source": source,
        "gateway": {"site": config.main.gateway.site, "id": config.main.gateway.id},
        "running": running,
        "pid": live.get("pid") if running else None,
        "version": live.get("version"),
        "started": _iso(live.get("started_ns")),
        "snapshot": _iso(live.get("updated_ns")),
        "tools": tools,
        "pipeline": live.get("pipeline") if running else None,
        "mqtt": live.get("mqtt") if running else None,
        "outbox": {
            PRIORITY_NAMES[priority]: {
                "messages": count,
                "oldest": _iso(oldest),
                "oldest_age_s": round((now - oldest) / _NS_PER_S, 3)
                if oldest
                else None,
            }
            for priority, (count, oldest) in sorted(figures.backlog.items())
        },
        "store": {
            "path": str(config.store_path),
            "file_bytes": stats.file_bytes + stats.wal_bytes,
            "used_bytes": stats.used_bytes,
            "max_bytes": config.main.store.max_bytes,
            "readings": stats.readings,
            "blocks": stats.blocks,
            "evictions": stats.evictions,
        },
        "process": live.get("process") if running else None,
        "reloads": live.get("reloads") if running else None,
        "warnings": live.get("warnings", []) if running else [],
    }


def _iso(ts_ns: int | None) -> str | None:
    return iso_utc(ts_ns) if ts_ns else None
