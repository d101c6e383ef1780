"""Window summaries against naive per-window numpy, and their merging."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.summaries import (
    NO_TIMESTAMP_NS,
    SummaryAccumulator,
    WindowSummary,
    merge,
    summarise,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
WINDOW_S = 10.0
WINDOW_NS = round(WINDOW_S * SECOND)

Stream = tuple[IntArray, FloatArray, BoolArray, FloatArray]


def summary_reference(
    timestamps: IntArray,
    values: FloatArray,
    good_mask: BoolArray,
    scores: FloatArray,
) -> dict[str, npt.NDArray[Any]]:
    """Summarise rows column by column with obvious numpy calls."""
    k = values.shape[1]
    out: dict[str, list[float]] = {
        name: []
        for name in (
            "count",
            "minimum",
            "maximum",
            "mean",
            "std",
            "last",
            "last_ns",
            "bad",
            "max_score",
            "m2",
        )
    }
    for j in range(k):
        good = good_mask[:, j] & np.isfinite(values[:, j])
        x = values[good, j]
        scored = [s for s in scores[:, j].tolist() if not math.isnan(s)]
        out["count"].append(len(x))
        out["bad"].append(len(good) - len(x))
        out["max_score"].append(max(scored) if scored else math.nan)
        if len(x):
            out["minimum"].append(x.min())
            out["maximum"].append(x.max())
            out["mean"].append(x.mean())
            out["std"].append(x.std())
            out["m2"].append(((x - x.mean()) ** 2).sum())
            out["last"].append(x[-1])
            out["last_ns"].append(timestamps[good][-1])
        else:
            for name in ("minimum", "maximum", "mean", "std", "last"):
                out[name].append(math.nan)
            out["m2"].append(0.0)
            out["last_ns"].append(NO_TIMESTAMP_NS)
    return {name: np.array(column) for name, column in out.items()}


def assert_summary(got: WindowSummary, expected: dict[str, npt.NDArray[Any]]) -> None:
    """Compare integer fields exactly and float fields to 1e-12 relative."""
    for name in ("count", "last_ns", "bad"):
        np.testing.assert_array_equal(getattr(got, name), expected[name], name)
    for name in ("minimum", "maximum", "mean", "last", "max_score"):
        np.testing.assert_allclose(
            getattr(got, name), expected[name], rtol=1e-12, equal_nan=True, err_msg=name
        )
    for name in ("std", "m2"):
        np.testing.assert_allclose(
            getattr(got, name),
            expected[name],
            rtol=1e-9,
            atol=1e-9,
            equal_nan=True,
            err_msg=name,
        )


def make_stream(seed: int, steps: int, k: int) -> Stream:
    """Return time-ordered rows with gaps, bad cells, NaN, inf and NaN scores."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([SECOND // 3, SECOND, 25 * SECOND], steps, p=[0.6, 0.37, 0.03])
    timestamps = T0 + np.cumsum(gaps).astype(np.int64)
    values = 400.0 + rng.normal(0.0, 0.01, (steps, k))  # large mean, small spread
    values[rng.random((steps, k)) < 0.05] = np.nan
    values[rng.random((steps, k)) < 0.02] = np.inf
    good = rng.random((steps, k)) > 0.1
    good[:, 0] = False  # a tag that is never good
    good[steps // 3 : steps // 2, 1] = False  # a tag bad for a few windows
    good[rng.random(steps) < 0.05, :] = False  # whole rows lost, as in a dropout
    scores = rng.exponential(1.0, (steps, k))
    scores[rng.random((steps, k)) < 0.3] = np.nan
    scores[:, 2] = np.nan  # a tag never scored
    return timestamps, values, good, scores


def reference_windows(
    stream: Stream,
) -> list[tuple[int, dict[str, npt.NDArray[Any]]]]:
    """Return ``(start_ns, reference)`` of every window that has rows."""
    index = stream[0] // WINDOW_NS
    return [
        (int(w) * WINDOW_NS, summary_reference(*(a[index == w] for a in stream)))
        for w in np.unique(index)
    ]


def feed(
    accumulator: SummaryAccumulator, stream: Stream, cuts: Sequence[int]
) -> list[WindowSummary]:
    """Add the stream split at row indices ``cuts``, flush, return every summary."""
    closed: list[WindowSummary] = []
    for a, b in itertools.pairwise([0, *cuts, len(stream[0])]):
        timestamps, values, good, scores = stream
        closed += accumulator.add(timestamps[a:b], values[a:b], good[a:b], scores[a:b])
    return closed + accumulator.flush()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_reference(seed: int) -> None:
    """Summaries of batched streams equal naive per-window numpy on the whole."""
    stream = make_stream(seed, 600, 6)
    cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, 600), 50, False))
    summaries = feed(SummaryAccumulator(6, WINDOW_S), stream, [int(c) for c in cuts])

    expected = reference_windows(stream)
    assert [s.start_ns for s in summaries] == [start for start, _ in expected]
    for summary, (start, reference) in zip(summaries, expected, strict=True):
        assert summary.end_ns == start + WINDOW_NS
        assert_summary(summary, reference)


def test_batch_size_does_not_matter() -> None:
    """One big batch and one-row batches give the same summaries."""
    stream = make_stream(5, 200, 4)
    whole = feed(SummaryAccumulator(4, WINDOW_S), stream, [])
    rows = feed(SummaryAccumulator(4, WINDOW_S), stream, list(range(1, 200)))
    assert len(whole) == len(rows)
    for a, b in zip(whole, rows, strict=True):
        assert_summary(a, {name: getattr(b, name) for name in WindowSummary.__slots__})


def test_straddling_batch_closes_earlier_windows() -> None:
    """A batch reaching two windows ahead closes the open window and the one between."""
    accumulator = SummaryAccumulator(2, WINDOW_S)
    start = (T0 // WINDOW_NS) * WINDOW_NS
    first = np.array([start, start + 1])
    assert (
        accumulator.add(first, np.ones((2, 2)), np.ones((2, 2), bool), np.ones((2, 2)))
        == []
    )

    timestamps = np.array([start + 2, start + WINDOW_NS, start + 2 * WINDOW_NS + 5])
    values = np.array([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    closed = accumulator.add(
        timestamps, values, np.ones((3, 2), bool), np.zeros((3, 2))
    )

    assert [c.start_ns - start for c in closed] == [0, WINDOW_NS]
    np.testing.assert_array_equal(closed[0].count, [3, 3])
    np.testing.assert_array_equal(closed[0].last, [3.0, 4.0])
    np.testing.assert_array_equal(closed[0].max_score, [1.0, 1.0])
    np.testing.assert_array_equal(closed[1].mean, [5.0, 6.0])
    open_window = accumulator.open_window
    assert open_window is not None
    assert open_window.start_ns == start + 2 * WINDOW_NS


def test_all_bad_window() -> None:
    """A window with no good reading has NaN statistics and counts its bad ones."""
    timestamps = T0 + np.arange(4, dtype=np.int64)
    values = np.array([[1.0, np.nan]] * 4)
    good = np.array([[False, True]] * 4)
    summary = summarise(0, WINDOW_NS, timestamps, values, good, np.full((4, 2), np.nan))
    np.testing.assert_array_equal(summary.count, [0, 0])
    np.testing.assert_array_equal(summary.bad, [4, 4])
    np.testing.assert_array_equal(summary.last_ns, [NO_TIMESTAMP_NS] * 2)
    np.testing.assert_array_equal(summary.m2, [0.0, 0.0])
    for name in ("minimum", "maximum", "mean", "std", "last", "max_score"):
        assert np.isnan(getattr(summary, name)).all(), name


def test_last_is_last_good_reading() -> None:
    """``last`` and ``last_ns`` come from the last good reading, not the last row."""
    timestamps = T0 + np.arange(3, dtype=np.int64)
    values = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, np.inf]])
    good = np.array([[True, True], [True, True], [False, True]])
    summary = summarise(0, WINDOW_NS, timestamps, values, good, np.zeros((3, 2)))
    np.testing.assert_array_equal(summary.last, [2.0, 2.0])
    np.testing.assert_array_equal(summary.last_ns, [T0 + 1, T0 + 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_equals_summary_of_concatenation(seed: int) -> None:
    """Merging two summaries equals summarising their rows together."""
    timestamps, values, good, scores = make_stream(seed, 300, 5)
    whole = summary_reference(timestamps, values, good, scores)
    for cut in (1, 97, 299):
        a = summarise(0, 1, timestamps[:cut], values[:cut], good[:cut], scores[:cut])
        b = summarise(1, 2, timestamps[cut:], values[cut:], good[cut:], scores[cut:])
        merged = merge(a, b)
        assert (merged.start_ns, merged.end_ns) == (0, 2)
        assert_summary(merged, whole)
        assert_summary(merge(b, a), whole)


def test_merge_rejects_different_widths() -> None:
    """Summaries of different numbers of tags do not merge."""
    one = summarise(
        0, 1, np.array([T0]), np.ones((1, 1)), np.ones((1, 1), bool), np.ones((1, 1))
    )
    two = summarise(
        0, 1, np.array([T0]), np.ones((1, 2)), np.ones((1, 2), bool), np.ones((1, 2))
    )
    with pytest.raises(ValueError, match="1 and 2 tags"):
        merge(one, two)


def test_close_due_waits_for_grace() -> None:
    """The open window closes only once ``now`` is past its end plus the grace."""
    accumulator = SummaryAccumulator(1, WINDOW_S)
    start = (T0 // WINDOW_NS) * WINDOW_NS
    accumulator.add(
        np.array([start]), np.ones((1, 1)), np.ones((1, 1), bool), np.ones((1, 1))
    )
    grace = 2 * SECOND
    assert accumulator.close_due(start + WINDOW_NS + grace - 1, grace) == []
    (closed,) = accumulator.close_due(start + WINDOW_NS + grace, grace)
    assert closed.start_ns == start
    assert accumulator.open_window is None
    assert accumulator.close_due(start + 10 * WINDOW_NS, grace) == []


def test_late_rows_after_close_are_counted_not_summarised() -> None:
    """Rows of a window already closed are dropped and counted as late."""
    accumulator = SummaryAccumulator(1, WINDOW_S)
    start = (T0 // WINDOW_NS) * WINDOW_NS
    ones = (np.ones((2, 1)), np.ones((2, 1), bool), np.ones((2, 1)))
    accumulator.add(np.array([start, start + 1]), *ones)
    accumulator.flush()
    closed = accumulator.add(np.array([start + 2, start + WINDOW_NS]), *ones)
    assert closed == []
    assert accumulator.late_rows == 1
    open_window = accumulator.open_window
    assert open_window is not None
    np.testing.assert_array_equal(open_window.count, [1])


def test_rejects_bad_input() -> None:
    """Wrong shapes, decreasing timestamps and a non-positive window raise."""
    accumulator = SummaryAccumulator(2, WINDOW_S)
    ones = (np.ones((2, 2)), np.ones((2, 2), bool), np.ones((2, 2)))
    with pytest.raises(ValueError, match="must all be"):
        accumulator.add(np.array([T0]), *ones)
    with pytest.raises(ValueError, match="decrease"):
        accumulator.add(np.array([T0 + 1, T0]), *ones)
    with pytest.raises(ValueError, match="window_s"):
        SummaryAccumulator(2, 0.0)
