"""``edge-gateway fit``: fit a model on normal data and write its model file.

The data come from a CSV file (a timestamp column, then one column per tag) or
from a time range of the gateway's own store (one poll group of one tool). The
model file is what a tool's ``[[models]]`` entry points to with ``file``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from edge_models.base import SCORER_KINDS, Scorer, scorer_class
from gateway.config import load_config
from gateway.store import StoreError, StoreReader

__all__ = ["FitError", "main", "read_csv", "read_store"]

EXIT_OK = 0
EXIT_FAILED = 2
_NS_PER_S = 1_000_000_000
_SNIFF_BYTES = 4096


class FitError(ValueError):
    """The data or the request cannot give a model; the message is one line."""


def read_csv(
    path: Path,
) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.float64]]:
    """Read ``timestamp,tag1,tag2,...`` rows; return timestamps (ns), names, values.

    Timestamps may be ISO 8601 (naive ones are taken as UTC) or seconds since the
    epoch. Empty cells are missing values (NaN). The delimiter (comma, semicolon or
    tab) is detected.

    Raises:
        FitError: naming the file and the 1-based line of the first problem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FitError(f"{path}: cannot be read: {exc}") from exc
    try:
        dialect = csv.Sniffer().sniff(text[:_SNIFF_BYTES], delimiters=",;\t")
    except csv.Error as exc:
        raise FitError(f"{path}: not a delimited text file") from exc
    rows = list(csv.reader(text.splitlines(), dialect))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise FitError(f"{path}: needs a header (timestamp and tags) and data rows")
    names = [name.strip() for name in rows[0][1:]]
    stamps = np.empty(len(rows) - 1, dtype=np.int64)
    values = np.empty((len(rows) - 1, len(names)))
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(names) + 1:
            raise FitError(
                f"{path}: line {line}: {len(row)} fields, header has {len(names) + 1}"
            )
        stamps[i] = _timestamp(path, line, row[0])
        for j, cell in enumerate(row[1:]):
            values[i, j] = _number(path, line, names[j], cell)
    return stamps, names, values


def _timestamp(path: Path, line: int, text: str) -> int:
    text = text.strip()
    try:
        return round(float(text) * _NS_PER_S)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FitError(f"{path}: line {line}: {text!r} is not a timestamp") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * _NS_PER_S)


def _number(path: Path, line: int, column: str, text: str) -> float:
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError as exc:
        raise FitError(
            f"{path}: line {line}: {text!r} is not a number in column {column}"
        ) from exc


def read_store(
    config_dir: Path, tool_id: str, group: str, start_ns: int | None, end_ns: int | None
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Return a poll group's tag names and good readings ``(steps, k)`` from the store.

    Readings of bad or uncertain quality are missing (NaN).

    Raises:
        FitError: unknown tool or group, no store, or no readings in the range.
    """
    config = load_config(config_dir)
    tool = next((t for t in config.tools if t.id == tool_id), None)
    if tool is None:
        raise FitError(f"{config_dir}: no tool {tool_id!r}")
    poll_group = next((g for g in tool.poll_groups if g.name == group), None)
    if poll_group is None:
        raise FitError(f"{config_dir}: tool {tool_id!r} has no poll group {group!r}")
    index = {tag.name: i for i, tag in enumerate(tool.tags)}
    columns = np.array([index[name] for name in poll_group.tags])

    try:
        with StoreReader.open(config.store_path) as store:
            stamps, tags, values, quality = store.read_readings(
                tool_id, start_ns, end_ns
            )
    except StoreError as exc:
        raise FitError(str(exc)) from exc
    position = np.full(len(tool.tags), -1)
    position[columns] = np.arange(len(columns))
    mine = position[tags] >= 0
    if not mine.any():
        raise FitError(f"no readings of {tool_id}/{group} in the store for that range")
    steps, row = np.unique(stamps[mine], return_inverse=True)
    matrix = np.full((len(steps), len(columns)), np.nan)
    good = quality[mine] == 0
    matrix[row[good], position[tags[mine][good]]] = values[mine][good]
    return list(poll_group.tags), matrix


def fit_model(
    kind: str, params: dict[str, Any], values: npt.NDArray[np.float64]
) -> Scorer:
    """Build a ``kind`` scorer with ``params`` and fit it on ``values``.

    Raises:
        FitError: unknown kind, bad parameters, or data the scorer cannot fit.
    """
    if kind not in SCORER_KINDS:
        raise FitError(f"unknown model kind {kind!r}; known: {', '.join(SCORER_KINDS)}")
    cls = scorer_class(kind)
    try:
        scorer = cls(cls.Params.model_validate(params), values.shape[1])
        scorer.fit(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise FitError(f"--params: {key}: {first['msg']}") from exc
    except ValueError as exc:
        raise FitError(str(exc)) from exc
    return scorer


def describe(scorer: Scorer, rows: int, tags: Sequence[str]) -> list[str]:
    """Return lines that report the fit: data size and every scalar parameter."""
    lines = [
        f"fitted {scorer.name} on {rows} rows of {len(tags)} tags: {', '.join(tags)}"
    ]
    for name, array in scorer.parameters().items():
        if np.ndim(array) == 0:
            lines.append(f"  {name} = {float(array):.6g}")
        else:
            lines.append(f"  {name}: array of shape {np.shape(array)}")
    return lines


def main(args: Any) -> int:
    """Run the command from parsed arguments; print the limits; return the exit code."""
    from edge_models.modelfile import save_model

    try:
        params = json.loads(args.params) if args.params else {}
        tags, values = _training_data(args)
        scorer = fit_model(args.kind, params, values)
        save_model(args.out, scorer, tags)
    except (FitError, ValueError) as exc:
        print(f"fit: {exc}")
        return EXIT_FAILED
    for line in describe(scorer, len(values), tags):
        print(line)
    print(f"wrote {args.out}")
    return EXIT_OK


def _training_data(args: Any) -> tuple[list[str], npt.NDArray[np.float64]]:
    if args.csv is not None:
        _, tags, values = read_csv(args.csv)
        return tags, values[: args.rows] if args.rows else values
    if not (args.config and args.tool and args.group):
        raise FitError("give --csv FILE, or --config DIR --tool ID --group NAME")
    return read_store(
        args.config, args.tool, args.group, _ns(args.start), _ns(args.end)
    )


def _ns(text: str | None) -> int | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * _NS_PER_S)
