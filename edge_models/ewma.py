"""EWMA z-score: distance of each reading from its tag's exponentially weighted mean.

Each tag keeps an exponentially weighted moving mean ``m`` and variance ``v``
(S. W. Roberts, 1959, "Control chart tests based on geometric moving averages";
the incremental variance is the exponentially weighted one of T. Finch, 2009,
"Incremental calculation of weighted mean and variance"). A reading ``x_t`` is
scored against the state left by the readings before it, then folded in::

    s   = max(sqrt(v_{t-1}), min_std)
    z_t = |x_t - m_{t-1}| / s
    d   = clip(x_t - m_{t-1}, -c * s, c * s)      (after warm-up, when c is set)
    m_t = m_{t-1} + alpha * d
    v_t = (1 - alpha) * (v_{t-1} + alpha * d**2)

The score is ``z_t / limit``: 1.0 is ``limit`` exponentially weighted standard
deviations from the mean, the classical EWMA chart's ``L`` (Lucas and Saccucci,
1990, "Exponentially weighted moving average control schemes").

Clipping the deviation that updates the state at ``c`` standard deviations is the
Huber-type robust exponential smoothing of T. Cipra, 1992, "Robust exponential
smoothing". Without it one spike inflates ``v`` so much that the very next
abnormal reading scores low; with it a spike or a step keeps scoring high for as
long as it lasts, while the mean still follows a real change, slowly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_models.base import ScoreArray, Scorer, ScorerParams

__all__ = ["EwmaParams", "EwmaZScore"]

_STATE_KEYS = ("m", "v", "n")


class EwmaParams(ScorerParams):
    """``[scorers.ewma]``: smoothing, warm-up length and the floor on the std.

    Attributes:
        alpha: weight of the newest reading, ``0 < alpha <= 1``; the mean's memory
            is about ``1 / alpha`` valid readings.
        warmup: valid readings per tag that are learned from before scores are
            emitted; they score 0.0.
        min_std: floor on the standard deviation, in the tag's engineering units.
            A tag that has been constant has ``v == 0``; the floor makes its first
            move score large but finite instead of infinite.
        clip: after warm-up, the deviation folded into the state is clipped to
            this many standard deviations; ``None`` folds in every deviation whole.
        limit: the alarm limit in standard deviations; the score is ``z / limit``.
    """

    alpha: float = Field(default=0.05, gt=0.0, le=1.0)
    warmup: int = Field(default=30, ge=0)
    min_std: float = Field(default=1e-6, gt=0.0)
    clip: float | None = Field(default=3.0, gt=0.0)
    limit: float = Field(default=6.0, gt=0.0)


class EwmaZScore(Scorer):
    """Causal EWMA z-score per tag, vectorised across the ``k`` tags.

    Invalid cells (``valid`` False, or a non-finite value) score NaN and leave the
    tag's state untouched. A tag's mean starts at its first valid reading with a
    variance of 0. The state is ``m`` and ``v`` (float64) and ``n``, the number of
    valid readings seen (int64), each of shape ``(k,)``.
    """

    name: ClassVar[str] = "ewma"
    Params: ClassVar[type[ScorerParams]] = EwmaParams

    def __init__(self, params: EwmaParams, k: int) -> None:
        super().__init__(params, k)
        self.params: EwmaParams = params
        self.reset()

    def reset(self) -> None:
        """Forget every tag's mean, variance and count."""
        self._m = np.zeros(self.k)
        self._v = np.zeros(self.k)
        self._n = np.zeros(self.k, dtype=np.int64)

    def score(
        self, values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score ``values`` ``(steps, k)`` row by row; raise ``ValueError`` on shape."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.k or valid.shape != values.shape:
            raise ValueError(
                f"values {values.shape} and valid {valid.shape} must both be "
                f"(steps, {self.k})"
            )
        ok = valid & np.isfinite(values)
        self._start_new_tags(values, ok)
        return self._run(values, ok)

    def _start_new_tags(
        self, values: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]
    ) -> None:
        # Setting m to the first valid reading makes the ordinary update at that
        # reading a no-op (d == 0, v stays 0), which is the stated initialisation.
        new = (self._n == 0) & ok.any(axis=0)
        if new.any():
            cols = np.flatnonzero(new)
            first = ok[:, cols].argmax(axis=0)
            self._m[cols] = values[first, cols]
            self._v[cols] = 0.0

    def _run(
        self, values: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score and update row by row, working in place on ``(k,)`` rows."""
        alpha, min_std, warmup, clip = (
            self.params.alpha,
            self.params.min_std,
            self.params.warmup,
            self.params.clip,
        )
        bad = None if ok.all() else ~ok
        warming = bool((self._n < warmup).any())
        m, v, n = self._m, self._v, self._n
        z = np.empty_like(values)
        d, ad, sd, lim = (np.empty(self.k) for _ in range(4))
        keep = np.full(self.k, 1.0 - alpha)
        for t in range(values.shape[0]):
            zt = z[t]
            np.subtract(values[t], m, out=d)
            if bad is not None:
                # d = 0 and a weight of 1 on the old variance leave m and v
                # bit-for-bit unchanged on invalid cells: m + 0, 1 * (v + 0).
                np.copyto(d, 0.0, where=bad[t])
                keep.fill(1.0 - alpha)
                np.copyto(keep, 1.0, where=bad[t])

            np.sqrt(v, out=sd)
            np.maximum(sd, min_std, out=sd)
            np.abs(d, out=zt)
            zt /= sd
            if clip is not None:
                np.multiply(sd, clip, out=lim)
                if warming:
                    np.copyto(lim, np.inf, where=n < warmup)
                np.minimum(d, lim, out=d)
                np.negative(lim, out=lim)
                np.maximum(d, lim, out=d)

            np.multiply(d, alpha, out=ad)
            m += ad
            ad *= d
            v += ad
            v *= keep

            if warming:
                np.copyto(zt, 0.0, where=n < warmup)
                n += ok[t]
            if bad is not None:
                np.copyto(zt, np.nan, where=bad[t])
        if not warming:
            n += values.shape[0] if bad is None else np.count_nonzero(ok, axis=0)
        z *= 1.0 / self.params.limit
        return z

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return copies of ``m``, ``v`` and ``n``, each ``(k,)``."""
        return {"m": self._m.copy(), "v": self._v.copy(), "n": self._n.copy()}

    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Load ``m``, ``v``, ``n``; raise ``ValueError`` if a key or shape is wrong."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"ewma state lacks {', '.join(missing)}")
        for key in _STATE_KEYS:
            if np.shape(state[key]) != (self.k,):
                raise ValueError(
                    f"ewma state {key} has shape {np.shape(state[key])}, "
                    f"expected ({self.k},)"
                )
        n = np.asarray(state["n"], dtype=np.int64)
        v = np.asarray(state["v"], dtype=np.float64)
        m = np.asarray(state["m"], dtype=np.float64)
        if (n < 0).any() or not (v >= 0).all() or not np.isfinite(m).all():
            raise ValueError("ewma state needs finite m and non-negative n and v")
        self._m = m.copy()
        self._v = v.copy()
        self._n = n.copy()
