"""Prometheus text metrics on a loopback port (``[service] metrics_port``).

Off by default. The figures are those of the status report, rendered in the
Prometheus text exposition format (version 0.0.4) at ``GET /metrics``. The
server binds 127.0.0.1 only: a scraper on another host goes through a local
agent or an SSH tunnel, never through a port the gateway opens to the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import structlog

__all__ = ["MetricsServer", "render_metrics"]

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 8192
_NS_PER_S = 1e9

Report = Callable[[], Awaitable[dict[str, Any]]]
_Sample = tuple[str, dict[str, str], float]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _timestamp_s(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


_HELP: dict[str, tuple[str, str]] = {
    "edge_gateway_up": ("gauge", "1 while the daemon runs"),
    "edge_gateway_tool_up": ("gauge", "1 while the tool's link is up"),
    "edge_gateway_tool_last_good_poll_timestamp_seconds": (
        "gauge",
        "Unix time of the last poll with a good reading",
    ),
    "edge_gateway_tool_readings_per_second": ("gauge", "recent readings per second"),
    "edge_gateway_tool_bad_quality_ratio": (
        "gauge",
        "recent share of readings with a bad quality code",
    ),
    "edge_gateway_tool_readings_total": ("counter", "readings since start"),
    "edge_gateway_tool_reconnects_total": ("counter", "reconnects since start"),
    "edge_gateway_tool_active_alerts": ("gauge", "alerts raised and not cleared"),
    "edge_gateway_tool_refused_tags": (
        "gauge",
        "tags the tool refused at their last read",
    ),
    "edge_gateway_mqtt_connected": ("gauge", "1 while connected to the broker"),
    "edge_gateway_mqtt_acked_total": ("counter", "messages acknowledged by the broker"),
    "edge_gateway_outbox_messages": ("gauge", "messages waiting to be published"),
    "edge_gateway_outbox_oldest_age_seconds": (
        "gauge",
        "age of the oldest waiting message",
    ),
    "edge_gateway_pipeline_queued_batches": ("gauge", "batches waiting in the queue"),
    "edge_gateway_store_file_bytes": ("gauge", "database and WAL size on disk"),
    "edge_gateway_store_max_bytes": ("gauge", "configured store size limit"),
    "edge_gateway_store_evictions_total": ("counter", "rows evicted by retention"),
    "process_resident_memory_bytes": ("gauge", "resident memory"),
    "process_cpu_seconds_total": ("counter", "user and system CPU time"),
}


def _samples(report: dict[str, Any]) -> Iterator[_Sample]:
    yield "edge_gateway_up", {}, 1.0 if report.get("running") else 0.0
    for tool_id, tool in report["tools"].items():
        labels = {"tool": tool_id}
        yield "edge_gateway_tool_up", labels, 1.0 if tool["state"] == "up" else 0.0
        yield (
            "edge_gateway_tool_last_good_poll_timestamp_seconds",
            labels,
            _timestamp_s(tool["last_good_poll"]),
        )
        yield "edge_gateway_tool_readings_per_second", labels, tool["readings_per_s"]
        yield "edge_gateway_tool_bad_quality_ratio", labels, tool["bad_share"]
        yield "edge_gateway_tool_readings_total", labels, tool["readings"]
        yield "edge_gateway_tool_reconnects_total", labels, tool["reconnects"]
        yield (
            "edge_gateway_tool_active_alerts",
            labels,
            float(len(tool["active_alerts"])),
        )
        yield "edge_gateway_tool_refused_tags", labels, tool["tag_faults_total"]
    mqtt = report.get("mqtt")
    if mqtt is not None:
        yield "edge_gateway_mqtt_connected", {}, 1.0 if mqtt["connected"] else 0.0
        yield "edge_gateway_mqtt_acked_total", {}, mqtt["acked"]
    for name, entry in report["outbox"].items():
        labels = {"class": name}
        yield "edge_gateway_outbox_messages", labels, entry["messages"]
        yield (
            "edge_gateway_outbox_oldest_age_seconds",
            labels,
            entry["oldest_age_s"] or 0.0,
        )
    pipeline = report.get("pipeline")
    if pipeline is not None:
        yield "edge_gateway_pipeline_queued_batches", {}, pipeline["queued"]
    store = report["store"]
    yield "edge_gateway_store_file_bytes", {}, store["file_bytes"]
    yield "edge_gateway_store_max_bytes", {}, store["max_bytes"]
    for kind, rows in sorted(store["evictions"].items()):
        yield "edge_gateway_store_evictions_total", {"kind": kind}, rows
    process = report.get("process")
    if process is not None:
        yield "process_resident_memory_bytes", {}, process["rss_bytes"]
        yield "process_cpu_seconds_total", {}, process["cpu_seconds"]


def render_metrics(report: dict[str, Any]) -> str:
    """Render a status report as Prometheus text (one family after another)."""
    families: dict[str, list[str]] = {}
    for name, labels, value in _samples(report):
        label_text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        series = f"{name}{{{label_text}}}" if label_text else name
        families.setdefault(name, []).append(f"{series} {_number(value)}")
    lines = []
    for name, rows in families.items():
        kind, text = _HELP[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *rows]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A minimal HTTP/1.0 server on 127.0.0.1:``port`` answering ``GET /metrics``."""

    def __init__(self, port: int, report: Report) -> None:
        self.port = port
        self._report = report
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Start listening; ``port`` 0 picks a free one (read :attr:`port`).

        Raises:
            OSError: the port cannot be bound.
        """
        self._server = await asyncio.start_server(self._serve, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_listening", address=f"{LOOPBACK}:{self.port}")

    async def close(self) -> None:
        """Stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            request = head[:MAX_HEADER_BYTES].split(b"\r\n", 1)[0].split()
            if len(request) >= 2 and request[:2] == [b"GET", b"/metrics"]:
                body = render_metrics(await self._report()).encode()
                status = b"200 OK"
                content_type = CONTENT_TYPE.encode()
            else:
                body, status = b"not found\n", b"404 Not Found"
                content_type = b"text/plain"
            writer.write(
                b"HTTP/1.0 "
                + status
                + b"\r\nContent-Type: "
                + content_type
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            log.debug("metrics_request_failed", error=str(exc) or type(exc).__name__)
        except Exception:  # a report bug must not end the server
            log.exception("metrics_report_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
