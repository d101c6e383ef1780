"""``edge-gateway status``: what the gateway is doing.

The running daemon answers on its status socket (``[service] runtime_dir``,
``status.sock``) with the live report. When nothing answers there (the daemon
is down, or the caller may not use the socket), the report is built from the
store: the last snapshot the daemon saved there plus the store's own figures
(outbox backlog, evictions, readings per tool, active alerts). The report's
``source`` says which; the schema is the same (:mod:`gateway.report`).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.control import ControlError, query_status
from gateway.report import build_report, read_store_figures, snapshot_is_fresh
from gateway.store import StoreError, StoreReader

__all__ = ["collect_status", "show_status"]

EXIT_OK = 0
EXIT_NO_STORE = 1
CLEAR_SCREEN = "\x1b[H\x1b[2J"
_PERCENT = 100.0
_MIB = 1024 * 1024


def collect_status(config: GatewayConfig) -> dict[str, Any]:
    """Return the status report: live from the daemon, else from the store.

    Raises:
        StoreError: the daemon does not answer and the store cannot be read.
    """
    socket_path = config.status_socket
    try:
        report = query_status(socket_path)
        socket_error = None
    except ControlError as exc:
        report = _stored_report(config)
        socket_error = str(exc)
    report["status_socket"] = {"path": str(socket_path), "error": socket_error}
    return report


def _stored_report(config: GatewayConfig) -> dict[str, Any]:
    with StoreReader.open(config.store_path) as store:
        figures = read_store_figures(store)
    snapshot: dict[str, Any] = json.loads(figures.snapshot) if figures.snapshot else {}
    running = snapshot_is_fresh(snapshot, time.time_ns())
    return build_report(config, snapshot, figures, running=running, source="store")


def show_status(
    config: GatewayConfig, as_json: bool, watch_s: float | None = None
) -> int:
    """Print the status (a table, or JSON); with ``watch_s``, refresh until Ctrl-C.

    Returns the exit code: 1 when neither the daemon nor the store answers.
    """
    try:
        while True:
            try:
                status = collect_status(config)
            except StoreError as exc:
                print(
                    f"status: {exc} (has the gateway run with this configuration?)",
                    file=sys.stderr,
                )
                if watch_s is None:
                    return EXIT_NO_STORE
            else:
                _print(status, as_json, watching=watch_s is not None)
            if watch_s is None:
                return EXIT_OK
            time.sleep(watch_s)
    except KeyboardInterrupt:
        return EXIT_OK


def _print(status: dict[str, Any], as_json: bool, watching: bool) -> None:
    if as_json:
        # Watching prints one object per line (JSON lines) for scripts.
        print(json.dumps(status, indent=None if watching else 2), flush=True)
        return
    text = render_table(status)
    print(CLEAR_SCREEN + text if watching else text, flush=True)


def render_table(status: dict[str, Any]) -> str:
    """Render a status report as the human table."""
    lines = _header(status)
    lines += _tools(status)
    lines.append("")
    lines += _publisher(status)
    lines += _store(status)
    lines += _process(status)
    return "\n".join(lines)


def _header(status: dict[str, Any]) -> list[str]:
    gateway = status["gateway"]
    state = "running" if status["running"] else "not running"
    detail = ""
    if status["running"]:
        detail = f" (pid {status['pid']}, version {status['version']})"
    source = (
        "live from the daemon"
        if status["source"] == "daemon"
        else f"from the store, snapshot {status['snapshot'] or 'none'}"
    )
    return [f"gateway {gateway['site']}/{gateway['id']}: {state}{detail}", source, ""]


def _tools(status: dict[str, Any]) -> list[str]:
    lines = [
        f"{'tool':<18} {'state':<11} {'last good poll':<16} {'readings/s':>10} "
        f"{'bad %':>6} {'stored':>12} {'alerts':>6}"
    ]
    for tool_id, tool in status["tools"].items():
        state = tool["state"] if tool["enabled"] else "disabled"
        lines.append(
            f"{tool_id:<18} {state:<11} {_ago(tool['last_good_poll']):<16} "
            f"{tool['readings_per_s']:>10.1f} {tool['bad_share'] * _PERCENT:>6.1f} "
            f"{tool['readings_stored']:>12,} {len(tool['active_alerts']):>6}"
        )
        lines.extend(
            f"  alert: {alert['tag']} ({alert['model']}, {alert['severity']}) "
            f"since {alert['since']}"
            for alert in tool["active_alerts"]
        )
        lines.extend(
            f"  refused: {tag}: {answer}" for tag, answer in tool["tag_faults"].items()
        )
        hidden = tool["tag_faults_total"] - len(tool["tag_faults"])
        if hidden > 0:
            lines.append(f"  refused: {hidden} more tag(s)")
        if tool["last_error"]:
            lines.append(f"  last error: {tool['last_error']}")
    return lines


def _publisher(status: dict[str, Any]) -> list[str]:
    lines = []
    mqtt = status["mqtt"]
    if mqtt is not None:
        state = "connected" if mqtt.get("connected") else "disconnected"
        lines.append(
            f"mqtt: {state} to {mqtt.get('broker', '?')}, {mqtt.get('acked', 0):,} "
            f"acknowledged, {mqtt.get('reconnects', 0)} reconnects"
            + (f", last error: {mqtt['last_error']}" if mqtt.get("last_error") else "")
        )
    outbox = ", ".join(
        f"{name} {entry['messages']:,}"
        + (f" (oldest {_age(entry['oldest_age_s'])})" if entry["oldest"] else "")
        for name, entry in status["outbox"].items()
    )
    lines.append(f"outbox backlog: {outbox}")
    return lines


def _store(status: dict[str, Any]) -> list[str]:
    store = status["store"]
    evictions = ", ".join(f"{k} {v:,}" for k, v in store["evictions"].items()) or "none"
    return [
        f"store: {store['file_bytes'] / 1e6:.1f} MB on disk of "
        f"{store['max_bytes'] / 1e6:,.0f} MB, {store['readings']:,} readings in "
        f"{store['blocks']:,} blocks, evictions: {evictions}",
        f"  {store['path']}",
    ]


def _process(status: dict[str, Any]) -> list[str]:
    lines = []
    process = status["process"]
    if process is not None:
        cpu = process.get("cpu_percent")
        lines.append(
            f"process: RSS {process['rss_bytes'] / _MIB:.0f} MiB of "
            f"{process['memory_limit_bytes'] / _MIB:.0f} MiB, CPU "
            + (f"{cpu:.1f} %" if cpu is not None else "-")
            + f" ({process['cpu_seconds']:.0f} s total), "
            f"{process['threads']} threads"
        )
    if status["warnings"]:
        lines.append("near limits: " + ", ".join(status["warnings"]))
    return lines


def _ago(iso: str | None) -> str:
    if not iso:
        return "-"
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return _age(time.time() - moment.timestamp()) + " ago"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
