"""OPC UA benchmark: N nodes read every second, or N monitored items changing.

The OPC UA simulator serves N Double variables from its own process (its CPU is
not counted), writing a new value to every one of them each ``--interval`` s.
Clients then run, each in a process of its own so that each one's CPU and memory
are measured alone:

* gateway-read: the real :class:`~gateway.daemon.Gateway` (OPC UA driver, pipeline
  with the default scoring stack on every tag, alerts, summaries, SQLite store),
  MQTT off, one ``read`` group of all N nodes at ``--interval``;
* gateway-subscribe: the same with one ``subscribe`` group (N monitored items,
  sampling and publishing at ``--interval``);
* driver-read / driver-subscribe: the OPC UA driver alone, its batches dropped;
* asyncua: a bare asyncua client loop doing the same Read calls (split to the
  server's MaxNodesPerRead) each ``--interval``, values left as asyncua returns them.

For each it prints the CPU share of one core (user + system time over wall time,
every thread included), resident memory now and at peak, readings/s delivered, the
CPU share per 10,000 readings/s delivered, and the server process's CPU share
while that client ran: asyncua's server spends about 100 us of CPU per monitored
value change, so at 10,000 changes/s it saturates its core and delivers fewer;
the per-10k column compares the clients at equal work.

Run: ``.venv/bin/python bench/opcua.py`` (10k nodes at 1 s, 30 s measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from measure import figures, process_cpu_s, run_role, usage, with_default_detectors

from drivers.opcua import OpcUaDriver, OpcUaSettings, OpcUaSource
from drivers.opcua.simulator import OpcUaSimulator
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
from gateway.pipeline import tool_driver

# Detectors fit on FIT_ROWS polls within the warm-up, so the measurement scores
# with every detector fitted on normal data, as a gateway does in steady state.
FIT_ROWS = 30
WARMUP_POLLS = FIT_ROWS + 10
MIN_WARMUP_S = 5.0
Mode = Literal["read", "subscribe"]
# The gateway and driver roles, each with the mode of its poll group.
MODES: dict[str, Mode] = {
    "gateway-read": "read",
    "gateway-subscribe": "subscribe",
    "driver-read": "read",
    "driver-subscribe": "subscribe",
}
ROLES = tuple(MODES)


def build_tool(k: int, interval_s: float, mode: Mode, port: int) -> ToolConfig:
    """An OPC UA tool of ``k`` Double nodes ``ns=2;s=Bench.tNNNNNN`` in one group."""
    names = tuple(f"t{i:06d}" for i in range(k))
    settings = OpcUaSettings(
        kind="opcua",
        endpoint=f"opc.tcp://127.0.0.1:{port}/",
        security_policy="None",
        request_timeout_s=30.0,
        connect_timeout_s=120.0,
    )
    tool = ToolConfig(
        id="bench",
        driver=settings,
        fit_rows=FIT_ROWS,
        poll_groups=(
            PollGroupConfig(name="g", mode=mode, interval_s=interval_s, tags=names),
        ),
        tags=tuple(
            TagConfig(
                name=name, unit="u", source=OpcUaSource(node_id=f"ns=2;s=B.{name}")
            )
            for name in names
        ),
    )
    return with_default_detectors(tool)


def simulation(k: int, step_s: float) -> Simulation:
    """Signals for ``k`` tags: distinct levels and noise, so every value changes."""
    signals = {f"t{i:06d}": {"level": 100.0 + i % 50, "noise": 0.3} for i in range(k)}
    return Simulation.model_validate({"seed": 1, "step_s": step_s, "signals": signals})


# roles


async def serve(args: argparse.Namespace) -> None:
    """Serve the nodes until killed; print the port on the first line."""
    tool = build_tool(args.nodes, args.interval, "read", 4840)
    simulator = OpcUaSimulator(tool, simulation(args.nodes, args.interval))
    async with simulator:
        print(simulator.port, flush=True)
        await asyncio.Event().wait()


async def run_gateway(args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    """Run the gateway on the benchmark tool; return its figures."""
    with tempfile.TemporaryDirectory(prefix="edge-gateway-bench-") as tmp:
        main = MainConfig(
            gateway=GatewayIdentity(site="bench", id="gw-bench"),
            store=StoreConfig(path=Path(tmp) / "bench.db"),
            mqtt=MqttConfig(enabled=False),
            pipeline=PipelineConfig(summary_window_s=3600),
        )
        tool = build_tool(args.nodes, args.interval, mode, args.port)
        config = GatewayConfig(directory=Path(tmp), main=main, tools=(tool,))
        gateway = Gateway(config)
        stop = asyncio.Event()
        running = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(args.warmup)
        pipeline = gateway.pipelines["bench"]
        readings0, alerts0 = pipeline.readings, pipeline.alert_events
        cpu0, wall0 = usage()
        await asyncio.sleep(args.seconds)
        result = figures(cpu0, wall0, pipeline.readings - readings0)
        result["alerts"] = pipeline.alert_events - alerts0
        supervisor = gateway.supervisors[0]
        result.update(state=supervisor.state, reconnects=supervisor.reconnects)
        stop.set()
        await running
    return result


async def run_driver(args: argparse.Namespace, mode: Mode) -> dict[str, Any]:
    """Run the OPC UA driver alone, its batches dropped; return its figures."""
    tool = build_tool(args.nodes, args.interval, mode, args.port)
    driver = tool_driver(OpcUaDriver, tool)
    await driver.connect()

    async def drop(batch: object) -> None:
        return None

    acquiring = asyncio.create_task(driver.acquire(drop))
    await asyncio.sleep(args.warmup)
    readings0 = driver.stats.readings
    cpu0, wall0 = usage()
    await asyncio.sleep(args.seconds)
    result = figures(cpu0, wall0, driver.stats.readings - readings0)
    acquiring.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquiring
    await driver.close()
    return result


async def run_asyncua(args: argparse.Namespace) -> dict[str, Any]:
    """Read the same nodes with a bare asyncua client loop; return its figures."""
    from asyncua import Client, ua

    client = Client(f"opc.tcp://127.0.0.1:{args.port}/", timeout=30.0)
    await client.connect()
    limit_node = client.get_node(
        ua.NodeId(
            ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
        )
    )
    limit = int(await limit_node.read_value()) or args.nodes
    ids = [ua.NodeId(f"B.t{i:06d}", 2) for i in range(args.nodes)]
    chunks = [
        [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in part]
        for part in (ids[i : i + limit] for i in range(0, len(ids), limit))
    ]

    async def read(chunk: list[Any]) -> list[Any]:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = chunk
        results: list[Any] = await client.uaclient.read(params)
        return results

    readings = 0
    start = time.monotonic()
    measuring = False
    cpu0 = wall0 = 0.0
    tick = 0
    while True:
        now = time.monotonic()
        if not measuring and now - start >= args.warmup:
            measuring, readings = True, 0
            cpu0, wall0 = usage()
        if measuring and now - wall0 >= args.seconds:
            break
        answers = await asyncio.gather(*(read(chunk) for chunk in chunks))
        readings += sum(len(answer) for answer in answers)
        tick = int((time.monotonic() - start) // args.interval) + 1
        await asyncio.sleep(max(0.0, start + tick * args.interval - time.monotonic()))
    result = figures(cpu0, wall0, readings)
    await client.disconnect()
    return result


# orchestration


def child(role: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    """Run one client role in its own process and return its figures."""
    return run_role(
        __file__,
        role,
        {
            "port": port,
            "nodes": args.nodes,
            "interval": args.interval,
            "seconds": args.seconds,
            "warmup": args.warmup,
        },
    )


def orchestrate(args: argparse.Namespace) -> None:
    """Start the server process, run the clients one after another, print figures."""
    started = time.monotonic()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "serve",
            "--nodes",
            str(args.nodes),
            "--interval",
            str(args.interval),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        while not line.strip().isdigit():  # the simulator's log comes first
            if not line:
                raise RuntimeError("the OPC UA server process ended")
            line = server.stdout.readline()
        port = int(line)
        print(
            f"{args.nodes} nodes, every value changing every {args.interval:g} s "
            f"({args.nodes / args.interval:,.0f} readings/s expected); server pid "
            f"{server.pid} on port {port}, up in {time.monotonic() - started:.0f} s; "
            f"{args.warmup:g} s warm-up, {args.seconds:g} s measured per client"
        )
        results = {}
        for role in args.clients:
            cpu0, wall0 = process_cpu_s(server.pid), time.monotonic()
            results[role] = child(role, args, port)
            server_cpu = process_cpu_s(server.pid) - cpu0
            results[role]["server_cpu"] = server_cpu / (time.monotonic() - wall0)
    finally:
        server.kill()
        server.wait()

    columns = (
        ("CPU % core", 11),
        ("RSS MiB", 9),
        ("peak MiB", 9),
        ("readings/s", 12),
        ("CPU %/10k rd/s", 16),
        ("server CPU %", 14),
    )
    print(f"{'client':<20}" + "".join(f"{name:>{width}}" for name, width in columns))
    for role, r in results.items():
        print(
            f"{role:<20}{100 * r['cpu']:>11.1f}{r['rss']:>9.0f}{r['peak']:>9.0f}"
            f"{r['readings_per_s']:>12,.0f}"
            f"{100 * r['cpu'] * 10_000 / max(r['readings_per_s'], 1):>16.1f}"
            f"{100 * r['server_cpu']:>14.0f}"
        )
    for role, r in results.items():
        if "alerts" in r:
            print(f"{role}: {r['alerts']} alert transition(s) while measured")
    bare = results.get("asyncua")
    if bare:
        for role in ("gateway-read", "driver-read"):
            if role in results:
                print(
                    f"{role} CPU / bare asyncua read loop CPU: "
                    f"{results[role]['cpu'] / bare['cpu']:.2f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds before measuring (default: {WARMUP_POLLS} polls, at least 5 s)",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        default=[*ROLES, "asyncua"],
        choices=[*ROLES, "asyncua"],
    )
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = max(MIN_WARMUP_S, WARMUP_POLLS * args.interval)
    if args.role is None:
        orchestrate(args)
        return
    if args.role == "serve":
        asyncio.run(serve(args))
        return
    if args.role == "asyncua":
        result = asyncio.run(run_asyncua(args))
    else:
        runner = run_gateway if args.role.startswith("gateway") else run_driver
        result = asyncio.run(runner(args, MODES[args.role]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
