"""Hard limits and rate of change: the two classic single-reading alarms.

These are the absolute (high/low) and rate-of-change alarm types of ANSI/ISA-18.2,
"Management of Alarm Systems for the Process Industries", with their limits
learned from normal rows instead of typed in.

``limits`` fits a band ``[low, high]`` per tag: the training minimum and maximum,
each pushed out by ``margin`` times the training range (and widened about its
centre to at least ``min_width``). A reading scores its distance from the centre
``c = (low + high) / 2`` over the half-width on its side::

    score = (x - c) / (high - c)   if x >= c
            (c - x) / (c - low)    otherwise

so a reading exactly on either limit scores exactly 1.0, the centre 0.0, and one
more half-width out 2.0. The score has no memory.

``rate`` scores the change from the tag's previous valid reading against the
robust scale of the first differences in the normal rows (differences between
consecutive finite values, gaps skipped; see :mod:`edge_models.mad`)::

    score = |x_t - x_prev| / (limit * max(1.4826 MAD(diffs), min_scale))

A tag's first reading has no previous one and scores 0.0. Its state is each
tag's last valid reading.
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
    robust_location_scale,
)

__all__ = [
    "HardLimits",
    "LimitsParams",
    "RateOfChange",
    "RateParams",
    "previous_valid",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MIN_FIT_VALUES = 10
"""Finite values per tag that ``limits`` needs to fit a band."""

MIN_FIT_DIFFS = 10
"""First differences per tag that ``rate`` needs to fit a scale."""


class LimitsParams(ScorerParams):
    """``[scorers.limits]``: how far the band reaches beyond the training range.

    Attributes:
        margin: each limit sits this fraction of the training range (max - min)
            beyond the training extreme; 0.1 widens a range of 10 units to 12.
        min_width: the least band width, in the tag's engineering units, so a
            tag constant in the normal rows still gets a band of positive width.
    """

    margin: float = Field(default=0.1, ge=0.0)
    min_width: float = Field(default=1e-6, gt=0.0)


class HardLimits(Scorer):
    """Distance from a fitted band's centre in half-widths, per tag.

    Needs fitting: scores NaN until :meth:`fit` or :meth:`load_parameters`.
    Invalid cells (``valid`` False, or a non-finite value) score NaN. Stateless;
    the parameters are ``low`` and ``high``, each ``(k,)`` float64.
    """

    name: ClassVar[str] = "limits"
    Params: ClassVar[type[ScorerParams]] = LimitsParams
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: LimitsParams, k: int) -> None:
        super().__init__(params, k)
        self.params: LimitsParams = params
        self._low = np.full(k, np.nan)
        self._high = np.full(k, np.nan)
        self._centre = np.full(k, np.nan)

    def reset(self) -> None:
        """Do nothing: the score has no streaming state."""

    def fit(self, normal: FloatArray) -> None:
        """Fit ``low`` and ``high`` from ``normal`` rows ``(steps, k)``.

        Non-finite cells are missing.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, a tag has fewer than
                ``MIN_FIT_VALUES`` finite values, or its band is too narrow to
                have a centre strictly inside it at float64 precision.
        """
        normal = self._check_shape(normal)
        ok = np.isfinite(normal)
        require_counts(
            self.name, np.count_nonzero(ok, axis=0), MIN_FIT_VALUES, "finite values"
        )
        lowest = np.where(ok, normal, np.inf).min(axis=0)
        highest = np.where(ok, normal, -np.inf).max(axis=0)
        reach = self.params.margin * (highest - lowest)
        low, high = lowest - reach, highest + reach

        # Half of min_width each side of the training midpoint, where the
        # widened range is narrower than that.
        narrow = high - low < self.params.min_width
        middle = 0.5 * lowest + 0.5 * highest
        low = np.where(narrow, middle - 0.5 * self.params.min_width, low)
        high = np.where(narrow, middle + 0.5 * self.params.min_width, high)
        self._set_band(low, high)

    def _set_band(self, low: FloatArray, high: FloatArray) -> None:
        # Halving each limit before adding cannot overflow; a centre equal to a
        # limit would divide by zero, so that band is refused.
        centre = 0.5 * low + 0.5 * high
        inside = np.isfinite(centre) & (low < centre) & (centre < high)
        if not inside.all():
            bad = np.flatnonzero(~inside).tolist()
            raise ValueError(
                f"{self.name}: band of tag column(s) {bad} is not finite or too "
                "narrow for its magnitude; raise min_width"
            )
        self._low, self._high, self._centre = low, high, centre
        self.fitted = True

    def score(self, values: FloatArray, valid: BoolArray) -> ScoreArray:
        """Score ``values`` ``(steps, k)``; raise ``ValueError`` on shape."""
        values, ok = checked_batch(self, values, valid)
        if not self.fitted:
            return np.full(values.shape, np.nan)
        centre = self._centre
        above = (values - centre) / (self._high - centre)
        below = (centre - values) / (centre - self._low)
        scores: ScoreArray = np.where(values >= centre, above, below)
        scores[~ok] = np.nan
        return scores

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return an empty state: the score has no memory."""
        return {}

    def restore(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Accept the empty state; raise ``ValueError`` for any other."""
        checked_arrays(self.name, "state", state, {})

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``low`` and ``high`` (engineering units), each ``(k,)``.

        Both are NaN before the scorer is fitted.
        """
        return {"low": self._low.copy(), "high": self._high.copy()}

    def load_parameters(self, parameters: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``low`` and ``high`` and mark the scorer fitted.

        Raises:
            ValueError: a key is missing, a shape is not ``(k,)``, or a band is
                not finite with its centre strictly inside it.
        """
        layout = dict.fromkeys(("low", "high"), ((self.k,), np.float64))
        arrays = checked_arrays(self.name, "parameters", parameters, layout)
        self._set_band(arrays["low"], arrays["high"])


class RateParams(ScorerParams):
    """``[scorers.rate]``: alarm limit and the floor on the difference scale.

    Attributes:
        limit: the alarm limit in robust standard deviations of the first
            differences seen in the normal rows.
        min_scale: floor on that scale, in the tag's engineering units per
            reading, so a tag constant in the normal rows scores its first move
            large but finite. For a coarsely quantised tag, whose typical
            difference is 0, set it to about one quantisation step.
    """

    limit: float = Field(default=8.0, gt=0.0)
    min_scale: float = Field(default=1e-6, gt=0.0)


class RateOfChange(Scorer):
    """Change since the previous valid reading in robust units, per tag.

    Needs fitting: scores NaN until :meth:`fit` or :meth:`load_parameters`.
    Invalid cells (``valid`` False, or a non-finite value) score NaN and do not
    become the previous reading. The parameter is ``scale`` ``(k,)``, the floored
    1.4826 MAD of the training differences; the state is ``last`` ``(k,)``, each
    tag's last valid reading or NaN before its first.
    """

    name: ClassVar[str] = "rate"
    Params: ClassVar[type[ScorerParams]] = RateParams
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: RateParams, k: int) -> None:
        super().__init__(params, k)
        self.params: RateParams = params
        self._scale = np.full(k, np.nan)
        self.reset()

    def reset(self) -> None:
        """Forget every tag's last reading."""
        self._last = np.full(self.k, np.nan)

    def fit(self, normal: FloatArray) -> None:
        """Fit ``scale`` from the first differences of ``normal`` rows ``(steps, k)``.

        Non-finite cells are missing; a difference spans any gap. The last
        readings are then those of the rows, so scoring continues from them.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, or a tag has fewer than
                ``MIN_FIT_DIFFS`` differences (``MIN_FIT_DIFFS + 1`` finite values).
        """
        normal = self._check_shape(normal)
        ok = np.isfinite(normal)
        prev, last = previous_valid(normal, ok, np.full(self.k, np.nan))
        has_diff = ok & ~np.isnan(prev)
        require_counts(
            self.name,
            np.count_nonzero(has_diff, axis=0),
            MIN_FIT_DIFFS,
            "differences between finite values",
        )
        _, scale = robust_location_scale(normal - prev, has_diff)
        self._scale = np.maximum(scale, self.params.min_scale)
        self.fitted = True
        self._last = last

    def score(self, values: FloatArray, valid: BoolArray) -> ScoreArray:
        """Score ``values`` ``(steps, k)``; raise ``ValueError`` on shape."""
        values, ok = checked_batch(self, values, valid)
        if not self.fitted:
            return np.full(values.shape, np.nan)
        prev, self._last = previous_valid(values, ok, self._last)
        scores = np.abs(values - prev) / (self.params.limit * self._scale)
        scores[np.isnan(prev)] = 0.0
        scores[~ok] = np.nan
        return scores

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return a copy of ``last`` ``(k,)``."""
        return {"last": self._last.copy()}

    def restore(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``last``; raise ``ValueError`` if the key, shape or values are wrong.

        Each entry must be finite, or NaN for a tag not seen yet.
        """
        layout = {"last": ((self.k,), np.float64)}
        last = checked_arrays(self.name, "state", state, layout)["last"]
        if np.isinf(last).any():
            raise ValueError(f"{self.name} state last must be finite or NaN")
        self._last = last

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return a copy of ``scale`` (engineering units per reading), ``(k,)``.

        It is NaN before the scorer is fitted.
        """
        return {"scale": self._scale.copy()}

    def load_parameters(self, parameters: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``scale`` and mark the scorer fitted.

        Raises:
            ValueError: the key is missing, its shape is not ``(k,)`` or a value
                is not finite and positive.
        """
        layout = {"scale": ((self.k,), np.float64)}
        scale = checked_arrays(self.name, "parameters", parameters, layout)["scale"]
        if not (np.isfinite(scale) & (scale > 0.0)).all():
            raise ValueError(f"{self.name} parameters scale must be finite and > 0")
        self._scale = scale
        self.fitted = True


def previous_valid(
    values: FloatArray, ok: BoolArray, last: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Each cell's previous valid reading in its column, and the columns' last.

    ``values`` and ``ok`` are ``(steps, k)``; ``last`` ``(k,)`` holds each
    column's last valid reading before the batch (NaN if none). Returns
    ``prev`` ``(steps, k)``, the latest ``ok`` value strictly before each row
    (``last`` if none in the batch), and the new ``last`` ``(k,)``. A forward
    fill by running maximum of row indices: no loop over steps.
    """
    steps, k = values.shape

    # Row 0 of the history is ``last``; batch row t is history row t + 1.
    history = np.vstack([last[None, :], np.where(ok, values, np.nan)])
    rows = np.where(ok, np.arange(1, steps + 1)[:, None], 0)
    np.maximum.accumulate(rows, axis=0, out=rows)
    seen = history[rows, np.arange(k)]
    prev = np.vstack([last[None, :], seen])
    return prev[:-1], prev[-1].copy()
