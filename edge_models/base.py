"""The scorer interface shared by the gateway pipeline and offline evaluation."""

from __future__ import annotations

import abc
import importlib
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

__all__ = ["ScoreArray", "Scorer", "ScorerParams", "scorer_class"]

ScoreArray = npt.NDArray[np.float64]


class ScorerParams(BaseModel):
    """Base of each scorer's parameter schema (a ``[scorers.NAME]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Scorer(abc.ABC):
    """A causal, stateful anomaly scorer over ``k`` columns (tags).

    ``score`` takes values ``(steps, k)`` and a validity mask of the same shape and
    returns non-negative scores of the same shape, where larger means more unusual
    and a score of 1 sits on the scorer's own alarm scale (see each scorer). Row
    ``i`` is scored from rows before it only. Invalid cells score NaN and leave the
    state as it was. ``state``/``restore`` carry everything a restart needs.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]]

    def __init__(self, params: Any, k: int) -> None:
        self.params = params
        self.k = k

    @abc.abstractmethod
    def score(
        self, values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_]
    ) -> ScoreArray:
        """Score ``values`` row by row, updating the state; see the class doc."""

    @abc.abstractmethod
    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Return the state as named arrays (copies), enough to :meth:`restore`."""

    @abc.abstractmethod
    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None:
        """Load a state from :meth:`state`; raise ``ValueError`` if it does not fit."""


_REGISTRY = {
    "ewma": "edge_models.ewma:EwmaZScore",
}

SCORER_KINDS = tuple(sorted(_REGISTRY))


def scorer_class(kind: str) -> type[Scorer]:
    """Return the scorer class for ``kind``; raise ``KeyError`` for an unknown kind."""
    module_name, _, class_name = _REGISTRY[kind].partition(":")
    cls: type[Scorer] = getattr(importlib.import_module(module_name), class_name)
    return cls
