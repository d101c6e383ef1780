"""Shared pieces of the SECS/GEM tests: a tool file, its loading, a recording sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import EquipmentEvent
from drivers.batch import ReadingBatch
from drivers.secs.driver import HsmsDriver, HsmsSettings
from gateway.config import load_config
from gateway.config.models import ToolConfig
from gateway.pipeline import tool_driver

WAIT_S = 10.0

MAIN = """
[gateway]
site = "fab-t"
id = "gw-t"
"""

# Two status variables polled, one data variable delivered by event reports.
TOOL = """
[driver]
kind = "hsms"
port = {port}
t3_s = 2
t5_s = 0.05
t6_s = 1
linktest_s = {linktest}
establish_delay_s = 0.1
reply_to_unwaited_alarms = {unwaited}

[[driver.reports]]
rptid = {rptid}
vids = [{vid_pressure}, {vid_count}]

[[driver.events]]
ceid = {ceid}
name = "ProcessStarted"
reports = [{rptid}]

[[poll_groups]]
name = "poll"
interval_s = 0.1
tags = ["pressure", "flow"]

[[poll_groups]]
name = "reported"
mode = "subscribe"
interval_s = 1
tags = ["wafer_count"]

[[tags]]
name = "pressure"
unit = "mTorr"
source = {{ svid = {svid_pressure} }}

[[tags]]
name = "flow"
unit = "sccm"
source = {{ svid = {svid_flow} }}

[[tags]]
name = "wafer_count"
source = {{ vid = {vid_count} }}
"""

# The ids our simulator serves: the tags' own (see TOOL).
SIMULATOR_IDS = {
    "rptid": 7,
    "ceid": 100,
    "svid_pressure": 1001,
    "svid_flow": 1002,
    "vid_pressure": 1001,
    "vid_count": 2001,
}


def load_tool(
    root: Path,
    port: int,
    *,
    linktest: float = 0.0,
    unwaited: bool = False,
    ids: dict[str, int] | None = None,
    text: str = TOOL,
) -> ToolConfig:
    """Write a config folder with one HSMS tool file and load its tool."""
    directory = root / "config"
    (directory / "tools").mkdir(parents=True, exist_ok=True)
    (directory / "gateway.toml").write_text(MAIN)
    values = dict(ids or SIMULATOR_IDS)
    tool_text = text.format(
        port=port,
        linktest=linktest,
        unwaited=str(unwaited).lower(),
        **values,
    )
    (directory / "tools" / "etch-s.toml").write_text(tool_text)
    [tool] = load_config(directory).tools
    return tool


def make_driver(tool: ToolConfig, settings: HsmsSettings | None = None) -> HsmsDriver:
    """The tool's driver, as the daemon builds it."""
    return tool_driver(HsmsDriver, tool, settings)


class Recorder:
    """A sink that keeps every batch and event it is handed."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self.events: list[EquipmentEvent] = []

    async def __call__(self, item: ReadingBatch | EquipmentEvent) -> None:
        if isinstance(item, EquipmentEvent):
            self.events.append(item)
        else:
            self.batches.append(item)

    def of(self, kind: str) -> list[EquipmentEvent]:
        return [e for e in self.events if e.kind == kind]

    def group(self, name: str) -> list[ReadingBatch]:
        return [b for b in self.batches if b.group == name]


async def until(
    predicate: Callable[[], Any], what: str, within_s: float = WAIT_S
) -> None:
    """Yield to the loop until ``predicate()`` is true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {within_s} s")
        await asyncio.sleep(0.02)
