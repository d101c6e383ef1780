"""PcaT2Q against a slow per-row reference, its limits, and its streaming invariants."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from edge_models.base import scorer_class
from edge_models.pca import PcaParams, PcaT2Q, q_limit, t2_limit

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PARAM_SETS = [
    PcaParams(),
    PcaParams(median_window=1),
    PcaParams(median_window=4, variance=0.6, confidence=0.99),
    PcaParams(median_window=2, variance=0.99, min_std=1e-3),
]

FALSE_ALARM_SIGMAS = 4.0
"""Tolerance of the false-alarm tests, in binomial standard deviations."""


def make_process(seed: int, k: int, latent: int = 2) -> FloatArray:
    """Return a ``(latent, k)`` mixing matrix: tags driven by a few shared factors."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (latent, k))


def draw_rows(
    rng: np.random.Generator, mixing: FloatArray, steps: int, noise: float = 0.3
) -> FloatArray:
    """Return ``steps`` correlated Gaussian rows around tag offsets of 50."""
    latent, k = mixing.shape
    factors = rng.normal(0.0, 1.0, (steps, latent))
    return factors @ mixing + noise * rng.normal(0.0, 1.0, (steps, k)) + 50.0


def make_stream(
    seed: int, steps: int, mixing: FloatArray
) -> tuple[FloatArray, BoolArray]:
    """Return correlated rows with NaN, inf, constant stretches, spikes, bad cells."""
    rng = np.random.default_rng(seed)
    values = draw_rows(rng, mixing, steps)
    k = values.shape[1]
    for j in range(k):
        start = int(rng.integers(0, steps))
        values[start : start + int(rng.integers(1, steps // 4)), j] = values[start, j]
    values[rng.random((steps, k)) < 0.01] = np.nan
    values[rng.random((steps, k)) < 0.005] = np.inf
    values[rng.random((steps, k)) < 0.005] = -np.inf
    values[rng.random((steps, k)) < 0.01] *= 1e3  # spikes
    valid = rng.random((steps, k)) > 0.01
    return values, valid


def fitted(params: PcaParams, mixing: FloatArray, seed: int = 100) -> PcaT2Q:
    """Return a scorer fitted on 400 rows of the process, a few of them incomplete."""
    rows = draw_rows(np.random.default_rng(seed), mixing, 400)
    rows[::37, 0] = np.nan
    scorer = PcaT2Q(params, mixing.shape[1])
    scorer.fit(rows)
    return scorer


def pca_reference(
    parameters: dict[str, Any],
    window: int,
    values: FloatArray,
    valid: BoolArray,
) -> FloatArray:
    """Score row by row with plain Python floats, starting from empty medians."""
    mean, std = parameters["mean"].tolist(), parameters["std"].tolist()
    loadings = parameters["loadings"].tolist()
    eigenvalues = parameters["eigenvalues"].tolist()
    t2_lim, q_lim = float(parameters["t2_limit"]), float(parameters["q_limit"])
    k, a = len(mean), len(loadings[0])
    t2_history: list[float] = []
    q_history: list[float] = []
    scores = np.full((len(values), 1), math.nan)
    for i, row in enumerate(values.tolist()):
        if not all(valid[i]) or not all(math.isfinite(x) for x in row):
            continue
        z = [(row[j] - mean[j]) / std[j] for j in range(k)]
        t = [sum(z[j] * loadings[j][c] for j in range(k)) for c in range(a)]
        t2 = sum(t[c] ** 2 / eigenvalues[c] for c in range(a))
        residual = [
            z[j] - sum(t[c] * loadings[j][c] for c in range(a)) for j in range(k)
        ]
        q = sum(r**2 for r in residual)
        t2_history.append(t2)
        q_history.append(q)
        scores[i, 0] = max(
            statistics.median(t2_history[-window:]) / t2_lim,
            statistics.median(q_history[-window:]) / q_lim,
        )
    return scores


def score_in_chunks(
    scorer: PcaT2Q, values: FloatArray, valid: BoolArray, cuts: list[int]
) -> FloatArray:
    """Score ``values`` split at row indices ``cuts``."""
    bounds = [0, *cuts, len(values)]
    parts = [
        scorer.score(values[a:b], valid[a:b]) for a, b in itertools.pairwise(bounds)
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize(("seed", "k"), [(0, 8), (1, 3), (2, 1), (3, 5)])
def test_matches_reference_after_fit(params: PcaParams, seed: int, k: int) -> None:
    """Scores after fitting equal the per-row reference run over training and test."""
    mixing = make_process(seed, k)
    rng = np.random.default_rng(seed)
    train = draw_rows(rng, mixing, 300)
    values, valid = make_stream(seed, 400, mixing)
    scorer = PcaT2Q(params, k)
    scorer.fit(train)

    expected = pca_reference(
        scorer.parameters(),
        params.median_window,
        np.concatenate([train, values]),
        np.concatenate([np.ones(train.shape, dtype=bool), valid]),
    )[len(train) :]
    np.testing.assert_allclose(
        scorer.score(values, valid), expected, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("window", [1, 2, 5])
def test_reset_matches_reference_from_empty_medians(window: int) -> None:
    """After ``reset`` the medians run over the valid rows seen so far."""
    mixing = make_process(4, 6)
    scorer = fitted(PcaParams(median_window=window), mixing)
    values, valid = make_stream(5, 200, mixing)
    scorer.reset()
    expected = pca_reference(scorer.parameters(), window, values, valid)
    np.testing.assert_allclose(
        scorer.score(values, valid), expected, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("k", [1, 4, 8])
def test_fit_matches_svd_of_standardised_rows(k: int) -> None:
    """Mean, std, eigenvalues, kept subspace and limits match an independent SVD."""
    params = PcaParams(variance=0.8, confidence=0.995)
    mixing = make_process(6, k, latent=3)
    train = draw_rows(np.random.default_rng(7), mixing, 500)
    train[[3, 50, 400], [0, 0, k - 1]] = [np.nan, np.inf, -np.inf]
    scorer = PcaT2Q(params, k)
    scorer.fit(train)
    got = scorer.parameters()

    rows = train[np.isfinite(train).all(axis=1)]
    n = len(rows)
    mean = rows.mean(axis=0)
    std = np.sqrt(((rows - mean) ** 2).sum(axis=0) / (n - 1))
    _, singular, vt = np.linalg.svd((rows - mean) / std, full_matrices=False)
    eigenvalues = singular**2 / (n - 1)
    a = 1
    while a < k - 1 and eigenvalues[:a].sum() < params.variance * eigenvalues.sum():
        a += 1
    kept = vt[:a].T

    np.testing.assert_allclose(got["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(got["std"], std, rtol=1e-12)
    np.testing.assert_allclose(got["eigenvalues"], eigenvalues, rtol=1e-9)
    assert got["loadings"].shape == (k, a)
    np.testing.assert_allclose(
        got["loadings"] @ got["loadings"].T, kept @ kept.T, atol=1e-9
    )
    np.testing.assert_allclose(
        [got["t2_limit"], got["q_limit"]],
        [t2_limit(a, n, 0.995), q_limit(eigenvalues[a:], 0.995)],
        rtol=1e-9,
    )


@pytest.mark.parametrize("window", [1, 4, 5])
@pytest.mark.parametrize("fresh", [False, True])
def test_single_rows_and_large_batches_match_one_batch(
    window: int, fresh: bool
) -> None:
    """One-row batches, 1000-row batches and random cuts all equal one batch.

    ``fresh`` starts from empty medians (after ``reset``) instead of from the fit.
    """
    mixing = make_process(8, 8)
    values, valid = make_stream(9, 3000, mixing)
    cuts = sorted(np.random.default_rng(10).choice(np.arange(1, 3000), 200, False))
    splits = {
        "whole": [],
        "rows": list(range(1, 3000)),
        "thousands": [1000, 2000],
        "random": [int(c) for c in cuts],
    }
    results = {}
    for name, split in splits.items():
        scorer = fitted(PcaParams(median_window=window), mixing)
        if fresh:
            scorer.reset()
        results[name] = score_in_chunks(scorer, values, valid, split)
    for name in ("rows", "thousands", "random"):
        np.testing.assert_array_equal(results[name], results["whole"])


def test_parameters_and_state_restore_midstream() -> None:
    """A scorer loaded with parameters and a mid-stream state continues exactly."""
    mixing = make_process(11, 7)
    values, valid = make_stream(12, 500, mixing)
    original = fitted(PcaParams(median_window=4), mixing)
    original.score(values[:213], valid[:213])
    parameters, state = original.parameters(), original.state()
    expected = original.score(values[213:], valid[213:])

    restored = PcaT2Q(PcaParams(median_window=4), 7)
    restored.load_parameters(parameters)
    restored.restore(state)
    np.testing.assert_array_equal(restored.score(values[213:], valid[213:]), expected)


def test_state_and_parameters_are_copies() -> None:
    """Scoring or refitting after ``state()``/``parameters()`` leaves them unchanged."""
    mixing = make_process(13, 4)
    scorer = fitted(PcaParams(), mixing)
    saved, parameters = scorer.state(), scorer.parameters()
    before = {key: array.copy() for key, array in (saved | parameters).items()}
    values, valid = make_stream(14, 50, mixing)
    scorer.score(values, valid)
    scorer.fit(draw_rows(np.random.default_rng(15), mixing, 100) * 2.0)
    for key, array in (saved | parameters).items():
        np.testing.assert_array_equal(array, before[key])


def test_invalid_rows_score_nan_and_skip_the_medians() -> None:
    """A row with one invalid or non-finite cell scores NaN and leaves the state."""
    mixing = make_process(16, 3)
    scorer = fitted(PcaParams(), mixing)
    before = scorer.state()
    values = np.array([[50.0, np.nan, 50.0], [50.0, 50.0, 50.0], [np.inf] * 3])
    valid = np.array([[True] * 3, [True, False, True], [True] * 3])
    assert np.isnan(scorer.score(values, valid)).all()
    for key, array in scorer.state().items():
        np.testing.assert_array_equal(array, before[key])


def test_unfitted_scores_nan() -> None:
    """Before fitting, scores and contributions are NaN and there are no parameters."""
    scorer = PcaT2Q(PcaParams(), 3)
    values = np.ones((4, 3))
    assert np.isnan(scorer.score(values, np.ones((4, 3), dtype=bool))).all()
    assert np.isnan(scorer.contributions(values)).all()
    assert scorer.parameters() == {}
    assert not scorer.fitted


def _statistics(parameters: dict[str, Any], values: FloatArray) -> FloatArray:
    """Return T² and Q of ``values`` from the fitted parameters, ``(steps, 2)``."""
    z = (values - parameters["mean"]) / parameters["std"]
    loadings = parameters["loadings"]
    t = z @ loadings
    t2 = (t**2 / parameters["eigenvalues"][: loadings.shape[1]]).sum(axis=1)
    q = ((z - t @ loadings.T) ** 2).sum(axis=1)
    return np.stack([t2, q], axis=1)


def test_false_alarm_rate_matches_confidence() -> None:
    """On new in-control rows T² and Q each exceed their limit at rate 1 − confidence.

    The limits are random through the training rows, so the claim is about the
    rate averaged over training sets: 400 fits on 2000 rows, each tested on 500
    rows (200 000 in all). The noise is the same on every standardised tag, so
    the discarded eigenvalues are about equal, where Jackson and Mudholkar's Q
    limit is accurate; T² and Q are independent, so either alarms at
    ``1 − confidence²``.
    """
    k, confidence, fits, train_rows, test_rows = 8, 0.99, 400, 2000, 500
    mixing = make_process(17, k).T
    mixing = (mixing * 2.0 / np.linalg.norm(mixing, axis=1, keepdims=True)).T
    rng = np.random.default_rng(18)
    params = PcaParams(confidence=confidence, median_window=1)

    exceed = np.zeros(3, dtype=np.int64)
    for _ in range(fits):
        scorer = PcaT2Q(params, k)
        scorer.fit(draw_rows(rng, mixing, train_rows, noise=0.8))
        values = draw_rows(rng, mixing, test_rows, noise=0.8)
        parameters = scorer.parameters()
        limits = [parameters["t2_limit"], parameters["q_limit"]]
        ratios = _statistics(parameters, values) / limits
        scores = scorer.score(values, np.ones(values.shape, dtype=bool))[:, 0]
        assert parameters["loadings"].shape[1] == 2
        np.testing.assert_array_equal(scores > 1.0, (ratios > 1.0).any(axis=1))
        exceed += [*(ratios > 1.0).sum(axis=0), (scores > 1.0).sum()]

    n = fits * test_rows
    for count, rate in zip(
        exceed, [1 - confidence, 1 - confidence, 1 - confidence**2], strict=True
    ):
        tolerance = FALSE_ALARM_SIGMAS * math.sqrt(n * rate * (1 - rate))
        assert abs(count - n * rate) < tolerance, (count, n * rate, tolerance)


def test_mean_shift_alarms() -> None:
    """A sustained shift of one tag by six standard deviations scores above 1."""
    mixing = make_process(19, 8)
    scorer = fitted(PcaParams(), mixing)
    values = draw_rows(np.random.default_rng(20), mixing, 60)
    std = scorer.parameters()["std"]
    values[30:, 5] += 6.0 * std[5]
    scores = scorer.score(values, np.ones(values.shape, dtype=bool))[:, 0]

    # The median of five needs three shifted rows before it moves.
    assert (scores[32:] > 1.0).all()
    assert (scores[:30] < 1.0).mean() > 0.9


def test_correlation_break_alarms_through_q() -> None:
    """Two tags that always moved together moving apart, each within range, alarm."""
    rng = np.random.default_rng(21)
    common = rng.normal(0.0, 1.0, 700)
    rows = np.stack(
        [common, common + 0.05 * rng.normal(0.0, 1.0, 700)]
        + [rng.normal(0.0, 1.0, 700) for _ in range(2)],
        axis=1,
    )
    scorer = PcaT2Q(PcaParams(), 4)
    scorer.fit(rows[:500])
    values = rows[500:].copy()
    values[100:, 1] = -values[100:, 0]  # the relation breaks
    breaks = np.abs(values[100:, 1]) > 0.5  # rows where it visibly breaks
    scores = scorer.score(values, np.ones(values.shape, dtype=bool))[:, 0]
    shares = scorer.contributions(values)

    parameters = scorer.parameters()
    z = (values - parameters["mean"]) / parameters["std"]
    assert (np.abs(z[:, :2]) < 3.5).all()  # neither tag is out of its own range
    assert (scores[:100] < 1.0).mean() > 0.95
    assert np.median(scores[103:]) > 1.0
    top = np.argsort(shares[100:][breaks], axis=1)[:, -2:]
    assert (np.sort(top, axis=1) == [0, 1]).all()


def test_contributions_sum_to_q() -> None:
    """Per-tag contributions sum to each row's Q and are NaN on invalid rows."""
    mixing = make_process(22, 6)
    scorer = fitted(PcaParams(), mixing)
    values, valid = make_stream(23, 300, mixing)
    before = scorer.state()
    shares = scorer.contributions(values, valid)
    rows = (valid & np.isfinite(values)).all(axis=1)

    expected = _statistics(scorer.parameters(), values[rows])[:, 1]
    np.testing.assert_allclose(shares[rows].sum(axis=1), expected, rtol=1e-9)
    assert np.isnan(shares[~rows]).all()
    assert (shares[rows] >= 0).all()
    for key, array in scorer.state().items():
        np.testing.assert_array_equal(array, before[key])


def test_single_tag_uses_t2_only() -> None:
    """With one tag the Q limit is infinite and the score is T² over its limit."""
    rng = np.random.default_rng(24)
    scorer = PcaT2Q(PcaParams(median_window=1), 1)
    scorer.fit(rng.normal(10.0, 2.0, (200, 1)))
    parameters = scorer.parameters()
    assert parameters["q_limit"] == math.inf
    values = rng.normal(10.0, 2.0, (50, 1))
    t2 = ((values[:, 0] - parameters["mean"][0]) / parameters["std"][0]) ** 2
    scores = scorer.score(values, np.ones((50, 1), dtype=bool))[:, 0]
    np.testing.assert_allclose(scores, t2 / parameters["t2_limit"], rtol=1e-12)


def test_constant_training_tag_scores_its_move_finitely() -> None:
    """A tag constant in training scores a later move large but finite."""
    rows = draw_rows(np.random.default_rng(25), make_process(26, 4), 200)
    rows[:, 2] = 7.0
    scorer = PcaT2Q(PcaParams(median_window=1), 4)
    scorer.fit(rows)
    values = rows[:3].copy()
    values[1, 2] = 7.001
    scores = scorer.score(values, np.ones(values.shape, dtype=bool))[:, 0]
    assert scores[0] < 1.0
    assert 1e3 < scores[1] < math.inf


@pytest.mark.parametrize(
    ("components", "rows", "confidence"), [(1, 50, 0.999), (3, 400, 0.99), (7, 20, 0.9)]
)
def test_t2_limit_against_beta_quantile(
    components: int, rows: int, confidence: float
) -> None:
    """The T² limit equals the F-based formula with F taken from a beta quantile."""
    a, n = components, rows
    # If B ~ Beta(d1/2, d2/2) then (d2 B) / (d1 (1 − B)) ~ F(d1, d2).
    b = stats.beta.ppf(confidence, a / 2, (n - a) / 2)
    f = (n - a) * b / (a * (1 - b))
    expected = a * (n - 1) * (n + 1) / (n * (n - a)) * f
    assert t2_limit(a, n, confidence) == pytest.approx(expected, rel=1e-9)


def test_t2_limit_needs_more_rows_than_components() -> None:
    """A T² limit with as many components as rows raises ``ValueError``."""
    with pytest.raises(ValueError, match="components < rows"):
        t2_limit(5, 5, 0.99)


@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.999])
def test_q_limit_matches_jackson_mudholkar(confidence: float) -> None:
    """The Q limit equals Jackson and Mudholkar's formula written out by hand."""
    lam = np.array([0.4, 0.25, 0.2, 0.1])
    t1, t2, t3 = lam.sum(), (lam**2).sum(), (lam**3).sum()
    h0 = 1 - 2 * t1 * t3 / (3 * t2**2)
    c = stats.norm.ppf(confidence)
    expected = t1 * (
        c * np.sqrt(2 * t2 * h0**2) / t1 + 1 + t2 * h0 * (h0 - 1) / t1**2
    ) ** (1 / h0)
    assert q_limit(lam, confidence) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("discarded", [2, 3, 7, 20])
def test_q_limit_close_to_chi_squared_for_equal_eigenvalues(discarded: int) -> None:
    """For equal eigenvalues λ, Q is λ χ²; the limit is within 0.5 % of its quantile."""
    lam = np.full(discarded, 0.3)
    exact = 0.3 * stats.chi2.ppf(0.99, discarded)
    assert q_limit(lam, 0.99) == pytest.approx(exact, rel=0.005)


def test_q_limit_falls_back_to_box_where_h0_is_negative() -> None:
    """One large and many small eigenvalues (h0 < 0) use Box's g χ²_h."""
    lam = np.array([1.0] + [0.2] * 8)
    t1, t2, t3 = lam.sum(), (lam**2).sum(), (lam**3).sum()
    assert 1 - 2 * t1 * t3 / (3 * t2**2) < 0
    expected = t2 / t1 * stats.chi2.ppf(0.99, t1**2 / t2)
    assert q_limit(lam, 0.99) == pytest.approx(expected, rel=1e-12)


def test_q_limit_edge_cases() -> None:
    """No discarded eigenvalue gives an infinite limit; a zero one is refused."""
    assert q_limit(np.array([]), 0.99) == math.inf
    with pytest.raises(ValueError, match="positive"):
        q_limit(np.array([0.5, 0.0]), 0.99)


@pytest.mark.parametrize(
    ("k", "min_rows", "complete", "need"), [(3, 50, 49, 50), (40, 50, 79, 80)]
)
def test_fit_refuses_too_few_complete_rows(
    k: int, min_rows: int, complete: int, need: int
) -> None:
    """Fitting needs max(2 k, min_rows) complete rows; incomplete ones do not count."""
    rows = np.random.default_rng(27).normal(0.0, 1.0, (complete + 10, k))
    rows[:10, 0] = np.nan
    scorer = PcaT2Q(PcaParams(min_rows=min_rows), k)
    with pytest.raises(ValueError, match=rf"pca: .*at least {need} .*got {complete}"):
        scorer.fit(rows)
    assert not scorer.fitted


def test_fit_refuses_wrong_width_and_overflowing_rows() -> None:
    """Rows of the wrong width, or too large to square, raise ``ValueError``."""
    scorer = PcaT2Q(PcaParams(), 3)
    with pytest.raises(ValueError, match=r"\(steps, 3\)"):
        scorer.fit(np.zeros((100, 2)))
    huge = np.random.default_rng(28).normal(0.0, 1e300, (100, 3))
    with pytest.raises(ValueError, match="too large"):
        scorer.fit(huge)


def test_score_rejects_mismatched_shapes() -> None:
    """Values of the wrong width, or a mask of another shape, raise ``ValueError``."""
    scorer = fitted(PcaParams(), make_process(29, 4))
    with pytest.raises(ValueError, match=r"\(steps, 4\)"):
        scorer.score(np.zeros((2, 3)), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="valid"):
        scorer.score(np.zeros((2, 4)), np.ones((3, 4), dtype=bool))


def test_load_parameters_rejects_misfits() -> None:
    """Missing, unknown, misshapen or inconsistent parameters raise ``ValueError``."""
    good = fitted(PcaParams(), make_process(30, 4)).parameters()
    scorer = PcaT2Q(PcaParams(), 4)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "lack mean"),
        (good | {"extra": np.zeros(1)}, "unknown extra"),
        (good | {"mean": np.zeros(3)}, "mean has shape"),
        (good | {"loadings": np.zeros(4)}, "loadings has shape"),
        (good | {"loadings": np.eye(4)}, "4 components"),
        (good | {"loadings": good["loadings"] * 2}, "orthonormal"),
        (good | {"std": -good["std"]}, "positive"),
        (good | {"t2_limit": np.array(np.nan)}, "finite"),
        (good | {"q_limit": np.array(np.inf)}, "infinite exactly"),
        (good | {"q_limit": np.array([1.0])}, "q_limit has shape"),
    ]
    for parameters, message in cases:
        with pytest.raises(ValueError, match=message):
            scorer.load_parameters(parameters)
    assert not scorer.fitted


def test_restore_rejects_misfit_state() -> None:
    """A state of the wrong length, with a missing key, or inconsistent is refused."""
    scorer = PcaT2Q(PcaParams(median_window=5), 3)
    with pytest.raises(ValueError, match="shape"):
        scorer.restore(PcaT2Q(PcaParams(median_window=3), 3).state())
    with pytest.raises(ValueError, match="lacks q"):
        scorer.restore({"t2": np.zeros(4)})
    nan = math.nan
    bad_states = [
        {"t2": np.array([nan, 1.0, 2.0, 3.0]), "q": np.array([1.0, 1.0, 2.0, 3.0])},
        {"t2": np.array([1.0, nan, 2.0, 3.0]), "q": np.array([1.0, nan, 2.0, 3.0])},
        {"t2": np.array([1.0, 1.0, -2.0, 3.0]), "q": np.ones(4)},
        {"t2": np.array([1.0, 1.0, np.inf, 3.0]), "q": np.ones(4)},
    ]
    for state in bad_states:
        with pytest.raises(ValueError, match="leading empty"):
            scorer.restore(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variance": 0.0},
        {"variance": 1.0},
        {"confidence": 0.5},
        {"confidence": 1.0},
        {"median_window": 0},
        {"min_std": 0.0},
        {"min_rows": 1},
    ],
)
def test_params_rejected(kwargs: dict[str, Any]) -> None:
    """Out-of-range parameters are refused when the params are built."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PcaParams(**kwargs)


def test_registry_names_the_class() -> None:
    """The scorer registry maps ``pca`` to this multivariate, fitted class."""
    assert scorer_class("pca") is PcaT2Q
    assert PcaT2Q.Params is PcaParams
    assert PcaT2Q.multivariate
    assert PcaT2Q.needs_fit
    assert PcaT2Q(PcaParams(), 5).outputs == 1


CELLS = st.one_of(
    st.floats(-1e300, 1e300),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 5),
    window=st.integers(1, 6),
    data=st.data(),
)
def test_scores_nonnegative_or_nan_where_invalid(
    k: int, window: int, data: st.DataObject
) -> None:
    """Scores are NaN exactly on rows with an invalid cell, finite and ≥ 0 elsewhere."""
    steps = data.draw(st.integers(1, 12))
    values = data.draw(hnp.arrays(np.float64, (steps, k), elements=CELLS))
    valid = data.draw(hnp.arrays(np.bool_, (steps, k)))
    train = draw_rows(np.random.default_rng(k), make_process(k, k), 60)
    train[:, 0] = 3.0  # a constant tag: its std is min_std, the overflow-prone case
    scorer = PcaT2Q(PcaParams(median_window=window), k)
    scorer.fit(train)

    scores = scorer.score(values, valid)[:, 0]
    invalid = (~valid | ~np.isfinite(values)).any(axis=1)
    np.testing.assert_array_equal(np.isnan(scores), invalid)
    assert np.isfinite(scores[~invalid]).all()
    assert (scores[~invalid] >= 0).all()
