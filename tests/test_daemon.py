"""The daemon end to end: simulated tool -> pipeline -> store -> real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import MakeBroker, MakeSubscriber
from mosquitto import Broker, Received, wait_until

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.store import StoreError, StoreReader

SCHEMAS = Path(__file__).resolve().parent.parent / "gateway" / "publish" / "schemas"
COMMIT_INTERVAL_MS = 100
POLL_INTERVAL_S = 0.1
# Slack for process scheduling on a loaded 2-core machine, on top of the documented
# bound (one group commit interval plus one poll interval).
SCHEDULING_SLACK_S = 0.75
EXIT_TIMEOUT_S = 20.0

MAIN = """
[gateway]
site = "fab-t"
id = "gw-t"

[store]
path = "{store}"
commit_interval_ms = {commit}

[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{prefix}"
shutdown_publish_s = 2.0

[mqtt.backoff]
initial_s = 0.1
max_s = 0.5

[reconnect]
initial_s = 0.05
max_s = 0.3

[pipeline]
summary_window_s = 1

[logging]
format = "json"
"""

TOOL = """
[driver]
kind = "simulated"
seed = 5
{extra}

[[driver.faults]]
kind = "spike"
tag = "pressure"
at_s = 1.5
duration_s = 0.6
magnitude = 40.0
repeat_s = 3.0

[alerts]
raise_after = 2
clear_after = 2
cooldown_s = 0.5

[scorers.ewma]
warmup = 8

[[poll_groups]]
name = "fast"
interval_s = {interval}
tags = ["pressure", "flow"]

[[tags]]
name = "pressure"
unit = "mTorr"
source = {{ level = 50.0, noise = 0.2 }}

[[tags]]
name = "flow"
unit = "sccm"
telemetry = true
source = {{ level = 10.0, noise = 0.1 }}
"""


def write_config(
    root: Path,
    port: int,
    prefix: str,
    tools: dict[str, str] | None = None,
    enabled: bool = True,
) -> Path:
    """Write a config folder whose tools spike every few seconds; return it."""
    directory = root / "config"
    (directory / "tools").mkdir(parents=True, exist_ok=True)
    main = MAIN.format(
        store=root / "gateway.db", commit=COMMIT_INTERVAL_MS, port=port, prefix=prefix
    )
    if not enabled:
        main = main.replace("[mqtt]\n", "[mqtt]\nenabled = false\n")
    (directory / "gateway.toml").write_text(main)
    for tool, extra in (tools or {"etch-01": ""}).items():
        text = TOOL.format(extra=extra, interval=POLL_INTERVAL_S)
        (directory / "tools" / f"{tool}.toml").write_text(text)
    return directory


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``edge-gateway run`` as a child process logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Gateway processes started by a test; any still running are killed after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


def of_kind(messages: list[Received], kind: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/" + kind)]


def stop_gracefully(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=EXIT_TIMEOUT_S)


@pytest.mark.slow
def test_alerts_and_summaries_reach_a_subscriber(
    tmp_path: Path,
    broker: Broker,
    make_subscriber: MakeSubscriber,
    topic_prefix: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """A simulated spike arrives as schema-valid alert and summary messages."""
    config = write_config(tmp_path, broker.port, topic_prefix)
    subscriber = make_subscriber(broker, f"{topic_prefix}/#")
    processes.append(start_gateway(config, tmp_path / "gateway.log"))

    def seen() -> bool:
        messages = subscriber.messages
        raised = [a for a in of_kind(messages, "alert") if a["state"] == "raised"]
        return bool(raised) and len(of_kind(messages, "summary")) >= 2

    wait_until(seen, timeout=30, what="an alert and two summaries")
    assert stop_gracefully(processes[0]) == 0

    messages = subscriber.messages
    for kind in ("alert", "summary", "status"):
        for payload in of_kind(messages, kind):
            jsonschema.validate(payload, schema(kind))
    alert = next(a for a in of_kind(messages, "alert") if a["state"] == "raised")
    assert (alert["tool"], alert["tag"], alert["model"]) == (
        "etch-01",
        "pressure",
        "ewma",
    )
    assert alert["score"] >= alert["raise_level"]
    assert alert["value"] > 70.0  # 50 mTorr plus a 40 mTorr spike, within noise
    summary = of_kind(messages, "summary")[0]
    assert set(summary["tags"]) == {"pressure", "flow"}
    assert summary["tags"]["flow"]["count"] > 0
    states = [s["state"] for s in of_kind(messages, "status")]
    assert states[0] == "online"
    assert states[-1] == "offline"


@pytest.mark.slow
def test_sigkill_while_the_broker_is_down_loses_nothing_committed(
    tmp_path: Path,
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    topic_prefix: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Messages committed before a kill -9 are all delivered after a restart."""
    down = make_broker(persistence=True)
    # The subscriber's persistent session exists before the outage, so the broker
    # queues for it whatever the gateway delivers before it is back.
    subscriber = make_subscriber(down, f"{topic_prefix}/#")
    down.stop()
    config = write_config(tmp_path, down.port, topic_prefix)
    store_path = tmp_path / "gateway.db"
    processes.append(start_gateway(config, tmp_path / "run1.log"))

    def committed() -> list[bytes]:
        try:
            reader = StoreReader.open(store_path)
        except StoreError:  # not created yet
            return []
        with reader as store:
            backlog = store.outbox_backlog()
            if backlog[0][0] < 1 or backlog[2][0] < 3:
                return []
            return [row.payload for row in store.pending_messages(limit=10_000)]

    wait_until(lambda: bool(committed()), timeout=30, what="alerts and summaries")
    time.sleep(0.5)
    before_kill = committed()
    killed_ns = time.time_ns()
    processes[0].kill()
    processes[0].wait()

    with StoreReader.open(store_path) as store:
        last_reading_ns = store.tool_stats()["etch-01"].last_reading_ns
        survived = {row.payload for row in store.pending_messages(limit=10_000)}
    assert last_reading_ns is not None
    bound_s = COMMIT_INTERVAL_MS / 1000 + POLL_INTERVAL_S + SCHEDULING_SLACK_S
    assert killed_ns - last_reading_ns < bound_s * 1e9
    assert set(before_kill) <= survived

    processes.append(start_gateway(config, tmp_path / "run2.log"))
    time.sleep(1.0)
    down.start()
    wait_until(
        lambda: set(before_kill) <= set(subscriber.payloads()),
        timeout=30,
        what="every committed message delivered",
    )
    assert stop_gracefully(processes[1]) == 0


@pytest.mark.slow
def test_status_reads_the_store_after_the_daemon_stopped(
    tmp_path: Path,
    broker: Broker,
    topic_prefix: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """``status --json`` reports stopped tools, stored readings and the backlog."""
    config = write_config(tmp_path, broker.port, topic_prefix)
    processes.append(start_gateway(config, tmp_path / "gateway.log"))
    time.sleep(3.0)
    assert stop_gracefully(processes[0]) == 0

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "status",
            "--config",
            str(config),
            "--json",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    status = json.loads(result.stdout)
    assert status["running"] is False
    tool = status["tools"]["etch-01"]
    assert tool["state"] == "stopped"
    assert tool["readings_stored"] > 20
    assert set(status["outbox"]) == {"alerts", "events", "summaries", "telemetry"}
    table = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--config", str(config)],
        capture_output=True,
        check=True,
        timeout=30,
        text=True,
    ).stdout
    assert "etch-01" in table
    assert "not running" in table


@pytest.mark.slow
def test_sigterm_exits_zero_and_keeps_the_log_json(
    tmp_path: Path,
    broker: Broker,
    topic_prefix: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """SIGHUP reloads in place, SIGTERM exits 0, and every log line is JSON."""
    config = write_config(tmp_path, broker.port, topic_prefix)
    log = tmp_path / "gateway.log"
    processes.append(start_gateway(config, log))
    time.sleep(2.0)
    processes[0].send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert processes[0].poll() is None  # a reload request never kills the daemon
    assert stop_gracefully(processes[0]) == 0

    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "reload_applied" in events  # the same configuration, read again
    assert "gateway_started" in events
    assert "gateway_stopping" in events
    assert events[-1] == "gateway_stopped"


async def test_one_failing_tool_never_stops_another(tmp_path: Path) -> None:
    """A tool that fails to connect and then drops its link leaves the other polling."""
    config_dir = write_config(
        tmp_path,
        port=1,
        prefix="unused",
        tools={
            "good-01": "",
            "flaky-02": (
                "fail_connects = 2\n\n[[driver.faults]]\n"
                'kind = "disconnect"\nat_s = 0.5\nduration_s = 0.5\n'
            ),
        },
        enabled=False,
    )
    gateway = Gateway(load_config(config_dir))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop))
    await asyncio.sleep(3.0)
    status = gateway.status()
    stop.set()
    await asyncio.wait_for(run, EXIT_TIMEOUT_S)

    good, flaky = status["tools"]["good-01"], status["tools"]["flaky-02"]
    assert good["reconnects"] == 0
    assert good["polls"] >= 20  # 3 s at 0.1 s, less start-up
    assert flaky["reconnects"] >= 3  # two refused connects and one dropped link
    assert flaky["state"] == "up"
    assert flaky["polls"] > 0
    assert status["pipeline"]["dropped_batches"] == 0
    with StoreReader.open(tmp_path / "gateway.db") as store:
        stored = store.tool_stats()
    assert stored["good-01"].readings >= 2 * good["polls"]


def test_a_store_from_a_newer_gateway_stops_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    """A database with a newer schema is refused: exit 1 and one line on stderr."""
    config = write_config(tmp_path, port=1, prefix="unused", enabled=False)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.execute("PRAGMA user_version = 999")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "999" in line
    assert str(tmp_path / "gateway.db") in line
