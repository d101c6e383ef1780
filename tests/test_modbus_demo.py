"""End to end: the demo's Modbus tool, served by its simulator, alerts at the broker."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
from conftest import MakeSubscriber
from mosquitto import Broker, eventually

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.demo import serve_simulations

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo"
SCHEMAS = REPO / "gateway" / "publish" / "schemas"
ALERT_WITHIN_S = 30.0
TOOL = "cvd-02"
STEP_DEGC = 9.0  # the simulation's step of 90 counts of 0.1 degC

MAIN = """
[gateway]
site = "fab-t"
id = "gw-modbus"

[store]
path = "{store}"
commit_interval_ms = 100

[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{prefix}"
shutdown_publish_s = 2.0

[pipeline]
summary_window_s = 2
"""


def demo_copy(root: Path, broker: Broker, prefix: str) -> Path:
    """The demo with only its Modbus tool, polled faster, its step fault early."""
    folder = shutil.copytree(DEMO, root / "demo")
    for other in (folder / "tools").glob("*.toml"):
        if other.stem != TOOL:
            other.unlink()
    (folder / "gateway.toml").write_text(
        MAIN.format(store=root / "gateway.db", port=broker.port, prefix=prefix)
    )
    tool = folder / "tools" / f"{TOOL}.toml"
    tool.write_text(tool.read_text().replace("interval_s = 0.5", "interval_s = 0.2"))
    simulation = folder / "simulation" / f"{TOOL}.toml"
    text = simulation.read_text().replace("step_s = 0.5", "step_s = 0.1")
    simulation.write_text(text.replace("at_s = 17", "at_s = 5", 1))
    return folder


def alerts_of(messages: list[Any]) -> list[dict[str, Any]]:
    """Decoded alert payloads among the subscriber's messages."""
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/alert")]


async def test_demo_modbus_tool_raises_alerts_at_the_broker(
    tmp_path: Path,
    broker: Broker,
    make_subscriber: MakeSubscriber,
    topic_prefix: str,
) -> None:
    """The showerhead step, read over Modbus TCP, arrives as a valid scaled alert."""
    folder = demo_copy(tmp_path, broker, topic_prefix)
    subscriber = make_subscriber(broker, f"{topic_prefix}/#")
    config = load_config(folder)
    schema = json.loads((SCHEMAS / "alert.json").read_text())

    async with serve_simulations(config, folder / "simulation") as served:
        driver = served.tools[0].driver
        assert driver.kind == "modbus"
        assert driver.port != 5020  # pointed at the simulator's ephemeral port
        stop = asyncio.Event()
        gateway = Gateway(served)
        running = asyncio.create_task(gateway.run(stop))
        try:
            await eventually(
                lambda: any(
                    a["tag"] == "showerhead_temp" and a["state"] == "raised"
                    for a in alerts_of(subscriber.messages)
                ),
                ALERT_WITHIN_S,
                "showerhead alert",
            )
        finally:
            stop.set()
            await running

    raised = [a for a in alerts_of(subscriber.messages) if a["state"] == "raised"]
    for alert in raised:
        jsonschema.validate(alert, schema)
    showerhead = next(a for a in raised if a["tag"] == "showerhead_temp")
    assert showerhead["tool"] == TOOL
    assert showerhead["unit"] == "degC"
    assert abs(showerhead["value"] - (350.0 + STEP_DEGC)) < 3.0
    status = gateway.status(stopped=True)["tools"][TOOL]
    assert status["polls"] > 0
    assert status["bad_readings"] < status["readings"]
