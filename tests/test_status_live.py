"""``edge-gateway status`` against a running daemon and a stopped one; metrics."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from daemon_process import Daemon, run_cli, short_tempdir, write_main, write_tool
from mosquitto import free_port, wait_until

from gateway.metrics import render_metrics

_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": ["string", "null"]}
TOOL_SCHEMA = {
    "type": "object",
    "required": [
        "enabled",
        "driver",
        "state",
        "last_poll",
        "last_good_poll",
        "readings_per_s",
        "bad_share",
        "readings_stored",
        "reconnects",
        "last_error",
        "active_alerts",
        "tag_faults",
        "tag_faults_total",
    ],
    "properties": {
        "state": {"enum": ["connecting", "up", "down", "stopped"]},
        "last_good_poll": _TIME,
        "readings_per_s": _NUMBER,
        "bad_share": {"type": "number", "minimum": 0, "maximum": 1},
        "readings_stored": _COUNT,
        "tag_faults": {"type": "object", "additionalProperties": {"type": "string"}},
        "tag_faults_total": _COUNT,
        "active_alerts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tag", "model", "severity", "since"],
            },
        },
    },
}
REPORT_SCHEMA = {
    "type": "object",
    "required": [
        "schema",
        "source",
        "gateway",
        "running",
        "tools",
        "mqtt",
        "outbox",
        "store",
        "process",
        "warnings",
        "status_socket",
    ],
    "properties": {
        "schema": {"const": "edge-gateway/status-report/1"},
        "source": {"enum": ["daemon", "store"]},
        "running": {"type": "boolean"},
        "tools": {"type": "object", "additionalProperties": TOOL_SCHEMA},
        "mqtt": {
            "type": ["object", "null"],
            "required": ["connected", "acked", "in_flight"],
        },
        "outbox": {
            "type": "object",
            "required": ["alerts", "events", "summaries", "telemetry"],
            "additionalProperties": {
                "type": "object",
                "required": ["messages", "oldest", "oldest_age_s"],
                "properties": {
                    "messages": _COUNT,
                    "oldest_age_s": {"type": ["number", "null"]},
                },
            },
        },
        "store": {
            "type": "object",
            "required": ["path", "file_bytes", "max_bytes", "evictions", "readings"],
        },
        "process": {
            "type": ["object", "null"],
            "required": ["rss_bytes", "cpu_seconds", "cpu_percent"],
            "properties": {"rss_bytes": {"type": "integer", "minimum": 1}},
        },
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}


@pytest.fixture
def runtime() -> Iterator[Path]:
    with short_tempdir() as folder:
        yield folder


def status_json(config: Path) -> dict[str, Any]:
    result = run_cli("status", "--config", str(config), "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
def test_status_reads_the_daemon_live_then_the_store_once_it_stopped(
    tmp_path: Path, runtime: Path
) -> None:
    """Live: per-tool rates and process figures; stopped: the store's figures."""
    config = write_main(
        tmp_path / "config",
        tmp_path / "gateway.db",
        # 64 MB is below what the daemon needs: the self-limit warning must show.
        service=f'runtime_dir = "{runtime / "run"}"\nmemory_limit_mb = 64',
    )
    write_tool(config, "etch-01")
    write_tool(config, "cvd-02", seed=2, level=20.0)
    daemon = Daemon(config, tmp_path / "gateway.log")
    try:
        daemon.wait_for("gateway_started")
        socket_path = runtime / "run" / "status.sock"
        wait_until(socket_path.exists, 10, "the status socket")
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o750

        def rated() -> bool:
            tools = status_json(config)["tools"].values()
            return all(tool["readings_per_s"] > 0 for tool in tools)

        wait_until(rated, 20, "readings per second on both tools")
        live = status_json(config)
        jsonschema.validate(live, REPORT_SCHEMA)
        assert live["source"] == "daemon"
        assert live["running"] is True
        assert live["pid"] == daemon.pid
        assert live["status_socket"]["error"] is None
        etch = live["tools"]["etch-01"]
        assert etch["state"] == "up"
        assert etch["last_good_poll"] is not None
        # Two tags every 0.1 s: 20 readings/s, less start-up and scheduling.
        assert 10.0 <= etch["readings_per_s"] <= 25.0
        assert etch["bad_share"] == 0.0
        assert live["process"]["rss_bytes"] > 10_000_000
        assert live["pipeline"]["dropped_batches"] == 0
        wait_until(
            lambda: "rss_bytes" in status_json(config)["warnings"],
            15,
            "the memory self-limit warning",
        )
        (near,) = daemon.named("self_limit_near")
        assert near["figure"] == "rss_bytes"
        assert near["limit"] == 64 * 1024 * 1024
        assert near["value"] >= 0.8 * near["limit"]
        table = run_cli("status", "--config", str(config)).stdout
        assert "near limits: rss_bytes" in table
        assert "live from the daemon" in table
        assert "readings/s" in table
        assert "RSS" in table
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    assert not socket_path.exists()
    stored = status_json(config)
    jsonschema.validate(stored, REPORT_SCHEMA)
    assert stored["source"] == "store"
    assert stored["running"] is False
    assert stored["status_socket"]["error"] is not None
    assert stored["process"] is None
    for tool in stored["tools"].values():
        assert tool["state"] == "stopped"
        assert tool["readings_stored"] > 0
        assert tool["last_good_poll"] is not None  # from the last snapshot
    table = run_cli("status", "--config", str(config)).stdout
    assert "not running" in table
    assert "from the store" in table


def test_status_without_daemon_or_store_fails_with_one_line(tmp_path: Path) -> None:
    """No daemon and no store: exit 1 and one line saying what is missing."""
    config = write_main(tmp_path / "config", tmp_path / "never.db")
    write_tool(config, "etch-01")
    result = run_cli("status", "--config", str(config), check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "no store at" in line


@pytest.mark.slow
def test_watch_refreshes_in_place_and_metrics_match_the_status(
    tmp_path: Path, runtime: Path
) -> None:
    """``--watch`` redraws the table; the metrics port serves the same figures."""
    port = free_port()
    config = write_main(
        tmp_path / "config",
        tmp_path / "gateway.db",
        service=f'runtime_dir = "{runtime}"\nmetrics_port = {port}',
    )
    write_tool(config, "etch-01")
    daemon = Daemon(config, tmp_path / "gateway.log")
    try:
        daemon.wait_for("metrics_listening")
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        assert 'edge_gateway_tool_up{tool="etch-01"} 1' in text
        assert "process_resident_memory_bytes" in text
        assert 'edge_gateway_outbox_messages{class="alerts"}' in text
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
        missing.value.close()

        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "status",
                "--config",
                str(config),
                "--watch",
                "0.2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.5)
        watch.send_signal(signal.SIGINT)
        out, _ = watch.communicate(timeout=10)
        assert watch.returncode == 0
        assert out.count("\x1b[H\x1b[2J") >= 3
        assert out.count("etch-01") >= 3
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_metrics_render_every_status_figure() -> None:
    """Each tool, outbox class and eviction kind of a report becomes a series."""
    report = {
        "running": True,
        "tools": {
            "etch-01": {
                "state": "up",
                "last_good_poll": "2026-12-03T19:00:00.000Z",
                "readings_per_s": 20.5,
                "bad_share": 0.25,
                "readings": 1000,
                "reconnects": 2,
                "active_alerts": [{"tag": "p", "model": "ewma"}],
                "tag_faults_total": 0,
            }
        },
        "mqtt": {"connected": False, "acked": 7},
        "outbox": {"alerts": {"messages": 3, "oldest_age_s": 12.5}},
        "pipeline": {"queued": 4},
        "store": {"file_bytes": 10, "max_bytes": 100, "evictions": {"readings": 9}},
        "process": {"rss_bytes": 5_000_000, "cpu_seconds": 1.5},
    }
    lines = render_metrics(report).splitlines()
    assert 'edge_gateway_tool_up{tool="etch-01"} 1' in lines
    assert (
        'edge_gateway_tool_last_good_poll_timestamp_seconds{tool="etch-01"} '
        "1796324400" in lines
    )
    assert 'edge_gateway_tool_readings_per_second{tool="etch-01"} 20.5' in lines
    assert 'edge_gateway_tool_bad_quality_ratio{tool="etch-01"} 0.25' in lines
    assert 'edge_gateway_tool_active_alerts{tool="etch-01"} 1' in lines
    assert "edge_gateway_mqtt_connected 0" in lines
    assert 'edge_gateway_outbox_oldest_age_seconds{class="alerts"} 12.5' in lines
    assert 'edge_gateway_store_evictions_total{kind="readings"} 9' in lines
    assert "process_cpu_seconds_total 1.5" in lines
    assert "# TYPE edge_gateway_tool_readings_total counter" in lines
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families))  # each family declared once
