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
            events = self._run(np.flatnonzero(busy), timestamps_ns, values, scores)
        self._push_window(values)
        return events

    def _run(
        self,
        cols: npt.NDArray[np.intp],
        timestamps_ns: Int64Array,
        values: Float64Array,
        scores: Float64Array,
    ) -> list[AlertEvent]:
        """Run the state machine row by row over the columns ``cols``."""
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
        cols: npt.NDArray[np.intp],
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
                self._window_stats(values[: t + 1, js], js),
                strict=True,
            )
        ]

    def _severity_of(self, critical: bool, j: int) -> Severity:
        """Return the severity of an alert of column ``j``."""
        return "critical" if critical else self._severity[j]

    def _window_stats(
        self, recent: Float64Array, js: npt.NDArray[np.intp]
    ) -> list[dict[str, float]]:
        """Return stats of columns ``js``' last ``window`` values, ending ``recent``."""
        ring = self._ring[:, js]
        pos = self._ring_pos
        history = np.concatenate((ring[pos:], ring[:pos], recent))[-self.window :]
        finite = np.isfinite(history)
        n = np.count_nonzero(finite, axis=0)
        has = n > 0
        nan = np.full(len(js), np.nan)
        mean = np.divide(
            np.where(finite, history, 0.0).sum(axis=0), n, out=nan.copy(), where=has
        )
        deviation = np.where(finite, history - mean, 0.0)
        variance = np.divide(
            (deviation * deviation).sum(axis=0), n, out=nan.copy(), where=has
        )
        low = np.where(has, np.where(finite, history, np.inf).min(axis=0), np.nan)
        high = np.where(has, np.where(finite, history, -np.inf).max(axis=0), np.nan)
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
