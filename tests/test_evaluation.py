"""The SKAB and NAB evaluation rules on hand-worked cases and on the shared data."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge_models.evaluation import (
    TRAIN_ROWS,
    EvaluationDataError,
    NabFile,
    SkabFile,
    best_threshold,
    detect_format,
    load_nab_corpus,
    load_nab_file,
    load_skab_file,
    load_skab_folder,
    nab,
    nab_result,
    score_file,
    skab,
    skab_result,
    split,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NS_PER_S = 1_000_000_000
T0 = dt.datetime(2020, 1, 1)
T0_NS = int((T0 - dt.datetime(1970, 1, 1)).total_seconds()) * NS_PER_S
FEATURES = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
NAB_STEP_S = 300


def make_skab(
    name: str, test_rows: int, anomaly: Sequence[int], changepoints: Sequence[int]
) -> SkabFile:
    """Return a SKAB file with 400 training rows and ``test_rows`` rows at 1 Hz.

    ``anomaly`` and ``changepoints`` are test-row indices (0 = first test row).
    """
    n = TRAIN_ROWS + test_rows
    anomaly_rows = np.zeros(n, dtype=np.bool_)
    anomaly_rows[[TRAIN_ROWS + j for j in anomaly]] = True
    cp_rows = np.zeros(n, dtype=np.bool_)
    cp_rows[[TRAIN_ROWS + j for j in changepoints]] = True
    return SkabFile(
        name=name,
        timestamps=T0_NS + np.arange(n, dtype=np.int64) * NS_PER_S,
        features=np.zeros((n, len(FEATURES))),
        anomaly=anomaly_rows,
        changepoint=cp_rows,
        feature_names=FEATURES,
    )


def alarms_at(test_rows: int, rows: Sequence[int]) -> BoolArray:
    """Return a test-part alarm array raised on ``rows``."""
    a = np.zeros(test_rows, dtype=np.bool_)
    a[list(rows)] = True
    return a


def test_skab_hand_worked_case() -> None:
    """Pooled F1/FAR/MAR and the three NAB-style scores match a hand calculation."""
    # File A, 90 test rows (t = test row in seconds): anomaly on rows 10..69,
    # change points at 10, 40 and 85. Windows (step 7): [10, 70], [40, 100] and
    # [85, 145]; 70 >= 40 merges the second to [70, 100], then 100 >= 85 merges
    # the third to [100, 145].
    file_a = make_skab("a.csv", 90, range(10, 70), [10, 40, 85])
    # Alarms on 3, on 10..39 and on 76..89 (still raised at the end).
    # Change points (step 5): 3, 4 (before W1: 2 false positives), 10 (start of
    # W1: e = 0, scores A_TP), 40 (inside W1, ignored), 76 (first in W2, e =
    # floor(1000 * 6 / 30) = 200). W3 = [100, 145] holds no row: missed.
    alarms_a = alarms_at(90, [3, *range(10, 40), *range(76, 90)])
    # File B, 40 test rows, no anomaly and no change point: alarms on 0, 1, 20
    # give change points 0 (first row alarms), 2, 20, 21: 4 false positives.
    file_b = make_skab("b.csv", 40, [], [])
    alarms_b = alarms_at(40, [0, 1, 20])

    result = skab_result([file_a, file_b], [alarms_a, alarms_b])

    # A: TP = 10..39 = 30; FP = {3} + 76..89 = 15; FN = 40..69 = 30; TN = 15.
    # B: FP = 3, TN = 37. Pooled TP 30, FP 18, FN 30, TN 52.
    # F1 = 30 / (30 + 48/2) = 0.5556; FAR = 100 * 18/70 = 25.714;
    # MAR = 100 * 30/60 = 50.
    assert (result.f1, result.far, result.mar) == (0.56, 25.71, 50.0)
    # Step 9 at e = 200: x = -pi/2 + 200 pi/999 = -0.941849, tanh(x) = -0.736071,
    # tanh(pi/2) = 0.917152, so 1 - tanh(x)/tanh(pi/2) = 1.802562.
    # standard: v = 1.11/2 * 1.802562 - 0.11 = 0.890421;
    #   S = 1 + 0.890421 - 1 (missed) - 6 * 0.11 = 0.230421;
    #   NAB = 100 (S + 3) / (3 + 3) = 53.84.
    # low FP: v = 1.22/2 * 1.802562 - 0.22 = 0.879563;
    #   S = 1 + 0.879563 - 1 - 6 * 0.22 = -0.440437; NAB = 100 (S + 3) / 6 = 42.66.
    # low FN: v = 0.890421; S = 1 + 0.890421 - 2 - 0.66 = -0.769579;
    #   NAB = 100 (S + 6) / (3 + 6) = 58.12.
    assert (result.nab_standard, result.nab_low_fp, result.nab_low_fn) == (
        53.84,
        42.66,
        58.12,
    )
    # Delays: W1 0 s, W2 76 - 70 = 6 s (from the merged start): mean 3 s.
    assert (result.missed_cp, result.false_cp, result.mean_delay_s) == (1, 6, 3.0)
    assert (result.rows, result.files) == (130, 2)


def test_skab_windows_merge_left_to_right() -> None:
    """A window reaching the next change point pushes that window's start to its end."""
    taus = np.array([0, 40, 85, 200], dtype=np.int64) * NS_PER_S
    windows = [
        (s // NS_PER_S, e // NS_PER_S) for s, e in skab.change_point_windows(taus)
    ]
    assert windows == [(0, 60), (60, 100), (100, 145), (200, 260)]


def test_skab_change_points_are_rises_and_clears() -> None:
    """Raising and clearing an alarm both predict a change point, as does row 0."""
    alarms = np.array([1, 1, 0, 0, 1, 0, 1, 1], dtype=np.bool_)
    assert skab.predicted_change_points(alarms).nonzero()[0].tolist() == [0, 2, 4, 5, 6]
    # A trailing 3-row maximum, 0 for the first 2 rows: [0, 0, 1, 1, 1, 1, 1, 1].
    held = skab.predicted_change_points(alarms, hold_rows=3)
    assert held.nonzero()[0].tolist() == [2]


def test_skab_detection_at_window_end_scores_a_fp() -> None:
    """A detection on the last second of a window scores A_FP (e capped at 999)."""
    outcome = skab.score_change_points(
        np.array([60], dtype=np.int64) * NS_PER_S, [(0, 60 * NS_PER_S)]
    )
    assert outcome.positions == (999,)
    assert outcome.score(skab.STANDARD) == pytest.approx(-0.11, abs=1e-12)


def test_skab_uncounted_rows_count_nowhere() -> None:
    """Rows outside the counted mask join no confusion cell and predict no change."""
    file = make_skab("a.csv", 20, range(5, 20), [5])
    alarms = alarms_at(20, range(5, 20))
    counted = np.ones(20, dtype=np.bool_)
    counted[:3] = False
    result = skab_result([file], [alarms], [counted])
    # 17 counted rows: TP 15, TN 2. The first counted row (3) has a = 0, so the
    # only change point is the rise at 5: the window start, a perfect score.
    assert (result.f1, result.far, result.mar, result.rows) == (1.0, 0.0, 0.0, 17)
    assert (result.nab_standard, result.false_cp, result.missed_cp) == (100.0, 0, 0)


def test_skab_split_and_shape_checks() -> None:
    """The first 400 rows train, the rest test; mismatched inputs are refused."""
    file = make_skab("a.csv", 7, [], [1])
    train, test = split(file)
    assert (len(train), len(test)) == (TRAIN_ROWS, 7)
    assert test.timestamps[0] == T0_NS + TRAIN_ROWS * NS_PER_S
    with pytest.raises(ValueError, match=r"a\.csv: alarms has shape \(6,\)"):
        skab_result([file], [np.zeros(6, dtype=np.bool_)])
    with pytest.raises(ValueError, match=r"s\.csv: 400 rows"):
        split(make_skab("s.csv", 0, [], []))


def make_nab(rows: int, windows: Sequence[tuple[int, int]]) -> NabFile:
    """Return a NAB series at 5-minute steps with windows given as row pairs."""
    return NabFile(
        name="cat/series.csv",
        timestamps=T0_NS + np.arange(rows, dtype=np.int64) * NAB_STEP_S * NS_PER_S,
        values=np.zeros(rows),
        windows=tuple(windows),
    )


def hand_nab_case() -> tuple[NabFile, FloatArray]:
    """Return the 70-row hand-worked NAB series and its scores."""
    # 70 rows: probationary floor(0.15 * 70) = 10 rows (0..9); one window on
    # rows 20..29 (w = 10). Baseline score 0.1; six rows stand out.
    file = make_nab(70, [(20, 29)])
    scores = np.full(70, 0.1)
    scores[5] = 0.9  # probationary: never scored
    scores[12] = 0.8  # before any window ends: -A_FP
    scores[22] = 0.7  # early detection in the window
    scores[27] = 0.95  # later in the window
    scores[31] = 0.6  # right after the window
    scores[65] = 0.85  # far away: p = 36/9 = 4 > 3, sigma = -1
    return file, scores


# sigma(p) = 2/(1 + e^(5p)) - 1: sigma(-1) = 0.9866143, sigma(-0.8) = 0.9640276,
# sigma(-0.3) = 0.6351490, sigma(2/9) = -0.5046724.
# Row 22: p = -(29 - 22 + 1)/10 = -0.8, weight A_TP * 0.9640276/0.9866143 = 0.9771068.
# Row 27: p = -0.3, weight 0.6437662. Row 31: p = |31 - 29|/(10 - 1) = 2/9.
W22, W27, SIGMA_2_9 = 0.9771068409, 0.6437662150, -0.5046723977


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        # At theta = 0.5 rows 12, 22, 27, 31, 65 detect; the window takes row 22.
        # standard: 0.9771068 + 0.11 * (-0.5046724) - 0.11 - 0.11 = 0.7015929.
        (nab.STANDARD, W22 + 0.11 * SIGMA_2_9 - 0.22),
        # low FP: 0.9771068 + 0.22 * (-0.5046724) - 0.44 = 0.4260789.
        (nab.REWARD_LOW_FP_RATE, W22 + 0.22 * SIGMA_2_9 - 0.44),
        # low FN: no miss, so as standard: 0.7015929.
        (nab.REWARD_LOW_FN_RATE, W22 + 0.11 * SIGMA_2_9 - 0.22),
    ],
)
def test_nab_hand_worked_file_score(profile: nab.NabProfile, expected: float) -> None:
    """The raw score of the hand-worked series matches the hand calculation."""
    file, scores = hand_nab_case()
    assert score_file(scores, file, 0.5, profile) == pytest.approx(expected, abs=1e-9)


def test_nab_hand_worked_threshold_and_normalised_scores() -> None:
    """Theta and the normalised scores of the hand-worked series match by hand."""
    file, scores = hand_nab_case()
    # Raw score per theta (standard; low FP doubles every FP cost):
    #   1.1: -1 (miss); 0.95: W27 = 0.6438; 0.85: 0.5338; 0.8: 0.4238;
    #   0.7: W22 - 0.22 = 0.7571 (best); 0.6: 0.7016; 0.1: many FPs.
    # low FP: 0.95: 0.6438 (best); 0.7: W22 - 0.44 = 0.5371.
    # low FN: as standard, best 0.7 with 0.7571.
    assert best_threshold([scores], [file], nab.STANDARD) == 0.7
    assert best_threshold([scores], [file], nab.REWARD_LOW_FP_RATE) == 0.95
    assert best_threshold([scores], [file], nab.REWARD_LOW_FN_RATE) == 0.7

    result = nab_result([scores], [file])
    # standard: 100 (0.7571068 + 1)/(1 + 1) = 87.855; low FP: 100 (0.6437662 + 1)/2
    # = 82.188; low FN: 100 (0.7571068 + 2)/(1 + 2) = 91.904.
    assert result.standard == pytest.approx(100 * (W22 - 0.22 + 1) / 2, abs=1e-7)
    assert result.low_fp == pytest.approx(100 * (W27 + 1) / 2, abs=1e-7)
    assert result.low_fn == pytest.approx(100 * (W22 - 0.22 + 2) / 3, abs=1e-7)
    assert dict(result.thresholds) == {
        "standard": 0.7,
        "reward_low_FP_rate": 0.95,
        "reward_low_FN_rate": 0.7,
    }


def naive_weight(file: NabFile, i: int, profile: nab.NabProfile) -> float:
    """Return row ``i``'s weight by EVALUATION.md, NAB step 4, in plain floats."""

    def sigma(p: float) -> float:
        return -1.0 if p > 3 else 2 / (1 + math.exp(5 * p)) - 1

    previous: tuple[int, int] | None = None
    for start, end in file.windows:
        width = end - start + 1
        if start <= i <= end:
            return profile.a_tp * sigma(-(end - i + 1) / width) / sigma(-1)
        if end < i:
            previous = (end, width)
    if previous is None:
        return -profile.a_fp
    end, width = previous
    return profile.a_fp * sigma(abs(i - end) / (width - 1))


def naive_best_raw(
    files_scores: Sequence[FloatArray],
    files: Sequence[NabFile],
    profile: nab.NabProfile,
) -> float:
    """Return the best summed raw score over every candidate theta, file by file."""
    candidates = {nab.NO_DETECTION}
    for scores, file in zip(files_scores, files, strict=True):
        candidates.update(scores[nab.probationary_rows(len(file)) :].tolist())
    return max(
        sum(
            score_file(s, f, theta, profile)
            for s, f in zip(files_scores, files, strict=True)
        )
        for theta in candidates
    )


def random_corpus(seed: int) -> tuple[list[FloatArray], list[NabFile]]:
    """Return three seeded series with windows and scores rounded to force ties."""
    rng = np.random.default_rng(seed)
    files, scores = [], []
    for rows, windows in [(120, [(30, 39), (70, 84)]), (80, [(50, 51)]), (60, [])]:
        files.append(make_nab(rows, windows))
        scores.append(np.round(rng.random(rows) ** 3, 2))
    return scores, files


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("profile", nab.PROFILES)
def test_nab_row_weights_match_naive_reference(
    seed: int, profile: nab.NabProfile
) -> None:
    """Vectorised row weights equal the step-4 formulas evaluated row by row."""
    _, files = random_corpus(seed)
    for file in files:
        weights, _ = nab.row_weights(file, profile)
        probation = nab.probationary_rows(len(file))
        assert np.isnan(weights[:probation]).all()
        expected = [naive_weight(file, i, profile) for i in range(probation, len(file))]
        np.testing.assert_allclose(weights[probation:], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("profile", nab.PROFILES)
def test_nab_best_threshold_is_exact(seed: int, profile: nab.NabProfile) -> None:
    """The sweep finds the same best summed score as trying every theta in turn."""
    scores, files = random_corpus(seed)
    theta = best_threshold(scores, files, profile)
    achieved = sum(
        score_file(s, f, theta, profile) for s, f in zip(scores, files, strict=True)
    )
    assert achieved == pytest.approx(naive_best_raw(scores, files, profile), abs=1e-9)


def test_nab_scores_are_checked() -> None:
    """Scores outside [0, 1], NaN or of the wrong length are refused."""
    file = make_nab(10, [])
    for bad in (np.full(10, 1.5), np.full(10, math.nan), np.zeros(9)):
        with pytest.raises(ValueError, match=r"cat/series\.csv: scores"):
            score_file(bad, file, 0.5, nab.STANDARD)


CSV_HEADER = ";".join(["datetime", *FEATURES, "anomaly", "changepoint"])


def skab_csv(rows: int) -> str:
    """Return a synthetic SKAB experiment as CRLF text, anomalous from row 410."""
    lines = [CSV_HEADER]
    for i in range(rows):
        stamp = (T0 + dt.timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        values = ";".join(f"{0.5 * k + i / 1000:g}" for k in range(len(FEATURES)))
        anomaly = "1.0" if i >= 410 else "0.0"
        change = "1.0" if i == 410 else "0.0"
        lines.append(f"{stamp};{values};{anomaly};{change}")
    return "\r\n".join(lines) + "\r\n"


def write_skab_folder(root: Path) -> Path:
    """Write two synthetic experiments and an anomaly-free run under ``root``."""
    for relative in ("valve1/0.csv", "other/1.csv"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(skab_csv(420).encode())
    (root / "anomaly-free").mkdir()
    (root / "anomaly-free" / "anomaly-free.csv").write_text(CSV_HEADER[:-20] + "\n")
    return root


def test_load_skab_folder_reads_experiments(tmp_path: Path) -> None:
    """Experiments load sorted by relative path, without the anomaly-free run."""
    files = load_skab_folder(write_skab_folder(tmp_path))
    assert [f.name for f in files] == ["other/1.csv", "valve1/0.csv"]
    first = files[0]
    assert first.features.shape == (420, 8)
    assert first.feature_names == FEATURES
    assert first.timestamps.dtype == np.int64
    assert first.timestamps[1] - first.timestamps[0] == NS_PER_S
    assert first.timestamps[0] == T0_NS
    assert first.features[2, 1] == pytest.approx(0.502)
    assert int(first.anomaly.sum()) == 10
    assert first.changepoint.nonzero()[0].tolist() == [410]
    assert detect_format(tmp_path) == "skab"
    path = tmp_path / "other" / "1.csv"
    assert load_skab_file(path).name == str(path)


def write_nab_corpus(root: Path) -> Path:
    """Write a synthetic 40-row NAB corpus with one window."""
    (root / "cat").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = ["timestamp,value"]
    for i in range(40):
        stamp = T0 + dt.timedelta(seconds=NAB_STEP_S * i)
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S},{i * 0.5}")
    (root / "cat" / "series.csv").write_text("\n".join(lines) + "\n")
    windows = {
        "cat/series.csv": [["2020-01-01 01:40:00.000000", "2020-01-01 02:25:00.000000"]]
    }
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_load_nab_corpus_places_windows_on_rows(tmp_path: Path) -> None:
    """Windows are keyed by path under the corpus and land on their rows."""
    files = load_nab_corpus(write_nab_corpus(tmp_path))
    assert [(f.name, len(f), f.windows) for f in files] == [
        ("cat/series.csv", 40, ((20, 29),))
    ]
    assert files[0].values[3] == 1.5
    assert detect_format(tmp_path) == "nab"


def break_line(path: Path, line: int, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` once on 1-based ``line`` of ``path``."""
    lines = path.read_bytes().decode().split("\r\n")
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_bytes("\r\n".join(lines).encode())


@pytest.mark.parametrize(
    ("line", "old", "new", "message"),
    [
        (1, "datetime", "time", "first column is 'time', not 'datetime'"),
        (1, ";changepoint", "", "missing label column 'changepoint'"),
        (1, "Current;", "", "7 feature columns, expected 8"),
        (17, ";0.0;0.0", ";0.0", "10 fields, expected 11"),
        (17, ";0.515;", ";x;", "'x' is not a number in column Accelerometer2RMS"),
        (
            17,
            "2020-01-01",
            "2020-13-01",
            "'2020-13-01 00:00:15' is not a naive timestamp in column datetime",
        ),
        (
            17,
            "00:00:15",
            "00:00:14",
            "timestamp '2020-01-01 00:00:14' is not after the previous row's",
        ),
        (17, ";0.0;0.0", ";0.5;0.0", "'0.5' is not 0 or 1 in column anomaly"),
    ],
)
def test_malformed_skab_file_names_file_and_row(
    tmp_path: Path, line: int, old: str, new: str, message: str
) -> None:
    """A broken SKAB file raises one one-line error naming the file and the row."""
    write_skab_folder(tmp_path)
    break_line(tmp_path / "valve1" / "0.csv", line, old, new)
    with pytest.raises(EvaluationDataError) as caught:
        load_skab_folder(tmp_path)
    assert str(caught.value) == f"valve1/0.csv: row {line}: {message}"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "old", "new", "message"),
    [
        (
            1,
            "value",
            "reading",
            "row 1: header 'timestamp,reading' is not 'timestamp,value'",
        ),
        (5, ",1.5", ",1.5,2", "row 5: 3 fields, expected 2"),
        (5, ",1.5", ",nan", "row 5: 'nan' is not a number in column value"),
        (
            5,
            "00:15:00",
            "00:15:00+01:00",
            "row 5: '2020-01-01 00:15:00+01:00' is not a naive timestamp "
            "in column timestamp",
        ),
        # NAB files may repeat or step back in time: that alone is no error.
        (23, "01:45:00", "01:30:00", None),
        (
            22,
            "01:40:00",
            "01:40:30",
            "window 1: '2020-01-01 01:40:00.000000' is not a timestamp of the file",
        ),
    ],
)
def test_malformed_nab_file_names_file_and_row(
    tmp_path: Path, line: int, old: str, new: str, message: str | None
) -> None:
    """A broken NAB series raises a one-line error; odd timestamps alone do not."""
    write_nab_corpus(tmp_path)
    path = tmp_path / "cat" / "series.csv"
    lines = path.read_text().split("\n")
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines))
    if message is None:
        assert len(load_nab_corpus(tmp_path)[0]) == 40
        return
    with pytest.raises(EvaluationDataError) as caught:
        load_nab_corpus(tmp_path)
    assert str(caught.value) == f"cat/series.csv: {message}"


def test_nab_series_without_windows_entry_is_refused(tmp_path: Path) -> None:
    """A series the windows file does not list is an error naming both."""
    write_nab_corpus(tmp_path)
    shutil.copy(tmp_path / "cat" / "series.csv", tmp_path / "cat" / "other.csv")
    with pytest.raises(
        EvaluationDataError,
        match=r"^labels/combined_windows\.json: no entry for cat/other\.csv$",
    ):
        load_nab_corpus(tmp_path)
    with pytest.raises(EvaluationDataError, match="neither a NAB corpus"):
        detect_format(tmp_path / "cat")
    assert load_nab_file(tmp_path / "cat" / "other.csv").windows == ()


# SKAB README, "Files in this folder": rows, anomaly rows, change points in test.
SKAB_TABLE = {
    "valve1/0.csv": (1147, 401, 4),
    "valve1/2.csv": (1075, 337, 3),
    "valve1/4.csv": (1095, 349, 4),
    "valve1/6.csv": (1154, 405, 4),
    "valve1/8.csv": (1144, 400, 4),
    "valve1/10.csv": (1146, 401, 4),
    "valve1/12.csv": (1140, 399, 4),
    "valve1/14.csv": (1139, 399, 4),
    "valve2/0.csv": (1125, 394, 4),
    "valve2/2.csv": (1129, 395, 4),
    "other/1.csv": (745, 188, 2),
    "other/3.csv": (1137, 398, 4),
    "other/5.csv": (1155, 410, 2),
    "other/7.csv": (1090, 347, 4),
    "other/9.csv": (1144, 401, 4),
    "other/11.csv": (1190, 451, 4),
    "other/13.csv": (923, 265, 4),
}


@pytest.fixture(scope="module")
def skab_files() -> list[SkabFile]:
    """The SKAB experiments of the shared data folder."""
    if not (DATA / "skab").is_dir():
        pytest.skip(f"../shared/data not found: no SKAB folder at {DATA / 'skab'}")
    return load_skab_folder(DATA / "skab")


@pytest.fixture(scope="module")
def nab_files() -> list[NabFile]:
    """The NAB series of the shared data folder."""
    if not (DATA / "nab").is_dir():
        pytest.skip(f"../shared/data not found: no NAB folder at {DATA / 'nab'}")
    return load_nab_corpus(DATA / "nab")


def test_skab_data_matches_its_readme(skab_files: list[SkabFile]) -> None:
    """Rows, anomaly rows and test change points match the SKAB README table."""
    found = {
        f.name: (len(f), int(f.anomaly.sum()), int(split(f)[1].changepoint.sum()))
        for f in skab_files
    }
    assert found == SKAB_TABLE
    assert detect_format(DATA / "skab") == "skab"


def test_skab_null_detector_reproduces_published_arimafd(
    skab_files: list[SkabFile],
) -> None:
    """No alarms reproduces the published ArimaFD row (F1 0, FAR 0, MAR 100, NAB 0)."""
    alarms = [np.zeros(len(f) - TRAIN_ROWS, dtype=np.bool_) for f in skab_files]
    result = skab_result(skab_files, alarms)
    assert result == skab.SkabResult(
        0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 63, 0, None, 11878, 17
    )


def test_skab_always_alarm_detector(skab_files: list[SkabFile]) -> None:
    """Alarming on every test row gives F1 0.70, FAR 100, MAR 0 and 17 early CPs."""
    alarms = [np.ones(len(f) - TRAIN_ROWS, dtype=np.bool_) for f in skab_files]
    result = skab_result(skab_files, alarms)
    # TP = 6340 anomaly rows (all after row 400), FP = 11878 - 6340 = 5538:
    # F1 = 6340 / (6340 + 5538/2) = 0.6960. Each file predicts one change point,
    # at its first test row, before every window: S = -63 + 17 A_FP.
    anomalies = sum(int(split(f)[1].anomaly.sum()) for f in skab_files)
    assert (anomalies, result.rows) == (6340, 11878)
    assert (result.f1, result.far, result.mar) == (0.7, 100.0, 0.0)
    # standard: 100 (-63 - 1.87 + 63)/126 = -1.48; low FP: 100 (-3.74)/126 = -2.97;
    # low FN: 100 (-126 - 1.87 + 126)/189 = -0.99.
    assert (result.nab_standard, result.nab_low_fp, result.nab_low_fn) == (
        -1.48,
        -2.97,
        -0.99,
    )
    assert (result.missed_cp, result.false_cp) == (63, 17)


def test_nab_data_matches_its_readme(nab_files: list[NabFile]) -> None:
    """Rows, probationary rows and rows inside windows match the NAB README table."""
    found = {
        f.name.split("/")[-1]: (
            len(f),
            nab.probationary_rows(len(f)),
            len(f.windows),
            sum(end - start + 1 for start, end in f.windows),
        )
        for f in nab_files
    }
    assert found == {
        "machine_temperature_system_failure.csv": (22695, 750, 4, 2268),
        "ec2_request_latency_system_failure.csv": (4032, 604, 3, 346),
        "rogue_agent_key_hold.csv": (1882, 282, 2, 190),
    }


def test_nab_null_and_perfect_detectors(nab_files: list[NabFile]) -> None:
    """The null detector scores the published 0.0; hits at window starts score 100."""
    null = nab_result([np.zeros(len(f)) for f in nab_files], nab_files)
    assert (null.standard, null.low_fp, null.low_fn) == (0.0, 0.0, 0.0)
    perfect_scores = []
    for f in nab_files:
        s = np.zeros(len(f))
        s[[start for start, _ in f.windows]] = 1.0
        perfect_scores.append(s)
    perfect = nab_result(perfect_scores, nab_files)
    assert (perfect.standard, perfect.low_fp, perfect.low_fn) == pytest.approx(
        (100.0, 100.0, 100.0), abs=1e-9
    )
