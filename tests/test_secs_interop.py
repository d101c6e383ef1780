"""The hsms driver against an independent GEM equipment: secsgem, in its own process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mosquitto import free_port
from secs_support import Recorder, load_tool, make_driver, until

from drivers.base import ConnectFailed, ConnectionLost
from drivers.batch import GOOD
from drivers.secs.driver import HsmsDriver

pytest.importorskip("secsgem", reason="secsgem is the independent equipment side")

EQUIPMENT = Path(__file__).resolve().parent / "secs_equipment.py"
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 10.0
# The ids secs_equipment.py serves.
SECSGEM_IDS = {
    "rptid": 1000,
    "ceid": 50,
    "svid_pressure": 10,
    "svid_flow": 11,
    "vid_pressure": 10,
    "vid_count": 2001,
}


class Equipment:
    """secs_equipment.py as a child process, driven through its stdin."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EQUIPMENT),
            str(self.port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(START_TIMEOUT_S):
            assert await self._line() == "ready"

    async def command(self, *words: object) -> None:
        """Send one command and wait until the equipment has carried it out."""
        assert self.process is not None
        assert self.process.stdin is not None
        text = " ".join(map(str, words))
        self.process.stdin.write(f"{text}\n".encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            while await self._line() != f"done {text}":
                pass

    async def _line(self) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise EOFError("the equipment process ended")
        return line.decode().strip()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None


async def connect(driver: HsmsDriver, attempts: int = 5) -> None:
    """Connect as the supervisor would, retrying a refused or lost attempt.

    secsgem starts listening a moment after it says it is ready, and loses the
    race when a Select.req arrives before its own state machine has moved to
    NOT SELECTED (it then rejects our first data message).
    """
    for attempt in range(attempts):
        try:
            await driver.connect()
        except ConnectFailed:
            await driver.close()
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
        else:
            return


@contextlib.asynccontextmanager
async def secsgem_tool(
    tmp_path: Path,
) -> AsyncIterator[tuple[Equipment, HsmsDriver]]:
    """A secsgem equipment on a free port and a driver configured for it."""
    equipment = Equipment(free_port())
    await equipment.start()
    tool = load_tool(tmp_path, equipment.port, unwaited=True, ids=SECSGEM_IDS)
    driver = make_driver(tool)
    try:
        yield equipment, driver
    finally:
        await driver.close()
        await equipment.stop()


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


async def test_secsgem_connect_discover_and_poll(tmp_path: Path) -> None:
    """Against secsgem: select, S1F13, S1F11 names and S1F3 values."""
    async with secsgem_tool(tmp_path) as (_, driver):
        await connect(driver)

        assert driver.status_variables[10] == ("ChamberPressure", "mTorr")
        assert driver.status_variables[11] == ("HeliumFlow", "sccm")
        batch = await driver.read_group(driver.groups[0])
        assert batch.values.tolist() == [[45.5, 8.25]]
        assert (batch.quality == GOOD).all()


async def test_secsgem_event_reports_after_define_link_enable(tmp_path: Path) -> None:
    """secsgem accepts our report set-up and its S6F11 becomes event and readings."""
    sink = Recorder()
    async with secsgem_tool(tmp_path) as (equipment, driver):
        await connect(driver)
        async with acquiring(driver, sink):
            await equipment.command("event", 50)
            await until(lambda: sink.of("event"), "the S6F11 of CEID 50")
            await until(lambda: sink.group("reported"), "the reported batch")

        [event] = sink.of("event")
        assert (event.code, event.name) == (50, "ProcessStarted")
        assert event.data["reports"] == [
            {"rptid": 1000, "values": {"2001": 12, "10": 45.5}}
        ]
        assert sink.group("reported")[0].values.tolist() == [[12.0]]


async def test_secsgem_alarm_set_and_clear(tmp_path: Path) -> None:
    """secsgem's S5F1 (sent without W-bit) sets and clears an alarm, answered now."""
    sink = Recorder()
    async with secsgem_tool(tmp_path) as (equipment, driver):
        await connect(driver)
        async with acquiring(driver, sink):
            loop = asyncio.get_running_loop()
            started = loop.time()
            await equipment.command("set", 7)
            await equipment.command("clear", 7)
            elapsed = loop.time() - started
            await until(lambda: len(sink.of("alarm")) >= 2, "alarm set and clear")

    set_, cleared = sink.of("alarm")
    assert (set_.code, set_.name, set_.state, set_.severity) == (
        7,
        "Chamber pressure high",
        "set",
        "critical",
    )
    assert (cleared.code, cleared.state) == (7, "cleared")
    # Answering the unwaited S5F1 spares secsgem its T3 (4 s) wait per alarm.
    assert elapsed < 4.0


async def test_secsgem_restart_mid_run_is_recovered(tmp_path: Path) -> None:
    """secsgem killed mid-run ends acquire; once it is back, events flow again."""
    sink = Recorder()
    async with secsgem_tool(tmp_path) as (equipment, driver):
        await connect(driver)
        task = asyncio.create_task(driver.acquire(sink))
        await until(lambda: sink.group("poll"), "a poll before the restart")
        await equipment.stop()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 10)
        await driver.close()

        await equipment.start()
        await connect(driver)
        async with acquiring(driver, sink):
            await equipment.command("event", 50)
            await until(lambda: sink.of("event"), "an event after the restart")
