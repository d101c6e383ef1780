"""The daemon: one event loop running every tool, the pipeline and the publisher.

Task tree (one ``asyncio.TaskGroup``)::

    <kind>[<tool>]      one supervised driver per tool (reconnects by itself)
    pipeline            batches from the queue through the ToolPipelines
    publisher           outbox -> MQTT (paho's I/O in its own thread)
    housekeeping        summary windows, model state, status snapshot

SIGTERM or SIGINT stops it in order: stop polling, drain the queue through the
pipeline, emit open summary windows, save model state, commit the store, publish
what fits in ``mqtt.shutdown_publish_s``, publish ``offline``, close. Exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import structlog

from drivers import driver_class
from drivers.base import EquipmentEvent
from drivers.batch import ReadingBatch
from gateway import __version__
from gateway.config.models import GatewayConfig
from gateway.pipeline import ToolPipeline, poll_groups
from gateway.publish import Publisher
from gateway.store import Store
from gateway.supervisor import ToolSupervisor

__all__ = ["STATUS_KEY", "Gateway", "run_gateway"]

log = structlog.get_logger(__name__)

STATUS_KEY = "status/daemon"
HOUSEKEEPING_PERIOD_S = 1.0
STATUS_PERIOD_S = 5.0
MODEL_SAVE_PERIOD_S = 60.0
SUMMARY_GRACE_S = 2.0
_NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class _Counters:
    batches: int = 0
    rejected: int = 0
    events: int = 0
    rejected_events: int = 0


class Gateway:
    """Everything one configuration folder runs; see the module doc."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        main = config.main
        self.store = Store.open(config.store_path, main.store)
        self.queue: asyncio.Queue[ReadingBatch | EquipmentEvent] = asyncio.Queue(
            main.pipeline.queue_batches
        )
        self.counters = _Counters()
        tools = [tool for tool in config.tools if tool.enabled]
        self.pipelines = {
            tool.id: ToolPipeline(
                tool,
                main.gateway,
                main.mqtt.topic_prefix,
                self.store,
                main.pipeline.summary_window_s,
                main.mqtt.telemetry,
            )
            for tool in tools
        }
        self.supervisors = [
            ToolSupervisor(
                driver_class(tool.kind)(
                    tool.id,
                    tool.driver,
                    [tag.name for tag in tool.tags],
                    [tag.source for tag in tool.tags],
                    poll_groups(tool),
                ),
                self.queue.put,
                main.reconnect,
            )
            for tool in tools
        ]
        self.publisher = (
            Publisher(
                main.mqtt,
                main.gateway,
                self.store,
                {"version": __version__, "tools": [tool.id for tool in tools]},
            )
            if main.mqtt.enabled
            else None
        )
        self.started_ns = time.time_ns()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order (module doc)."""
        restored = sum(p.restore_state() for p in self.pipelines.values())
        log.info(
            "gateway_started",
            version=__version__,
            tools=len(self.supervisors),
            store=str(self.config.store_path),
            model_states_restored=restored,
        )
        async with asyncio.TaskGroup() as tasks:
            tools = [
                tasks.create_task(sup.run(), name=f"{sup.driver.kind}[{sup.tool}]")
                for sup in self.supervisors
            ]
            pipeline = tasks.create_task(self._consume(), name="pipeline")
            housekeeping = tasks.create_task(self._housekeeping(), name="housekeeping")
            publisher = (
                tasks.create_task(self.publisher.run(), name="publisher")
                if self.publisher
                else None
            )
            await stop.wait()
            log.info("gateway_stopping")

            for task in tools:
                task.cancel()
            await asyncio.gather(*tools, return_exceptions=True)
            await self.queue.join()
            pipeline.cancel()
            housekeeping.cancel()
            self._finish_pipelines()
            await asyncio.to_thread(self.store.flush)
            if self.publisher is not None and publisher is not None:
                await self.publisher.stop(self.config.main.mqtt.shutdown_publish_s)
                publisher.cancel()
        await asyncio.to_thread(self.store.close)
        log.info("gateway_stopped")

    async def _consume(self) -> None:
        while True:
            batch = await self.queue.get()
            try:
                self._process(batch)
            finally:
                self.queue.task_done()

    def _process(self, batch: ReadingBatch | EquipmentEvent) -> None:
        # A bad batch is dropped with an ERROR; it never stops the pipeline.
        if isinstance(batch, EquipmentEvent):
            self._process_event(batch)
            return
        try:
            self.pipelines[batch.tool].process(batch)
        except Exception:
            self.counters.rejected += 1
            log.exception(
                "pipeline_batch_dropped",
                tool=batch.tool,
                group=batch.group,
                readings=batch.size,
            )
            return
        self.counters.batches += 1

    def _process_event(self, event: EquipmentEvent) -> None:
        try:
            self.pipelines[event.tool].process_event(event)
        except Exception:
            self.counters.rejected_events += 1
            log.exception(
                "equipment_event_dropped",
                tool=event.tool,
                kind=event.kind,
                code=event.code,
            )
            return
        self.counters.events += 1

    def _finish_pipelines(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.close_all()
            pipeline.save_state()
        self.store.put_state(STATUS_KEY, self._status_json(stopped=True))

    async def _housekeeping(self) -> None:
        last_status = last_save = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_PERIOD_S)
            now = time.monotonic()
            for pipeline in self.pipelines.values():
                pipeline.close_due(time.time_ns(), SUMMARY_GRACE_S)
            if now - last_save >= MODEL_SAVE_PERIOD_S:
                for pipeline in self.pipelines.values():
                    pipeline.save_state()
                last_save = now
            if now - last_status >= STATUS_PERIOD_S:
                self.store.put_state(STATUS_KEY, self._status_json(stopped=False))
                last_status = now

    def status(self, stopped: bool = False) -> dict[str, Any]:
        """Return the live state: tools, pipeline, publisher (JSON-ready)."""
        tools = {}
        for sup in self.supervisors:
            pipeline = self.pipelines[sup.tool]
            stats = sup.driver.stats
            tools[sup.tool] = {
                "state": "stopped" if stopped else sup.state,
                "since_ns": sup.since_ns,
                "last_poll_ns": stats.last_poll_ns,
                "polls": stats.polls,
                "overruns": stats.overruns,
                "reconnects": sup.reconnects,
                "last_error": sup.last_error,
                "readings": pipeline.readings,
                "bad_readings": pipeline.bad_readings,
                "active_alerts": pipeline.active_alerts(),
            }
        publisher = self.publisher
        return {
            "pid": os.getpid(),
            "version": __version__,
            "running": not stopped,
            "started_ns": self.started_ns,
            "updated_ns": time.time_ns(),
            "tools": tools,
            "pipeline": {
                "batches": self.counters.batches,
                "dropped_batches": self.counters.rejected,
                "events": self.counters.events,
                "dropped_events": self.counters.rejected_events,
                "queued": self.queue.qsize(),
            },
            "mqtt": None if publisher is None else dataclasses.asdict(publisher.stats),
        }

    def _status_json(self, stopped: bool) -> bytes:
        return json.dumps(self.status(stopped)).encode()


async def run_gateway(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set).

    SIGHUP is answered with a WARNING and otherwise ignored, so a reload request
    never kills the daemon; a changed configuration takes effect at restart.

    Raises:
        StoreError: the store cannot be opened.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_requested)
    try:
        gateway = Gateway(config)
        await gateway.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)


def _reload_requested() -> None:
    log.warning("reload_unsupported", action="restart the service to apply changes")
