"""The alert engine: scores in, raised and cleared alert events out.

One :class:`AlertEngine` watches the ``k`` columns (tags) of one scorer on one tool.
Each column follows its own :class:`~gateway.config.models.AlertRule` with
hysteresis, a cooldown after each clear and a severity fixed when it is raised. The
rules' thresholds are held as ``(k,)`` arrays so a batch is processed with numpy
operations across columns; the only Python loop is over the rows of a batch, and it
only runs over the columns that can change state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gateway.config.models import AlertRule, Severity

__all__ = ["DEFAULT_WINDOW", "AlertEngine", "AlertEvent"]

DEFAULT_WINDOW = 60
"""Readings per tag kept for the statistics an alert carries."""

_NS_PER_S = 1_000_000_000
_NEVER_NS = np.iinfo(np.int64).min  # "no clear yet": every raise is out of cooldown

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert raised or cleared on one tag.

    Attributes:
        tool, tag, model: where the alert comes from; ``model`` is the scorer name.
        state: ``"raised"`` or ``"cleared"``.
        severity: ``"info"``, ``"warning"`` or ``"critical"``; a cleared event
            repeats the severity the alert was raised with.
        ts_ns: timestamp of the reading that raised or cleared it, ns since the
            Unix epoch (UTC).
        started_ns: for a raise, the first reading of the run of scores at or over
            ``raise_level`` that raised it; for a clear, when it was raised.
        value: the tag's value at ``ts_ns``.
        score: the score at ``ts_ns``.
        peak_score: the highest score of the raising run (raised) or of the whole
            alert, raising run included (cleared).
        raise_level, clear_level: the thresholds that applied.
        window: statistics of the tag's last ``window`` values up to and including
            ``ts_ns``, ignoring non-finite ones: ``n``, ``mean``, ``std``
            (population), ``min``, ``max``; all but ``n`` are NaN when ``n`` is 0.
    """

    tool: str
    tag: str
    model: str
    state: Literal["raised", "cleared"]
    severity: Severity
    ts_ns: int
    started_ns: int
    value: float
    score: float
    peak_score: float
    raise_level: float
    clear_level: float
    window: dict[str, float]


@dataclass(slots=True)
class _Columns:
    """The state machine's per-column state, one ``(k,)`` array per field."""

    active: BoolArray  # an alert is raised and not yet cleared
    critical: BoolArray  # the active alert was raised as critical
    over: Int64Array  # length of the current run at or over raise_level
    under: Int64Array  # length of the current run under clear_level while active
    run_start_ns: Int64Array  # first reading of the current over run
    run_peak: Float64Array  # highest score of the current over run
    raised_ns: Int64Array  # when the active alert was raised
    peak: Float64Array  # highest score of the active alert
    blocked_until_ns: Int64Array  # no raise before this (cooldown after a clear)

    @classmethod
    def initial(cls, k: int) -> _Columns:
        """Return the state of ``k`` columns that have seen nothing."""
        return cls(
            active=np.zeros(k, dtype=bool),
            critical=np.zeros(k, dtype=bool),
            over=np.zeros(k, dtype=np.int64),
            under=np.zeros(k, dtype=np.int64),
            run_start_ns=np.zeros(k, dtype=np.int64),
            run_peak=np.zeros(k),
            raised_ns=np.zeros(k, dtype=np.int64),
            peak=np.zeros(k),
            blocked_until_ns=np.full(k, _NEVER_NS, dtype=np.int64),
        )

    def take(self, cols: npt.NDArray[np.intp]) -> _Columns:
        """Return a copy of the state of columns ``cols``."""
        return _Columns(*(getattr(self, name)[cols] for name in _COLUMN_FIELDS))

    def put(self, cols: npt.NDArray[np.intp], part: _Columns) -> None:
        """Write ``part`` (from :meth:`take`) back to columns ``cols``."""
        for name in _COLUMN_FIELDS:
            getattr(self, name)[cols] = getattr(part, name)


_COLUMN_FIELDS = tuple(field.name for field in fields(_Columns))
_WINDOW_KEY = "window"
_WINDOW_CHUNK = 4096  # events whose windows are gathered at once
_STEP_ROWS = 12  # batches up to this long are stepped row by row (measured)


class AlertEngine:
    """Hysteresis, cooldown and severity for ``k`` columns of scores.

    Per column, an alert is raised at the ``raise_after``-th consecutive reading
    whose score is at or over ``raise_level``, and cleared at the
    ``clear_after``-th consecutive reading under ``clear_level`` while it is
    active. A NaN score means "not scored" (a bad reading, a scorer still without
    an opinion): it breaks both runs, so neither counts across a gap. After a
    clear, the column does not raise again until ``cooldown_s`` has passed since
    the clearing reading; the run keeps counting during the cooldown, so the alert
    is raised at the first reading after it whose run is long enough. The alert is
    ``critical`` if a score of its raising run reached ``critical_level``,
    otherwise it has the rule's ``severity``; the severity does not change while
    the alert is active.

    Raises:
        ValueError: if ``rules`` and ``tags`` differ in length or ``window`` < 1.
    """

    def __init__(
        self,
        tool: str,
        model: str,
        tags: Sequence[str],
        rules: Sequence[AlertRule],
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if len(rules) != len(tags):
            raise ValueError(f"{len(rules)} alert rules given for {len(tags)} tags")
        if window < 1:
            raise ValueError(f"window must be at least 1 reading, got {window}")
        self.tool = tool
        self.model = model
        self.tags = tuple(tags)
        self.window = window

        self._raise_level = np.array([r.raise_level for r in rules], dtype=np.float64)
        self._clear_level = np.array([r.clear_level for r in rules], dtype=np.float64)
        self._raise_after = np.array([r.raise_after for r in rules], dtype=np.int64)
        self._clear_after = np.array([r.clear_after for r in rules], dtype=np.int64)
        self._cooldown_ns = np.array(
            [round(r.cooldown_s * _NS_PER_S) for r in rules], dtype=np.int64
        )
        self._critical_level = np.array(
            [np.inf if r.critical_level is None else r.critical_level for r in rules],
            dtype=np.float64,
        )
        self._severity: tuple[Severity, ...] = tuple(r.severity for r in rules)
        self._raise_list: list[float] = self._raise_level.tolist()
        self._clear_list: list[float] = self._clear_level.tolist()

        self._columns = _Columns.initial(len(self.tags))
        self._ring = np.full((window, len(self.tags)), np.nan)
        self._ring_pos = 0  # the oldest row of the ring, and the next one written

    @property
    def k(self) -> int:
        """Number of columns (tags) watched."""
        return len(self.tags)

    @property
    def active(self) -> BoolArray:
        """Which columns have an active alert, ``(k,)`` (a copy)."""
        return self._columns.active.copy()

    def active_alerts(self) -> list[tuple[str, Severity]]:
        """Return ``(tag, severity)`` of every active alert, in column order."""
        cols = np.flatnonzero(self._columns.active).tolist()
        return [
            (self.tags[j], self._severity_of(bool(self._columns.critical[j]), j))
            for j in cols
        ]

    def update(
        self, timestamps_ns: Int64Array, values: Float64Array, scores: Float64Array
    ) -> list[AlertEvent]:
        """Process one batch and return its events in time order.

        Args:
            timestamps_ns: ``(steps,)`` int64, ns since the Unix epoch, increasing.
            values: ``(steps, k)`` the tags' values, NaN where there is none.
            scores: ``(steps, k)`` the scorer's output, NaN where not scored.

        Raises:
            ValueError: if the shapes do not fit each other or ``k``.
        """
        timestamps_ns = np.asarray(timestamps_ns, dtype=np.int64)
        shape = (len(timestamps_ns), self.k)
        if values.shape != shape or scores.shape != shape:
            raise ValueError(
                f"values {values.shape} and scores {scores.shape} must both be {shape}"
            )

        # The common case: nothing active, nothing counting and nothing at a raise
        # level in this batch. No state can change, so the row loop is skipped.
        hits = scores >= self._raise_level
        columns = self._columns
        events: list[AlertEvent] = []
        if columns.active.any() or columns.over.any() or hits.any():
            busy = columns.active | (columns.over > 0) | hits.any(axis=0)
            cols = np.flatnonzero(busy)
            events = self._run(cols, timestamps_ns, values, scores, hits)
        self._push_window(values)
        return events

    def _run(
        self,
        cols: Int64Array,
        timestamps_ns: Int64Array,
        values: Float64Array,
        scores: Float64Array,
        hits: BoolArray,
    ) -> list[AlertEvent]:
        """Run the state machine over the columns ``cols``, transition to transition.

        A run is state-free: a raise happens on an at-or-over reading and a clear on
        an under one, so each transition breaks the other run by itself. The run
        lengths of the whole batch are therefore computed up front, and each column
        jumps from one transition to the next instead of stepping every row.
        """
        if not len(timestamps_ns):
            return []
        if len(timestamps_ns) <= _STEP_ROWS:
            return self._step(cols, timestamps_ns, values, scores)
        carried = self._columns.take(cols)
        batch = _Batch.of(
            timestamps_ns,
            scores[:, cols],
            hits[:, cols],
            carried,
            self._raise_after[cols],
            self._clear_after[cols],
            self._clear_level[cols],
        )
        found = _walk(batch, carried, self._cooldown_ns[cols])
        events = self._describe(batch, carried, found, cols)
        self._columns.put(cols, self._carry(batch, carried, found, events, cols))
        if not len(found.rows):
            return []
        return self._events(batch, found, events, cols, values)

    def _step(
        self,
        cols: Int64Array,
        timestamps_ns: Int64Array,
        values: Float64Array,
        scores: Float64Array,
    ) -> list[AlertEvent]:
        """Run the state machine row by row over the columns ``cols``.

        Cheaper than the transition walk of :meth:`_run` for short batches, whose
        cost is the walk's fixed number of array operations.
        """
        s = scores[:, cols]
        over_hits = s >= self._raise_level[cols]
        under_hits = s < self._clear_level[cols]
        raise_after, clear_after = self._raise_after[cols], self._clear_after[cols]
        c = self._columns.take(cols)
        events: list[AlertEvent] = []

        for t, ts in enumerate(timestamps_ns.tolist()):
            score = s[t]
            counting = over_hits[t] & ~c.active
            starting = counting & (c.over == 0)
            # np.where beats ufuncs with a where= mask several times over here.
            c.run_start_ns = np.where(starting, ts, c.run_start_ns)
            run_peak = np.fmax(np.where(starting, score, c.run_peak), score)
            c.run_peak = np.where(counting, run_peak, c.run_peak)
            c.peak = np.where(c.active, np.fmax(c.peak, score), c.peak)
            # Runs only grow while their side holds, so over is 0 while active and
            # under is 0 while not: no extra test of ``active`` is needed below.
            c.over += 1
            c.over *= counting
            c.under += 1
            c.under *= under_hits[t] & c.active

            cleared = c.under >= clear_after
            raised = (c.over >= raise_after) & (ts >= c.blocked_until_ns)
            if raised.any() or cleared.any():
                events += self._transition(c, cols, raised, cleared, t, ts, values, s)

        self._columns.put(cols, c)
        return events

    def _transition(
        self,
        c: _Columns,
        cols: Int64Array,
        raised: BoolArray,
        cleared: BoolArray,
        t: int,
        ts: int,
        values: Float64Array,
        s: Float64Array,
    ) -> list[AlertEvent]:
        """Raise and clear the alerts of row ``t``; return the events, by column."""
        cooldown_ns = self._cooldown_ns[cols]
        started = np.where(raised, c.run_start_ns, c.raised_ns)
        peak = np.where(raised, c.run_peak, c.peak)
        c.critical = np.where(
            raised, c.run_peak >= self._critical_level[cols], c.critical
        )
        np.copyto(c.raised_ns, ts, where=raised)
        np.copyto(c.peak, c.run_peak, where=raised)
        np.copyto(c.blocked_until_ns, ts + cooldown_ns, where=cleared)
        changed = np.flatnonzero(raised | cleared)
        c.active[changed] = raised[changed]
        c.over[changed] = c.under[changed] = 0

        js = cols[changed]
        return [
            AlertEvent(
                tool=self.tool,
                tag=self.tags[j],
                model=self.model,
                state="raised" if up else "cleared",
                severity=self._severity_of(critical, j),
                ts_ns=ts,
                started_ns=start,
                value=value,
                score=score,
                peak_score=peak_score,
                raise_level=self._raise_list[j],
                clear_level=self._clear_list[j],
                window=window,
            )
            for j, up, critical, start, value, score, peak_score, window in zip(
                js.tolist(),
                raised[changed].tolist(),
                c.critical[changed].tolist(),
                started[changed].tolist(),
                values[t, js].tolist(),
                s[t, changed].tolist(),
                peak[changed].tolist(),
                self._window_stats(values, np.full(len(js), t), js),
                strict=True,
            )
        ]

    def _describe(
        self, batch: _Batch, carried: _Columns, found: _Transitions, cols: Int64Array
    ) -> _Described:
        """Return when each transition's alert started, its peak and severity."""
        rows, at, raised = found.rows, found.cols, found.raised
        started = np.empty(len(rows), dtype=np.int64)
        peak = np.empty(len(rows))
        critical = np.empty(len(rows), dtype=bool)

        up = np.flatnonzero(raised)
        started[up], peak[up] = batch.over_run(rows[up], at[up], carried)
        critical[up] = peak[up] >= self._critical_level[cols[at[up]]]

        # A clear's alert was raised by the column's previous transition, if that
        # was in this batch, or else before it.
        down = np.flatnonzero(~raised)
        prev = down - 1
        same = (down > 0) & (at[prev] == at[down])
        raised_row = np.where(same, rows[prev], -1)
        j = at[down]
        started[down] = np.where(
            same, batch.timestamps_ns[raised_row], carried.raised_ns[j]
        )
        critical[down] = np.where(same, critical[prev], carried.critical[j])
        base = np.where(same, peak[prev], carried.peak[j])
        peak[down] = np.fmax(base, batch.peak(raised_row + 1, rows[down], j))
        return _Described(started, peak, critical)

    def _carry(
        self,
        batch: _Batch,
        carried: _Columns,
        found: _Transitions,
        events: _Described,
        cols: Int64Array,
    ) -> _Columns:
        """Return the columns' state after the batch, as the row loop would leave it."""
        c = _Columns(*(getattr(carried, name).copy() for name in _COLUMN_FIELDS))
        rows, at, raised = found.rows, found.cols, found.raised
        ts, steps = batch.timestamps_ns, batch.steps
        active = found.active

        # Each column's last transition, and its last raise and clear: the last
        # transition and, as they alternate, the one before it.
        last = np.flatnonzero(np.append(at[1:] != at[:-1], True)) if len(at) else at
        j = at[last]
        up = raised[last]
        has_prev = (last > 0) & (at[last - 1] == j)
        r = np.where(up, last, last - 1)[up | has_prev]
        c.raised_ns[at[r]] = ts[rows[r]]
        c.critical[at[r]] = events.critical[r]
        c.run_start_ns[at[r]] = events.started[r]
        c.run_peak[at[r]] = events.peak[r]
        d = np.where(up, last - 1, last)[~up | has_prev]
        cooldown_ns = self._cooldown_ns[cols[at[d]]]
        c.blocked_until_ns[at[d]] = ts[rows[d]] + cooldown_ns
        c.peak[j] = events.peak[last]

        # An active alert's peak grows over the rows after its raise.
        tail = np.zeros(len(active), dtype=np.int64)
        tail[j] = rows[last] + 1
        on = np.flatnonzero(active)
        c.peak[on] = np.fmax(c.peak[on], batch.peak(tail[on], steps - 1, on))

        # An inactive column's latest run at raise level, if it began after the
        # last clear, is the run that is counting now.
        off = np.flatnonzero(~active & (batch.last_hit >= tail))
        c.run_start_ns[off], c.run_peak[off] = batch.over_run(
            batch.last_hit[off], off, carried
        )
        c.active = active
        c.over = np.where(active, 0, batch.over[-1])
        c.under = np.where(active, batch.under[-1], 0)
        return c

    def _events(
        self,
        batch: _Batch,
        found: _Transitions,
        described: _Described,
        cols: Int64Array,
        values: Float64Array,
    ) -> list[AlertEvent]:
        """Return the batch's events in time order, then column order."""
        order = np.lexsort((found.cols, found.rows))
        rows, at = found.rows[order], found.cols[order]
        js = cols[at]
        scores = batch.by_column[at * batch.steps + rows]
        return [
            AlertEvent(
                tool=self.tool,
                tag=self.tags[j],
                model=self.model,
                state="raised" if up else "cleared",
                severity=self._severity_of(critical, j),
                ts_ns=ts,
                started_ns=start,
                value=value,
                score=score,
                peak_score=peak_score,
                raise_level=self._raise_list[j],
                clear_level=self._clear_list[j],
                window=window,
            )
            for j, up, critical, ts, start, value, score, peak_score, window in zip(
                js.tolist(),
                found.raised[order].tolist(),
                described.critical[order].tolist(),
                batch.timestamps_ns[rows].tolist(),
                described.started[order].tolist(),
                values[rows, js].tolist(),
                scores.tolist(),
                described.peak[order].tolist(),
                self._window_stats(values, rows, js),
                strict=True,
            )
        ]

    def _severity_of(self, critical: bool, j: int) -> Severity:
        """Return the severity of an alert of column ``j``."""
        return "critical" if critical else self._severity[j]

    def _window_stats(
        self, values: Float64Array, rows: Int64Array, js: Int64Array
    ) -> list[dict[str, float]]:
        """Return stats of the last ``window`` values up to row ``rows`` of ``js``."""
        stats: list[dict[str, float]] = []
        for part in range(0, len(rows), _WINDOW_CHUNK):
            chunk = slice(part, part + _WINDOW_CHUNK)
            stats += _describe_window(self._history(values, rows[chunk], js[chunk]))
        return stats

    def _history(
        self, values: Float64Array, rows: Int64Array, js: Int64Array
    ) -> Float64Array:
        """Return the last ``window`` values up to ``rows`` of ``js``, oldest first.

        ``(len(rows), window)``; rows before the batch come from the ring.
        """
        size = self.window
        back = rows[:, None] - size + 1 + np.arange(size)  # rows < 0: the ring
        column = js[:, None]
        in_batch = values[np.maximum(back, 0), column]
        in_ring = self._ring[(self._ring_pos + size + back) % size, column]
        history: Float64Array = np.where(back >= 0, in_batch, in_ring)
        return history

    def _push_window(self, values: Float64Array) -> None:
        """Append a batch's rows to the ring of recent values (two slice copies)."""
        steps, size = len(values), self.window
        if steps >= size:
            self._ring[:] = values[-size:]
            self._ring_pos = 0
            return
        head = min(steps, size - self._ring_pos)
        self._ring[self._ring_pos : self._ring_pos + head] = values[:head]
        self._ring[: steps - head] = values[head:]
        self._ring_pos = (self._ring_pos + steps) % size

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return the engine's state as named arrays (copies), for :meth:`restore`.

        Every per-column field is ``(k,)``; ``window`` is the ring of recent values,
        ``(window, k)``, oldest row first.
        """
        saved = {name: getattr(self._columns, name).copy() for name in _COLUMN_FIELDS}
        ring = self._ring
        saved[_WINDOW_KEY] = np.concatenate(
            (ring[self._ring_pos :], ring[: self._ring_pos])
        )
        return saved

    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Load a state from :meth:`state`.

        A saved window of another length is cut or padded to this engine's window
        (keeping the newest rows), so a changed ``window`` setting keeps what it can.

        Raises:
            ValueError: if a key is missing or an array does not fit ``k``.
        """
        missing = [key for key in (*_COLUMN_FIELDS, _WINDOW_KEY) if key not in state]
        if missing:
            raise ValueError(f"alert state lacks {', '.join(missing)}")
        shapes = {key: np.shape(state[key]) for key in _COLUMN_FIELDS}
        wrong = [key for key, shape in shapes.items() if shape != (self.k,)]
        ring = np.asarray(state[_WINDOW_KEY], dtype=np.float64)
        if ring.ndim != 2 or ring.shape[1] != self.k:
            wrong.append(_WINDOW_KEY)
        if wrong:
            raise ValueError(
                f"alert state {', '.join(wrong)} does not fit {self.k} columns"
            )

        initial = _Columns.initial(self.k)
        self._columns = _Columns(
            *(
                np.array(state[name], dtype=getattr(initial, name).dtype)
                for name in _COLUMN_FIELDS
            )
        )
        kept = ring[len(ring) - min(len(ring), self.window) :]
        self._ring = np.full((self.window, self.k), np.nan)
        self._ring[self.window - len(kept) :] = kept
        self._ring_pos = 0


@dataclass(frozen=True, slots=True)
class _Batch:
    """One batch's runs over the busy columns, ``(steps, m)`` unless noted.

    Runs are counted from the rows alone, with the run carried in from the previous
    batch added until the first break.
    """

    timestamps_ns: Int64Array  # (steps,)
    over_break: Int64Array  # last row at or before t not at raise level, else -1
    over: Int64Array  # length of the run at or over raise_level ending at t
    under: Int64Array  # length of the run under clear_level ending at t
    next_raise: Int64Array  # (steps + 1, m) first row >= t with a long enough over
    next_clear: Int64Array  # (steps + 1, m) first row >= t with a long enough under
    last_hit: Int64Array  # (m,) last row at or over raise_level, else -1
    by_column: Float64Array  # (m * steps + 1,) the scores column after column, NaN

    @classmethod
    def of(
        cls,
        timestamps_ns: Int64Array,
        scores: Float64Array,
        hits: BoolArray,
        carried: _Columns,
        raise_after: Int64Array,
        clear_after: Int64Array,
        clear_level: Float64Array,
    ) -> _Batch:
        """Count the runs of ``scores`` (``(steps, m)``), ``hits`` at raise level."""
        steps, m = scores.shape
        over_break = _last_break(hits)
        over = _run_lengths(over_break, carried.over)
        under = _run_lengths(_last_break(scores < clear_level), carried.under)
        by_column = np.empty(steps * m + 1)
        by_column[:-1].reshape(m, steps)[:] = scores.T
        by_column[-1] = np.nan  # reduceat may index one past the last column's end
        rows = np.arange(steps)[:, None]
        return cls(
            timestamps_ns=timestamps_ns,
            over_break=over_break,
            over=over,
            under=under,
            next_raise=_next_true(over >= raise_after),
            next_clear=_next_true(under >= clear_after),
            last_hit=np.where(hits, rows, -1).max(axis=0),
            by_column=by_column,
        )

    @property
    def steps(self) -> int:
        """Number of rows in the batch."""
        return len(self.timestamps_ns)

    def peak(
        self, first: Int64Array | int, last: Int64Array | int, at: Int64Array
    ) -> Float64Array:
        """Return the highest non-NaN score of rows ``first..last`` of columns ``at``.

        NaN where the rows are empty or all NaN.
        """
        first, last = np.broadcast_arrays(first, last, at)[:2]
        if not len(at):
            return np.empty(0)
        base = at * self.steps
        bounds = np.stack((base + first, base + last + 1), axis=1).ravel()
        found = np.fmax.reduceat(self.by_column, bounds)[::2]
        return np.where(first <= last, found, np.nan)

    def over_run(
        self, rows: Int64Array, at: Int64Array, carried: _Columns
    ) -> tuple[Int64Array, Float64Array]:
        """Return the start and peak of the over runs ending at ``rows`` of ``at``."""
        first = self.over_break[rows, at] + 1
        # A run unbroken since the batch began continues the carried one.
        extends = (first == 0) & (carried.over[at] > 0)
        started = np.where(extends, carried.run_start_ns[at], self.timestamps_ns[first])
        peak = np.fmax(
            np.where(extends, carried.run_peak[at], np.nan), self.peak(first, rows, at)
        )
        return started, peak


def _last_break(holds: BoolArray) -> Int64Array:
    """Return, per row and column, the last row up to it where ``holds`` fails."""
    rows = np.arange(len(holds))[:, None]
    return np.maximum.accumulate(np.where(holds, -1, rows), axis=0)


def _run_lengths(last_break: Int64Array, carried: Int64Array) -> Int64Array:
    """Return run lengths from :func:`_last_break`, continuing ``carried`` runs."""
    rows = np.arange(len(last_break))[:, None]
    return rows - last_break + np.where(last_break < 0, carried, 0)


def _next_true(mask: BoolArray) -> Int64Array:
    """Return, per row ``t`` (and a row past the end), the first row >= t of ``mask``.

    ``len(mask)`` where there is none.
    """
    steps = len(mask)
    rows = np.arange(steps)[:, None]
    found = np.full((steps + 1, mask.shape[1]), steps, dtype=np.int64)
    found[:-1] = np.minimum.accumulate(np.where(mask, rows, steps)[::-1], axis=0)[::-1]
    return found


@dataclass(frozen=True, slots=True)
class _Transitions:
    """A batch's raises and clears, column after column, in time order in each."""

    rows: Int64Array  # (n,) the row of each transition
    cols: Int64Array  # (n,) its column, as a position among the busy columns
    raised: BoolArray  # (n,) raised, or else cleared
    active: BoolArray  # (m,) which columns are active after the batch


@dataclass(frozen=True, slots=True)
class _Described:
    """When each transition's alert started, its peak score and if it is critical."""

    started: Int64Array
    peak: Float64Array
    critical: BoolArray


def _walk(batch: _Batch, carried: _Columns, cooldown_ns: Int64Array) -> _Transitions:
    """Find every column's transitions, one transition per column per round.

    A column not active raises at the first row, from its position and out of
    cooldown, whose over run is long enough; an active one clears at the first row
    whose under run is. Columns leave the rounds when they find no transition.
    """
    ts, steps = batch.timestamps_ns, batch.steps
    live = np.arange(len(carried.active))
    pos = np.zeros(len(live), dtype=np.int64)
    rising = ~carried.active
    allowed = np.searchsorted(ts, carried.blocked_until_ns)  # first row past cooldown
    active = carried.active.copy()
    rows: list[Int64Array] = []
    cols: list[Int64Array] = []
    raised: list[BoolArray] = []
    while len(live):
        start = np.where(rising, np.maximum(pos, allowed), pos)
        row = np.where(
            rising, batch.next_raise[start, live], batch.next_clear[start, live]
        )
        more = row < steps
        if not more.all():
            active[live[~more]] = ~rising[~more]
            live, row, rising, allowed = (
                live[more],
                row[more],
                rising[more],
                allowed[more],
            )
        rows.append(row)
        cols.append(live)
        raised.append(rising)
        cooled = np.searchsorted(ts, ts[row] + cooldown_ns[live])
        allowed = np.where(rising, allowed, cooled)
        pos = row + 1
        rising = ~rising

    found_cols = np.concatenate(cols) if cols else live
    order = np.argsort(found_cols, kind="stable")
    return _Transitions(
        rows=np.concatenate(rows)[order] if rows else live,
        cols=found_cols[order],
        raised=np.concatenate(raised)[order] if raised else live.astype(bool),
        active=active,
    )


def _describe_window(history: Float64Array) -> list[dict[str, float]]:
    """Return n, mean, population std, min and max of each row's finite values."""
    finite = np.isfinite(history)
    n = np.count_nonzero(finite, axis=1)
    has = n > 0
    nan = np.full(len(history), np.nan)
    mean = np.divide(
        np.where(finite, history, 0.0).sum(axis=1), n, out=nan.copy(), where=has
    )
    deviation = np.where(finite, history - mean[:, None], 0.0)
    variance = np.divide(
        (deviation * deviation).sum(axis=1), n, out=nan.copy(), where=has
    )
    low = np.where(has, np.where(finite, history, np.inf).min(axis=1), np.nan)
    high = np.where(has, np.where(finite, history, -np.inf).max(axis=1), np.nan)
    return [
        {"n": float(count), "mean": m, "std": sd, "min": lo, "max": hi}
        for count, m, sd, lo, hi in zip(
            n.tolist(),
            mean.tolist(),
            np.sqrt(variance).tolist(),
            low.tolist(),
            high.tolist(),
            strict=True,
        )
    ]
