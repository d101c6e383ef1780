"""End to end: the demo's OPC UA tool, served by the simulator, through the daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import MakeSubscriber
from mosquitto import Broker, eventually

from gateway.config import load_config
from gateway.config.models import GatewayConfig
from gateway.daemon import Gateway
from gateway.demo import DEMO_CONFIG, SIMULATION_FOLDER, serve_simulations
from gateway.store import StoreReader

TOOL = "litho-03"
WITHIN_S = 30.0
EXIT_TIMEOUT_S = 20.0


def demo_litho(tmp_path: Path, broker: Broker, prefix: str) -> GatewayConfig:
    """The demo configuration with its OPC UA tool only, on a private store."""
    config = load_config(DEMO_CONFIG)
    main = config.main
    updated = main.model_copy(
        update={
            "store": main.store.model_copy(update={"path": tmp_path / "demo.db"}),
            "mqtt": main.mqtt.model_copy(
                update={
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "topic_prefix": prefix,
                }
            ),
            "pipeline": main.pipeline.model_copy(update={"summary_window_s": 1.0}),
        }
    )
    tools = tuple(tool for tool in config.tools if tool.id == TOOL)
    return config.model_copy(update={"main": updated, "tools": tools})


async def test_demo_opcua_tool_delivers_both_groups_over_mqtt(
    tmp_path: Path, broker: Broker, make_subscriber: MakeSubscriber, topic_prefix: str
) -> None:
    """The read group and the subscribe group both reach MQTT as summaries."""
    config = demo_litho(tmp_path, broker, topic_prefix)
    identity = config.main.gateway
    summary_topic = f"{topic_prefix}/{identity.site}/{identity.id}/{TOOL}/summary"
    subscriber = make_subscriber(broker, summary_topic)

    def groups_seen() -> set[str]:
        return {json.loads(p)["group"] for p in subscriber.payloads(summary_topic)}

    async with serve_simulations(config, DEMO_CONFIG / SIMULATION_FOLDER) as served:
        # The demo's tool asks for SignAndEncrypt: the served settings say so too.
        assert served.tools[0].driver.security_mode == "SignAndEncrypt"
        gateway = Gateway(served)
        stop = asyncio.Event()
        run = asyncio.create_task(gateway.run(stop))
        try:
            await eventually(
                lambda: groups_seen() == {"stage", "laser"},
                WITHIN_S,
                "summaries of both litho-03 groups",
            )
            status = gateway.status()
        finally:
            stop.set()
            await asyncio.wait_for(run, EXIT_TIMEOUT_S)

    assert status["tools"][TOOL]["state"] == "up"
    with StoreReader.open(tmp_path / "demo.db") as store:
        stored = store.tool_stats()
    assert stored[TOOL].readings > 0
    last = [json.loads(p) for p in subscriber.payloads(summary_topic)][-1]
    assert all(entry["count"] > 0 for entry in last["tags"].values())
