"""``edge-gateway demo``: simulated tools, a private broker, and a subscriber's view.

The demo runs the real daemon on ``config/demo`` with its store in a temporary
folder, starts a private Mosquitto on a free loopback port when one is installed,
subscribes to the gateway's topics and prints the alerts and summaries as a central
system would receive them.

A tool whose driver speaks a protocol (not ``simulated``) and that has a simulation
file, ``simulation/<tool id>.toml`` beside ``tools/``, is served by that protocol's
simulator on a free loopback port, so the demo's data crosses a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.simulation import ToolSimulator, load_simulation, simulator_class
from gateway.config import load_config
from gateway.config.models import GatewayConfig, LoggingConfig
from gateway.daemon import run_gateway
from gateway.logs import configure_logging

__all__ = ["PrivateBroker", "run_demo", "serve_simulations"]

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo"
SIMULATION_FOLDER = "simulation"
BROKER_START_TIMEOUT_S = 10.0
SUBSCRIBER_TIMEOUT_S = 10.0
EXIT_OK = 0
EXIT_NOTHING_RECEIVED = 1


class PrivateBroker:
    """A Mosquitto process on a free 127.0.0.1 port, with its own config file."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the broker (idempotent)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class _Tally:
    alerts: int = 0
    summaries: int = 0
    other: int = 0


def run_demo(config_dir: Path | None, duration_s: float) -> int:
    """Run the demo; return 0 when alerts and summaries arrived over MQTT."""
    config_dir = config_dir or DEMO_CONFIG
    config = load_config(config_dir)
    simulations = config_dir / SIMULATION_FOLDER
    configure_logging(LoggingConfig(level="warning", format="console"))
    with tempfile.TemporaryDirectory(prefix="edge-gateway-demo-") as tmp:
        workdir = Path(tmp)
        if shutil.which("mosquitto") is None:
            print(
                "mosquitto is not installed, so the demo runs store-only.\n"
                "Install it (Debian/Ubuntu: sudo apt-get install mosquitto) to see "
                "alerts arrive over MQTT."
            )
            demo = _with(config, workdir, port=None)
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(
                    _run_and_print(
                        demo, simulations, duration_s, queue.Queue(), _Tally()
                    )
                )
            print(f"demo: stopped; the store was {workdir / 'demo.db'}")
            return EXIT_OK
        broker = PrivateBroker(workdir)
        broker.start()
        try:
            return _run_with_broker(
                _with(config, workdir, broker.port), simulations, duration_s
            )
        finally:
            broker.stop()


def _with(config: GatewayConfig, workdir: Path, port: int | None) -> GatewayConfig:
    main = config.main
    mqtt_config = (
        main.mqtt.model_copy(update={"host": "127.0.0.1", "port": port})
        if port
        else main.mqtt.model_copy(update={"enabled": False})
    )
    store = main.store.model_copy(update={"path": workdir / "demo.db"})
    logging = main.logging.model_copy(update={"level": "warning", "format": "console"})
    updated = main.model_copy(
        update={"mqtt": mqtt_config, "store": store, "logging": logging}
    )
    return config.model_copy(update={"main": updated})


def _run_with_broker(
    config: GatewayConfig, simulations: Path, duration_s: float
) -> int:
    identity = config.main.gateway
    topic = f"{config.main.mqtt.topic_prefix}/{identity.site}/{identity.id}/#"
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = _subscribe(config.main.mqtt.port, topic, received)
    print(f"demo: broker on 127.0.0.1:{config.main.mqtt.port}, subscribed to {topic}")
    print(f"demo: running {duration_s:g} s (Ctrl-C stops earlier)\n")
    tally = _Tally()
    try:
        asyncio.run(_run_and_print(config, simulations, duration_s, received, tally))
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
    print(
        f"\ndemo: received {tally.alerts} alert(s), {tally.summaries} summary "
        f"message(s), {tally.other} other message(s) over MQTT"
    )
    if tally.alerts and tally.summaries:
        return EXIT_OK
    print(
        "demo: expected both alerts and summaries; see the log above", file=sys.stderr
    )
    return EXIT_NOTHING_RECEIVED


def _subscribe(
    port: int, topic: str, received: queue.Queue[tuple[str, bytes]]
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-gateway-demo")

    def on_message(
        client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        received.put((message.topic, bytes(message.payload)))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    return client


@contextlib.asynccontextmanager
async def serve_simulations(
    config: GatewayConfig, simulations: Path
) -> AsyncIterator[GatewayConfig]:
    """Start a protocol simulator for each tool with a simulation file.

    Yields the configuration with those tools' drivers pointed at their simulators;
    stops the simulators on exit.
    """
    tools = []
    async with contextlib.AsyncExitStack() as stack:
        for tool in config.tools:
            path = simulations / f"{tool.id}.toml"
            if tool.kind == "simulated" or not path.is_file():
                tools.append(tool)
                continue
            simulator: ToolSimulator = simulator_class(tool.kind)(
                tool, load_simulation(path)
            )
            await stack.enter_async_context(simulator)
            print(
                f"demo: {tool.id} served by the {tool.kind} simulator on "
                f"127.0.0.1:{simulator.port}"
            )
            tools.append(
                tool.model_copy(update={"driver": simulator.driver_settings()})
            )
        yield config.model_copy(update={"tools": tuple(tools)})


async def _run_and_print(
    config: GatewayConfig,
    simulations: Path,
    duration_s: float,
    received: queue.Queue[tuple[str, bytes]],
    tally: _Tally,
) -> None:
    async with serve_simulations(config, simulations) as served:
        stop = asyncio.Event()
        gateway = asyncio.create_task(run_gateway(served, stop), name="gateway")
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        try:
            while not gateway.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                _drain(received, tally)
        finally:
            stop.set()
            await gateway
            await asyncio.sleep(0.5)
            _drain(received, tally)


def _drain(received: queue.Queue[tuple[str, bytes]], tally: _Tally) -> None:
    while True:
        try:
            topic, payload = received.get_nowait()
        except queue.Empty:
            return
        print(_describe(topic, payload, tally))


def _describe(topic: str, payload: bytes, tally: _Tally) -> str:
    kind = topic.rsplit("/", 1)[-1]
    try:
        message = json.loads(payload)
    except ValueError:
        tally.other += 1
        return f"{topic}: {payload[:80]!r}"
    if kind == "alert" and "alarm" in message:
        tally.alerts += 1
        return (
            f"ALERT {message['state']:<7} {message['severity']:<8} "
            f"{message['tool']}/{message['tag']}: equipment alarm "
            f"{message['alarm']['text']!r} at {message['ts']}"
        )
    if kind == "alert":
        tally.alerts += 1
        return (
            f"ALERT {message['state']:<7} {message['severity']:<8} "
            f"{message['tool']}/{message['tag']}: "
            f"value {_significant(message['value'])} "
            f"{message['unit']}, {message['model']} score {message['score']:.1f} "
            f"(raise at {message['raise_level']}) at {message['ts']}"
        )
    if kind == "summary":
        tally.summaries += 1
        tags = message["tags"]
        parts = [
            f"{name} {entry['mean']:.4g}±{entry['std']:.2g} "
            f"max score {_rounded(entry['max_score'])}"
            for name, entry in list(tags.items())[:3]
            if entry["mean"] is not None and entry["std"] is not None
        ]
        more = f" (+{len(tags) - 3} tags)" if len(tags) > 3 else ""
        return (
            f"summary {message['tool']}/{message['group']} "
            f"{message['window_start'][11:19]}-{message['window_end'][11:19]}: "
            + "; ".join(parts)
            + more
        )
    tally.other += 1
    if kind == "event":
        return _describe_event(message)
    if kind == "status":
        return f"status  {message.get('state')} ({topic})"
    return f"{kind} {topic}"


def _describe_event(message: dict[str, Any]) -> str:
    head = f"EVENT {message['kind']:<5} {message['tool']}: {message['name']}"
    if message["kind"] == "alarm":
        return f"{head} ({message['state']}, ALID {message['code']})"
    values = [
        f"{vid}={_significant(value) if isinstance(value, float) else value}"
        for report in message["data"].get("reports", [])
        if isinstance(report.get("values"), dict)
        for vid, value in report["values"].items()
    ]
    return f"{head} (CEID {message['code']}) " + " ".join(values)


def _rounded(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _significant(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
