"""The SKAB protocol: pooled outlier metrics and NAB-style change-point scoring.

Implements the SKAB section of ``EVALUATION.md`` (the rules of the published SKAB
leaderboard, Katser and Kozitsin 2020): each experiment is split into its first
400 training rows and the test rows after them; a detector's 0/1 alarms on the
test rows are scored by pooled F1, false-alarm rate (FAR) and missed-alarm rate
(MAR), and by the change points they imply against 60-second windows after each
labeled change point, under three weight profiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from edge_models.evaluation.data import SkabFile

__all__ = [
    "LOW_FN",
    "LOW_FP",
    "PROFILES",
    "STANDARD",
    "TRAIN_ROWS",
    "WINDOW_S",
    "ChangePointScore",
    "SkabProfile",
    "SkabResult",
    "change_point_windows",
    "predicted_change_points",
    "score_change_points",
    "skab_result",
    "split",
]

# EVALUATION.md, SKAB step 2: the first 400 rows by position train the detector.
TRAIN_ROWS = 400
# Step 7: each window runs from a labeled change point to 60 s after it.
WINDOW_S = 60
# Step 9: the window is cut into 1000 evenly spaced points on [-pi/2, pi/2].
TANH_POINTS = 1000
# Steps 4 and 10: every published figure is rounded to 2 decimals.
DECIMALS = 2

_NS_PER_S = 1_000_000_000
_PERCENT = 100.0

BoolArray = npt.NDArray[np.bool_]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SkabProfile:
    """Signed weights of one scoring profile (EVALUATION.md, SKAB step 9).

    Attributes:
        name: profile name as published.
        a_tp: score of a detection at the start of its window.
        a_fp: score of a false positive, and of a detection at the window end.
        a_fn: score of a missed window.
    """

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


STANDARD = SkabProfile("standard", 1.0, -0.11, -1.0)
LOW_FP = SkabProfile("low_fp", 1.0, -0.22, -1.0)
LOW_FN = SkabProfile("low_fn", 1.0, -0.11, -2.0)
PROFILES = (STANDARD, LOW_FP, LOW_FN)


@dataclass(frozen=True, slots=True)
class ChangePointScore:
    """Change-point outcome of one file (EVALUATION.md, SKAB step 8).

    Attributes:
        windows: number of windows (labeled change points in the test part).
        delays_s: for each detected window, seconds from its (merged) start to
            the detection, in window order.
        positions: for each detected window, ``e`` in 0..999 (step 9).
        false_positives: predicted change points outside every window.
    """

    windows: int
    delays_s: tuple[float, ...]
    positions: tuple[int, ...]
    false_positives: int

    @property
    def missed(self) -> int:
        """Windows without a predicted change point."""
        return self.windows - len(self.positions)

    def score(self, profile: SkabProfile) -> float:
        """Return the file score S_f under ``profile`` (EVALUATION.md step 9)."""
        total = sum(_detection_value(e, profile) for e in self.positions)
        return total + profile.a_fn * self.missed + profile.a_fp * self.false_positives


@dataclass(frozen=True, slots=True)
class SkabResult:
    """Published SKAB figures for one detector over a set of files.

    Attributes:
        f1: pooled F1 over all counted test rows, 2 decimals (NaN when no row is
            anomalous and none alarmed).
        far: false-alarm rate in percent, 2 decimals (NaN without normal rows).
        mar: missed-alarm rate in percent, 2 decimals (NaN without anomalous rows).
        nab_standard: normalised change-point score, standard profile, 2 decimals.
        nab_low_fp: the same under the low-FP profile.
        nab_low_fn: the same under the low-FN profile.
        missed_cp: windows without a detection.
        false_cp: predicted change points outside every window.
        mean_delay_s: mean seconds from window start to detection, unrounded;
            ``None`` when no window was detected.
        rows: counted test rows over all files.
        files: number of files.
    """

    f1: float
    far: float
    mar: float
    nab_standard: float
    nab_low_fp: float
    nab_low_fn: float
    missed_cp: int
    false_cp: int
    mean_delay_s: float | None
    rows: int
    files: int


def split(file: SkabFile) -> tuple[SkabFile, SkabFile]:
    """Return the training part (first 400 rows) and the test part (the rest).

    Raises:
        ValueError: the file has no test rows.
    """
    if len(file) <= TRAIN_ROWS:
        raise ValueError(
            f"{file.name}: {len(file)} rows, the SKAB protocol needs more than "
            f"{TRAIN_ROWS}"
        )
    return _rows(file, slice(0, TRAIN_ROWS)), _rows(file, slice(TRAIN_ROWS, None))


def predicted_change_points(alarms: BoolArray, hold_rows: int = 1) -> BoolArray:
    """Return c_t: where the alarm series rises or clears (EVALUATION.md step 5).

    The first row is a change point when it alarms. ``hold_rows`` > 1 first
    replaces each alarm by its trailing maximum over that many rows, 0 before a
    full span (the rule published for Isolation forest and ArimaFD, 30 rows).

    Raises:
        ValueError: ``hold_rows`` is below 1.
    """
    if hold_rows < 1:
        raise ValueError(f"hold_rows must be at least 1, got {hold_rows}")
    a = np.asarray(alarms, dtype=np.bool_)
    if hold_rows > 1:
        held = np.zeros_like(a)
        if a.size >= hold_rows:
            spans = np.lib.stride_tricks.sliding_window_view(a, hold_rows)
            held[hold_rows - 1 :] = spans.any(axis=1)
        a = held
    previous = np.concatenate(([False], a[:-1]))
    return np.asarray(a != previous, dtype=np.bool_)


def change_point_windows(cp_times_ns: Int64Array) -> list[tuple[int, int]]:
    """Return the windows ``[start, end]`` in ns for sorted change-point times.

    Each window is [tau_k, tau_k + 60 s]; left to right, a window whose start
    falls at or before the previous end starts at that end instead (step 7).
    """
    windows: list[tuple[int, int]] = []
    for tau in np.asarray(cp_times_ns, dtype=np.int64).tolist():
        start, end = tau, tau + WINDOW_S * _NS_PER_S
        if windows and windows[-1][1] >= start:
            start = windows[-1][1]
        windows.append((start, end))
    return windows


def score_change_points(
    predicted_ns: Int64Array, windows: Sequence[tuple[int, int]]
) -> ChangePointScore:
    """Match predicted change-point times to windows (EVALUATION.md step 8).

    Both window ends are inclusive. The first prediction inside a window is its
    detection; later ones inside it are ignored. Predictions before the first
    window, strictly between two windows or after the last are false positives
    (all of them when there is no window).
    """
    p = np.asarray(predicted_ns, dtype=np.int64)
    if not windows:
        return ChangePointScore(0, (), (), int(p.size))

    outside = (p < windows[0][0]) | (p > windows[-1][1])
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        outside |= (p > end) & (p < next_start)

    delays: list[float] = []
    positions: list[int] = []
    for start, end in windows:
        inside = p[(p >= start) & (p <= end)]
        if inside.size:
            offset = int(inside[0]) - start
            delays.append(offset / _NS_PER_S)
            # Integer arithmetic keeps floor(1000 * offset / width) exact.
            positions.append(
                min(TANH_POINTS * offset // (end - start), TANH_POINTS - 1)
            )
    return ChangePointScore(
        len(windows), tuple(delays), tuple(positions), int(outside.sum())
    )


def skab_result(
    files: Sequence[SkabFile],
    alarms: Sequence[BoolArray],
    counted: Sequence[BoolArray] | None = None,
    *,
    hold_rows: int = 1,
) -> SkabResult:
    """Score a detector's test-part alarms on SKAB files by the SKAB protocol.

    ``alarms[f]`` holds a_t for each test row of ``files[f]`` (its rows after the
    first 400). ``counted[f]``, when given, marks the test rows the detector
    emitted a value for; other rows count in no cell and predict no change point
    (EVALUATION.md step 3). ``hold_rows`` is passed to
    :func:`predicted_change_points`.

    Raises:
        ValueError: the lists differ in length, an array does not match its
            file's test rows, a file has no test rows, or no file holds a
            labeled change point in its test part (the score has no scale).
    """
    if len(alarms) != len(files) or (
        counted is not None and len(counted) != len(files)
    ):
        raise ValueError(
            f"{len(files)} files but {len(alarms)} alarm arrays"
            + ("" if counted is None else f" and {len(counted)} masks")
        )

    tp = fp = fn = tn = rows = 0
    outcomes: list[ChangePointScore] = []
    for index, file in enumerate(files):
        test = split(file)[1]
        a = _test_array(alarms[index], test, "alarms")
        mask = (
            np.ones(len(test), dtype=np.bool_)
            if counted is None
            else _test_array(counted[index], test, "counted")
        )

        # Step 4: pooled confusion counts over the counted rows.
        a_c, y_c = a[mask], test.anomaly[mask]
        tp += int(np.sum(a_c & y_c))
        fp += int(np.sum(a_c & ~y_c))
        fn += int(np.sum(~a_c & y_c))
        tn += int(np.sum(~a_c & ~y_c))
        rows += int(mask.sum())

        # Steps 5-8: predicted change points against windows of the true ones.
        predicted = test.timestamps[mask][predicted_change_points(a_c, hold_rows)]
        windows = change_point_windows(test.timestamps[test.changepoint])
        outcomes.append(score_change_points(predicted, windows))

    return _result(tp, fp, fn, tn, rows, outcomes)


def _result(
    tp: int, fp: int, fn: int, tn: int, rows: int, outcomes: list[ChangePointScore]
) -> SkabResult:
    """Assemble the rounded figures (EVALUATION.md steps 4 and 10)."""
    n_win = sum(o.windows for o in outcomes)
    if n_win == 0:
        raise ValueError("no labeled change point in any test part: NAB has no scale")
    delays = [d for o in outcomes for d in o.delays_s]
    nab = [_normalised(outcomes, n_win, profile) for profile in PROFILES]
    return SkabResult(
        f1=_rounded(_ratio(tp, tp + (fp + fn) / 2)),
        far=_rounded(_PERCENT * _ratio(fp, fp + tn)),
        mar=_rounded(_PERCENT * _ratio(fn, fn + tp)),
        nab_standard=nab[0],
        nab_low_fp=nab[1],
        nab_low_fn=nab[2],
        missed_cp=sum(o.missed for o in outcomes),
        false_cp=sum(o.false_positives for o in outcomes),
        mean_delay_s=sum(delays) / len(delays) if delays else None,
        rows=rows,
        files=len(outcomes),
    )


def _normalised(
    outcomes: list[ChangePointScore], n_win: int, profile: SkabProfile
) -> float:
    """Return 100 (S - S_null) / (S_perfect - S_null), 2 decimals (step 10)."""
    total = sum(o.score(profile) for o in outcomes)
    null, perfect = profile.a_fn * n_win, profile.a_tp * n_win
    return _rounded(_PERCENT * (total - null) / (perfect - null))


def _detection_value(e: int, profile: SkabProfile) -> float:
    """Score of a detection at position ``e`` of its window (step 9)."""
    x = -math.pi / 2 + e * math.pi / (TANH_POINTS - 1)
    slope = 1 - math.tanh(x) / math.tanh(math.pi / 2)
    return (profile.a_tp - profile.a_fp) / 2 * slope + profile.a_fp


def _rows(file: SkabFile, rows: slice) -> SkabFile:
    """Return the rows ``rows`` of ``file`` as a file of the same name."""
    return replace(
        file,
        timestamps=file.timestamps[rows],
        features=file.features[rows],
        anomaly=file.anomaly[rows],
        changepoint=file.changepoint[rows],
    )


def _test_array(values: BoolArray, test: SkabFile, what: str) -> BoolArray:
    """Check that a per-row array covers exactly the test rows of a file."""
    array = np.asarray(values)
    if array.shape != (len(test),):
        raise ValueError(
            f"{test.name}: {what} has shape {array.shape}, expected ({len(test)},) "
            f"for the rows after the first {TRAIN_ROWS}"
        )
    return array.astype(np.bool_)


def _ratio(numerator: float, denominator: float) -> float:
    """Return the ratio, NaN when the denominator is zero."""
    return numerator / denominator if denominator else math.nan


def _rounded(value: float) -> float:
    """Round as the published tables do."""
    return round(value, DECIMALS)
