"""The daemon: one event loop running every tool, the pipeline and the publisher.

Task tree (one ``asyncio.TaskGroup``)::

    <kind>[<tool>]      one supervised driver per tool (reconnects by itself)
    pipeline            batches from the queue through the ToolPipelines
    publisher           outbox -> MQTT (paho's I/O in its own thread)
    housekeeping        summary windows, model state, status snapshot, self-limits
    reload              applies a new configuration on SIGHUP
    watchdog            WATCHDOG=1 to systemd while the pipeline makes progress

Beside them the status socket (``edge-gateway status``) and, when configured,
the Prometheus metrics port serve the status report.

Under systemd (``$NOTIFY_SOCKET``) the daemon says ``READY=1`` once the store is
open, the configuration loaded and every task started; ``RELOADING=1`` and
``READY=1`` around a reload; ``STOPPING=1`` when it stops; and a ``STATUS=``
line with tools up, backlog and active alerts.

SIGHUP reloads the configuration folder. An invalid one leaves the running
configuration in force and logs one ERROR (``reload_failed``) with every
problem. A valid one is applied as a difference: new tools start, removed
tools stop, changed tools restart (their queued batches are processed first,
their model state carries over), the MQTT session is renewed only when
``[mqtt]`` or ``[gateway]`` changed, and unchanged tools keep running.
``[store]``, ``pipeline.queue_batches`` and ``service.runtime_dir`` take effect
at the next start (``reload_needs_restart`` says so).

SIGTERM or SIGINT stops it in order: stop polling, drain the queue through the
pipeline, emit open summary windows, save model state, commit the store, publish
what fits in ``mqtt.shutdown_publish_s``, publish ``offline``, close. Exit code 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from drivers import driver_class
from drivers.base import EquipmentEvent
from drivers.batch import ReadingBatch
from gateway import __version__
from gateway.config import ConfigError, load_config
from gateway.config.models import GatewayConfig, MainConfig, ToolConfig
from gateway.control import ControlError, StatusServer
from gateway.limits import LimitWatch
from gateway.logs import configure_logging
from gateway.metrics import MetricsServer
from gateway.pipeline import ToolPipeline, tool_driver
from gateway.pki import with_default_pki
from gateway.publish import Publisher
from gateway.report import (
    STATUS_KEY,
    STATUS_PERIOD_S,
    StoreFigures,
    build_report,
    process_figures,
    read_store_figures,
)
from gateway.sdnotify import Notifier, watchdog_interval_s
from gateway.store import Store, StoreError
from gateway.supervisor import ToolSupervisor
from gateway.watchdog import Probe, ProgressMonitor, run_watchdog

__all__ = ["STATUS_KEY", "STATUS_PERIOD_S", "Gateway", "run_gateway"]

log = structlog.get_logger(__name__)

HOUSEKEEPING_PERIOD_S = 1.0
MODEL_SAVE_PERIOD_S = 60.0
SUMMARY_GRACE_S = 2.0
# Readings per second, bad-quality share and CPU use are taken over this window.
RATE_WINDOW_S = 10.0
# A status request reuses store figures at most this old (they cost SQL).
FIGURES_MAX_AGE_S = 1.0
_NS_PER_S = 1_000_000_000
# Refused tags listed per tool in the status report; the rest are counted.
STATUS_TAG_FAULTS = 50
_BYTES_PER_MB = 1024 * 1024

QueueItem = ReadingBatch | EquipmentEvent


@dataclass(slots=True)
class _Counters:
    batches: int = 0
    rejected: int = 0
    events: int = 0
    rejected_events: int = 0
    taken: int = 0  # queue items finished (processed or dropped)
    reloads: int = 0
    failed_reloads: int = 0


class _Barrier:
    """A marker put through the queue: passed once everything before it is done."""

    def __init__(self) -> None:
        self.passed = asyncio.Event()


@dataclass(slots=True)
class _Meter:
    """Recent rate of growing counters, from samples over ``RATE_WINDOW_S``."""

    samples: collections.deque[tuple[float, tuple[float, ...]]] = field(
        default_factory=collections.deque
    )

    def sample(self, now: float, *counters: float) -> None:
        self.samples.append((now, counters))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def deltas(self) -> tuple[float, tuple[float, ...]] | None:
        """Return (seconds, counter increases) over the window, None if too short."""
        if len(self.samples) < 2:
            return None
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return t1 - t0, tuple(b - a for a, b in zip(first, last, strict=True))


@dataclass(slots=True)
class _Tool:
    """One running tool: its configuration, driver supervisor and pipeline."""

    config: ToolConfig
    supervisor: ToolSupervisor
    pipeline: ToolPipeline
    task: asyncio.Task[None] | None = None
    last_good_ns: int = 0
    meter: _Meter = field(default_factory=_Meter)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a reload changes."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    mqtt: bool
    needs_restart: tuple[str, ...]


class Gateway:
    """Everything one configuration folder runs; see the module doc.

    Raises:
        StoreError: from the constructor, when the store cannot be opened.
    """

    def __init__(
        self,
        config: GatewayConfig,
        notifier: Notifier | None = None,
        loader: Callable[[Path], GatewayConfig] = load_config,
    ) -> None:
        self.config = config
        main = config.main
        self.store = Store.open(config.store_path, main.store)
        self.queue: asyncio.Queue[QueueItem | _Barrier] = asyncio.Queue(
            main.pipeline.queue_batches
        )
        self.counters = _Counters()
        self.notifier = notifier or Notifier(environ={})
        self._loader = loader
        enabled = [tool for tool in config.tools if tool.enabled]
        self.tools = {tool.id: self._build_tool(tool, main) for tool in enabled}
        self.publisher = self._build_publisher(config)
        self.started_ns = time.time_ns()
        self.reload_requested = asyncio.Event()
        self.last_reload: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._tasks: asyncio.TaskGroup | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self._status_server: StatusServer | None = None
        self._metrics: MetricsServer | None = None
        self._figures: tuple[float, StoreFigures] | None = None
        self._cpu = _Meter()
        self._limits = LimitWatch(main.service.warn_fraction)

    # ------------------------------------------------------------ building

    def _build_tool(self, tool: ToolConfig, main: MainConfig) -> _Tool:
        driver = tool_driver(
            driver_class(tool.kind), tool, with_default_pki(tool.driver, self.config)
        )
        pipeline = ToolPipeline(
            tool,
            main.gateway,
            main.mqtt.topic_prefix,
            self.store,
            main.pipeline.summary_window_s,
            main.mqtt.telemetry,
        )
        supervisor = ToolSupervisor(driver, self.queue.put, main.reconnect)
        return _Tool(config=tool, supervisor=supervisor, pipeline=pipeline)

    def _build_publisher(self, config: GatewayConfig) -> Publisher | None:
        main = config.main
        if not main.mqtt.enabled:
            return None
        birth = {
            "version": __version__,
            "tools": [tool.id for tool in config.tools if tool.enabled],
        }
        return Publisher(main.mqtt, main.gateway, self.store, birth)

    @property
    def supervisors(self) -> list[ToolSupervisor]:
        """The supervisors of the running tools."""
        return [tool.supervisor for tool in self.tools.values()]

    @property
    def pipelines(self) -> dict[str, ToolPipeline]:
        """The running tools' pipelines, by tool id."""
        return {tool_id: tool.pipeline for tool_id, tool in self.tools.items()}

    # ----------------------------------------------------------- life cycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order (module doc)."""
        restored = sum(tool.pipeline.restore_state() for tool in self.tools.values())
        log.info(
            "gateway_started",
            version=__version__,
            tools=len(self.tools),
            store=str(self.config.store_path),
            model_states_restored=restored,
        )
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            for tool in self.tools.values():
                self._start_tool(tool)
            pipeline = tasks.create_task(self._consume(), name="pipeline")
            housekeeping = tasks.create_task(self._housekeeping(), name="housekeeping")
            self._start_publisher()
            await self._start_servers()
            reloader = tasks.create_task(self._reloader(), name="reload")
            watchdog = self._start_watchdog()
            self.notifier.ready(self.summary_line())

            await stop.wait()
            self.notifier.stopping()
            log.info("gateway_stopping")
            async with self._lock:  # a reload in progress finishes first
                reloader.cancel()
            if watchdog is not None:
                watchdog.cancel()
            await self._stop_tools(list(self.tools.values()))
            await self.queue.join()
            pipeline.cancel()
            housekeeping.cancel()
            self._finish_pipelines()
            await asyncio.to_thread(self.store.flush)
            await self._stop_publisher()
            await self._stop_servers()
        await asyncio.to_thread(self.store.close)
        log.info(
            "gateway_stopped",
            batches=self.counters.batches,
            readings=sum(tool.pipeline.readings for tool in self.tools.values()),
        )

    def request_reload(self) -> None:
        """Ask for the configuration folder to be read again (SIGHUP)."""
        self.reload_requested.set()

    def _start_tool(self, tool: _Tool) -> None:
        assert self._tasks is not None
        sup = tool.supervisor
        tool.task = self._tasks.create_task(
            sup.run(), name=f"{sup.driver.kind}[{sup.tool}]"
        )

    async def _stop_tools(self, tools: list[_Tool]) -> None:
        running = [tool.task for tool in tools if tool.task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _start_publisher(self) -> None:
        assert self._tasks is not None
        if self.publisher is not None:
            self._publisher_task = self._tasks.create_task(
                self.publisher.run(), name="publisher"
            )

    async def _stop_publisher(self) -> None:
        publisher, task = self.publisher, self._publisher_task
        if publisher is not None and task is not None:
            await publisher.stop(self.config.main.mqtt.shutdown_publish_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._publisher_task = None

    async def _start_servers(self) -> None:
        # The status socket and metrics are for people and scrapers: a failure
        # to open them is logged and the gateway runs on without them.
        server = StatusServer(self.config.status_socket, self.report)
        try:
            await server.start()
            self._status_server = server
        except (ControlError, OSError) as exc:
            log.warning(
                "status_socket_unavailable",
                error=str(exc),
                action="edge-gateway status falls back to the store",
            )
        await self._start_metrics()

    async def _start_metrics(self) -> None:
        port = self.config.main.service.metrics_port
        if not port:
            return
        metrics = MetricsServer(port, self.report)
        try:
            await metrics.start()
            self._metrics = metrics
        except OSError as exc:
            log.warning("metrics_unavailable", port=port, error=str(exc))

    async def _stop_servers(self) -> None:
        if self._status_server is not None:
            await self._status_server.close()
            self._status_server = None
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        timeout_s = watchdog_interval_s()
        if not self.notifier.enabled or timeout_s is None:
            return None
        assert self._tasks is not None
        monitor = ProgressMonitor(
            [
                Probe("pipeline", self.queue.qsize, lambda: self.counters.taken),
                Probe(
                    "store",
                    lambda: self.store.writer_progress[0],
                    lambda: self.store.writer_progress[1],
                ),
            ],
            stall_s=timeout_s,
        )
        return self._tasks.create_task(
            run_watchdog(self.notifier, monitor, timeout_s), name="watchdog"
        )

    # ------------------------------------------------------------- pipeline

    async def _consume(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if isinstance(item, _Barrier):
                    item.passed.set()
                else:
                    self._process(item)
            finally:
                self.counters.taken += 1
                self.queue.task_done()

    def _process(self, batch: QueueItem) -> None:
        # A bad batch is dropped with an ERROR; it never stops the pipeline.
        tool = self.tools.get(batch.tool)
        if isinstance(batch, EquipmentEvent):
            self._process_event(tool, batch)
            return
        if tool is None:
            self.counters.rejected += 1
            log.error(
                "pipeline_batch_dropped",
                tool=batch.tool,
                group=batch.group,
                readings=batch.size,
                error="the tool is not running",
            )
            return
        pipeline = tool.pipeline
        bad_before = pipeline.bad_readings
        try:
            pipeline.process(batch)
        except Exception:
            self.counters.rejected += 1
            log.exception(
                "pipeline_batch_dropped",
                tool=batch.tool,
                group=batch.group,
                readings=batch.size,
            )
            return
        if pipeline.bad_readings - bad_before < batch.size:
            tool.last_good_ns = time.time_ns()
        self.counters.batches += 1

    def _process_event(self, tool: _Tool | None, event: EquipmentEvent) -> None:
        if tool is None:
            self.counters.rejected_events += 1
            log.error(
                "equipment_event_dropped",
                tool=event.tool,
                kind=event.kind,
                code=event.code,
                error="the tool is not running",
            )
            return
        try:
            tool.pipeline.process_event(event)
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
        for tool in self.tools.values():
            tool.pipeline.close_all()
            tool.pipeline.save_state()
        self.store.put_state(STATUS_KEY, self._status_json(stopped=True))

    async def _housekeeping(self) -> None:
        last_status = last_save = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_PERIOD_S)
            now = time.monotonic()
            self._sample_meters(now)
            for tool in self.tools.values():
                tool.pipeline.close_due(time.time_ns(), SUMMARY_GRACE_S)
            if now - last_save >= MODEL_SAVE_PERIOD_S:
                for tool in self.tools.values():
                    tool.pipeline.save_state()
                last_save = now
            if now - last_status >= STATUS_PERIOD_S:
                last_status = now
                self.store.put_state(STATUS_KEY, self._status_json(stopped=False))
                await self._check_limits()
                self.notifier.status(self.summary_line())

    def _sample_meters(self, now: float) -> None:
        for tool in self.tools.values():
            pipeline = tool.pipeline
            tool.meter.sample(now, pipeline.readings, pipeline.bad_readings)
        self._cpu.sample(now, process_figures()["cpu_seconds"])

    # ------------------------------------------------------- self-limits

    async def _check_limits(self) -> None:
        try:
            figures = await self.store_figures(max_age_s=0.0)
        except StoreError as exc:
            log.warning("store_figures_failed", error=str(exc))
            return
        service = self.config.main.service
        self._limits.check(
            {
                "rss_bytes": (
                    float(process_figures()["rss_bytes"]),
                    float(service.memory_limit_mb * _BYTES_PER_MB),
                ),
                "outbox_messages": (
                    float(sum(count for count, _ in figures.backlog.values())),
                    float(service.backlog_limit_messages),
                ),
                "pipeline_queue": (
                    float(self.queue.qsize()),
                    float(self.config.main.pipeline.queue_batches),
                ),
            }
        )

    # ---------------------------------------------------------------- reload

    async def _reloader(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            async with self._lock:
                await self._reload()

    async def _reload(self) -> None:
        self.notifier.reloading()
        directory = self.config.directory
        log.info("reload_started", config=str(directory))
        try:
            new = await asyncio.to_thread(self._loader, directory)
        except ConfigError as exc:
            problems = [str(issue) for issue in exc.issues]
            self._reload_failed(problems)
            return
        except (OSError, ValueError) as exc:
            self._reload_failed([f"{directory}: {exc}"])
            return
        plan = self._plan(new)
        if not await self._apply(self._keep_restart_only(new), plan):
            return
        self.counters.reloads += 1
        self.last_reload = {"ns": time.time_ns(), "ok": True, "problems": []}
        log.info(
            "reload_applied",
            added=list(plan.added),
            removed=list(plan.removed),
            restarted=list(plan.changed),
            unchanged=len(plan.unchanged),
            mqtt_renewed=plan.mqtt,
        )
        self.notifier.ready(self.summary_line())

    def _reload_failed(self, problems: list[str]) -> None:
        self.counters.failed_reloads += 1
        self.last_reload = {"ns": time.time_ns(), "ok": False, "problems": problems}
        log.error(
            "reload_failed",
            problems=problems,
            action="the running configuration stays in force",
        )
        self.notifier.ready("reload failed; " + self.summary_line())

    def _plan(self, new: GatewayConfig) -> _Plan:
        old_main, new_main = self.config.main, new.main
        needs_restart = []
        if new_main.store != old_main.store or new.store_path != self.config.store_path:
            needs_restart.append("store")
        if new_main.pipeline.queue_batches != old_main.pipeline.queue_batches:
            needs_restart.append("pipeline.queue_batches")
        if new.status_socket != self.config.status_socket:
            needs_restart.append("service.runtime_dir")
        # Settings every pipeline or supervisor was built with.
        every_tool = (
            new_main.gateway != old_main.gateway
            or new_main.mqtt.topic_prefix != old_main.mqtt.topic_prefix
            or new_main.mqtt.telemetry != old_main.mqtt.telemetry
            or new_main.pipeline.summary_window_s != old_main.pipeline.summary_window_s
            or new_main.reconnect != old_main.reconnect
        )
        old_tools = {tool_id: tool.config for tool_id, tool in self.tools.items()}
        new_tools = {tool.id: tool for tool in new.tools if tool.enabled}
        common = old_tools.keys() & new_tools.keys()
        changed = {t for t in common if every_tool or old_tools[t] != new_tools[t]}
        return _Plan(
            added=tuple(sorted(new_tools.keys() - old_tools.keys())),
            removed=tuple(sorted(old_tools.keys() - new_tools.keys())),
            changed=tuple(sorted(changed)),
            unchanged=tuple(sorted(common - changed)),
            mqtt=(
                new_main.mqtt != old_main.mqtt or new_main.gateway != old_main.gateway
            ),
            needs_restart=tuple(needs_restart),
        )

    def _keep_restart_only(self, new: GatewayConfig) -> GatewayConfig:
        """Return ``new`` with the settings that need a restart left as running."""
        old_main = self.config.main
        pipeline = new.main.pipeline.model_copy(
            update={"queue_batches": old_main.pipeline.queue_batches}
        )
        service = new.main.service.model_copy(
            update={"runtime_dir": old_main.service.runtime_dir}
        )
        main = new.main.model_copy(
            update={"store": old_main.store, "pipeline": pipeline, "service": service}
        )
        return new.model_copy(update={"main": main, "directory": self.config.directory})

    async def _apply(self, new: GatewayConfig, plan: _Plan) -> bool:
        """Apply ``plan``; False (old tools left running) if a tool cannot be built."""
        new_tools = {tool.id: tool for tool in new.tools}
        arriving = []
        for tool_id in (*plan.added, *plan.changed):
            try:
                arriving.append(self._build_tool(new_tools[tool_id], new.main))
            except Exception as exc:
                # A valid file may still name a model file that will not load, or
                # settings a driver refuses: nothing has been stopped yet.
                self._reload_failed([f"{tool_id}: {exc}"])
                return False
        if plan.needs_restart:
            log.warning(
                "reload_needs_restart",
                sections=list(plan.needs_restart),
                action="restart the service to apply these",
            )
        old_main = self.config.main
        leaving = [self.tools[t] for t in (*plan.removed, *plan.changed)]
        if leaving:
            await self._retire(leaving)
        self.config = new
        if new.main.logging != old_main.logging:
            configure_logging(new.main.logging)
        self._limits.warn_fraction = new.main.service.warn_fraction
        for tool in arriving:
            tool.pipeline.restore_state()  # the state its predecessor just saved
            self.tools[tool.config.id] = tool
            self._start_tool(tool)
        if plan.mqtt:
            await self._stop_publisher()
            self.publisher = self._build_publisher(new)
            self._start_publisher()
        if new.main.service.metrics_port != old_main.service.metrics_port:
            if self._metrics is not None:
                await self._metrics.close()
                self._metrics = None
            await self._start_metrics()
        return True

    async def _retire(self, tools: list[_Tool]) -> None:
        """Stop ``tools``, process what they queued, close and save their pipelines."""
        await self._stop_tools(tools)
        barrier = _Barrier()
        await self.queue.put(barrier)
        await barrier.passed.wait()
        for tool in tools:
            tool.pipeline.close_all()
            tool.pipeline.save_state()
            del self.tools[tool.config.id]
        # A restarted tool restores the state just saved: it must be committed.
        await asyncio.to_thread(self.store.flush)

    # ---------------------------------------------------------------- status

    def summary_line(self) -> str:
        """One line for ``systemctl status``: tools up, backlog, alerts."""
        up = sum(tool.supervisor.state == "up" for tool in self.tools.values())
        alerts = sum(len(t.pipeline.active_alerts()) for t in self.tools.values())
        backlog = "?"
        if self._figures is not None:
            backlog = str(sum(n for n, _ in self._figures[1].backlog.values()))
        mqtt = ""
        if self.publisher is not None:
            mqtt = ", mqtt " + ("up" if self.publisher.connected else "down")
        return (
            f"{up}/{len(self.tools)} tools up, backlog {backlog} messages, "
            f"{alerts} active alerts{mqtt}"
        )

    async def store_figures(self, max_age_s: float = FIGURES_MAX_AGE_S) -> StoreFigures:
        """Return the store's figures, read again when older than ``max_age_s``.

        Raises:
            StoreError: the store cannot be read.
        """
        now = time.monotonic()
        if self._figures is None or now - self._figures[0] > max_age_s:
            figures = await asyncio.to_thread(read_store_figures, self.store)
            self._figures = (now, figures)
        return self._figures[1]

    async def report(self) -> dict[str, Any]:
        """Return the status report of the running daemon (see gateway.report)."""
        figures = await self.store_figures()
        return build_report(
            self.config, self.status(), figures, running=True, source="daemon"
        )

    def status(self, stopped: bool = False) -> dict[str, Any]:
        """Return the live state: tools, pipeline, publisher (JSON-ready)."""
        tools = {}
        for tool_id, tool in self.tools.items():
            sup, pipeline = tool.supervisor, tool.pipeline
            stats = sup.driver.stats
            rate, bad_share = 0.0, 0.0
            deltas = tool.meter.deltas()
            if deltas is not None:
                seconds, (readings, bad) = deltas
                rate = readings / seconds
                bad_share = bad / readings if readings else 0.0
            tools[tool_id] = {
                "state": "stopped" if stopped else sup.state,
                "since_ns": sup.since_ns,
                "last_poll_ns": stats.last_poll_ns,
                "last_good_ns": tool.last_good_ns,
                "polls": stats.polls,
                "overruns": stats.overruns,
                "reconnects": sup.reconnects,
                "last_error": sup.last_error,
                "readings": pipeline.readings,
                "bad_readings": pipeline.bad_readings,
                "readings_per_s": round(rate, 3),
                "bad_share": round(bad_share, 4),
                "active_alerts": pipeline.active_alerts(),
                **_faults(sup.driver.tag_faults()),
            }
        publisher = self.publisher
        mqtt = None
        if publisher is not None:
            mqtt = dataclasses.asdict(publisher.stats)
            broker = self.config.main.mqtt
            mqtt["broker"] = f"{broker.host}:{broker.port}"
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
                "queue_limit": self.config.main.pipeline.queue_batches,
            },
            "mqtt": mqtt,
            "process": self._process_status(),
            "reloads": {
                "applied": self.counters.reloads,
                "failed": self.counters.failed_reloads,
                "last": self.last_reload,
            },
            "warnings": self._limits.near,
        }

    def _process_status(self) -> dict[str, Any]:
        figures: dict[str, Any] = dict(process_figures())
        deltas = self._cpu.deltas()
        figures["cpu_percent"] = (
            round(100.0 * deltas[1][0] / deltas[0], 1) if deltas else None
        )
        figures["memory_limit_bytes"] = (
            self.config.main.service.memory_limit_mb * _BYTES_PER_MB
        )
        return figures

    def _status_json(self, stopped: bool) -> bytes:
        return json.dumps(self.status(stopped)).encode()


def _faults(faults: dict[str, str]) -> dict[str, Any]:
    """The status fields of a tool's refused tags: the first few, and how many."""
    shown = dict(itertools.islice(faults.items(), STATUS_TAG_FAULTS))
    return {"tag_faults": shown, "tag_faults_total": len(faults)}


async def run_gateway(
    config: GatewayConfig,
    stop: asyncio.Event | None = None,
    loader: Callable[[Path], GatewayConfig] = load_config,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set).

    SIGHUP reloads the configuration folder with ``loader`` (module doc).
    Notifications go to ``$NOTIFY_SOCKET`` when systemd set it.

    Raises:
        StoreError: the store cannot be opened.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    early_reload = asyncio.Event()  # a SIGHUP while the store opens is kept
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, early_reload.set)
    notifier = Notifier()
    try:
        gateway = Gateway(config, notifier, loader)
        loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
        if early_reload.is_set():
            gateway.request_reload()
        await gateway.run(stop)
    finally:
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
