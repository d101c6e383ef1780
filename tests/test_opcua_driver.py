"""The OPC UA driver against a real asyncua server (the simulator) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
from asyncua import ua
from opcua_rig import Collector, driver_for, flat_simulation, opcua_tool, read_once

from drivers.base import ConnectionLost, PollGroup
from drivers.batch import BAD_COMM, BAD_CONFIG, BAD_DEVICE, GOOD
from drivers.opcua import OpcUaDriver
from drivers.opcua.simulator import OpcUaSimulator
from gateway.config.models import BackoffConfig, ToolConfig
from gateway.pipeline import tool_driver
from gateway.supervisor import ToolSupervisor

FAST_S = 0.1


@contextlib.asynccontextmanager
async def acquiring(driver: OpcUaDriver, sink: Collector) -> AsyncIterator[None]:
    """Connect ``driver`` and run its acquisition for the block's duration."""
    await driver.connect()
    task = asyncio.create_task(driver.acquire(sink))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()


def three_tags(**driver: object) -> ToolConfig:
    return opcua_tool(
        {
            "pressure": {"node_id": "ns=2;s=Chamber.Pressure"},
            "temp": {"browse_path": "2:Stage/2:TempC"},
            "count": {"node_id": "ns=3;i=1001", "data_type": "Int32"},
        },
        [
            ("polled", "read", FAST_S, ["pressure", "temp", "count"]),
            ("pushed", "subscribe", FAST_S, ["pressure", "temp", "count"]),
        ],
        **driver,
    )


async def test_read_and_subscribe_deliver_the_same_values() -> None:
    """A value written once arrives the same both ways, with its source timestamp."""
    tool = three_tags()
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        sink = Collector()
        async with acquiring(driver_for(tool, sim), sink):
            await sink.wait_for("pushed", 1)
            await sim.set_value("pressure", 12.5)
            await sim.set_value("temp", 21.25)
            await sim.set_value("count", 7)
            pushed = len(sink.of("pushed"))
            await sink.wait_for("pushed", pushed + 1)
            polled = len(sink.of("polled"))
            await sink.wait_for("polled", polled + 2)

        last_pushed = sink.of("pushed")[-1]
        last_polled = sink.of("polled")[-1]
    expected = np.array([[12.5, 21.25, 7.0]])
    np.testing.assert_array_equal(last_pushed.values[-1:], expected)
    np.testing.assert_array_equal(last_polled.values, expected)
    assert (last_pushed.quality == GOOD).all()
    assert (last_polled.quality == GOOD).all()
    # Both carry the source timestamp of the last write, not their receive time.
    assert last_pushed.timestamps[-1] == last_polled.timestamps[0]


async def test_subscription_batches_hold_every_column_of_the_group() -> None:
    """A change of one node gives a full-width row; the others keep their value."""
    tool = three_tags()
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        sink = Collector()
        async with acquiring(driver_for(tool, sim), sink):
            await sink.wait_for("pushed", 1)
            first = sink.of("pushed")[-1]
            await sim.set_value("temp", 99.0)
            await sink.wait_for("pushed", len(sink.of("pushed")) + 1)
            second = sink.of("pushed")[-1]
    assert second.values.shape == (1, 3)
    assert second.values[0, 1] == 99.0
    np.testing.assert_array_equal(second.values[0, [0, 2]], first.values[-1, [0, 2]])


async def test_absolute_deadband_suppresses_small_changes() -> None:
    """Changes under the deadband are not sent; a change over it is."""
    tool = opcua_tool(
        {
            "banded": {"node_id": "ns=2;s=Level"},
            "plain": {"node_id": "ns=2;s=LevelCopy"},
        },
        [
            ("banded", "subscribe", FAST_S, ["banded"]),
            ("plain", "subscribe", FAST_S, ["plain"]),
        ],
        subscriptions={"banded": {"deadband": "absolute", "deadband_value": 1.0}},
    )
    sink = Collector()

    def seen(group: str) -> list[float]:
        return [float(v) for b in sink.of(group) for v in b.values[:, 0]]

    sim = OpcUaSimulator(tool, flat_simulation(tool), update=False)
    async with sim, acquiring(driver_for(tool, sim), sink):
        for value in (10.0, 10.3, 10.6, 12.0):
            await sim.set_value("banded", value)
            await sim.set_value("plain", value)
            # Three publishing intervals, so that each write is published.
            await asyncio.sleep(3 * FAST_S)
        await sink.wait_until(
            lambda: all(seen(g)[-1:] == [12.0] for g in ("banded", "plain"))
        )

    assert {10.3, 10.6} <= set(seen("plain"))
    assert not {10.3, 10.6} & set(seen("banded"))


async def test_reads_are_split_to_the_servers_operation_limit() -> None:
    """25 nodes under MaxNodesPerRead = 10 take three Read calls, all values good."""
    names = [f"t{i:02d}" for i in range(25)]
    tool = opcua_tool(
        {name: {"node_id": f"ns=2;s=Bank.{name}"} for name in names},
        [("all", "read", FAST_S, names)],
    )
    sim = OpcUaSimulator(
        tool, flat_simulation(tool), update=False, max_nodes_per_read=10
    )
    async with sim:
        driver = driver_for(tool, sim)
        await driver.connect()
        try:
            before = sim.read_requests
            batch = await driver.read_group(driver.groups[0])
            calls = sim.read_requests - before
        finally:
            await driver.close()
    assert calls == 3
    assert (batch.quality == GOOD).all()
    np.testing.assert_array_equal(batch.values[0], 10.0 * np.arange(1, 26))


async def test_a_server_enforcing_a_lower_limit_than_it_advertises() -> None:
    """``BadTooManyOperations`` halves the Read calls until the server takes them."""
    names = [f"t{i:02d}" for i in range(25)]
    tool = opcua_tool(
        {name: {"node_id": f"ns=2;s=Bank.{name}"} for name in names},
        [("all", "read", FAST_S, names)],
    )
    simulation = flat_simulation(tool)
    sim = OpcUaSimulator(tool, simulation, update=False, max_nodes_per_read=10)
    async with sim:
        assert sim.server is not None
        limit = ua.NodeId(
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
        )
        await sim.server.write_attribute_value(
            limit,
            ua.DataValue(ua.Variant(0, ua.VariantType.UInt32)),  # "no limit"
        )
        driver = driver_for(tool, sim)
        await driver.connect()
        try:
            first = await driver.read_group(driver.groups[0])
            before = sim.read_requests
            second = await driver.read_group(driver.groups[0])
            calls = sim.read_requests - before
        finally:
            await driver.close()
    assert (first.quality == GOOD).all()
    assert (second.quality == GOOD).all()
    assert calls == 5  # 25 nodes: 25 refused, 12 refused, then calls of 6


async def test_a_lower_cap_than_the_server_limit_is_obeyed() -> None:
    """``max_nodes_per_read`` below the server's limit splits further."""
    names = [f"t{i}" for i in range(9)]
    tool = opcua_tool(
        {name: {"node_id": f"ns=2;s=Cap.{name}"} for name in names},
        [("all", "read", FAST_S, names)],
        max_nodes_per_read=4,
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        driver = driver_for(tool, sim)
        await driver.connect()
        try:
            before = sim.read_requests
            batch = await driver.read_group(driver.groups[0])
            calls = sim.read_requests - before
        finally:
            await driver.close()
    assert calls == 3
    assert (batch.quality == GOOD).all()


async def test_unknown_node_wrong_type_and_denied_read_mark_only_that_tag() -> None:
    """Each faulty node is bad with its own status code; the good tag stays good."""
    tool = opcua_tool(
        {
            "good": {"node_id": "ns=2;s=Good"},
            "gone": {"node_id": "ns=2;s=Gone"},
            "text": {"node_id": "ns=2;s=Text"},
            "locked": {"node_id": "ns=2;s=Locked"},
        },
        [("all", "read", FAST_S, ["good", "gone", "text", "locked"])],
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        assert sim.server is not None
        await sim.server.delete_nodes([sim.server.get_node("ns=2;s=Gone")])
        await sim.server.delete_nodes([sim.server.get_node("ns=2;s=Text")])
        parent = sim.server.get_node(f"ns=2;s={tool.id}")
        await parent.add_variable(ua.NodeId("Text", 2), "Text", "recipe-7")
        await sim.set_readable("locked", False)

        driver = driver_for(tool, sim)
        batch = await read_once(driver)
    assert batch.values[0, 0] == 10.0
    assert list(batch.quality[0]) == [GOOD, BAD_DEVICE, BAD_CONFIG, BAD_DEVICE]
    assert np.isnan(batch.values[0, 1:]).all()
    assert [ua.StatusCode(int(c)).name for c in driver.status_codes] == [
        "Good",
        "BadNodeIdUnknown",
        "BadTypeMismatch",
        "BadNotReadable",
    ]
    assert driver.tag_faults() == {
        "gone": "BadNodeIdUnknown",
        "text": "BadTypeMismatch",
        "locked": "BadNotReadable",
    }


async def test_a_node_of_another_type_than_declared_is_bad() -> None:
    """A tag whose declared ``data_type`` differs from the node's is BAD_CONFIG."""
    tool = opcua_tool(
        {
            "good": {"node_id": "ns=2;s=Good"},
            "counter": {"node_id": "ns=2;s=Counter", "data_type": "Int32"},
        },
        [("all", "read", FAST_S, ["good", "counter"])],
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        assert sim.server is not None
        await sim.server.delete_nodes([sim.server.get_node("ns=2;s=Counter")])
        parent = sim.server.get_node(f"ns=2;s={tool.id}")
        await parent.add_variable(ua.NodeId("Counter", 2), "Counter", 3.5)  # Double

        driver = driver_for(tool, sim)
        batch = await read_once(driver)
    assert batch.values[0, 0] == 10.0
    assert list(batch.quality[0]) == [GOOD, BAD_CONFIG]
    assert ua.StatusCode(int(driver.status_codes[1])).name == "BadTypeMismatch"


async def test_a_monitored_item_refused_marks_only_its_column() -> None:
    """In a subscribe group, an unknown node is bad; the others still arrive."""
    tool = opcua_tool(
        {"good": {"node_id": "ns=2;s=Good"}, "gone": {"node_id": "ns=2;s=Gone"}},
        [("pushed", "subscribe", FAST_S, ["good", "gone"])],
    )
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        assert sim.server is not None
        await sim.server.delete_nodes([sim.server.get_node("ns=2;s=Gone")])
        sink = Collector()
        async with acquiring(driver_for(tool, sim), sink):
            await sink.wait_for("pushed", 1)
    batch = sink.of("pushed")[0]
    assert batch.values[0, 0] == 10.0
    assert list(batch.quality[0]) == [GOOD, BAD_DEVICE]


async def test_server_restart_resumes_without_restarting_the_gateway() -> None:
    """After a restart both groups deliver again; the gap is marked bad."""
    tool = three_tags()
    async with OpcUaSimulator(tool, flat_simulation(tool, noise=1.0)) as sim:
        sink = Collector()
        driver = driver_for(tool, sim)
        supervisor = ToolSupervisor(
            driver, sink, BackoffConfig(initial_s=0.1, max_s=0.3, jitter=0.0)
        )
        task = asyncio.create_task(supervisor.run())
        try:
            await sink.wait_for("pushed", 2)
            await sink.wait_for("polled", 2)
            await sim.restart(down_s=1.0)
            marks = len(sink.batches)
            await sink.wait_for("pushed", len(sink.of("pushed")) + 5)
            await sink.wait_for("polled", len(sink.of("polled")) + 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await driver.close()
    bad = [b for b in sink.batches if (b.quality == BAD_COMM).all()]
    assert {b.group for b in bad} == {"polled", "pushed"}
    assert supervisor.reconnects >= 1
    after = sink.batches[marks:]
    assert any(b.group == "pushed" and (b.quality == GOOD).all() for b in after[-5:])
    assert (sink.of("polled")[-1].quality == GOOD).all()


async def test_reading_after_the_session_is_lost_raises_connection_lost() -> None:
    """A Read on a session whose server went away ends the session, not the loop."""
    tool = three_tags()
    async with OpcUaSimulator(tool, flat_simulation(tool), update=False) as sim:
        driver = driver_for(tool, sim)
        await driver.connect()
        try:
            await sim.halt()
            with pytest.raises(ConnectionLost):
                await read_until_failure(driver, driver.groups[0])
        finally:
            await driver.close()


async def read_until_failure(driver: OpcUaDriver, group: PollGroup) -> None:
    """Read ``group`` every poll interval, for at most 50 polls."""
    for _ in range(50):
        await driver.read_group(group)
        await asyncio.sleep(group.interval_s)


class FreezingProxy:
    """A TCP relay on 127.0.0.1 that can go silent without closing: a pulled cable.

    While frozen, bytes in both directions are dropped and new connections are
    accepted but never relayed; :meth:`thaw` closes the connections that froze
    (their streams lost bytes) and relays new ones again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self._close_all()
        self.frozen = False

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self._writers.add(client_w)
        server_r, server_w = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers.add(server_w)
        for source, sink in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._relay(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65_536):
                if not self.frozen:
                    sink.write(data)
        sink.close()


async def test_a_silent_network_is_detected_by_keepalive_and_recovered() -> None:
    """With no byte getting through and no socket closed, the session is rebuilt."""
    tool = opcua_tool(
        {"pressure": {"node_id": "ns=2;s=Chamber.Pressure"}},
        [("pushed", "subscribe", FAST_S, ["pressure"])],
        keepalive_s=0.3,
        request_timeout_s=0.5,
        connect_timeout_s=1.0,
    )
    async with (
        OpcUaSimulator(tool, flat_simulation(tool, noise=1.0)) as sim,
        FreezingProxy(sim.port) as proxy,
    ):
        settings = sim.driver_settings().model_copy(
            update={"endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/"}
        )
        driver = tool_driver(OpcUaDriver, tool, settings)
        sink = Collector()
        supervisor = ToolSupervisor(
            driver, sink, BackoffConfig(initial_s=0.1, max_s=0.3, jitter=0.0)
        )
        task = asyncio.create_task(supervisor.run())
        try:
            await sink.wait_for("pushed", 3)
            proxy.freeze()
            await sink.wait_until(
                lambda: any((b.quality == BAD_COMM).all() for b in sink.batches)
            )
            proxy.thaw()
            marks = len(sink.batches)
            await sink.wait_until(
                lambda: any((b.quality == GOOD).all() for b in sink.batches[marks:])
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await driver.close()
    assert supervisor.reconnects >= 1
