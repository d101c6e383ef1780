"""Reloading the configuration in place (what SIGHUP does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import MakeBroker, MakeSubscriber
from daemon_process import write_main, write_tool
from mosquitto import eventually, free_port

from gateway import daemon
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.store import StoreReader

STOP_TIMEOUT_S = 20.0


@asynccontextmanager
async def running(config: Path) -> AsyncIterator[Gateway]:
    """Run a gateway on ``config`` in this loop; stop it in order afterwards."""
    gateway = Gateway(load_config(config))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        await eventually(lambda: bool(gateway.status()["tools"]), 10, "tools started")
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, STOP_TIMEOUT_S)


async def reload(gateway: Gateway) -> None:
    """Ask for a reload and wait until it was applied or refused."""
    done = gateway.counters.reloads + gateway.counters.failed_reloads
    gateway.request_reload()
    await eventually(
        lambda: gateway.counters.reloads + gateway.counters.failed_reloads > done,
        20,
        "the reload",
    )


def pending_payloads(store: Path) -> set[bytes]:
    with StoreReader.open(store) as reader:
        return {row.payload for row in reader.pending_messages(limit=100_000)}


def polls(gateway: Gateway, tool: str) -> int:
    count: int = gateway.status()["tools"][tool]["polls"]
    return count


async def test_a_valid_change_restarts_only_what_changed_and_keeps_the_outbox(
    tmp_path: Path, make_broker: MakeBroker, make_subscriber: MakeSubscriber
) -> None:
    """Changed tools restart, new ones start, removed ones stop, the rest run on.

    The outbox filled while the broker was unreachable survives both reloads and
    is delivered once a reload points the gateway at a reachable broker.
    """
    store = tmp_path / "gateway.db"
    unreachable = free_port()
    mqtt = 'host = "127.0.0.1"\nport = {port}\ntopic_prefix = "{prefix}"'
    config = write_main(
        tmp_path / "config", store, mqtt=mqtt.format(port=unreachable, prefix="r")
    )
    for tool in ("keep-01", "change-02", "remove-03"):
        write_tool(config, tool)

    async with running(config) as gateway:
        await eventually(
            lambda: len(pending_payloads(store)) >= 6, 20, "summaries queued"
        )
        keep = gateway.tools["keep-01"]
        change = gateway.tools["change-02"]
        publisher = gateway.publisher
        polls_before = polls(gateway, "keep-01")

        write_tool(config, "change-02", level=60.0)
        (config / "tools" / "remove-03.toml").unlink()
        write_tool(config, "add-04")
        queued = pending_payloads(store)
        await reload(gateway)

        assert gateway.counters.reloads == 1
        assert set(gateway.tools) == {"keep-01", "change-02", "add-04"}
        assert gateway.tools["keep-01"] is keep  # same supervisor, task, pipeline
        assert keep.task is not None
        assert not keep.task.done()
        assert gateway.tools["change-02"] is not change
        assert change.task is not None
        assert change.task.done()
        assert gateway.publisher is publisher  # [mqtt] unchanged: same session
        assert queued <= pending_payloads(store)
        await eventually(
            lambda: polls(gateway, "add-04") > 5 and polls(gateway, "change-02") > 5,
            10,
            "the new and restarted tools polling",
        )
        assert polls(gateway, "keep-01") > polls_before  # polled on throughout
        assert gateway.counters.rejected == 0  # no batch was left without a tool

        broker = make_broker()
        subscriber = make_subscriber(broker, "r/#")
        text = (config / "gateway.toml").read_text()
        (config / "gateway.toml").write_text(
            text.replace(f"port = {unreachable}", f"port = {broker.port}")
        )
        await reload(gateway)
        assert gateway.publisher is not publisher
        await eventually(
            lambda: queued <= set(subscriber.payloads()),
            20,
            "every message queued before the reloads delivered",
        )
        assert gateway.tools["keep-01"] is keep


async def test_an_invalid_change_keeps_the_running_configuration(
    tmp_path: Path,
) -> None:
    """A broken file is refused with one ERROR naming every problem; nothing stops."""
    config = write_main(tmp_path / "config", tmp_path / "gateway.db")
    write_tool(config, "etch-01")
    async with running(config) as gateway:
        running_config = gateway.config
        etch = gateway.tools["etch-01"]
        (config / "tools" / "etch-01.toml").write_text(
            (config / "tools" / "etch-01.toml")
            .read_text()
            .replace("interval_s = 0.1", 'interval_s = "fast"')
        )
        write_tool(config, "cvd-02", driver="no_such_key = 1")
        with structlog.testing.capture_logs() as logs:
            await reload(gateway)
        before = polls(gateway, "etch-01")
        await asyncio.sleep(0.5)
        after = polls(gateway, "etch-01")

    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["reload_failed"]
    problems = errors[0]["problems"]
    assert any(
        p.startswith("tools/etch-01.toml: poll_groups[0].interval_s") for p in problems
    )
    assert any(p.startswith("tools/cvd-02.toml: driver.no_such_key") for p in problems)
    assert gateway.counters.failed_reloads == 1
    assert gateway.last_reload is not None
    assert gateway.last_reload["problems"] == problems
    assert gateway.config is running_config
    assert gateway.tools["etch-01"] is etch
    assert after > before  # still polling on the old configuration


async def test_a_tool_that_cannot_be_built_leaves_the_old_tools_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid file whose tool fails to build refuses the reload; nothing stops."""
    config = write_main(tmp_path / "config", tmp_path / "gateway.db")
    write_tool(config, "etch-01")
    real_driver_class = daemon.driver_class

    def refusing(kind: str) -> Any:
        cls = real_driver_class(kind)

        def build(tool: str, *args: Any) -> Any:
            if tool == "cvd-02":
                raise ValueError("the driver refuses these settings")
            return cls(tool, *args)

        return build

    async with running(config) as gateway:
        etch = gateway.tools["etch-01"]
        monkeypatch.setattr(daemon, "driver_class", refusing)
        write_tool(config, "cvd-02")
        (config / "tools" / "etch-01.toml").write_text(
            (config / "tools" / "etch-01.toml")
            .read_text()
            .replace("interval_s = 0.1", "interval_s = 0.2")
        )
        with structlog.testing.capture_logs() as logs:
            await reload(gateway)
        before = polls(gateway, "etch-01")
        await asyncio.sleep(0.5)
        after = polls(gateway, "etch-01")

    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["reload_failed"]
    assert errors[0]["problems"] == ["cvd-02: the driver refuses these settings"]
    assert gateway.counters.failed_reloads == 1
    assert "cvd-02" not in gateway.tools
    assert gateway.tools["etch-01"] is etch  # the changed tool was not retired
    assert after > before
