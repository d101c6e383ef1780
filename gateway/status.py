"""``edge-gateway status``: what the gateway is doing, read from its store.

The daemon writes a status snapshot to the store every few seconds and at
shutdown; this command reads it together with the store's own figures (outbox
backlog, evictions, readings per tool, active alerts), so it works whether the
daemon is running or not.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.daemon import STATUS_KEY, STATUS_PERIOD_S
from gateway.payloads import iso_utc
from gateway.store import StoreError, StoreReader

__all__ = ["collect_status", "show_status"]

EXIT_OK = 0
EXIT_NO_STORE = 1
_NS_PER_S = 1_000_000_000
# A snapshot older than this many status periods means the daemon is not running.
STALE_PERIODS = 3
PRIORITY_NAMES = {0: "alerts", 1: "events", 2: "summaries", 3: "telemetry"}


def collect_status(config: GatewayConfig) -> dict[str, Any]:
    """Return the gateway's state as one JSON-ready object.

    Raises:
        StoreError: the store does not exist or cannot be read.
    """
    with StoreReader.open(config.store_path) as store:
        snapshot_blob = store.get_state(STATUS_KEY)
        backlog = store.outbox_backlog()
        stats = store.stats()
        stored = store.tool_stats()
        active = _active_alerts(store)

    snapshot: dict[str, Any] = json.loads(snapshot_blob) if snapshot_blob else {}
    now = time.time_ns()
    updated = snapshot.get("updated_ns", 0)
    fresh = now - updated < STALE_PERIODS * STATUS_PERIOD_S * _NS_PER_S
    running = bool(snapshot.get("running")) and fresh
    live_tools = snapshot.get("tools", {})

    tools = {}
    for tool in config.tools:
        live = live_tools.get(tool.id, {})
        kept = stored.get(tool.id)
        tools[tool.id] = {
            "enabled": tool.enabled,
            "driver": tool.kind,
            "state": live.get("state", "unknown") if running else "stopped",
            "last_poll": _iso(live.get("last_poll_ns")),
            "last_reading_stored": _iso(kept.last_reading_ns if kept else None),
            "readings_stored": kept.readings if kept else 0,
            "reconnects": live.get("reconnects", 0),
            "last_error": live.get("last_error", ""),
            "active_alerts": active.get(tool.id, []),
        }
    return {
        "gateway": {"site": config.main.gateway.site, "id": config.main.gateway.id},
        "running": running,
        "snapshot": _iso(updated or None),
        "pid": snapshot.get("pid"),
        "version": snapshot.get("version"),
        "tools": tools,
        "mqtt": snapshot.get("mqtt") if running else None,
        "outbox": {
            PRIORITY_NAMES[priority]: {"messages": count, "oldest": _iso(oldest)}
            for priority, (count, oldest) in sorted(backlog.items())
        },
        "store": {
            "path": str(config.store_path),
            "file_bytes": stats.file_bytes + stats.wal_bytes,
            "used_bytes": stats.used_bytes,
            "readings": stats.readings,
            "blocks": stats.blocks,
            "evictions": stats.evictions,
        },
    }


def _active_alerts(store: StoreReader) -> dict[str, list[dict[str, str]]]:
    """Return, per tool, the alerts whose last transition was a raise."""
    latest: dict[tuple[str, str, str], tuple[str, str, int]] = {}
    for record in store.alert_history():
        latest[(record.tool, record.tag, record.model)] = (
            record.state,
            record.severity,
            record.ts_ns,
        )
    active: dict[str, list[dict[str, str]]] = {}
    for (tool, tag, model), (state, severity, ts_ns) in latest.items():
        if state == "raised":
            active.setdefault(tool, []).append(
                {
                    "tag": tag,
                    "model": model,
                    "severity": severity,
                    "since": iso_utc(ts_ns),
                }
            )
    return active


def _iso(ts_ns: int | None) -> str | None:
    return iso_utc(ts_ns) if ts_ns else None


def show_status(config: GatewayConfig, as_json: bool) -> int:
    """Print the status (a table, or JSON); return the exit code."""
    try:
        status = collect_status(config)
    except StoreError as exc:
        print(
            f"status: {exc} (has the gateway run with this configuration?)",
            file=sys.stderr,
        )
        return EXIT_NO_STORE
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        print(_table(status))
    return EXIT_OK


def _table(status: dict[str, Any]) -> str:
    gateway = status["gateway"]
    state = "running" if status["running"] else "not running"
    lines = [
        f"gateway {gateway['site']}/{gateway['id']}: {state}"
        + (
            f" (pid {status['pid']}, version {status['version']})"
            if status["running"]
            else ""
        ),
        f"status snapshot: {status['snapshot'] or 'none'}",
        "",
        f"{'tool':<18} {'state':<11} {'last poll':<25} {'stored':>12} {'alerts':>6}",
    ]
    for tool_id, tool in status["tools"].items():
        lines.append(
            f"{tool_id:<18} {tool['state']:<11} {tool['last_poll'] or '-':<25} "
            f"{tool['readings_stored']:>12,} {len(tool['active_alerts']):>6}"
        )
        lines.extend(
            f"  alert: {alert['tag']} ({alert['model']}, {alert['severity']}) "
            f"since {alert['since']}"
            for alert in tool["active_alerts"]
        )
        if tool["last_error"]:
            lines.append(f"  last error: {tool['last_error']}")
    mqtt = status["mqtt"]
    lines.append("")
    if mqtt is not None:
        lines.append(
            f"mqtt: {'connected' if mqtt.get('connected') else 'disconnected'}"
        )
    outbox = ", ".join(
        f"{name} {entry['messages']}"
        + (f" (oldest {entry['oldest']})" if entry["oldest"] else "")
        for name, entry in status["outbox"].items()
    )
    lines.append(f"outbox backlog: {outbox}")
    store = status["store"]
    evictions = ", ".join(f"{k} {v}" for k, v in store["evictions"].items()) or "none"
    lines.append(
        f"store: {store['file_bytes'] / 1e6:.1f} MB on disk, "
        f"{store['readings']:,} readings in {store['blocks']:,} blocks, "
        f"evictions: {evictions}"
    )
    return "\n".join(lines)
