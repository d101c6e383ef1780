"""The NAB scoring rules: windowed, time-weighted detection scores.

Implements the NAB section of ``EVALUATION.md`` (Lavin and Ahmad 2015,
"Evaluating Real-time Anomaly Detection Algorithms", arXiv:1510.03336, as coded
in NAB v1.1's scorer): a detector gives every row a score s_i in [0, 1]; rows
with s_i >= theta are detections; the earliest detection in each window earns up
to A_TP on a scaled sigmoid, each detection outside the windows costs up to A_FP,
and each window without a detection costs A_FN.

The threshold search (:func:`best_threshold`) is exact: the summed raw score is a
step function of theta that changes only at the scores the detector produced, so
every distinct score of a scored row is tried, plus a threshold above 1 that
detects nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_models.evaluation.data import NabFile

__all__ = [
    "NO_DETECTION",
    "PROFILES",
    "REWARD_LOW_FN_RATE",
    "REWARD_LOW_FP_RATE",
    "STANDARD",
    "NabProfile",
    "NabResult",
    "best_threshold",
    "nab_result",
    "normalised_score",
    "probationary_rows",
    "row_weights",
    "score_file",
]

# EVALUATION.md, NAB step 2: the first 15 % of rows, at most 750, are not scored.
PROBATIONARY_FRACTION = 0.15
PROBATIONARY_MAX_ROWS = 750
# Step 4: the scaled sigmoid is flat at -1 past three window widths.
SIGMOID_STEEPNESS = 5.0
SIGMOID_CUTOFF = 3.0
# A threshold above every valid score: the detector detects nothing.
NO_DETECTION = 1.1

_PERCENT = 100.0

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NabProfile:
    """Weight magnitudes of one NAB profile (``config/profiles.json``, step 6).

    Attributes:
        name: NAB's profile name.
        a_tp: weight of a detection at the first row of a window.
        a_fp: magnitude of the cost of a detection far from any window.
        a_fn: magnitude of the cost of a window without a detection.
    """

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


STANDARD = NabProfile("standard", 1.0, 0.11, 1.0)
REWARD_LOW_FP_RATE = NabProfile("reward_low_FP_rate", 1.0, 0.22, 1.0)
REWARD_LOW_FN_RATE = NabProfile("reward_low_FN_rate", 1.0, 0.11, 2.0)
PROFILES = (STANDARD, REWARD_LOW_FP_RATE, REWARD_LOW_FN_RATE)


@dataclass(frozen=True, slots=True)
class NabResult:
    """Normalised NAB scores of one detector over a set of files (unrounded).

    Attributes:
        standard: normalised score, standard profile (0 = null, 100 = perfect).
        low_fp: the same under ``reward_low_FP_rate``.
        low_fn: the same under ``reward_low_FN_rate``.
        thresholds: theta used per profile name.
    """

    standard: float
    low_fp: float
    low_fn: float
    thresholds: Mapping[str, float]


def probationary_rows(n: int) -> int:
    """Return how many leading rows of an ``n``-row file are not scored (step 2)."""
    return min(math.floor(PROBATIONARY_FRACTION * n), PROBATIONARY_MAX_ROWS)


def row_weights(file: NabFile, profile: NabProfile) -> tuple[FloatArray, IntArray]:
    """Return each row's weight if detected and its window index (-1: outside).

    Weights follow EVALUATION.md, NAB step 4: inside a window of width w ending
    at row r, A_TP sigma(-(r - i + 1)/w) / sigma(-1); before any window has ended,
    -A_FP; after one ending at row r' with width w', A_FP sigma(|i - r'|/(w' - 1)).
    Probationary rows get weight NaN.
    """
    n = len(file)
    weights = np.full(n, -profile.a_fp)
    window_of = np.full(n, -1, dtype=np.int64)
    rows = np.arange(n)
    for k, (start, end) in enumerate(file.windows):
        width = end - start + 1
        inside = rows[start : end + 1]
        weights[start : end + 1] = (
            profile.a_tp * _sigmoid(-(end - inside + 1) / width) / _sigmoid(-1.0)
        )
        window_of[start : end + 1] = k
        # Rows up to the next window's start are scored against this window.
        stop = file.windows[k + 1][0] if k + 1 < len(file.windows) else n
        after = rows[end + 1 : stop]
        # A one-row window has no width to scale by: its aftermath is "far away".
        scale = width - 1 if width > 1 else 0
        distance = np.abs(after - end) / scale if scale else np.full(after.size, np.inf)
        weights[end + 1 : stop] = profile.a_fp * _sigmoid(distance)
    weights[: probationary_rows(n)] = np.nan
    return weights, window_of


def score_file(
    scores: FloatArray, file: NabFile, threshold: float, profile: NabProfile
) -> float:
    """Return the raw NAB score of one file at ``threshold`` (steps 4 and 5).

    Rows with ``scores >= threshold`` outside the probationary period are
    detections. Each window adds the weight of its earliest detection or -A_FN;
    each detection outside the windows adds its (negative) weight.

    Raises:
        ValueError: ``scores`` does not have one finite value in [0, 1] per row.
    """
    s = _checked_scores(scores, file)
    weights, window_of = row_weights(file, profile)
    detected = (s >= threshold) & ~np.isnan(weights)
    total = float(np.sum(weights[detected & (window_of < 0)]))
    for k in range(len(file.windows)):
        hits = weights[detected & (window_of == k)]
        total += float(hits.max()) if hits.size else -profile.a_fn
    return total


def best_threshold(
    files_scores: Sequence[FloatArray], files: Sequence[NabFile], profile: NabProfile
) -> float:
    """Return theta maximising the summed raw score over ``files`` (step 7).

    Every distinct score of a scored row is tried, from high to low, together
    with :data:`NO_DETECTION`; ties go to the highest theta (fewest detections).

    Raises:
        ValueError: the lists differ in length or a score array is invalid.
    """
    scores, weights, window_of, n_win = _pooled(files_scores, files, profile)

    # Lowering theta only adds detections, so the summed score is updated one
    # row at a time; a window's term is replaced when a heavier (earlier) row
    # of it becomes a detection.
    order = np.argsort(-scores, kind="stable")
    best_in_window = np.full(n_win, -profile.a_fn)
    total = -profile.a_fn * n_win
    best_total, best_theta = total, NO_DETECTION
    for position, row in enumerate(order.tolist()):
        k = int(window_of[row])
        if k < 0:
            total += float(weights[row])
        elif weights[row] > best_in_window[k]:
            total += float(weights[row] - best_in_window[k])
            best_in_window[k] = weights[row]
        is_last_of_value = (
            position + 1 == order.size or scores[order[position + 1]] != scores[row]
        )
        if is_last_of_value and total > best_total:
            best_total, best_theta = total, float(scores[row])
    return best_theta


def normalised_score(raw: float, windows: int, profile: NabProfile) -> float:
    """Return 100 (S - S_null) / (S_perfect - S_null), unrounded (step 8).

    Raises:
        ValueError: ``windows`` is not positive.
    """
    if windows <= 0:
        raise ValueError(f"windows must be positive, got {windows}")
    perfect, null = profile.a_tp * windows, -profile.a_fn * windows
    return _PERCENT * (raw - null) / (perfect - null)


def nab_result(
    files_scores: Sequence[FloatArray],
    files: Sequence[NabFile],
    thresholds: Mapping[str, float] | None = None,
) -> NabResult:
    """Score a detector on ``files`` under the three NAB profiles.

    ``thresholds`` maps profile names to theta; without it, theta is chosen on
    these same files by :func:`best_threshold` (NAB's corpus-wide rule). For a
    held-out evaluation, choose theta on other files and pass it here.

    Raises:
        ValueError: the lists differ in length, a score array is invalid, the
            files hold no window, or ``thresholds`` lacks a profile.
    """
    if len(files_scores) != len(files):
        raise ValueError(f"{len(files)} files but {len(files_scores)} score arrays")
    windows = sum(len(f.windows) for f in files)
    chosen: dict[str, float] = {}
    normalised: list[float] = []
    for profile in PROFILES:
        if thresholds is None:
            theta = best_threshold(files_scores, files, profile)
        elif profile.name in thresholds:
            theta = float(thresholds[profile.name])
        else:
            raise ValueError(f"no threshold given for profile {profile.name!r}")
        raw = sum(
            score_file(s, f, theta, profile)
            for s, f in zip(files_scores, files, strict=True)
        )
        chosen[profile.name] = theta
        normalised.append(normalised_score(raw, windows, profile))
    return NabResult(normalised[0], normalised[1], normalised[2], chosen)


def _sigmoid(p: FloatArray | float) -> FloatArray:
    """Return NAB's scaled sigmoid 2 / (1 + e^(5p)) - 1, or -1 where p > 3."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(SIGMOID_STEEPNESS * p)) - 1.0
    return np.where(p > SIGMOID_CUTOFF, -1.0, value)


def _checked_scores(scores: FloatArray, file: NabFile) -> FloatArray:
    """Check one score per row, each finite and in [0, 1]."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(file),):
        raise ValueError(
            f"{file.name}: scores have shape {s.shape}, expected ({len(file)},)"
        )
    if not np.all((s >= 0.0) & (s <= 1.0)):
        raise ValueError(f"{file.name}: scores must be finite and in [0, 1]")
    return s


def _pooled(
    files_scores: Sequence[FloatArray], files: Sequence[NabFile], profile: NabProfile
) -> tuple[FloatArray, FloatArray, IntArray, int]:
    """Concatenate the scored rows of all files; windows get corpus-wide indices.

    Also returns the number of windows over all files.
    """
    if len(files_scores) != len(files):
        raise ValueError(f"{len(files)} files but {len(files_scores)} score arrays")
    parts: list[tuple[FloatArray, FloatArray, IntArray]] = []
    offset = 0
    for scores, file in zip(files_scores, files, strict=True):
        s = _checked_scores(scores, file)
        weights, window_of = row_weights(file, profile)
        scored = ~np.isnan(weights)
        window_of = np.where(window_of >= 0, window_of + offset, -1)
        parts.append((s[scored], weights[scored], window_of[scored]))
        offset += len(file.windows)
    if not parts:
        raise ValueError("no files to choose a threshold on")
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        offset,
    )
