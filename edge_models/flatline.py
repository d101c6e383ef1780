"""Flatline score: how long a tag has been stuck, against the longest normal run.

A stuck sensor, a frozen driver value or a held PLC register repeats its last
reading while the process moves on. This is the flat line test of the U.S.
IOOS QARTOD real-time quality control manuals (for example "Manual for Real-Time
Quality Control of In-situ Temperature and Salinity Data"), with its threshold
learned from normal rows instead of set by hand.

Each tag counts its run, the number of consecutive valid readings that changed by
at most ``tolerance`` from the previous valid reading::

    run_t = run_{t-1} + 1   if |x_t - x_prev| <= tolerance
            0               otherwise (and at the tag's first reading)
    score = run_t / max_run

``max_run`` is fitted per tag as ``factor`` times the longest run in the normal
rows, and at least ``min_run``, so a tag that legitimately holds still for a
while (a setpoint between recipe steps) alarms only when held clearly longer.
Invalid cells neither extend nor break a run.

The recursion is evaluated without a loop over steps: a run is the number of
flat readings since the last reset, which is a difference of cumulative counts
taken at the index of the last reset (a running maximum), all in integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_models.base import ScoreArray, Scorer, ScorerParams
from edge_models.limits import previous_valid
from edge_models.mad import checked_arrays, checked_batch, require_counts

__all__ = ["Flatline", "FlatlineParams"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MIN_FIT_VALUES = 10
"""Finite values per tag that fit needs to have seen the tag move at all."""


class FlatlineParams(ScorerParams):
    """``[scorers.flatline]``: what counts as unchanged, and the run limit.

    Attributes:
        tolerance: largest change from the previous valid reading, in the tag's
            engineering units, that still counts as flat; 0.0 counts only exact
            repeats.
        factor: the run limit is this multiple of the longest run in the normal
            rows.
        min_run: the least run limit, in readings, for tags that never held
            still in the normal rows.
    """

    tolerance: float = Field(default=0.0, ge=0.0)
    factor: float = Field(default=2.0, gt=0.0)
    min_run: int = Field(default=10, ge=1)


class Flatline(Scorer):
    """Run length of unchanged readings over the fitted limit, per tag.

    Needs fitting: scores NaN until :meth:`fit` or :meth:`load_parameters`.
    Invalid cells (``valid`` False, or a non-finite value) score NaN and leave the
    state as it was. The parameter is ``max_run`` ``(k,)`` float64; the state is
    ``last`` ``(k,)`` float64, each tag's last valid reading (NaN before its
    first), and ``run`` ``(k,)`` int64.
    """

    name: ClassVar[str] = "flatline"
    Params: ClassVar[type[ScorerParams]] = FlatlineParams
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: FlatlineParams, k: int) -> None:
        super().__init__(params, k)
        self.params: FlatlineParams = params
        self._max_run = np.full(k, np.nan)
        self.reset()

    def reset(self) -> None:
        """Forget every tag's last reading and run."""
        self._last = np.full(self.k, np.nan)
        self._run = np.zeros(self.k, dtype=np.int64)

    def fit(self, normal: FloatArray) -> None:
        """Fit ``max_run`` from the runs in ``normal`` rows ``(steps, k)``.

        Non-finite cells are missing. The runs are counted from a fresh state,
        which leaves the state as if the rows had just been scored.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, or a tag has fewer than
                ``MIN_FIT_VALUES`` finite values in it.
        """
        normal = self._check_shape(normal)
        ok = np.isfinite(normal)
        require_counts(
            self.name, np.count_nonzero(ok, axis=0), MIN_FIT_VALUES, "finite values"
        )
        self.reset()
        longest = np.where(ok, self._advance(normal, ok), 0).max(axis=0)
        self._max_run = np.maximum(
            self.params.factor * longest, float(self.params.min_run)
        )
        self.fitted = True

    def score(self, values: FloatArray, valid: BoolArray) -> ScoreArray:
        """Score ``values`` ``(steps, k)``; raise ``ValueError`` on shape."""
        values, ok = checked_batch(self, values, valid)
        if not self.fitted:
            return np.full(values.shape, np.nan)
        scores: ScoreArray = self._advance(values, ok) / self._max_run
        scores[~ok] = np.nan
        return scores

    def _advance(self, values: FloatArray, ok: BoolArray) -> IntArray:
        """Return each cell's run ``(steps, k)`` and move the state past the rows.

        An invalid cell carries the run of the cell before it.
        """
        steps, k = values.shape
        prev, self._last = previous_valid(values, ok, self._last)
        flat = ok & (np.abs(values - prev) <= self.params.tolerance)
        breaks = ok & ~flat

        # run_t = flats_t - flats at the last break at or before t; with no
        # break in the batch, the run carried in plus flats_t.
        flats = np.cumsum(flat, axis=0, dtype=np.int64)
        last_break = np.where(breaks, np.arange(steps)[:, None], -1)
        np.maximum.accumulate(last_break, axis=0, out=last_break)
        at_break = flats[last_break, np.arange(k)]
        runs = flats - np.where(last_break >= 0, at_break, -self._run)
        if steps:
            self._run = runs[-1].copy()
        return runs

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``last`` and ``run``, each ``(k,)``."""
        return {"last": self._last.copy(), "run": self._run.copy()}

    def restore(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``last`` and ``run``; raise ``ValueError`` if a key or shape is wrong.

        ``last`` must be finite, or NaN for a tag not seen yet, and ``run``
        non-negative.
        """
        layout = {"last": ((self.k,), np.float64), "run": ((self.k,), np.int64)}
        arrays = checked_arrays(self.name, "state", state, layout)
        if np.isinf(arrays["last"]).any() or (arrays["run"] < 0).any():
            raise ValueError(
                f"{self.name} state needs finite or NaN last and non-negative run"
            )
        self._last, self._run = arrays["last"], arrays["run"]

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return a copy of ``max_run`` (readings), ``(k,)``; NaN before fitting."""
        return {"max_run": self._max_run.copy()}

    def load_parameters(self, parameters: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``max_run`` and mark the scorer fitted.

        Raises:
            ValueError: the key is missing, its shape is not ``(k,)`` or a value
                is not finite and positive.
        """
        layout = {"max_run": ((self.k,), np.float64)}
        max_run = checked_arrays(self.name, "parameters", parameters, layout)
        if not (np.isfinite(max_run["max_run"]) & (max_run["max_run"] > 0.0)).all():
            raise ValueError(f"{self.name} parameters max_run must be finite and > 0")
        self._max_run = max_run["max_run"]
        self.fitted = True
