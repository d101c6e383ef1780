"""The univariate scorers (mad, cusum, limits, rate, flatline) against slow
per-sample references, and their streaming invariants and alarm behaviour."""

from __future__ import annotations

import collections
import io
import itertools
import math
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_models.base import Scorer, ScorerParams, scorer_class
from edge_models.cusum import CusumParams, TabularCusum
from edge_models.flatline import Flatline, FlatlineParams
from edge_models.limits import HardLimits, LimitsParams, RateOfChange, RateParams
from edge_models.mad import MadParams, RollingMad

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Reference = Callable[[FloatArray, FloatArray, BoolArray, Any], FloatArray]

# Written out here rather than imported, so the references do not share the
# constant they check.
NORMAL_MAD = 1.4826

CLASSES: dict[str, type[Scorer]] = {
    "mad": RollingMad,
    "cusum": TabularCusum,
    "limits": HardLimits,
    "rate": RateOfChange,
    "flatline": Flatline,
}
FITTED_KINDS = ["cusum", "limits", "rate", "flatline"]
STATEFUL_KINDS = ["mad", "cusum", "rate", "flatline"]

PARAM_SETS: dict[str, list[ScorerParams]] = {
    "mad": [
        MadParams(),
        MadParams(window=5, min_periods=1),
        MadParams(window=2, min_periods=2, min_mad=1e-3),
        MadParams(window=7, min_periods=7, limit=3.0),
    ],
    "cusum": [
        CusumParams(),
        CusumParams(k=0.0, h=1.0),
        CusumParams(k=1.5, h=8.0, min_std=0.5),
    ],
    "limits": [
        LimitsParams(),
        LimitsParams(margin=0.0),
        LimitsParams(margin=2.0, min_width=50.0),
    ],
    "rate": [RateParams(), RateParams(limit=1.0, min_scale=2.0)],
    "flatline": [
        FlatlineParams(),
        FlatlineParams(tolerance=0.5, factor=1.0, min_run=1),
        FlatlineParams(tolerance=3.0, factor=0.5, min_run=3),
    ],
}
CASES = [(kind, params) for kind, sets in PARAM_SETS.items() for params in sets]


# Streams ---------------------------------------------------------------------


def make_stream(
    seed: int, steps: int, k: int, *, dead_tag: bool = True
) -> tuple[FloatArray, BoolArray]:
    """Return random walks with NaN, inf, constant stretches and invalid cells."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (steps, k)).cumsum(axis=0) + rng.normal(0.0, 100.0, k)
    for j in range(k):
        start = int(rng.integers(0, steps))
        values[start : start + int(rng.integers(1, steps // 2)), j] = values[start, j]
    values[rng.random((steps, k)) < 0.03] = np.nan
    values[rng.random((steps, k)) < 0.01] = np.inf
    values[rng.random((steps, k)) < 0.01] = -np.inf
    values[rng.random((steps, k)) < 0.02] *= 1e3  # spikes
    valid = rng.random((steps, k)) > 0.05
    if dead_tag:
        valid[:, 0] = False  # a tag that never reports
    return values, valid


def make_training(seed: int, steps: int, k: int) -> FloatArray:
    """Return normal rows as fit sees them: messy, with NaN where a cell is missing."""
    values, valid = make_stream(seed, steps, k, dead_tag=False)
    return np.where(valid, values, np.nan)


def make_scorer(kind: str, params: ScorerParams, k: int, seed: int = 99) -> Scorer:
    """Build a scorer of ``kind`` fitted on a messy training stream."""
    scorer = CLASSES[kind](params, k)
    scorer.fit(make_training(seed, 150, k))
    return scorer


def score_in_chunks(
    scorer: Scorer, values: FloatArray, valid: BoolArray, cuts: list[int]
) -> FloatArray:
    """Score ``values`` split at row indices ``cuts``."""
    bounds = [0, *cuts, len(values)]
    parts = [
        scorer.score(values[a:b], valid[a:b]) for a, b in itertools.pairwise(bounds)
    ]
    return np.concatenate(parts)


def npz_round_trip(arrays: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """Pass named arrays through ``np.savez``, as the pipeline stores them."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


# Slow references: one tag at a time, one reading at a time, plain floats ------


def valid_cells(
    values: FloatArray, valid: BoolArray, j: int
) -> Iterator[tuple[int, float]]:
    """Yield ``(row, value)`` for the valid, finite cells of column ``j``."""
    for t in range(values.shape[0]):
        x = float(values[t, j])
        if valid[t, j] and math.isfinite(x):
            yield t, x


def joined(
    train: FloatArray, values: FloatArray, valid: BoolArray
) -> tuple[FloatArray, BoolArray]:
    """Training rows (finite cells valid) followed by the scored rows."""
    return np.vstack([train, values]), np.vstack([np.isfinite(train), valid])


def median_and_scale(xs: list[float]) -> tuple[float, float]:
    """Median and 1.4826 times the median absolute deviation from it."""
    centre = statistics.median(xs)
    return centre, NORMAL_MAD * statistics.median(abs(x - centre) for x in xs)


def mad_reference(
    train: FloatArray, values: FloatArray, valid: BoolArray, params: MadParams
) -> FloatArray:
    """Score each reading against a deque of its tag's last ``window`` readings."""
    cells, ok = joined(train, values, valid)
    scores = np.full(cells.shape, math.nan)
    for j in range(cells.shape[1]):
        window: collections.deque[float] = collections.deque(maxlen=params.window)
        for t, x in valid_cells(cells, ok, j):
            if len(window) < params.min_periods:
                scores[t, j] = 0.0
            else:
                centre = statistics.median(window)
                mad = statistics.median(abs(w - centre) for w in window)
                s = NORMAL_MAD * max(mad, params.min_mad)
                scores[t, j] = abs(x - centre) / (params.limit * s)
            window.append(x)
    return scores[len(train) :]


def cusum_fit_reference(train: FloatArray, params: CusumParams) -> dict[str, Any]:
    """Median and floored 1.4826 MAD of each tag's finite training values."""
    fits = []
    for j in range(train.shape[1]):
        mu, sigma = median_and_scale(
            [x for _, x in valid_cells(train, ~np.isnan(train), j)]
        )
        fits.append((mu, max(sigma, params.min_std)))
    return {"mu": [mu for mu, _ in fits], "sigma": [sigma for _, sigma in fits]}


def cusum_reference(
    train: FloatArray, values: FloatArray, valid: BoolArray, params: CusumParams
) -> FloatArray:
    """Run Page's two one-sided sums per tag with plain floats."""
    fitted = cusum_fit_reference(train, params)
    cells, ok = joined(train, values, valid)
    scores = np.full(cells.shape, math.nan)
    for j in range(cells.shape[1]):
        c_plus = c_minus = 0.0
        for t, x in valid_cells(cells, ok, j):
            z = (x - fitted["mu"][j]) / fitted["sigma"][j]
            c_plus = max(0.0, c_plus + (z - params.k))
            c_minus = max(0.0, c_minus + (-z - params.k))
            scores[t, j] = max(c_plus, c_minus) / params.h
    return scores[len(train) :]


def limits_fit_reference(train: FloatArray, params: LimitsParams) -> dict[str, Any]:
    """Training min and max pushed out by the margin, at least ``min_width`` apart."""
    low, high = [], []
    for j in range(train.shape[1]):
        xs = [x for _, x in valid_cells(train, ~np.isnan(train), j)]
        reach = params.margin * (max(xs) - min(xs))
        lo, hi = min(xs) - reach, max(xs) + reach
        if hi - lo < params.min_width:
            middle = (min(xs) + max(xs)) / 2
            lo, hi = middle - params.min_width / 2, middle + params.min_width / 2
        low.append(lo)
        high.append(hi)
    return {"low": low, "high": high}


def limits_reference(
    train: FloatArray, values: FloatArray, valid: BoolArray, params: LimitsParams
) -> FloatArray:
    """Distance from the band's centre over the half-width on the reading's side."""
    band = limits_fit_reference(train, params)
    scores = np.full(values.shape, math.nan)
    for j in range(values.shape[1]):
        low, high = band["low"][j], band["high"][j]
        centre = (low + high) / 2
        for t, x in valid_cells(values, valid, j):
            if x >= centre:
                scores[t, j] = (x - centre) / (high - centre)
            else:
                scores[t, j] = (centre - x) / (centre - low)
    return scores


def rate_fit_reference(train: FloatArray, params: RateParams) -> dict[str, Any]:
    """Floored 1.4826 MAD of the differences between consecutive finite values."""
    scale = []
    for j in range(train.shape[1]):
        xs = [x for _, x in valid_cells(train, ~np.isnan(train), j)]
        _, spread = median_and_scale([b - a for a, b in itertools.pairwise(xs)])
        scale.append(max(spread, params.min_scale))
    return {"scale": scale}


def rate_reference(
    train: FloatArray, values: FloatArray, valid: BoolArray, params: RateParams
) -> FloatArray:
    """Change from the previous valid reading over ``limit`` times the scale."""
    scale = rate_fit_reference(train, params)["scale"]
    cells, ok = joined(train, values, valid)
    scores = np.full(cells.shape, math.nan)
    for j in range(cells.shape[1]):
        prev: float | None = None
        for t, x in valid_cells(cells, ok, j):
            if prev is None:
                scores[t, j] = 0.0
            else:
                scores[t, j] = abs(x - prev) / (params.limit * scale[j])
            prev = x
    return scores[len(train) :]


def flat_runs(
    values: FloatArray, valid: BoolArray, j: int, tolerance: float
) -> Iterator[tuple[int, int]]:
    """Yield ``(row, run)`` for column ``j``'s valid cells, counting flat readings."""
    prev: float | None = None
    run = 0
    for t, x in valid_cells(values, valid, j):
        run = run + 1 if prev is not None and abs(x - prev) <= tolerance else 0
        prev = x
        yield t, run


def flatline_fit_reference(train: FloatArray, params: FlatlineParams) -> dict[str, Any]:
    """``factor`` times each tag's longest training run, at least ``min_run``."""
    max_run = []
    for j in range(train.shape[1]):
        runs = flat_runs(train, ~np.isnan(train), j, params.tolerance)
        longest = max(run for _, run in runs)
        max_run.append(max(params.factor * longest, params.min_run))
    return {"max_run": max_run}


def flatline_reference(
    train: FloatArray, values: FloatArray, valid: BoolArray, params: FlatlineParams
) -> FloatArray:
    """Run length of flat readings per tag over the fitted limit."""
    max_run = flatline_fit_reference(train, params)["max_run"]
    cells, ok = joined(train, values, valid)
    scores = np.full(cells.shape, math.nan)
    for j in range(cells.shape[1]):
        for t, run in flat_runs(cells, ok, j, params.tolerance):
            scores[t, j] = run / max_run[j]
    return scores[len(train) :]


REFERENCES: dict[str, Reference] = {
    "mad": mad_reference,
    "cusum": cusum_reference,
    "limits": limits_reference,
    "rate": rate_reference,
    "flatline": flatline_reference,
}
FIT_REFERENCES: dict[str, Callable[[FloatArray, Any], dict[str, Any]]] = {
    "cusum": cusum_fit_reference,
    "limits": limits_fit_reference,
    "rate": rate_fit_reference,
    "flatline": flatline_fit_reference,
}


# Against the references --------------------------------------------------------


@pytest.mark.parametrize(("kind", "params"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(kind: str, params: ScorerParams, seed: int) -> None:
    """Fitted, then scoring messy rows, each scorer equals its per-sample reference."""
    train = make_training(seed + 100, 200, 9)
    values, valid = make_stream(seed, 300, 9)
    scorer = CLASSES[kind](params, 9)
    scorer.fit(train)
    np.testing.assert_allclose(
        scorer.score(values, valid),
        REFERENCES[kind](train, values, valid, params),
        rtol=1e-12,
        equal_nan=True,
    )


@pytest.mark.parametrize(("kind", "params"), [c for c in CASES if c[0] != "mad"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fitted_parameters_match_reference(
    kind: str, params: ScorerParams, seed: int
) -> None:
    """The parameters fitted from messy normal rows equal the reference fit."""
    train = make_training(seed, 200, 7)
    train[:, 3] = 42.0  # a tag constant throughout training hits every floor
    scorer = CLASSES[kind](params, 7)
    scorer.fit(train)
    expected = FIT_REFERENCES[kind](train, params)
    got = scorer.parameters()
    assert got.keys() == expected.keys()
    for key, array in got.items():
        np.testing.assert_allclose(array, expected[key], rtol=1e-12)


@pytest.mark.parametrize("params", PARAM_SETS["mad"])
def test_mad_from_empty_windows_matches_reference(params: MadParams) -> None:
    """Unfitted, mad scores from empty windows exactly as the reference does."""
    values, valid = make_stream(7, 300, 6)
    scores = RollingMad(params, 6).score(values, valid)
    empty = np.empty((0, 6))
    np.testing.assert_allclose(
        scores, mad_reference(empty, values, valid, params), rtol=1e-12, equal_nan=True
    )


# Streaming invariants ------------------------------------------------------------

INVARIANT_CASES = [
    ("mad", MadParams(window=20, min_periods=5)),
    ("cusum", CusumParams()),
    ("limits", LimitsParams()),
    ("rate", RateParams()),
    ("flatline", FlatlineParams(tolerance=0.3)),
]


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_batch_size_invariance(kind: str, params: ScorerParams) -> None:
    """One-row, 1000-row and ragged batches all give the scores of a single batch."""
    values, valid = make_stream(3, 2500, 5)
    whole = make_scorer(kind, params, 5).score(values, valid)
    ragged = sorted(np.random.default_rng(4).choice(np.arange(1, 2500), 60, False))
    for cuts in (list(range(1, 2500)), [1000, 2000], [int(c) for c in ragged]):
        chunked = score_in_chunks(make_scorer(kind, params, 5), values, valid, cuts)
        np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_saved_state_and_parameters_continue_identically(
    kind: str, params: ScorerParams
) -> None:
    """A fresh scorer loaded with saved parameters and state continues exactly."""
    values, valid = make_stream(6, 400, 7)
    original = make_scorer(kind, params, 7)
    original.score(values[:170], valid[:170])
    parameters = npz_round_trip(original.parameters())
    state = npz_round_trip(original.state())
    expected = original.score(values[170:], valid[170:])

    restored = CLASSES[kind](params, 7)
    restored.load_parameters(parameters)
    restored.restore(state)
    assert restored.fitted
    np.testing.assert_array_equal(restored.score(values[170:], valid[170:]), expected)


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_fit_leaves_state_as_if_rows_were_scored(
    kind: str, params: ScorerParams
) -> None:
    """After fit the state equals that of a reset scorer that scored the rows."""
    train = make_training(8, 120, 4)
    fitted = CLASSES[kind](params, 4)
    fitted.fit(train)

    replayed = CLASSES[kind](params, 4)
    replayed.load_parameters(fitted.parameters())
    replayed.reset()
    replayed.score(train, np.isfinite(train))
    for key, array in replayed.state().items():
        np.testing.assert_array_equal(fitted.state()[key], array)


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_state_and_parameters_are_copies(kind: str, params: ScorerParams) -> None:
    """Scoring and refitting leave the arrays of ``state()`` and ``parameters()``."""
    scorer = make_scorer(kind, params, 3)
    saved = {**scorer.state(), **scorer.parameters()}
    before = {key: array.copy() for key, array in saved.items()}
    scorer.score(np.full((30, 3), 1e4), np.ones((30, 3), dtype=bool))
    scorer.fit(make_training(5, 50, 3))
    for key, array in saved.items():
        np.testing.assert_array_equal(array, before[key])


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_invalid_cells_score_nan_and_leave_state(
    kind: str, params: ScorerParams
) -> None:
    """Rows of invalid or non-finite cells score NaN and change no state."""
    scorer = make_scorer(kind, params, 3)
    before = scorer.state()
    scores = scorer.score(
        np.array([[np.nan, np.inf, 7.0], [-np.inf, 1.0, np.nan]]),
        np.array([[True, True, False], [True, False, True]]),
    )
    assert np.isnan(scores).all()
    after = scorer.state()
    assert after.keys() == before.keys()
    for key, array in after.items():
        np.testing.assert_array_equal(array, before[key])


@pytest.mark.parametrize(("kind", "params"), INVARIANT_CASES)
def test_empty_batch_scores_nothing_and_keeps_state(
    kind: str, params: ScorerParams
) -> None:
    """A batch of no rows returns ``(0, k)`` scores and leaves the state as it was."""
    scorer = make_scorer(kind, params, 3)
    before = scorer.state()
    scores = scorer.score(np.empty((0, 3)), np.empty((0, 3), dtype=bool))
    assert scores.shape == (0, 3)
    for key, array in scorer.state().items():
        np.testing.assert_array_equal(array, before[key])


@pytest.mark.parametrize("kind", FITTED_KINDS)
def test_unfitted_scorer_scores_nan(kind: str) -> None:
    """A scorer that needs fitting scores NaN, and keeps its state, until fitted."""
    scorer = CLASSES[kind](CLASSES[kind].Params(), 2)
    assert not scorer.fitted
    before = scorer.state()
    scores = scorer.score(np.ones((4, 2)), np.ones((4, 2), dtype=bool))
    assert np.isnan(scores).all()
    for key, array in scorer.state().items():
        np.testing.assert_array_equal(array, before[key])


# Fit and restore errors ----------------------------------------------------------

FIT_NEEDS = {"mad": 10, "cusum": 10, "limits": 10, "rate": 10, "flatline": 10}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_fit_refuses_too_few_values(kind: str) -> None:
    """A tag with too few finite training values makes fit name the scorer and need."""
    train = make_training(2, 100, 3)
    train[3:, 1] = np.nan  # tag 1 keeps at most three values
    scorer = CLASSES[kind](CLASSES[kind].Params(), 3)
    with pytest.raises(
        ValueError, match=rf"^{kind}: fit needs at least {FIT_NEEDS[kind]} "
    ):
        scorer.fit(train)


def test_rate_fit_counts_differences_not_values() -> None:
    """Rate needs ten differences, so ten finite values are one too few."""
    train = np.arange(20.0).reshape(20, 1)
    train[10:] = np.nan
    with pytest.raises(ValueError, match=r"\[0\] have \[9\]"):
        RateOfChange(RateParams(), 1).fit(train)
    train[10] = 10.0
    RateOfChange(RateParams(), 1).fit(train)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_fit_and_score_refuse_wrong_width(kind: str) -> None:
    """Rows with a column count other than ``k`` raise ``ValueError``."""
    scorer = CLASSES[kind](CLASSES[kind].Params(), 4)
    with pytest.raises(ValueError, match=r"\(steps, 4\)"):
        scorer.fit(np.zeros((30, 3)))
    with pytest.raises(ValueError, match=r"\(steps, 4\)"):
        scorer.score(np.zeros((2, 3)), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"\(steps, 4\)"):
        scorer.score(np.zeros((2, 4)), np.ones((2, 3), dtype=bool))


@pytest.mark.parametrize("kind", STATEFUL_KINDS)
def test_restore_refuses_misfit_state(kind: str) -> None:
    """A state with a key missing, or of another width, raises ``ValueError``."""
    params = CLASSES[kind].Params()
    scorer = make_scorer(kind, params, 4)
    state = scorer.state()
    dropped = sorted(state)[0]
    with pytest.raises(ValueError, match=f"lacks {dropped}"):
        scorer.restore({key: a for key, a in state.items() if key != dropped})
    with pytest.raises(ValueError, match="shape"):
        scorer.restore(make_scorer(kind, params, 3).state())
    with pytest.raises(ValueError, match="unexpected extra"):
        scorer.restore({**state, "extra": np.zeros(4)})


@pytest.mark.parametrize("kind", FITTED_KINDS)
def test_load_parameters_refuses_misfit_parameters(kind: str) -> None:
    """Parameters missing a key, of another width or unfitted raise ``ValueError``."""
    params = CLASSES[kind].Params()
    fresh = CLASSES[kind](params, 4)
    parameters = make_scorer(kind, params, 4).parameters()
    dropped = sorted(parameters)[0]
    with pytest.raises(ValueError, match=f"lacks {dropped}"):
        fresh.load_parameters({k: a for k, a in parameters.items() if k != dropped})
    with pytest.raises(ValueError, match="shape"):
        fresh.load_parameters(make_scorer(kind, params, 3).parameters())
    with pytest.raises(ValueError, match=kind):
        fresh.load_parameters(CLASSES[kind](params, 4).parameters())
    assert not fresh.fitted


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("mad", "n", -1),
        ("cusum", "c_plus", -1.0),
        ("cusum", "c_minus", np.inf),
        ("rate", "last", np.inf),
        ("flatline", "run", -1),
        ("flatline", "last", -np.inf),
    ],
)
def test_restore_refuses_impossible_state(kind: str, key: str, value: float) -> None:
    """A state value no scoring could have left raises ``ValueError``."""
    scorer = make_scorer(kind, CLASSES[kind].Params(), 3)
    state = scorer.state()
    state[key][1] = value
    with pytest.raises(ValueError, match=key):
        scorer.restore(state)


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("cusum", "sigma", 0.0),
        ("cusum", "mu", np.inf),
        ("limits", "low", 1e9),
        ("rate", "scale", -1.0),
        ("flatline", "max_run", 0.0),
    ],
)
def test_load_parameters_refuses_impossible_values(
    kind: str, key: str, value: float
) -> None:
    """A parameter value no fit could have produced raises ``ValueError``."""
    parameters = make_scorer(kind, CLASSES[kind].Params(), 3).parameters()
    parameters[key][1] = value
    fresh = CLASSES[kind](CLASSES[kind].Params(), 3)
    with pytest.raises(ValueError, match=kind):
        fresh.load_parameters(parameters)
    assert not fresh.fitted


def test_mad_restore_refuses_window_that_disagrees_with_count() -> None:
    """A mad window whose filled slots do not match ``n`` raises ``ValueError``."""
    scorer = RollingMad(MadParams(window=4, min_periods=1), 1)
    window = np.array([[np.nan, np.nan, 1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        scorer.restore({"window": window, "n": np.array([3])})
    with pytest.raises(ValueError, match="finite"):
        scorer.restore({"window": window[:, ::-1], "n": np.array([2])})
    with pytest.raises(ValueError, match="dtype"):
        scorer.restore({"window": window, "n": np.array([2.0])})
    scorer.restore({"window": window, "n": np.array([2])})


def test_mad_continues_from_a_partly_filled_window() -> None:
    """A mad state saved while windows are still filling restores and continues."""
    params = MadParams(window=30, min_periods=3)
    values, valid = make_stream(12, 80, 4)
    original = RollingMad(params, 4)
    original.score(values[:12], valid[:12])
    assert (original.state()["n"] < params.window).all()
    restored = RollingMad(params, 4)
    restored.restore(npz_round_trip(original.state()))
    np.testing.assert_array_equal(
        restored.score(values[12:], valid[12:]), original.score(values[12:], valid[12:])
    )


def test_limits_state_is_empty() -> None:
    """Limits has no streaming state, and refuses any state with arrays in it."""
    scorer = make_scorer("limits", LimitsParams(), 2)
    assert scorer.state() == {}
    scorer.restore({})
    with pytest.raises(ValueError, match="unexpected c_plus"):
        scorer.restore({"c_plus": np.zeros(2)})


def test_limits_refuses_band_too_narrow_for_its_magnitude() -> None:
    """A constant tag far from zero with a tiny ``min_width`` has no usable centre."""
    train = np.full((20, 1), 1e12)
    with pytest.raises(ValueError, match="raise min_width"):
        HardLimits(LimitsParams(min_width=1e-9), 1).fit(train)
    HardLimits(LimitsParams(min_width=1e-3), 1).fit(train)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (lambda: MadParams(window=1), "window"),
        (lambda: MadParams(window=5, min_periods=6), "min_periods"),
        (lambda: MadParams(min_mad=0.0), "min_mad"),
        (lambda: CusumParams(h=0.0), "h"),
        (lambda: CusumParams(k=-0.1), "k"),
        (lambda: LimitsParams(margin=-0.1), "margin"),
        (lambda: RateParams(min_scale=0.0), "min_scale"),
        (lambda: FlatlineParams(tolerance=-1.0), "tolerance"),
        (lambda: FlatlineParams(min_run=0), "min_run"),
    ],
)
def test_params_rejected(params: Callable[[], ScorerParams], field: str) -> None:
    """Out-of-range parameters are refused when the params are built."""
    with pytest.raises(ValueError, match=field):
        params()


@pytest.mark.parametrize("kind", list(CLASSES))
def test_registry_names_the_class(kind: str) -> None:
    """The scorer registry maps each kind to its class, whose name is the kind."""
    assert scorer_class(kind) is CLASSES[kind]
    assert CLASSES[kind].name == kind


# Behaviour -----------------------------------------------------------------------


def noisy(seed: int, steps: int, level: float = 50.0, std: float = 1.0) -> FloatArray:
    """Return a stationary normal signal of one tag, ``(steps, 1)``."""
    return np.random.default_rng(seed).normal(level, std, (steps, 1))


def all_valid(values: FloatArray) -> BoolArray:
    """Return a mask marking every cell valid."""
    return np.ones(values.shape, dtype=bool)


def test_mad_catches_a_spike_and_ignores_it_after() -> None:
    """A spike scores over 1 and, outvoted in the window, does not mask the next one."""
    values = noisy(1, 200)
    values[150, 0] += 20.0
    values[152, 0] += 20.0
    scores = RollingMad(MadParams(), 1).score(values, all_valid(values))[:, 0]
    assert scores[150] > 1.0
    assert scores[152] > 1.0
    assert (np.delete(scores, [150, 152]) < 1.0).all()


def test_mad_warms_up_then_floors_the_mad() -> None:
    """Readings before ``min_periods`` score 0; a move off a constant uses min_mad."""
    params = MadParams(window=10, min_periods=4, min_mad=0.01)
    values = np.array([[5.0]] * 12 + [[5.5]])
    scores = RollingMad(params, 1).score(values, all_valid(values))[:, 0]
    np.testing.assert_array_equal(scores[:12], 0.0)
    assert scores[12] == pytest.approx(0.5 / (NORMAL_MAD * 0.01 * params.limit))


def test_cusum_catches_a_step_and_holds_it() -> None:
    """A two-sigma step is caught within a few readings and scores over 1 throughout."""
    scorer = TabularCusum(CusumParams(), 1)
    scorer.fit(noisy(2, 500))
    values = noisy(3, 400)
    values[200:, 0] += 2.0
    scores = scorer.score(values, all_valid(values))[:, 0]
    assert (scores[:200] < 1.0).all()
    first = 200 + int(np.argmax(scores[200:] > 1.0))
    assert first <= 210
    assert (scores[first:] > 1.0).all()


def test_cusum_catches_a_downward_step_through_invalid_cells() -> None:
    """A downward step builds ``C⁻`` and invalid cells in it neither score nor reset."""
    scorer = TabularCusum(CusumParams(), 1)
    scorer.fit(noisy(4, 500))
    values = noisy(5, 100)
    values[50:, 0] -= 3.0
    valid = all_valid(values)
    valid[70:75] = False
    scores = scorer.score(values, valid)[:, 0]
    assert np.isnan(scores[70:75]).all()
    assert scores[75] >= scores[69]
    assert (scores[60:70] > 1.0).all()
    assert scorer.state()["c_minus"][0] > CusumParams().h


def test_limits_score_exactly_one_at_each_limit() -> None:
    """A band fitted on 0..10 with a 10 % margin is -1..11, and each limit scores 1."""
    scorer = HardLimits(LimitsParams(), 1)
    scorer.fit(np.linspace(0.0, 10.0, 41)[:, None])
    np.testing.assert_array_equal(scorer.parameters()["low"], [-1.0])
    np.testing.assert_array_equal(scorer.parameters()["high"], [11.0])
    values = np.array([[-1.0], [11.0], [5.0], [17.0], [-7.0], [8.0]])
    scores = scorer.score(values, all_valid(values))[:, 0]
    np.testing.assert_array_equal(scores, [1.0, 1.0, 0.0, 2.0, 2.0, 0.5])


def test_limits_score_exactly_one_at_awkward_limits() -> None:
    """Limits that are not binary fractions still score exactly 1.0 on the limit."""
    scorer = HardLimits(LimitsParams(), 3)
    low, high = np.array([0.1, -3.3, 1e-7]), np.array([0.7, 17.9, 3e-7])
    scorer.load_parameters({"low": low, "high": high})
    scores = scorer.score(np.vstack([low, high]), np.ones((2, 3), dtype=bool))
    np.testing.assert_array_equal(scores, 1.0)


def test_rate_catches_a_jump_but_not_the_new_level() -> None:
    """A jump of twenty typical steps scores over 1; holding the new level does not."""
    walk = np.random.default_rng(6).normal(0.0, 1.0, (600, 1)).cumsum(axis=0)
    scorer = RateOfChange(RateParams(), 1)
    scorer.fit(walk[:400])
    values = walk[400:].copy()
    values[100:] += 20.0
    scores = scorer.score(values, all_valid(values))[:, 0]
    assert scores[100] > 1.0
    assert (np.delete(scores, 100) < 1.0).all()


def test_rate_first_reading_scores_zero_and_gaps_are_bridged() -> None:
    """A tag's first reading scores 0; after a gap the change spans the gap."""
    scorer = RateOfChange(RateParams(limit=1.0), 1)
    scorer.load_parameters({"scale": np.array([2.0])})
    values = np.array([[10.0], [np.nan], [14.0], [13.0]])
    scores = scorer.score(values, all_valid(values))[:, 0]
    np.testing.assert_array_equal(scores, [0.0, np.nan, 2.0, 0.5])


def test_flatline_catches_a_stuck_signal() -> None:
    """A stuck reading scores 1 at max_run repeats; invalid cells do not break it."""
    scorer = Flatline(FlatlineParams(), 1)
    scorer.fit(noisy(7, 300))
    np.testing.assert_array_equal(scorer.parameters()["max_run"], [10.0])
    values = noisy(8, 60)
    values[20:50, 0] = values[20, 0]
    valid = all_valid(values)
    valid[25] = False
    scores = scorer.score(values, valid)[:, 0]
    assert (scores[:20] == 0.0).all()
    assert np.isnan(scores[25])
    # 20 starts the run; 21..24 and 26..31 are its ten repeats; 25 is skipped.
    np.testing.assert_array_equal(scores[26:32], np.arange(5, 11) / 10)
    assert (scores[32:50] > 1.0).all()
    assert (scores[50:] == 0.0).all()


def test_flatline_scores_below_one_on_a_normal_noisy_signal() -> None:
    """A quantised but moving signal, flat at times in training, stays below 1."""
    quantised = np.round(noisy(9, 2000, std=2.0))
    scorer = Flatline(FlatlineParams(), 1)
    scorer.fit(quantised[:1000])
    assert scorer.parameters()["max_run"][0] >= FlatlineParams().min_run
    scores = scorer.score(quantised[1000:], all_valid(quantised[1000:]))
    assert (scores < 1.0).all()
    assert (scores > 0.0).any()


# Properties ----------------------------------------------------------------------

CELLS = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@pytest.mark.parametrize("kind", list(CLASSES))
@settings(max_examples=100, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
        elements=CELLS,
    ),
    data=st.data(),
)
def test_scores_nonnegative_or_nan_where_invalid(
    kind: str, values: FloatArray, data: st.DataObject
) -> None:
    """Scores are NaN exactly on invalid cells and non-negative elsewhere."""
    valid = data.draw(hnp.arrays(np.bool_, values.shape))
    scorer = make_scorer(kind, CLASSES[kind].Params(), values.shape[1])
    scores = scorer.score(values, valid)
    invalid = ~valid | ~np.isfinite(values)
    np.testing.assert_array_equal(np.isnan(scores), invalid)
    assert (scores[~invalid] >= 0).all()
