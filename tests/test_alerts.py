"""AlertEngine against a slow reference state machine, and specific scenarios."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.alerts import AlertEngine, AlertEvent
from gateway.config.models import AlertRule

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND

SCALED = AlertRule(raise_level=6.0, clear_level=3.0, critical_level=12.0)
RULE_SETS: dict[str, list[AlertRule]] = {
    # The streams' scores span 0..14, so the rule sets use levels of that scale.
    "default": [SCALED],
    "eager": [
        AlertRule(
            raise_level=5.0,
            clear_level=2.0,
            raise_after=1,
            clear_after=1,
            cooldown_s=0.0,
            critical_level=None,
            severity="info",
        )
    ],
    "cooldown": [
        AlertRule(
            raise_level=4.0,
            clear_level=4.0,
            raise_after=4,
            clear_after=2,
            cooldown_s=20.0,
            critical_level=9.0,
        )
    ],
    "mixed": [
        SCALED,
        AlertRule(raise_level=3.0, clear_level=1.0, raise_after=2, cooldown_s=5.0),
        AlertRule(raise_level=8.0, clear_level=8.0, clear_after=1, cooldown_s=0.0),
        SCALED.model_copy(
            update={"critical_level": None, "severity": "critical", "cooldown_s": 60.0}
        ),
    ],
}


def window_reference(history: Sequence[float]) -> dict[str, float]:
    """Return n, mean, population std, min and max of the finite values."""
    finite = [x for x in history if math.isfinite(x)]
    if not finite:
        return {
            "n": 0.0,
            "mean": math.nan,
            "std": math.nan,
            "min": math.nan,
            "max": math.nan,
        }
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((x - mean) ** 2 for x in finite) / len(finite))
    return {
        "n": float(len(finite)),
        "mean": mean,
        "std": std,
        "min": min(finite),
        "max": max(finite),
    }


def alerts_reference(
    tags: Sequence[str],
    rules: Sequence[AlertRule],
    timestamps: IntArray,
    values: FloatArray,
    scores: FloatArray,
    window: int,
) -> list[tuple[Any, ...]]:
    """Run the documented state machine per column per step in plain Python."""
    found: list[tuple[int, int, tuple[Any, ...]]] = []
    for j, (tag, rule) in enumerate(zip(tags, rules, strict=True)):
        critical_level = rule.critical_level or math.inf
        active = critical = False
        over = under = 0
        run_start = raised_at = 0
        run_peak = peak = 0.0
        blocked_until = -math.inf
        for t, ts in enumerate(timestamps.tolist()):
            s = float(scores[t, j])
            event = None
            if math.isnan(s):
                over = under = 0
            elif active:
                peak = max(peak, s)
                under = under + 1 if s < rule.clear_level else 0
                if under >= rule.clear_after:
                    event = ("cleared", raised_at, peak)
                    active, over, under = False, 0, 0
                    blocked_until = ts + round(rule.cooldown_s * SECOND)
            else:
                if s >= rule.raise_level:
                    if over == 0:
                        run_start, run_peak = ts, s
                    run_peak = max(run_peak, s)
                    over += 1
                else:
                    over = 0
                if over >= rule.raise_after and ts >= blocked_until:
                    critical = run_peak >= critical_level
                    event = ("raised", run_start, run_peak)
                    active, raised_at, peak, over, under = True, ts, run_peak, 0, 0
            if event is not None:
                state, started, peak_score = event
                history = values[max(0, t + 1 - window) : t + 1, j].tolist()
                row = (
                    tag,
                    state,
                    "critical" if critical else rule.severity,
                    ts,
                    started,
                    float(values[t, j]),
                    s,
                    peak_score,
                    rule.raise_level,
                    rule.clear_level,
                    window_reference(history),
                )
                found.append((t, j, row))
    return [row for _, _, row in sorted(found, key=lambda item: item[:2])]


def as_row(event: AlertEvent) -> tuple[Any, ...]:
    """Return an event's fields in the reference's order."""
    return (
        event.tag,
        event.state,
        event.severity,
        event.ts_ns,
        event.started_ns,
        event.value,
        event.score,
        event.peak_score,
        event.raise_level,
        event.clear_level,
        event.window,
    )


def nan_safe(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Replace NaN fields by a marker so rows compare equal when both are NaN."""
    return tuple("NaN" if isinstance(x, float) and math.isnan(x) else x for x in row)


def assert_rows_equal(
    got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]
) -> None:
    """Compare event rows exactly, and window statistics to 1e-9 relative."""
    assert [nan_safe(row[:-1]) for row in got] == [
        nan_safe(row[:-1]) for row in expected
    ]
    for a, b in zip(got, expected, strict=True):
        assert a[-1].keys() == b[-1].keys()
        for key in a[-1]:
            assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-9, nan_ok=True)


def make_streams(
    seed: int, steps: int, k: int
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Return jittered timestamps, messy values and bursty scores with NaN gaps."""
    rng = np.random.default_rng(seed)
    timestamps = T0 + np.cumsum(rng.integers(SECOND // 2, 2 * SECOND, steps))
    values = rng.normal(20.0, 3.0, (steps, k))
    values[rng.random((steps, k)) < 0.05] = np.nan
    values[rng.random((steps, k)) < 0.01] = np.inf

    high = np.zeros((steps, k), dtype=bool)
    for j in range(k):
        t, level = 0, False
        while t < steps:
            length = int(rng.integers(1, 15))
            high[t : t + length, j] = level
            t, level = t + length, not level
    scores = np.where(
        high, rng.uniform(3.0, 14.0, (steps, k)), rng.uniform(0, 4, (steps, k))
    )
    for j in range(k):
        for _ in range(3):
            start = int(rng.integers(0, steps))
            scores[start : start + int(rng.integers(1, 6)), j] = np.nan
    scores[rng.random((steps, k)) < 0.02] = np.nan
    return timestamps, values, scores


def rules_for(name: str, k: int) -> list[AlertRule]:
    """Return ``k`` rules cycling through a named rule set."""
    return list(itertools.islice(itertools.cycle(RULE_SETS[name]), k))


def run_in_chunks(
    engine: AlertEngine,
    timestamps: IntArray,
    values: FloatArray,
    scores: FloatArray,
    cuts: Sequence[int],
) -> list[AlertEvent]:
    """Feed the streams split at row indices ``cuts``; return all events."""
    events: list[AlertEvent] = []
    for a, b in itertools.pairwise([0, *cuts, len(timestamps)]):
        events += engine.update(timestamps[a:b], values[a:b], scores[a:b])
    return events


@pytest.mark.parametrize("rule_set", sorted(RULE_SETS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(rule_set: str, seed: int) -> None:
    """Engine events equal the reference state machine's on bursty streams."""
    k, window = 8, 7
    tags = [f"tag{j}" for j in range(k)]
    rules = rules_for(rule_set, k)
    timestamps, values, scores = make_streams(seed, 500, k)
    engine = AlertEngine("etch-07", "ewma", tags, rules, window=window)
    events = run_in_chunks(engine, timestamps, values, scores, [3, 4, 100, 250])

    expected = alerts_reference(tags, rules, timestamps, values, scores, window)
    assert len(expected) > 10
    assert_rows_equal([as_row(e) for e in events], expected)
    assert all(e.tool == "etch-07" and e.model == "ewma" for e in events)


@pytest.mark.parametrize("rule_set", sorted(RULE_SETS))
def test_chunking_invariance(rule_set: str) -> None:
    """Events are the same whether a stream comes in one batch or many."""
    k = 6
    tags = [f"t{j}" for j in range(k)]
    timestamps, values, scores = make_streams(7, 400, k)
    whole = AlertEngine("tool", "ewma", tags, rules_for(rule_set, k)).update(
        timestamps, values, scores
    )
    cuts = sorted(np.random.default_rng(8).choice(np.arange(1, 400), 60, replace=False))
    chunked = run_in_chunks(
        AlertEngine("tool", "ewma", tags, rules_for(rule_set, k)),
        timestamps,
        values,
        scores,
        [int(c) for c in cuts],
    )
    assert_rows_equal([as_row(e) for e in chunked], [as_row(e) for e in whole])


def test_state_restore_midstream() -> None:
    """An engine restored from a mid-stream state emits what the original would."""
    k = 6
    tags = [f"t{j}" for j in range(k)]
    timestamps, values, scores = make_streams(9, 400, k)
    original = AlertEngine("tool", "ewma", tags, rules_for("mixed", k), window=10)
    original.update(timestamps[:177], values[:177], scores[:177])
    saved = original.state()
    expected = original.update(timestamps[177:], values[177:], scores[177:])

    restored = AlertEngine("tool", "ewma", tags, rules_for("mixed", k), window=10)
    restored.restore(saved)
    got = restored.update(timestamps[177:], values[177:], scores[177:])
    assert_rows_equal([as_row(e) for e in got], [as_row(e) for e in expected])
    np.testing.assert_array_equal(restored.active, original.active)


def test_restore_rejects_misfit_state() -> None:
    """A state for another number of columns, or missing a key, raises ValueError."""
    engine = AlertEngine("tool", "ewma", ["a", "b"], [AlertRule()] * 2)
    other = AlertEngine("tool", "ewma", ["a"], [AlertRule()]).state()
    with pytest.raises(ValueError, match="does not fit 2 columns"):
        engine.restore(other)
    partial = engine.state()
    del partial["over"]
    with pytest.raises(ValueError, match="lacks over"):
        engine.restore(partial)


def test_restore_adapts_window_length() -> None:
    """A saved window of another length keeps its newest rows."""
    small = AlertEngine("tool", "ewma", ["a"], [AlertRule()], window=3)
    big = AlertEngine("tool", "ewma", ["a"], [AlertRule()], window=5)
    big.update(T0 + np.arange(5), np.arange(5.0)[:, None], np.zeros((5, 1)))
    small.restore(big.state())
    np.testing.assert_array_equal(small.state()["window"][:, 0], [2.0, 3.0, 4.0])


def one_column(
    scores: Sequence[float], rule: AlertRule, step_s: float = 1.0
) -> list[AlertEvent]:
    """Run one column of scores at ``step_s`` spacing; return its events."""
    n = len(scores)
    timestamps = T0 + np.arange(n, dtype=np.int64) * round(step_s * SECOND)
    engine = AlertEngine("tool", "ewma", ["temp"], [rule])
    return engine.update(
        timestamps, np.arange(n, dtype=np.float64)[:, None], np.array(scores)[:, None]
    )


def test_raises_after_exactly_raise_after() -> None:
    """The alert is raised on the raise_after-th consecutive reading at the level."""
    rule = AlertRule(raise_level=5.0, raise_after=3)
    events = one_column([5.0, 6.0, 1.0, 5.0, 5.0, 7.0, 7.0], rule)
    assert [(e.state, e.ts_ns - T0) for e in events] == [("raised", 5 * SECOND)]
    assert events[0].started_ns == T0 + 3 * SECOND
    assert events[0].peak_score == 7.0
    assert events[0].value == 5.0


def test_clears_after_exactly_clear_after() -> None:
    """The alert clears on the clear_after-th consecutive reading under the level."""
    rule = AlertRule(raise_level=5.0, clear_level=2.0, raise_after=1, clear_after=3)
    events = one_column([9.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0], rule)
    assert [(e.state, e.ts_ns - T0) for e in events] == [
        ("raised", 0),
        ("cleared", 6 * SECOND),
    ]
    assert events[1].started_ns == T0
    assert events[1].peak_score == 9.0


def test_nan_breaks_runs() -> None:
    """A NaN score resets the run, so readings either side of it do not add up."""
    rule = AlertRule(raise_level=5.0, raise_after=3)
    assert one_column([6.0, 6.0, math.nan, 6.0, 6.0], rule) == []
    raised = one_column([6.0, 6.0, math.nan, 6.0, 6.0, 6.0], rule)
    assert [e.started_ns - T0 for e in raised] == [3 * SECOND]


def test_cooldown_blocks_reraise() -> None:
    """After a clear, a long enough run raises only once the cooldown has passed."""
    rule = AlertRule(
        raise_level=5.0, clear_level=2.0, raise_after=2, clear_after=1, cooldown_s=5.0
    )
    scores = [6.0, 6.0, 1.0] + [6.0] * 8
    events = one_column(scores, rule)
    assert [(e.state, (e.ts_ns - T0) // SECOND) for e in events] == [
        ("raised", 1),
        ("cleared", 2),
        ("raised", 7),
    ]
    assert events[2].started_ns == T0 + 3 * SECOND


def test_cooldown_zero_allows_immediate_reraise() -> None:
    """With no cooldown a fresh run raises as soon as it is long enough."""
    rule = AlertRule(
        raise_level=5.0, clear_level=2.0, raise_after=1, clear_after=1, cooldown_s=0.0
    )
    events = one_column([6.0, 1.0, 6.0], rule)
    assert [e.state for e in events] == ["raised", "cleared", "raised"]


def test_severity_critical_when_run_reaches_critical_level() -> None:
    """A raising run that reached critical_level makes the alert critical."""
    rule = AlertRule(
        raise_level=5.0,
        clear_level=2.0,
        raise_after=3,
        clear_after=1,
        critical_level=10.0,
        cooldown_s=0.0,
    )
    events = one_column([12.0, 6.0, 6.0, 1.0, 6.0, 6.0, 6.0, 20.0, 1.0], rule)
    assert [(e.state, e.severity) for e in events] == [
        ("raised", "critical"),
        ("cleared", "critical"),
        ("raised", "warning"),
        ("cleared", "warning"),
    ]
    assert events[3].peak_score == 20.0


def test_severity_without_critical_level_is_the_rules() -> None:
    """Without a critical level the rule's severity is used, however high the score."""
    rule = AlertRule(raise_after=1, critical_level=None, severity="info")
    assert [e.severity for e in one_column([1e9], rule)] == ["info"]


def test_window_statistics_cover_previous_batches() -> None:
    """An alert's window holds the last values across batches, ignoring NaN."""
    engine = AlertEngine("tool", "ewma", ["a"], [AlertRule(raise_after=1)], window=4)
    engine.update(
        T0 + np.arange(3), np.array([[1.0], [np.nan], [3.0]]), np.zeros((3, 1))
    )
    (event,) = engine.update(np.array([T0 + 3]), np.array([[5.0]]), np.array([[7.0]]))
    assert event.window == pytest.approx(
        {"n": 3.0, "mean": 3.0, "std": math.sqrt(8 / 3), "min": 1.0, "max": 5.0}
    )


def test_active_alerts_and_mask() -> None:
    """Active alerts are listed with their severity and shown in the mask."""
    rules = [
        AlertRule(raise_after=1, critical_level=12.0),
        AlertRule(raise_after=1, severity="info"),
    ]
    engine = AlertEngine("tool", "ewma", ["a", "b"], rules)
    engine.update(np.array([T0]), np.zeros((1, 2)), np.array([[13.0, 7.0]]))
    assert engine.active_alerts() == [("a", "critical"), ("b", "info")]
    np.testing.assert_array_equal(engine.active, [True, True])


def test_quiet_batches_change_nothing() -> None:
    """Batches with every score under the raise levels leave the state as it was."""
    engine = AlertEngine("tool", "ewma", ["a", "b"], [AlertRule()] * 2)
    before = engine.state()
    scores = np.array([[0.2, np.nan], [0.99, 0.0]])
    assert engine.update(T0 + np.arange(2), np.zeros((2, 2)), scores) == []
    after = engine.state()
    for key in before:
        if key != "window":
            np.testing.assert_array_equal(after[key], before[key])


def test_rejects_mismatched_shapes_and_rules() -> None:
    """Wrong shapes, a rule count unlike the tag count or a zero window raise."""
    engine = AlertEngine("tool", "ewma", ["a", "b"], [AlertRule()] * 2)
    with pytest.raises(ValueError, match="must both be"):
        engine.update(np.array([T0]), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="1 alert rules given for 2 tags"):
        AlertEngine("tool", "ewma", ["a", "b"], [AlertRule()])
    with pytest.raises(ValueError, match="window"):
        AlertEngine("tool", "ewma", ["a"], [AlertRule()], window=0)
