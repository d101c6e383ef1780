"""The scorer interface shared by the gateway pipeline and offline evaluation."""

from __future__ import annotations

import abc
import importlib
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

__all__ = [
    "SCORER_KINDS",
    "ScoreArray",
    "Scorer",
    "ScorerParams",
    "scorer_class",
]

ScoreArray = npt.NDArray[np.float64]
Arrays = dict[str, npt.NDArray[Any]]


class ScorerParams(BaseModel):
    """Base of each scorer's parameter schema (a ``[scorers.NAME]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Scorer(abc.ABC):
    """A causal, stateful anomaly scorer over ``k`` columns (tags).

    Life cycle: :meth:`fit` on rows of normal operation, then :meth:`score` batch
    after batch. ``fit`` learns the scorer's parameters and its alarm limits from
    those rows only, and leaves the streaming state as if the rows had just been
    scored, so scoring continues from them.

    ``score`` takes values ``(steps, k)`` and a validity mask of the same shape and
    returns ``(steps, outputs)`` scores: one column per tag for a univariate scorer,
    one column for a multivariate one. Scores are non-negative and normalised to
    the scorer's alarm limit: 1.0 sits on the limit, 2.0 twice as far out. Row ``i``
    is scored from rows before it (and itself) only. Invalid cells score NaN and
    leave their state as it was; a multivariate scorer scores NaN on a row with
    any invalid cell. A scorer that needs fitting scores NaN until it is fitted.

    ``state``/``restore`` carry the streaming state; ``parameters``/``load_parameters``
    the fitted parameters (empty for a scorer that learns online only).
    """

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]]
    multivariate: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False

    def __init__(self, params: Any, k: int) -> None:
        if k < 1:
            raise ValueError(f"{self.name}: k must be at least 1, got {k}")
        self.params = params
        self.k = k
        self.fitted = not self.needs_fit

    @property
    def outputs(self) -> int:
        """Number of score columns: ``k``, or 1 for a multivariate scorer."""
        return 1 if self.multivariate else self.k

    def fit(self, normal: npt.NDArray[np.float64]) -> None:
        """Learn from ``normal`` rows ``(steps, k)``; non-finite cells are missing.

        The default, for scorers that learn online, starts from a fresh state and
        scores the rows to warm it. Scorers with fitted parameters override it.

        Raises:
            ValueError: ``normal`` is not ``(steps, k)`` or too short to fit.
        """
        normal = self._check_shape(normal)
        self.reset()
        self.score(normal, np.isfinite(normal))
        self.fitted = True

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the streaming state (fitted parameters are kept)."""

    @abc.abstractmethod
    def score(
        self, values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score ``values`` row by row, updating the state; see the class doc."""

    @abc.abstractmethod
    def state(self) -> Arrays:
        """Return the streaming state as named arrays (copies)."""

    @abc.abstractmethod
    def restore(self, state: Arrays) -> None:
        """Load a state from :meth:`state`; raise ``ValueError`` if it does not fit."""

    def parameters(self) -> Arrays:
        """Return the fitted parameters and limits as named arrays (copies)."""
        return {}

    def load_parameters(self, parameters: Arrays) -> None:
        """Load :meth:`parameters` output; raise ``ValueError`` if it does not fit."""
        if parameters:
            raise ValueError(f"{self.name} has no fitted parameters")
        self.fitted = True

    def _check_shape(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.k:
            raise ValueError(
                f"{self.name}: values of shape {values.shape} must be (steps, {self.k})"
            )
        return values


_REGISTRY = {
    "autoencoder": "edge_models.autoencoder:WindowAutoencoder",
    "cusum": "edge_models.cusum:TabularCusum",
    "ewma": "edge_models.ewma:EwmaZScore",
    "flatline": "edge_models.flatline:Flatline",
    "level": "edge_models.level:LevelShift",
    "limits": "edge_models.limits:HardLimits",
    "mad": "edge_models.mad:RollingMad",
    "pca": "edge_models.pca:PcaT2Q",
    "rate": "edge_models.limits:RateOfChange",
}

SCORER_KINDS = tuple(sorted(_REGISTRY))


def scorer_class(kind: str) -> type[Scorer]:
    """Return the scorer class for ``kind``; raise ``KeyError`` for an unknown kind."""
    module_name, _, class_name = _REGISTRY[kind].partition(":")
    cls: type[Scorer] = getattr(importlib.import_module(module_name), class_name)
    return cls
