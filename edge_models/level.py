"""Level shift against a persistence-aware band: the mean of recent readings.

Each tag keeps its last ``window`` valid readings; their mean ``x̄_t`` (this
reading included) is compared with the tag's normal level, the median ``mu0`` of
the normal rows, in units of the standard error that such a mean would have if
the tag kept behaving as it did in those rows::

    se    = sigma0 * g / sqrt(window)
    score = |x̄_t - mu0| / (limit * se)

``sigma0`` is the standard deviation of the normal rows. ``g`` corrects the
standard error for serial correlation: a tag whose readings follow each other
closely (a temperature that drifts slowly) carries little new information per
reading, so its mean wanders further than that of a noisy tag with the same
standard deviation. Under a first-order autoregression with lag-one correlation
``rho`` the long-run variance is ``sigma² (1 + rho) / (1 - rho)`` (the AR(1) case
of the long-run variance of Newey and West, 1987, "A simple, positive
semi-definite, heteroskedasticity and autocorrelation consistent covariance
matrix"), so::

    g = sqrt((1 + rho) / (1 - rho)),   rho = clip(1 - d / 2, 0, max_rho)

where ``d`` is von Neumann's ratio of the mean squared successive difference to
the variance of the normal rows (J. von Neumann, 1941, "Distribution of the ratio
of the mean square successive difference to the variance"; ``d ≈ 2 (1 - rho)``).
A tag that is white noise around its level (``d ≈ 2``) keeps ``g = 1`` and the
tight band of a plain mean chart; a tag that drifted smoothly in the normal rows
gets a band wide enough that the same kind of drift later does not alarm, while
an abrupt shift of a noisy tag (a flow that drops when a valve closes) scores
high for as long as it lasts.

With ``follow > 0`` the level the mean is compared with is not fixed at ``mu0``
but follows the tag slowly while it is quiet: after each scored reading whose score
is below ``follow_below``, the level moves ``1 / follow`` of the way to the window
mean (an exponential average with a time constant of ``follow`` readings). A tag
that wanders slowly within its band (a temperature warming over an hour, longer
than the fit rows could show) is followed and does not alarm; a shift that takes
the mean out past ``follow_below`` freezes the level where it was, so the score
stays high for as long as the shift lasts and clears when the tag comes back.

Only fitted parameters, the followed level and a window of recent readings are
kept, so the score clears as soon as the mean is back inside the band.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_models.base import ScoreArray, Scorer, ScorerParams
from edge_models.mad import (
    checked_arrays,
    checked_batch,
    require_counts,
    sorted_medians,
)

__all__ = ["LevelParams", "LevelShift", "persistence_factor"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MIN_FIT_VALUES = 10
"""Finite values per tag that fit needs for a median, a deviation and a ratio."""
# Cells (steps x tags) scored in one piece: bounds the work arrays to a few MiB.
_CHUNK_CELLS = 1 << 18
# Tags from which a running sum adds whole rows rather than calling cumsum.
_WIDE_ROWS = 128


class LevelParams(ScorerParams):
    """``[scorers.level]``: averaging window, alarm limit, persistence cap, floor.

    Attributes:
        window: valid readings per tag whose mean is scored; a longer window
            catches smaller shifts, later.
        limit: the alarm limit in (persistence-corrected) standard errors of
            the window mean.
        max_rho: cap on the lag-one correlation estimated from the normal rows,
            ``0 <= max_rho < 1``; it bounds the band's widening factor ``g`` at
            ``sqrt((1 + max_rho) / (1 - max_rho))``.
        min_std: floor on the fitted standard deviation, in the tag's
            engineering units, so a tag constant in the normal rows still gets
            a band of positive width.
        follow: time constant, in valid readings, with which the level follows
            a quiet tag; 0 keeps the fitted level for good.
        follow_below: the level follows only after readings scoring below this
            (a fraction of the alarm limit).
    """

    window: int = Field(default=10, ge=1)
    limit: float = Field(default=6.0, gt=0.0)
    max_rho: float = Field(default=0.999, ge=0.0, lt=1.0)
    min_std: float = Field(default=1e-6, gt=0.0)
    follow: float = Field(default=30.0, ge=0.0)
    follow_below: float = Field(default=0.5, gt=0.0)


def persistence_factor(normal: FloatArray, ok: BoolArray, max_rho: float) -> FloatArray:
    """Return ``g = sqrt((1 + rho) / (1 - rho))`` per tag from von Neumann's ratio.

    ``normal`` is ``(steps, k)``; successive differences are taken between
    consecutive finite values of a tag (gaps skipped). ``rho = 1 - d / 2`` is
    clipped to ``[0, max_rho]``; a tag with no variance gets ``g = 1``.
    """
    return _persistence(*_column_moments(normal, ok), max_rho)


def _persistence(
    variance: FloatArray, successive: FloatArray, max_rho: float
) -> FloatArray:
    # ratio = 2 (rho = 0, g = 1) for a tag with no variance.
    ratio = np.full_like(variance, 2.0)
    np.divide(successive, variance, out=ratio, where=variance > 0.0)
    rho = np.clip(1.0 - ratio / 2.0, 0.0, max_rho)
    g: FloatArray = np.sqrt((1.0 + rho) / (1.0 - rho))
    return g


def _running_sum(rows: FloatArray) -> FloatArray:
    """Return the running sum of ``rows`` ``(steps, k)`` down the steps.

    The same sums as ``np.cumsum(rows, axis=0)``. That walks the tags one at a
    time: on wide rows (10,000 tags) adding whole rows is ten times faster, on
    narrow ones the Python loop over the steps costs more than it saves.
    """
    if rows.shape[1] < _WIDE_ROWS:
        sums: FloatArray = np.cumsum(rows, axis=0)
        return sums
    sums = np.empty_like(rows)
    sums[0] = rows[0]
    for t in range(1, rows.shape[0]):
        np.add(sums[t - 1], rows[t], out=sums[t])
    return sums


def _column_moments(normal: FloatArray, ok: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Return per tag the variance and the mean squared successive difference.

    Both run over the tag's cells that ``ok`` marks, in order, gaps skipped; a
    tag with fewer than two such cells gets zeros. Tags with no gap (the usual
    fit) are done together; only gapped ones are taken a column at a time.
    """
    k = normal.shape[1]
    variance = np.zeros(k)
    successive = np.zeros(k)
    dense = ok.all(axis=0)
    if normal.shape[0] >= 2 and dense.any():
        block = normal[:, dense]
        variance[dense] = block.var(axis=0)
        successive[dense] = np.mean(np.diff(block, axis=0) ** 2, axis=0)
    for j in np.flatnonzero(~dense):
        column = normal[ok[:, j], j]
        if column.size >= 2:
            variance[j] = column.var()
            successive[j] = np.mean(np.diff(column) ** 2)
    return variance, successive


class LevelShift(Scorer):
    """Causal window-mean level score per tag, vectorised across the ``k`` tags.

    Needs fitting: scores NaN until :meth:`fit` or :meth:`load_parameters`.
    Invalid cells (``valid`` False, or a non-finite value) score NaN and leave
    the tag's window untouched. Until a tag has ``window`` valid readings the
    mean runs over those there are (``fit`` leaves the window filled from the
    normal rows). Parameters: ``mu`` (median), ``se`` (the band's standard
    error ``sigma0 g / sqrt(window)``), both ``(k,)``. State: ``window``
    ``(k, window)``, each tag's last valid readings oldest first, right-aligned,
    NaN in the slots not yet filled; ``level`` ``(k,)``, the followed level
    (``mu`` when ``follow`` is 0).
    """

    name: ClassVar[str] = "level"
    Params: ClassVar[type[ScorerParams]] = LevelParams
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: LevelParams, k: int) -> None:
        super().__init__(params, k)
        self.params: LevelParams = params
        self._mu = np.full(k, np.nan)
        self._se = np.full(k, np.nan)
        self.reset()

    def reset(self) -> None:
        """Empty every tag's window; the followed level goes back to the fitted one."""
        self._window = np.full((self.k, self.params.window), np.nan)
        self._level = self._mu.copy()

    def fit(self, normal: FloatArray) -> None:
        """Learn ``mu`` and ``se`` from ``normal`` rows ``(steps, k)``.

        Non-finite cells are missing. The window is then reset and filled from
        the rows, so scoring continues from them.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, or a tag has fewer than
                ``MIN_FIT_VALUES`` finite values in it.
        """
        normal = self._check_shape(normal)
        ok = np.isfinite(normal)
        require_counts(
            self.name, np.count_nonzero(ok, axis=0), MIN_FIT_VALUES, "finite values"
        )
        mu = sorted_medians(
            np.sort(np.where(ok, normal, np.nan), axis=0).T,
            np.count_nonzero(ok, axis=0),
        )
        variance, successive = _column_moments(normal, ok)
        sigma = np.maximum(np.sqrt(variance), self.params.min_std)
        g = _persistence(variance, successive, self.params.max_rho)
        self._mu = mu
        self._se = sigma * g / np.sqrt(self.params.window)
        self.fitted = True
        self.reset()
        self.score(normal, ok)
        self._level = mu.copy()

    def score(self, values: FloatArray, valid: BoolArray) -> ScoreArray:
        """Score ``values`` ``(steps, k)`` row by row; raise ``ValueError`` on shape."""
        values, ok = checked_batch(self, values, valid)
        if not self.fitted:
            return np.full(values.shape, np.nan)
        # A long, wide batch (the fit rows of a wide group) is scored in pieces:
        # the work arrays are a dozen times the batch, and scores do not depend
        # on how a stream is cut into batches.
        if values.shape[0] == 1:  # one poll: the common case, and the cheap path
            return self._score_row(values[0], ok[0])
        rows = max(1, _CHUNK_CELLS // self.k)
        if values.shape[0] <= rows:
            return self._score(values, ok)
        return np.concatenate(
            [
                self._score(values[start : start + rows], ok[start : start + rows])
                for start in range(0, values.shape[0], rows)
            ]
        )

    def _score_row(self, row: FloatArray, ok: BoolArray) -> ScoreArray:
        """Score one row: shift each valid tag's window by one and average it."""
        tags: slice | npt.NDArray[np.intp]
        if ok.all():  # the usual poll: every window moves, in place
            tags, window = slice(None), self._window
            window[:, :-1] = window[:, 1:]
            window[:, -1] = row
        else:
            tags = np.flatnonzero(ok)
            window = self._window[tags]
            window[:, :-1] = window[:, 1:]
            window[:, -1] = row[tags]
            self._window[tags] = window
        filled = np.isfinite(window)
        mean = np.where(filled, window, 0.0).sum(axis=1) / filled.sum(axis=1)
        means = np.full((1, self.k), np.nan)
        means[0, tags] = mean
        return self._against_level(means)

    def _score(self, values: FloatArray, ok: BoolArray) -> ScoreArray:
        if ok.all():
            return self._score_dense(values)
        width = self.params.window
        step, tag = np.nonzero(ok)
        rank = (np.cumsum(ok, axis=0) - 1)[step, tag]

        # Each tag's readings in order: its window (oldest first, NaN-padded on
        # the left), then this batch's valid readings, then NaN padding. A valid
        # cell's mean runs over the ``width`` readings ending at it.
        readings = np.full((self.k, width + values.shape[0]), np.nan)
        readings[:, :width] = self._window
        readings[tag, width + rank] = values[step, tag]
        filled = np.isfinite(readings)
        sums = np.cumsum(np.where(filled, readings, 0.0), axis=1)
        counts = np.cumsum(filled, axis=1)
        end = width + rank
        start = rank  # index of the reading just before the window, in cumsum terms
        total = sums[tag, end] - sums[tag, start]
        number = counts[tag, end] - counts[tag, start]
        means = np.full(values.shape, np.nan)
        means[step, tag] = total / number
        scores = self._against_level(means)

        used = np.count_nonzero(ok, axis=0)
        self._window = readings[
            np.arange(self.k)[:, None], used[:, None] + np.arange(width)
        ]
        return scores

    def _score_dense(self, values: FloatArray) -> ScoreArray:
        """Score a batch with every cell valid: no gaps, so no scatter or gather."""
        width, steps = self.params.window, values.shape[0]
        history = self._window.T  # (width, k), oldest first
        if np.isfinite(history).all():
            # Every window is full, so every mean runs over exactly ``width``
            # readings: one running sum down the steps, tags side by side.
            readings = np.concatenate([history, values])
            sums = _running_sum(readings)
            means: FloatArray = sums[width:] - sums[:steps]
            means /= width
            self._window = np.ascontiguousarray(readings[steps:].T)
            return self._against_level(means)
        # Per tag (row): its window, then the batch. With S the running sum along
        # the row, the ``width`` readings ending at column c sum to S[c] - S[c - w].
        readings = np.concatenate([self._window, values.T], axis=1)
        filled = np.isfinite(readings)  # a window not yet full holds NaN
        sums = np.cumsum(np.where(filled, readings, 0.0), axis=1)
        counts = np.cumsum(filled, axis=1)
        total = sums[:, width:] - sums[:, :steps]
        number = counts[:, width:] - counts[:, :steps]
        self._window = np.ascontiguousarray(readings[:, steps:])
        return self._against_level((total / number).T)

    def _against_level(self, means: FloatArray) -> ScoreArray:
        """Score window means ``(steps, k)`` against the fitted or followed level."""
        if self.params.follow > 0.0:
            return self._follow(means)
        scores: ScoreArray = np.abs(means - self._level) / (
            self.params.limit * self._se
        )
        return scores

    def _follow(self, means: FloatArray) -> ScoreArray:
        """Score window means ``(steps, k)`` (NaN: no reading) against the level.

        Row by row, since each row's level depends on the scores before it.
        """
        scores = np.empty_like(means)
        band = self.params.limit * self._se
        rate = 1.0 / self.params.follow
        below = self.params.follow_below
        level = self._level.copy()
        gap = np.empty(self.k)
        for t, mean in enumerate(means):
            np.subtract(mean, level, out=gap)
            score = scores[t]
            np.divide(np.abs(gap), band, out=score)
            quiet = score < below  # NaN (no reading) compares False
            gap *= rate
            np.add(level, gap, out=level, where=quiet)
        self._level = level
        return scores

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``window`` ``(k, window)`` and ``level`` ``(k,)``."""
        return {"window": self._window.copy(), "level": self._level.copy()}

    def restore(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``window`` and ``level``; raise ``ValueError`` on a key or shape."""
        layout = {
            "window": ((self.k, self.params.window), np.float64),
            "level": ((self.k,), np.float64),
        }
        arrays = checked_arrays(self.name, "state", state, layout)
        self._window = arrays["window"]
        self._level = arrays["level"]

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``mu`` and ``se`` (engineering units), each ``(k,)``."""
        return {"mu": self._mu.copy(), "se": self._se.copy()}

    def load_parameters(self, parameters: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``mu`` and ``se`` and mark the scorer fitted.

        Raises:
            ValueError: a key is missing, a shape is not ``(k,)``, ``mu`` is not
                finite or ``se`` is not finite and positive.
        """
        layout = dict.fromkeys(("mu", "se"), ((self.k,), np.float64))
        arrays = checked_arrays(self.name, "parameters", parameters, layout)
        mu, se = arrays["mu"], arrays["se"]
        if not np.isfinite(mu).all():
            raise ValueError(f"{self.name} parameters mu must be finite")
        if not (np.isfinite(se) & (se > 0.0)).all():
            raise ValueError(f"{self.name} parameters se must be finite and > 0")
        self._mu, self._se = mu, se
        self._level = mu.copy()
        self.fitted = True
