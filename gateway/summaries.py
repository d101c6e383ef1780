"""Per-tag summaries over fixed time windows, and their merging into roll-ups.

Windows are aligned to the Unix epoch: a reading at ``ts_ns`` falls in window
``ts_ns // window_ns``, which covers ``[index * window_ns, (index + 1) * window_ns)``.
Each summary holds, per tag, the count of good readings and their min, max, mean,
population std and last value, the count of bad readings and the highest score.
Means and spreads are kept as ``(count, mean, m2)`` so summaries merge exactly with
the pairwise update of Chan, Golub and LeVeque (1979, "Updating formulae and a
pairwise algorithm for computing sample variances"); hourly roll-ups are merges of
window summaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "NO_TIMESTAMP_NS",
    "SummaryAccumulator",
    "WindowSummary",
    "merge",
    "merge_moments",
    "summarise",
]

NO_TIMESTAMP_NS = -1
"""``last_ns`` of a tag without a good reading in the window."""

_NS_PER_S = 1_000_000_000

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, eq=False)
class WindowSummary:
    """Statistics of ``k`` tags over ``[start_ns, end_ns)``, one ``(k,)`` array each.

    Only good readings (good quality and a finite value) enter ``count``,
    ``minimum``, ``maximum``, ``mean``, ``std`` (population, ddof 0), ``last`` and
    ``m2`` (the sum of squared deviations from the mean, for merging). The float
    statistics are NaN and ``last_ns`` is :data:`NO_TIMESTAMP_NS` where ``count``
    is 0; ``m2`` is then 0. ``bad`` counts the other readings. ``max_score`` is the
    highest score over all readings, NaN if none was scored. Timestamps are ns
    since the Unix epoch, UTC. Arrays do not compare with ``==``, hence ``eq=False``.
    """

    start_ns: int
    end_ns: int
    count: Int64Array
    minimum: Float64Array
    maximum: Float64Array
    mean: Float64Array
    std: Float64Array
    last: Float64Array
    last_ns: Int64Array
    bad: Int64Array
    max_score: Float64Array
    m2: Float64Array

    @property
    def k(self) -> int:
        """Number of tags (columns)."""
        return len(self.count)


def summarise(
    start_ns: int,
    end_ns: int,
    timestamps_ns: Int64Array,
    values: Float64Array,
    good_mask: BoolArray,
    scores: Float64Array,
) -> WindowSummary:
    """Summarise rows ``(steps, k)`` that all fall in ``[start_ns, end_ns)``.

    ``good_mask`` marks good-quality readings; non-finite values count as bad
    whatever the mask says. Time order of the rows is assumed for ``last``.

    Raises:
        ValueError: if there are no rows.
    """
    steps, k = values.shape
    if steps == 0:
        raise ValueError("cannot summarise a block without rows")
    good = good_mask & np.isfinite(values)
    if good.all():
        return _summarise_all_good(start_ns, end_ns, timestamps_ns, values, scores)
    bad = ~good
    count = steps - np.count_nonzero(bad, axis=0).astype(np.int64)
    has = count > 0

    # One scratch array serves every pass. fmin/fmax skip NaN without the
    # all-NaN warning of nanmin/nanmax, leaving NaN where a tag has no good reading.
    masked = np.where(good, values, np.nan)
    minimum = np.fmin.reduce(masked, axis=0)
    maximum = np.fmax.reduce(masked, axis=0)
    last = masked[-1].copy()
    np.copyto(masked, 0.0, where=bad)
    mean = np.divide(masked.sum(axis=0), count, out=np.full(k, np.nan), where=has)
    masked -= mean
    np.copyto(masked, 0.0, where=bad)
    m2 = np.einsum("ij,ij->j", masked, masked)

    last_ns = np.full(k, timestamps_ns[-1], dtype=np.int64)
    late = np.flatnonzero(bad[-1] & has)
    if late.size:
        rows = steps - 1 - good[::-1, late].argmax(axis=0)
        last[late] = values[rows, late]
        last_ns[late] = timestamps_ns[rows]
    last_ns[~has] = NO_TIMESTAMP_NS

    return WindowSummary(
        start_ns=start_ns,
        end_ns=end_ns,
        count=count,
        minimum=minimum,
        maximum=maximum,
        mean=mean,
        std=_std(count, m2),
        last=last,
        last_ns=last_ns,
        bad=steps - count,
        max_score=np.fmax.reduce(scores, axis=0),
        m2=m2,
    )


def _summarise_all_good(
    start_ns: int,
    end_ns: int,
    timestamps_ns: Int64Array,
    values: Float64Array,
    scores: Float64Array,
) -> WindowSummary:
    """Summarise a non-empty block in which every reading is good (the usual case)."""
    steps, k = values.shape
    count = np.full(k, steps, dtype=np.int64)
    mean = values.sum(axis=0) / steps
    deviation = values - mean
    m2 = np.einsum("ij,ij->j", deviation, deviation)
    return WindowSummary(
        start_ns=start_ns,
        end_ns=end_ns,
        count=count,
        minimum=values.min(axis=0),
        maximum=values.max(axis=0),
        mean=mean,
        std=np.sqrt(m2 / steps),
        last=values[-1].copy(),
        last_ns=np.full(k, timestamps_ns[-1], dtype=np.int64),
        bad=np.zeros(k, dtype=np.int64),
        max_score=np.fmax.reduce(scores, axis=0),
        m2=m2,
    )


def merge_moments(
    count_a: Int64Array,
    mean_a: Float64Array,
    m2_a: Float64Array,
    count_b: Int64Array,
    mean_b: Float64Array,
    m2_b: Float64Array,
) -> tuple[Int64Array, Float64Array, Float64Array]:
    """Return ``(count, mean, m2)`` of two sets of readings from their own.

    The pairwise update of Chan, Golub and LeVeque (1979): with ``n = n_a + n_b``
    and ``delta = mean_b - mean_a``, ``mean = mean_a + delta * n_b / n`` and
    ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / n``. An empty side (count 0, mean
    NaN) contributes nothing.
    """
    count = count_a + count_b
    share_b = np.divide(count_b, count, out=np.zeros(len(count)), where=count > 0)
    both = (count_a > 0) & (count_b > 0)
    delta = mean_b - mean_a
    mean = np.where(
        both, mean_a + delta * share_b, np.where(count_a > 0, mean_a, mean_b)
    )
    cross = np.where(both, delta * delta * count_a * share_b, 0.0)
    return count, mean, m2_a + m2_b + cross


def merge(a: WindowSummary, b: WindowSummary) -> WindowSummary:
    """Return the summary of the readings of ``a`` and ``b`` together.

    The result spans both windows. ``last`` is the later of the two last good
    readings (``b``'s on a tie).

    Raises:
        ValueError: if ``a`` and ``b`` have different numbers of tags.
    """
    if a.k != b.k:
        raise ValueError(f"cannot merge summaries of {a.k} and {b.k} tags")
    count, mean, m2 = merge_moments(a.count, a.mean, a.m2, b.count, b.mean, b.m2)
    take_b = (b.count > 0) & ((a.count == 0) | (b.last_ns >= a.last_ns))
    return WindowSummary(
        start_ns=min(a.start_ns, b.start_ns),
        end_ns=max(a.end_ns, b.end_ns),
        count=count,
        minimum=np.fmin(a.minimum, b.minimum),
        maximum=np.fmax(a.maximum, b.maximum),
        mean=mean,
        std=_std(count, m2),
        last=np.where(take_b, b.last, a.last),
        last_ns=np.where(take_b, b.last_ns, a.last_ns),
        bad=a.bad + b.bad,
        max_score=np.fmax(a.max_score, b.max_score),
        m2=m2,
    )


def _std(count: Int64Array, m2: Float64Array) -> Float64Array:
    """Return the population std from counts and sums of squared deviations."""
    variance = np.divide(m2, count, out=np.full(len(count), np.nan), where=count > 0)
    std: Float64Array = np.sqrt(variance)
    return std


class SummaryAccumulator:
    """Builds window summaries of ``k`` tags from batches as they arrive.

    One window is open at a time. A batch's rows are split by window; a row in a
    later window closes the open one. Windows without any rows produce no summary.
    Rows of a window that is already closed arrive too late to be summarised; they
    are dropped and counted in :attr:`late_rows` (their readings are still stored).

    Raises:
        ValueError: if ``window_s`` is not positive.
    """

    def __init__(self, k: int, window_s: float) -> None:
        window_ns = round(window_s * _NS_PER_S)
        if window_ns <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.k = k
        self.window_ns = window_ns
        self.late_rows = 0
        self._open: WindowSummary | None = None
        self._first_open_index: int | None = None  # windows before it are closed

    @property
    def open_window(self) -> WindowSummary | None:
        """The summary so far of the window still open, if any."""
        return self._open

    def add(
        self,
        timestamps_ns: Int64Array,
        values: Float64Array,
        good_mask: BoolArray,
        scores: Float64Array,
    ) -> list[WindowSummary]:
        """Fold a batch in and return the windows it closed, oldest first.

        Args:
            timestamps_ns: ``(steps,)`` int64 ns since the Unix epoch, increasing.
            values: ``(steps, k)`` engineering values.
            good_mask: ``(steps, k)`` True for good-quality readings.
            scores: ``(steps, k)`` anomaly scores, NaN where not scored.

        Raises:
            ValueError: if the shapes do not fit ``k`` or the timestamps decrease.
        """
        timestamps_ns = np.asarray(timestamps_ns, dtype=np.int64)
        shape = (len(timestamps_ns), self.k)
        if values.shape != shape or good_mask.shape != shape or scores.shape != shape:
            raise ValueError(
                f"values {values.shape}, good_mask {good_mask.shape} and scores "
                f"{scores.shape} must all be {shape}"
            )
        if (np.diff(timestamps_ns) < 0).any():
            raise ValueError("timestamps must not decrease within a batch")

        index = timestamps_ns // self.window_ns
        first = 0
        if self._first_open_index is not None:
            first = int(np.searchsorted(index, self._first_open_index))
            self.late_rows += first

        closed: list[WindowSummary] = []
        if first == len(index):
            return closed
        # The usual batch lies in one window and needs no sorting.
        one = index[first] == index[-1]
        windows = index[-1:] if one else np.unique(index[first:])
        bounds = [*np.searchsorted(index, windows).tolist(), len(index)]
        for w, a, b in zip(windows.tolist(), bounds, bounds[1:], strict=False):
            part = summarise(
                w * self.window_ns,
                (w + 1) * self.window_ns,
                timestamps_ns[a:b],
                values[a:b],
                good_mask[a:b],
                scores[a:b],
            )
            if self._open is not None and self._open.start_ns == part.start_ns:
                part = merge(self._open, part)
            elif self._open is not None:
                closed.append(self._open)
            self._open = part
            self._first_open_index = w
        return closed

    def close_due(self, now_ns: int, grace_ns: int) -> list[WindowSummary]:
        """Close the open window if ``now_ns >= end_ns + grace_ns``; return it.

        ``grace_ns`` leaves time for the last poll of the window to arrive.
        """
        if self._open is None or now_ns < self._open.end_ns + grace_ns:
            return []
        return self.flush()

    def flush(self) -> list[WindowSummary]:
        """Close the open window whatever the time (at shutdown); return it."""
        if self._open is None:
            return []
        closed = self._open
        self._open = None
        self._first_open_index = closed.end_ns // self.window_ns
        return [closed]
