"""``edge-gateway evaluate``: run a detector over labeled data with the published rules.

The detector is the gateway's own :class:`~gateway.detector.Detector`, built from a
stack: the univariate scorers every tag gets, the multivariate models every group
gets, their parameters and the alert rule. Without ``--stack`` it is the stack the
gateway applies to a tool that configures no models of its own.

* SKAB folders: per file, fit on the first 400 rows, then every later row is
  alarmed when any of the detector's alerts is active (raise/clear with the alert
  rule's persistence); scored with the SKAB rules (F1, FAR, MAR, change-point NAB).
* NAB folders: per file, fit on the probationary rows, then the row score is the
  highest normalised model score ``r``, mapped to ``r / (1 + r)`` in [0, 1);
  scored with the NAB rules, the threshold chosen once across the files.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_models.base import scorer_class
from edge_models.evaluation import data as datasets
from edge_models.evaluation import nab, skab
from gateway.alerts import AlertEvent
from gateway.config.models import AlertRule, TagConfig
from gateway.detector import DEFAULT_STACK, Detector, ModelPlan

__all__ = ["Stack", "evaluate", "load_stack", "main"]

_NS_PER_S = 1_000_000_000
_DEFAULT_TAG_SCORERS: tuple[str, ...] = TagConfig.model_fields["scorers"].default


class StackModel(BaseModel):
    """One multivariate model of a stack: its kind and parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


class Stack(BaseModel):
    """A detector stack, as a ``--stack`` TOML file writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    tag_scorers: tuple[str, ...] = _DEFAULT_TAG_SCORERS
    scorers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    models: tuple[StackModel, ...] = tuple(
        StackModel(kind=kind, params=params) for kind, params in DEFAULT_STACK
    )
    alerts: AlertRule = AlertRule()


def load_stack(path: Path | None) -> Stack:
    """Read a stack file, or return the default stack for ``None``.

    Raises:
        ValueError: the file cannot be read or breaks the schema (one line).
    """
    if path is None:
        return Stack()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Stack.model_validate(_tuples(data))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path}: {key}: {first['msg']}") from exc


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def build_detector(
    stack: Stack, tags: Sequence[str], fit_rows: int, model_file: Path | None = None
) -> Detector:
    """Return the stack's detector over ``tags`` (all in one group).

    With ``model_file``, the detector is that fitted model alone (the stack's
    alert rule still applies).
    """
    every = tuple(range(len(tags)))
    if model_file is not None:
        from edge_models.modelfile import load_model

        scorer, _ = load_model(model_file, tags=tags)
        plan = ModelPlan(scorer.name, scorer.name, scorer.params, every, model_file)
        rules = [stack.alerts] * len(tags)
        return Detector("evaluation", tags, rules, stack.alerts, [plan], fit_rows)
    plans = [
        ModelPlan(
            kind,
            kind,
            scorer_class(kind).Params.model_validate(stack.scorers.get(kind, {})),
            every,
        )
        for kind in stack.tag_scorers
    ]
    plans += [
        ModelPlan(
            model.kind,
            model.kind,
            scorer_class(model.kind).Params.model_validate(model.params),
            every,
        )
        for model in stack.models
    ]
    rules = [stack.alerts] * len(tags)
    return Detector("evaluation", tags, rules, stack.alerts, plans, fit_rows)


def alarms_from_events(
    timestamps: npt.NDArray[np.int64], events: Sequence[AlertEvent]
) -> npt.NDArray[np.bool_]:
    """Return per row whether any alert was active (raised and not yet cleared).

    An alert is active from the row that raised it up to, not including, the row
    that cleared it.
    """
    delta = np.zeros(len(timestamps) + 1, dtype=np.int64)
    for event in events:
        row = int(np.searchsorted(timestamps, event.ts_ns))
        delta[row] += 1 if event.state == "raised" else -1
    return np.cumsum(delta[:-1]) > 0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Figures of one evaluation run, as ``--json`` prints them."""

    format: str
    files: int
    rows: int
    f1: float | None
    far: float | None
    mar: float | None
    nab_standard: float
    nab_low_fp: float
    nab_low_fn: float
    missed_cp: int | None
    false_cp: int | None
    us_per_row: float


def evaluate(
    folder: Path, data_format: str | None, stack: Stack, model_file: Path | None = None
) -> Evaluation:
    """Run ``stack`` (or the fitted ``model_file``) over the labeled data in ``folder``.

    With a model file, nothing is fitted per file; the same rows are scored as
    without one, so the figures compare.

    Raises:
        ValueError: the folder, one of its files or the model file is not valid
            (one line).
    """
    kind = data_format or datasets.detect_format(folder)
    if kind == "skab":
        return _evaluate_skab(folder, stack, model_file)
    return _evaluate_nab(folder, stack, model_file)


def _evaluate_skab(folder: Path, stack: Stack, model_file: Path | None) -> Evaluation:
    files = datasets.load_skab_folder(folder)
    alarms = []
    elapsed = 0.0
    rows = 0
    for file in files:
        train, test = skab.split(file)
        detector = build_detector(
            stack, file.feature_names, skab.TRAIN_ROWS, model_file
        )
        if model_file is None:
            detector.fit(train.features)
        started = time.perf_counter()
        detection = detector.process(
            test.timestamps, test.features, np.isfinite(test.features)
        )
        elapsed += time.perf_counter() - started
        rows += len(test.timestamps)
        alarms.append(alarms_from_events(test.timestamps, detection.events))
    result = skab.skab_result(files, alarms)
    return Evaluation(
        format="skab",
        files=len(files),
        rows=rows,
        f1=result.f1,
        far=result.far,
        mar=result.mar,
        nab_standard=result.nab_standard,
        nab_low_fp=result.nab_low_fp,
        nab_low_fn=result.nab_low_fn,
        missed_cp=result.missed_cp,
        false_cp=result.false_cp,
        us_per_row=round(elapsed / max(rows, 1) * 1e6, 2),
    )


def _evaluate_nab(folder: Path, stack: Stack, model_file: Path | None) -> Evaluation:
    files = datasets.load_nab_corpus(folder)
    all_scores = []
    elapsed = 0.0
    rows = 0
    for file in files:
        values = file.values.reshape(-1, 1)
        probation = nab.probationary_rows(len(values))
        detector = build_detector(stack, ["value"], probation, model_file)
        if model_file is None:
            detector.fit(values[:probation])
        started = time.perf_counter()
        detection = detector.process(
            file.timestamps[probation:],
            values[probation:],
            np.isfinite(values[probation:]),
        )
        elapsed += time.perf_counter() - started
        rows += len(values) - probation
        ratio = np.nan_to_num(detection.row_scores, nan=0.0)
        scores = np.zeros(len(values))
        scores[probation:] = ratio / (1.0 + ratio)
        all_scores.append(scores)
    result = nab.nab_result(all_scores, files)
    return Evaluation(
        format="nab",
        files=len(files),
        rows=rows,
        f1=None,
        far=None,
        mar=None,
        nab_standard=result.standard,
        nab_low_fp=result.low_fp,
        nab_low_fn=result.low_fn,
        missed_cp=None,
        false_cp=None,
        us_per_row=round(elapsed / max(rows, 1) * 1e6, 2),
    )


def main(
    folder: Path,
    data_format: str | None,
    stack_file: Path | None,
    model_file: Path | None,
    as_json: bool,
) -> int:
    """Run the command; print the figures; return the exit code."""
    try:
        stack = load_stack(stack_file)
        result = evaluate(folder, data_format, stack, model_file)
    except ValueError as exc:
        print(f"evaluate: {exc}")
        return 2
    if as_json:
        print(json.dumps(asdict(result)))
        return 0
    print(f"{result.format} data: {result.files} files, {result.rows} scored rows")
    if result.f1 is not None:
        print(f"F1 {result.f1:.2f}  FAR {result.far:.2f} %  MAR {result.mar:.2f} %")
        print(
            f"missed change points {result.missed_cp}, "
            f"false change-point alarms {result.false_cp}"
        )
    print(
        f"NAB standard {result.nab_standard:.2f}  low FP {result.nab_low_fp:.2f}  "
        f"low FN {result.nab_low_fn:.2f}"
    )
    print(f"{result.us_per_row:.2f} us per row")
    return 0
