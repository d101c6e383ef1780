"""EwmaZScore against a slow per-sample reference, and its streaming invariants."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_models.base import scorer_class
from edge_models.ewma import EwmaParams, EwmaZScore

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

PARAM_SETS = [
    EwmaParams(),
    EwmaParams(alpha=0.3, warmup=0, min_std=1e-3),
    EwmaParams(alpha=1.0, warmup=5),
    EwmaParams(alpha=0.01, warmup=200),
    EwmaParams(alpha=0.1, warmup=4, clip=None),
    EwmaParams(alpha=0.2, warmup=0, clip=2.5),
]


def ewma_reference(
    values: FloatArray, valid: BoolArray, params: EwmaParams
) -> FloatArray:
    """Score each tag sample by sample with plain Python floats."""
    steps, k = values.shape
    scores = np.full((steps, k), math.nan)
    for j in range(k):
        m, v, n = 0.0, 0.0, 0
        for t in range(steps):
            x = float(values[t, j])
            if not (valid[t, j] and math.isfinite(x)):
                continue
            if n == 0:
                m, v = x, 0.0
            sd = max(math.sqrt(v), params.min_std)
            z = abs(x - m) / sd
            scores[t, j] = 0.0 if n < params.warmup else z / params.limit
            d = x - m
            if params.clip is not None and n >= params.warmup:
                d = min(max(d, -params.clip * sd), params.clip * sd)
            m += params.alpha * d
            v = (1 - params.alpha) * (v + params.alpha * d * d)
            n += 1
    return scores


def make_stream(seed: int, steps: int, k: int) -> tuple[FloatArray, BoolArray]:
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
    valid[:, 0] = False  # a tag that never reports
    return values, valid


def score_in_chunks(
    scorer: EwmaZScore, values: FloatArray, valid: BoolArray, cuts: list[int]
) -> FloatArray:
    """Score ``values`` split at row indices ``cuts``."""
    bounds = [0, *cuts, len(values)]
    parts = [
        scorer.score(values[a:b], valid[a:b]) for a, b in itertools.pairwise(bounds)
    ]
    return np.concatenate(parts)


@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(params: EwmaParams, seed: int) -> None:
    """Vectorised scores equal the per-sample reference on messy streams."""
    values, valid = make_stream(seed, 300, 12)
    scores = EwmaZScore(params, 12).score(values, valid)
    np.testing.assert_allclose(
        scores, ewma_reference(values, valid, params), rtol=1e-12, equal_nan=True
    )


def test_chunking_invariance() -> None:
    """Scoring in many small batches gives the same scores as one batch."""
    values, valid = make_stream(3, 400, 9)
    whole = EwmaZScore(EwmaParams(warmup=10), 9).score(values, valid)
    cuts = sorted(np.random.default_rng(4).choice(np.arange(1, 400), 40, False))
    chunked = score_in_chunks(
        EwmaZScore(EwmaParams(warmup=10), 9), values, valid, [int(c) for c in cuts]
    )
    np.testing.assert_array_equal(whole, chunked)


def test_single_rows_match_one_batch() -> None:
    """Scoring one row at a time gives the same scores as one batch."""
    values, valid = make_stream(5, 80, 6)
    whole = EwmaZScore(EwmaParams(warmup=3), 6).score(values, valid)
    rows = score_in_chunks(
        EwmaZScore(EwmaParams(warmup=3), 6), values, valid, list(range(1, 80))
    )
    np.testing.assert_array_equal(whole, rows)


def test_state_restore_midstream() -> None:
    """A scorer restored from a mid-stream state continues exactly as the original."""
    values, valid = make_stream(6, 200, 7)
    original = EwmaZScore(EwmaParams(warmup=20), 7)
    original.score(values[:90], valid[:90])
    saved = original.state()
    expected = original.score(values[90:], valid[90:])

    restored = EwmaZScore(EwmaParams(warmup=20), 7)
    restored.restore(saved)
    np.testing.assert_array_equal(restored.score(values[90:], valid[90:]), expected)


def test_state_is_a_copy() -> None:
    """Scoring after ``state()`` does not change the arrays it returned."""
    scorer = EwmaZScore(EwmaParams(), 3)
    scorer.score(np.ones((4, 3)), np.ones((4, 3), dtype=bool))
    saved = scorer.state()
    before = {key: array.copy() for key, array in saved.items()}
    scorer.score(np.full((4, 3), 5.0), np.ones((4, 3), dtype=bool))
    for key, array in saved.items():
        np.testing.assert_array_equal(array, before[key])


def test_invalid_cells_leave_state_untouched() -> None:
    """A row of invalid or non-finite cells changes neither m, v nor n."""
    scorer = EwmaZScore(EwmaParams(), 3)
    scorer.score(np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 9.0]]), np.ones((2, 3), bool))
    before = scorer.state()
    scores = scorer.score(
        np.array([[np.nan, np.inf, 7.0]]), np.array([[True, True, False]])
    )
    assert np.isnan(scores).all()
    for key, array in scorer.state().items():
        np.testing.assert_array_equal(array, before[key])


def test_warmup_scores_zero_then_scores() -> None:
    """The first ``warmup`` valid readings score 0 and the next one is scored."""
    values = np.array([[1.0], [2.0], [np.nan], [1.0], [50.0]])
    valid = np.ones((5, 1), dtype=bool)
    scores = EwmaZScore(EwmaParams(alpha=0.5, warmup=3), 1).score(values, valid)
    np.testing.assert_array_equal(scores[:4, 0], [0.0, 0.0, np.nan, 0.0])
    assert scores[4, 0] > 1.0


def test_constant_then_step_scores_finite() -> None:
    """A step after a constant stretch scores step / min_std, not infinity."""
    values = np.array([[5.0]] * 10 + [[5.5]])
    scores = EwmaZScore(EwmaParams(warmup=2, min_std=0.01), 1).score(
        values, np.ones((11, 1), dtype=bool)
    )
    assert scores[-1, 0] == pytest.approx(0.5 / 0.01 / EwmaParams().limit)


def test_registry_names_the_class() -> None:
    """The scorer registry maps ``ewma`` to this class."""
    assert scorer_class("ewma") is EwmaZScore
    assert EwmaZScore.name == "ewma"
    assert EwmaZScore.Params is EwmaParams


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"warmup": -1}, {"min_std": 0.0}]
)
def test_params_rejected(kwargs: dict[str, Any]) -> None:
    """Out-of-range parameters are refused when the params are built."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EwmaParams(**kwargs)


def test_restore_rejects_misfit_state() -> None:
    """A state of the wrong width or with a missing key raises ``ValueError``."""
    scorer = EwmaZScore(EwmaParams(), 4)
    with pytest.raises(ValueError, match="shape"):
        scorer.restore(EwmaZScore(EwmaParams(), 3).state())
    with pytest.raises(ValueError, match="lacks n"):
        scorer.restore({"m": np.zeros(4), "v": np.zeros(4)})


def test_score_rejects_wrong_width() -> None:
    """Values with a column count other than ``k`` raise ``ValueError``."""
    with pytest.raises(ValueError, match=r"\(steps, 4\)"):
        EwmaZScore(EwmaParams(), 4).score(np.zeros((2, 3)), np.ones((2, 3), bool))


CELLS = st.one_of(
    st.floats(-1e6, 1e6),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=2, max_dims=2), elements=CELLS
    ),
    data=st.data(),
    alpha=st.floats(1e-3, 1.0),
    warmup=st.integers(0, 5),
)
def test_scores_nonnegative_or_nan_where_invalid(
    values: FloatArray, data: st.DataObject, alpha: float, warmup: int
) -> None:
    """Scores are NaN exactly on invalid cells and non-negative elsewhere."""
    valid = data.draw(hnp.arrays(np.bool_, values.shape))
    scorer = EwmaZScore(EwmaParams(alpha=alpha, warmup=warmup), values.shape[1])
    scores = scorer.score(values, valid)
    invalid = ~valid | ~np.isfinite(values)
    np.testing.assert_array_equal(np.isnan(scores), invalid)
    assert (scores[~invalid] >= 0).all()


def test_clipping_keeps_a_sustained_spike_scoring_high() -> None:
    """Clipped, every sample of a long spike scores high; unclipped, only the first."""
    rng = np.random.default_rng(11)
    values = rng.normal(50.0, 0.3, (205, 1))
    values[200:] += 25.0
    valid = np.ones(values.shape, dtype=bool)

    clipped = EwmaZScore(EwmaParams(warmup=20), 1).score(values, valid)[200:, 0]
    unclipped = EwmaZScore(EwmaParams(warmup=20, clip=None), 1).score(values, valid)
    assert (clipped > 1.0).all()
    assert unclipped[200, 0] > 1.0
    assert (unclipped[201:, 0] < 1.0).all()


def test_fit_warms_the_state_so_scoring_continues() -> None:
    """Fitting on rows then scoring more equals scoring all rows in one go."""
    values, valid = make_stream(seed=3, steps=300, k=5)
    values = np.where(valid, values, np.nan)
    whole = EwmaZScore(EwmaParams(warmup=10), 5).score(values, np.isfinite(values))

    fitted = EwmaZScore(EwmaParams(warmup=10), 5)
    fitted.fit(values[:120])
    rest = fitted.score(values[120:], np.isfinite(values[120:]))
    np.testing.assert_array_equal(rest, whole[120:])
