"""The per-batch pipeline: validation, scaling, scoring, alerts, summaries, store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.batch import (
    BAD_COMM,
    BAD_NOT_A_NUMBER,
    BAD_OUT_OF_RANGE,
    GOOD,
    ReadingBatch,
)
from drivers.signals import SignalSpec
from drivers.simulated import SimulatedSettings
from edge_models.ewma import EwmaParams
from gateway.config.models import (
    AlertRule,
    GatewayIdentity,
    PollGroupConfig,
    StoreConfig,
    TagConfig,
    ToolConfig,
)
from gateway.pipeline import ToolPipeline
from gateway.store import PRIORITY_ALERT, PRIORITY_SUMMARY, PRIORITY_TELEMETRY, Store

NS = 1_000_000_000
T0 = 1_699_999_200 * NS  # on a whole hour, so on a whole window too
STEP_NS = NS // 10
RULE = AlertRule(raise_after=2, clear_after=2, cooldown_s=0.0)
WARMUP = 10


def make_tool(telemetry: bool = False) -> ToolConfig:
    """Return a tool with two scaled, limited tags scored by EWMA."""
    tags = (
        TagConfig(
            name="pressure",
            unit="mTorr",
            scorers=("ewma",),
            scale=0.5,
            offset=10.0,
            limits=(0.0, 100.0),
            alerts=RULE,
            telemetry=telemetry,
            source=SignalSpec(level=80.0),
        ),
        TagConfig(
            name="flow",
            unit="sccm",
            scorers=("ewma",),
            alerts=RULE,
            source=SignalSpec(level=5.0),
        ),
    )
    return ToolConfig(
        id="etch-01",
        driver=SimulatedSettings(kind="simulated"),
        scorers={"ewma": EwmaParams(warmup=WARMUP)},
        poll_groups=(
            PollGroupConfig(name="fast", interval_s=0.1, tags=("pressure", "flow")),
        ),
        tags=tags,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store, closed after the test."""
    opened = Store.open(tmp_path / "gateway.db", StoreConfig(commit_interval_ms=10))
    yield opened
    opened.close()


def make_pipeline(store: Store, telemetry: bool = False) -> ToolPipeline:
    return ToolPipeline(
        make_tool(telemetry),
        GatewayIdentity(site="fab", id="gw"),
        "edge",
        store,
        summary_window_s=1.0,
        telemetry=telemetry,
    )


def batch(
    start_step: int,
    raw: np.ndarray,
    quality: np.ndarray | None = None,
    group: str = "fast",
) -> ReadingBatch:
    """Return a batch of ``raw`` (steps, 2) values taken every 100 ms."""
    steps = raw.shape[0]
    return ReadingBatch(
        tool="etch-01",
        group=group,
        timestamps=T0 + (start_step + np.arange(steps, dtype=np.int64)) * STEP_NS,
        tags=np.array([0, 1], dtype=np.int32),
        values=raw.astype(np.float64),
        quality=np.zeros(raw.shape, np.uint8) if quality is None else quality,
    )


def noisy(steps: int, seed: int = 1) -> np.ndarray:
    """Raw values near 80 (pressure raw) and 5 (flow) with small noise."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [80.0 + rng.normal(0, 0.2, steps), 5.0 + rng.normal(0, 0.05, steps)]
    )


def outbox(store: Store, priority: int) -> list[dict[str, Any]]:
    store.flush()
    rows = store.pending_messages(limit=10_000)
    return [json.loads(r.payload) for r in rows if r.priority == priority]


def test_values_are_scaled_and_invalid_readings_marked_bad(store: Store) -> None:
    """Stored values are raw*scale+offset; NaN and out-of-limit readings turn bad."""
    raw = np.array([[80.0, 5.0], [np.nan, 5.0], [300.0, np.inf], [-100.0, 4.0]])
    quality = np.array([[GOOD, GOOD], [GOOD, GOOD], [GOOD, GOOD], [BAD_COMM, GOOD]])
    pipeline = make_pipeline(store)
    pipeline.process(batch(0, raw, quality.astype(np.uint8)))
    store.flush()

    _, tags, values, stored = store.read_readings("etch-01")
    values, stored = values.reshape(4, 2), stored.reshape(4, 2)
    assert tags.tolist() == [0, 1] * 4
    assert values[0].tolist() == [50.0, 5.0]
    assert values[2, 0] == 160.0  # 300 * 0.5 + 10, kept as read
    assert stored[:, 0].tolist() == [GOOD, BAD_NOT_A_NUMBER, BAD_OUT_OF_RANGE, BAD_COMM]
    assert stored[:, 1].tolist() == [GOOD, GOOD, BAD_NOT_A_NUMBER, GOOD]
    assert pipeline.bad_readings == 4


def test_a_spike_raises_and_clears_an_alert_in_store_and_outbox(store: Store) -> None:
    """A sustained spike gives one raise then one clear, stored and queued."""
    raw = noisy(60)
    raw[30:34, 0] += 60.0  # 30 mTorr after scaling: far above the noise
    pipeline = make_pipeline(store)
    pipeline.process(batch(0, raw))

    alerts = outbox(store, PRIORITY_ALERT)
    assert [(a["tag"], a["state"]) for a in alerts] == [
        ("pressure", "raised"),
        ("pressure", "cleared"),
    ]
    raised = alerts[0]
    assert raised["unit"] == "mTorr"
    assert raised["value"] == pytest.approx(raw[31, 0] * 0.5 + 10.0)
    history = store.alert_history("etch-01")
    assert [(r.tag, r.state) for r in history] == [
        ("pressure", "raised"),
        ("pressure", "cleared"),
    ]
    assert pipeline.active_alerts() == []


def test_alert_topic_follows_the_tree(store: Store) -> None:
    """Alerts go to <prefix>/<site>/<gateway>/<tool>/alert."""
    raw = noisy(40)
    raw[25:28, 0] += 60.0
    make_pipeline(store).process(batch(0, raw))
    store.flush()
    topics = {r.topic for r in store.pending_messages(limit=100)}
    assert "edge/fab/gw/etch-01/alert" in topics


def test_closed_windows_become_summaries_and_hourly_rollups(store: Store) -> None:
    """Each closed 1 s window is one summary message and merges into the hour."""
    raw = noisy(25)
    pipeline = make_pipeline(store)
    pipeline.process(batch(0, raw))  # 2.5 s: closes windows 0 and 1
    summaries = outbox(store, PRIORITY_SUMMARY)
    assert len(summaries) == 2
    first = summaries[0]["tags"]["pressure"]
    expected = raw[:10, 0] * 0.5 + 10.0
    assert first["count"] == 10
    assert first["mean"] == pytest.approx(expected.mean())
    assert first["std"] == pytest.approx(expected.std())
    assert first["max"] == pytest.approx(expected.max())

    pipeline.close_all()
    store.flush()
    rollups = {r.tag: r for r in store.rollups("etch-01")}
    assert rollups["pressure"].count == 25
    assert rollups["pressure"].hour_ns == T0
    assert rollups["flow"].mean == pytest.approx(raw[:, 1].mean())


def test_telemetry_sends_only_marked_tags(store: Store) -> None:
    """With telemetry on, each batch queues the raw readings of marked tags."""
    raw = noisy(3)
    make_pipeline(store, telemetry=True).process(batch(0, raw))
    (message,) = outbox(store, PRIORITY_TELEMETRY)
    assert message["tags"] == ["pressure"]
    assert len(message["values"]) == 3
    assert message["values"][0][0] == pytest.approx(raw[0, 0] * 0.5 + 10.0)


def test_a_batch_from_an_unknown_group_is_refused(store: Store) -> None:
    """A batch whose group or columns do not match the tool's plan raises ValueError."""
    pipeline = make_pipeline(store)
    with pytest.raises(ValueError, match="does not match"):
        pipeline.process(batch(0, noisy(2), group="slow"))


def test_model_state_survives_a_restart(store: Store) -> None:
    """A pipeline restored from saved state scores exactly as the original would."""
    raw = noisy(80)
    original = make_pipeline(store)
    original.process(batch(0, raw[:40]))
    original.save_state()
    store.flush()

    restored = make_pipeline(store)
    assert restored.restore_state() == 2  # scorer and alert engine
    fresh = make_pipeline(store)

    def last_scores(pipeline: ToolPipeline) -> np.ndarray:
        plan = next(iter(pipeline._plans.values()))
        return plan.detector._parts[0].scorer.score(
            raw[40:] * [0.5, 1.0] + [10.0, 0.0], np.ones((40, 2), bool)
        )

    continued = last_scores(original)
    np.testing.assert_array_equal(last_scores(restored), continued)
    assert not np.array_equal(last_scores(fresh), continued)
