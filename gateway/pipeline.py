"""The per-batch path: validate, scale, score, alert, summarise, store, enqueue.

Everything here works on whole columns. A :class:`ToolPipeline` holds, per poll
group, the arrays that turn raw values into engineering values (scale, offset,
limits), the scorers and alert engines over the group's columns, and the summary
accumulator. Results go to the store: the readings block, alert history, hourly
roll-ups, and the outbox messages the publisher forwards.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from drivers.base import Driver, DriverSettings, EquipmentEvent, PollGroup
from drivers.batch import (
    BAD_NOT_A_NUMBER,
    BAD_OUT_OF_RANGE,
    ReadingBatch,
    is_good,
)
from gateway.alerts import AlertEvent
from gateway.config.models import GatewayIdentity, ToolConfig
from gateway.detector import Detector, Stateful, plan_models
from gateway.payloads import (
    EQUIPMENT_ALARM_MODEL,
    alarm_alert_payload,
    alert_payload,
    event_payload,
    summary_payload,
    telemetry_payload,
)
from gateway.publish.topics import tool_topic
from gateway.store import (
    PRIORITY_ALERT,
    PRIORITY_EVENT,
    PRIORITY_SUMMARY,
    PRIORITY_TELEMETRY,
    OutboxMessage,
    RollupColumns,
    Store,
)
from gateway.summaries import SummaryAccumulator, WindowSummary

__all__ = ["ToolPipeline", "poll_groups", "tool_driver"]

log = structlog.get_logger(__name__)

_NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3600 * _NS_PER_S
_STATE_DIGEST_CHARS = 16


def poll_groups(tool: ToolConfig) -> tuple[PollGroup, ...]:
    """Return the tool's poll groups with their tags as indices into ``tool.tags``."""
    index = {tag.name: i for i, tag in enumerate(tool.tags)}
    return tuple(
        PollGroup(
            name=group.name,
            interval_s=group.interval_s,
            tags=tuple(index[name] for name in group.tags),
            mode=group.mode,
        )
        for group in tool.poll_groups
    )


AnyDriver = TypeVar("AnyDriver", bound=Driver)


def tool_driver(
    cls: type[AnyDriver], tool: ToolConfig, settings: DriverSettings | None = None
) -> AnyDriver:
    """Return a ``cls`` session for ``tool``: its tags, sources and poll groups.

    ``settings`` stands in for the tool's own ``[driver]`` table (with the
    state directory's certificates filled in, or another port).
    """
    return cls(
        tool.id,
        tool.driver if settings is None else settings,
        [tag.name for tag in tool.tags],
        [tag.source for tag in tool.tags],
        poll_groups(tool),
    )


@dataclass(slots=True)
class _GroupPlan:
    group: PollGroup
    tags: npt.NDArray[np.int32]
    names: tuple[str, ...]
    units: tuple[str, ...]
    unit_of: dict[str, str]
    scale: npt.NDArray[np.float64]
    offset: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    telemetry: npt.NDArray[np.intp]
    detector: Detector
    summaries: SummaryAccumulator


class ToolPipeline:
    """Process one tool's batches; see the module doc for the steps."""

    def __init__(
        self,
        tool: ToolConfig,
        identity: GatewayIdentity,
        topic_prefix: str,
        store: Store,
        summary_window_s: float,
        telemetry: bool,
    ) -> None:
        self.tool = tool
        self.identity = identity
        self.store = store
        self.telemetry = telemetry
        self.readings = 0
        self.alert_events = 0
        """Alert transitions (raised and cleared) emitted so far."""
        self.bad_readings = 0
        self._topics = {
            kind: tool_topic(topic_prefix, identity.site, identity.id, tool.id, kind)
            for kind in ("alert", "event", "summary", "telemetry")
        }
        self._alarms: dict[int, int] = {}  # set equipment alarms: ALID -> set at, ns
        self._plans = {
            group.name: self._plan(group, summary_window_s)
            for group in poll_groups(tool)
        }

    def _plan(self, group: PollGroup, summary_window_s: float) -> _GroupPlan:
        tags = [self.tool.tags[i] for i in group.tags]
        limits = [tag.limits or (-np.inf, np.inf) for tag in tags]
        detector = Detector(
            self.tool.id,
            [tag.name for tag in tags],
            [tag.alerts for tag in tags],
            self.tool.alerts,
            plan_models(self.tool, group.name),
            self.tool.fit_rows,
        )
        return _GroupPlan(
            group=group,
            tags=group.tag_index,
            names=tuple(tag.name for tag in tags),
            units=tuple(tag.unit for tag in tags),
            unit_of={tag.name: tag.unit for tag in tags},
            scale=np.array([tag.scale for tag in tags]),
            offset=np.array([tag.offset for tag in tags]),
            low=np.array([low for low, _ in limits]),
            high=np.array([high for _, high in limits]),
            telemetry=np.flatnonzero([tag.telemetry for tag in tags]),
            detector=detector,
            summaries=SummaryAccumulator(len(tags), summary_window_s),
        )

    @property
    def groups(self) -> tuple[PollGroup, ...]:
        """The poll groups this pipeline expects batches for."""
        return tuple(plan.group for plan in self._plans.values())

    def process(self, batch: ReadingBatch) -> None:
        """Run one batch through every step; raise ``ValueError`` if it does not fit.

        A batch fits when it comes from one of the tool's poll groups and has
        exactly that group's columns, in order.
        """
        plan = self._plans.get(batch.group)
        if plan is None or not np.array_equal(batch.tags, plan.tags):
            raise ValueError(
                f"batch {batch.tool}/{batch.group} does not match the tool's "
                "poll groups"
            )

        values = batch.values * plan.scale
        values += plan.offset
        quality = self._validate(values, batch.quality, plan)
        good = is_good(quality)
        scores = self._score(plan, batch.timestamps, values, good)

        self.store.put_readings(
            self.tool.id, plan.group.name, batch.timestamps, plan.tags, values, quality
        )
        closed = plan.summaries.add(batch.timestamps, values, good, scores)
        self._emit_summaries(plan, closed)
        if self.telemetry and plan.telemetry.size:
            self._emit_telemetry(plan, batch.timestamps, values, quality)
        self.readings += batch.size
        self.bad_readings += int(batch.size - np.count_nonzero(good))

    def process_event(self, event: EquipmentEvent) -> None:
        """Store and forward an equipment event; an alarm also raises or clears one.

        A set alarm is an active alert of model ``equipment_alarm`` until the tool
        clears it. A clear of an alarm the gateway never saw set still clears (the
        tool's word wins), timed from the clear itself.
        """
        site, gateway = self.identity.site, self.identity.id
        payload = event_payload(site, gateway, event)
        self.store.put_event(
            event.tool, event.name or str(event.code), event.ts_ns, payload
        )
        self.store.put_message(
            OutboxMessage(PRIORITY_EVENT, self._topics["event"], payload)
        )
        if event.kind != "alarm" or not event.state:
            return
        if event.state == "set":
            started_ns = self._alarms.setdefault(event.code, event.ts_ns)
        else:
            started_ns = self._alarms.pop(event.code, event.ts_ns)
        alert = alarm_alert_payload(site, gateway, event, started_ns)
        state = "raised" if event.state == "set" else "cleared"
        tag = f"ALID {event.code}"
        severity = event.severity or "warning"
        self.store.put_alert(
            event.tool, tag, EQUIPMENT_ALARM_MODEL, state, severity, event.ts_ns, alert
        )
        self.store.put_message(
            OutboxMessage(PRIORITY_ALERT, self._topics["alert"], alert)
        )
        log.info(
            "alarm_" + event.state,
            tool=event.tool,
            alid=event.code,
            text=event.name,
            severity=severity,
        )

    def _validate(
        self,
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        plan: _GroupPlan,
    ) -> npt.NDArray[np.uint8]:
        good = is_good(quality)
        not_finite = good & ~np.isfinite(values)
        out_of_range = good & ((values < plan.low) | (values > plan.high))
        if not (not_finite.any() or out_of_range.any()):
            return quality
        quality = quality.copy()
        quality[out_of_range] = BAD_OUT_OF_RANGE
        quality[not_finite] = BAD_NOT_A_NUMBER
        return quality

    def _score(
        self,
        plan: _GroupPlan,
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        good: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.float64]:
        """Return the highest univariate score per cell (NaN where unscored)."""
        detection = plan.detector.process(timestamps, values, good)
        self._emit_alerts(plan, detection.events)
        return detection.scores

    def _emit_alerts(self, plan: _GroupPlan, events: Sequence[AlertEvent]) -> None:
        site, gateway = self.identity.site, self.identity.id
        self.alert_events += len(events)
        for event in events:
            # A multivariate model's alert names the model; its score has no unit.
            unit = plan.unit_of.get(event.tag, "")
            payload = alert_payload(site, gateway, event, unit)
            self.store.put_alert(
                event.tool,
                event.tag,
                event.model,
                event.state,
                event.severity,
                event.ts_ns,
                payload,
            )
            self.store.put_message(
                OutboxMessage(PRIORITY_ALERT, self._topics["alert"], payload)
            )
            log.info(
                "alert_" + event.state,
                tool=event.tool,
                tag=event.tag,
                model=event.model,
                severity=event.severity,
                score=round(event.score, 3),
                value=event.value,
            )

    def _emit_summaries(
        self, plan: _GroupPlan, closed: Sequence[WindowSummary]
    ) -> None:
        site, gateway = self.identity.site, self.identity.id
        for summary in closed:
            payload = summary_payload(
                site,
                gateway,
                self.tool.id,
                plan.group.name,
                plan.names,
                plan.units,
                summary,
            )
            self.store.put_message(
                OutboxMessage(PRIORITY_SUMMARY, self._topics["summary"], payload)
            )
            self._roll_up(plan, summary)

    def _roll_up(self, plan: _GroupPlan, summary: WindowSummary) -> None:
        seen = np.flatnonzero(summary.count + summary.bad)
        if not seen.size:
            return
        rollups = RollupColumns(
            tool=self.tool.id,
            hour_ns=summary.start_ns - summary.start_ns % _NS_PER_HOUR,
            tags=plan.names,
            count=summary.count,
            minimum=summary.minimum,
            maximum=summary.maximum,
            mean=summary.mean,
            m2=summary.m2,
            last=summary.last,
            last_ns=summary.last_ns,
            bad=summary.bad,
            max_score=summary.max_score,
        )
        if seen.size < summary.k:  # tags with no reading in the window stay out
            rollups = rollups.take(seen)
        self.store.put_rollups(rollups)

    def _emit_telemetry(
        self,
        plan: _GroupPlan,
        timestamps: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
    ) -> None:
        columns = plan.telemetry
        payload = telemetry_payload(
            self.identity.site,
            self.identity.id,
            self.tool.id,
            plan.group.name,
            [plan.names[c] for c in columns],
            timestamps,
            values[:, columns],
            quality[:, columns],
        )
        self.store.put_message(
            OutboxMessage(PRIORITY_TELEMETRY, self._topics["telemetry"], payload)
        )

    def close_due(self, now_ns: int, grace_s: float) -> None:
        """Close and emit summary windows that ended ``grace_s`` before ``now_ns``."""
        grace_ns = int(grace_s * _NS_PER_S)
        for plan in self._plans.values():
            self._emit_summaries(plan, plan.summaries.close_due(now_ns, grace_ns))

    def close_all(self) -> None:
        """Emit every open summary window now (used at shutdown)."""
        for plan in self._plans.values():
            self._emit_summaries(plan, plan.summaries.flush())

    # Model state: saved to the store so a restart resumes where it left off.

    def save_state(self) -> None:
        """Write every scorer's and alert engine's state to the store."""
        for key, holder in self._stateful():
            state = holder.state()
            if not state:
                continue
            buffer = io.BytesIO()
            np.savez(buffer, allow_pickle=False, **state)
            self.store.put_state(key, buffer.getvalue())

    def restore_state(self) -> int:
        """Load saved states that fit the current configuration; return how many."""
        restored = 0
        for key, holder in self._stateful():
            blob = self.store.get_state(key)
            if blob is None:
                continue
            try:
                with np.load(io.BytesIO(blob), allow_pickle=False) as saved:
                    holder.restore({name: saved[name] for name in saved.files})
            except (ValueError, KeyError, OSError) as exc:
                log.info("model_state_discarded", key=key, reason=str(exc))
                continue
            restored += 1
        return restored

    def _stateful(self) -> Iterator[tuple[str, Stateful]]:
        for plan in self._plans.values():
            prefix = f"model/{self.tool.id}/{plan.group.name}"
            yield from plan.detector.stateful(prefix)

    def active_alerts(self) -> list[dict[str, str]]:
        """Return the tool's active alerts as ``{tag, model}`` entries."""
        alarms = [
            {"tag": f"ALID {code}", "model": EQUIPMENT_ALARM_MODEL}
            for code in sorted(self._alarms)
        ]
        return [
            alert
            for plan in self._plans.values()
            for alert in plan.detector.active_alerts()
        ] + alarms
