"""Two-sided tabular CUSUM: accumulated drift of each tag away from its normal level.

E. S. Page, 1954, "Continuous inspection schemes", in the tabular form of
D. C. Montgomery, "Introduction to Statistical Quality Control", §9.1. Each
reading is standardised with the in-control mean and standard deviation learned
from normal rows, and two one-sided sums accumulate the excess over the reference
value ``k``::

    z_t  = (x_t - mu0) / sigma0
    C⁺_t = max(0, C⁺_{t-1} + (z_t - k))
    C⁻_t = max(0, C⁻_{t-1} + (-z_t - k))
    score = max(C⁺_t, C⁻_t) / h

so 1.0 is Montgomery's decision interval ``H = h sigma0``. With the textbook
``k = 0.5`` and ``h = 5`` the chart is tuned to a shift of one standard
deviation (Montgomery, §9.1). Unlike a Shewhart chart the sums hold a shift:
once a step has pushed a sum over ``h`` it stays over for as long as the step
lasts.

``mu0`` and ``sigma0`` are robust, the median and 1.4826 MAD of the normal rows
(see :mod:`edge_models.mad`), so a few upsets in the training data do not widen
the chart; ``sigma0`` is floored at ``min_std``.
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

__all__ = ["CusumParams", "TabularCusum"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MIN_FIT_VALUES = 10
"""Finite values per tag that fit needs: fewer give no usable median and MAD."""


class CusumParams(ScorerParams):
    """``[scorers.cusum]``: reference value, decision interval, floor on sigma.

    Attributes:
        k: reference value (allowance) in standard deviations, about half the
            shift the chart is meant to catch quickly.
        h: decision interval in standard deviations; the score is ``C / h``.
        min_std: floor on the fitted standard deviation ``sigma0``, in the tag's
            engineering units, so a tag constant in the normal rows still
            standardises to finite values.
    """

    k: float = Field(default=0.5, ge=0.0)
    h: float = Field(default=5.0, gt=0.0)
    min_std: float = Field(default=1e-6, gt=0.0)


class TabularCusum(Scorer):
    """Causal two-sided tabular CUSUM per tag, vectorised across the ``k`` tags.

    Needs fitting: scores NaN until :meth:`fit` or :meth:`load_parameters`.
    Invalid cells (``valid`` False, or a non-finite value) score NaN and leave the
    sums as they were. The parameters are ``mu`` and ``sigma``, the state
    ``c_plus`` and ``c_minus``, all ``(k,)`` float64.
    """

    name: ClassVar[str] = "cusum"
    Params: ClassVar[type[ScorerParams]] = CusumParams
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: CusumParams, k: int) -> None:
        super().__init__(params, k)
        self.params: CusumParams = params
        self._mu = np.full(k, np.nan)
        self._sigma = np.full(k, np.nan)
        self.reset()

    def reset(self) -> None:
        """Set both sums of every tag to 0."""
        self._c_plus = np.zeros(self.k)
        self._c_minus = np.zeros(self.k)

    def fit(self, normal: FloatArray) -> None:
        """Learn ``mu`` and ``sigma`` from ``normal`` rows ``(steps, k)``.

        Non-finite cells are missing. The sums are then reset and run over the
        rows, so scoring continues from them.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, or a tag has fewer than
                ``MIN_FIT_VALUES`` finite values in it.
        """
        normal = self._check_shape(normal)
        ok = np.isfinite(normal)
        require_counts(
            self.name, np.count_nonzero(ok, axis=0), MIN_FIT_VALUES, "finite values"
        )
        mu, sigma = robust_location_scale(normal, ok)
        self._mu = mu
        self._sigma = np.maximum(sigma, self.params.min_std)
        self.fitted = True
        self.reset()
        self.score(normal, ok)

    def score(self, values: FloatArray, valid: BoolArray) -> ScoreArray:
        """Score ``values`` ``(steps, k)`` row by row; raise ``ValueError`` on shape."""
        values, ok = checked_batch(self, values, valid)
        if not self.fitted:
            return np.full(values.shape, np.nan)

        # An increment of 0 leaves a sum bit-for-bit unchanged, because the sums
        # are never negative: max(0, C + 0) == C. That is how invalid cells skip.
        z = (values - self._mu) / self._sigma
        up = np.where(ok, z - self.params.k, 0.0)
        down = np.where(ok, -z - self.params.k, 0.0)

        # Lindley's recursion has a closed form through running minima of
        # cumulative sums, but its rounding grows with the batch; the loop is
        # exact and independent of how the stream is cut into batches.
        scores = np.empty_like(values)
        c_plus, c_minus = self._c_plus, self._c_minus
        for t in range(values.shape[0]):
            c_plus += up[t]
            np.maximum(c_plus, 0.0, out=c_plus)
            c_minus += down[t]
            np.maximum(c_minus, 0.0, out=c_minus)
            np.maximum(c_plus, c_minus, out=scores[t])

        scores /= self.params.h
        scores[~ok] = np.nan
        return scores

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``c_plus`` and ``c_minus``, each ``(k,)``."""
        return {"c_plus": self._c_plus.copy(), "c_minus": self._c_minus.copy()}

    def restore(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``c_plus`` and ``c_minus``, each ``(k,)``, finite and non-negative.

        Raises:
            ValueError: a key is missing, a shape is wrong or a sum is negative.
        """
        layout = dict.fromkeys(("c_plus", "c_minus"), ((self.k,), np.float64))
        arrays = checked_arrays(self.name, "state", state, layout)
        for key, array in arrays.items():
            if not (np.isfinite(array) & (array >= 0.0)).all():
                raise ValueError(f"{self.name} state {key} must be finite and >= 0")
        self._c_plus, self._c_minus = arrays["c_plus"], arrays["c_minus"]

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``mu`` and ``sigma`` (engineering units), each ``(k,)``.

        Both are NaN before the scorer is fitted.
        """
        return {"mu": self._mu.copy(), "sigma": self._sigma.copy()}

    def load_parameters(self, parameters: Mapping[str, npt.NDArray[Any]]) -> None:
        """Load ``mu`` and ``sigma`` and mark the scorer fitted.

        Raises:
            ValueError: a key is missing, a shape is not ``(k,)``, ``mu`` is not
                finite or ``sigma`` is not finite and positive.
        """
        layout = dict.fromkeys(("mu", "sigma"), ((self.k,), np.float64))
        arrays = checked_arrays(self.name, "parameters", parameters, layout)
        mu, sigma = arrays["mu"], arrays["sigma"]
        if not np.isfinite(mu).all():
            raise ValueError(f"{self.name} parameters mu must be finite")
        if not (np.isfinite(sigma) & (sigma > 0.0)).all():
            raise ValueError(f"{self.name} parameters sigma must be finite and > 0")
        self._mu, self._sigma = mu, sigma
        self.fitted = True
