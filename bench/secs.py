"""SECS/GEM benchmark: S1F3 polling of 1,000 SVIDs at 1 s, and a burst of S6F11.

The GEM equipment simulator runs in a child process (so its work is not counted),
serving a tool of ``--svids`` status variables and one collection event whose
report carries ``--report-vids`` of them. The gateway side is the ``hsms`` driver
in this process, handing batches and events to a counting sink.

Prints:

* polling: driver CPU share of one core while polling the group every second,
  and the S1F3 -> S1F4 round trip p50/p99 (measured by the driver's side);
* burst: ``--burst`` S6F11 sent at once by the equipment; the time until the
  gateway has delivered them all, its CPU share meanwhile, and the S6F11 -> S6F12
  reply latency p50/p99 measured by the equipment.

Run: ``.venv/bin/python bench/secs.py [--svids 1000 --poll-s 20 --burst 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from drivers.base import EquipmentEvent
from drivers.batch import ReadingBatch
from drivers.secs.driver import HsmsDriver, HsmsSettings
from drivers.secs.simulator import CEID_PROCESS_STARTED, HsmsSimulator
from drivers.simulation import Simulation
from gateway.config import load_config
from gateway.config.models import ToolConfig
from gateway.pipeline import tool_driver

POLL_INTERVAL_S = 1.0
EQUIPMENT_CYCLE_S = 86_400.0  # no process cycle events during the measurement
RPTID = 1
START_TIMEOUT_S = 20.0
MS = 1000.0


def write_tool(root: Path, svids: int, report_vids: int) -> Path:
    """Write a config folder with one HSMS tool of ``svids`` polled SVIDs."""
    folder = root / "config"
    (folder / "tools").mkdir(parents=True)
    (folder / "gateway.toml").write_text('[gateway]\nsite = "b"\nid = "b"\n')
    vids = ", ".join(str(1 + i) for i in range(report_vids))
    lines = [
        "[driver]",
        'kind = "hsms"',
        "port = 5000",
        "t3_s = 10",
        "linktest_s = 30",
        "alarms = false",
        "[[driver.reports]]",
        f"rptid = {RPTID}",
        f"vids = [{vids}]",
        "[[driver.events]]",
        f"ceid = {CEID_PROCESS_STARTED}",
        f"reports = [{RPTID}]",
        "[[poll_groups]]",
        'name = "all"',
        f"interval_s = {POLL_INTERVAL_S}",
        "tags = [" + ", ".join(f'"sv{i:04d}"' for i in range(svids)) + "]",
    ]
    for i in range(svids):
        lines += ["[[tags]]", f'name = "sv{i:04d}"', f"source = {{ svid = {1 + i} }}"]
    (folder / "tools" / "bench.toml").write_text("\n".join(lines) + "\n")
    return folder


def simulation_of(tool: ToolConfig) -> Simulation:
    return Simulation.model_validate(
        {
            "seed": 1,
            "signals": {
                tag.name: {"level": 100.0 + i % 50, "noise": 0.5}
                for i, tag in enumerate(tool.tags)
            },
        }
    )


# The equipment process.


async def serve(folder: Path) -> None:
    """Serve the tool; on ``burst N`` send N S6F11 at once and print latencies."""
    [tool] = load_config(folder).tools
    simulator = HsmsSimulator(tool, simulation_of(tool), cycle_s=EQUIPMENT_CYCLE_S)
    await simulator.start()
    print(json.dumps({"port": simulator.port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := (await reader.readline()).decode().split():
        if line[0] == "burst":
            simulator.reply_latencies_s.clear()
            await asyncio.gather(
                *(simulator.trigger(CEID_PROCESS_STARTED) for _ in range(int(line[1])))
            )
            latencies = np.array(simulator.reply_latencies_s) * MS
            print(
                json.dumps(
                    {
                        "sent": len(latencies),
                        "p50_ms": float(np.percentile(latencies, 50)),
                        "p99_ms": float(np.percentile(latencies, 99)),
                    }
                ),
                flush=True,
            )
    await simulator.stop()


# The gateway side.


class Counter:
    """A sink that counts what the driver delivers."""

    def __init__(self) -> None:
        self.readings = 0
        self.events = 0
        self.event_seen = asyncio.Event()
        self.target_events = 0

    async def __call__(self, item: ReadingBatch | EquipmentEvent) -> None:
        if isinstance(item, EquipmentEvent):
            self.events += 1
            if self.events >= self.target_events:
                self.event_seen.set()
        else:
            self.readings += item.size


class TimedDriver(HsmsDriver):
    """The driver, timing each S1F3 round trip."""

    round_trips_s: list[float]

    async def read_group(self, group):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        batch = await super().read_group(group)
        self.round_trips_s.append(time.perf_counter() - started)
        return batch


async def measure(folder: Path, poll_s: float, burst: int) -> None:
    [tool] = load_config(folder).tools
    equipment = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        str(folder),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert equipment.stdin is not None
    assert equipment.stdout is not None
    async with asyncio.timeout(START_TIMEOUT_S):
        port = json.loads(await equipment.stdout.readline())["port"]
    settings = tool.driver
    assert isinstance(settings, HsmsSettings)
    driver = tool_driver(TimedDriver, tool, settings.model_copy(update={"port": port}))
    driver.round_trips_s = []
    sink = Counter()
    try:
        await driver.connect()
        acquiring = asyncio.create_task(driver.acquire(sink))

        # Polling: a whole number of 1 s intervals.
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(poll_s)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        trips = np.array(driver.round_trips_s) * MS
        print(
            f"polling {len(tool.tags)} SVIDs every {POLL_INTERVAL_S:g} s for "
            f"{wall:.1f} s: {len(trips)} polls, {sink.readings} readings"
        )
        print(f"  driver CPU {100 * cpu / wall:.2f} % of one core")
        print(
            f"  S1F3 round trip p50 {np.percentile(trips, 50):.2f} ms, "
            f"p99 {np.percentile(trips, 99):.2f} ms"
        )

        # Burst: the equipment sends every S6F11 at once.
        sink.target_events = sink.events + burst
        cpu, wall = time.process_time(), time.perf_counter()
        equipment.stdin.write(f"burst {burst}\n".encode())
        await equipment.stdin.drain()
        await asyncio.wait_for(sink.event_seen.wait(), 120)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        replies = json.loads(await equipment.stdout.readline())
        print(
            f"burst of {burst} S6F11 ({settings.reports[0].vids.__len__()} values "
            f"each): delivered in {wall * MS:.0f} ms, "
            f"{burst / wall:.0f} reports/s"
        )
        print(
            f"  driver CPU {100 * cpu / wall:.1f} % of one core during the burst "
            f"(polling continues)"
        )
        print(
            f"  S6F11 -> S6F12 reply latency p50 {replies['p50_ms']:.2f} ms, "
            f"p99 {replies['p99_ms']:.2f} ms (at the equipment, all in flight)"
        )
        acquiring.cancel()
    finally:
        await driver.close()
        equipment.stdin.close()
        try:
            await asyncio.wait_for(equipment.wait(), 10)
        except TimeoutError:
            equipment.kill()
            await equipment.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svids", type=int, default=1000)
    parser.add_argument("--report-vids", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with tempfile.TemporaryDirectory(prefix="secs-bench-") as tmp:
        folder = write_tool(Path(tmp), args.svids, args.report_vids)
        asyncio.run(measure(folder, args.poll_s, args.burst))


if __name__ == "__main__":
    main()
