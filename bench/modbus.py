"""Modbus benchmark: the whole gateway polling N float32 tags over Modbus TCP.

The Modbus simulator serves the tags from its own process (its CPU is not
counted). Three clients then do the same reads against it, each in a process of
its own so that each one's CPU and memory are measured alone:

* gateway: the real :class:`~gateway.daemon.Gateway` (Modbus driver, pipeline with
  the default scoring stack of EWMA and level on every tag, alerts, summaries,
  SQLite store), MQTT off;
* driver: the Modbus driver alone, its batches dropped;
* pymodbus: a bare loop of pymodbus's async client reading the same registers
  (the same 62-tag requests, one at a time) and decoding them with numpy.

For each it prints the CPU share of one core (user + system time over wall time,
from ``resource.getrusage``, every thread included), the resident memory now and
at its peak (``/proc/self/status``), the readings per second actually delivered,
and the polls skipped because a sweep overran its interval.

The gateway closes a summary window of every tag each ``--summary-window``
seconds (60, as ``gateway.toml`` has it by default); a measurement of 60 s or more
includes one, a shorter one may not. ``--summary-window 3600`` leaves them out.

Run: ``.venv/bin/python bench/modbus.py`` (100k tags at 1 s) or, for example,
``.venv/bin/python bench/modbus.py --tags 10000 --interval 0.1 --seconds 60``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from measure import figures, run_role, usage, with_default_detectors

from drivers.modbus.config import ModbusSettings, ModbusSource
from drivers.modbus.simulator import ModbusSimulator
from drivers.simulation import Simulation
from gateway.config.models import (
    GatewayConfig,
    GatewayIdentity,
    MainConfig,
    MqttConfig,
    PipelineConfig,
    PollGroupConfig,
    StoreConfig,
    TagConfig,
    ToolConfig,
)
from gateway.daemon import Gateway

TAGS_PER_REQUEST = 62  # float32 tags in one 124-register read
# One unit's 65,536 registers hold 32,768 float32 tags; more go on further units
# (a TCP gateway in front of several devices), in whole requests.
TAGS_PER_UNIT = TAGS_PER_REQUEST * 500
SERVER_START_TIMEOUT_S = 120.0
# The signals' sine spans SINE_POLLS polls; detectors fit on FIT_ROWS polls (three
# periods), within the warm-up, so the measurement scores with every detector
# fitted on normal data, as a gateway does in steady state.
SINE_POLLS = 10
FIT_ROWS = 3 * SINE_POLLS
WARMUP_POLLS = FIT_ROWS + 10
MIN_WARMUP_S = 5.0
OLDEST_GENERATION = 2  # the garbage collector's full collections


def build_tool(k: int, interval_s: float, concurrency: int, port: int) -> ToolConfig:
    """A Modbus tool of ``k`` float32 holding-register tags, back to back."""
    names = tuple(f"t{i:06d}" for i in range(k))
    settings = ModbusSettings(
        kind="modbus",
        host="127.0.0.1",
        port=port,
        concurrency=concurrency,
        request_timeout_s=5.0,
        max_gap=0,
    )
    tool = ToolConfig(
        id="bench",
        driver=settings,
        fit_rows=FIT_ROWS,
        poll_groups=(PollGroupConfig(name="g", interval_s=interval_s, tags=names),),
        tags=tuple(
            TagConfig(
                name=name,
                unit="u",
                source=ModbusSource(
                    unit_id=1 + i // TAGS_PER_UNIT,
                    address=2 * (i % TAGS_PER_UNIT),
                    type="float32",
                ),
            )
            for i, name in enumerate(names)
        ),
    )
    return with_default_detectors(tool)


def simulation(k: int, interval_s: float) -> Simulation:
    """Signals for ``k`` tags: distinct levels, noise and a sine of SINE_POLLS polls."""
    period_s = SINE_POLLS * interval_s
    signals = {
        f"t{i:06d}": {
            "level": 100.0 + i % 50,
            "noise": 0.3,
            "amplitude": 1.0,
            "period_s": period_s,
        }
        for i in range(k)
    }
    return Simulation.model_validate({"seed": 1, "step_s": 0.1, "signals": signals})


# roles


async def serve(args: argparse.Namespace) -> None:
    """Serve the tags until killed; print the port on the first line."""
    tool = build_tool(args.tags, args.interval, 1, 502)
    simulator = ModbusSimulator(tool, simulation(args.tags, args.interval))
    async with simulator:
        print(simulator.port, flush=True)
        await asyncio.Event().wait()


class GcClock:
    """Seconds spent in the garbage collector's full (generation 2) collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != OLDEST_GENERATION:
            return
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.collections += 1


async def run_gateway(args: argparse.Namespace) -> dict[str, Any]:
    """Run the gateway on the benchmark tool; return its figures."""
    clock = GcClock()
    with tempfile.TemporaryDirectory(prefix="edge-gateway-bench-") as tmp:
        main = MainConfig(
            gateway=GatewayIdentity(site="bench", id="gw-bench"),
            store=StoreConfig(path=Path(tmp) / "bench.db"),
            mqtt=MqttConfig(enabled=False),
            pipeline=PipelineConfig(summary_window_s=args.summary_window),
        )
        tool = build_tool(args.tags, args.interval, args.concurrency, args.port)
        config = GatewayConfig(directory=Path(tmp), main=main, tools=(tool,))
        gateway = Gateway(config)
        stop = asyncio.Event()
        running = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(args.warmup)

        pipeline = gateway.pipelines["bench"]
        stats = gateway.supervisors[0].driver.stats
        readings0, polls0, overruns0 = pipeline.readings, stats.polls, stats.overruns
        alerts0 = pipeline.alert_events
        gc0, collections0 = clock.seconds, clock.collections
        cpu0, wall0 = usage()
        await asyncio.sleep(args.seconds)
        result = figures(cpu0, wall0, pipeline.readings - readings0)
        supervisor = gateway.supervisors[0]
        result.update(
            polls=stats.polls - polls0,
            overruns=stats.overruns - overruns0,
            state=supervisor.state,
            reconnects=supervisor.reconnects,
            last_error=supervisor.last_error,
            gc_cpu=(clock.seconds - gc0) / result["seconds"],
            gc_collections=clock.collections - collections0,
            alerts=pipeline.alert_events - alerts0,
        )
        stop.set()
        await running
    return result


async def run_driver(args: argparse.Namespace) -> dict[str, Any]:
    """Run the Modbus driver alone, its batches dropped; return its figures."""
    from drivers.modbus.driver import ModbusDriver
    from gateway.pipeline import tool_driver

    tool = build_tool(args.tags, args.interval, args.concurrency, args.port)
    driver = tool_driver(ModbusDriver, tool)
    await driver.connect()

    async def drop(batch: object) -> None:
        return None

    polling = asyncio.create_task(driver.acquire(drop))
    await asyncio.sleep(args.warmup)
    stats = driver.stats
    readings0, polls0, overruns0 = stats.readings, stats.polls, stats.overruns
    cpu0, wall0 = usage()
    await asyncio.sleep(args.seconds)
    result = figures(cpu0, wall0, stats.readings - readings0)
    result.update(
        polls=stats.polls - polls0, overruns=stats.overruns - overruns0, state="up"
    )
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await polling
    await driver.close()
    return result


async def run_pymodbus(args: argparse.Namespace) -> dict[str, Any]:
    """Poll the same registers with a bare pymodbus client loop; return its figures."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=args.port, timeout=5.0)
    await client.connect()
    # (first tag, unit id, address, registers) of each request, as the driver plans.
    requests = [
        (
            first,
            1 + first // TAGS_PER_UNIT,
            2 * (first % TAGS_PER_UNIT),
            2 * min(TAGS_PER_REQUEST, args.tags - first),
        )
        for first in range(0, args.tags, TAGS_PER_REQUEST)
    ]
    readings = polls = overruns = 0
    latest = np.empty(args.tags)

    async def sweep() -> int:
        done = 0
        for first, unit, address, count in requests:
            reply = await client.read_holding_registers(
                address, count=count, device_id=unit
            )
            words = np.asarray(reply.registers, dtype=">u2")
            latest[first : first + count // 2] = words.view(">f4")
            done += count // 2
        return done

    deadline = time.monotonic() + args.warmup
    measuring = False
    cpu0 = wall0 = 0.0
    tick = time.monotonic()
    while True:
        now = time.monotonic()
        if not measuring and now >= deadline:
            measuring, readings, polls, overruns = True, 0, 0, 0
            cpu0, wall0 = usage()
        if measuring and now - wall0 >= args.seconds:
            break
        readings += await sweep()
        polls += 1
        tick += args.interval
        late = time.monotonic() - tick
        if late > 0:
            skipped = int(late // args.interval) + 1
            overruns += skipped
            tick += skipped * args.interval
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    result = figures(cpu0, wall0, readings)
    client.close()
    result.update(polls=polls, overruns=overruns, state="up")
    return result


# orchestration


def child(role: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    """Run one client role in its own process and return its figures."""
    return run_role(
        __file__,
        role,
        {
            "port": port,
            "tags": args.tags,
            "interval": args.interval,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "summary-window": args.summary_window,
        },
    )


def orchestrate(args: argparse.Namespace) -> None:
    """Start the server process, run both clients, print the comparison."""
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "serve",
            "--tags",
            str(args.tags),
            "--interval",
            str(args.interval),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        expected = args.tags / args.interval
        print(
            f"{args.tags} float32 tags every {args.interval:g} s "
            f"({expected:,.0f} readings/s, "
            f"{-(-args.tags // TAGS_PER_REQUEST)} requests a sweep), "
            f"server pid {server.pid} on port {port}; "
            f"{args.warmup:g} s warm-up, {args.seconds:g} s measured"
        )
        results = {role: child(role, args, port) for role in args.clients}
    finally:
        server.kill()
        server.wait()

    header = f"{'client':<32}{'CPU % core':>11}{'RSS MiB':>9}{'peak MiB':>9}"
    print(header + f"{'readings/s':>12}{'polls':>7}{'skipped':>8}")
    for role, r in results.items():
        name = {
            "gateway": f"gateway (concurrency {args.concurrency})",
            "driver": f"driver alone (concurrency {args.concurrency})",
            "pymodbus": "bare pymodbus loop",
        }[role]
        print(
            f"{name:<32}{100 * r['cpu']:>11.1f}{r['rss']:>9.0f}{r['peak']:>9.0f}"
            f"{r['readings_per_s']:>12,.0f}{r['polls']:>7}{r['overruns']:>8}"
        )
    if "gateway" in results:
        gateway = results["gateway"]
        print(
            f"gateway: {gateway['gc_collections']} full garbage collection(s) took "
            f"{100 * gateway['gc_cpu']:.1f} % of a core of the above; "
            f"{gateway['reconnects']} reconnect(s) {gateway['last_error']}; "
            f"{gateway['alerts']} alert transition(s) while measured"
        )
    if {"gateway", "pymodbus"} <= results.keys():
        gateway, bare = results["gateway"], results["pymodbus"]
        per_gw = gateway["cpu"] / max(gateway["readings_per_s"], 1.0)
        per_pm = bare["cpu"] / max(bare["readings_per_s"], 1.0)
        print(
            f"CPU per reading: gateway {1e6 * per_gw:.2f} µs, "
            f"bare pymodbus {1e6 * per_pm:.2f} µs "
            f"(ratio {per_gw / per_pm:.2f})"
        )


ROLES = {"gateway": run_gateway, "driver": run_driver, "pymodbus": run_pymodbus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds before measuring (default: {WARMUP_POLLS} polls, at least 5 s)",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--summary-window",
        type=float,
        default=60.0,
        help="summary window of the gateway, s (60 is the default of gateway.toml)",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["gateway", "driver", "pymodbus"],
        choices=["gateway", "driver", "pymodbus"],
    )
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = max(MIN_WARMUP_S, WARMUP_POLLS * args.interval)

    if args.role == "serve":
        asyncio.run(serve(args))
    elif args.role in ROLES:
        result = asyncio.run(ROLES[args.role](args))
        print(json.dumps(result))
    else:
        orchestrate(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
