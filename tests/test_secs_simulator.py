"""The hsms driver against our GEM equipment simulator over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from mosquitto import free_port
from secs_support import (
    SIMULATOR_IDS,
    TOOL,
    Recorder,
    load_tool,
    make_driver,
    until,
)

from drivers.base import ConnectFailed, ConnectionLost
from drivers.batch import BAD_DEVICE, GOOD
from drivers.secs.codec import Format, Item
from drivers.secs.driver import HsmsDriver
from drivers.secs.gem import EventSetup, ReportSetup, setup_reports
from drivers.secs.hsms import (
    CommunicationFailure,
    HsmsConnection,
    Message,
    Timers,
    TransactionAborted,
)
from drivers.secs.simulator import HsmsSimulator
from drivers.simulation import Simulation
from gateway.config import ConfigError

CYCLE_S = 0.4

SIGNALS = {
    "pressure": {"level": 45.0, "noise": 0.1},
    "flow": {"level": 8.0, "noise": 0.01},
    "wafer_count": {"level": 25.0},
}


def simulation(**faults: object) -> Simulation:
    """Signals of the test tool, with the given fault list."""
    return Simulation.model_validate(
        {"seed": 3, "step_s": 0.05, "signals": SIGNALS, "faults": faults.get("f", ())}
    )


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, sim: Simulation | None = None, port: int = 0
) -> AsyncIterator[tuple[HsmsSimulator, HsmsDriver]]:
    """A started simulator of the test tool and a driver pointed at it."""
    tool = load_tool(tmp_path, 5000)
    simulator = HsmsSimulator(tool, sim or simulation(), port=port, cycle_s=CYCLE_S)
    await simulator.start()
    driver = make_driver(tool, simulator.driver_settings())  # type: ignore[arg-type]
    try:
        yield simulator, driver
    finally:
        await driver.close()
        await simulator.stop()


@contextlib.asynccontextmanager
async def acquiring(
    driver: HsmsDriver, sink: Recorder
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``driver.acquire(sink)`` for the body's duration."""
    task = asyncio.create_task(driver.acquire(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
            await task


async def test_connect_establishes_and_discovers(tmp_path: Path) -> None:
    """Connect selects, establishes (S1F13) and caches SV names and units (S1F11)."""
    async with running(tmp_path) as (simulator, driver):
        await driver.connect()

        assert driver.equipment == ("EDGESIM", "1.0.0")
        assert driver.status_variables == {
            1001: ("pressure", "mTorr"),
            1002: ("flow", "sccm"),
        }
        assert 1 in driver.equipment_constants
        assert simulator.state.reports == {7: (1001, 2001)}
        assert simulator.state.links == {100: [7]}
        assert simulator.state.enabled_events == {100}


async def test_a_denied_establish_is_retried_until_accepted(tmp_path: Path) -> None:
    """S1F13 answered COMMACK 1 is sent again after the delay until accepted."""
    async with running(tmp_path) as (simulator, driver):
        simulator.establish_denials = 2
        with structlog.testing.capture_logs() as logs:
            await driver.connect()

    assert driver.equipment == ("EDGESIM", "1.0.0")
    assert simulator.establish_requests == 3
    retries = [entry for entry in logs if entry["event"] == "gem_establish_retry"]
    assert [entry["reason"] for entry in retries] == ["COMMACK 1", "COMMACK 1"]


async def test_status_variables_are_polled_into_a_batch(tmp_path: Path) -> None:
    """S1F3 gives one row of the read group's SVIDs near their signal levels."""
    async with running(tmp_path) as (_, driver):
        await driver.connect()

        batch = await driver.read_group(driver.groups[0])

        assert batch.values.shape == (1, 2)
        assert (batch.quality == GOOD).all()
        np.testing.assert_allclose(batch.values[0], [45.0, 8.0], atol=1.0)


async def test_an_svid_the_equipment_does_not_list_is_named_as_refused(
    tmp_path: Path,
) -> None:
    """A tag on an SVID missing from S1F12 is BAD_DEVICE and named by tag_faults."""
    tool = load_tool(tmp_path / "equipment", 5000)
    simulator = HsmsSimulator(tool, simulation(), port=0, cycle_s=CYCLE_S)
    await simulator.start()
    ids = {**SIMULATOR_IDS, "svid_flow": 1999}
    ours = load_tool(tmp_path / "host", simulator.port, ids=ids)
    driver = make_driver(ours)
    try:
        await driver.connect()
        [group] = [g for g in driver.groups if g.mode == "read"]
        batch = await driver.read_group(group)
    finally:
        await driver.close()
        await simulator.stop()

    flow = [driver.tag_names[t] for t in group.tags].index("flow")
    assert batch.quality[0, flow] == BAD_DEVICE
    assert (np.delete(batch.quality[0], flow) == GOOD).all()
    assert driver.tag_faults() == {
        "flow": "SVID 1999 not in the equipment's status variable list (S1F12)"
    }


async def test_event_reports_arrive_as_events_and_readings(tmp_path: Path) -> None:
    """Each S6F11 becomes an event with its report, and a batch of the VID tag."""
    sink = Recorder()
    async with running(tmp_path) as (simulator, driver):
        await driver.connect()
        async with acquiring(driver, sink):
            await until(lambda: sink.of("event"), "an event report")
            await until(lambda: sink.group("reported"), "a reported batch")
            await until(lambda: sink.group("poll"), "a polled batch")

        event = sink.of("event")[0]
        assert (event.code, event.name) == (100, "ProcessStarted")
        [report] = event.data["reports"]
        assert report["rptid"] == 7
        assert set(report["values"]) == {"1001", "2001"}
        assert report["values"]["2001"] == 25.0
        batch = sink.group("reported")[0]
        assert batch.values.tolist() == [[25.0]]
        assert (batch.quality == GOOD).all()
        assert simulator.events_sent >= 1


async def test_reports_are_replaced_on_every_connect(tmp_path: Path) -> None:
    """A second setup on equipment that kept the first is accepted (delete first)."""
    async with running(tmp_path) as (simulator, driver):
        await driver.connect()
        connection = driver._connection
        assert connection is not None
        reports = [ReportSetup(7, (1001, 2001))]
        events = [EventSetup(100, (7,))]

        again = await setup_reports(connection, reports, events, Format.U4)

        assert again == []
        refused = await setup_reports(
            connection, [ReportSetup(8, (9999,))], [], Format.U4
        )
        assert refused == ["S2F33 define reports: ack 4"]
        assert simulator.state.reports == {}


async def test_alarm_sets_and_clears_with_the_fault(tmp_path: Path) -> None:
    """A spike fault sets its alarm (critical, ALCD bit 8) and clears it after."""
    fault = {
        "kind": "spike",
        "tag": "pressure",
        "at_s": 1.5,
        "duration_s": 0.4,
        "magnitude": 10.0,
    }
    sink = Recorder()
    async with running(tmp_path, simulation(f=(fault,))) as (simulator, driver):
        await driver.connect()
        async with acquiring(driver, sink):
            await until(lambda: len(sink.of("alarm")) >= 2, "alarm set and clear")

    first, second = sink.of("alarm")[:2]
    assert (first.code, first.name, first.state) == (1, "pressure spike", "set")
    assert first.severity == "critical"
    assert first.data == {"alcd": 0x84, "category": 4}
    assert (second.code, second.state) == (1, "cleared")
    assert simulator.state.enabled_alarms == {1}


async def test_equipment_restart_is_recovered(tmp_path: Path) -> None:
    """The equipment going away ends acquire; a restarted one is set up again."""
    sink = Recorder()
    async with running(tmp_path) as (simulator, driver):
        await driver.connect()
        task = asyncio.create_task(driver.acquire(sink))
        await until(lambda: sink.of("event"), "an event before the restart")
        await simulator.stop()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 10)
        await driver.close()

        restarted = HsmsSimulator(
            simulator.tool, simulator.simulation, port=simulator.port, cycle_s=CYCLE_S
        )
        await restarted.start()
        before = len(sink.of("event"))
        await driver.connect()
        async with acquiring(driver, sink):
            await until(lambda: len(sink.of("event")) > before, "an event after it")
        await restarted.stop()
        assert restarted.state.reports == {7: (1001, 2001)}


async def test_disconnect_fault_refuses_select(tmp_path: Path) -> None:
    """During a disconnect fault the equipment answers Select with status 2."""
    fault = {"kind": "disconnect", "at_s": 0.0, "duration_s": 30.0}
    async with running(tmp_path, simulation(f=(fault,))) as (_, driver):
        with pytest.raises(ConnectFailed, match="status 2"):
            await driver.connect()


async def test_equipment_answers_what_it_cannot_take_with_s9(tmp_path: Path) -> None:
    """A malformed S2F33 gets S9F7, an unknown function S9F5, each aborting it."""

    async def ignore(connection: HsmsConnection, message: Message) -> None:
        if message.header.wbit:
            await connection.reply(message, message.header.function + 1, Item.L())

    async with running(tmp_path) as (simulator, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
        connection = HsmsConnection(
            reader,
            writer,
            session_id=0,
            timers=Timers(t3=2),
            handler=ignore,
            name="probe",
        )
        run = asyncio.create_task(connection.run())
        try:
            await connection.select()
            with pytest.raises(TransactionAborted, match="S9F7"):
                await connection.request(2, 33, Item.L(Item.U4(1)))
            with pytest.raises(TransactionAborted, match="S9F5"):
                await connection.request(1, 99, Item.L())
            with pytest.raises(TransactionAborted, match="S9F3"):
                await connection.request(99, 1)
            reply = await connection.request(1, 1)
            assert reply.item == Item.L(Item.A("EDGESIM"), Item.A("1.0.0"))
        finally:
            await connection.close()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, CommunicationFailure):
                await run


async def test_passive_mode_takes_a_tool_that_dials_in(tmp_path: Path) -> None:
    """In passive mode the driver listens, the tool selects, and polling works."""
    tool = load_tool(tmp_path, 5000)
    port = free_port()
    settings = tool.driver.model_copy(
        update={
            "mode": "passive",
            "port": port,
            "discover": False,
            "alarms": False,
            "reports": (),
            "events": (),
        }
    )
    driver = make_driver(tool, settings)

    async def equipment(connection: HsmsConnection, message: Message) -> None:
        s, f = message.header.stream, message.header.function
        if (s, f) == (1, 13):
            body = Item.L(Item.B(0), Item.L(Item.A("DIALER"), Item.A("2")))
            await connection.reply(message, 14, body)
        elif (s, f) == (1, 3):
            await connection.reply(message, 4, Item.L(Item.F4(1.25), Item.I4(-3)))

    async def dial() -> None:
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = HsmsConnection(
            reader,
            writer,
            session_id=0,
            timers=Timers(),
            handler=equipment,
            name="dialer",
        )
        run = asyncio.create_task(connection.run())
        await connection.select()
        with contextlib.suppress(Exception):
            await run

    dialer = asyncio.create_task(dial())
    try:
        await driver.connect()
        batch = await driver.read_group(driver.groups[0])
        assert batch.values.tolist() == [[1.25, -3.0]]
        assert driver.equipment == ("DIALER", "2")
    finally:
        await driver.close()
        dialer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dialer


def test_tool_file_rules_name_the_key(tmp_path: Path) -> None:
    """A subscribe tag whose VID no linked report carries is refused at load."""
    text = TOOL.replace("reports = [{rptid}]", "reports = []")
    with pytest.raises(ConfigError, match=r"tags\[2\]\.source: .*needs a vid"):
        load_tool(tmp_path, 5000, text=text)
