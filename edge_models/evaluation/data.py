"""Loaders for the labeled evaluation corpora: SKAB experiments and NAB series.

Both loaders read the files exactly as published (no sorting, no de-duplication,
no re-encoding) and check them where they enter: any malformed file raises one
:class:`EvaluationDataError` whose message is a single line naming the file and
the 1-based row, counted as lines of the file (the header is row 1), so an
operator can open the file at that line.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "NAB_WINDOWS_FILE",
    "SKAB_FEATURE_COUNT",
    "EvaluationDataError",
    "NabFile",
    "SkabFile",
    "detect_format",
    "load_nab_corpus",
    "load_nab_file",
    "load_skab_file",
    "load_skab_folder",
]

SKAB_DELIMITER = ";"
SKAB_TIME_COLUMN = "datetime"
SKAB_LABEL_COLUMNS = ("anomaly", "changepoint")
SKAB_FEATURE_COUNT = 8
SKAB_ANOMALY_FREE_FILE = "anomaly-free.csv"

NAB_HEADER = ("timestamp", "value")
NAB_WINDOWS_FILE = Path("labels") / "combined_windows.json"
# NAB's own checkout keeps the series under data/; the evaluation folder holds the
# category folders next to labels/.
NAB_DATA_SUBFOLDER = "data"

_EPOCH = dt.datetime(1970, 1, 1)
_NS_PER_US = 1000
_LABEL_VALUES = {0.0: False, 1.0: True}
_WINDOW_BOUNDS = 2

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class EvaluationDataError(ValueError):
    """A corpus file is malformed; the message is one line naming file and row."""


@dataclass(frozen=True, slots=True, eq=False)
class SkabFile:
    """One SKAB experiment (EVALUATION.md, SKAB step 1).

    Attributes:
        name: path relative to the SKAB folder, ``/``-separated (``valve1/0.csv``).
        timestamps: the naive ``datetime`` index as int64 nanoseconds since
            1970-01-01, shape ``(n,)``.
        features: sensor values in file column order, float64, shape ``(n, 8)``.
        anomaly: point-wise anomaly label per row, bool, shape ``(n,)``.
        changepoint: change-point label per row, bool, shape ``(n,)``.
        feature_names: the feature column names, in the order of ``features``.
    """

    name: str
    timestamps: Int64Array
    features: FloatArray
    anomaly: BoolArray
    changepoint: BoolArray
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        """Return the number of rows."""
        return int(self.timestamps.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class NabFile:
    """One NAB series with its scoring windows (EVALUATION.md, NAB steps 1 and 3).

    Attributes:
        name: path relative to the corpus data folder, ``/``-separated
            (``realKnownCause/machine_temperature_system_failure.csv``); the key
            of the file in ``combined_windows.json``.
        timestamps: row timestamps as int64 nanoseconds since 1970-01-01, in file
            order (NAB files may repeat or step back in time).
        values: the ``value`` column, float64, shape ``(n,)``.
        windows: scoring windows as ``(start_row, end_row)`` 0-based row indices,
            both inclusive: the row whose timestamp equals the window start and
            the first row whose timestamp equals its end.
    """

    name: str
    timestamps: Int64Array
    values: FloatArray
    windows: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        """Return the number of rows."""
        return int(self.timestamps.shape[0])


def load_skab_file(path: Path | str, name: str | None = None) -> SkabFile:
    """Read one SKAB experiment CSV (``;``-separated, header, CRLF or LF).

    ``name`` is how the file is called in records and error messages; it defaults
    to ``path`` as given. Timestamps must be naive, strictly increasing and unique.

    Raises:
        EvaluationDataError: the file cannot be read, its header lacks
            ``datetime``, a label column or has other than 8 features, a row has
            the wrong number of fields, a value is not a finite number, a label is
            not 0 or 1, or a timestamp is unparsable, zoned or out of order.
    """
    path = Path(path)
    label = str(path) if name is None else name
    rows = _read_rows(path, label, SKAB_DELIMITER)
    header = _next_header(rows, label)
    time_col, feature_cols, label_cols = _skab_columns(header, label)

    times: list[int] = []
    features: list[list[float]] = []
    labels: list[list[bool]] = []
    for row_no, fields in rows:
        _check_width(fields, len(header), label, row_no)
        stamp = _parse_time(fields[time_col], label, row_no, SKAB_TIME_COLUMN)
        if times and stamp <= times[-1]:
            raise EvaluationDataError(
                f"{label}: row {row_no}: timestamp {fields[time_col]!r} is not "
                "after the previous row's"
            )
        times.append(stamp)
        features.append(
            [_parse_float(fields[i], label, row_no, header[i]) for i in feature_cols]
        )
        labels.append(
            [_parse_label(fields[i], label, row_no, header[i]) for i in label_cols]
        )
    if not times:
        raise EvaluationDataError(f"{label}: row 2: the file has no data rows")

    label_array = np.array(labels, dtype=np.bool_)
    return SkabFile(
        name=label,
        timestamps=np.array(times, dtype=np.int64),
        features=np.array(features, dtype=np.float64),
        anomaly=label_array[:, 0].copy(),
        changepoint=label_array[:, 1].copy(),
        feature_names=tuple(header[i] for i in feature_cols),
    )


def load_skab_folder(folder: Path | str) -> list[SkabFile]:
    """Read every SKAB experiment under ``folder``, sorted by relative path.

    All ``*.csv`` files at any depth count except ``anomaly-free.csv``, which the
    current SKAB protocol does not use (EVALUATION.md, SKAB step 1).

    Raises:
        EvaluationDataError: ``folder`` holds no experiment file, or one of them
            is malformed (see :func:`load_skab_file`).
    """
    folder = Path(folder)
    paths = sorted(
        (p for p in folder.rglob("*.csv") if p.name != SKAB_ANOMALY_FREE_FILE),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not paths:
        raise EvaluationDataError(f"{folder}: no SKAB experiment CSV files found")
    return [load_skab_file(p, p.relative_to(folder).as_posix()) for p in paths]


def load_nab_file(
    path: Path | str,
    windows: Sequence[Sequence[str]] = (),
    name: str | None = None,
) -> NabFile:
    """Read one NAB series CSV (``timestamp,value``) and place its windows.

    ``windows`` are ``[start, end]`` timestamp strings as in
    ``combined_windows.json``; each must be the timestamp of a row, the start
    before the end. ``name`` is used in records and messages (default: ``path``).

    Raises:
        EvaluationDataError: the header is not ``timestamp,value``, a row has the
            wrong number of fields, a value is not a finite number, a timestamp is
            unparsable or zoned, or a window does not match rows of the file.
    """
    path = Path(path)
    label = str(path) if name is None else name
    rows = _read_rows(path, label, ",")
    header = _next_header(rows, label)
    if tuple(header) != NAB_HEADER:
        raise EvaluationDataError(
            f"{label}: row 1: header {','.join(header)!r} is not 'timestamp,value'"
        )

    times: list[int] = []
    values: list[float] = []
    for row_no, fields in rows:
        _check_width(fields, len(NAB_HEADER), label, row_no)
        times.append(_parse_time(fields[0], label, row_no, NAB_HEADER[0]))
        values.append(_parse_float(fields[1], label, row_no, NAB_HEADER[1]))
    if not times:
        raise EvaluationDataError(f"{label}: row 2: the file has no data rows")

    timestamps = np.array(times, dtype=np.int64)
    return NabFile(
        name=label,
        timestamps=timestamps,
        values=np.array(values, dtype=np.float64),
        windows=_window_rows(timestamps, windows, label),
    )


def load_nab_corpus(folder: Path | str) -> list[NabFile]:
    """Read every NAB series under ``folder`` with its windows, sorted by name.

    ``folder`` holds ``labels/combined_windows.json`` and the category folders
    (directly, or under ``data/`` as in NAB's own checkout). Each series is keyed
    in the windows file by its path relative to that data folder.

    Raises:
        EvaluationDataError: the windows file is missing or malformed, a series
            has no entry in it, or a series is malformed (see
            :func:`load_nab_file`).
    """
    folder = Path(folder)
    windows_by_name = _read_windows(folder / NAB_WINDOWS_FILE)
    data_folder = folder / NAB_DATA_SUBFOLDER
    if not data_folder.is_dir():
        data_folder = folder
    labels_folder = folder / NAB_WINDOWS_FILE.parent

    files: list[NabFile] = []
    for path in sorted(data_folder.rglob("*.csv")):
        if labels_folder in path.parents:
            continue
        name = path.relative_to(data_folder).as_posix()
        if name not in windows_by_name:
            raise EvaluationDataError(
                f"{NAB_WINDOWS_FILE.as_posix()}: no entry for {name}"
            )
        files.append(load_nab_file(path, windows_by_name[name], name))
    if not files:
        raise EvaluationDataError(f"{folder}: no NAB series CSV files found")
    return files


def detect_format(folder: Path | str) -> Literal["skab", "nab"]:
    """Tell whether ``folder`` is a NAB corpus or a folder of SKAB experiments.

    A folder with ``labels/combined_windows.json`` is NAB; otherwise it is SKAB
    when a CSV file under it starts with a ``datetime;`` header.

    Raises:
        EvaluationDataError: neither layout is recognised.
    """
    folder = Path(folder)
    if (folder / NAB_WINDOWS_FILE).is_file():
        return "nab"
    skab_header = SKAB_TIME_COLUMN + SKAB_DELIMITER
    for path in sorted(folder.rglob("*.csv")):
        with path.open(encoding="utf-8", errors="replace") as handle:
            if handle.readline().startswith(skab_header):
                return "skab"
    raise EvaluationDataError(
        f"{folder}: neither a NAB corpus ({NAB_WINDOWS_FILE.as_posix()}) nor "
        "SKAB experiments (CSV files with a 'datetime;' header)"
    )


def _read_rows(
    path: Path, label: str, delimiter: str
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(row_no, fields)`` for every line; row 1 is the header."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationDataError(f"{label}: cannot be read: {exc}") from exc
    reader = csv.reader(text.splitlines(), delimiter=delimiter, strict=True)
    try:
        yield from enumerate(reader, start=1)
    except csv.Error as exc:
        raise EvaluationDataError(f"{label}: row {reader.line_num}: {exc}") from exc


def _next_header(rows: Iterator[tuple[int, list[str]]], label: str) -> list[str]:
    """Return the header fields, stripped of surrounding blanks."""
    first = next(rows, None)
    if first is None or not any(field.strip() for field in first[1]):
        raise EvaluationDataError(f"{label}: row 1: missing header")
    return [field.strip() for field in first[1]]


def _skab_columns(header: list[str], label: str) -> tuple[int, list[int], list[int]]:
    """Return the time column, the feature columns and the two label columns."""
    if len(set(header)) != len(header):
        raise EvaluationDataError(f"{label}: row 1: duplicate column names in header")
    if header[0] != SKAB_TIME_COLUMN:
        raise EvaluationDataError(
            f"{label}: row 1: first column is {header[0]!r}, not {SKAB_TIME_COLUMN!r}"
        )
    for column in SKAB_LABEL_COLUMNS:
        if column not in header:
            raise EvaluationDataError(
                f"{label}: row 1: missing label column {column!r}"
            )
    label_cols = [header.index(column) for column in SKAB_LABEL_COLUMNS]
    feature_cols = [i for i in range(1, len(header)) if i not in label_cols]
    if len(feature_cols) != SKAB_FEATURE_COUNT:
        raise EvaluationDataError(
            f"{label}: row 1: {len(feature_cols)} feature columns, "
            f"expected {SKAB_FEATURE_COUNT}"
        )
    return 0, feature_cols, label_cols


def _check_width(fields: list[str], width: int, label: str, row_no: int) -> None:
    """Reject a row whose field count differs from the header's."""
    if len(fields) != width:
        raise EvaluationDataError(
            f"{label}: row {row_no}: {len(fields)} fields, expected {width}"
        )


def _parse_time(text: str, label: str, row_no: int, column: str) -> int:
    """Parse a naive ISO timestamp into nanoseconds since 1970-01-01."""
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is not None:
        raise EvaluationDataError(
            f"{label}: row {row_no}: {text!r} is not a naive timestamp "
            f"in column {column}"
        )
    return (stamp - _EPOCH) // dt.timedelta(microseconds=1) * _NS_PER_US


def _parse_float(text: str, label: str, row_no: int, column: str) -> float:
    """Parse a finite decimal number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise EvaluationDataError(
            f"{label}: row {row_no}: {text!r} is not a number in column {column}"
        )
    return value


def _parse_label(text: str, label: str, row_no: int, column: str) -> bool:
    """Parse a 0/1 label written as a number (SKAB writes ``0.0`` and ``1.0``)."""
    value = _parse_float(text, label, row_no, column)
    if value not in _LABEL_VALUES:
        raise EvaluationDataError(
            f"{label}: row {row_no}: {text!r} is not 0 or 1 in column {column}"
        )
    return _LABEL_VALUES[value]


def _read_windows(path: Path) -> dict[str, list[list[str]]]:
    """Read ``combined_windows.json``: file name -> list of ``[start, end]``."""
    where = NAB_WINDOWS_FILE.as_posix()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationDataError(f"{where}: cannot be read: {exc}") from exc
    if not isinstance(content, dict):
        raise EvaluationDataError(f"{where}: top level is not an object")
    for name, windows in content.items():
        if not isinstance(windows, list) or not all(
            isinstance(w, list) and len(w) == 2 and all(isinstance(t, str) for t in w)
            for w in windows
        ):
            raise EvaluationDataError(
                f"{where}: {name}: windows are not a list of [start, end] strings"
            )
    return content


def _window_rows(
    timestamps: Int64Array, windows: Sequence[Sequence[str]], label: str
) -> tuple[tuple[int, int], ...]:
    """Place each ``[start, end]`` window on the first rows with those timestamps."""
    first_row: dict[int, int] = {}
    for row, stamp in enumerate(timestamps.tolist()):
        first_row.setdefault(stamp, row)
    where = f"{label}: window"
    placed: list[tuple[int, int]] = []
    for k, window in enumerate(windows, start=1):
        if len(window) != _WINDOW_BOUNDS:
            raise EvaluationDataError(f"{where} {k}: {window!r} is not [start, end]")
        rows = [_window_row(text, first_row, f"{where} {k}") for text in window]
        if rows[0] >= rows[1]:
            raise EvaluationDataError(f"{where} {k}: start is not before end")
        # NAB's row weights refer to the previous window, so windows must be
        # disjoint and in file order (EVALUATION.md, NAB step 4).
        if placed and rows[0] <= placed[-1][1]:
            raise EvaluationDataError(f"{where} {k}: starts before window {k - 1} ends")
        placed.append((rows[0], rows[1]))
    return tuple(placed)


def _window_row(text: str, first_row: Mapping[int, int], where: str) -> int:
    """Return the first row whose timestamp is ``text``."""
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is not None:
        raise EvaluationDataError(f"{where}: {text!r} is not a naive timestamp")
    ns = (stamp - _EPOCH) // dt.timedelta(microseconds=1) * _NS_PER_US
    if ns not in first_row:
        raise EvaluationDataError(f"{where}: {text!r} is not a timestamp of the file")
    return first_row[ns]
