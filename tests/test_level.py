"""The level scorer against a plain per-row reference, and its drift behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_models.level import LevelParams, LevelShift, persistence_factor


def reference(
    normal: np.ndarray, values: np.ndarray, params: LevelParams
) -> np.ndarray:
    """Per tag, per row: the mean of the last ``window`` valid readings vs the level.

    The level starts at the fit rows' median and, with ``follow``, moves
    ``1 / follow`` of the way to the mean after each reading scoring below
    ``follow_below``.
    """
    k = normal.shape[1]
    out = np.full(values.shape, np.nan)
    for j in range(k):
        train = normal[np.isfinite(normal[:, j]), j]
        mu = float(np.median(train))
        sigma = max(float(np.std(train)), params.min_std)
        d = float(np.mean(np.diff(train) ** 2)) / float(np.var(train))
        rho = min(max(1.0 - d / 2.0, 0.0), params.max_rho)
        se = sigma * math.sqrt((1 + rho) / (1 - rho)) / math.sqrt(params.window)
        history = list(train)
        level = mu
        for t, x in enumerate(values[:, j]):
            if not np.isfinite(x):
                continue
            history.append(float(x))
            mean = sum(history[-params.window :]) / params.window
            out[t, j] = abs(mean - level) / (params.limit * se)
            if params.follow and out[t, j] < params.follow_below:
                level += (mean - level) / params.follow
    return out


@pytest.mark.parametrize("follow", [0.0, 5.0, 30.0])
@pytest.mark.parametrize("window", [1, 7, 30])
def test_matches_reference_in_any_batching(window: int, follow: float) -> None:
    """Scores in batches of 1, 13 and 150 rows equal the per-row reference."""
    rng = np.random.default_rng(window)
    normal = rng.normal(size=(200, 3)) + np.array([0.0, 5.0, -2.0])
    normal[:, 2] = np.cumsum(normal[:, 2]) * 0.1  # a drifting tag
    values = rng.normal(size=(150, 3))
    values[60:90, 0] += 3.0  # a shift that freezes the followed level
    values[rng.random(values.shape) < 0.1] = np.nan
    params = LevelParams(window=window, limit=4.0, follow=follow)
    expected = reference(normal, values, params)

    for batch in (1, 13, 150):
        scorer = LevelShift(params, 3)
        scorer.fit(normal)
        got = np.vstack(
            [
                scorer.score(values[i : i + batch], np.isfinite(values[i : i + batch]))
                for i in range(0, len(values), batch)
            ]
        )
        np.testing.assert_allclose(got, expected, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("follow", [0.0, 30.0])
def test_gapless_batches_match_the_reference(follow: float) -> None:
    """Batches with every cell valid (the dense path) equal the per-row reference."""
    rng = np.random.default_rng(5)
    normal = rng.normal(size=(120, 4)) + np.array([0.0, 2.0, -1.0, 8.0])
    values = rng.normal(size=(160, 4))
    values[40:70, 1] += 5.0
    params = LevelParams(window=9, limit=4.0, follow=follow)
    expected = reference(normal, values, params)

    for batch in (2, 13, 160):
        scorer = LevelShift(params, 4)
        scorer.fit(normal)
        got = np.vstack(
            [
                scorer.score(values[i : i + batch], np.isfinite(values[i : i + batch]))
                for i in range(0, len(values), batch)
            ]
        )
        np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_a_long_wide_batch_scored_in_pieces_matches_the_reference() -> None:
    """A batch too big for one piece (300 x 2,000 cells) scores as the reference."""
    rng = np.random.default_rng(11)
    k = 2_000
    normal = rng.normal(size=(150, k)) + np.arange(k) * 0.01
    values = rng.normal(size=(300, k))
    values[100:180, ::7] += 4.0
    values[rng.random(values.shape) < 0.05] = np.nan
    params = LevelParams(window=5, limit=4.0, follow=10.0)
    scorer = LevelShift(params, k)
    scorer.fit(normal)

    got = scorer.score(values, np.isfinite(values))
    columns = slice(0, k, 97)  # the per-row reference is slow: a sample of tags
    expected = reference(normal[:, columns], values[:, columns], params)
    np.testing.assert_allclose(got[:, columns], expected, rtol=1e-9, equal_nan=True)


def test_wide_gapless_batches_match_the_reference() -> None:
    """Hundreds of tags, fit rows with gaps, then gapless batches: as the reference."""
    rng = np.random.default_rng(17)
    k = 300
    normal = rng.normal(size=(120, k)) + np.arange(k) * 0.05
    normal[:, 1::4] = np.cumsum(normal[:, 1::4], axis=0) * 0.1  # drifting tags
    normal[rng.random(normal.shape) < 0.02] = np.nan  # gaps in some fit columns
    values = rng.normal(size=(90, k)) + np.arange(k) * 0.05
    values[30:60, ::5] += 3.0
    params = LevelParams(window=6, limit=4.0, follow=20.0)
    columns = slice(0, k, 7)
    expected = reference(normal[:, columns], values[:, columns], params)

    for batch in (1, 45, 90):
        scorer = LevelShift(params, k)
        scorer.fit(normal)
        got = np.vstack(
            [
                scorer.score(
                    values[i : i + batch],
                    np.ones((len(values[i : i + batch]), k), bool),
                )
                for i in range(0, len(values), batch)
            ]
        )
        np.testing.assert_allclose(got[:, columns], expected, rtol=1e-9)


def test_state_and_parameters_continue_identically() -> None:
    rng = np.random.default_rng(1)
    normal, values = rng.normal(size=(100, 2)), rng.normal(size=(40, 2))
    params = LevelParams(window=5)
    first = LevelShift(params, 2)
    first.fit(normal)
    first.score(values[:20], np.isfinite(values[:20]))
    second = LevelShift(params, 2)
    second.load_parameters(first.parameters())
    second.restore(first.state())
    ok = np.isfinite(values[20:])
    np.testing.assert_array_equal(
        first.score(values[20:], ok), second.score(values[20:], ok)
    )


def test_slow_wander_is_followed_and_a_step_is_not() -> None:
    """A tag wandering slowly past its fit-row band alarms only with a fixed level."""
    rng = np.random.default_rng(4)
    normal = rng.normal(size=(400, 1))
    wander = rng.normal(size=(3000, 1)) + np.linspace(0.0, 4.0, 3000)[:, None]
    step = rng.normal(size=(300, 1)) + 3.0
    ok = np.ones((3000, 1), dtype=bool)
    fixed = LevelShift(LevelParams(window=10, limit=6.0, follow=0.0), 1)
    followed = LevelShift(LevelParams(window=10, limit=6.0, follow=30.0), 1)
    for scorer in (fixed, followed):
        scorer.fit(normal)
    assert (fixed.score(wander, ok)[:, 0] > 1.0).mean() > 0.5
    assert (followed.score(wander, ok)[:, 0] > 1.0).mean() == 0.0
    # After the wander, the followed level sits near 4; a step from there is
    # caught and keeps scoring, since the level freezes while it is out.
    scores = followed.score(step + 4.0, ok[:300])[:, 0]
    assert (scores[10:] > 1.0).mean() > 0.95


def test_white_noise_keeps_a_tight_band_and_drift_widens_it() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(400, 1))
    drift = np.cumsum(rng.normal(size=(400, 1)), axis=0)
    ok = np.ones((400, 1), dtype=bool)
    assert persistence_factor(noise, ok, 0.999)[0] == pytest.approx(1.0, abs=0.1)
    assert persistence_factor(drift, ok, 0.999)[0] > 10.0


def test_step_in_a_noisy_tag_scores_while_it_lasts() -> None:
    rng = np.random.default_rng(3)
    scorer = LevelShift(LevelParams(window=10, limit=6.0), 1)
    scorer.fit(rng.normal(size=(400, 1)))
    step = rng.normal(size=(300, 1)) + 3.0
    scores = scorer.score(step, np.ones_like(step, dtype=bool))[:, 0]
    assert (scores[10:] > 1.0).mean() > 0.95


def test_unfitted_scores_nan_and_fit_refuses_few_values() -> None:
    scorer = LevelShift(LevelParams(), 2)
    assert np.isnan(scorer.score(np.zeros((3, 2)), np.ones((3, 2), bool))).all()
    with pytest.raises(ValueError, match="at least 10 finite values"):
        scorer.fit(np.zeros((5, 2)))
