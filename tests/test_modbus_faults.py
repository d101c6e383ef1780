"""Faults: exception replies, timeouts, slow replies, drops, restarts, desync."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from modbus_support import LOOPBACK, driver_of, load_tool, served
from modbus_support import simulation_of as levels
from mosquitto import eventually

from drivers.base import ConnectionLost
from drivers.batch import BAD_COMM, BAD_DEVICE, GOOD, ReadingBatch
from drivers.modbus.errors import FrameError, RequestTimeout, TransactionMismatch
from drivers.modbus.simulator import ModbusSimulator
from gateway.config.models import (
    BackoffConfig,
    GatewayConfig,
    GatewayIdentity,
    MainConfig,
    MqttConfig,
    StoreConfig,
)
from gateway.daemon import Gateway
from gateway.metrics import render_metrics
from gateway.report import build_report
from gateway.status import render_table
from gateway.supervisor import ToolSupervisor

ILLEGAL_ADDRESS = 0x02
DEVICE_BUSY = 0x06
GATEWAY_NO_RESPONSE = 0x0B
FAST_BACKOFF = BackoffConfig(initial_s=0.05, max_s=0.2)
WITHIN_S = 10.0

TOOL = """
[driver]
kind = "modbus"
host = "127.0.0.1"
request_timeout_s = {timeout}
max_gap = 4
concurrency = {concurrency}

[[poll_groups]]
name = "g"
interval_s = {interval}
tags = ["a", "b", "c", "d"]

[[tags]]
name = "a"
source = {{ address = 0, type = "float32" }}

[[tags]]
name = "b"
source = {{ address = 2, type = "float32" }}

[[tags]]
name = "c"
source = {{ address = 40, type = "int16" }}

[[tags]]
name = "d"
source = {{ address = 0, type = "uint16", unit_id = 2 }}
"""
LEVELS = {"a": 1.5, "b": 2.5, "c": -4.0, "d": 9.0}


def tool_file(
    tmp_path: Path,
    timeout: float = 0.5,
    interval: float = 0.1,
    name: str = "mb-01",
    concurrency: int = 1,
):  # type: ignore[no-untyped-def]
    """The four-tag test tool: a, b (one request), c (another), d on unit 2."""
    text = TOOL.format(timeout=timeout, interval=interval, concurrency=concurrency)
    return load_tool(tmp_path, text, name)


async def test_exception_reply_marks_only_its_request_bad(tmp_path: Path) -> None:
    """An exception reply makes only its request's tags BAD_DEVICE, code kept."""
    tool = tool_file(tmp_path)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.inject_exception(
            ILLEGAL_ADDRESS, table="holding", address=40, unit_id=1
        )
        batch = await driver.read_group(driver.groups[0])
        assert batch.quality[0].tolist() == [GOOD, GOOD, BAD_DEVICE, GOOD]
        assert np.isnan(batch.values[0, 2])
        assert batch.values[0, [0, 1, 3]].tolist() == [1.5, 2.5, 9.0]
        assert driver.exception_codes.tolist() == [0, 0, ILLEGAL_ADDRESS, 0]
        assert driver.tag_faults() == {"c": "exception 0x02 illegal data address"}

        simulator.clear_faults()
        batch = await driver.read_group(driver.groups[0])
        assert batch.quality[0].tolist() == [GOOD] * 4
        assert batch.values[0].tolist() == [1.5, 2.5, -4.0, 9.0]
        assert driver.exception_codes.tolist() == [0, 0, 0, 0]
        assert driver.tag_faults() == {}


async def test_an_unreachable_unit_does_not_stall_the_others(tmp_path: Path) -> None:
    """A unit that does not answer its gateway (0x0B) leaves other units good."""
    tool = tool_file(tmp_path)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.inject_exception(GATEWAY_NO_RESPONSE, unit_id=2)
        simulator.inject_exception(DEVICE_BUSY, unit_id=1, address=40, times=1)
        first = await driver.read_group(driver.groups[0])
        second = await driver.read_group(driver.groups[0])

    assert first.quality[0].tolist() == [GOOD, GOOD, BAD_DEVICE, BAD_DEVICE]
    assert second.quality[0].tolist() == [GOOD, GOOD, GOOD, BAD_DEVICE]
    assert driver.exception_codes.tolist() == [0, 0, 0, GATEWAY_NO_RESPONSE]


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_silent_unit_turns_only_its_tags_bad_and_keeps_the_link(
    tmp_path: Path, concurrency: int
) -> None:
    """A unit that stops answering is 0x0B; late replies to it are dropped."""
    tool = tool_file(tmp_path, timeout=0.2, concurrency=concurrency)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.silent_units.add(2)
        simulator.silence_s = 0.3  # its replies come, late, during the next poll
        polls = [await driver.read_group(driver.groups[0]) for _ in range(3)]
        assert driver.exception_codes.tolist() == [0, 0, 0, GATEWAY_NO_RESPONSE]
        simulator.clear_faults()
        await asyncio.sleep(0.4)  # the last late reply arrives and is dropped
        healed = await driver.read_group(driver.groups[0])

    for batch in polls:
        assert batch.quality[0].tolist() == [GOOD, GOOD, GOOD, BAD_DEVICE]
        assert batch.values[0, :3].tolist() == [1.5, 2.5, -4.0]
    assert healed.quality[0].tolist() == [GOOD] * 4
    assert healed.values[0].tolist() == [1.5, 2.5, -4.0, 9.0]
    assert simulator.requests[(2, 3)] == 4  # once a poll, never retried


async def test_slow_replies_within_the_timeout_are_read(tmp_path: Path) -> None:
    """Replies slow but within ``request_timeout_s`` still give good values."""
    tool = tool_file(tmp_path, timeout=1.0)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.reply_delay_s = 0.1
        batch = await driver.read_group(driver.groups[0])

    assert batch.values[0].tolist() == [1.5, 2.5, -4.0, 9.0]


async def test_a_reply_later_than_the_timeout_fails_the_link(tmp_path: Path) -> None:
    """No reply in ``request_timeout_s`` raises RequestTimeout; a reconnect reads."""
    tool = tool_file(tmp_path, timeout=0.2)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.reply_delay_s = 1.0
        # Every unit late: the first timeout is taken for one silent unit, the
        # next, with nothing answered in between, for the link.
        with pytest.raises(
            RequestTimeout, match=r"no reply to unit \d .* within 0.2 s"
        ):
            await driver.read_group(driver.groups[0])
        with pytest.raises(ConnectionLost):
            await driver.read_group(driver.groups[0])

        simulator.clear_faults()
        await driver.close()
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])

    assert batch.quality[0].tolist() == [GOOD] * 4


async def test_a_dropped_connection_fails_the_poll_then_reconnects(
    tmp_path: Path,
) -> None:
    """A server closing the connection ends the session; a new one reads fine."""
    tool = tool_file(tmp_path)
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        await driver.read_group(driver.groups[0])
        assert simulator.drop_connections() == 1
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionLost, match="lost"):
            await driver.read_group(driver.groups[0])

        await driver.close()
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])

    assert batch.quality[0].tolist() == [GOOD] * 4


class Recorder:
    """A sink that keeps every batch, by tool."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []

    async def __call__(self, batch: object) -> None:
        assert isinstance(batch, ReadingBatch)
        self.batches.append(batch)

    def of(self, tool: str) -> list[ReadingBatch]:
        return [b for b in self.batches if b.tool == tool]


@contextlib.asynccontextmanager
async def supervised(*supervisors: ToolSupervisor) -> AsyncIterator[None]:
    """Run supervisors for the duration of the block."""
    tasks = [
        asyncio.create_task(s.run(), name=f"modbus[{s.tool}]") for s in supervisors
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_silent_unit_under_the_supervisor_causes_no_reconnect(
    tmp_path: Path,
) -> None:
    """Polls go on with the silent unit's tag bad and the session never drops."""
    tool = tool_file(tmp_path, timeout=0.1, interval=0.05)
    sink = Recorder()
    async with ModbusSimulator(tool, levels(LEVELS), LOOPBACK, 0) as simulator:
        simulator.silent_units.add(2)
        supervisor = ToolSupervisor(
            driver_of(tool, simulator.driver_settings()), sink, FAST_BACKOFF
        )
        async with supervised(supervisor):
            await eventually(lambda: len(sink.batches) >= 5, WITHIN_S, "five polls")
    assert supervisor.reconnects == 0
    for batch in sink.batches:
        assert batch.quality[0].tolist() == [GOOD, GOOD, GOOD, BAD_DEVICE]


async def test_server_restart_turns_tags_bad_then_recovers_while_other_tools_poll(
    tmp_path: Path,
) -> None:
    """A downed server's tags go BAD_COMM, then recover; another tool keeps polling."""
    down_tool = tool_file(tmp_path, name="mb-down")
    other_tool = tool_file(tmp_path, name="mb-other")
    sink = Recorder()
    async with (
        ModbusSimulator(down_tool, levels(LEVELS), LOOPBACK, 0) as first,
        ModbusSimulator(other_tool, levels(LEVELS), LOOPBACK, 0) as other,
    ):
        port = first.port
        down = ToolSupervisor(
            driver_of(down_tool, first.driver_settings()), sink, FAST_BACKOFF
        )
        steady = ToolSupervisor(
            driver_of(other_tool, other.driver_settings()), sink, FAST_BACKOFF
        )
        async with supervised(down, steady):
            await eventually(
                lambda: len(sink.of("mb-down")) >= 3, WITHIN_S, "first polls"
            )
            await first.stop()
            await eventually(
                lambda: any((b.quality == BAD_COMM).all() for b in sink.of("mb-down")),
                WITHIN_S,
                "tags marked bad",
            )
            polls_while_down = len(sink.of("mb-other"))
            await asyncio.sleep(0.5)
            assert len(sink.of("mb-other")) >= polls_while_down + 3
            assert down.state != "up"

            async with ModbusSimulator(down_tool, levels(LEVELS), LOOPBACK, port):
                before = len(sink.of("mb-down"))
                await eventually(
                    lambda: any(
                        (b.quality == GOOD).all() for b in sink.of("mb-down")[before:]
                    ),
                    WITHIN_S,
                    "recovery",
                )
                assert down.reconnects >= 1
    assert all((b.quality == GOOD).all() for b in sink.of("mb-other"))


async def test_slow_polls_are_skipped_and_counted_never_queued(tmp_path: Path) -> None:
    """A poll slower than its interval skips the ticks it covers and counts them."""
    tool = tool_file(tmp_path, timeout=1.0, interval=0.05)
    sink = Recorder()
    async with served(tool, levels(LEVELS)) as (simulator, driver):
        simulator.reply_delay_s = 0.06  # three requests: about 0.18 s a poll
        task = asyncio.create_task(driver.acquire(sink))
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    polls = driver.stats.polls
    assert 2 <= polls <= 8
    assert driver.stats.overruns >= 2 * polls
    assert sum(simulator.requests.values()) <= 3 * (polls + 1)


class ScriptedServer:
    """A TCP peer that answers each request with a frame built by ``reply``."""

    def __init__(self, reply: object) -> None:
        self.reply = reply
        self.server: asyncio.Server | None = None
        self.closed = asyncio.Event()

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while request := await reader.readexactly(12):
                writer.write(self.reply(request))  # type: ignore[operator]
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self.handle, LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


def registers_reply(
    request: bytes, tid_shift: int = 0, protocol: int = 0, missing: int = 0
) -> bytes:
    """A reply of zeros: transaction id shifted, ``missing`` bytes short."""
    tid, _, _, unit, function, _, count = struct.unpack(">HHHBBHH", request)
    data = bytes(2 * count - missing)
    pdu = bytes([function, len(data)]) + data
    return (
        struct.pack(">HHHB", (tid + tid_shift) % 65536, protocol, len(pdu) + 1, unit)
        + pdu
    )


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (lambda r: registers_reply(r, tid_shift=7), TransactionMismatch),
        (lambda r: registers_reply(r, protocol=3), FrameError),
        (lambda r: registers_reply(r, missing=2), FrameError),
    ],
    ids=["wrong-transaction-id", "wrong-protocol-id", "short-data"],
)
async def test_a_reply_out_of_step_drops_the_connection(
    tmp_path: Path, reply: object, error: type[Exception]
) -> None:
    """A reply out of step or malformed fails the link and closes the connection."""
    tool = tool_file(tmp_path)
    async with ScriptedServer(reply) as server:
        driver = driver_of(tool, tool.driver.model_copy(update={"port": server.port}))
        await driver.connect()
        with pytest.raises(error):
            await driver.read_group(driver.groups[0])
        await asyncio.wait_for(server.closed.wait(), WITHIN_S)
        await driver.close()


async def test_connect_to_a_closed_port_fails_fast(tmp_path: Path) -> None:
    """Connecting where nothing listens raises ConnectFailed naming the endpoint."""
    from drivers.base import ConnectFailed

    tool = tool_file(tmp_path)
    async with ScriptedServer(registers_reply) as server:
        port = server.port
    driver = driver_of(tool, tool.driver.model_copy(update={"port": port}))
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await driver.connect()


async def test_a_disconnect_window_drops_and_refuses_then_serves_again(
    tmp_path: Path,
) -> None:
    """During the simulation's disconnect fault the simulator drops every session."""
    tool = tool_file(tmp_path)
    window = {"faults": ({"kind": "disconnect", "at_s": 1.0, "duration_s": 1.0},)}
    async with served(tool, levels(LEVELS, **window)) as (simulator, driver):
        await driver.read_group(driver.groups[0])
        await eventually(simulator.disconnected, WITHIN_S, "the disconnect window")
        with pytest.raises(ConnectionLost):
            await driver.read_group(driver.groups[0])
        await driver.close()

        await eventually(lambda: not simulator.disconnected(), WITHIN_S, "its end")
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])

    assert batch.quality[0].tolist() == [GOOD] * 4


async def test_refused_tags_are_named_in_the_status_report(tmp_path: Path) -> None:
    """A tag answered with an exception shows in status with the code and its name."""
    tool = tool_file(tmp_path)
    async with ModbusSimulator(tool, levels(LEVELS), LOOPBACK, 0) as simulator:
        simulator.inject_exception(
            ILLEGAL_ADDRESS, table="holding", address=40, unit_id=1
        )
        served_tool = tool.model_copy(update={"driver": simulator.driver_settings()})
        config = GatewayConfig(
            directory=tmp_path,
            main=MainConfig(
                gateway=GatewayIdentity(site="fab-1", id="gw-01"),
                store=StoreConfig(path=tmp_path / "gateway.db"),
                mqtt=MqttConfig(enabled=False),
            ),
            tools=(served_tool,),
        )
        gateway = Gateway(config)
        stop = asyncio.Event()
        running = asyncio.create_task(gateway.run(stop))
        try:
            await eventually(
                lambda: bool(gateway.status()["tools"]["mb-01"]["tag_faults"]),
                WITHIN_S,
                "the refused tag in the status",
            )
            report = build_report(
                config,
                gateway.status(),
                await gateway.store_figures(max_age_s=0.0),
                running=True,
                source="daemon",
            )
        finally:
            stop.set()
            await running

    entry = report["tools"]["mb-01"]
    assert entry["tag_faults"] == {"c": "exception 0x02 illegal data address"}
    assert entry["tag_faults_total"] == 1
    assert "  refused: c: exception 0x02 illegal data address" in (
        render_table(report).splitlines()
    )
    assert 'edge_gateway_tool_refused_tags{tool="mb-01"} 1' in (
        render_metrics(report).splitlines()
    )
