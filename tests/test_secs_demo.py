"""End to end: the demo etch tool over HSMS -> events and alarm alerts at the broker."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import MakeSubscriber
from mosquitto import Broker, eventually

import edge_models
from gateway.config import load_config
from gateway.daemon import run_gateway
from gateway.demo import DEMO_CONFIG, SIMULATION_FOLDER, serve_simulations

SCHEMAS = Path(__file__).resolve().parent.parent / "gateway" / "publish" / "schemas"
MODEL = Path(edge_models.__file__).parent / "models" / "demo_etch.tflite"
# The demo's first event comes half a process cycle (5 s) after select; its
# faults are moved to the first seconds so the alarms come as soon.
WITHIN_S = 30.0
STOP_TIMEOUT_S = 20.0


def demo_etch_only(root: Path, port: int, prefix: str) -> Path:
    """Copy the demo folder with etch-07 alone, pointed at ``port`` and ``prefix``."""
    folder = shutil.copytree(DEMO_CONFIG, root / "demo")
    for other in (folder / "tools").glob("*.toml"):
        if other.stem != "etch-07":
            other.unlink()
    main = folder / "gateway.toml"
    main.write_text(
        main.read_text()
        .replace("port = 1883", f"port = {port}")
        .replace('topic_prefix = "edge"', f'topic_prefix = "{prefix}"')
        .replace('path = "demo.db"', f'path = "{root / "demo.db"}"')
        .replace("summary_window_s = 10", "summary_window_s = 2")
    )
    tool = folder / "tools" / "etch-07.toml"
    tool.write_text(
        tool.read_text().replace(
            "../../edge_models/models/demo_etch.tflite", str(MODEL)
        )
    )
    simulation = folder / SIMULATION_FOLDER / "etch-07.toml"
    text = simulation.read_text()
    assert text.count("at_s = 14") == 1
    assert text.count("at_s = 20") == 1
    simulation.write_text(
        text.replace("at_s = 14", "at_s = 3").replace("at_s = 20", "at_s = 5")
    )
    return folder


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text())
    return loaded


@pytest.mark.slow
async def test_demo_etch_tool_events_and_alarms_reach_the_broker(
    tmp_path: Path, broker: Broker, make_subscriber: MakeSubscriber, topic_prefix: str
) -> None:
    """Collection events and equipment alarms of the HSMS demo tool arrive over MQTT."""
    folder = demo_etch_only(tmp_path, broker.port, topic_prefix)
    subscriber = make_subscriber(broker, f"{topic_prefix}/#")
    config = load_config(folder)

    def payloads(kind: str) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload)
            for m in subscriber.messages
            if m.topic.endswith("/etch-07/" + kind)
        ]

    def arrived() -> bool:
        events = payloads("event")
        alarm_alerts = [a for a in payloads("alert") if a["model"] == "equipment_alarm"]
        return (
            any(e["kind"] == "event" for e in events)
            and any(e["kind"] == "alarm" and e["state"] == "cleared" for e in events)
            and any(a["state"] == "raised" for a in alarm_alerts)
            and any(a["state"] == "cleared" for a in alarm_alerts)
        )

    stop = asyncio.Event()
    async with serve_simulations(config, folder / SIMULATION_FOLDER) as served:
        gateway = asyncio.create_task(run_gateway(served, stop))
        try:
            await eventually(arrived, WITHIN_S, "events and alarm alerts")
        finally:
            stop.set()
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await gateway

    for kind in ("event", "alert"):
        for payload in payloads(kind):
            jsonschema.validate(payload, schema(kind))
    event = next(e for e in payloads("event") if e["kind"] == "event")
    assert event["name"] in ("ProcessStarted", "ProcessCompleted")
    [report] = event["data"]["reports"]
    assert set(report["values"]) == {"1001", "1004"}
    # One alarm per fault of the simulation file, in its order.
    texts = {1: "chamber_pressure spike", 2: "esc_temp stuck"}
    severities = {1: "critical", 2: "warning"}
    alarm = next(e for e in payloads("event") if e["kind"] == "alarm")
    assert alarm["name"] == texts[alarm["code"]]
    raised = next(
        a
        for a in payloads("alert")
        if a["model"] == "equipment_alarm" and a["state"] == "raised"
    )
    alid = raised["alarm"]["alid"]
    assert raised["tag"] == f"ALID {alid}"
    assert raised["severity"] == severities[alid]
    assert raised["alarm"]["text"] == texts[alid]
