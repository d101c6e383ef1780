"""Graceful stop under load: SIGTERM with a busy pipeline and no broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from daemon_process import Daemon, write_main, write_tool
from mosquitto import free_port, wait_until

from gateway.report import STATUS_KEY
from gateway.store import StoreReader

# systemd's TimeoutStopSec in systemd/edge-gateway.service is 30 s; the stop must
# fit well inside it even on a loaded machine.
STOP_DEADLINE_S = 15.0
SHUTDOWN_PUBLISH_S = 1.0
TOOLS = 4


@pytest.mark.slow
def test_sigterm_under_load_with_the_broker_down_commits_everything_accepted(
    tmp_path: Path,
) -> None:
    """Every batch taken from the tools is stored, and the daemon exits in time."""
    store = tmp_path / "gateway.db"
    mqtt = (
        f'host = "127.0.0.1"\nport = {free_port()}\n'
        f"shutdown_publish_s = {SHUTDOWN_PUBLISH_S}"
    )
    config = write_main(tmp_path / "config", store, mqtt=mqtt)
    text = (config / "gateway.toml").read_text()
    (config / "gateway.toml").write_text(
        text.replace("summary_window_s = 1", "summary_window_s = 1\nqueue_batches = 8")
    )
    for n in range(TOOLS):
        # 20,000 steps of 2 tags every 50 ms per tool: more than the pipeline
        # takes, so the queue is full when the signal comes.
        write_tool(
            config,
            f"busy-{n}",
            seed=n,
            interval_s=0.05,
            driver="steps_per_poll = 20000",
        )
    daemon = Daemon(config, tmp_path / "gateway.log")
    try:
        daemon.wait_for("gateway_started")
        wait_until(lambda: store.exists(), 10, "the store")
        time.sleep(3.0)
        started = time.monotonic()
        code = daemon.stop(timeout=STOP_DEADLINE_S + 5)
        elapsed = time.monotonic() - started
    finally:
        daemon.kill()

    assert code == 0
    assert elapsed < STOP_DEADLINE_S
    with StoreReader.open(store) as reader:
        snapshot = json.loads(reader.get_state(STATUS_KEY) or b"{}")
        stored = reader.tool_stats()
        backlog = reader.outbox_backlog()
    assert snapshot["running"] is False
    # The pipeline was the bottleneck: polls fell behind their interval.
    assert sum(state["overruns"] for state in snapshot["tools"].values()) > 0
    for tool, state in snapshot["tools"].items():
        assert state["readings"] > 0
        assert stored[tool].readings == state["readings"], tool
    stopped = daemon.named("gateway_stopped")[0]
    assert stopped["readings"] == sum(s.readings for s in stored.values())
    assert backlog[2][0] > 0  # summaries wait in the outbox for the broker
    assert daemon.named("mqtt_shutdown_backlog")  # the publish window ran out
