"""Modbus RTU over a virtual serial pair (socat) against pymodbus's serial server."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from modbus_support import driver_of, load_tool
from modbus_support import simulation_of as levels

from drivers.base import ConnectFailed
from drivers.batch import BAD_DEVICE, GOOD
from drivers.modbus.config import ModbusSettings
from drivers.modbus.errors import RequestTimeout
from drivers.modbus.rtu import inter_frame_s
from drivers.modbus.simulator import ModbusSimulator

SOCAT = shutil.which("socat")
PAIR_TIMEOUT_S = 10.0
BAUDRATE = 115200
ILLEGAL_ADDRESS = 0x02
SILENT_UNIT = 0x0B

TOOL = """
[driver]
kind = "modbus"
transport = "rtu"
device = "/dev/null"
baudrate = 115200
parity = "N"
request_timeout_s = 0.5
order = "CDAB"

[[poll_groups]]
name = "g"
interval_s = 0.5
tags = ["temp", "flow", "count", "valve", "alarm", "pump"]

[[tags]]
name = "temp"
source = { address = 0, type = "float32" }

[[tags]]
name = "flow"
source = { address = 2, type = "float64", order = "ABCD" }

[[tags]]
name = "count"
source = { table = "input", address = 10, type = "uint32" }

[[tags]]
name = "valve"
source = { table = "coil", address = 3 }

[[tags]]
name = "alarm"
source = { table = "discrete_input", address = 12 }

[[tags]]
name = "pump"
source = { address = 0, type = "int16", unit_id = 7 }
"""
LEVELS = {
    "temp": 21.5,
    "flow": 3.0625,
    "count": 70000,
    "valve": 1,
    "alarm": 1,
    "pump": -12,
}


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat: (server side, client side)."""
    if SOCAT is None:
        pytest.skip("socat is not installed: RTU tests need a virtual serial pair")
    server, client = tmp_path / "ttyA", tmp_path / "ttyB"
    process = subprocess.Popen(
        [
            SOCAT,
            f"pty,raw,echo=0,link={server}",
            f"pty,raw,echo=0,link={client}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + PAIR_TIMEOUT_S
    while not (server.exists() and client.exists()):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("socat did not create the serial pair")
        time.sleep(0.02)
    yield str(server), str(client)
    process.terminate()
    process.wait(timeout=PAIR_TIMEOUT_S)


async def test_rtu_reads_every_table_and_unit_over_a_serial_pair(
    tmp_path: Path, serial_pair: tuple[str, str]
) -> None:
    """Every table and a second unit read right over RTU, once per request."""
    server_side, client_side = serial_pair
    tool = load_tool(tmp_path, TOOL)
    simulator = ModbusSimulator(
        tool, levels(LEVELS), serial_device=server_side, baudrate=BAUDRATE
    )
    async with simulator:
        settings = tool.driver.model_copy(update={"device": client_side})
        driver = driver_of(tool, settings)
        await driver.connect()
        try:
            batch = await driver.read_group(driver.groups[0])
            simulator.inject_exception(ILLEGAL_ADDRESS, table="input", times=1)
            refused = await driver.read_group(driver.groups[0])
        finally:
            await driver.close()

    assert batch.values[0].tolist() == list(LEVELS.values())
    assert (batch.quality == GOOD).all()
    assert refused.quality[0].tolist() == [GOOD, GOOD, BAD_DEVICE, GOOD, GOOD, GOOD]
    assert np.isnan(refused.values[0, 2])
    planned = len(driver.plan("g").requests)
    assert planned == 5
    assert sum(simulator.requests.values()) == 2 * planned


async def test_rtu_a_silent_unit_turns_only_its_tags_bad(
    tmp_path: Path, serial_pair: tuple[str, str]
) -> None:
    """A unit that never answers on a shared line leaves the other unit's tags good."""
    server_side, client_side = serial_pair
    tool = load_tool(tmp_path, TOOL)
    simulator = ModbusSimulator(
        tool, levels(LEVELS), serial_device=server_side, baudrate=BAUDRATE
    )
    async with simulator:
        simulator.silent_units.add(7)
        settings = tool.driver.model_copy(update={"device": client_side})
        driver = driver_of(tool, settings)
        await driver.connect()
        try:
            polls = [await driver.read_group(driver.groups[0]) for _ in range(2)]
            simulator.clear_faults()
            healed = await driver.read_group(driver.groups[0])
        finally:
            await driver.close()

    for batch in polls:
        assert batch.quality[0].tolist() == [GOOD] * 5 + [BAD_DEVICE]
        assert batch.values[0, :5].tolist() == list(LEVELS.values())[:5]
    assert driver.exception_codes.tolist() == [0] * 6  # healed
    assert (healed.quality == GOOD).all()


async def test_rtu_without_an_answer_times_out(
    tmp_path: Path, serial_pair: tuple[str, str]
) -> None:
    """A serial line with no server behind it fails the poll with RequestTimeout."""
    _, client_side = serial_pair
    tool = load_tool(tmp_path, TOOL)
    driver = driver_of(tool, tool.driver.model_copy(update={"device": client_side}))
    await driver.connect()
    try:
        # Unit 1 first seems silent alone; unit 7 silent too means no line.
        with pytest.raises(RequestTimeout, match=r"no reply to unit (1|7)"):
            await driver.read_group(driver.groups[0])
    finally:
        await driver.close()


async def test_rtu_missing_port_fails_to_connect(tmp_path: Path) -> None:
    """A serial device that does not exist gives ConnectFailed naming it."""
    tool = load_tool(tmp_path, TOOL)
    missing = str(tmp_path / "no-such-tty")
    driver = driver_of(tool, tool.driver.model_copy(update={"device": missing}))
    with pytest.raises(ConnectFailed, match="no-such-tty"):
        await driver.connect()


def test_inter_frame_time_is_three_and_a_half_characters() -> None:
    """3.5 characters of 11 bits at 9600 baud; a fixed 1.75 ms above 19200."""
    slow = ModbusSettings.model_validate(
        {"kind": "modbus", "transport": "rtu", "device": "/dev/ttyS0", "baudrate": 9600}
    )
    fast = slow.model_copy(update={"baudrate": 115200})
    given = slow.model_copy(update={"inter_frame_s": 0.01})
    assert inter_frame_s(slow) == pytest.approx(3.5 * 11 / 9600)
    assert inter_frame_s(fast) == pytest.approx(0.00175)
    assert inter_frame_s(given) == 0.01


async def test_rtu_line_settings_the_port_refuses_fail_to_connect(
    tmp_path: Path, serial_pair: tuple[str, str]
) -> None:
    """Even parity on a pseudo-terminal (which refuses it) gives ConnectFailed."""
    _, client_side = serial_pair
    tool = load_tool(tmp_path, TOOL)
    settings = tool.driver.model_copy(update={"device": client_side, "parity": "E"})
    driver = driver_of(tool, settings)
    with pytest.raises(ConnectFailed, match="line settings refused"):
        await driver.connect()
