"""Scorers and alert engines over one poll group: the gateway's anomaly detector.

A :class:`Detector` is what the pipeline runs on every batch of a poll group and
what ``edge-gateway evaluate`` runs on labeled data, so both measure the same code.
It holds one part per model:

* univariate models, one per scorer kind named in the tags' ``scorers`` lists,
  over the tags that name it, with the tool's ``[scorers.KIND]`` parameters, and an
  alert engine per tag with the tag's own rule;
* multivariate models from the tool's ``[[models]]`` (or, when the tool has none,
  the default stack below on every group), with one alert engine whose "tag" is
  the model's name and whose rule is the tool's ``[alerts]``.

A model that needs fitting and has no model file is fitted on the group's first
``fit_rows`` rows; until then it scores NaN (no alerts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from edge_models.base import Scorer, ScorerParams, scorer_class
from gateway.alerts import AlertEngine, AlertEvent
from gateway.config.models import AlertRule, ToolConfig

__all__ = ["DEFAULT_STACK", "Detection", "Detector", "ModelPlan", "plan_models"]

log = structlog.get_logger(__name__)

DEFAULT_STACK: tuple[tuple[str, dict[str, Any]], ...] = ()
"""Multivariate models (kind, parameters) run on every poll group of a tool that
configures no ``[[models]]``; each is fitted on the group's first ``fit_rows`` rows."""

_KEY_DIGEST_CHARS = 16

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Stateful(Protocol):
    """What a detector part saves to the store and loads back."""

    def state(self) -> dict[str, npt.NDArray[Any]]: ...

    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model of a group: which scorer, over which of the group's columns."""

    name: str
    kind: str
    params: ScorerParams
    columns: tuple[int, ...]
    file: Path | None = None


def plan_models(tool: ToolConfig, group: str) -> list[ModelPlan]:
    """Return the models of ``tool`` that run on poll group ``group``.

    Raises:
        KeyError: ``group`` is not one of the tool's poll groups.
    """
    config = next(g for g in tool.poll_groups if g.name == group)
    position = {name: c for c, name in enumerate(config.tags)}
    by_name = {tag.name: tag for tag in tool.tags}

    plans = []
    for kind in sorted({s for name in config.tags for s in by_name[name].scorers}):
        columns = tuple(
            c for c, n in enumerate(config.tags) if kind in by_name[n].scorers
        )
        plans.append(ModelPlan(kind, kind, tool.scorers[kind], columns))

    if tool.models is None:
        every = tuple(range(len(config.tags)))
        for kind, params in DEFAULT_STACK:
            cls = scorer_class(kind)
            plans.append(
                ModelPlan(kind, kind, cls.Params.model_validate(params), every)
            )
    else:
        plans.extend(
            ModelPlan(
                model.name,
                model.kind,
                model.params,
                tuple(position[tag] for tag in model.tags),
                model.file,
            )
            for model in tool.models
            if model.group == group
        )
    return plans


@dataclass(frozen=True, slots=True)
class Detection:
    """What a detector made of one batch.

    Attributes:
        scores: ``(steps, k)`` the highest univariate score per cell, NaN where no
            univariate model scored it (summaries report it per tag).
        row_scores: ``(steps,)`` the highest score of any model per row, NaN where
            none scored the row (evaluation ranks rows by it).
        events: alert raises and clears, model by model, each in time order.
    """

    scores: FloatArray
    row_scores: FloatArray
    events: list[AlertEvent]


def _row_max(scores: FloatArray) -> FloatArray:
    """Return each row's largest score, NaN for rows with none, without warnings."""
    filled = np.where(np.isnan(scores), -np.inf, scores).max(axis=1)
    return np.where(np.isneginf(filled), np.nan, filled)


@dataclass(slots=True)
class _Part:
    plan: ModelPlan
    scorer: Scorer
    alerts: AlertEngine
    columns: npt.NDArray[np.intp]
    every: bool
    pending: list[FloatArray] = field(default_factory=list)

    @property
    def pending_rows(self) -> int:
        return sum(len(rows) for rows in self.pending)


class Detector:
    """The models of one poll group, scoring and alerting batch by batch."""

    def __init__(
        self,
        tool: str,
        tags: Sequence[str],
        rules: Sequence[AlertRule],
        tool_rule: AlertRule,
        plans: Sequence[ModelPlan],
        fit_rows: int,
    ) -> None:
        self.tool = tool
        self.tags = tuple(tags)
        self.fit_rows = fit_rows
        self._parts = [self._part(plan, rules, tool_rule) for plan in plans]

    def _part(
        self, plan: ModelPlan, rules: Sequence[AlertRule], tool_rule: AlertRule
    ) -> _Part:
        if plan.file is not None:
            from edge_models.modelfile import load_model

            scorer, _ = load_model(plan.file)
        else:
            scorer = scorer_class(plan.kind)(plan.params, len(plan.columns))
        if scorer.multivariate:
            alerts = AlertEngine(self.tool, plan.kind, [plan.name], [tool_rule])
        else:
            alerts = AlertEngine(
                self.tool,
                plan.kind,
                [self.tags[c] for c in plan.columns],
                [rules[c] for c in plan.columns],
            )
        columns = np.array(plan.columns, dtype=np.intp)
        every = len(columns) == len(self.tags) and bool(
            np.array_equal(columns, np.arange(len(self.tags)))
        )
        return _Part(plan, scorer, alerts, columns, every)

    @property
    def models(self) -> tuple[str, ...]:
        """The names of the group's models."""
        return tuple(part.plan.name for part in self._parts)

    def fit(self, normal: FloatArray) -> None:
        """Fit every model on ``normal`` rows ``(steps, k)``; non-finite = missing."""
        for part in self._parts:
            part.scorer.fit(normal if part.every else normal[:, part.columns])
            part.pending.clear()

    def process(
        self, timestamps: npt.NDArray[np.int64], values: FloatArray, good: BoolArray
    ) -> Detection:
        """Score a batch ``(steps, k)`` and run the alert engines."""
        combined: FloatArray | None = None
        row_scores = np.full(len(timestamps), np.nan)
        events: list[AlertEvent] = []
        for part in self._parts:
            cells = values if part.every else values[:, part.columns]
            valid = good if part.every else good[:, part.columns]
            scores = self._score(part, cells, valid)
            with np.errstate(invalid="ignore"):  # rows with no score at all stay NaN
                np.fmax(row_scores, _row_max(scores), out=row_scores)
            if part.scorer.multivariate:
                events += part.alerts.update(timestamps, scores, scores)
                continue
            events += part.alerts.update(timestamps, cells, scores)
            if combined is None and part.every:
                combined = scores
            else:
                if combined is None:
                    combined = np.full(values.shape, np.nan)
                target = combined if part.every else combined[:, part.columns]
                np.fmax(target, scores, out=target)
                if not part.every:
                    combined[:, part.columns] = target
        if combined is None:
            combined = np.full(values.shape, np.nan)
        return Detection(combined, row_scores, events)

    def _score(self, part: _Part, cells: FloatArray, valid: BoolArray) -> FloatArray:
        scorer = part.scorer
        if scorer.fitted:
            return scorer.score(cells, valid)

        # Rows before the fit are learned from, not scored.
        part.pending.append(np.where(valid, cells, np.nan))
        missing = self.fit_rows - (part.pending_rows - len(cells))
        if missing > len(cells):
            return np.full((len(cells), scorer.outputs), np.nan)
        rows = np.concatenate(part.pending)
        part.pending.clear()
        try:
            scorer.fit(rows[: self.fit_rows])
        except ValueError as exc:
            # Too few usable rows (a tag that is mostly bad): learn on.
            part.pending.append(rows)
            log.warning(
                "model_fit_postponed",
                tool=self.tool,
                model=part.plan.name,
                error=str(exc),
            )
            return np.full((len(cells), scorer.outputs), np.nan)
        log.info(
            "model_fitted", tool=self.tool, model=part.plan.name, rows=self.fit_rows
        )
        scores = np.full((len(cells), scorer.outputs), np.nan)
        scores[missing:] = scorer.score(cells[missing:], valid[missing:])
        return scores

    def stateful(self, prefix: str) -> Iterator[tuple[str, Stateful]]:
        """Yield ``(store key, holder)`` for every model's state and parameters."""
        for part in self._parts:
            # The column names and kind are in the key, so a changed configuration
            # starts fresh instead of loading another model's state.
            names = ",".join(self.tags[c] for c in part.plan.columns)
            digest = hashlib.sha256(f"{part.plan.kind}:{names}".encode()).hexdigest()
            key = f"{prefix}/{part.plan.name}/{digest[:_KEY_DIGEST_CHARS]}"
            if part.plan.file is None:  # else the model file is the source of truth
                yield f"{key}/parameters", _Parameters(part.scorer)
            yield f"{key}/scorer", part.scorer
            yield f"{key}/alerts", part.alerts

    def active_alerts(self) -> list[dict[str, str]]:
        """Return the group's active alerts as ``{tag, model}`` entries."""
        return [
            {"tag": part.alerts.tags[j], "model": part.plan.kind}
            for part in self._parts
            for j in np.flatnonzero(part.alerts.active).tolist()
        ]


@dataclass(slots=True)
class _Parameters:
    """A scorer's fitted parameters seen through the state interface."""

    scorer: Scorer

    def state(self) -> dict[str, npt.NDArray[Any]]:
        return self.scorer.parameters() if self.scorer.fitted else {}

    def restore(self, state: dict[str, npt.NDArray[Any]]) -> None:
        if state:
            self.scorer.load_parameters(state)
