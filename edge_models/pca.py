"""PCA monitoring with Hotelling's T² and the Q statistic over all tags of a group.

Fitted on rows of normal operation, the model standardises each tag by its mean
and standard deviation, takes the principal components of the correlation matrix
and keeps the fewest that explain a set share of the variance. A row ``x`` is
scored by two statistics of its standardised values ``z`` (MacGregor and Kourti,
1995, "Statistical process control of multivariate processes")::

    t   = Pᵀ z                         (scores on the a kept components)
    T²  = Σ_a t_a² / λ_a               (Hotelling's T², distance inside the model)
    Q   = ‖z − P t‖²                   (squared prediction error, off the model)

Their alarm limits come from the training rows: T² from the F distribution for a
new observation (Tracy, Young and Mason, 1992, "Multivariate control charts for
individual observations"), Q from the discarded eigenvalues by the normal
approximation of Jackson and Mudholkar (1979, "Control procedures for residuals
associated with principal component analysis"). The score is the larger of
``T² / T²_lim`` and ``Q / Q_lim``, so it exceeds 1.0 exactly when either statistic
exceeds its limit.

This is the "T-squared+Q (PCA)" detector of the SKAB benchmark (Katser and
Kozitsin, 2020, "Skoltech Anomaly Benchmark"): 85 % variance, limits at 0.999,
and a trailing median over 5 rows of T² and of Q before they meet their limits.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field
from scipy import stats

from edge_models.base import ScoreArray, Scorer, ScorerParams

__all__ = ["PcaParams", "PcaT2Q", "q_limit", "t2_limit"]

FloatArray = npt.NDArray[np.float64]

_PARAMETER_KEYS = ("mean", "std", "loadings", "eigenvalues", "t2_limit", "q_limit")
_STATE_KEYS = ("t2", "q")

_Z_LIMIT = 1e100
"""Standardised values are clipped to ±this before projection. A reading so far
out scores astronomically high either way; the clip keeps T² and Q finite (their
squares stay far below the float64 maximum) for any finite reading."""

_MIN_EIGENVALUE = 1e-10
"""Floor on the correlation matrix's eigenvalues (in standardised variance units).
Collinear or constant training tags give eigenvalues of 0 up to rounding; the
floor keeps T², Q and the Q limit finite while any departure from such an exact
relation still scores very high."""

_MIN_H0 = 1e-3
"""Below this, Jackson and Mudholkar's exponent ``1 / h0`` is ill-conditioned (and
undefined from 0), so the Q limit falls back to Box's scaled chi-squared."""

_ORTHONORMAL_TOLERANCE = 1e-8
"""Largest deviation of ``PᵀP`` from the identity accepted in loaded loadings."""


class PcaParams(ScorerParams):
    """``[scorers.pca]``: retained variance, limit confidence, smoothing, floors.

    Attributes:
        variance: share of the training variance the kept components explain at
            least, ``0 < variance < 1``; at least one component is kept, and at
            most ``k - 1`` so that Q has a residual to measure.
        confidence: confidence level of both alarm limits, ``0.5 < confidence < 1``;
            a row of normal operation exceeds each limit with probability about
            ``1 - confidence``.
        median_window: T² and Q are each replaced by their median over the last
            this many valid rows (this one included) before they meet their
            limits; 1 scores every row on its own.
        min_std: floor on each tag's training standard deviation, in the tag's
            engineering units, so a tag constant in training standardises finitely.
        min_rows: fewest training rows (with every tag finite) that ``fit``
            accepts; it also always needs at least ``2 k``.
    """

    variance: float = Field(default=0.85, gt=0.0, lt=1.0)
    confidence: float = Field(default=0.999, gt=0.5, lt=1.0)
    median_window: int = Field(default=5, ge=1)
    min_std: float = Field(default=1e-6, gt=0.0)
    min_rows: int = Field(default=50, ge=2)


def t2_limit(components: int, rows: int, confidence: float) -> float:
    """Return the T² limit for a new row: ``a(n−1)(n+1) / (n(n−a)) · F(a, n−a)``.

    ``F`` is the ``confidence`` quantile of the F distribution with ``a`` and
    ``n − a`` degrees of freedom (Tracy, Young and Mason, 1992, eq. 3, for a future
    observation independent of the ``n`` training rows).

    Raises:
        ValueError: unless ``1 <= components < rows``.
    """
    a, n = components, rows
    if not 1 <= a < n:
        raise ValueError(f"T² limit needs 1 <= components < rows, got {a} and {n}")
    quantile = float(stats.f.ppf(confidence, a, n - a))
    return a * (n - 1) * (n + 1) / (n * (n - a)) * quantile


def q_limit(discarded: FloatArray, confidence: float) -> float:
    """Return the Q limit from the discarded eigenvalues ``λ_j`` (standardised units).

    With ``θ_i = Σ_j λ_j^i`` and ``h0 = 1 − 2 θ1 θ3 / (3 θ2²)``, Jackson and
    Mudholkar (1979) give ``Q_lim = θ1 [c √(2 θ2 h0²) / θ1 + 1 + θ2 h0 (h0 − 1) / θ1²]
    ^ (1 / h0)`` with ``c`` the normal ``confidence`` quantile. Where ``h0`` is near
    or below 0 (a few large eigenvalues among many small ones) their approximation
    breaks down and Box's ``g χ²_h`` with ``g = θ2 / θ1``, ``h = θ1² / θ2`` is used
    instead (Box, 1954; as in Nomikos and MacGregor, 1995). No discarded
    eigenvalue (one tag) means no residual: the limit is infinite.

    Raises:
        ValueError: an eigenvalue is not finite and positive.
    """
    lam = np.asarray(discarded, dtype=np.float64)
    if lam.size == 0:
        return math.inf
    if not (np.isfinite(lam) & (lam > 0)).all():
        raise ValueError("Q limit needs finite positive discarded eigenvalues")
    theta1, theta2, theta3 = (float(np.sum(lam**power)) for power in (1, 2, 3))
    h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
    if h0 < _MIN_H0:
        g, h = theta2 / theta1, theta1**2 / theta2
        return g * float(stats.chi2.ppf(confidence, h))
    c = float(stats.norm.ppf(confidence))
    bracket = (
        c * math.sqrt(2.0 * theta2 * h0**2) / theta1
        + 1.0
        + theta2 * h0 * (h0 - 1.0) / theta1**2
    )
    return theta1 * math.pow(bracket, 1.0 / h0)


class PcaT2Q(Scorer):
    """PCA T² and Q over the ``k`` tags, one normalised score column per row.

    The score of a row is ``max(T̃² / T²_lim, Q̃ / Q_lim)`` where ``T̃²`` and ``Q̃``
    are the medians of T² and Q over the last ``median_window`` valid rows; 1.0
    is the alarm limit. A row with any invalid cell scores NaN and does not enter
    the medians. Until that many valid rows have been seen since :meth:`reset`,
    the medians run over those there are (``fit`` leaves them filled from the
    end of the training rows).

    Parameters (:meth:`parameters`): ``mean`` and ``std`` ``(k,)`` in engineering
    units (``std`` already floored), ``loadings`` ``(k, a)`` (orthonormal columns,
    the kept components), ``eigenvalues`` ``(k,)`` of the correlation matrix in
    decreasing order (floored), and the 0-d ``t2_limit`` and ``q_limit`` (the
    latter infinite when ``k == 1``). State (:meth:`state`): ``t2`` and ``q``, each
    ``(median_window − 1,)``, the latest T² and Q oldest first, NaN for empty
    slots.
    """

    name: ClassVar[str] = "pca"
    Params: ClassVar[type[ScorerParams]] = PcaParams
    multivariate: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = True

    def __init__(self, params: PcaParams, k: int) -> None:
        super().__init__(params, k)
        self.params: PcaParams = params
        self._parameters: dict[str, FloatArray] = {}
        self.reset()

    # Fitting and parameters.

    def fit(self, normal: FloatArray) -> None:
        """Fit mean, std, components and limits on ``normal`` ``(steps, k)`` rows.

        Rows with any non-finite cell are dropped. The median buffer is then
        filled by scoring ``normal``, so scoring continues from its last rows.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)``, has fewer than
                ``max(2 k, min_rows)`` complete rows, or is too large to square.
        """
        normal = self._check_shape(normal)
        rows = normal[np.isfinite(normal).all(axis=1)]
        n, need = len(rows), max(2 * self.k, self.params.min_rows)
        if n < need:
            raise ValueError(
                f"pca: fit needs at least {need} rows with every tag finite, got {n}"
            )

        # Readings near the float64 limit overflow the moments; refuse them
        # rather than fit a model of infinities.
        with np.errstate(over="ignore", invalid="ignore"):
            mean = rows.mean(axis=0)
            std = np.maximum(rows.std(axis=0, ddof=1), self.params.min_std)
            z = (rows - mean) / std
            correlation = z.T @ z / (n - 1)
        moments = (mean, std, correlation)
        if not all(np.isfinite(moment).all() for moment in moments):
            raise ValueError("pca: fit rows are too large to standardise")

        eigenvalues, vectors = np.linalg.eigh(correlation)
        eigenvalues = np.maximum(eigenvalues[::-1], _MIN_EIGENVALUE)
        a = self._components(eigenvalues)
        self._set_parameters(
            mean,
            std,
            vectors[:, ::-1][:, :a],
            eigenvalues,
            np.array(t2_limit(a, n, self.params.confidence)),
            np.array(q_limit(eigenvalues[a:], self.params.confidence)),
        )
        self.score(normal, np.isfinite(normal))

    def _components(self, eigenvalues: FloatArray) -> int:
        """Return the fewest leading components reaching ``variance``, in [1, k−1]."""
        explained = np.cumsum(eigenvalues) / np.sum(eigenvalues)
        a = int(np.searchsorted(explained, self.params.variance)) + 1
        return min(a, max(self.k - 1, 1))

    def parameters(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of mean, std, loadings, eigenvalues, limits; {} unfitted."""
        return {key: array.copy() for key, array in self._parameters.items()}

    def load_parameters(self, parameters: dict[str, npt.NDArray[Any]]) -> None:
        """Load :meth:`parameters` output and start a fresh median buffer.

        Raises:
            ValueError: a key is missing or unknown, or an array has the wrong
                shape or values (non-finite, non-positive, loadings not
                orthonormal, a component count outside [1, k−1]).
        """
        missing = [key for key in _PARAMETER_KEYS if key not in parameters]
        unknown = sorted(set(parameters) - set(_PARAMETER_KEYS))
        if missing:
            raise ValueError(f"pca parameters lack {', '.join(missing)}")
        if unknown:
            raise ValueError(f"pca parameters have unknown {', '.join(unknown)}")
        arrays = {key: np.asarray(parameters[key], np.float64) for key in parameters}
        self._check_parameters(**arrays)
        self._set_parameters(**arrays)

    def _check_parameters(
        self,
        mean: FloatArray,
        std: FloatArray,
        loadings: FloatArray,
        eigenvalues: FloatArray,
        t2_limit: FloatArray,
        q_limit: FloatArray,
    ) -> None:
        k = self.k
        if loadings.ndim != 2 or loadings.shape[0] != k:
            raise ValueError(
                f"pca parameter loadings has shape {loadings.shape}, expected ({k}, a)"
            )
        shapes: dict[str, tuple[FloatArray, tuple[int, ...]]] = {
            "mean": (mean, (k,)),
            "std": (std, (k,)),
            "eigenvalues": (eigenvalues, (k,)),
            "t2_limit": (t2_limit, ()),
            "q_limit": (q_limit, ()),
        }
        for key, (array, shape) in shapes.items():
            if array.shape != shape:
                raise ValueError(
                    f"pca parameter {key} has shape {array.shape}, expected {shape}"
                )
        a = loadings.shape[1]
        if not 1 <= a <= max(k - 1, 1):
            raise ValueError(f"pca keeps {a} components, expected 1 to {k - 1}")

        finite = (mean, std, loadings, eigenvalues, t2_limit)
        if not all(np.isfinite(array).all() for array in finite):
            raise ValueError("pca parameters must be finite (the Q limit may be inf)")
        positive = (std, eigenvalues, t2_limit, q_limit)
        if not all((array > 0).all() for array in positive):
            raise ValueError("pca std, eigenvalues and limits must be positive")
        if np.isinf(q_limit) != (a == k):
            raise ValueError("pca Q limit must be infinite exactly when k == 1")
        gram = loadings.T @ loadings
        if np.abs(gram - np.eye(a)).max() > _ORTHONORMAL_TOLERANCE:
            raise ValueError("pca loadings must have orthonormal columns")

    def _set_parameters(
        self,
        mean: FloatArray,
        std: FloatArray,
        loadings: FloatArray,
        eigenvalues: FloatArray,
        t2_limit: FloatArray,
        q_limit: FloatArray,
    ) -> None:
        """Keep the parameters and derive the matrices that scoring multiplies by."""
        self._parameters = {
            "mean": mean.copy(),
            "std": std.copy(),
            "loadings": loadings.copy(),
            "eigenvalues": eigenvalues.copy(),
            "t2_limit": t2_limit.copy(),
            "q_limit": q_limit.copy(),
        }
        self._mean, self._std = mean.copy(), std.copy()
        self._limits = np.array([t2_limit, q_limit])

        # One product z @ W gives the whitened scores t_a / √λ_a (first a columns)
        # and the residual z − P Pᵀ z (last k); squared, a second product with
        # the 0/1 matrix S sums them into T² and Q.
        a = loadings.shape[1]
        residual = np.eye(self.k) - loadings @ loadings.T
        self._weights = np.hstack([loadings / np.sqrt(eigenvalues[:a]), residual])
        self._residual = np.ascontiguousarray(residual)
        self._sums = np.zeros((a + self.k, 2))
        self._sums[:a, 0] = 1.0
        self._sums[a:, 1] = 1.0

        self.fitted = True
        self.reset()

    # Streaming.

    def reset(self) -> None:
        """Empty the median buffer (fitted parameters are kept)."""
        self._buffer = np.full((self.params.median_window - 1, 2), np.nan)
        self._filled = 0

    def score(
        self, values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score ``values`` ``(steps, k)``, returning ``(steps, 1)``; NaN unfitted.

        Raises:
            ValueError: ``values`` or ``valid`` is not ``(steps, k)``.
        """
        values = self._check_shape(values)
        if np.shape(valid) != values.shape:
            raise ValueError(
                f"pca: valid of shape {np.shape(valid)} must be {values.shape}"
            )
        rows = np.isfinite(values)
        rows &= valid
        ok = rows.all(axis=1)
        steps, good = values.shape[0], int(np.count_nonzero(ok))
        scores = np.empty((steps, 1))
        if not self.fitted or good < steps:
            scores.fill(np.nan)
        if not self.fitted or good == 0:
            return scores

        # Per-row work is a few calls on tiny arrays, so a poll batch of one row
        # costs call overheads; the whole-batch path skips the row selection.
        statistics = self._statistics(values if good == steps else values[ok])
        ratios = self._smooth(statistics)
        ratios /= self._limits
        if good == steps:
            np.maximum(ratios[:, 0], ratios[:, 1], out=scores[:, 0])
        else:
            scores[ok, 0] = np.maximum(ratios[:, 0], ratios[:, 1])
        return scores

    def _standardise(self, values: FloatArray) -> FloatArray:
        # A finite reading may still overflow once divided by a tiny std; the
        # clip below turns that infinity into a large finite value.
        with np.errstate(over="ignore"):
            z = values - self._mean
            z /= self._std
        np.maximum(z, -_Z_LIMIT, out=z)
        return np.minimum(z, _Z_LIMIT, out=z)

    def _statistics(self, values: FloatArray) -> FloatArray:
        """Return ``(rows, 2)``: T² and Q of each (valid) row."""
        z = self._standardise(values)

        # Stacked (rows, 1, k) products make one small BLAS call per row, so a
        # row's result does not depend on how many rows share its batch (a
        # single (rows, k) product is blocked differently as rows grows).
        whitened = np.matmul(z[:, np.newaxis, :], self._weights)
        whitened *= whitened
        statistics: FloatArray = np.matmul(whitened, self._sums)[:, 0, :]
        return statistics

    def _smooth(self, statistics: FloatArray) -> FloatArray:
        """Return trailing medians of T² and Q over ``median_window`` valid rows.

        The result is a new array the caller may modify.
        """
        window = self.params.median_window
        if window == 1:
            return statistics
        history = np.concatenate([self._buffer, statistics])
        full = self._filled == window - 1
        self._buffer = history[1 - window :].copy()
        self._filled = min(window - 1, self._filled + len(statistics))

        # ordered[i, j] holds row i's window of statistic j, sorted. Sorting puts
        # the NaN of empty slots last, so a window of c values has its median at
        # sorted positions (c − 1) // 2 and c // 2. sliding_window_view costs
        # more than the sort itself for a single row, hence the shortcut.
        if len(statistics) == 1:
            ordered = np.sort(history.T, axis=-1)[np.newaxis]
        else:
            ordered = np.sort(sliding_window_view(history, window, axis=0), axis=-1)
        if full:
            lower = ordered[..., (window - 1) // 2]
            upper = ordered[..., window // 2]
            return upper if window % 2 else (lower + upper) * 0.5
        count = window - np.isnan(ordered).sum(axis=-1, keepdims=True)
        lower = np.take_along_axis(ordered, (count - 1) // 2, axis=-1)
        upper = np.take_along_axis(ordered, count // 2, axis=-1)
        medians: FloatArray = ((lower + upper) * 0.5)[..., 0]
        return medians

    def contributions(
        self,
        values: npt.NDArray[np.float64],
        valid: npt.NDArray[np.bool_] | None = None,
    ) -> FloatArray:
        """Return each tag's share of Q, ``(steps, k)`` squared standardised residuals.

        A row sums to its (unsmoothed) Q, so the largest entries name the tags
        that broke the model's correlation structure. Rows with an invalid cell,
        and every row before fitting, are NaN. The state is not touched.

        Raises:
            ValueError: ``values`` (or ``valid``) is not ``(steps, k)``.
        """
        values = self._check_shape(values)
        ok = np.isfinite(values)
        if valid is not None:
            if np.shape(valid) != values.shape:
                raise ValueError(
                    f"pca: valid of shape {np.shape(valid)} must be {values.shape}"
                )
            ok &= valid
        rows = ok.all(axis=1)
        shares = np.full(values.shape, np.nan)
        if self.fitted and rows.any():
            z = self._standardise(values[rows])
            residual = np.matmul(z[:, np.newaxis, :], self._residual)[:, 0, :]
            shares[rows] = residual * residual
        return shares

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of the buffered ``t2`` and ``q``, ``(median_window − 1,)``."""
        return {"t2": self._buffer[:, 0].copy(), "q": self._buffer[:, 1].copy()}

    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Load ``t2`` and ``q`` from :meth:`state`.

        Raises:
            ValueError: a key is missing, a shape is not ``(median_window − 1,)``,
                a value is negative or infinite, or the empty (NaN) slots are not
                the same leading slots in both.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"pca state lacks {', '.join(missing)}")
        shape = (self.params.median_window - 1,)
        for key in _STATE_KEYS:
            if np.shape(state[key]) != shape:
                raise ValueError(
                    f"pca state {key} has shape {np.shape(state[key])}, "
                    f"expected {shape}"
                )
        buffer = np.stack(
            [np.asarray(state[key], dtype=np.float64) for key in _STATE_KEYS], axis=1
        )
        empty = np.isnan(buffer)
        filled = int(np.count_nonzero(~empty[:, 0]))
        if (
            (empty[:, 0] != empty[:, 1]).any()
            or empty[len(buffer) - filled :].any()
            or not (buffer[~empty] >= 0).all()
            or not np.isfinite(buffer[~empty]).all()
        ):
            raise ValueError(
                "pca state needs finite non-negative t2 and q after the same "
                "leading empty (NaN) slots"
            )
        self._buffer = buffer
        self._filled = filled
